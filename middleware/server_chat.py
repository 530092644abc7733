"""``POST /v1/chat/completions`` of ``alignware serve``: a plain ASGI app on the server's router.

It is the server's hot path, so it runs without FastAPI's per-request machinery (dependency solving, the
request and response wrappers, an anyio task group per streamed response): the router hands it the ASGI
call as is. It checks the caller (``refused``), reads the body within the size limit, parses it into a
``ChatRequest`` (or answers the 400 that names what is wrong), runs the pipeline and answers JSON or
server-sent events. A client that goes away in the middle of a stream cancels it: the pipeline's stream
(and with it the upstream request) is closed at once.

Only the server imports this module (it imports starlette, the ``server`` extra).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Callable, Sequence

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .error_status import error_for, retry_headers
from .errors import InputError
from .openai_format import completion_body, object_field, request_from_openai, sse_events, unpaired_surrogate
from .pipeline import Pipeline
from .server_http import openai_error, read_body, wants_trace
from .types import ChatChunk, ChatRequest

log = logging.getLogger("alignware")

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON answer for a failure (``error_for``'s status and body, ``retry_headers``)."""
    status, error = error_for(exc)
    return JSONResponse(status_code=status, content={"error": error}, headers=retry_headers(exc, status))


def parse_chat_request(raw: bytes, max_messages: int) -> "tuple[dict[str, Any], ChatRequest, bool] | JSONResponse":
    """The chat request in a body: ``(body, request, include_usage)``, or the 400 that names what is wrong
    (not JSON, nested too deeply, an unpaired surrogate, too many messages, a bad field)."""
    try:
        body = json.loads(raw)
        # a \uD800-\uDFFF escape: look for an unpaired surrogate
        where = unpaired_surrogate(body) if b"\\ud" in raw or b"\\uD" in raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return openai_error(400, f"the request body is not valid JSON: {e}")
    except RecursionError:
        return openai_error(400, "the request body is nested too deeply")
    if where is not None:
        return openai_error(400, f"{where}: holds an unpaired UTF-16 surrogate, which is not text", param=where)
    if isinstance(body, dict) and isinstance(body.get("messages"), list) and len(body["messages"]) > max_messages:
        return openai_error(400, f"messages: {len(body['messages'])} messages; this server takes at most {max_messages}",
                          param="messages")
    try:
        req = request_from_openai(body)
        include_usage = bool(object_field(body, "stream_options").get("include_usage"))
    except (InputError, ValidationError) as e:
        return error_response(e if isinstance(e, InputError) else InputError(str(e)))
    return body, req, include_usage


async def aclose(it: AsyncIterator[Any]) -> None:
    """Close an async generator (its ``finally`` blocks run now, not whenever it is collected); a
    failure while closing is logged, not raised: the answer is already complete or already lost."""
    close = getattr(it, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.warning("closing the stream failed", exc_info=True)


async def send_events(events: AsyncIterator[str], closing: Sequence[AsyncIterator[Any]], receive: Receive, send: Send) -> None:
    """Answer 200 with ``events`` as server-sent events, then close ``closing`` however the answer ends:
    finished, failed, or cut short by a client that went away.

    The client's going away is watched by one ``receive()`` (the server answers it with ``http.disconnect``
    when the client disconnects, or once the response is complete); if it comes first, this task is
    cancelled where it waits (for the upstream's next chunk, say) and returns quietly."""
    task = asyncio.current_task()
    finished = cancelled_here = False

    def went_away(listening: "asyncio.Future[Any]") -> None:
        nonlocal cancelled_here
        if not listening.cancelled():
            listening.exception()  # a receive() that failed (the connection is gone): seen, not logged as unretrieved
        if not finished and task is not None:
            cancelled_here = True
            task.cancel()

    listener = asyncio.ensure_future(receive())
    listener.add_done_callback(went_away)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        async for event in events:
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if not (cancelled_here and (uncancel is None or uncancel() == 0)):
            raise  # the server's own cancellation (shutting down), not the client's leaving
    finally:
        finished = True
        if not listener.done():
            listener.cancel()
        for it in closing:
            await aclose(it)


class ChatEndpoint:
    """``POST /v1/chat/completions`` as an ASGI app. ``refused(request)`` gives the answer for a caller who may
    not use the server (no key, a foreign ``Host``...) or ``None``; ``trace``: the server-wide trace setting."""

    def __init__(self, pipeline: Pipeline, *, model_name: str, refused: Callable[[Request], "Response | None"],
                 trace: bool, max_body_bytes: int, max_messages: int) -> None:
        self.pipeline = pipeline
        self.model_name = model_name
        self.refused = refused
        self.trace = trace
        self.max_body_bytes = max_body_bytes
        self.max_messages = max_messages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await self._answer(scope, receive, send)
        if answer is not None:
            await answer(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> "Response | None":
        """The JSON answer, or ``None`` once a stream has been sent."""
        request = Request(scope, receive)
        if (denied := self.refused(request)) is not None:
            return denied
        raw = await read_body(request, self.max_body_bytes)
        if not isinstance(raw, bytes):
            return raw
        parsed = parse_chat_request(raw, self.max_messages)
        if not isinstance(parsed, tuple):
            return parsed
        body, req, include_usage = parsed
        tracing = wants_trace(request, self.trace)
        if not body.get("stream"):
            try:
                resp = await self.pipeline.achat(req)
            except Exception as e:
                return error_response(e)
            return JSONResponse(completion_body(resp, self.model_name, trace=tracing))
        # Start the pipeline before answering: a failure before the first chunk gets its own
        # HTTP status and JSON body, not a 200 with an error event.
        chunks = self.pipeline.astream(req)
        try:
            first: ChatChunk | None = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except Exception as e:
            await aclose(chunks)
            return error_response(e)
        events = sse_events(chunks, first, self.model_name, include_usage, error_for, trace=tracing)
        await send_events(events, (events, chunks), receive, send)
        return None
