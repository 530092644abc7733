"""An OpenAI-compatible HTTP server in front of a pipeline.

Any chat app that takes a base URL can sit on top unchanged::

    alignware serve --pipeline pipeline.yaml --port 8000
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")

Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``"stream": true``),
``GET /v1/models``, ``GET /health``. Each completion carries the per-stage trace in an extra
``alignware_trace`` field (the last chunk of a stream carries it too).

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, with the status
``error_for`` maps: a stream that fails before its first chunk answers with that status; one that
fails later ends with a single ``data: {"error": ...}`` event and ``data: [DONE]``.
"""



import argparse
import json
import logging
import os
import secrets
import time
from typing import Any, AsyncIterator, Sequence

from pydantic import ValidationError

from .config import PipelineConfig
from .errors import AlignwareError, BackendError, InputError
from .llm import make_llm
from .openai_format import completion_body, object_field, request_from_openai, sse_events
from .pipeline import Pipeline
from .types import ChatChunk, ChatRequest, ChatResponse

log = logging.getLogger("alignware")

def _error_object(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": None}


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": _error_object(message, kind, param)})


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the OpenAI ``error`` object for an exception; both paths (JSON and stream) use it.

    ``InputError`` → 400 ``invalid_request_error`` (``param``: its ``field``);
    ``BackendError`` → the provider's status when it is an error status, else 502, ``upstream_error``;
    anything else (``StageError``, other ``AlignwareError``s, any exception) → 500 ``server_error``,
    with the traceback logged on the ``alignware`` logger.
    """
    if isinstance(exc, InputError):
        return 400, _error_object(str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, BackendError):
        status = exc.status_code if exc.status_code is not None and 400 <= exc.status_code <= 599 else 502
        log.warning("upstream error (answered %d): %s", status, exc)
        return status, _error_object(str(exc), "upstream_error")
    log.error("chat completion failed", exc_info=exc)
    message = str(exc) if isinstance(exc, AlignwareError) else f"internal error: {type(exc).__name__}: {exc}"
    return 500, _error_object(message, "server_error")


def _error_response(exc: BaseException) -> Any:
    from fastapi.responses import JSONResponse

    status, error = error_for(exc)
    return JSONResponse(status_code=status, content={"error": error})


_object_field = object_field


def _completion(resp: ChatResponse, model: str) -> dict[str, Any]:
    return completion_body(resp, model)


def create_app(pipeline: Pipeline, *, model_name: str = "alignware", api_key: "str | None" = None) -> Any:
    """A FastAPI app serving ``pipeline``. With ``api_key``, requests need ``Authorization: Bearer KEY``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="alignware", version="0.1.0")
    started = int(time.time())

    def authorised(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return secrets.compare_digest(given, api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "llm": pipeline.llm.name, "stages": [s.name for s in pipeline.stages]}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "invalid API key", "authentication_error")
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started, "owned_by": "alignware"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "invalid API key", "authentication_error")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, f"the request body is not valid JSON: {e}")
        try:
            req = request_from_openai(body)
            include_usage = bool(_object_field(body, "stream_options").get("include_usage"))
        except (InputError, ValidationError) as e:
            return _error_response(e if isinstance(e, InputError) else InputError(str(e)))
        if body.get("stream"):
            # Start the pipeline before answering: a failure before the first chunk gets its own
            # HTTP status and JSON body, not a 200 with an error event.
            chunks = pipeline.astream(req)
            try:
                first: ChatChunk | None = await chunks.__anext__()
            except StopAsyncIteration:
                first = None
            except Exception as e:
                await _aclose(chunks)
                return _error_response(e)
            events = _sse(chunks, first, model_name, include_usage)
            return EventStream(events, closing=(events, chunks))
        try:
            resp = await pipeline.achat(req)
        except Exception as e:
            return _error_response(e)
        return JSONResponse(_completion(resp, model_name))

    class EventStream(StreamingResponse):
        """Server-sent events that close the event generator and the pipeline's stream however the
        response ends: finished, failed, or cut short by a client that went away."""

        def __init__(self, events: AsyncIterator[str], *, closing: Sequence[AsyncIterator[Any]]) -> None:
            super().__init__(events, media_type="text/event-stream")
            self._closing = closing

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                for it in self._closing:
                    await _aclose(it)

    return app


async def _aclose(it: AsyncIterator[Any]) -> None:
    """Close an async generator (its ``finally`` blocks run now, not whenever it is collected); a
    failure while closing is logged, not raised: the answer is already complete or already lost."""
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.warning("closing the stream failed", exc_info=True)


async def _sse(chunks: AsyncIterator[ChatChunk], first: ChatChunk | None, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The events of one streamed completion (``openai_format.sse_events``); closes ``chunks`` however it ends."""
    try:
        async for event in sse_events(chunks, first, model, include_usage, error_for):
            yield event
    finally:
        await _aclose(chunks)


def serve_main(argv: Sequence[str]) -> int:
    """``alignware serve``: run the OpenAI-compatible server."""
    import uvicorn  # only the command needs the server itself

    p = argparse.ArgumentParser(prog="alignware serve", description="Serve a pipeline over an OpenAI-compatible API.")
    p.add_argument("--pipeline", help="pipeline YAML/JSON file (default: the bare --model)")
    p.add_argument("--model", default=None, help="litellm model string or local model path (default: embedded model)")
    p.add_argument("--name", default="alignware", help="the model name clients use and /v1/models lists")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("ALIGNWARE_API_KEY"), help="require this bearer key (default: $ALIGNWARE_API_KEY; none: open)")
    args = p.parse_args(list(argv))
    if args.pipeline:
        cfg = PipelineConfig.load(args.pipeline)
        pipe = cfg.build(make_llm(args.model) if args.model else None)
    else:
        pipe = Pipeline(make_llm(args.model))
    uvicorn.run(create_app(pipe, model_name=args.name, api_key=args.api_key), host=args.host, port=args.port, log_level="info")
    return 0
