"""The chat route of ``alignware serve`` (``middleware/server_chat.py``) called as an ASGI app: how a stream
ends when the client goes away, and when the server itself is stopping."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from middleware import LLM, ChatChunk, ChatResponse, FunctionLLM, Pipeline

pytest.importorskip("fastapi")

from middleware.server import create_app  # noqa: E402

SCOPE = {
    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
    "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
    "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
}
STREAM = json.dumps({"model": "alignware", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


class Tracked(Pipeline):
    """A pipeline that records when its stream is closed."""

    closed: list[bool]

    async def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatChunk]:
        try:
            async for chunk in super().astream(*args, **kwargs):
                yield chunk
        finally:
            self.closed.append(True)


class Stalls(LLM):
    """Sends one piece, then waits for a next one that never comes (an upstream gone quiet)."""

    name = "stalls"

    def complete(self, request: Any, *, model_stages: Any = ()) -> ChatResponse:
        raise AssertionError("streamed only")

    async def astream(self, request: Any, *, model_stages: Any = ()) -> AsyncIterator[ChatChunk]:
        yield ChatChunk(delta="first piece", model=self.name)
        await asyncio.Event().wait()
        yield ChatChunk(delta="never", model=self.name)


def _client(leaves: asyncio.Event) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The ASGI ``receive`` of a client that sends a streamed chat request, then stays until ``leaves`` is set
    (uvicorn answers ``http.disconnect`` also once the response is complete)."""
    received: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not received:
            received.append(True)
            return {"type": "http.request", "body": STREAM, "more_body": False}
        await leaves.wait()
        return {"type": "http.disconnect"}

    return receive


def _pipeline(llm: LLM) -> Tracked:
    pipe = Tracked(llm)
    pipe.closed = []
    return pipe


async def test_client_disconnect_closes_the_pipeline_stream() -> None:
    """A client that goes away while an event is being sent: the pipeline's stream is closed before
    the response returns, not left suspended for the garbage collector."""
    pipe = _pipeline(FunctionLLM(lambda m: "some content"))
    app = create_app(pipe)
    gone = asyncio.Event()
    receive = _client(gone)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and b"some content" in message.get("body", b""):
            gone.set()  # the client disconnects while this event is on its way ...
            await asyncio.Event().wait()  # ... so this send never completes

    await asyncio.wait_for(app(dict(SCOPE), receive, send), 10)
    assert pipe.closed == [True]


async def test_client_leaving_while_the_upstream_is_quiet_ends_the_stream_at_once() -> None:
    """The client goes away while the server waits for the upstream's next piece: the wait is cut short
    (not left until the upstream's timeout), the pipeline's stream is closed, and the response returns
    normally: a client's leaving is not the server's failure."""
    pipe = _pipeline(Stalls())
    app = create_app(pipe)
    gone = asyncio.Event()
    receive = _client(gone)
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))
        if b"first piece" in message.get("body", b""):
            asyncio.get_running_loop().call_later(0.05, gone.set)

    task = asyncio.ensure_future(app(dict(SCOPE), receive, send))
    await asyncio.wait_for(asyncio.shield(task), 10)
    assert task.done() and not task.cancelled() and task.exception() is None
    assert pipe.closed == [True]
    assert any(b"first piece" in body for body in sent) and not any(b"never" in body for body in sent)


async def test_the_servers_own_cancellation_is_not_taken_for_a_client_leaving() -> None:
    """Cancelling the request's task (the server shutting down) cancels it: the stream is closed and the
    cancellation goes on up, while the client is still connected."""
    pipe = _pipeline(Stalls())
    app = create_app(pipe)
    first = asyncio.Event()
    receive = _client(asyncio.Event())  # the client stays

    async def send(message: dict[str, Any]) -> None:
        if b"first piece" in message.get("body", b""):
            first.set()

    task = asyncio.ensure_future(app(dict(SCOPE), receive, send))
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    assert pipe.closed == [True]


async def test_a_finished_stream_leaves_nothing_running() -> None:
    """After a complete stream the watch on the client is gone: no task of the request is left pending."""
    pipe = _pipeline(FunctionLLM(lambda m: "whole answer"))
    app = create_app(pipe)
    complete = asyncio.Event()
    receive = _client(complete)
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        bodies.append(message.get("body", b""))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    before = asyncio.all_tasks()
    await asyncio.wait_for(app(dict(SCOPE), receive, send), 10)
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert pipe.closed == [True]
    text = b"".join(bodies).decode()
    assert "whole answer" in text and text.rstrip().endswith("data: [DONE]")
