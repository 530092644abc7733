"""``SharedBase`` on a tiny random Llama: adapters on one base, switched per call and per thread, safely."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from local_models import TEXTS, adapters, fresh_bases  # noqa: F401  (fixtures)
from local_models import logits as _logits
from middleware.errors import AlignwareError, InputError
from middleware.shared_base import SharedBase
from rewriters.generator import TextGenerator


pytestmark = pytest.mark.usefixtures("fresh_bases")


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


def test_a_shared_llm_spec_chats_on_the_shared_base(tiny_model_dir: Path) -> None:
    from middleware import load_pipeline
    from middleware.llm import make_llm

    llm = make_llm(f"shared:{tiny_model_dir}", max_tokens=3)
    shared = SharedBase.get(tiny_model_dir)
    assert llm.model.unwrap is shared.model and llm.max_tokens == 3  # type: ignore[attr-defined]
    pipe = load_pipeline({"llm": f"shared:{tiny_model_dir}", "llm_options": {"max_tokens": 2}})
    assert pipe.llm.model.unwrap is shared.model  # type: ignore[attr-defined]
    assert pipe.chat("Hello!").usage.completion_tokens <= 2


def test_an_adapter_missing_weights_of_its_own_is_refused_and_a_second_one_loads_quietly(
    tiny_model_dir: Path, adapters: tuple[Path, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    shared = SharedBase.get(tiny_model_dir)
    shared.add_adapter("first", adapters[0])
    shared.add_adapter("second", adapters[1])  # transformers would report "first"'s weights as missing here
    assert "LOAD REPORT" not in capfd.readouterr().err

    short = tmp_path / "short"
    shutil.copytree(adapters[1], short)
    (short / "alignware.json").unlink()  # no checksums to trip over first
    weights = load_file(short / "adapter_model.safetensors")
    dropped = sorted(k for k in weights if "lora_A" in k)[0]
    del weights[dropped]
    save_file(weights, short / "adapter_model.safetensors")
    with pytest.raises(AlignwareError, match=r"lacks 1 of the adapter's weights, such as .*\.lora_A\.short\."):
        shared.add_adapter("short", short)
    assert list(shared.adapters) == ["first", "second"]
