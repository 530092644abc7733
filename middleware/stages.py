"""Stage base classes: ``PromptStage``, ``ModelStage``, ``ResponseStage``.

A stage has one job. Its failure policy defaults to fail-open: a stage that raises or times out
passes its input through unchanged and its trace entry says ``failed`` with the reason. Set
``on_error="raise"`` to raise ``StageError`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar, ContextManager, Iterator, Literal, Sequence

from .errors import InputError, StageError
from .types import ChatRequest, ChatResponse, StageTrace, Verdict

if TYPE_CHECKING:  # pragma: no cover
    pass

OnError = Literal["pass", "raise"]
SkipIf = Callable[[ChatRequest], bool]

_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("alignware_notes", default=None)
_pool: concurrent.futures.ThreadPoolExecutor | None = None


_batch_notes: contextvars.ContextVar[list[list[str]] | None] = contextvars.ContextVar("alignware_batch_notes", default=None)


def note(reason: str) -> None:
    """Called from inside a stage: record why it did what it did (shown in the trace)."""
    holder = _notes.get()
    if holder is not None:
        holder.append(reason)


@contextlib.contextmanager
def batch_item(index: int) -> Iterator[None]:
    """Inside ``process_batch``: ``note()`` calls in this block are about request ``index`` of the batch."""
    batch = _batch_notes.get()
    if batch is None:
        yield
        return
    token = _notes.set(batch[index])
    try:
        yield
    finally:
        _notes.reset(token)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="alignware-stage")
    return _pool


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_title_request(request: ChatRequest) -> bool:
    """``skip_if`` helper: chat apps' background requests (titles, tags, follow-up suggestions)."""
    text = request.messages[-1].content.lower() if request.messages else ""
    if request.metadata.get("task") in {"title", "tags", "follow_up", "autocomplete"}:
        return True
    markers = ("generate a concise", "title for the", "### task:", "generate 1-3 broad tags", "suggest 3-5 relevant follow-up")
    return any(m in text for m in markers)


class Stage:
    """Common settings of every stage.

    Args:
        name: shown in traces (default: the class name).
        on_error: ``"pass"`` (default) passes the input through on error; ``"raise"`` raises ``StageError``.
        timeout: seconds; a stage that takes longer counts as failed (``None``: no limit). When
            streaming, the stage's own time over the whole answer, not its wait for upstream chunks.
        skip_if: a predicate on the request; when true the stage is skipped.
    """

    kind: ClassVar[Literal["prompt", "model", "response"]]
    name: str
    on_error: OnError = "pass"
    timeout: float | None = None
    skip_if: SkipIf | None = None

    def __init__(
        self,
        *,
        name: str | None = None,
        on_error: OnError = "pass",
        timeout: float | None = None,
        skip_if: SkipIf | None = None,
    ) -> None:
        if on_error not in ("pass", "raise"):
            raise ValueError(f"on_error must be 'pass' or 'raise', got {on_error!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.name = name or type(self).__name__
        self.on_error = on_error
        self.timeout = timeout
        self.skip_if = skip_if

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- shared machinery -------------------------------------------------------------
    def deterministic(self) -> bool:
        """Whether the stage gives the same output whenever it gets the same input (no sampling, no
        timeout that may cut one run and not the next). ``False`` unless a stage knows;
        ``alignware eval --repeats`` runs a variant whose stages and LLM are all deterministic only once."""
        return False

    def _skipped(self, request: ChatRequest) -> StageTrace | None:
        if self.skip_if is None:
            return None
        try:
            skip = bool(self.skip_if(request))
        except Exception as e:  # a broken predicate must not lose the request
            return self._trace("failed", 0.0, reason=f"skip_if raised {_reason(e)}")
        return self._trace("skipped", 0.0, reason="skip_if matched") if skip else None

    def _trace(
        self, verdict: Verdict, latency_s: float, *, before: str | None = None, after: str | None = None, reason: str | None = None
    ) -> StageTrace:
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    def _failed(self, exc: BaseException, t0: float, before: str | None) -> StageTrace:
        reason = _reason(exc)
        if self.timeout is not None and reason == "timed out":
            reason = f"timed out after {self.timeout:g}s"
        if self.on_error == "raise":
            raise StageError(self.name, reason) from exc
        return self._trace("failed", time.perf_counter() - t0, before=before, after=before, reason=reason)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.timeout is None:
            return fn(*args)
        ctx = contextvars.copy_context()
        fut = _executor().submit(ctx.run, fn, *args)
        return fut.result(timeout=self.timeout)

    async def _acall(self, coro: Any) -> Any:
        if self.timeout is None:
            return await coro
        return await asyncio.wait_for(coro, self.timeout)

    def _run_batch(
        self,
        requests: Sequence[ChatRequest],
        inputs: Sequence[Any],
        call: Callable[[list[int]], Any],
        check: Callable[[Any], Any],
        describe: Callable[[Any], str],
        done: Callable[[Any, Any, float, list[str]], StageTrace],
    ) -> list[tuple[Any, StageTrace]]:
        """The failure policy around one ``process_batch`` call over the requests not skipped.

        ``inputs[i]`` is what passes through for request ``i`` when the stage is skipped or fails. Each
        request gets its own trace; the latency is the batch's wall time shared equally.
        """
        results: list[tuple[Any, StageTrace] | None] = [None] * len(requests)
        todo: list[int] = []
        for i, r in enumerate(requests):
            skipped = self._skipped(r)
            if skipped is not None:
                results[i] = (inputs[i], skipped)
            else:
                todo.append(i)
        if todo:
            notes: list[list[str]] = [[] for _ in todo]
            token = _batch_notes.set(notes)
            t0 = time.perf_counter()
            try:
                outs = self._call(call, todo)
                if not isinstance(outs, (list, tuple)) or len(outs) != len(todo):
                    got = f"{len(outs)} results" if isinstance(outs, (list, tuple)) else type(outs).__name__
                    raise TypeError(f"process_batch() returned {got} for {len(todo)} requests")
                outs = [check(o) for o in outs]
            except Exception as e:
                share = (time.perf_counter() - t0) / len(todo)
                for i in todo:
                    trace = self._failed(e, time.perf_counter() - share, describe(inputs[i]))  # raises if on_error="raise"
                    results[i] = (inputs[i], trace)
                return results  # type: ignore[return-value]
            finally:
                _batch_notes.reset(token)
            share = (time.perf_counter() - t0) / len(todo)
            for j, i in enumerate(todo):
                results[i] = (outs[j], done(inputs[i], outs[j], share, notes[j]))
        return results  # type: ignore[return-value]


def _user_text(request: ChatRequest) -> str:
    """The last user message for a trace; empty when the request has none (the stage then fails on
    its own terms and the request passes through)."""
    messages = request.messages
    if messages and messages[-1].role == "user":  # the usual case, without the search
        return messages[-1].content
    try:
        return request.last_user_message
    except InputError:
        return ""


def _verdict(changed: bool, notes: list[str]) -> tuple[Verdict, str | None]:
    return ("modified" if changed else "passed"), ("; ".join(notes) if notes else None)


class PromptStage(Stage):
    """Acts on the request before the LLM. Override ``process`` (and ``aprocess`` if it has a native async path)."""

    kind = "prompt"

    def process(self, request: ChatRequest) -> ChatRequest:
        raise NotImplementedError

    async def aprocess(self, request: ChatRequest) -> ChatRequest:
        return await asyncio.to_thread(self.process, request)

    def run(self, request: ChatRequest) -> tuple[ChatRequest, StageTrace]:
        """Apply the stage with its policy; never loses the request unless ``on_error="raise"``."""
        if self.skip_if is not None:
            skipped = self._skipped(request)
            if skipped is not None:
                return request, skipped
        before = _user_text(request)
        notes: list[str] = []
        token = _notes.set(notes)
        t0 = time.perf_counter()
        try:
            out = self._check(self.process(request) if self.timeout is None else self._call(self.process, request))
        except Exception as e:
            return request, self._failed(e, t0, before)
        finally:
            _notes.reset(token)
        return out, self._done_in(request, out, time.perf_counter() - t0, before, notes)

    async def arun(self, request: ChatRequest) -> tuple[ChatRequest, StageTrace]:
        skipped = self._skipped(request)
        if skipped is not None:
            return request, skipped
        before = _user_text(request)
        notes: list[str] = []
        token = _notes.set(notes)
        t0 = time.perf_counter()
        try:
            out = self._check(await self._acall(self.aprocess(request)))
        except Exception as e:
            return request, self._failed(e, t0, before)
        finally:
            _notes.reset(token)
        return out, self._done(request, out, t0, before, notes)

    def _check(self, out: Any) -> ChatRequest:
        if type(out) is ChatRequest:
            return out
        if not isinstance(out, ChatRequest):
            raise TypeError(f"process() returned {type(out).__name__}, expected ChatRequest")
        return out

    def _done(self, request: ChatRequest, out: ChatRequest, t0: float, before: str, notes: list[str]) -> StageTrace:
        return self._done_in(request, out, time.perf_counter() - t0, before, notes)

    def _done_in(self, request: ChatRequest, out: ChatRequest, latency_s: float, before: str, notes: list[str]) -> StageTrace:
        verdict: Verdict
        if out is request:
            verdict, after = "passed", before
        else:
            verdict, after = ("modified" if out != request else "passed"), _user_text(out)
        reason = "; ".join(notes) if notes else None
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    # -- batches ------------------------------------------------------------------------
    def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        """Optional: process many requests at once (one batched generation). Return one request per
        input, in order; ``note()`` about request ``i`` inside ``with batch_item(i):``. Stages that do
        not override it process a batch one request at a time."""
        raise NotImplementedError

    def run_batch(self, requests: Sequence[ChatRequest]) -> list[tuple[ChatRequest, StageTrace]]:
        """``run`` for many requests: one ``process_batch`` call where the stage has one, else ``run`` each.

        With ``process_batch``, an error fails the whole batch: every request passes through unchanged
        with a ``failed`` trace (or ``StageError`` is raised when ``on_error="raise"``). The stage's
        ``timeout`` applies to the one ``process_batch`` call.
        """
        if len(requests) < 2 or type(self).process_batch is PromptStage.process_batch:
            return [self.run(r) for r in requests]
        return self._run_batch(
            requests,
            requests,
            lambda todo: self.process_batch([requests[i] for i in todo]),
            self._check,
            _user_text,
            lambda r, out, latency, notes: self._done_in(r, out, latency, _user_text(r), notes),
        )


class ResponseStage(Stage):
    """Acts on the reply after the LLM. Override ``process``; streaming defaults to buffering."""

    kind = "response"

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        raise NotImplementedError

    async def aprocess(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return await asyncio.to_thread(self.process, request, response)

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        """Streaming hook. Default (``buffer``): collect the whole answer, then yield the corrected one."""
        text = "".join(chunks)
        yield self.process(request, ChatResponse(text=text)).text

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        text = "".join([c async for c in chunks])
        yield (await self.aprocess(request, ChatResponse(text=text))).text

    def run(self, request: ChatRequest, response: ChatResponse) -> tuple[ChatResponse, StageTrace]:
        if self.skip_if is not None:
            skipped = self._skipped(request)
            if skipped is not None:
                return response, skipped
        notes: list[str] = []
        token = _notes.set(notes)
        t0 = time.perf_counter()
        try:
            out = self._check(
                self.process(request, response) if self.timeout is None else self._call(self.process, request, response)
            )
        except Exception as e:
            return response, self._failed(e, t0, response.text)
        finally:
            _notes.reset(token)
        return out, self._done_in(response, out, time.perf_counter() - t0, notes)

    async def arun(self, request: ChatRequest, response: ChatResponse) -> tuple[ChatResponse, StageTrace]:
        skipped = self._skipped(request)
        if skipped is not None:
            return response, skipped
        notes: list[str] = []
        token = _notes.set(notes)
        t0 = time.perf_counter()
        try:
            out = self._check(await self._acall(self.aprocess(request, response)))
        except Exception as e:
            return response, self._failed(e, t0, response.text)
        finally:
            _notes.reset(token)
        return out, self._done(response, out, t0, notes)

    def _check(self, out: Any) -> ChatResponse:
        if type(out) is ChatResponse:
            return out
        if isinstance(out, str):
            raise TypeError("process() returned str, expected ChatResponse (use response.model_copy(update={'text': ...}))")
        if not isinstance(out, ChatResponse):
            raise TypeError(f"process() returned {type(out).__name__}, expected ChatResponse")
        return out

    def _done(self, response: ChatResponse, out: ChatResponse, t0: float, notes: list[str]) -> StageTrace:
        return self._done_in(response, out, time.perf_counter() - t0, notes)

    def _done_in(self, response: ChatResponse, out: ChatResponse, latency_s: float, notes: list[str]) -> StageTrace:
        before, after = response.text, out.text
        verdict: Verdict = "modified" if after != before else "passed"
        reason = "; ".join(notes) if notes else None
        return StageTrace.of(self.name, self.kind, verdict, latency_s * 1000.0, before, after, reason)

    # -- batches ------------------------------------------------------------------------
    def process_batch(self, requests: list[ChatRequest], responses: list[ChatResponse]) -> list[ChatResponse]:
        """Optional: process many replies at once (one batched generation). Return one reply per input,
        in order; ``note()`` about reply ``i`` inside ``with batch_item(i):``. Stages that do not override
        it process a batch one reply at a time."""
        raise NotImplementedError

    def run_batch(
        self, requests: Sequence[ChatRequest], responses: Sequence[ChatResponse]
    ) -> list[tuple[ChatResponse, StageTrace]]:
        """``run`` for many replies: one ``process_batch`` call where the stage has one, else ``run`` each.

        With ``process_batch``, an error fails the whole batch: every reply passes through unchanged
        with a ``failed`` trace (or ``StageError`` is raised when ``on_error="raise"``). The stage's
        ``timeout`` applies to the one ``process_batch`` call.
        """
        if len(requests) != len(responses):
            raise ValueError(f"{len(requests)} requests but {len(responses)} responses")
        if len(requests) < 2 or type(self).process_batch is ResponseStage.process_batch:
            return [self.run(q, r) for q, r in zip(requests, responses)]
        return self._run_batch(
            requests,
            responses,
            lambda todo: self.process_batch([requests[i] for i in todo], [responses[i] for i in todo]),
            self._check,
            lambda r: r.text,
            lambda r, out, latency, notes: self._done_in(r, out, latency, notes),
        )

    def run_stream(self, request: ChatRequest, upstream: Iterator[str], traces: list[StageTrace]) -> Iterator[str]:
        """Apply ``process_stream`` with the failure policy; appends this stage's trace when done.

        On failure before anything was yielded, the whole original answer passes through; after a
        partial output, the part of the original answer the stage had not read yet follows it (what it
        had read but not answered for is gone: a stage that streams piece by piece should pass a
        failing piece through itself, as the chunked ``ResponseCorrector`` does). ``timeout`` counts the stage's own
        time over the whole stream, not the time it waits for upstream chunks. An error raised by the
        upstream itself (the LLM's stream broke) is not the stage's failure: it propagates.
        """
        skipped = self._skipped(request)
        if skipped is not None:
            traces.append(skipped)
            yield from upstream
            return
        feed = _Feed(upstream)
        out: list[str] = []
        notes: list[str] = []
        t0 = time.perf_counter()
        gen = self.process_stream(request, feed.pieces())

        def step() -> Any:
            token = _notes.set(notes)
            try:
                return next(gen, _END)
            finally:
                _notes.reset(token)

        try:
            while True:
                piece = step() if self.timeout is None else self._step_with_timeout(step, feed, t0)
                if piece is _END:
                    break
                out.append(piece)
                yield piece
        except Exception as e:
            if feed.error is not None:
                raise feed.error from None
            tail = self._stream_failed(e, t0, feed, feed.rest(), out, traces)
            if tail:
                yield tail
            return
        traces.append(self._stream_done(t0, feed, out, notes))

    def _step_with_timeout(self, step: Callable[[], Any], feed: "_Feed", t0: float) -> Any:
        """Run one ``step`` in a worker thread; raise ``TimeoutError`` once the stage's own time (the
        wall time less the time spent waiting for upstream chunks) passes ``timeout``."""
        assert self.timeout is not None
        fut = _executor().submit(contextvars.copy_context().run, step)
        while True:
            try:
                return fut.result(timeout=_POLL_S)
            except concurrent.futures.TimeoutError:
                if feed.own_time(t0) >= self.timeout:
                    raise TimeoutError from None

    async def arun_stream(
        self, request: ChatRequest, upstream: AsyncIterator[str], traces: list[StageTrace]
    ) -> AsyncIterator[str]:
        skipped = self._skipped(request)
        if skipped is not None:
            traces.append(skipped)
            async for c in upstream:
                yield c
            return
        feed = _AsyncFeed(upstream)
        out: list[str] = []
        notes: list[str] = []
        t0 = time.perf_counter()
        gen = self.aprocess_stream(request, feed.pieces())

        async def step() -> Any:
            token = _notes.set(notes)
            try:
                return await gen.__anext__()
            except StopAsyncIteration:
                return _END
            finally:
                _notes.reset(token)

        try:
            while True:
                piece = await (step() if self.timeout is None else self._astep_with_timeout(step, feed, t0))
                if piece is _END:
                    break
                out.append(piece)
                yield piece
        except Exception as e:
            if feed.error is not None:
                raise feed.error from None
            tail = self._stream_failed(e, t0, feed, await feed.rest(), out, traces)
            if tail:
                yield tail
            return
        traces.append(self._stream_done(t0, feed, out, notes))

    def _stream_failed(
        self, exc: Exception, t0: float, feed: "_FeedState", rest: list[str], out: list[str], traces: list[StageTrace]
    ) -> str:
        """Record the failure (``StageError`` when ``on_error="raise"``) and return what follows the
        stage's output: the whole original answer if it sent nothing, else the part it had not read."""
        traces.append(self._failed(exc, t0, "".join(feed.seen + rest)))
        return "".join(rest if out else feed.seen + rest)

    def _stream_done(self, t0: float, feed: "_FeedState", out: list[str], notes: list[str]) -> StageTrace:
        before, after = "".join(feed.seen), "".join(out)
        verdict, reason = _verdict(before != after, notes)
        return self._trace(verdict, time.perf_counter() - t0, before=before, after=after, reason=reason)

    async def _astep_with_timeout(self, step: Callable[[], Any], feed: "_AsyncFeed", t0: float) -> Any:
        """Async twin of :meth:`_step_with_timeout`: the step is cancelled when it times out, never
        while it waits for an upstream chunk (the upstream stays readable for the pass-through)."""
        assert self.timeout is not None
        task = asyncio.ensure_future(step())
        while True:
            done, _ = await asyncio.wait({task}, timeout=_POLL_S)
            if done:
                return task.result()
            if feed.pull_started is None and feed.own_time(t0) >= self.timeout:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise TimeoutError


_END = object()
_POLL_S = 0.05  # how often a streaming stage with a timeout is checked


class _StreamAbandoned(Exception):
    """Raised inside a streaming stage that timed out when it reads on: the rest went to the client."""


class _FeedState:
    """What a streaming stage has read of its upstream, and the clock of its own time."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.error: BaseException | None = None  # raised by the upstream itself
        self.waited = 0.0  # seconds spent waiting for upstream chunks
        self.pull_started: float | None = None  # set while waiting for one
        self.closed = False

    def _pull_started(self) -> float:
        if self.closed:
            raise _StreamAbandoned("the stage timed out; the rest of the answer passed through")
        self.pull_started = time.perf_counter()
        return self.pull_started

    def _pull_ended(self, started: float) -> None:
        self.waited += time.perf_counter() - started
        self.pull_started = None

    def own_time(self, t0: float) -> float:
        """Seconds since ``t0`` less those spent waiting for upstream chunks."""
        now = time.perf_counter()
        pulling = self.pull_started
        return now - t0 - self.waited - (now - pulling if pulling is not None else 0.0)


class _Feed(_FeedState):
    """The upstream chunks as a streaming stage reads them: what it has read, how long it waited for
    upstream, and the error the upstream raised, if any. ``rest()`` takes the remaining chunks (and
    stops a timed-out stage, still running in its worker thread, from reading any further)."""

    def __init__(self, upstream: Iterator[str]) -> None:
        super().__init__()
        self.upstream = iter(upstream)
        self.lock = threading.Lock()

    def pieces(self) -> Iterator[str]:
        while True:
            with self.lock:
                started = self._pull_started()
                try:
                    piece = next(self.upstream)
                except StopIteration:
                    return
                except Exception as e:
                    self.error = e
                    raise
                finally:
                    self._pull_ended(started)
                self.seen.append(piece)
            yield piece

    def rest(self) -> list[str]:
        with self.lock:
            self.closed = True
            return list(self.upstream)


class _AsyncFeed(_FeedState):
    """Async twin of :class:`_Feed` (one event loop: no lock needed)."""

    def __init__(self, upstream: AsyncIterator[str]) -> None:
        super().__init__()
        self.upstream = upstream

    async def pieces(self) -> AsyncIterator[str]:
        while True:
            started = self._pull_started()
            try:
                piece = await self.upstream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as e:
                self.error = e
                raise
            finally:
                self._pull_ended(started)
            self.seen.append(piece)
            yield piece

    async def rest(self) -> list[str]:
        self.closed = True
        return [c async for c in self.upstream]


class ModelStage(Stage):
    """Acts inside a local model while it generates. ``attach(model)`` returns a context manager
    that installs hooks on entry and removes them on exit (also when generation raises)."""

    kind = "model"

    def attach(self, model: Any) -> ContextManager[Any]:
        raise NotImplementedError


@contextlib.contextmanager
def attached(stages: Sequence[ModelStage], model: Any, request: ChatRequest, traces: list[StageTrace]) -> Iterator[None]:
    """Install every model stage on ``model`` for the duration of the block, with each stage's policy.

    A stage whose ``attach`` raises is left out (trace ``failed``) unless it is set to raise. All hooks
    are removed on exit, whatever happened inside.
    """
    with contextlib.ExitStack() as stack:
        for st in stages:
            skipped = st._skipped(request)
            if skipped is not None:
                traces.append(skipped)
                continue
            t0 = time.perf_counter()
            try:
                stack.enter_context(st.attach(model))
            except Exception as e:
                traces.append(st._failed(e, t0, None))
                continue
            traces.append(st._trace("modified", time.perf_counter() - t0, reason="attached"))
        yield


class IdentityPromptStage(PromptStage):
    """A prompt stage that returns the request unchanged (baselines, benchmarks, placeholders)."""

    def process(self, request: ChatRequest) -> ChatRequest:
        return request

    def deterministic(self) -> bool:
        return self.timeout is None


class IdentityResponseStage(ResponseStage):
    """A response stage that returns the reply unchanged."""

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        return response

    def deterministic(self) -> bool:
        return self.timeout is None
