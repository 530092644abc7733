"""TextGenerator and SharedBase on a tiny random Llama: batching, streaming, adapters on one base."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from middleware.errors import AlignwareError, CheckpointError, InputError
from middleware.shared_base import SharedBase
from rewriters.generator import TextGenerator
from rewriters.sft import SFTConfig, init_adapter
from rewriters.templates import get_template

BPO = get_template("bpo")
TEXTS = [
    BPO.render(prompt="Hello"),
    BPO.render(prompt="What is the capital of France? Please answer with a helpful and harmless answer."),
    "The quick brown fox",
    BPO.render(prompt="I cannot help with that"),
]


@pytest.fixture(autouse=True)
def _fresh_bases():
    SharedBase.clear()
    yield
    SharedBase.clear()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two randomly initialised LoRA adapters on the tiny model (a rewriter and a corrector)."""
    root = tmp_path_factory.mktemp("adapters")
    a = init_adapter(SFTConfig(base_model=str(tiny_model_dir), lora_r=4, lora_alpha=32, seed=1), root / "rewriter", random_init=True)
    b = init_adapter(
        SFTConfig(base_model=str(tiny_model_dir), lora_r=4, lora_alpha=32, seed=2, kind="corrector", template="aligner-v1.0",
                  target_modules=("q_proj", "v_proj", "o_proj")),
        root / "corrector-v1.0",  # a dot in the folder name must not reach peft's module names
        random_init=True,
    )
    return a, b


def _logits(model, tok, text: str):
    import torch

    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_batch_equals_one_by_one_greedy(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    batched = gen.generate_ex(TEXTS, max_new_tokens=12, temperature=0.0)
    alone = [gen.generate_ex(t, max_new_tokens=12, temperature=0.0)[0] for t in TEXTS]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in alone]
    assert all(g.text for g in batched)
    assert gen.generate(TEXTS, max_new_tokens=12, temperature=0.0, batch_size=3) == [g.text for g in alone]
    for g in batched:
        assert g.finish_reason in ("stop", "length")
        assert g.finish_reason == "stop" or g.n_tokens == 12


def test_stream_concat_equals_generate(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    for text in TEXTS:
        pieces = list(gen.stream(text, max_new_tokens=16, temperature=0.0))
        assert "".join(pieces) == gen.generate(text, max_new_tokens=16, temperature=0.0)[0]
    stream = gen.stream(TEXTS[0], max_new_tokens=200, temperature=0.0)
    next(stream, None)
    stream.close()  # stops the worker; the base is free again
    with gen.shared.using(None):
        pass


def test_length_finish_and_defaults(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    (g,) = gen.generate_ex(TEXTS[0], max_new_tokens=1, temperature=0.0)
    assert g.n_tokens <= 1 and (g.finish_reason == "length") == (g.n_tokens == 1)
    assert gen.manifest["generation"]["temperature"] == 0.6  # BPO's published decoding is the default
    with pytest.raises(InputError, match="top_p"):
        gen.generate("x", top_p=0.0)
    with pytest.raises(InputError, match="texts\\[0\\]"):
        gen.generate([3])  # type: ignore[list-item]


def test_seeded_sampling_is_repeatable_and_private(tiny_model_dir: Path) -> None:
    import torch

    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = gen.generate(TEXTS[:2], temperature=1.0, top_p=0.95, seed=7, max_new_tokens=10)
    b = gen.generate(TEXTS[:2], temperature=1.0, top_p=0.95, seed=7, max_new_tokens=10)
    assert a == b
    assert torch.equal(before, torch.get_rng_state())


def test_two_adapters_share_one_base(tiny_model_dir: Path, adapters: tuple[Path, Path]) -> None:
    from middleware.models import load_causal_lm

    rw = TextGenerator.from_pretrained(adapters[0])
    co = TextGenerator.from_pretrained(adapters[1])
    shared = SharedBase.get(tiny_model_dir)
    assert rw.shared is co.shared is shared
    assert rw.model is co.model is shared.model  # one base in memory
    assert rw.kind == "rewriter" and rw.template.name == "bpo"
    assert co.kind == "corrector" and co.template.name == "aligner-v1.0"
    assert len(shared.adapters) == 2

    text = TEXTS[1]
    with shared.using(rw.adapter) as m:
        l_rw = _logits(m, shared.tokenizer, text)
    with shared.using(co.adapter) as m:
        l_co = _logits(m, shared.tokenizer, text)
    with shared.using(None) as m:
        l_none = _logits(m, shared.tokenizer, text)
    plain_model, plain_tok = load_causal_lm(tiny_model_dir)
    l_plain = _logits(plain_model, plain_tok, text)
    assert not l_rw.allclose(l_co, atol=1e-3)
    assert not l_rw.allclose(l_none, atol=1e-3)
    assert (l_none - l_plain).abs().max() < 1e-5  # adapters off == the plain base model

    out_rw = rw.generate(TEXTS, max_new_tokens=10, temperature=0.0)
    out_co = co.generate(TEXTS, max_new_tokens=10, temperature=0.0)
    plain = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    out_plain = plain.generate(TEXTS, max_new_tokens=10, temperature=0.0)
    assert out_rw != out_co and out_rw != out_plain
    assert shared.active_adapter is None  # the default state between calls

    # loading the same folder again reuses the adapter; the state of one call never leaks into another
    assert TextGenerator.from_pretrained(adapters[0]).adapter == rw.adapter
    assert rw.generate(TEXTS, max_new_tokens=10, temperature=0.0) == out_rw


def test_chat_backend_is_the_plain_base(tiny_model_dir: Path, adapters: tuple[Path, Path]) -> None:
    from middleware.local import LocalBackend
    from middleware.types import ChatRequest

    rw = TextGenerator.from_pretrained(adapters[0])
    chat = rw.shared.chat_backend(max_tokens=8)
    assert chat.model.unwrap is rw.model
    req = ChatRequest.build("What is the capital of France?", temperature=0)
    own = LocalBackend(str(tiny_model_dir), max_tokens=8)
    with rw.shared.using(rw.adapter):  # even with an adapter switched on around it
        shared_answer = chat.complete(req).text
    assert shared_answer == own.complete(req).text
    assert rw.shared.active_adapter is None


def test_threads_switch_adapters_safely(adapters: tuple[Path, Path]) -> None:
    rw = TextGenerator.from_pretrained(adapters[0])
    co = TextGenerator.from_pretrained(adapters[1])
    want = {"rw": rw.generate(TEXTS, max_new_tokens=8, temperature=0.0), "co": co.generate(TEXTS, max_new_tokens=8, temperature=0.0)}
    got: dict[str, list[list[str]]] = {"rw": [], "co": []}

    def work(name: str, gen: TextGenerator) -> None:
        for _ in range(3):
            got[name].append(gen.generate(TEXTS, max_new_tokens=8, temperature=0.0))

    threads = [threading.Thread(target=work, args=("rw", rw)), threading.Thread(target=work, args=("co", co))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["rw"] == [want["rw"]] * 3 and got["co"] == [want["co"]] * 3


def test_full_model_folder_and_errors(tiny_model_dir: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="template"):
        TextGenerator.from_pretrained(tiny_model_dir)
    full = TextGenerator.from_pretrained(tiny_model_dir, kind="corrector")
    assert full.adapter is None and full.template.name == "aligner-v1.0"
    assert full.generate(TEXTS[0], max_new_tokens=5, temperature=0.0)

    with pytest.raises(InputError, match="not a corrector|holds a rewriter"):
        TextGenerator.from_pretrained(adapters[0], kind="corrector")
    with pytest.raises(InputError, match="no such folder"):
        TextGenerator.from_pretrained(tmp_path / "missing")

    broken = tmp_path / "broken"
    shutil.copytree(adapters[0], broken)
    blob = bytearray((broken / "adapter_model.safetensors").read_bytes())
    blob[-4:] = b"\x00\x01\x02\x03"
    (broken / "adapter_model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        TextGenerator.from_pretrained(broken)
    with pytest.raises(InputError, match="no adapter named"):
        with SharedBase.get(tiny_model_dir).using("nope"):
            pass


def _mismatched_copy(good: Path, dest: Path) -> Path:
    """``good`` with one LoRA tensor of the wrong rank: peft injects the layers, then the load fails."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, dest)
    (dest / "alignware.json").unlink()  # no checksums to trip over first
    weights = load_file(dest / "adapter_model.safetensors")
    key = sorted(k for k in weights if "lora_B" in k)[-1]
    weights[key] = torch.randn(weights[key].shape[0], weights[key].shape[1] + 1)
    save_file(weights, dest / "adapter_model.safetensors")
    return dest


@pytest.mark.parametrize("with_good_adapter", [False, True])
def test_failed_adapter_load_leaves_the_base_as_it_was(
    tiny_model_dir: Path, adapters: tuple[Path, Path], tmp_path: Path, with_good_adapter: bool
) -> None:
    import torch

    bad = _mismatched_copy(adapters[0], tmp_path / "bad")
    shared = SharedBase.get(tiny_model_dir)
    if with_good_adapter:
        shared.add_adapter("good", adapters[1])
    before = dict(shared.adapters)
    with shared.using(None) as m:
        plain0 = _logits(m, shared.tokenizer, TEXTS[1])
    if with_good_adapter:
        with shared.using("good") as m:
            good0 = _logits(m, shared.tokenizer, TEXTS[1])
    chat = shared.chat_backend(max_tokens=8)
    from middleware.types import ChatRequest

    question = ChatRequest.build("What is the capital of France?", temperature=0)
    answer0 = chat.complete(question).text

    with pytest.raises(AlignwareError) as info:
        shared.add_adapter("bad", bad)
    message = str(info.value)
    assert str(bad.resolve()) in message and info.value.__cause__ is not None
    assert f"{type(info.value.__cause__).__name__}: {info.value.__cause__}" in message

    assert shared.adapters == before and shared.active_adapter is None
    with shared.using(None) as m:
        assert torch.equal(_logits(m, shared.tokenizer, TEXTS[1]), plain0)
    if with_good_adapter:
        with shared.using("good") as m:
            assert torch.equal(_logits(m, shared.tokenizer, TEXTS[1]), good0)
    assert chat.complete(question).text == answer0
    with pytest.raises(InputError, match="no adapter named 'bad'"):
        with shared.using("bad"):
            pass
    shared.add_adapter("bad", adapters[0])  # the name is free again and a sound folder loads under it
    assert list(shared.adapters) == [*before, "bad"]
    with shared.using(None) as m:
        assert torch.equal(_logits(m, shared.tokenizer, TEXTS[1]), plain0)


def test_generator_between_chat_stream_chunks_sees_no_stream_stages(adapters: tuple[Path, Path]) -> None:
    """A corrector (adapter) or plain-base generator run on the consumer's thread between the chunks of a
    steered chat stream gives exactly what it gives outside any stream."""
    import torch

    from middleware.types import ChatRequest
    from model_stages import AddVector

    co = TextGenerator.from_pretrained(adapters[1])
    plain = TextGenerator.untrained(co.shared, template="bpo", kind="rewriter")
    chat = co.shared.chat_backend(max_tokens=20)
    steer = AddVector(torch.randn(co.model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3.0)
    text = co.render(question="What is the capital of France?", answer="Paris.")
    question = ChatRequest.build("What is the capital of France?")

    def run() -> tuple[str, str]:
        return (co.generate(text, max_new_tokens=12, temperature=0.0)[0],
                plain.generate(TEXTS[1], max_new_tokens=12, temperature=0.0)[0])

    alone = run()
    with steer.attach(co.model):
        assert run() != alone  # the stage changes both outputs, so a leak would show
    steered = chat.complete(question, model_stages=[steer]).text

    inside: list[tuple[str, str]] = []
    pieces: list[str] = []
    for chunk in chat.stream(question, model_stages=[steer]):
        pieces.append(chunk.delta)
        if chunk.delta and len(inside) < 2:
            assert co.shared.active_adapter is None
            inside.append(run())
    assert inside == [alone, alone]
    assert steered != chat.complete(question).text and len([p for p in pieces if p]) > 2
    assert "".join(pieces) == steered  # the stream itself kept its stage for every token
    assert co.shared.active_adapter is None
    assert all(not lay._forward_hooks for lay in co.model.model.layers)


def test_bad_temperature_and_seed_are_input_errors(tiny_model_dir: Path) -> None:
    gen = TextGenerator.untrained(tiny_model_dir, template="bpo", kind="rewriter")
    for t in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="temperature must be a finite number"):
            gen.generate("x", temperature=t, max_new_tokens=2)
    with pytest.raises(InputError, match="seed"):
        gen.generate("x", temperature=1.0, seed=2**70, max_new_tokens=2)
    with pytest.raises(InputError, match="seed"):
        list(gen.stream("x", temperature=1.0, seed=-(2**63) - 1, max_new_tokens=2))
