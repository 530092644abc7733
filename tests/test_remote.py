"""LiteLLMBackend against litellm's ``mock_response`` and a local OpenAI-compatible HTTP server.

Nothing of ours is mocked: the network boundary is either litellm's own mock path or a real HTTP
server on 127.0.0.1 that speaks the chat-completions API (scripted statuses, SSE streaming).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest

from middleware.errors import BackendError, InputError, StageError
from middleware.pipeline import Pipeline
from middleware.openai_backend import OpenAIBackend
from middleware.remote import LiteLLMBackend, is_retryable
from middleware.stages import PromptStage, ResponseStage
from middleware.types import ChatRequest, ChatResponse, load_pairs

from fake_upstream import FakeOpenAI, drip, fail, ok, raw_body, raw_stream

MOCK_TEXT = "Paris is the capital of France."
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


# the loopback upstream: the ``server`` fixture of conftest.py (tests/fake_upstream.py)
def remote(server: FakeOpenAI, model: str = "primary", **kw: Any) -> LiteLLMBackend:
    return LiteLLMBackend(f"openai/{model}", api_base=server.base, api_key="sk-test", **{"timeout": 10.0, **FAST, **kw})


def through_openai(server: FakeOpenAI, model: str = "primary", **kw: Any) -> OpenAIBackend:
    """``remote``'s backend with the other transport (``OpenAIBackend``: the openai client, aio_transport)."""
    return OpenAIBackend(f"openai_compatible/{model}", api_base=server.base, api_key="sk-test", **{"timeout": 10.0, **FAST, **kw})


#: the fault tests below run on both transports
BACKENDS = pytest.mark.parametrize("make", [remote, through_openai], ids=["litellm", "openai"])


def req(text: str = "What is the capital of France?", **params: Any) -> ChatRequest:
    return ChatRequest.build(text, **params)


# -- litellm mock_response -----------------------------------------------------------------------
def test_complete_returns_text_and_usage() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT)
    resp = llm.complete(req())
    assert resp.text == MOCK_TEXT
    assert resp.finish_reason == "stop"
    assert resp.model == "gpt-4o-mini"
    assert resp.usage.total_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_concatenates_to_mock_text() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT)
    chunks = list(llm.stream(req()))
    assert len(chunks) > 2
    assert "".join(c.delta for c in chunks) == MOCK_TEXT
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "stop" and chunks[-1].delta == ""
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_acomplete() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT)
    resp = await llm.acomplete(req())
    assert resp.text == MOCK_TEXT and resp.usage.total_tokens > 0


async def test_astream() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT)
    chunks = [c async for c in llm.astream(req())]
    assert "".join(c.delta for c in chunks) == MOCK_TEXT
    assert chunks[-1].finish_reason == "stop"


def test_mock_rate_limit_gives_up_after_max_retries() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response="litellm.RateLimitError", max_retries=2, **FAST)
    with pytest.raises(BackendError) as info:
        llm.complete(req())
    err = info.value
    assert (err.status_code, err.retryable, err.attempts) == (429, True, 3)
    assert "openai/gpt-4o-mini" in str(err) and "rate limit" in str(err).lower()


def test_every_call_tells_the_provider_sdk_not_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    real = litellm.completion
    ready = real(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response=MOCK_TEXT)
    sent: list[dict[str, Any]] = []

    def recording(**kwargs: Any) -> Any:
        sent.append(kwargs)
        return real(**kwargs) if kwargs.get("mock_response") is not None else ready

    monkeypatch.setattr(litellm, "completion", recording)
    assert LiteLLMBackend("openai/primary", api_key="sk-test", timeout=7.0).complete(req()).text == MOCK_TEXT
    assert (sent[-1]["max_retries"], sent[-1]["timeout"]) == (0, 7.0)
    fallback = {"model": "openai/backup", "mock_response": None}  # a mocked primary, a real fallback
    llm = LiteLLMBackend("openai/primary", mock_response="litellm.RateLimitError", max_retries=0, fallbacks=[fallback])
    assert llm.complete(req()).text == MOCK_TEXT
    assert sent[-2]["max_retries"] == 0 and sent[-1]["max_retries"] == 0 and sent[-1]["model"] == "openai/backup"


def test_mock_context_window_error_is_not_retried() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response="litellm.ContextWindowExceededError", **FAST)
    with pytest.raises(BackendError) as info:
        llm.complete(req())
    assert (info.value.status_code, info.value.retryable, info.value.attempts) == (400, False, 1)
    assert "context window" in info.value.provider_message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (litellm.RateLimitError("slow down", llm_provider="openai", model="m"), True),
        (litellm.Timeout("too slow", model="m", llm_provider="openai"), True),
        (litellm.APIConnectionError("refused", llm_provider="openai", model="m"), True),
        (litellm.InternalServerError("boom", llm_provider="openai", model="m"), True),
        (litellm.ServiceUnavailableError("busy", llm_provider="openai", model="m"), True),
        (litellm.BadRequestError("bad", model="m", llm_provider="openai"), False),
        (litellm.AuthenticationError("key", llm_provider="openai", model="m"), False),
        (
            litellm.PermissionDeniedError(
                "no", llm_provider="openai", model="m",
                response=httpx.Response(403, request=httpx.Request("POST", "http://x")),
            ),
            False,
        ),
        (litellm.NotFoundError("gone", model="m", llm_provider="openai"), False),
        (litellm.ContextWindowExceededError("long", model="m", llm_provider="openai"), False),
        (ValueError("a bug"), False),
    ],
)
def test_retry_classification(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(TypeError, match="num_retries"):
        LiteLLMBackend("openai/x", num_retries=2)
    with pytest.raises(ValueError, match="max_retries"):
        LiteLLMBackend("openai/x", max_retries=-1)
    with pytest.raises(ValueError, match=r"fallbacks\[0\]"):
        LiteLLMBackend("openai/x", fallbacks=[{"api_base": "http://x"}])
    with pytest.raises(TypeError, match="model stages"):
        LiteLLMBackend("openai/x", mock_response="hi").complete(req(), model_stages=[object()])


# -- local OpenAI-compatible server --------------------------------------------------------------
def test_request_parameters_reach_the_provider(server: FakeOpenAI) -> None:
    resp = remote(server).complete(req("hello", temperature=0.3, max_tokens=20, stop="END", seed=7))
    assert resp.text == "echo: hello"
    assert resp.usage.prompt_tokens == 5
    sent = server.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (0.3, 20, ["END"], 7)
    assert "top_p" not in sent


def test_rate_limit_is_retried_then_succeeds(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "Rate limit reached for requests"), ok(MOCK_TEXT))
    resp = remote(server).complete(req())
    assert resp.text == MOCK_TEXT
    assert server.calls("primary") == 2


def test_a_global_litellm_retry_setting_does_not_add_retries(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "num_retries", 3)
    server.script("primary", fail(503, "The server is overloaded"))
    with pytest.raises(BackendError) as info:
        remote(server, max_retries=1).complete(req())
    assert info.value.attempts == 2 and server.calls("primary") == 2
    server.script("primary", fail(401, "Incorrect API key provided: sk-test"))
    with pytest.raises(BackendError):
        remote(server, max_retries=1).complete(req())
    assert server.calls("primary") == 3  # one more call: the 401 was not retried by anyone


def test_server_errors_are_retried_then_give_up(server: FakeOpenAI) -> None:
    server.script("primary", fail(503, "The server is overloaded"))
    with pytest.raises(BackendError) as info:
        remote(server, max_retries=2).complete(req())
    err = info.value
    assert (err.status_code, err.retryable, err.attempts) == (503, True, 3)
    assert err.provider_message == "The server is overloaded"
    assert server.calls("primary") == 3


def test_retry_after_header_is_honoured_within_backoff_max(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "slow down", **{"Retry-After": "0.2"}), ok("done"))
    t0 = time.perf_counter()
    assert remote(server, backoff_max=1.0).complete(req()).text == "done"
    assert time.perf_counter() - t0 >= 0.2


def test_a_retry_after_longer_than_backoff_max_is_not_waited_out_but_reported(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "slow down", **{"Retry-After": "30"}), ok("done"))
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        remote(server, backoff_max=1.0).complete(req())
    assert time.perf_counter() - t0 < 5 and server.calls("primary") == 1  # no retry that would be refused again
    assert info.value.status_code == 429 and info.value.retry_after == 30.0


def test_unauthorized_is_not_retried(server: FakeOpenAI) -> None:
    server.script("primary", fail(401, "Incorrect API key provided: sk-test"))
    with pytest.raises(BackendError) as info:
        remote(server, fallbacks=["openai/backup"]).complete(req())
    err = info.value
    assert err.attempts == 1 and err.status_code == 401 and err.retryable is False
    assert err.provider_message == "Incorrect API key provided: sk-test"
    assert "openai/primary" in str(err) and "Incorrect API key" in str(err)
    assert server.calls("primary") == 1 and server.calls("backup") == 0


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(server: FakeOpenAI, status: int) -> None:
    server.script("primary", fail(status, f"client error {status}"))
    with pytest.raises(BackendError) as info:
        remote(server).complete(req())
    assert (info.value.status_code, info.value.attempts, info.value.retryable) == (status, 1, False)
    assert server.calls("primary") == 1


def test_fallback_after_primary_keeps_failing(server: FakeOpenAI) -> None:
    server.script("primary", fail(503, "overloaded"))
    server.script("backup", ok("from the backup"))
    resp = remote(server, max_retries=1, fallbacks=["openai/backup"]).complete(req())
    assert resp.text == "from the backup" and resp.model == "backup"
    assert server.calls("primary") == 2 and server.calls("backup") == 1


def test_fallback_with_its_own_arguments(server: FakeOpenAI) -> None:
    llm = LiteLLMBackend(
        "openai/primary", api_base="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0,
        fallbacks=[{"model": "openai/backup", "api_base": server.base}], **FAST,
    )
    assert llm.complete(req("hi")).text == "echo: hi"


def test_every_model_failing_names_them_all(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "primary is rate limited"))
    server.script("backup", fail(500, "backup crashed"))
    with pytest.raises(BackendError) as info:
        remote(server, max_retries=1, fallbacks=["openai/backup"]).complete(req())
    err = info.value
    assert err.attempts == 4 and err.status_code == 500 and err.provider_message == "backup crashed"
    assert "openai/primary" in str(err) and "openai/backup" in str(err)


async def test_async_retry_then_success(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "slow down"), fail(502, "bad gateway"), ok(MOCK_TEXT))
    resp = await remote(server).acomplete(req())
    assert resp.text == MOCK_TEXT and server.calls("primary") == 3


async def test_async_unauthorized_is_not_retried(server: FakeOpenAI) -> None:
    server.script("primary", fail(401, "bad key"))
    with pytest.raises(BackendError) as info:
        await remote(server).acomplete(req())
    assert info.value.attempts == 1 and info.value.provider_message == "bad key"


def test_stream_over_http(server: FakeOpenAI) -> None:
    chunks = list(remote(server).stream(req("stream me")))
    assert "".join(c.delta for c in chunks) == "echo: stream me"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None


def test_stream_retried_when_it_fails_before_the_first_chunk(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "slow down"), ok(MOCK_TEXT))
    chunks = list(remote(server).stream(req()))
    assert "".join(c.delta for c in chunks) == MOCK_TEXT
    assert server.calls("primary") == 2


def test_stream_not_retried_after_the_first_chunk(server: FakeOpenAI) -> None:
    server.script("primary", {"status": 200, "text": MOCK_TEXT, "break_stream": "connection lost upstream"}, ok("x"))
    got: list[str] = []
    with pytest.raises(BackendError) as info:
        for chunk in remote(server).stream(req()):
            got.append(chunk.delta)
    assert got and MOCK_TEXT.startswith("".join(got))
    assert info.value.attempts == 1 and server.calls("primary") == 1
    assert "openai/primary" in str(info.value)


@pytest.mark.parametrize("body", ["data: [DONE]\n\n", "", "this is not server-sent events\n"])
def test_an_empty_stream_is_a_failed_attempt_not_an_empty_answer(server: FakeOpenAI, body: str) -> None:
    server.script("primary", raw_stream(body), ok(MOCK_TEXT))
    chunks = list(remote(server).stream(req()))
    assert "".join(c.delta for c in chunks) == MOCK_TEXT and server.calls("primary") == 2  # retried
    server.script("primary", raw_stream(body))
    with pytest.raises(BackendError) as info:
        list(remote(server, max_retries=1).stream(req()))
    assert "without a single event" in str(info.value) and info.value.attempts == 2


@BACKENDS
@pytest.mark.parametrize("body", ["data: [DONE]\n\n", "", "this is not server-sent events\n"])
async def test_an_empty_async_stream_is_retried_then_reported(server: FakeOpenAI, body: str, make: Any) -> None:
    server.script("primary", raw_stream(body), ok(MOCK_TEXT))
    chunks = [c async for c in make(server).astream(req())]
    assert "".join(c.delta for c in chunks) == MOCK_TEXT and server.calls("primary") == 2
    server.script("primary", raw_stream(body))
    with pytest.raises(BackendError) as info:
        [c async for c in make(server, max_retries=1).astream(req())]
    assert "without a single event" in str(info.value) and info.value.attempts == 2


async def test_astream_retried_then_streams(server: FakeOpenAI) -> None:
    server.script("primary", fail(500, "boom"), ok(MOCK_TEXT))
    chunks = [c async for c in remote(server).astream(req())]
    assert "".join(c.delta for c in chunks) == MOCK_TEXT and server.calls("primary") == 2


def test_batch_keeps_order(server: FakeOpenAI) -> None:
    requests = [req(f"question {i}") for i in range(6)]
    out = remote(server, max_concurrency=3).batch(requests)
    assert [r.text for r in out] == [f"echo: question {i}" for i in range(6)]


async def test_abatch_keeps_order(server: FakeOpenAI) -> None:
    out = await remote(server, max_concurrency=2).abatch([req(f"q{i}") for i in range(4)])
    assert [r.text for r in out] == [f"echo: q{i}" for i in range(4)]


async def test_abatch_failure_leaves_no_request_running(server: FakeOpenAI) -> None:
    server.script("primary", fail(400, "bad request"), ok("fine"))
    before = asyncio.all_tasks()
    with pytest.raises(BackendError, match="bad request"):
        await remote(server, max_concurrency=1).abatch([req(f"q{i}") for i in range(4)])
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []  # the three requests queued behind the failure were cancelled, not left to run
    assert server.calls("primary") == 1


# -- the pipeline around a remote model ----------------------------------------------------------
class Suffix(PromptStage):
    def __init__(self, suffix: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.suffix = suffix

    def process(self, request: ChatRequest) -> ChatRequest:
        return request.with_last_user_message(request.last_user_message + self.suffix)


class Broken(PromptStage):
    def process(self, request: ChatRequest) -> ChatRequest:
        raise RuntimeError("classifier unavailable")


class Slow(PromptStage):
    def process(self, request: ChatRequest) -> ChatRequest:
        time.sleep(0.3)
        return request


class Shout(ResponseStage):
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response.model_copy(update={"text": response.text.upper()})


def test_pipeline_failing_middle_stage_passes_through() -> None:
    llm = LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT)
    pipe = Pipeline(llm, stages=[Suffix(" Be brief."), Broken(), Shout()])
    reply = pipe.chat("Capital of France?")
    assert reply.text == MOCK_TEXT.upper()
    assert [t.verdict for t in reply.trace] == ["modified", "failed", "modified"]
    failed = reply.trace[1]
    assert failed.stage == "Broken" and failed.reason == "RuntimeError: classifier unavailable"


def test_pipeline_stage_timeout_is_marked_failed() -> None:
    pipe = Pipeline(LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT), stages=[Slow(timeout=0.05)])
    reply = pipe.chat("hi")
    assert reply.text == MOCK_TEXT
    assert reply.trace[0].verdict == "failed" and "timed out" in (reply.trace[0].reason or "")


def test_pipeline_stage_set_to_raise() -> None:
    pipe = Pipeline(LiteLLMBackend("openai/gpt-4o-mini", mock_response=MOCK_TEXT), stages=[Broken(on_error="raise")])
    with pytest.raises(StageError, match="classifier unavailable"):
        pipe.chat("hi")


def test_pipeline_over_http_stream(server: FakeOpenAI) -> None:
    pipe = Pipeline(remote(server), stages=[Suffix("!"), Shout()])
    chunks = list(pipe.stream("hello"))
    assert "".join(c.delta for c in chunks) == "ECHO: HELLO!"
    assert [t.stage for t in chunks[-1].trace or []] == ["Suffix", "Shout"]


# -- bad input -----------------------------------------------------------------------------------
def test_no_messages_is_an_input_error() -> None:
    with pytest.raises(InputError, match="messages is empty"):
        ChatRequest.build([])


def test_unknown_role_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"messages\[0\].*unknown role 'robot'"):
        ChatRequest.build([{"role": "robot", "content": "beep"}])


def test_image_content_is_forwarded_upstream_as_sent(server: FakeOpenAI) -> None:
    parts = [{"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]
    resp = remote(server).complete(ChatRequest.build([{"role": "user", "content": parts}]))
    assert server.requests[-1]["messages"][0]["content"] == parts
    assert resp.text == "echo: What is"


def test_malformed_jsonl_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "Q?", "chosen": "good"}) + "\n")
    with pytest.raises(InputError, match=rf"{path}:2: rejected"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(InputError, match=rf"{path}:2: invalid JSON"):
        load_pairs(path)


def test_sync_pipeline_passes_tool_calls_and_every_choice(server: FakeOpenAI) -> None:
    """The sync twins of what ``test_server_fields`` shows through the server: a tool-call reply skips the
    response stages (streamed and not), and each of ``n`` choices goes through them."""
    from fake_upstream import tool_call

    class Shout(ResponseStage):
        def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
            return response.model_copy(update={"text": response.text.upper()})

    pipe = Pipeline(remote(server), [Shout()])
    server.script("primary", tool_call("weather", '{"city": "Oslo"}'))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    reply = pipe.chat("Weather?", openai_fields={"tools": tools})
    assert reply.tool_calls and reply.tool_calls[0]["function"]["name"] == "weather" and reply.finish_reason == "tool_calls"
    assert [(t.verdict, t.reason) for t in reply.trace] == [("skipped", "no text to act on: the reply is tool calls only")]
    chunks = list(pipe.stream("Weather?", openai_fields={"tools": tools}))
    args = "".join(tc["function"].get("arguments", "") for c in chunks for tc in (c.tool_calls or []))
    assert json.loads(args) == {"city": "Oslo"} and chunks[-1].trace is not None and chunks[-1].trace[0].verdict == "skipped"
    server.script("primary", ok("fine"))
    reply = pipe.chat("hi", openai_fields={"n": 2})
    assert [c.text for c in reply.choices] == ["FINE", "FINE (2)"]
    assert [(t.choice, t.verdict) for t in reply.trace] == [(0, "modified"), (1, "modified")]
    with pytest.raises(InputError, match="n > 1") as e:
        list(pipe.stream("hi", openai_fields={"n": 2}))
    assert e.value.field == "n"


@BACKENDS
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_dripping_upstream_cannot_hold_an_async_attempt_open(server: FakeOpenAI, streamed: bool, make: Any) -> None:
    server.script("primary", drip(6.0))
    backend = make(server, timeout=1.0, max_retries=0)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        if streamed:
            [c async for c in backend.astream(req())]
        else:
            await backend.acomplete(req())
    assert time.perf_counter() - t0 < 4.0  # the drip goes on for 6 s
    assert "AttemptTimeout" in str(info.value) and info.value.status_code == 408


@BACKENDS
async def test_a_stream_that_starts_then_drips_ends_with_an_error_within_the_timeout(server: FakeOpenAI, make: Any) -> None:
    server.script("primary", drip(6.0, first="Paris"))
    got: list[str] = []
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        async for chunk in make(server, timeout=1.0, max_retries=0).astream(req()):
            got.append(chunk.delta)
    assert "".join(got) == "Paris" and time.perf_counter() - t0 < 4.0
    assert "no next chunk within the timeout" in str(info.value)


CUT_EVENT = ('data: {"id": "c", "object": "chat.completion.chunk", "model": "primary", '
             '"choices": [{"index": 0, "delta": {"content": "Paris is"}, "finish_reason": null}]}\n\n')


@BACKENDS
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_stream_cut_off_mid_answer_is_an_error_not_a_short_answer(server: FakeOpenAI, make: Any, asynchronous: bool) -> None:
    # a close-delimited body that stops after a piece: no [DONE], no finish reason, no HTTP error either
    server.script("primary", raw_stream(CUT_EVENT))
    got: list[str] = []
    with pytest.raises(BackendError) as info:
        if asynchronous:
            async for chunk in make(server, max_retries=0).astream(req()):
                got.append(chunk.delta)
        else:
            for chunk in make(server, max_retries=0).stream(req()):
                got.append(chunk.delta)
    assert "".join(got) == "Paris is" and "stream" in str(info.value)


@BACKENDS
@pytest.mark.parametrize("body", [b"{not json", b'{"choices": "\xff\xfe"}', b"{}"], ids=["not-json", "not-utf8", "no-choices"])
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_broken_answer_is_retried_then_reported(server: FakeOpenAI, make: Any, body: bytes, asynchronous: bool) -> None:
    async def ask(llm: Any) -> Any:
        return await llm.acomplete(req()) if asynchronous else llm.complete(req())

    server.script("primary", raw_body(body), ok(MOCK_TEXT))
    assert (await ask(make(server))).text == MOCK_TEXT and server.calls("primary") == 2
    server.script("primary", raw_body(body))
    with pytest.raises(BackendError) as info:
        await ask(make(server, max_retries=1))
    assert info.value.status_code is None or info.value.status_code >= 500
