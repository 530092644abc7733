"""The streaming runner: a response stage's failure policy and timeout around ``process_stream``
(sync) and ``aprocess_stream`` (async), and the feeds that hand it the upstream chunks while keeping
count of what it read and how long it waited for them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator

from ..types import ChatRequest, StageTrace
from ..threads import submit
from .base import current_notes, verdict_of

if TYPE_CHECKING:  # pragma: no cover
    from .response import ResponseStage  # response.py imports this module

_END = object()
_POLL_S = 0.05  # how often a streaming stage with a timeout is checked


def run_stream(stage: "ResponseStage", request: ChatRequest, upstream: Iterator[str], traces: list[StageTrace]) -> Iterator[str]:
    """``ResponseStage.run_stream``: ``stage.process_stream`` over ``upstream`` with the stage's policy."""
    skipped = stage._skipped(request)
    if skipped is not None:
        traces.append(skipped)
        yield from upstream
        return
    feed = _Feed(upstream)
    out: list[str] = []
    notes: list[str] = []
    t0 = time.perf_counter()
    gen = stage.process_stream(request, feed.pieces())

    def step() -> Any:
        token = current_notes.set(notes)
        try:
            return next(gen, _END)
        finally:
            current_notes.reset(token)

    try:
        while True:
            piece = step() if stage.timeout is None else _step_with_timeout(stage, stage.timeout, step, feed, t0)
            if piece is _END:
                break
            out.append(piece)
            handed = time.perf_counter()
            yield piece
            feed.outside += time.perf_counter() - handed  # the consumer's time, not the stage's
    except Exception as e:
        if feed.error is not None:
            raise feed.error from None
        tail = _stream_failed(stage, e, t0, feed, feed.rest(), out, traces)
        if tail:
            yield tail
        return
    traces.append(_stream_done(stage, t0, feed, out, notes))


def _step_with_timeout(stage: Any, timeout: float, step: Callable[[], Any], feed: "_Feed", t0: float) -> Any:
    """Run one ``step`` in a worker thread; raise ``TimeoutError`` once the stage's own time (the
    wall time less the time spent waiting for upstream chunks) passes ``timeout``."""
    fut = submit(stage, step)
    while True:
        try:
            return fut.result(timeout=_POLL_S)
        except concurrent.futures.TimeoutError:
            if feed.own_time(t0) >= timeout:
                raise TimeoutError from None


async def arun_stream(
    stage: "ResponseStage", request: ChatRequest, upstream: AsyncIterator[str], traces: list[StageTrace]
) -> AsyncIterator[str]:
    """``ResponseStage.arun_stream``: async twin of :func:`run_stream` over ``stage.aprocess_stream``."""
    skipped = stage._skipped(request)
    if skipped is not None:
        traces.append(skipped)
        async for c in upstream:
            yield c
        return
    feed = _AsyncFeed(upstream)
    out: list[str] = []
    notes: list[str] = []
    t0 = time.perf_counter()
    gen = stage.aprocess_stream(request, feed.pieces())

    async def step() -> Any:
        token = current_notes.set(notes)
        try:
            return await gen.__anext__()
        except StopAsyncIteration:
            return _END
        finally:
            current_notes.reset(token)

    try:
        while True:
            piece = await (step() if stage.timeout is None else _astep_with_timeout(stage.timeout, step, feed, t0))
            if piece is _END:
                break
            out.append(piece)
            handed = time.perf_counter()
            yield piece
            feed.outside += time.perf_counter() - handed
    except Exception as e:
        if feed.error is not None:
            raise feed.error from None
        tail = _stream_failed(stage, e, t0, feed, await feed.rest(), out, traces)
        if tail:
            yield tail
        return
    traces.append(_stream_done(stage, t0, feed, out, notes))


async def _astep_with_timeout(timeout: float, step: Callable[[], Any], feed: "_AsyncFeed", t0: float) -> Any:
    """Async twin of :func:`_step_with_timeout`: the step is cancelled when it times out, never
    while it waits for an upstream chunk (the upstream stays readable for the pass-through)."""
    task = asyncio.ensure_future(step())
    while True:
        done, _ = await asyncio.wait({task}, timeout=_POLL_S)
        if done:
            return task.result()
        if feed.pull_started is None and feed.own_time(t0) >= timeout:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise TimeoutError


def _stream_failed(
    stage: "ResponseStage", exc: Exception, t0: float, feed: "_FeedState", rest: list[str], out: list[str], traces: list[StageTrace]
) -> str:
    """Record the failure (``StageError`` when ``on_error="raise"``) and return what follows the
    stage's output: the whole original answer if it sent nothing, else the part it had not read."""
    own = feed.own_time(t0)  # before reading the rest: that wait is the upstream's
    traces.append(stage._failed(exc, time.perf_counter() - own, "".join(feed.seen + rest)))
    return "".join(rest if out else feed.seen + rest)


def _stream_done(stage: "ResponseStage", t0: float, feed: "_FeedState", out: list[str], notes: list[str]) -> StageTrace:
    before, after = "".join(feed.seen), "".join(out)
    verdict, reason = verdict_of(before != after, notes)
    return stage._trace(verdict, feed.own_time(t0), before=before, after=after, reason=reason)


class _StreamAbandoned(Exception):
    """Raised inside a streaming stage that timed out when it reads on: the rest went to the client."""


class _FeedState:
    """What a streaming stage has read of its upstream, and the clock of its own time: the trace's
    ``latency_ms`` and the ``timeout`` count neither the waits for upstream chunks nor the time the
    consumer holds a piece the stage handed on."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.error: BaseException | None = None  # raised by the upstream itself
        self.waited = 0.0  # seconds spent waiting for upstream chunks
        self.outside = 0.0  # seconds the consumer held a piece before asking for the next
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
        """Seconds since ``t0`` less those spent waiting for upstream chunks or on the consumer."""
        now = time.perf_counter()
        pulling = self.pull_started
        return now - t0 - self.waited - self.outside - (now - pulling if pulling is not None else 0.0)


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
