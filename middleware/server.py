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
``error_status.error_for`` maps: a stream that fails before its first chunk answers with that status; one that
fails later ends with a single ``data: {"error": ...}`` event and ``data: [DONE]``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations (``Request``,
# imported inside ``create_app``) at run time.
import argparse
import os
import time
from typing import Any, Sequence

from .config import PipelineConfig
from .errors import InputError
from .llm import make_llm
from .pipeline import Pipeline

#: Default limits of a chat request: the body's size, and how many messages it holds.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_MESSAGES = 2048
KEEP_ALIVE_S = 75.0  # idle keep-alive: past the usual client pools' 5-15 s and load balancers' 60 s

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
    from fastapi.responses import JSONResponse
    from starlette.routing import Route

    from . import server_http as http
    from .server_chat import ChatEndpoint

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

    app.router.routes.append(Route("/v1/chat/completions", ChatEndpoint(
        pipeline, model_name=model_name, refused=refused, trace=trace, max_body_bytes=max_body_bytes,
        max_messages=max_messages), methods=["POST"]))
    http.document_chat_route(app, "/v1/chat/completions")
    return app


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
