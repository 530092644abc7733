"""``LiteLLMBackend``: any hosted chat model litellm can reach, with retries, backoff and fallbacks.

Only failures that retrying can fix are retried (rate limits, timeouts, connection errors, 5xx);
client errors (400/401/403/404/422, context window, content policy) fail on the first attempt.
Every failure ends in one ``BackendError`` that names the model and carries the provider's message,
the HTTP status, whether it was retryable and how many attempts were made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence

import litellm
import openai
import tenacity

from .deadlines import ChunkWatch, within
from .errors import BackendError
from .llm import LLM, OPENAI_FIELDS, ModelStages
from .openai_format import wire_messages
from .remote_options import check_backend_options, check_extra_options, unknown_provider
from .remote_replies import StreamState, aclose_stream, close_stream, reply_from_litellm
from .types import ChatChunk, ChatRequest, ChatResponse

litellm.suppress_debug_info = True  # errors are reported through BackendError, not litellm's banner

__all__ = ["LiteLLMBackend", "is_retryable", "missing_credentials"]

_RETRYABLE_TYPES: tuple[type[BaseException], ...] = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
    openai.APIConnectionError,  # also APITimeoutError: the openai client's own (OpenAIBackend), which litellm's subclass
)
_FINAL_TYPES: tuple[type[BaseException], ...] = (
    litellm.BadRequestError,  # also ContextWindowExceededError, ContentPolicyViolationError, UnsupportedParamsError
    litellm.AuthenticationError,
    litellm.PermissionDeniedError,
    litellm.NotFoundError,
    litellm.UnprocessableEntityError,
)
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_REQUEST_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")
_RESERVED_KWARGS = frozenset({"model", "messages", "stream", "num_retries", "max_retries", "fallbacks"})
_PREFIX = re.compile(r"^(?:(?:litellm\.)?\w*(?:Error|Exception|Timeout)\s*[:\-]\s*)+")


def _no_retries() -> Any:
    """litellm's retry policy that retries nothing."""
    from litellm.types.router import RetryPolicy

    return RetryPolicy(DefaultRetries=0)


#: How the provider SDKs say that no API key was given (litellm reports it as an HTTP 500).
_MISSING_CREDENTIALS = re.compile(r"missing credentials|api_key client option must be set|no api key|api key not (?:found|set)", re.I)


def missing_credentials(exc: BaseException) -> bool:
    """Whether ``exc`` says that the provider's API key was not given at all (a set-up error)."""
    return bool(_MISSING_CREDENTIALS.search(str(exc)))


def _status(exc: BaseException) -> int | None:
    if missing_credentials(exc):
        return None  # our set-up, not the provider's answer: a 502 to our client, not litellm's 500
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether calling again could fix ``exc``: rate limits, timeouts, connection errors and 5xx.

    Refused or missing credentials are final: an authentication error, and the "missing credentials"
    error litellm reports as a 500 when no API key was given."""
    if isinstance(exc, _FINAL_TYPES) or missing_credentials(exc):
        return False
    if isinstance(exc, _RETRYABLE_TYPES):
        return True
    code = _status(exc)
    if code is not None:
        return code in _RETRYABLE_STATUS or code >= 500
    return isinstance(exc, (TimeoutError, ConnectionError))


def _provider_message(exc: BaseException) -> str:
    """The provider's own words, without litellm's ``litellm.XError: XError: OpenAIException -`` prefixes."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    raw = getattr(exc, "message", None)
    text = raw if isinstance(raw, str) and raw else str(exc)
    text = _PREFIX.sub("", text).strip()
    return text or type(exc).__name__


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` (or ``retry-after-ms``) header, where the error carries one."""
    if exc is None:
        return None
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if not headers:
            continue
        try:
            ms = headers.get("retry-after-ms")
            if ms is not None:
                return float(ms) / 1000.0
            seconds = headers.get("retry-after")
            if seconds is not None:
                return float(seconds)
        except (TypeError, ValueError, AttributeError):
            continue
    return None


@dataclass(frozen=True)
class _Target:
    """One model to try, with the litellm arguments specific to it."""

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Failure:
    """How one model failed: the last exception and the attempts it took."""

    model: str
    exc: BaseException
    attempts: int

    def kind(self) -> str:
        code = _status(self.exc)
        return type(self.exc).__name__ + (f" (HTTP {code})" if code is not None else "")

    def describe(self) -> str:
        kind = self.kind()
        if not is_retryable(self.exc):
            how = "not retried" if self.attempts == 1 else f"failed on attempt {self.attempts}"
        else:
            how = f"gave up after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        return f"{self.model}: {kind}, {how}: {_provider_message(self.exc)}"


class _Attempted(Exception):
    """Internal: a model failed after ``attempts`` tries."""

    def __init__(self, exc: BaseException, attempts: int) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.attempts = attempts


def _backend_error(failures: list[_Failure]) -> BackendError:
    last = failures[-1]
    attempts = sum(f.attempts for f in failures)
    if len(failures) == 1:
        message = last.describe()
    else:
        parts = "; ".join(f.describe() for f in failures)
        message = f"all {len(failures)} models failed ({attempts} attempts): {parts}"
    return BackendError(
        message,
        provider_message=_provider_message(last.exc),
        status_code=_status(last.exc),
        retryable=is_retryable(last.exc),
        attempts=attempts,
        retry_after=_retry_after(last.exc),
    )


class LiteLLMBackend(LLM):
    """A hosted chat model reached through litellm (``"openai/gpt-4o-mini"``, ``"anthropic/..."``...).

    Args:
        model: a litellm model string, ``"provider/name"``.
        max_retries: retries after the first attempt, per model, for retryable errors only.
        timeout: seconds per attempt. On the async paths (``acomplete``, ``astream``: what the server
            uses) it bounds the whole attempt, and in a stream each wait for the next chunk, so an
            upstream that drips bytes or SSE comments cannot hold a request open (``AttemptTimeout``,
            answered 504); on the sync paths it bounds each read.
        fallbacks: models tried in order once ``model`` has used up its retries on a retryable
            error. Each is a model string, or a dict ``{"model": ..., **litellm_kwargs}`` whose
            arguments override the shared ones for that model (another ``api_base`` or ``api_key``).
        backoff_initial: seconds before the first retry; doubles each time (plus a little jitter),
            and a provider's ``Retry-After`` is honoured.
        backoff_max: the longest wait between two attempts.
        max_concurrency: how many requests ``batch``/``abatch`` send at once.
        **litellm_kwargs: passed to every litellm call (``api_base``, ``api_key``, ``mock_response``,
            ``drop_params``...).

    Raises:
        BackendError: from every method, whatever went wrong.

    OpenAI request fields (litellm maps them for each provider; ``drop_params=True`` in
    ``litellm_kwargs`` lets it drop those a provider lacks instead of failing; it sends ``user`` only
    to models of OpenAI's own catalogue, since other OpenAI-compatible servers may reject it):

    | field | here |
    | --- | --- |
    | ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` | forwarded |
    | ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``n``, ``response_format``, ``logprobs``, ``top_logprobs``, ``frequency_penalty``, ``presence_penalty``, ``logit_bias``, ``user`` | forwarded; the reply's ``tool_calls``, every choice and ``logprobs`` come back (streamed: tool-call deltas and logprobs per chunk) |
    | ``tool`` messages, an assistant's ``tool_calls`` (``content: null``), ``name`` | forwarded intact |
    | ``developer`` messages | forwarded; litellm sends them as ``system`` messages |
    | non-text content parts (images, audio, files) | forwarded as sent (stages see the text parts) |
    """

    supports_model_stages = False
    accepts = frozenset(OPENAI_FIELDS) | {"content_parts"}

    def __init__(
        self,
        model: str = "openai/gpt-4o-mini",
        *,
        max_retries: int = 3,
        timeout: float = 60.0,
        fallbacks: Sequence[str | dict[str, Any]] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        max_concurrency: int = 8,
        **litellm_kwargs: Any,
    ) -> None:
        check_backend_options(model, max_retries=max_retries, timeout=timeout, fallbacks=fallbacks,
                              backoff_initial=backoff_initial, backoff_max=backoff_max, max_concurrency=max_concurrency)
        reserved = sorted(_RESERVED_KWARGS & litellm_kwargs.keys())
        if reserved:
            raise TypeError(
                f"LiteLLMBackend sets {', '.join(reserved)} itself; use model=, max_retries= and fallbacks= instead"
            )
        check_extra_options(litellm_kwargs)
        self.model = model
        self.name = model
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_concurrency = max_concurrency
        self.litellm_kwargs = dict(litellm_kwargs)
        self._targets = [_Target(model)] + [self._target(f, i) for i, f in enumerate(fallbacks or ())]
        self.fallbacks = [t.model for t in self._targets[1:]]
        for i, target in enumerate(self._targets):
            problem = self._unroutable(target.model, {**self.litellm_kwargs, **target.kwargs})
            if problem:
                raise ValueError(problem if i == 0 else f"fallbacks[{i - 1}]: {problem}")
        # max_retries=0: no retries inside the provider's SDK client; the retry policy is ours alone.
        self._base = {"timeout": timeout, "max_retries": 0, **self.litellm_kwargs}
        retry_args: dict[str, Any] = dict(
            stop=tenacity.stop_after_attempt(max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._may_retry),
            reraise=True,
        )
        self._retrying = tenacity.Retrying(**retry_args)
        self._aretrying = tenacity.AsyncRetrying(**retry_args)

    def _unroutable(self, model: str, options: dict[str, Any]) -> str | None:
        """Why litellm cannot route ``model``, or ``None`` (``remote_options.unknown_provider``)."""
        return unknown_provider(model, options)

    def __repr__(self) -> str:
        fb = f", fallbacks={self.fallbacks}" if self.fallbacks else ""
        return f"LiteLLMBackend(model={self.model!r}{fb})"

    @staticmethod
    def _target(spec: str | dict[str, Any], i: int) -> _Target:
        if isinstance(spec, str) and spec:
            return _Target(spec)
        if isinstance(spec, dict) and isinstance(spec.get("model"), str) and spec["model"]:
            extra = {k: v for k, v in spec.items() if k != "model"}
            reserved = sorted((_RESERVED_KWARGS - {"model"}) & extra.keys())
            if reserved:
                raise TypeError(f"fallbacks[{i}] may not set {', '.join(reserved)}")
            return _Target(spec["model"], extra)
        raise ValueError(f"fallbacks[{i}] must be a model string or a dict with a 'model' key, got {spec!r}")

    def _may_retry(self, exc: BaseException) -> bool:
        """``is_retryable``, unless the upstream asks (``Retry-After``) for a longer wait than ``backoff_max``:
        then waiting less would only be refused again, so the error goes back at once with that wait."""
        if not is_retryable(exc):
            return False
        asked = _retry_after(exc)
        return asked is None or asked <= self.backoff_max

    def _wait(self, state: tenacity.RetryCallState) -> float:
        delay = self.backoff_initial * 2 ** (state.attempt_number - 1) * (1.0 + 0.1 * random.random())
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = _retry_after(exc)
        if asked is not None:
            delay = max(delay, asked)
        return min(delay, self.backoff_max)

    # -- request mapping ----------------------------------------------------------------
    def _kwargs(self, target: _Target, request: ChatRequest, **extra: Any) -> dict[str, Any]:
        kw = dict(self._base)
        if litellm.num_retries and "retry_policy" not in kw:
            # A global litellm.num_retries makes litellm retry on its own, whatever num_retries says; a
            # policy of zero retries turns that off for our calls (only then: it costs litellm some work).
            kw["retry_policy"] = _no_retries()
        if target.kwargs:
            kw.update(target.kwargs)
        kw["model"] = target.model
        kw["messages"] = wire_messages(request.messages)
        for name in _REQUEST_FIELDS:
            value = getattr(request, name)
            if value is not None:
                kw[name] = value
        if request.openai_fields:
            kw.update(request.openai_fields)
        kw.update(extra)
        return kw

    def _response(self, raw: Any, target: _Target) -> ChatResponse:
        reply = reply_from_litellm(raw, target.model)
        if reply is None:
            raise BackendError(f"{target.model}: the provider returned no choices", retryable=False)
        return reply

    def _call(self, kwargs: dict[str, Any]) -> Any:
        """Send one request (``kwargs`` from ``_kwargs``): a completion, or with ``stream=True`` an iterable
        of chunks with ``close()``. Another transport (``OpenAIBackend``) overrides this and ``_acall``."""
        return litellm.completion(**kwargs)

    async def _acall(self, kwargs: dict[str, Any]) -> Any:
        """Async ``_call``: a completion, or an async iterable of chunks with ``aclose()``."""
        return await litellm.acompletion(**kwargs)

    @staticmethod
    def _check_stages(model_stages: ModelStages) -> None:
        if model_stages:
            raise TypeError("LiteLLMBackend calls a hosted model: model stages need a local model")

    # -- retry + fallback core ----------------------------------------------------------
    def _attempt(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` under the retry policy; raise ``_Attempted`` with the attempt count on failure.

        The first attempt is a plain call (most succeed); a retryable failure is handed to tenacity
        as its attempt 1, and tenacity decides the waits, the retries and when to stop.
        """
        try:
            return fn()
        except Exception as e:
            if self.max_retries == 0 or not self._may_retry(e):
                raise _Attempted(e, 1) from e
            first = e
        attempts = 1
        try:
            for attempt in self._retrying.copy():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts == 1:
                        raise first
                    return fn()
        except Exception as e:
            raise _Attempted(e, attempts) from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aattempt(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``_attempt`` for coroutines; each attempt is bounded by ``timeout`` as a whole (``within``)."""
        try:
            return await within(fn(), self.timeout, "no answer")
        except Exception as e:
            if self.max_retries == 0 or not self._may_retry(e):
                raise _Attempted(e, 1) from e
            first = e
        attempts = 1
        try:
            async for attempt in self._aretrying.copy():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts == 1:
                        raise first
                    return await within(fn(), self.timeout, "no answer")
        except Exception as e:
            raise _Attempted(e, attempts) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, call: Callable[[_Target], Any]) -> tuple[Any, _Target]:
        """Try each target in turn; move on only after a retryable failure."""
        failures: list[_Failure] = []
        for target in self._targets:
            try:
                return self._attempt(lambda: call(target)), target
            except _Attempted as a:
                failures.append(_Failure(target.model, a.exc, a.attempts))
                if not is_retryable(a.exc):
                    break
        raise _backend_error(failures) from failures[-1].exc

    async def _arun(self, call: Callable[[_Target], Awaitable[Any]]) -> tuple[Any, _Target]:
        failures: list[_Failure] = []
        for target in self._targets:
            try:
                return await self._aattempt(lambda: call(target)), target
            except _Attempted as a:
                failures.append(_Failure(target.model, a.exc, a.attempts))
                if not is_retryable(a.exc):
                    break
        raise _backend_error(failures) from failures[-1].exc

    # -- the LLM protocol ---------------------------------------------------------------
    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        """One completion, retried and falling back as configured."""
        self._check_stages(model_stages)
        raw, target = self._run(lambda t: self._call(self._kwargs(t, request)))
        return self._response(raw, target)

    async def acomplete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        """Native async completion through ``litellm.acompletion``."""
        self._check_stages(model_stages)
        raw, target = await self._arun(lambda t: self._acall(self._kwargs(t, request)))
        return self._response(raw, target)

    def _stream_kwargs(self, target: _Target, request: ChatRequest) -> dict[str, Any]:
        kw = self._kwargs(target, request, stream=True)
        kw.setdefault("stream_options", {"include_usage": True})
        return kw

    def stream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> Iterator[ChatChunk]:
        """Yield text deltas, then a closing chunk with ``finish_reason`` and usage.

        Opening the stream and reading up to the first piece of text is retried (and falls back);
        once a chunk has been yielded, a failure raises ``BackendError`` at once.
        """
        self._check_stages(model_stages)
        attempts_box: list[int] = []

        def open_stream(target: _Target) -> tuple[Any, StreamState, ChatChunk | None]:
            attempts_box.append(1)
            raw = self._call(self._stream_kwargs(target, request))
            state = StreamState(target.model)
            try:
                for chunk in raw:
                    piece = state.take(chunk)
                    if piece is not None:
                        return raw, state, piece
                state.check_started()  # an empty stream is a failed attempt, not an empty answer
            except BaseException:
                close_stream(raw)
                raise
            return raw, state, None

        (it, state, first), target = self._run(open_stream)
        attempts = len(attempts_box)
        try:
            if first is not None:
                yield first
                try:
                    for chunk in it:
                        piece = state.take(chunk)
                        if piece is not None:
                            yield piece
                except Exception as e:
                    raise self._midstream_error(target, e, attempts) from e
            yield state.closing()
        finally:
            close_stream(it)

    async def astream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> AsyncIterator[ChatChunk]:
        """Native async streaming through ``litellm.acompletion(stream=True)``; same policy as ``stream``."""
        self._check_stages(model_stages)
        attempts_box: list[int] = []

        async def open_stream(target: _Target) -> tuple[Any, StreamState, ChatChunk | None]:
            attempts_box.append(1)
            raw = await self._acall(self._stream_kwargs(target, request))
            state = StreamState(target.model)
            try:
                async for chunk in raw:
                    piece = state.take(chunk)
                    if piece is not None:
                        return raw, state, piece
                state.check_started()  # an empty stream is a failed attempt, not an empty answer
            except BaseException:
                await aclose_stream(raw)
                raise
            return raw, state, None

        (raw, state, first), target = await self._arun(open_stream)
        attempts = len(attempts_box)
        watch = ChunkWatch(self.timeout)  # each next chunk within the timeout: a dripping upstream cannot hold it open
        try:
            if first is not None:
                yield first
                chunks = aiter(raw)
                try:
                    while True:
                        try:
                            chunk = await watch.next(chunks)
                        except StopAsyncIteration:
                            break
                        piece = state.take(chunk)
                        if piece is not None:
                            yield piece
                except Exception as e:
                    raise self._midstream_error(target, e, attempts) from e
            yield state.closing()
        finally:
            watch.close()
            await aclose_stream(raw)

    @staticmethod
    def _midstream_error(target: _Target, exc: Exception, attempts: int) -> BackendError:
        kind = _Failure(target.model, exc, attempts).kind()
        return BackendError(
            f"{target.model}: the stream broke after it had started (not retried): {kind}: {_provider_message(exc)}",
            provider_message=_provider_message(exc),
            status_code=_status(exc),
            retryable=is_retryable(exc),
            attempts=attempts,
        )

    def batch(self, requests: Sequence[ChatRequest], *, model_stages: ModelStages = ()) -> list[ChatResponse]:
        """Answer ``requests`` concurrently (at most ``max_concurrency`` at once), in their order.

        The first failure (in request order) is raised; requests not yet started are cancelled.
        """
        self._check_stages(model_stages)
        if len(requests) <= 1:
            return [self.complete(r) for r in requests]
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(requests)), thread_name_prefix="alignware-litellm"
        )
        try:
            futures = [pool.submit(self.complete, r) for r in requests]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    async def abatch(self, requests: Sequence[ChatRequest], *, model_stages: ModelStages = ()) -> list[ChatResponse]:
        """Async ``batch``: at most ``max_concurrency`` requests in flight, results in order.

        The first failure is raised once the other requests are cancelled (none keeps running, or
        starts, after ``abatch`` has raised)."""
        self._check_stages(model_stages)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(r: ChatRequest) -> ChatResponse:
            async with gate:
                return await self.acomplete(r)

        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
