"""The one decode loop (``middleware.decoding``): greedy equivalence with transformers, batching with
left padding, per-row stop rules and budgets, seeded sampling, through both of its users."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from local_models import PROMPTS, ascii_piece, lively_backend, req
from middleware.decoding import Decoder, Row, check_sampling, choose, eos_ids
from middleware.errors import AlignwareError, InputError
from middleware.local import LocalBackend


@pytest.fixture(scope="module")
def lively(tiny_model_dir: Path) -> LocalBackend:
    """The tiny checkpoint with lively weights (see ``lively.lively_backend``)."""
    return lively_backend(tiny_model_dir)


# -- greedy decoding ----------------------------------------------------------------------
def test_greedy_matches_transformers_generate(lively: LocalBackend) -> None:
    for text in PROMPTS[:3]:
        ids = lively.prompt_ids(req(text))
        out = lively.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=40, do_sample=False, pad_token_id=lively.tokenizer.pad_token_id,
        )
        expected = lively.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert lively.complete(req(text)).text == expected


def test_batch_equals_one_by_one(lively: LocalBackend) -> None:
    requests = [req(p) for p in PROMPTS]
    assert len({len(lively.prompt_ids(r)) for r in requests}) >= 4, "prompts of different lengths need padding"
    single = [lively.complete(r) for r in requests]
    assert len({r.text for r in single}) == len(single), "the answers should differ, or the check proves little"
    batched = lively.batch(requests)
    for s, b in zip(single, batched):
        assert b.text == s.text
        assert b.finish_reason == s.finish_reason == "length"
        assert b.usage == s.usage


def test_batch_position_ids_skip_the_padding(lively: LocalBackend) -> None:
    """Llama's rotary embeddings only see relative positions, so wrong absolute positions would go
    unnoticed above; models with learned absolute positions need them right, so check them directly."""
    seen: list[torch.Tensor] = []

    def grab(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["position_ids"].clone())

    requests = [req(p, max_tokens=3) for p in PROMPTS[:3]]
    lengths = [len(lively.prompt_ids(r)) for r in requests]
    handle = lively.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        lively.batch(requests)
    finally:
        handle.remove()
    prefill, step1, step2 = seen
    width = max(lengths)
    for row, n in enumerate(sorted(lengths)):  # batch() runs rows shortest prompt first
        assert prefill[row, width - n :].tolist() == list(range(n))
    assert step1[:, 0].tolist() == sorted(lengths)
    assert step2[:, 0].tolist() == [n + 1 for n in sorted(lengths)]


def test_batch_mixed_parameters_and_small_batches(lively: LocalBackend) -> None:
    requests = [
        req(PROMPTS[0], max_tokens=3),
        req(PROMPTS[1], temperature=0.8, seed=5),
        req(PROMPTS[2], max_tokens=12, stop=["zzz"]),
        req(PROMPTS[3], temperature=1.2, top_p=0.9, seed=11, max_tokens=20),
    ]
    single = [lively.complete(r) for r in requests]
    small = LocalBackend(model_obj=lively.model, tokenizer=lively.tokenizer, max_tokens=40, batch_size=3)
    for batched in (lively.batch(requests), small.batch(requests)):
        assert [b.text for b in batched] == [s.text for s in single]
        assert [b.usage.completion_tokens for b in batched] == [3, 40, 12, 20]
    assert lively.batch([]) == []


def test_batch_rows_stop_at_their_own_eos(lively: LocalBackend) -> None:
    free = lively.complete(req(PROMPTS[1]))
    ids = lively.prompt_ids(req(PROMPTS[1]))
    out = lively.model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
    eos = int(out[0, len(ids) + 6])
    model = copy.deepcopy(lively.model)
    model.generation_config.eos_token_id = [lively.tokenizer.eos_token_id, eos]
    b = LocalBackend(model_obj=model, tokenizer=lively.tokenizer, max_tokens=40)
    requests = [req(p) for p in PROMPTS]
    single = [b.complete(r) for r in requests]
    stopped = single[1]
    assert stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens <= 7
    assert free.text.startswith(stopped.text)
    batched = b.batch(requests)
    assert [(r.text, r.finish_reason, r.usage) for r in batched] == [(r.text, r.finish_reason, r.usage) for r in single]


# -- stop rules and usage -----------------------------------------------------------------
def test_max_tokens_gives_length(lively: LocalBackend) -> None:
    r = lively.complete(req(PROMPTS[1], max_tokens=7))
    prompt_len = len(lively.prompt_ids(req(PROMPTS[1])))
    assert r.finish_reason == "length"
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == prompt_len and r.usage.total_tokens == prompt_len + 7
    assert lively.complete(req(PROMPTS[1])).text.startswith(r.text)
    assert lively.complete(req(PROMPTS[1])).usage.completion_tokens == 40  # the backend's default


def test_stop_strings_cut_the_text(lively: LocalBackend) -> None:
    full = lively.complete(req(PROMPTS[1])).text
    stop = ascii_piece(full, start=8)
    r = lively.complete(req(PROMPTS[1], stop=[stop, "never-there"]))
    assert r.finish_reason == "stop"
    assert r.text == full[: full.find(stop)]
    assert stop not in r.text
    assert r.usage.completion_tokens < 40
    assert lively.complete(req(PROMPTS[1], stop="never-there")).finish_reason == "length"


# -- sampling -----------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(lively: LocalBackend) -> None:
    a = lively.complete(req(PROMPTS[1], temperature=1.0, seed=7))
    b = lively.complete(req(PROMPTS[1], temperature=1.0, seed=7))
    c = lively.complete(req(PROMPTS[1], temperature=1.0, seed=8))
    greedy = lively.complete(req(PROMPTS[1], temperature=0))
    assert a.text == b.text
    assert c.text != a.text
    assert greedy.text == lively.complete(req(PROMPTS[1])).text != a.text
    streamed = "".join(ch.delta for ch in lively.stream(req(PROMPTS[1], temperature=1.0, seed=7)))
    assert streamed == a.text


# -- one loop for both users ----------------------------------------------------------------
@pytest.mark.parametrize(
    "params", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 3}, {"temperature": 1.3, "top_p": 0.8, "seed": 11}]
)
def test_local_backend_and_text_generator_give_the_same_tokens(lively: LocalBackend, params: dict[str, Any]) -> None:
    """The chat backend and the template generator run the same loop: the same prompt ids and seed give
    the same tokens, whether the prompt comes from a chat template or a rendered text."""
    from middleware.shared_base import SharedBase
    from rewriters.generator import TextGenerator

    gen = TextGenerator(SharedBase(lively.model, lively.tokenizer), template="bpo")
    for prompt in PROMPTS[:3]:
        ids = lively.prompt_ids(req(prompt))
        text = lively.tokenizer.decode(ids)
        assert list(lively.tokenizer(text)["input_ids"]) == ids  # the generator sees the very same prompt
        chat = lively.complete(req(prompt, max_tokens=15, **params))
        (cont,) = gen.generate_ex(text, max_new_tokens=15, **params)
        rows = [Row(prompt_ids=ids, max_new=15, **params)]
        for _ in Decoder(lively.model, lively.tokenizer).run(rows):
            pass
        assert cont.n_tokens == len(rows[0].ids) and cont.finish_reason == chat.finish_reason == rows[0].finish
        assert chat.usage.completion_tokens == rows[0].generated
        assert chat.text == rows[0].text == lively.tokenizer.decode(rows[0].ids, skip_special_tokens=True)
        assert cont.text == chat.text.strip()
        assert "".join(gen.stream(text, max_new_tokens=15, **params)) == cont.text


def test_check_sampling_names_the_field() -> None:
    check_sampling(None, None, None)
    check_sampling(0, 2**64 - 1, 1)
    with pytest.raises(InputError, match=r"temperature must be a finite number >= 0, got -1"):
        check_sampling(-1, None)
    with pytest.raises(InputError, match=r"seed must be an integer that fits in 64 bits"):
        check_sampling(1.0, 2**64)
    for top_p in (0, 0.0, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"top_p must be in \(0, 1\], got"):
            check_sampling(1.0, None, top_p)


def test_stream_safe_text_holds_back_stop_prefixes_and_broken_characters() -> None:
    row = Row(prompt_ids=[1], max_new=5, stops=["STOP"], text="Hello ST")
    assert row.stream_safe_text() == "Hello "
    row.text = "Hello \ufffd"
    assert row.stream_safe_text() == "Hello "
    row.text, row.finish = "Hello ST", "length"
    assert row.stream_safe_text() == "Hello ST"


def test_choose_greedy_and_nucleus() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert choose(Row(prompt_ids=[1], max_new=1), logits) == 1
    narrow = Row(prompt_ids=[1], max_new=1, temperature=1.0, top_p=0.01, seed=0, generator=torch.Generator().manual_seed(0))
    assert {choose(narrow, logits) for _ in range(20)} == {1}  # only the most probable token is left
    wide = Row(prompt_ids=[1], max_new=1, temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert len({choose(wide, logits) for _ in range(50)}) > 1


def test_decoder_without_eos(lively: LocalBackend) -> None:
    model = copy.deepcopy(lively.model)
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    tok = copy.deepcopy(lively.tokenizer)
    tok.eos_token = None
    assert eos_ids(model, tok) == frozenset()
    assert Decoder(model, tok).pad_id == (tok.pad_token_id if tok.pad_token_id is not None else 0)
    with pytest.raises(AlignwareError, match="no end-of-sequence token"):
        Decoder(model, tok, require_eos=True)
