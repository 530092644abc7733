"""Time bounds on a remote backend's async waits: ``within`` for one wait, ``ChunkWatch`` for each wait of a
stream for its next chunk. Either ends in ``AttemptTimeout``, so an upstream that drips a byte or an SSE
comment at a time cannot hold a request open."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

__all__ = ["AttemptTimeout", "ChunkWatch", "within"]


class AttemptTimeout(TimeoutError):
    """An async attempt that had no answer (or, streamed, no next chunk) within the backend's ``timeout``:
    the bound is on the whole wait, so an upstream that drips a byte or an SSE comment at a time cannot
    hold a request open. Retryable; answered 504 by the server (``status_code`` 408, as litellm's timeouts)."""

    status_code = 408


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+: a deadline on the running task, no task of its own


async def within(awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
    """``await awaitable``, or ``AttemptTimeout`` naming ``what`` once ``seconds`` have passed. On Python 3.11+
    the wait runs in the calling task (``asyncio.timeout``) instead of a task made for it (``wait_for``)."""
    try:
        if _timeout is not None:
            async with _timeout(seconds):
                return await awaitable
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise AttemptTimeout(f"{what} within the timeout of {seconds:g}s") from None


class ChunkWatch:
    """Bounds each wait of a stream for its next chunk by ``seconds``, with one timer for the whole stream.

    ``asyncio.timeout`` around every wait makes and cancels a timer per chunk; this keeps one, set back only
    when it fires: a wait that has lasted ``seconds`` by then cancels the task, which ``next`` turns into
    ``AttemptTimeout``; otherwise the timer is set for the end of the current wait (or ``seconds`` from now
    when there is none: the stream's consumer holds it between chunks, and that time is not bounded here).
    ``close()`` stops the timer."""

    def __init__(self, seconds: float, what: str = "no next chunk") -> None:
        self.seconds = seconds
        self.what = what
        self._since: float | None = None  # when the current wait began; None between waits
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelling: Callable[[], int] | None = None

    async def next(self, chunks: AsyncIterator[Any]) -> Any:
        """The next item of ``chunks`` (``StopAsyncIteration`` at its end), or ``AttemptTimeout``."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._cancelling = getattr(self._task, "cancelling", None)  # Python 3.11+
            self._handle = loop.call_at(loop.time() + self.seconds, self._check)
        task = self._task
        base = self._cancelling() if self._cancelling is not None else 0
        self._since = loop.time()
        try:
            return await chunks.__anext__()
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                uncancel = getattr(task, "uncancel", None)
                if uncancel is None or uncancel() <= base:  # ours, not also the server's own cancellation
                    raise AttemptTimeout(f"{self.what} within the timeout of {self.seconds:g}s") from None
            raise
        finally:
            self._since = None

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        since = self._since
        if since is not None and now - since >= self.seconds and self._task is not None:
            self._fired = True
            self._handle = None
            self._task.cancel()
            return
        self._handle = loop.call_at((since if since is not None else now) + self.seconds, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
