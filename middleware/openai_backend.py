"""``OpenAIBackend``: an OpenAI-compatible upstream reached through one shared ``openai`` client.

The same LLM protocol, retry and fallback policy, error mapping and request mapping as ``LiteLLMBackend``
(it is one, with another transport): only sending a request differs. litellm's own path costs several
milliseconds per request (its logging, cost tracking and per-chunk object building: ``benchmarks/server.py``
measures it); this one sends what the ``openai`` client sends (its URL, headers and errors; its own retries off) and
reads the reply's JSON and server-sent events itself into light objects, with no per-chunk model building. Sync
calls go through the client itself; async calls (the server, concurrent eval) through ``aio_transport``, which
sends the client's requests on aiohttp without rebuilding them each time.

Choose it with a model string ``"openai_compatible/NAME"`` or ``client: openai`` in ``llm_options``
(``make_llm``); ``api_base``/``base_url``, ``api_key``, ``organization``, ``project`` and
``default_headers`` configure the client, any other option is a chat-completions argument sent with
every request (``extra_headers``, ``extra_body``, ``user``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import threading
import weakref
from typing import Any, AsyncGenerator, AsyncIterator, Iterator

import openai
import openai._base_client as _openai_base
from openai.resources.chat.completions import Completions

from .aio_transport import AioUpstream
from .remote import LiteLLMBackend

__all__ = ["OpenAIBackend", "PREFIX"]

PREFIX = "openai_compatible/"
_MODEL_PREFIXES = (PREFIX, "openai/")
_CLIENT_OPTIONS = {"api_base": "base_url", "base_url": "base_url", "api_key": "api_key",
                   "organization": "organization", "project": "project", "default_headers": "default_headers"}
_REQUEST_OPTIONS = frozenset(inspect.signature(Completions.create).parameters) - {"self"}
_SENT_BY_BACKEND = frozenset({"max_retries", "retry_policy"})  # litellm's; the client never retries itself
_REQUEST_ONLY = {"timeout": "timeout", "extra_headers": "headers", "extra_query": "params"}  # not body fields
_NO_KEY = "sk-no-key"  # for upstreams that need none; the openai client insists on some key
_PATH = "/chat/completions"
# The client's HTTP library's Response (httpx, or httpx2 from openai 3 on): as ``cast_to``, the client hands
# back the raw response. ``client.post`` is the client's documented way to send a request as is: ``create``
# would first walk the arguments through its type annotations (about 1-2 ms of CPU a request).
_Response: Any = (getattr(_openai_base, "httpx2", None) or getattr(_openai_base, "httpx")).Response


#: JSON objects come back as plain dicts: the backend's mapping code (``remote_replies``) reads dicts and
#: the SDK's objects alike, so no object is built per chunk. One decoder for every event.
_decode = json.JSONDecoder().decode


_DONE = object()


def _event(line: str, request: Any) -> Any:
    """One server-sent-event line: a chunk, ``_DONE``, or ``None`` (not a data line). An ``error``
    event raises ``openai.APIError`` with the upstream's error object."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    chunk = _decode(data)
    if isinstance(chunk, dict) and "error" in chunk and not chunk.get("choices"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(str(message or error), request, body=error)
    return chunk


def _finishes(chunk: Any) -> bool:
    """Whether ``chunk`` gives a choice's finish reason."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _cut_off(request: Any) -> openai.APIConnectionError:
    """A stream that began and then ended with neither ``[DONE]`` nor a finish reason: the connection closed
    in the middle of the answer (a close-delimited body ends without an HTTP error), which must not read as a
    complete answer."""
    return openai.APIConnectionError(message="the stream ended in the middle of the answer (no [DONE], no finish reason)",
                                     request=request)


def _reply(content: bytes, request: Any) -> Any:
    """A non-streamed answer's JSON. A body that is not JSON, or not an object with a list of ``choices``, is a
    broken answer (a proxy's error page, a cut body): ``openai.APIConnectionError``, retried like a dropped
    connection, as litellm's path does."""
    try:
        reply = json.loads(content)
    except ValueError as e:  # also a body that is not UTF-8
        raise openai.APIConnectionError(message=f"the answer is not JSON ({e})", request=request) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        raise openai.APIConnectionError(message=f"the answer has no list of choices: {content[:80]!r}", request=request)
    return reply


class _Events:
    """What the sync and async readers of a streamed reply share: a line's chunk (``None`` for a line that is
    not one: a comment, ``[DONE]``, anything after ``[DONE]``, which is still read so that a connection whose
    body was read whole goes back to the pool), and the end of the lines (``_cut_off`` when the stream began
    and ended with neither ``[DONE]`` nor a finish reason)."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._done = self._started = self._finished = False

    def _take(self, line: str) -> Any:
        if self._done:
            return None
        chunk = _event(line, self._response.request)
        if chunk is _DONE:
            self._done = True
            return None
        if chunk is not None:
            self._started = True
            self._finished = self._finished or _finishes(chunk)
        return chunk

    def _check_end(self) -> None:
        if self._started and not (self._done or self._finished):
            raise _cut_off(self._response.request)


class _Stream(_Events):
    """The chunks of one streamed reply, read from the raw HTTP response; ``close()`` releases it."""

    def __init__(self, response: Any) -> None:
        super().__init__(response)
        self._lines: Iterator[str] = response.iter_lines()

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        for line in self._lines:
            chunk = self._take(line)
            if chunk is not None:
                return chunk
        self._check_end()
        raise StopIteration

    def close(self) -> None:
        self._response.close()


class _AsyncStream(_Events):
    """Async ``_Stream``; ``aclose()`` releases the connection."""

    def __init__(self, response: Any) -> None:
        super().__init__(response)
        self._lines: AsyncIterator[str] = response.aiter_lines()

    def __aiter__(self) -> "_AsyncStream":
        return self

    async def __anext__(self) -> Any:
        async for line in self._lines:
            chunk = self._take(line)
            if chunk is not None:
                return chunk
        self._check_end()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._response.aclose()


async def _closing(clients: dict[str, Any]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        for client in list(clients.values()):
            with contextlib.suppress(Exception):
                await client.close()
        clients.clear()


def close_with_loop(clients: dict[str, Any]) -> AsyncGenerator[None, None]:
    """Have the running loop close ``clients`` (async ``openai`` clients) when it shuts down.

    An async client's connections belong to its loop and must be closed on it (aiohttp logs an error for a
    session left open). The loop's hook for that is the one it has for async generators: it closes every
    generator started on it in ``shutdown_asyncgens``, which ``asyncio.run`` (uvicorn, pytest-asyncio) calls
    while the loop still runs. So this starts one whose ``finally`` closes the clients; keep the returned
    generator referenced for as long as the clients live (the loop holds it weakly)."""
    closer = _closing(clients)
    try:
        closer.asend(None).send(None)  # to its first ``yield``: now the loop knows it
    except StopIteration:
        pass
    return closer


def _model_name(model: str) -> str:
    for prefix in _MODEL_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def _check_options(options: dict[str, Any], where: str) -> None:
    unknown = sorted(set(options) - _CLIENT_OPTIONS.keys() - _REQUEST_OPTIONS)
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {', '.join(unknown)} for the openai client; known: client options "
            f"{', '.join(sorted(_CLIENT_OPTIONS))} and chat-completions arguments (extra_body for others)"
        )


class OpenAIBackend(LiteLLMBackend):
    """An OpenAI-compatible chat model (OpenAI, vLLM, llama.cpp's server, Ollama, a gateway...) reached
    through the ``openai`` client: the arguments, retries, fallbacks and errors of ``LiteLLMBackend``.

    Args:
        model: ``"openai_compatible/NAME"`` or ``"openai/NAME"`` (the prefix is dropped) or ``NAME``.
        **options: ``api_base`` (or ``base_url``), ``api_key`` (default ``$OPENAI_API_KEY``, else a
            placeholder for upstreams that need none), ``organization``, ``project``,
            ``default_headers``; anything else is a chat-completions argument sent with every request.
        The other arguments are ``LiteLLMBackend``'s; a fallback dict may set its own client options.

    Raises:
        BackendError: from every method, whatever went wrong.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)  # LiteLLMBackend's arguments; the rest land in litellm_kwargs
        _check_options(self.litellm_kwargs, "OpenAIBackend")
        for i, target in enumerate(self._targets[1:]):
            _check_options(target.kwargs, f"fallbacks[{i}]")
        self._lock = threading.Lock()
        self._clients: dict[str, openai.OpenAI] = {}
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AioUpstream]] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = weakref.WeakKeyDictionary()

    def _unroutable(self, model: str, options: dict[str, Any]) -> str | None:
        return None  # any name: the upstream is OpenAI-compatible whatever it calls its models

    def __repr__(self) -> str:
        fb = f", fallbacks={self.fallbacks}" if self.fallbacks else ""
        return f"OpenAIBackend(model={self.model!r}{fb})"

    # -- the transport ------------------------------------------------------------------
    def _split(self, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], Any]:
        """``_kwargs``'s litellm-style arguments → (client key, client options, JSON body, request options)."""
        client: dict[str, Any] = {}
        body: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in _CLIENT_OPTIONS:
                client[_CLIENT_OPTIONS[name]] = value
            elif name in _REQUEST_ONLY:
                options[_REQUEST_ONLY[name]] = value
            elif name == "extra_body":
                body.update(value or {})
            elif name not in _SENT_BY_BACKEND:
                body[name] = value  # every other argument is a field of the request body, as ``create`` sends it
        body["model"] = _model_name(body["model"])
        client.setdefault("api_key", os.environ.get("OPENAI_API_KEY") or _NO_KEY)
        return json.dumps(client, sort_keys=True, default=str), client, body, options

    def _client(self, key: str, options: dict[str, Any]) -> openai.OpenAI:
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = openai.OpenAI(max_retries=0, timeout=self.timeout, **options)
            return client

    def _aclient(self, key: str, options: dict[str, Any]) -> AioUpstream:
        """The async transport of this event loop (connections belong to one loop): the requests of an
        ``openai.AsyncOpenAI`` client with ``options``, sent on aiohttp (``aio_transport``); the loop closes
        it as it shuts down."""
        loop = asyncio.get_running_loop()
        clients = self._aclients.get(loop)
        if clients is None:
            clients = self._aclients[loop] = {}
            self._closers[loop] = close_with_loop(clients)
        client = clients.get(key)
        if client is None:
            client = clients[key] = AioUpstream(openai.AsyncOpenAI(max_retries=0, timeout=self.timeout, **options),
                                                _PATH, self.timeout)
        return client

    def _call(self, kwargs: dict[str, Any]) -> Any:
        key, options, body, request_options = self._split(kwargs)
        client = self._client(key, options)
        if body.get("stream"):
            return _Stream(client.post(_PATH, body=body, options=request_options, cast_to=_Response,
                                       stream=True, stream_cls=openai.Stream))
        response = client.post(_PATH, body=body, options=request_options, cast_to=_Response)
        return _reply(response.content, response.request)

    async def _acall(self, kwargs: dict[str, Any]) -> Any:
        key, options, body, request_options = self._split(kwargs)
        upstream = self._aclient(key, options)
        if body.get("stream"):
            return _AsyncStream(await upstream.post(body, request_options, stream=True))
        return _reply(await upstream.post(body, request_options), upstream.request)
