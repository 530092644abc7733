"""``OpenAIBackend`` (the ``openai`` client's transport) against the loopback fake upstream, alone and
behind the real server with the real ``openai`` client: the same answers, retries, fallbacks and errors
as ``LiteLLMBackend``."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import pytest

from middleware.errors import BackendError, InputError
from middleware.llm import make_llm
from middleware.aio_transport import AioUpstream, lines_of
from middleware.openai_backend import OpenAIBackend
from middleware.pipeline import Pipeline
from middleware.remote import LiteLLMBackend
from middleware.types import ChatRequest

from fake_upstream import FakeOpenAI, fail, ok, raw_stream
from test_server import _serve  # noqa: E402

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

TEXT = "Paris is the capital of France."
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}
DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: connection refused


def backend(server: FakeOpenAI, model: str = "primary", **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(f"openai_compatible/{model}", api_base=server.base, api_key="sk-test", **{"timeout": 10.0, **FAST, **kw})


def req(text: str = "What is the capital of France?", **params: Any) -> ChatRequest:
    return ChatRequest.build(text, **params)


# sync calls go through the openai client itself, async ones through ``aio_transport``: both must behave alike
HOW = pytest.mark.parametrize("how", ["sync", "async"])


def complete(llm: OpenAIBackend, request: ChatRequest, how: str) -> Any:
    return llm.complete(request) if how == "sync" else asyncio.run(llm.acomplete(request))


@HOW
def test_text_usage_and_parameters_reach_the_upstream(server: FakeOpenAI, how: str) -> None:
    resp = complete(backend(server), req("hello", temperature=0.3, max_tokens=20, stop="END", seed=7), how)
    assert resp.text == "echo: hello" and resp.finish_reason == "stop" and resp.model == "primary"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (5, 2, 7)
    assert resp.id == "chatcmpl-test"
    sent = server.requests[-1]
    assert sent["model"] == "primary"  # the prefix is ours, not the upstream's
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["seed"]) == (0.3, 20, ["END"], 7)
    assert "top_p" not in sent and "max_retries" not in sent and "timeout" not in sent


@HOW
def test_options_are_sent_with_every_request(server: FakeOpenAI, how: str) -> None:
    llm = backend(server, user="app-1", extra_body={"top_k": 4})
    complete(llm, req(), how)
    assert server.requests[-1]["user"] == "app-1" and server.requests[-1]["top_k"] == 4


def test_stream_gives_the_text_then_finish_and_usage(server: FakeOpenAI) -> None:
    chunks = list(backend(server).stream(req("stream me")))
    assert len(chunks) > 2 and "".join(c.delta for c in chunks) == "echo: stream me"
    last = chunks[-1]
    assert last.finish_reason == "stop" and last.usage is not None and last.usage.total_tokens == 8
    assert server.requests[-1]["stream"] is True and server.requests[-1]["stream_options"] == {"include_usage": True}


async def test_async_complete_and_stream(server: FakeOpenAI) -> None:
    llm = backend(server)
    assert (await llm.acomplete(req("hi"))).text == "echo: hi"
    chunks = [c async for c in llm.astream(req("stream me"))]
    assert "".join(c.delta for c in chunks) == "echo: stream me" and chunks[-1].usage is not None


@HOW
def test_rate_limit_with_retry_after_is_retried(server: FakeOpenAI, how: str) -> None:
    server.script("primary", fail(429, "slow down", **{"Retry-After": "0.2"}), ok(TEXT))
    t0 = time.perf_counter()
    assert complete(backend(server, backoff_max=1.0), req(), how).text == TEXT
    assert time.perf_counter() - t0 >= 0.2 and server.calls("primary") == 2


@HOW
def test_server_errors_are_retried_then_give_up(server: FakeOpenAI, how: str) -> None:
    server.script("primary", fail(503, "The server is overloaded"))
    with pytest.raises(BackendError) as info:
        complete(backend(server, max_retries=2), req(), how)
    err = info.value
    assert (err.status_code, err.retryable, err.attempts) == (503, True, 3)
    assert err.provider_message == "The server is overloaded" and "openai_compatible/primary" in str(err)
    assert server.calls("primary") == 3


@pytest.mark.parametrize("status", [400, 401])
@HOW
def test_client_errors_are_not_retried_nor_fall_back(server: FakeOpenAI, status: int, how: str) -> None:
    server.script("primary", fail(status, f"client error {status}"))
    with pytest.raises(BackendError) as info:
        complete(backend(server, fallbacks=["openai_compatible/backup"]), req(), how)
    assert (info.value.status_code, info.value.attempts, info.value.retryable) == (status, 1, False)
    assert info.value.provider_message == f"client error {status}"
    assert server.calls("primary") == 1 and server.calls("backup") == 0


@HOW
def test_fallback_after_primary_keeps_failing(server: FakeOpenAI, how: str) -> None:
    server.script("primary", fail(500, "overloaded"))
    server.script("backup", ok("from the backup"))
    resp = complete(backend(server, max_retries=1, fallbacks=["openai_compatible/backup"]), req(), how)
    assert resp.text == "from the backup" and resp.model == "backup"
    assert server.calls("primary") == 2 and server.calls("backup") == 1


@HOW
def test_refused_connection_is_retried_then_falls_back_to_its_own_upstream(server: FakeOpenAI, how: str) -> None:
    llm = OpenAIBackend("openai_compatible/primary", api_base=DEAD, api_key="sk-test", max_retries=1,
                        fallbacks=[{"model": "openai_compatible/backup", "api_base": server.base}], **FAST)
    assert complete(llm, req("hi"), how).text == "echo: hi"
    assert [r["model"] for r in server.requests] == ["backup"]


@HOW
def test_every_model_failing_names_them_all(server: FakeOpenAI, how: str) -> None:
    server.script("primary", fail(429, "primary is rate limited"))
    server.script("backup", fail(500, "backup crashed"))
    with pytest.raises(BackendError) as info:
        complete(backend(server, max_retries=1, fallbacks=["openai_compatible/backup"]), req(), how)
    err = info.value
    assert err.attempts == 4 and err.status_code == 500 and err.provider_message == "backup crashed"


def test_stream_retried_before_the_first_chunk_not_after(server: FakeOpenAI) -> None:
    server.script("primary", fail(429, "slow down"), ok(TEXT))
    assert "".join(c.delta for c in backend(server).stream(req())) == TEXT and server.calls("primary") == 2
    server.script("primary", {"status": 200, "text": TEXT, "break_stream": "connection lost upstream"}, ok("x"))
    got: list[str] = []
    with pytest.raises(BackendError) as info:
        for chunk in backend(server).stream(req()):
            got.append(chunk.delta)
    assert got and TEXT.startswith("".join(got)) and "connection lost upstream" in str(info.value)
    assert info.value.attempts == 1 and server.calls("primary") == 3


async def test_astream_retried_then_streams_and_async_401_is_final(server: FakeOpenAI) -> None:
    server.script("primary", fail(502, "bad gateway"), ok(TEXT))
    chunks = [c async for c in backend(server).astream(req())]
    assert "".join(c.delta for c in chunks) == TEXT and server.calls("primary") == 2
    server.script("primary", fail(401, "bad key"))
    with pytest.raises(BackendError) as info:
        [c async for c in backend(server).astream(req())]
    assert info.value.attempts == 1 and info.value.status_code == 401


async def test_batch_and_abatch_keep_order(server: FakeOpenAI) -> None:
    llm = backend(server)
    requests = [req(f"question {i}") for i in range(5)]
    assert [r.text for r in llm.batch(requests)] == [f"echo: question {i}" for i in range(5)]
    assert [r.text for r in await llm.abatch(requests)] == [f"echo: question {i}" for i in range(5)]


def test_make_llm_chooses_the_client(server: FakeOpenAI) -> None:
    assert type(make_llm("openai_compatible/m", api_base=server.base)) is OpenAIBackend
    assert type(make_llm("openai/m", client="openai", api_base=server.base)) is OpenAIBackend
    assert type(make_llm("openai/m", client="litellm", api_base=server.base)) is LiteLLMBackend
    assert type(make_llm("openai/m", api_base=server.base)) is LiteLLMBackend
    with pytest.raises(InputError, match="client"):
        make_llm("openai/m", client="curl")
    with pytest.raises(TypeError, match="mock_response"):
        make_llm("openai/m", client="openai", mock_response="hi")
    with pytest.raises(TypeError, match=r"fallbacks\[0\]"):
        OpenAIBackend("openai_compatible/m", fallbacks=[{"model": "x", "drop_params": True}])


# -- behind the real server, with the real openai client ------------------------------------------


def test_served_streamed_and_not_and_errors_through_the_openai_client(server: FakeOpenAI) -> None:
    from middleware.config import load_pipeline
    from middleware.server import create_app

    pipe = load_pipeline({"llm": "openai/primary", "llm_options": {"client": "openai", "api_base": server.base,
                                                                   "api_key": "sk-test", **FAST}})
    assert isinstance(pipe, Pipeline) and type(pipe.llm) is OpenAIBackend
    with _serve(create_app(pipe)) as url:
        client = openai.OpenAI(base_url=url, api_key="sk-any", max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        whole = client.chat.completions.create(model="alignware", messages=messages)
        assert whole.choices[0].message.content == "echo: hello" and whole.usage.total_tokens == 7
        stream = client.chat.completions.create(model="alignware", messages=messages, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
        server.script("primary", fail(401, "upstream key refused"))
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="alignware", messages=messages)
        # the upstream refused our key: 502 (the client's own key was fine), no provider detail, no retry
        assert info.value.status_code == 502 and "upstream key refused" not in str(info.value)
        assert server.calls("primary") == 3  # 2 answers, then 1 call


async def test_streams_give_their_connection_back_to_the_pool() -> None:
    """A stream read to ``[DONE]`` is read to the end of its body, so the next request reuses the connection
    (against a keep-alive upstream: the benchmarks' fast one, counting the connections it accepts)."""
    import asyncio
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import fast_upstream

    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await fast_upstream._handle(reader, writer)

    upstream = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        llm = OpenAIBackend("openai_compatible/m", api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-test")
        for _ in range(5):
            chunks = [c async for c in llm.astream(req())]
            assert "".join(c.delta for c in chunks).startswith("Paris is the capital")
        assert (await llm.acomplete(req())).text.startswith("Paris")
        assert accepted == 1
    finally:
        upstream.close()
        await upstream.wait_closed()


def test_async_requests_go_through_aiohttp_and_the_loop_closes_the_clients(server: FakeOpenAI) -> None:
    import asyncio

    llm = backend(server)
    seen: list[Any] = []

    async def main() -> list[str]:
        replies = await asyncio.gather(*(llm.acomplete(req(f"q{i}")) for i in range(5)))
        chunks = [c.delta async for c in llm.astream(req("streamed"))]
        seen.extend(llm._aclients[asyncio.get_running_loop()].values())
        assert not seen[0].closed
        return [r.text for r in replies] + ["".join(chunks)]

    assert asyncio.run(main()) == [f"echo: q{i}" for i in range(5)] + ["echo: streamed"]
    assert len(seen) == 1 and isinstance(seen[0], AioUpstream)
    assert seen[0].url == f"{server.base}/chat/completions"
    assert seen[0].closed and seen[0].client.is_closed()  # closed by asyncio.run's shutdown of async generators, on its loop
    # a new loop gets a client of its own
    assert asyncio.run(llm.acomplete(req("again"))).text == "echo: again"


# -- the async transport (aio_transport); its fault tests (drips, empty streams) are test_remote's, on both backends --


def test_both_paths_send_the_same_request(server: FakeOpenAI) -> None:
    llm = backend(server, organization="org-1", project="proj-1", default_headers={"X-App": "a"},
                  extra_headers={"X-Req": "r"}, extra_query={"api-version": "2024"})
    complete(llm, req("hi", temperature=0.5), "sync")
    complete(llm, req("hi", temperature=0.5), "async")
    assert server.requests[0] == server.requests[1] and server.paths == ["/v1/chat/completions"] * 2
    assert server.queries == ["api-version=2024"] * 2
    sync, aio = server.headers
    for name in ("authorization", "openai-organization", "openai-project", "x-app", "x-req", "content-type", "accept",
                 "x-stainless-lang", "x-stainless-package-version"):
        assert aio[name] == sync[name], name
    assert aio["authorization"] == "Bearer sk-test" and aio["x-req"] == "r"
    assert aio["content-length"] == sync["content-length"]  # the same JSON, byte for byte


EVENT = ('data: {"id": "c", "object": "chat.completion.chunk", "model": "primary", '
         '"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}')


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
async def test_events_with_any_line_end_are_read(server: FakeOpenAI, end: str) -> None:
    server.script("primary", raw_stream(f"{EVENT}{end}{end}: a comment{end}{end}data: [DONE]{end}{end}"))
    chunks = [c async for c in backend(server, max_retries=0).astream(req())]
    assert "".join(c.delta for c in chunks) == "Hi" and chunks[-1].finish_reason == "stop"


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_lines_are_the_same_whatever_the_chunk_boundaries() -> None:
    text = "data: é1\r\n\r\ndata: 2\n\ndata: 3\r\rdata: ü4\r\n: last without an end"
    want = ["data: é1", "", "data: 2", "", "data: 3", "", "data: ü4", ": last without an end"]
    for size in range(1, 12):  # every boundary, inside "\r\n" and inside a two-byte character included
        assert [line async for line in lines_of(_pieces(text.encode(), size))] == want, size
    assert [line async for line in lines_of(_pieces(b"a\r", 1))] == ["a"]
