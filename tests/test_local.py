"""``LocalBackend`` on the tiny random Llama: loading, prompts, request checks, streaming, model stages.

The decode loop itself (batching, stop rules, sampling) is tested in ``test_decoding.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from local_models import PROMPTS, ascii_piece, lively_backend, req
from middleware.errors import BackendError, InputError, StageError
from middleware.local import LocalBackend
from middleware.pipeline import Pipeline
from middleware.stages import ModelStage, PromptStage, ResponseStage
from middleware.types import ChatRequest, ChatResponse
from model_stages import AddVector


@pytest.fixture(scope="module")
def lively(tiny_model_dir: Path) -> LocalBackend:
    """The tiny checkpoint with lively weights (see ``lively.lively_backend``)."""
    return lively_backend(tiny_model_dir)


def layer(backend: LocalBackend, i: int = 0) -> torch.nn.Module:
    return backend.model.model.layers[i]


def no_hooks(backend: LocalBackend) -> bool:
    return all(not lay._forward_hooks for lay in backend.model.model.layers)


class RaisingHook(ModelStage):
    """Installs a hook that raises on the ``after``-th forward call."""

    def __init__(self, after: int = 2, **kw: Any) -> None:
        super().__init__(**kw)
        self.after = after

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        calls = {"n": 0}

        def hook(module: Any, args: Any, output: Any) -> None:
            calls["n"] += 1
            if calls["n"] >= self.after:
                raise RuntimeError("hook exploded")

        handle = model.model.layers[1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class BrokenAttach(ModelStage):
    def attach(self, model: Any) -> Any:
        raise ValueError("no such layer")


def steer(lively: LocalBackend, **kw: Any) -> AddVector:
    return AddVector(torch.full((lively.model.config.hidden_size,), 3.0), **kw)


# -- loading and prompts -------------------------------------------------------------------
def test_loads_a_folder(tiny_model_dir: Path) -> None:
    b = LocalBackend(tiny_model_dir, max_tokens=5)
    assert b.name == tiny_model_dir.name
    assert b.supports_model_stages
    r = b.complete(req("Hello"))
    assert r.model == b.name and r.finish_reason == "length" and r.usage.completion_tokens == 5


def test_model_obj_needs_its_tokenizer(lively: LocalBackend) -> None:
    with pytest.raises(InputError, match="together"):
        LocalBackend(model_obj=lively.model)
    with pytest.raises(InputError, match="not both"):
        LocalBackend("some/folder", model_obj=lively.model, tokenizer=lively.tokenizer)


def test_no_chat_template_is_a_clear_error(lively: LocalBackend) -> None:
    tok = copy.deepcopy(lively.tokenizer)
    tok.chat_template = None
    b = LocalBackend(model_obj=lively.model, tokenizer=tok)
    with pytest.raises(InputError, match="no chat template"):
        b.complete(req("Hello"))


def test_prompt_uses_chat_template_and_system_prompt(lively: LocalBackend) -> None:
    b = LocalBackend(model_obj=lively.model, tokenizer=lively.tokenizer, system_prompt="Be brief.")
    text = b.tokenizer.decode(b.prompt_ids(req("Hello")))
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    own = req([{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hello"}])
    assert "Be brief." not in b.tokenizer.decode(b.prompt_ids(own))


def test_bad_parameters(lively: LocalBackend) -> None:
    with pytest.raises(InputError, match="temperature"):
        lively.complete(req("Hi", temperature=-1))
    with pytest.raises(InputError, match="top_p"):
        lively.complete(req("Hi", temperature=1, top_p=0))


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -math.inf])
def test_non_finite_temperature_is_an_input_error(lively: LocalBackend, temperature: float) -> None:
    with pytest.raises(InputError, match="temperature: Input should be a finite number"):
        req("Hi", temperature=temperature)  # refused where the request is built
    # and by the backend, for a request that got past validation (model_copy does not validate)
    bad = req("Hi", max_tokens=3).model_copy(update={"temperature": temperature})
    with pytest.raises(InputError, match="temperature must be a finite number >= 0"):
        lively.complete(bad)
    with pytest.raises(InputError, match="temperature"):
        list(lively.stream(bad))
    with pytest.raises(InputError, match="temperature"):
        lively.batch([req("Hi"), bad])


def test_seed_outside_64_bits_is_an_input_error(lively: LocalBackend) -> None:
    for seed in (2**64, 2**70, -(2**63) - 1):
        with pytest.raises(InputError, match="seed must be an integer that fits in 64 bits"):
            lively.complete(req("Hi", temperature=1.0, seed=seed, max_tokens=3))
    for seed in (2**64 - 1, -(2**63), -1):  # the edges torch accepts still sample, repeatably
        a = lively.complete(req("Hi", temperature=1.0, seed=seed, max_tokens=3))
        assert a.text == lively.complete(req("Hi", temperature=1.0, seed=seed, max_tokens=3)).text


def test_chat_template_raise_exception_is_an_input_error(lively: LocalBackend) -> None:
    """A template that refuses a conversation (Gemma/Mistral-style ``raise_exception``) names the problem."""
    tok = copy.deepcopy(lively.tokenizer)
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + lively.tokenizer.chat_template
    )
    backend = LocalBackend(model_obj=lively.model, tokenizer=tok, max_tokens=3)
    system_first = req([{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}])
    want = "the model's chat template rejected the conversation: System role not supported"
    with pytest.raises(InputError, match=want):
        backend.complete(system_first)
    with pytest.raises(InputError, match=want):
        list(backend.stream(system_first))
    with pytest.raises(InputError, match=want):
        LocalBackend(model_obj=lively.model, tokenizer=tok, max_tokens=3, system_prompt="be nice").complete(req("hi"))
    assert backend.complete(req("hi")).text == lively.complete(req("hi", max_tokens=3)).text


# -- streaming ----------------------------------------------------------------------------
def test_stream_concatenates_to_complete(lively: LocalBackend) -> None:
    saw_broken_bytes = False
    for text in PROMPTS:
        full = lively.complete(req(text))
        chunks = list(lively.stream(req(text)))
        deltas = [c.delta for c in chunks[:-1]]
        assert "".join(deltas) == full.text
        assert all(deltas) and len(deltas) > 5
        saw_broken_bytes |= "\ufffd" in full.text
        last = chunks[-1]
        assert last.delta == "" and last.finish_reason == "length"
        assert last.usage == full.usage and last.usage.completion_tokens == 40
        assert last.trace == []
    assert saw_broken_bytes, "the tiny model should produce some incomplete UTF-8 to exercise the decoder"


def test_stream_with_stop_string_never_leaks_it(lively: LocalBackend) -> None:
    full = lively.complete(req(PROMPTS[2])).text
    stop = ascii_piece(full, start=4)
    chunks = list(lively.stream(req(PROMPTS[2], stop=[stop])))
    text = "".join(c.delta for c in chunks)
    assert text == full[: full.find(stop)] == lively.complete(req(PROMPTS[2], stop=[stop])).text
    assert chunks[-1].finish_reason == "stop"


async def test_astream_and_acomplete(lively: LocalBackend) -> None:
    full = await lively.acomplete(req(PROMPTS[1]))
    chunks = [c async for c in lively.astream(req(PROMPTS[1]))]
    assert "".join(c.delta for c in chunks) == full.text
    assert chunks[-1].finish_reason == "length"


# -- model stages -------------------------------------------------------------------------
def test_model_stage_changes_the_answer_and_is_removed(lively: LocalBackend) -> None:
    base = lively.complete(req(PROMPTS[1]))
    stage = steer(lively)
    r = lively.complete(req(PROMPTS[1]), model_stages=[stage])
    assert r.text != base.text
    assert [(t.stage, t.kind, t.verdict, t.reason) for t in r.trace] == [("AddVector", "model", "modified", "attached")]
    assert no_hooks(lively)
    assert lively.complete(req(PROMPTS[1])).text == base.text


def test_hooks_removed_when_generation_raises(lively: LocalBackend) -> None:
    with pytest.raises(BackendError, match="hook exploded"):
        lively.complete(req(PROMPTS[1]), model_stages=[steer(lively), RaisingHook()])
    assert no_hooks(lively)
    with pytest.raises(BackendError, match="hook exploded"):
        list(lively.stream(req(PROMPTS[1]), model_stages=[steer(lively), RaisingHook(after=4)]))
    assert no_hooks(lively)
    with pytest.raises(BackendError, match="hook exploded"):
        lively.batch([req(p) for p in PROMPTS[:3]], model_stages=[RaisingHook()])
    assert no_hooks(lively)


def test_attach_failure_is_a_failed_trace_and_the_answer_comes_back(lively: LocalBackend) -> None:
    base = lively.complete(req(PROMPTS[1]))
    r = lively.complete(req(PROMPTS[1]), model_stages=[BrokenAttach()])
    assert r.text == base.text
    assert [(t.verdict, t.reason) for t in r.trace] == [("failed", "ValueError: no such layer")]
    chunks = list(lively.stream(req(PROMPTS[1]), model_stages=[BrokenAttach()]))
    assert chunks[-1].trace[0].verdict == "failed"
    with pytest.raises(StageError, match="no such layer"):
        lively.complete(req(PROMPTS[1]), model_stages=[BrokenAttach(on_error="raise")])
    assert no_hooks(lively)


def test_stream_applies_hooks_to_its_own_tokens_only_and_drops_them_on_close(lively: LocalBackend) -> None:
    stage = steer(lively)
    steered = lively.complete(req(PROMPTS[1]), model_stages=[stage])
    chunks = list(lively.stream(req(PROMPTS[1]), model_stages=[stage]))
    assert "".join(c.delta for c in chunks) == steered.text
    assert [(t.verdict, t.reason) for t in chunks[-1].trace] == [("modified", "attached")]

    gen = lively.stream(req(PROMPTS[1]), model_stages=[stage])
    next(gen)
    next(gen)
    assert no_hooks(lively), "between chunks the model must be as it is outside the stream"
    gen.close()
    assert no_hooks(lively)
    done: list[ChatResponse] = []
    t = threading.Thread(target=lambda: done.append(lively.complete(req(PROMPTS[0], max_tokens=3))))
    t.start()
    t.join(timeout=30)
    assert done, "the model lock must be released when a stream is closed early"


def test_calls_between_stream_chunks_do_not_see_the_streams_stages(lively: LocalBackend) -> None:
    """Code the consumer runs between chunks (a chunked corrector, another request) on the same thread
    gets the plain model, and the stream itself still gets its stages for every one of its tokens."""
    stage = steer(lively)
    plain = lively.complete(req(PROMPTS[2]))
    steered = lively.complete(req(PROMPTS[1]), model_stages=[stage])
    assert lively.complete(req(PROMPTS[2]), model_stages=[stage]).text != plain.text  # a leak would show
    pieces, between = [], []
    for chunk in lively.stream(req(PROMPTS[1]), model_stages=[stage]):
        pieces.append(chunk.delta)
        if chunk.delta and len(between) < 3:
            between.append(lively.complete(req(PROMPTS[2])).text)
    assert between == [plain.text] * 3
    assert "".join(pieces) == steered.text
    assert no_hooks(lively)


def test_batch_with_model_stages_and_skip_if(lively: LocalBackend) -> None:
    stage = steer(lively, skip_if=lambda r: r.last_user_message == PROMPTS[0])
    requests = [req(p) for p in PROMPTS[:3]]
    single = [lively.complete(r, model_stages=[stage]) for r in requests]
    assert single[0].text == lively.complete(requests[0]).text
    batched = lively.batch(requests, model_stages=[stage])
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.trace[0].verdict for b in batched] == ["skipped", "modified", "modified"]
    assert no_hooks(lively)


def test_threads_do_not_see_each_others_hooks(lively: LocalBackend) -> None:
    stage = steer(lively)
    expected_plain = lively.complete(req(PROMPTS[2]))
    expected_steered = lively.complete(req(PROMPTS[2]), model_stages=[stage])
    results: dict[str, list[str]] = {"plain": [], "steered": []}

    def run(kind: str) -> None:
        for _ in range(3):
            stages = [stage] if kind == "steered" else []
            results[kind].append(lively.complete(req(PROMPTS[2]), model_stages=stages).text)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("plain", "steered")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results["plain"] == [expected_plain.text] * 3
    assert results["steered"] == [expected_steered.text] * 3


# -- through a pipeline -------------------------------------------------------------------
class Polite(PromptStage):
    def process(self, request: ChatRequest) -> ChatRequest:
        return request.with_last_user_message("Please: " + request.last_user_message)


class Signed(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text + " [checked]"})


def test_pipeline_end_to_end(tiny_model_dir: Path, lively: LocalBackend) -> None:
    pipe = Pipeline(LocalBackend(tiny_model_dir, max_tokens=8), stages=[Polite(), steer(lively), Signed()])
    r = pipe.chat("Hello there")
    assert [(t.kind, t.verdict) for t in r.trace] == [("prompt", "modified"), ("model", "modified"), ("response", "modified")]
    assert r.text.endswith(" [checked]") and r.usage.completion_tokens == 8

    chunks = list(pipe.stream("Hello there"))
    assert "".join(c.delta for c in chunks) == r.text
    assert chunks[-1].finish_reason == "length" and len(chunks[-1].trace) == 3

    batch = pipe.batch(["Hello there", "What is the capital of France?"])
    assert batch[0].text == r.text and len(batch[1].trace) == 3
    assert no_hooks(pipe.llm)

    lively_pipe = Pipeline(lively, stages=[Polite(), steer(lively), Signed()])
    direct = lively.complete(req("Please: Hello there"), model_stages=[steer(lively)])
    assert lively_pipe.chat("Hello there").text == direct.text + " [checked]"
    assert asyncio.run(lively_pipe.achat("Hello there")).text == direct.text + " [checked]"


def test_chat_command_takes_max_tokens_from_the_pipeline_file(lively: LocalBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``alignware chat --pipeline`` honours the file's ``defaults.max_tokens`` unless ``--max-tokens`` is given."""
    from middleware.cli import main

    lively.model.save_pretrained(tmp_path / "model")
    lively.tokenizer.save_pretrained(tmp_path / "model")
    cfg = tmp_path / "chat.yaml"
    cfg.write_text(f"llm: {tmp_path / 'model'}\ndefaults: {{max_tokens: 3}}\n")
    answers = []
    for extra in ([], ["--max-tokens", "8"]):
        assert main(["chat", "Hello", "--pipeline", str(cfg), "--no-stream", *extra]) == 0
        answers.append(capsys.readouterr().out.rstrip("\n"))
    short, longer = answers
    assert short and longer.startswith(short) and len(longer) > len(short)
