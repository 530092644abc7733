"""``steering.hooks.steer`` and steered generation through ``LocalBackend``: tensor and tuple block
outputs, KV cache against recompute, batches, streams, and hooks removed whatever happens."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
import torch

from middleware.errors import BackendError, InputError
from middleware.stages import ModelStage
from middleware.types import ChatRequest
from steering.hooks import combine_directions, hidden_size, steer
from steering.stage import SteeringStage
from steering.vector import SteeringVector
from steering_models import backend, hook_count, lively_model, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

PROMPTS = ["Hi", "What is the capital of France? Please answer.", "The quick brown fox jumps over the lazy dog. Tell me more.", "Paris"]


@pytest.fixture(scope="module", params=[("llama", False), ("llama", True), ("qwen2", True), ("gpt2", False)],
                ids=["llama", "llama-tuple", "qwen2-tuple", "gpt2"])
def model_tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    arch, tuples = request.param
    return lively_model(tmp_path_factory.mktemp(arch), arch, tuples=tuples)


def vector(model: Any, scale: float = 2.0, seed: int = 0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    width = hidden_size(model)
    return SteeringVector({i: torch.randn(width, generator=gen) * scale for i in (0, 1, 2)}, model_type=model.config.model_type)


def logits(model: Any, tok: Any, text: str = "The quick brown fox") -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_a_zero_vector_changes_nothing_and_a_real_one_does(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    plain = logits(model, tok)
    zero = {i: torch.zeros(hidden_size(model)) for i in range(3)}
    with steer(model, zero, 5.0):
        assert torch.equal(logits(model, tok), plain)
    with steer(model, zero, 5.0, normalize=True):
        torch.testing.assert_close(logits(model, tok), plain)
    with vector(model).apply(model, coefficient=1.0):
        assert (logits(model, tok) - plain).abs().max() > 1e-2
    assert torch.equal(logits(model, tok), plain)
    assert hook_count(model) == 0


def test_adds_to_the_block_output_and_normalize_keeps_the_norm(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    from steering.hidden import capture_blocks

    ids = tok("Hello! How can I help you today?", return_tensors="pt")
    d = torch.randn(hidden_size(model))

    def block0() -> torch.Tensor:  # hooks run in order: this one, registered last, sees the steered output
        with capture_blocks(model, [0]) as seen, torch.no_grad():
            model(**ids)
        return seen[0]

    before = block0()
    with steer(model, {0: d}, 0.5):
        torch.testing.assert_close(block0(), before + 0.5 * d)
    with steer(model, {-3: d}, 3.0, normalize=True):  # -3 is block 0 of 3
        after = block0()
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1))
    assert not torch.allclose(after, before, atol=1e-3)


def test_several_vectors_compose(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    a, b = vector(model, seed=1), vector(model, seed=2)
    with a.apply(model, 1.0), b.apply(model, -2.0):
        nested = logits(model, tok)
    with steer(model, combine_directions([(a.directions, 1.0), (b.directions, -2.0)])):
        summed = logits(model, tok)
    with (a - 2 * b).apply(model, 1.0):
        arithmetic = logits(model, tok)
    torch.testing.assert_close(nested, summed)
    torch.testing.assert_close(nested, arithmetic)


def test_bad_layers_and_widths_are_input_errors(model_tok: tuple[Any, Any]) -> None:
    model, _ = model_tok
    with pytest.raises(InputError, match="3 decoder blocks"):
        with steer(model, {3: torch.zeros(hidden_size(model))}):
            pass
    with pytest.raises(InputError, match=f"hidden size is {hidden_size(model)}"):
        with steer(model, {0: torch.zeros(hidden_size(model) + 1)}):
            pass
    assert hook_count(model) == 0


def greedy_no_cache(model: Any, prompt: list[int], eos: set[int], steps: int) -> list[int]:
    """Greedy continuation recomputing the whole sequence every step (no KV cache)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if nxt in eos:
                break
            ids.append(nxt)
    return ids[len(prompt):]


def test_steered_generation_with_the_kv_cache_matches_a_recompute(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    be = backend(model, tok)
    stage = SteeringStage(vector(model), 1.0, layers=[0, 1, 2])
    plain_texts = []
    for p in PROMPTS[:3]:
        req = ChatRequest.build(p, temperature=0)
        got = be.complete(req, model_stages=[stage])
        with stage.attach(model):
            ref = greedy_no_cache(model, be.prompt_ids(req), set(be._decoder.eos_ids), be.max_tokens)
        assert got.text == tok.decode(ref, skip_special_tokens=True)
        plain_texts.append(be.complete(req).text)
        assert got.trace[0].verdict == "modified"
    assert hook_count(model) == 0
    assert any(be.complete(ChatRequest.build(p, temperature=0), model_stages=[stage]).text != t for p, t in zip(PROMPTS, plain_texts))


def test_a_batch_gives_what_one_by_one_gives_and_streams_match(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    be = backend(model, tok)
    stage = SteeringStage(vector(model), 1.0, normalize=True)
    reqs = [ChatRequest.build(p, temperature=0) for p in PROMPTS]
    alone = [be.complete(r, model_stages=[stage]).text for r in reqs]
    assert [r.text for r in be.batch(reqs, model_stages=[stage])] == alone
    assert len({len(be.prompt_ids(r)) for r in reqs}) > 1  # the batch really is padded
    for r, text in zip(reqs, alone):
        chunks = list(be.stream(r, model_stages=[stage]))
        assert "".join(c.delta for c in chunks) == text
        assert hook_count(model) == 0


class Boom(ModelStage):
    """A model stage whose hook raises during the forward pass."""

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        def hook(*_: Any) -> None:
            raise RuntimeError("boom")

        handle = model.get_output_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def test_hooks_are_gone_when_generation_raises(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    be = backend(model, tok)
    stage = SteeringStage(vector(model), 1.0)
    req = ChatRequest.build("Hi", temperature=0)
    with pytest.raises(BackendError, match="boom"):
        be.complete(req, model_stages=[stage, Boom()])
    assert hook_count(model) == 0
    with pytest.raises(BackendError, match="boom"):
        list(be.stream(req, model_stages=[stage, Boom()]))
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="inside"):
        with stage.attach(model):
            assert hook_count(model) == 3
            raise ValueError("inside")
    assert hook_count(model) == 0
