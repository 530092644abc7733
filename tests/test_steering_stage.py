"""``SteeringStage``: one or several vectors in a pipeline, from code and from a config; a vector for
another model fails the stage; a remote LLM refuses the stage when the pipeline is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from middleware import Pipeline
from middleware.config import load_pipeline
from middleware.errors import InputError, StageError
from middleware.remote import LiteLLMBackend
from steering import SteeringStage
from steering.hooks import hidden_size
from steering.vector import SteeringVector
from steering_models import backend, hook_count, lively_model, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return lively_model(tmp_path_factory.mktemp("llama"), "llama")


def make(model: Any, seed: int, width: int | None = None) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    w = width or hidden_size(model)
    return SteeringVector({i: torch.randn(w, generator=gen) * 2 for i in (0, 1, 2)}, model_type="llama", layers=[1, 2], coefficient=1.5)


def test_several_vectors_and_their_coefficients(model_tok: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = model_tok
    a, b = make(model, 1), make(model, 2)
    a.save(tmp_path / "a")
    st = SteeringStage([tmp_path / "a", b], [2.0, None], layers=[0, 2])
    assert st.coefficients == [2.0, 1.5] and sorted(st.directions) == [0, 2]
    torch.testing.assert_close(st.directions[2], 2.0 * a.directions[2] + 1.5 * b.directions[2])
    assert sorted(SteeringStage(a).directions) == [1, 2]  # the vector's own layers and coefficient
    torch.testing.assert_close(SteeringStage(a).directions[1], 1.5 * a.directions[1])
    with pytest.raises(InputError, match="2 coefficients for 1"):
        SteeringStage(a, [1.0, 2.0])
    with pytest.raises(InputError, match="different hidden sizes"):
        SteeringStage([a, make(model, 3, width=8)])
    assert st.deterministic()


def test_in_a_pipeline_from_a_config(model_tok: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = model_tok
    a = make(model, 1)
    a.save(tmp_path / "a")
    llm = backend(model, tok)
    cfg = {"stages": [{"type": "steering_vector", "path": str(tmp_path / "a"), "coefficient": 4, "normalize": True}]}
    pipe = load_pipeline(cfg, llm=llm)
    steered = pipe.chat("What is the capital of France?", temperature=0)
    plain = llm.complete(pipe._request("What is the capital of France?", {"temperature": 0}))
    assert steered.trace[0].verdict == "modified" and steered.trace[0].kind == "model"
    assert steered.text != plain.text and hook_count(model) == 0
    two = load_pipeline({"stages": [{"type": "steering_vector", "vectors": [str(tmp_path / "a"), {"path": str(tmp_path / "a"), "coefficient": -4}]}]}, llm=llm)
    assert two.chat("What is the capital of France?", temperature=0).text != steered.text
    with pytest.raises(InputError, match="either path"):
        load_pipeline({"stages": [{"type": "steering_vector"}]}, llm=llm)
    with pytest.raises(InputError, match=r"vectors\[0\]"):
        load_pipeline({"stages": [{"type": "steering_vector", "vectors": [{"file": "x"}]}]}, llm=llm)


def test_a_vector_for_another_model_fails_the_stage_and_names_both_sizes(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    other = make(model, 1, width=48)
    st = SteeringStage(other, 1.0)
    with pytest.raises(InputError, match="hidden size 48 .* the model has hidden size 32"):
        st.attach(model)
    llm = backend(model, tok)
    got = Pipeline(llm, [st]).chat("Hi", temperature=0)
    assert got.trace[0].verdict == "failed" and "hidden size 48" in (got.trace[0].reason or "")
    assert got.text == llm.complete(Pipeline(llm)._request("Hi", {"temperature": 0})).text
    with pytest.raises(StageError, match="hidden size 48"):
        Pipeline(llm, [SteeringStage(other, 1.0, on_error="raise")]).chat("Hi", temperature=0)
    assert hook_count(model) == 0


def test_a_remote_llm_refuses_a_steering_stage_when_the_pipeline_is_built(model_tok: tuple[Any, Any]) -> None:
    model, _ = model_tok
    with pytest.raises(InputError, match="act inside the model's layers.*'openai/x' is reached over an API"):
        Pipeline(LiteLLMBackend("openai/x"), [SteeringStage(make(model, 1))])


def test_the_trace_says_where_and_how_strongly_the_model_is_steered(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    r = Pipeline(backend(model, tok, max_tokens=3), [SteeringStage(make(model, 1), 0.5)]).chat("Hi")
    assert (r.trace[0].verdict, r.trace[0].reason) == ("modified", "steering blocks 1-2 (coefficient 0.5)")
    st = SteeringStage([make(model, 1), make(model, 2)], [0.5, 2.0], layers=[0, 2], normalize=True)
    assert st.describe() == "steering blocks 0,2 (coefficient 0.5, 2, normalized)"
