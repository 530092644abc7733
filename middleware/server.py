"""An OpenAI-compatible HTTP server in front of a pipeline.

Any chat app that takes a base URL can sit on top unchanged::

    alignware serve --pipeline pipeline.yaml --port 8000
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")

Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``"stream": true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``. The per-stage trace comes in an extra
``alignware_trace`` field (in a stream, on the last chunk) when asked for: per server (``--trace``,
``create_app(trace=True)``) or per request (header ``X-Alignware-Trace: 1``). Auth, CORS and the
OpenAI-shaped answers to unknown routes are in ``server_http.py``.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, with the status
``error_for`` maps: a stream that fails before its first chunk answers with that status; one that
fails later ends with a single ``data: {"error": ...}`` event and ``data: [DONE]``.
"""



import argparse
import json
import logging
import math
import os
import secrets
import time
from typing import Any, AsyncIterator, Sequence

from pydantic import ValidationError

from .config import PipelineConfig
from .errors import AlignwareError, BackendError, InputError
from .llm import make_llm
from .openai_format import completion_body, object_field, request_from_openai, sse_events, unpaired_surrogate
from .pipeline import Pipeline
from .types import ChatChunk, ChatRequest

log = logging.getLogger("alignware")

#: Default limits of a chat request: the body's size, and how many messages it holds.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_MESSAGES = 2048
KEEP_ALIVE_S = 75.0  # idle keep-alive: past the usual client pools' 5-15 s and load balancers' 60 s

def _error_object(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": None}


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": _error_object(message, kind, param)})


#: Upstream statuses about the server's own set-up (its provider key, its model name), not the client's request.
_UPSTREAM_CONFIG_ERRORS = {401: "authentication failed", 403: "permission denied", 404: "model or route not found"}


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the OpenAI ``error`` object for an exception; both paths (JSON and stream) use it.

    ``InputError`` → 400 ``invalid_request_error`` (``param``: its ``field``);
    ``BackendError`` → ``upstream_error`` with a status that tells the client whose problem it is: 429 for
    the upstream's rate limit, 504 for its timeouts, 502 for its 5xx and for everything it said about our
    own credentials or model name (401, 403, 404: the client's request was fine, and the message names
    neither the provider's key nor the upstream model), the upstream's own status for its other 4xx (a
    context too long, say: the client's request); anything else (``StageError``, other
    ``AlignwareError``s, any exception) → 500 ``server_error``, with the traceback logged on the
    ``alignware`` logger.
    """
    if isinstance(exc, InputError):
        return 400, _error_object(str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, BackendError):
        code = exc.status_code
        message = str(exc)
        if code in _UPSTREAM_CONFIG_ERRORS:
            status = 502
            message = (f"the upstream model refused the server's request ({_UPSTREAM_CONFIG_ERRORS[code]}); "
                       "the server's operator can find the details in its log")
        elif code == 408:
            status = 504
        elif code == 429 or (code is not None and 400 <= code < 500):
            status = code
        else:
            status = 502
        log.warning("upstream error (answered %d): %s", status, exc)
        return status, _error_object(message, "upstream_error")
    log.error("chat completion failed", exc_info=exc)
    message = str(exc) if isinstance(exc, AlignwareError) else f"internal error: {type(exc).__name__}: {exc}"
    return 500, _error_object(message, "server_error")


def _error_response(exc: BaseException) -> Any:
    from fastapi.responses import JSONResponse

    status, error = error_for(exc)
    return JSONResponse(status_code=status, content={"error": error}, headers=retry_headers(exc, status))


def retry_headers(exc: BaseException, status: int) -> dict[str, str]:
    """What an upstream failure tells the client about retrying. A 429 passes the upstream's ``Retry-After``
    on. ``X-Should-Retry: false`` (read by the ``openai`` SDKs, which otherwise retry 408, 409, 429 and 5xx
    twice on their own) where another try cannot help or has been made already: the backend retried per
    its policy, or the failure is not one a retry mends (the upstream refusing the server's key, a bad
    request). Without that, each client retry would start the backend's retries again: 3 x 3 upstream
    calls for one request with the SDK's and the backend's default of 2 retries each."""
    if not isinstance(exc, BackendError):
        return {}
    headers: dict[str, str] = {}
    if status == 429 and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # the upstream's wait, passed on
    if not exc.retryable or exc.attempts > 1:
        headers["X-Should-Retry"] = "false"
    return headers


_object_field = object_field


def create_app(
    pipeline: Pipeline,
    *,
    model_name: str = "alignware",
    api_key: "str | None" = None,
    cors_origins: "Sequence[str] | None" = None,
    trace: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_messages: int = MAX_MESSAGES,
    allowed_hosts: "Sequence[str] | None" = None,
) -> Any:
    """A FastAPI app serving ``pipeline`` under the model name ``model_name``.

    ``api_key``: requests to ``/v1/...`` need ``Authorization: Bearer KEY`` (the scheme in any case);
    a 401 carries ``WWW-Authenticate: Bearer``. ``cors_origins``: the browser origins allowed to call
    the API (``["*"]``: any; default: none, no CORS headers). ``trace``: every reply carries the
    per-stage ``alignware_trace`` (prompts and answers before and after each stage); without it only
    requests with the header ``X-Alignware-Trace: 1`` get it (``0`` turns a server-wide trace off).
    ``max_body_bytes``/``max_messages``: larger requests get 413 / 400 before anything is sent upstream.
    Without an ``api_key`` the server is open to anyone who reaches it, so it answers only requests whose
    ``Host`` is in ``allowed_hosts`` (default: the loopback names; ``["*"]``: any) and chat requests sent as
    ``application/json`` (a web page on another site can send ``text/plain`` without asking): together they
    keep web pages from spending the upstream's credit. ``/docs`` and ``/openapi.json`` need the key when
    one is set (``/docs`` is then off: it cannot send one).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from . import server_http as http

    keyed = bool(api_key)
    app = FastAPI(title="alignware", version="0.1.0", docs_url=None if keyed else "/docs", redoc_url=None,
                  openapi_url=None if keyed else "/openapi.json")
    http.install_error_handlers(app)
    http.add_cors(app, cors_origins or ())
    started = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": started, "owned_by": "alignware"}
    hosts = None if keyed or (allowed_hosts is not None and "*" in allowed_hosts) else frozenset(
        h.strip().lower() for h in (allowed_hosts if allowed_hosts is not None else http.LOOPBACK_HOSTS))

    def refused(request: Request) -> Any:
        """The 401 for a request without the key; without a key, the refusals of an open server; else ``None``."""
        if not api_key:
            return http.open_server_problem(request, hosts)
        problem = http.auth_problem(request.headers.get("authorization"), api_key)
        return http.unauthorised(problem) if problem else None

    if keyed:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request) -> Any:
            return refused(request) or JSONResponse(app.openapi())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "llm": pipeline.llm.name, "stages": [s.name for s in pipeline.stages]}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        return refused(request) or {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        if model_id != model_name:
            return http.openai_error(404, f"The model '{model_id}' does not exist; this server serves '{model_name}'",
                                     param="model", code="model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        raw = await http.read_body(request, max_body_bytes)
        if not isinstance(raw, bytes):
            return raw
        parsed = _chat_request(raw, max_messages)
        if not isinstance(parsed, tuple):
            return parsed
        body, req, include_usage = parsed
        tracing = http.wants_trace(request, trace)
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
            events = _sse(chunks, first, model_name, include_usage, tracing)
            return EventStream(events, closing=(events, chunks))
        try:
            resp = await pipeline.achat(req)
        except Exception as e:
            return _error_response(e)
        return JSONResponse(completion_body(resp, model_name, trace=tracing))

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


def _chat_request(raw: bytes, max_messages: int) -> "tuple[dict[str, Any], ChatRequest, bool] | Any":
    """The chat request in a body: ``(body, request, include_usage)``, or the 400 that names what is wrong
    (not JSON, nested too deeply, an unpaired surrogate, too many messages, a bad field)."""
    try:
        body = json.loads(raw)
        # a \uD800-\uDFFF escape: look for an unpaired surrogate
        where = unpaired_surrogate(body) if b"\\ud" in raw or b"\\uD" in raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"the request body is not valid JSON: {e}")
    except RecursionError:
        return _error(400, "the request body is nested too deeply")
    if where is not None:
        return _error(400, f"{where}: holds an unpaired UTF-16 surrogate, which is not text", param=where)
    if isinstance(body, dict) and isinstance(body.get("messages"), list) and len(body["messages"]) > max_messages:
        return _error(400, f"messages: {len(body['messages'])} messages; this server takes at most {max_messages}",
                      param="messages")
    try:
        req = request_from_openai(body)
        include_usage = bool(_object_field(body, "stream_options").get("include_usage"))
    except (InputError, ValidationError) as e:
        return _error_response(e if isinstance(e, InputError) else InputError(str(e)))
    return body, req, include_usage


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


async def _sse(
    chunks: AsyncIterator[ChatChunk], first: ChatChunk | None, model: str, include_usage: bool, trace: bool
) -> AsyncIterator[str]:
    """The events of one streamed completion (``openai_format.sse_events``); closes ``chunks`` however it ends."""
    try:
        async for event in sse_events(chunks, first, model, include_usage, error_for, trace=trace):
            yield event
    finally:
        await _aclose(chunks)


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def serve_parser() -> argparse.ArgumentParser:
    """The flags of ``alignware serve``; each has an environment variable for its default."""
    p = argparse.ArgumentParser(prog="alignware serve", description="Serve a pipeline over an OpenAI-compatible API.")
    p.add_argument("--pipeline", help="pipeline YAML/JSON file (default: the bare --model)")
    p.add_argument("--model", default=None,
                   help="litellm model string or local model path (default: the pipeline's llm, else the embedded model); "
                        "with --pipeline it replaces only the model name, the file's llm_options (api_base, api_key) stay")
    p.add_argument("--name", default="alignware", help="the model name clients use and /v1/models lists")
    p.add_argument("--host", default=os.environ.get("ALIGNWARE_HOST", "127.0.0.1"),
                   help="address to bind (default: $ALIGNWARE_HOST or 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=int(os.environ.get("ALIGNWARE_PORT", "8000")), help="default: $ALIGNWARE_PORT or 8000")
    p.add_argument("--api-key", default=os.environ.get("ALIGNWARE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $ALIGNWARE_API_KEY; none: open)")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", default=None, metavar="ORIGIN",
                   help="a browser origin allowed to call the API, e.g. http://localhost:3000 (repeatable; '*': any; "
                        "default: $ALIGNWARE_CORS_ORIGINS, comma-separated; none: no CORS)")
    p.add_argument("--trace", action="store_true", default=_env_flag("ALIGNWARE_TRACE"),
                   help="send the per-stage trace with every reply (default: $ALIGNWARE_TRACE; otherwise only to "
                        "requests with the header X-Alignware-Trace: 1)")
    p.add_argument("--no-credential-check", action="store_true",
                   help="start even when litellm finds the upstream's API key variable unset")
    p.add_argument("--max-body-mb", type=float, default=float(os.environ.get("ALIGNWARE_MAX_BODY_MB", MAX_BODY_BYTES / 2**20)),
                   help="largest request body taken, in MiB (default: $ALIGNWARE_MAX_BODY_MB or 16); larger ones get 413")
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts", default=None, metavar="NAME",
                   help="without --api-key: a Host name the server answers besides the loopback names (repeatable; "
                        "'*' for any; $ALIGNWARE_ALLOWED_HOSTS, comma-separated)")
    p.add_argument("--keep-alive", type=float, default=float(os.environ.get("ALIGNWARE_KEEP_ALIVE", KEEP_ALIVE_S)),
                   help="seconds an idle keep-alive connection stays open (default: $ALIGNWARE_KEEP_ALIVE or "
                        f"{KEEP_ALIVE_S:g}); longer than the clients' own idle limit, so the client always closes first")
    p.add_argument("--access-log", action="store_true", default=_env_flag("ALIGNWARE_ACCESS_LOG"),
                   help="log one line per HTTP request (default: off, or $ALIGNWARE_ACCESS_LOG=1; errors are logged either way)")
    return p


def build_served_pipeline(pipeline: "str | None", model: "str | None") -> Pipeline:
    """The pipeline ``alignware serve`` runs: the config file's (``model`` replacing only its model
    name) or a bare ``model``."""
    if pipeline:
        cfg = PipelineConfig.load(pipeline)
        return cfg.build(cfg.build_llm(model))
    return Pipeline(make_llm(model))


def app_from_args(argv: Sequence[str]) -> tuple[Any, str, int]:
    """The app ``alignware serve ARGV`` runs, and the host and port it binds: flags, environment
    variables, the pipeline, and the start-up check of the upstream's credentials."""
    from .server_http import LOOPBACK_HOSTS, missing_upstream_credentials

    args = serve_parser().parse_args(list(argv))
    pipe = build_served_pipeline(args.pipeline, args.model)
    missing = [] if args.no_credential_check else missing_upstream_credentials(pipe.llm)
    if missing:
        raise InputError(
            f"the upstream model {pipe.llm.name} needs {' and '.join(missing)}: set it in the environment, or give "
            "api_key in the pipeline's llm_options (--no-credential-check starts anyway)"
        )
    origins = args.cors_origins if args.cors_origins is not None else _env_list("ALIGNWARE_CORS_ORIGINS")
    extra_hosts = args.allowed_hosts if args.allowed_hosts is not None else _env_list("ALIGNWARE_ALLOWED_HOSTS")
    hosts = [*LOOPBACK_HOSTS, *extra_hosts] if extra_hosts else None
    app = create_app(pipe, model_name=args.name, api_key=args.api_key, cors_origins=origins, trace=args.trace,
                     max_body_bytes=int(args.max_body_mb * 2**20), allowed_hosts=hosts)
    return app, args.host, args.port


def serve_main(argv: Sequence[str]) -> int:
    """``alignware serve``: run the OpenAI-compatible server."""
    import uvicorn  # only the command needs the server itself

    args = serve_parser().parse_args(argv)
    app, host, port = app_from_args(argv)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=args.access_log, timeout_keep_alive=args.keep_alive)
    return 0
