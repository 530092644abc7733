"""Property-based fuzzing (hypothesis): generated request bodies against the server, generated files
against the config and pair loaders. A client error is a 4xx in OpenAI's error shape, never a 5xx; a bad
file is an ``InputError``, never another exception. The server runs in-process (httpx's ASGI transport),
so a thousand requests take seconds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from middleware import FunctionLLM, InputError, Pipeline, load_pairs  # noqa: E402
from middleware.config import load_pipeline  # noqa: E402
from middleware.server import create_app  # noqa: E402
from middleware.stages import IdentityPromptStage, IdentityResponseStage  # noqa: E402

CASES = 1000
text = st.text(st.characters(exclude_categories=()), max_size=30)  # unpaired surrogates included
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "", "USER"])
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "x"])},
                                       optional={"text": json_values, "image_url": json_values}), max_size=3)
message = st.fixed_dictionaries(
    {"role": roles | json_values},
    optional={"content": text | parts | json_values, "tool_calls": json_values, "tool_call_id": json_values, "name": json_values},
)
FIELDS = ["model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "tools",
          "tool_choice", "response_format", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
          "logit_bias", "user", "metadata", "stream", "stream_options", "parallel_tool_calls"]
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | json_values},
                          optional={f: json_values for f in FIELDS}),
    st.fixed_dictionaries({"messages": st.lists(message, min_size=1, max_size=3)},
                          optional={"temperature": st.floats(), "max_tokens": st.integers(-5, 2**40),
                                    "stop": st.lists(text, max_size=5) | text, "n": st.integers(-2, 200),
                                    "stream": st.booleans()}),
)

# the events of a run, shared across examples: (status, body) per request
_pipeline = Pipeline(FunctionLLM(lambda m: "fine", name="echo"), [IdentityPromptStage(), IdentityResponseStage()])
_app = create_app(_pipeline)


async def _post(raw: bytes) -> tuple[int, Any]:
    transport = httpx.ASGITransport(app=_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        r = await client.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        return r.status_code, r.text


def _check(status: int, body: str) -> None:
    assert status < 500, body
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"] and "type" in error


@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(bodies)
def test_generated_request_bodies_never_get_a_5xx(body: Any) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    _check(*asyncio.run(_post(raw)))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.binary(max_size=200) | st.integers(1, 5000).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"))
def test_generated_raw_bytes_never_get_a_5xx(raw: bytes) -> None:
    _check(*asyncio.run(_post(raw)))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_generated_config_files_load_or_raise_input_error(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "p.yaml"
    path.write_bytes(raw)
    try:
        load_pipeline(path, llm=FunctionLLM(lambda m: "x"))
    except InputError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode()), max_size=4))
def test_generated_pair_files_load_or_raise_input_error(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        load_pairs(path)
    except InputError as e:
        assert str(path) in str(e)
