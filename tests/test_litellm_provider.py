"""``litellm.completion(model="alignware/NAME")``: the real litellm library, our provider, a pipeline
whose LLM is a loopback OpenAI-compatible upstream (tests/fake_upstream.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, Iterator

import litellm
import pytest

from fake_upstream import FakeOpenAI, cleared, ok
from middleware import BackendError, InputError, Pipeline, PromptStage
from middleware.litellm_provider import ENV_PIPELINES, PROVIDER, pipeline_for, register, unregister
from middleware.remote import LiteLLMBackend
from middleware.error_status import error_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "litellm_proxy"
sys.path.insert(0, str(EXAMPLE))
from stages import ReplaceWords  # noqa: E402

QUESTION = [{"role": "user", "content": "Name a colour."}]
ANSWER = "My favourite colour is blue, a calm colour."
CORRECTED = "My favorite color is blue, a calm color."


class Polite(PromptStage):
    def process(self, request):
        return request.with_last_user_message(request.last_user_message + " Please be brief.")


@pytest.fixture
def upstream(_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake = cleared(_upstream)
    fake.script("upstream-model", ok(ANSWER))
    yield fake
    unregister("demo")


def _pipeline(fake: FakeOpenAI) -> Pipeline:
    llm = LiteLLMBackend("openai/upstream-model", api_base=fake.base, api_key="sk-test", timeout=10.0, max_retries=0)
    return Pipeline(llm, [Polite(), ReplaceWords({"colour": "color", "favourite": "favorite"})])


def _check_trace(trace: list[dict[str, Any]]) -> None:
    stages = {t["stage"]: t for t in trace}
    assert stages["Polite"]["verdict"] == "modified"
    assert stages["Polite"]["after"] == "Name a colour. Please be brief."
    assert stages["ReplaceWords"]["verdict"] == "modified"
    assert stages["ReplaceWords"]["after"] == CORRECTED


def _upstream_saw(fake: FakeOpenAI) -> str:
    assert len(fake.requests) == 1
    return fake.requests[0]["messages"][-1]["content"]


def test_completion_runs_the_pipeline(upstream: FakeOpenAI) -> None:
    register("demo", _pipeline(upstream))
    reply = litellm.completion(model="alignware/demo", messages=QUESTION, temperature=0.3, max_tokens=50, seed=7)
    assert reply.choices[0].message.content == CORRECTED
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "alignware/demo"
    assert _upstream_saw(upstream) == "Name a colour. Please be brief."
    sent = upstream.requests[0]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.3, 50, 7)
    assert reply.usage.prompt_tokens == 5
    _check_trace(reply.alignware_trace)
    assert reply._hidden_params["alignware_trace"] == reply.alignware_trace


def test_acompletion_runs_the_pipeline(upstream: FakeOpenAI) -> None:
    register("demo", _pipeline(upstream))
    reply = asyncio.run(litellm.acompletion(model="alignware/demo", messages=QUESTION))
    assert reply.choices[0].message.content == CORRECTED
    assert _upstream_saw(upstream) == "Name a colour. Please be brief."
    _check_trace(reply.alignware_trace)


def _streamed(chunks: list[Any]) -> tuple[str, list[dict[str, Any]], list[str]]:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    traces = [t for c in chunks if (t := getattr(c, "alignware_trace", None))]
    assert len(traces) == 1, "exactly one chunk carries the trace"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, traces[0], finishes


def test_streaming_runs_the_pipeline_piece_by_piece(upstream: FakeOpenAI) -> None:
    register("demo", _pipeline(upstream))
    chunks = list(litellm.completion(model="alignware/demo", messages=QUESTION, stream=True))
    text, trace, finishes = _streamed(chunks)
    assert text == CORRECTED
    assert finishes == ["stop"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2, "the answer streamed in pieces"
    assert _upstream_saw(upstream) == "Name a colour. Please be brief."
    assert upstream.requests[0]["stream"] is True
    _check_trace(trace)


def test_async_streaming_runs_the_pipeline(upstream: FakeOpenAI) -> None:
    register("demo", _pipeline(upstream))

    async def go() -> list[Any]:
        stream = await litellm.acompletion(model="alignware/demo", messages=QUESTION, stream=True)
        return [c async for c in stream]

    chunks = asyncio.run(go())
    text, trace, finishes = _streamed(chunks)
    assert text == CORRECTED
    assert finishes == ["stop"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2
    _check_trace(trace)


def test_register_a_pipeline_file(upstream: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        f"llm: openai/upstream-model\nllm_options: {{api_base: '{upstream.base}', api_key: sk-test, max_retries: 0}}\n"
        "stages:\n  - {type: append_to_prompt, text: Please be brief.}\n"
        "  - {type: 'stages:ReplaceWords', replace: {colour: color, favourite: favorite}}\n"
    )
    register("demo", tmp_path / "p.yaml")
    reply = litellm.completion(model="alignware/demo", messages=QUESTION)
    assert reply.choices[0].message.content == CORRECTED
    assert _upstream_saw(upstream) == "Name a colour. Please be brief."


def test_pipelines_named_in_the_environment(upstream: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p.yaml").write_text(
        f"llm: openai/upstream-model\nllm_options: {{api_base: '{upstream.base}', api_key: sk-test}}\n"
        "stages: [{type: append_to_prompt, text: Please be brief.}]\n"
    )
    monkeypatch.setenv(ENV_PIPELINES, f"other=/nowhere.yaml; demo={tmp_path / 'p.yaml'}")
    reply = litellm.completion(model="alignware/demo", messages=QUESTION)
    assert reply.choices[0].message.content == ANSWER
    assert pipeline_for("demo") is pipeline_for("demo"), "built once, then kept"


def test_unknown_pipeline_is_a_clear_error(upstream: FakeOpenAI) -> None:
    register("demo", _pipeline(upstream))
    with pytest.raises(litellm.exceptions.BadRequestError, match="no alignware pipeline named 'missing'.*demo"):
        litellm.completion(model="alignware/missing", messages=QUESTION)
    with pytest.raises(InputError, match="no alignware pipeline"):
        pipeline_for("missing")


@pytest.mark.parametrize("param", [{"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, {"n": 2}])
def test_fields_a_pipeline_cannot_carry_are_refused(upstream: FakeOpenAI, param: dict[str, Any]) -> None:
    register("demo", _pipeline(upstream))
    name = next(iter(param))
    with pytest.raises(litellm.exceptions.BadRequestError, match=f"{name}: not supported by alignware pipelines"):
        litellm.completion(model="alignware/demo", messages=QUESTION, **param)
    assert upstream.requests == [], "nothing was sent upstream"


def test_upstream_errors_get_the_status_the_server_answers(upstream: FakeOpenAI) -> None:
    upstream.script("upstream-model", {"status": 404, "message": "no such model", "headers": {}})
    register("demo", _pipeline(upstream))
    with pytest.raises(Exception) as caught:
        litellm.completion(model="alignware/demo", messages=QUESTION)
    expected, _ = error_for(BackendError("x", status_code=404))
    assert caught.value.status_code == expected  # type: ignore[attr-defined]
    assert "upstream-model" in str(caught.value)


def test_register_checks_the_name_and_adds_the_provider_once(upstream: FakeOpenAI) -> None:
    with pytest.raises(InputError, match="without '/'"):
        register("a/b", _pipeline(upstream))
    register("demo", _pipeline(upstream))
    register("demo", _pipeline(upstream))
    assert sum(1 for item in litellm.custom_provider_map if item["provider"] == PROVIDER) == 1
