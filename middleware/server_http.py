"""The HTTP surface of ``alignware serve`` around the chat endpoint: bearer-key checks, CORS, OpenAI-shaped
answers for unknown routes, wrong methods and invalid requests, the opt-in trace, and the start-up check
of the upstream's credentials.

Only the server imports this module (it imports fastapi/starlette, the ``server`` extra).
"""

from __future__ import annotations

import secrets
from typing import Any, AsyncIterator, Iterable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .error_status import error_object
from .llm import LLM

#: The request header that asks for the per-stage trace in the reply (``1``/``true``/``yes``; ``0``/
#: ``false``/``no`` turns off a server-wide ``--trace`` for one request).
TRACE_HEADER = "X-Alignware-Trace"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def openai_error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A JSON response with OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(status_code=status, content={"error": error_object(message, kind, param, code)},
                        headers=dict(headers or {}))


# -- authentication ----------------------------------------------------------------------
def auth_problem(header: str | None, api_key: str) -> str | None:
    """Why an ``Authorization`` header does not carry ``api_key`` (``None`` when it does).

    The scheme is ``Bearer`` in any case; a bare key without the scheme is refused with a message that
    says what to send. The comparison is constant-time over bytes, so no header can make it raise
    (Starlette decodes header bytes as latin-1: encoding them back gives the bytes the client sent).
    """
    if not header or not header.strip():
        return "missing API key: send the header 'Authorization: Bearer YOUR_KEY'"
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: send 'Authorization: Bearer YOUR_KEY' (the word Bearer, a space, the key)"
    given = token.strip().encode("latin-1", errors="replace")
    if not secrets.compare_digest(given, api_key.encode("utf-8")):
        return "invalid API key"
    return None


def unauthorised(problem: str) -> JSONResponse:
    """The 401 for ``problem``, with ``WWW-Authenticate: Bearer``."""
    return openai_error(401, problem, "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


# -- limits and the open server --------------------------------------------------------------
#: Host names a server without a key answers to by default: loopback only, so a web page cannot reach it
#: through a DNS name of its own (DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


async def read_body(request: Request, limit: int) -> "bytes | JSONResponse":
    """The request's body, or a 413 once it is known to exceed ``limit`` bytes (by ``Content-Length``
    before reading anything, else while reading, which stops there)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            return too_large(limit)
    return bytes(body)


def too_large(limit: int) -> JSONResponse:
    return openai_error(413, f"the request body is larger than this server takes ({limit // 1024} KiB)",
                        code="request_too_large")


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` → ``[::1]``, ``localhost:80`` → ``localhost``)."""
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def open_server_problem(request: Request, allowed_hosts: "frozenset[str] | None") -> "JSONResponse | None":
    """For a server without a key: refuse what a web page on another site could send it. A ``Host`` not in
    ``allowed_hosts`` (``None``: any) is 403; a POST that is not ``application/json`` (what a page can send
    without a CORS preflight: ``text/plain``, forms) is 415."""
    if allowed_hosts is not None and host_name(request.headers.get("host", "").strip().lower()) not in allowed_hosts:
        return openai_error(403, "this server answers only requests addressed to " + ", ".join(sorted(allowed_hosts))
                            + " (a server without an API key; set --api-key to serve other host names)",
                            "permission_error", code="host_not_allowed")
    if request.method == "POST":
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return openai_error(415, f"send the body as JSON with 'Content-Type: application/json' (got {kind or 'none'!r})",
                                code="unsupported_media_type")
    return None


# -- CORS and errors -----------------------------------------------------------------------
def add_cors(app: FastAPI, origins: Iterable[str]) -> None:
    """Let browser pages from ``origins`` (``"*"``: any) call the API; none given: no CORS headers, so
    browsers refuse cross-origin calls. Credentials travel in the ``Authorization`` header, not
    cookies, so ``allow_credentials`` stays off."""
    allowed = [o.strip().rstrip("/") for o in origins if o and o.strip()]
    if not allowed:
        return
    app.add_middleware(
        CORSMiddleware, allow_origins=allowed, allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"],
        allow_credentials=False, max_age=600,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Unknown routes (404), wrong methods (405, with ``Allow``) and invalid requests (400) answer in
    OpenAI's error shape instead of FastAPI's ``{"detail": ...}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"Invalid URL ({where})"
        elif exc.status_code == 405:
            message = f"Method not allowed ({where}); allowed: {(exc.headers or {}).get('allow', '?')}"
        else:
            message = str(exc.detail)
        return openai_error(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else str(first.get("msg", "invalid request"))
        return openai_error(400, message, param=param)


def document_chat_route(app: FastAPI, path: str) -> None:
    """List the chat route (a plain ASGI app on the router, which FastAPI does not describe) in ``/openapi.json``."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = default()
            schema.setdefault("paths", {})[path] = {"post": {
                "summary": "Chat completions (OpenAI's API)",
                "operationId": "chat_completions",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["messages"],
                    "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object"}},
                                   "stream": {"type": "boolean"}},
                }}}},
                "responses": {"200": {"description": "a chat.completion object; with stream: true, server-sent "
                                                     "chat.completion.chunk events ending with data: [DONE]"}},
            }}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- the opt-in trace ----------------------------------------------------------------------
def wants_trace(request: Request, default: bool) -> bool:
    """Whether this reply carries ``alignware_trace``: the ``X-Alignware-Trace`` header when it says
    yes or no, else the server's setting (``--trace``, ``create_app(trace=True)``)."""
    value = request.headers.get(TRACE_HEADER, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    return default


# -- start-up check ------------------------------------------------------------------------
def missing_upstream_credentials(llm: LLM) -> list[str]:
    """The environment variables a remote upstream needs and lacks (empty when it has them, is
    given an ``api_key`` or litellm's offline ``mock_response`` in ``llm_options``, or is not a litellm
    backend), by litellm's ``validate_environment``."""
    kwargs = getattr(llm, "litellm_kwargs", None)
    model = getattr(llm, "model", None)
    if not isinstance(kwargs, dict) or not isinstance(model, str) or kwargs.get("api_key") or "mock_response" in kwargs:
        return []
    import litellm  # heavy: only a remote upstream needs it, and it has already loaded it

    try:
        found = litellm.validate_environment(model=model, api_base=kwargs.get("api_base"))
    except Exception:  # a provider litellm cannot check: leave it to the first request
        return []
    return list(found.get("missing_keys") or []) if not found.get("keys_in_environment") else []
