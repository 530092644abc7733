"""The async transport of ``OpenAIBackend``: the request the ``openai`` client would send, sent on aiohttp.

The ``openai`` client builds every request anew (its options, URL parsing and joining, header merging, an
httpx request and response): on a small machine about 1 ms of CPU a request, most of what a request through
``OpenAIBackend`` costs, even on the client's own aiohttp transport. Here an ``openai.AsyncOpenAI`` client is
made once per upstream for what it knows (the URL from ``base_url`` or ``$OPENAI_BASE_URL``, its headers with
the key, organization and project, and its error types), and every request is one aiohttp POST of the JSON
body with those headers. Errors are the client's own: an HTTP error status raises what it would raise
(its ``_make_status_error_from_response``: ``RateLimitError``, ``BadRequestError``... with the status, headers
and body), a refused or broken connection ``openai.APIConnectionError``, a connect or read timeout
``openai.APITimeoutError``. ``python benchmarks/openai_transport.py`` compares the two side by side (2-core
machine): 0.97 ms against 0.27 ms of CPU a request for one client, 1.52 ms against 0.24 ms with 32 in flight.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import json
import re
import ssl
from typing import Any, AsyncGenerator, AsyncIterator

import aiohttp
import openai
import openai._base_client as _openai_base

__all__ = ["AioStream", "AioUpstream", "lines_of"]

# The client's HTTP library (httpx, or httpx2 from openai 3 on): its Request and Response carry the SDK's errors.
_http: Any = getattr(_openai_base, "httpx2", None) or getattr(_openai_base, "httpx")
_EOL = re.compile(r"\r\n|\r|\n")  # server-sent events end lines with any of the three
#: what aiohttp raises when the connection fails, breaks or times out (``AioUpstream._transport_error`` maps them)
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
_MAX_CONNECTIONS = 1000  # the openai client's own pool limit (aiohttp's default is 100)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """The certificates the openai client trusts (certifi's bundle, as httpx), else the system's."""
    try:
        import certifi  # installed with httpx, which the openai client needs
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _headers(client: openai.AsyncOpenAI) -> dict[str, str]:
    """What the client sends with every request: its default headers (content type, user agent, platform,
    organization, project, ``default_headers``) and its key (``Authorization: Bearer ...``)."""
    merged = {**client.default_headers, **client.auth_headers}
    return {name: value for name, value in merged.items() if isinstance(value, str)}  # ``Omit()``: not sent


class AioUpstream:
    """One OpenAI-compatible upstream, reached from one event loop: ``post`` sends to ``url`` (``base_url`` + ``path``).

    Args:
        client: the ``openai.AsyncOpenAI`` client whose requests this sends (not used to send).
        path: the endpoint under the client's ``base_url`` (``/chat/completions``).
        timeout: seconds to connect, and between two reads of the answer (the backend bounds the attempt).
    """

    def __init__(self, client: openai.AsyncOpenAI, path: str, timeout: float) -> None:
        self.client = client
        self.url = str(client.base_url).rstrip("/") + path
        self.headers = _headers(client)
        self.request = _http.Request("POST", self.url)  # what the SDK's errors name
        self._timeouts: dict[Any, aiohttp.ClientTimeout] = {}
        self._default_timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _timeout(self, seconds: Any) -> aiohttp.ClientTimeout:
        if seconds is None:
            seconds = self._default_timeout
        found = self._timeouts.get(seconds)
        if found is None:
            t = float(seconds)
            found = self._timeouts[seconds] = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)
        return found

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, limit_per_host=0, ssl=_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    @property
    def closed(self) -> bool:
        return self._session is None or self._session.closed

    async def post(self, body: dict[str, Any], options: dict[str, Any], *, stream: bool = False) -> Any:
        """Send ``body`` as JSON: the answer's bytes, or (``stream``) an ``AioStream`` of its lines.
        ``options``: ``timeout`` (seconds), ``headers`` (sent over the client's), ``params`` (the query)."""
        extra = options.get("headers")
        headers = {**self.headers, **extra} if extra else self.headers
        session = self._open_session()
        try:
            resp = await session.post(self.url, data=json.dumps(body, separators=(",", ":")).encode(), headers=headers,
                                      params=options.get("params"), timeout=self._timeout(options.get("timeout")))
        except _TRANSPORT_ERRORS as e:
            raise self._transport_error(e) from e
        if resp.status >= 400:
            raise await self._status_error(resp)
        if stream:
            return AioStream(resp, self)
        try:
            return await resp.read()
        except _TRANSPORT_ERRORS as e:
            raise self._transport_error(e) from e
        finally:
            resp.release()

    def _transport_error(self, exc: BaseException) -> openai.APIConnectionError:
        """``exc`` (one of ``_TRANSPORT_ERRORS``) as the openai client reports it."""
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's connect and read timeouts
            return openai.APITimeoutError(request=self.request)
        return openai.APIConnectionError(message=f"{type(exc).__name__}: {exc}", request=self.request)

    async def _status_error(self, resp: aiohttp.ClientResponse) -> Exception:
        try:
            content = await resp.read()
        except Exception:
            content = b""
        finally:
            resp.release()
        response = _http.Response(resp.status, headers=list(resp.headers.items()), content=content, request=self.request)
        return self.client._make_status_error_from_response(response)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.client.close()


async def lines_of(chunks: AsyncIterator[bytes]) -> AsyncGenerator[str, None]:
    """The lines of a UTF-8 byte stream as they complete, without their ends (``\\r\\n``, ``\\n`` or ``\\r``,
    as server-sent events allow), whatever the chunk boundaries; a last line without an end too."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    async for data in chunks:
        pending += decoder.decode(data)
        held = "\r" if pending.endswith("\r") else ""  # perhaps the first half of a "\r\n"
        lines = _EOL.split(pending[:-1] if held else pending)
        pending = lines.pop() + held
        for line in lines:
            yield line
    pending += decoder.decode(b"", final=True)
    if pending:
        lines = _EOL.split(pending)
        for line in lines[:-1] if lines[-1] == "" else lines:
            yield line


class AioStream:
    """A streamed answer's lines (``aiter_lines``), read as they arrive; ``aclose()`` gives the connection
    back (to the pool once the body was read whole). ``request`` is what the SDK's errors name."""

    def __init__(self, resp: aiohttp.ClientResponse, upstream: AioUpstream) -> None:
        self._resp = resp
        self._upstream = upstream
        self.request = upstream.request
        self._lines: AsyncGenerator[str, None] | None = None

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except _TRANSPORT_ERRORS as e:
            raise self._upstream._transport_error(e) from e

    def aiter_lines(self) -> AsyncIterator[str]:
        self._lines = lines_of(self._chunks())
        return self._lines

    async def aclose(self) -> None:
        if self._lines is not None:  # a reader stopped early: end its generator now, not when collected
            with contextlib.suppress(Exception):
                await self._lines.aclose()
        self._resp.release()
