"""Bounded concurrency for many requests to a served model: at most N in flight, results in order.

``alignware eval``, ``select_by_reward`` and the teacher step of ``build_rewriter_data`` send their
requests through :func:`run_bounded` when they talk to a remote LLM: the requests go out as coroutines on
one event loop, at most ``limit`` awaiting at once, and each job's result (or the exception it raised) comes
back at its own position. A local model batches instead, so callers ask :func:`concurrency_for` first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
from typing import Any, Awaitable, Callable, Sequence, TypeVar, Union

from .errors import InputError

__all__ = ["bounded_gather", "run_bounded", "concurrency_for", "is_local"]

T = TypeVar("T")
Job = Callable[[], Awaitable[T]]
log = logging.getLogger("alignware")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()
_said: set[str] = set()


async def bounded_gather(
    jobs: Sequence[Job[T]], limit: int, *, on_done: Callable[[int], None] | None = None
) -> list[Union[T, Exception]]:
    """Await every job, at most ``limit`` at once; job ``i``'s result, or the ``Exception`` it raised, at
    position ``i``. ``on_done(i)`` is called as each job ends (a progress bar's update)."""
    if limit < 1:
        raise InputError(f"concurrency must be at least 1, got {limit!r}")
    gate = asyncio.Semaphore(limit)

    async def one(i: int, job: Job[T]) -> Union[T, Exception]:
        async with gate:
            try:
                out: Union[T, Exception] = await job()
            except Exception as e:  # reported at its position; the other jobs go on
                out = e
        if on_done is not None:
            on_done(i)
        return out

    return list(await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs))))


def _background_loop() -> asyncio.AbstractEventLoop:
    """One event loop for the process, running in a daemon thread: clients that keep connections (litellm's
    async HTTP clients) stay bound to a loop that lives as long as they do."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="alignware-concurrency").start()
            atexit.register(_shut_down, loop)
            _loop = loop
        return _loop


def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    """At exit: let the background loop close what lives on it (async generators, and through them the
    backends' HTTP clients, ``openai_backend.close_with_loop``), then stop it."""
    if loop.is_running():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


def run_bounded(
    jobs: Sequence[Job[T]], limit: int, *, on_done: Callable[[int], None] | None = None
) -> list[Union[T, Exception]]:
    """:func:`bounded_gather` from synchronous code (also from inside a running event loop, which it
    blocks like any synchronous call): the jobs run on the process's background loop."""
    if not jobs:
        return []
    future = asyncio.run_coroutine_threadsafe(bounded_gather(jobs, limit, on_done=on_done), _background_loop())
    return future.result()


def is_local(llm: Any) -> bool:
    """Whether ``llm`` runs a model in this process (it batches rather than sending requests)."""
    return bool(getattr(llm, "supports_model_stages", False))


def concurrency_for(llm: Any, concurrency: int | None, who: str) -> int | None:
    """The concurrency to use with ``llm``: ``concurrency`` for a remote LLM; ``None`` (batch as before) when
    none is given or ``llm`` is a local model, which batches instead (said once per ``who``)."""
    if concurrency is None:
        return None
    if concurrency < 1:
        raise InputError(f"{who}: concurrency must be at least 1, got {concurrency!r}")
    if is_local(llm):
        if concurrency > 1 and who not in _said:
            _said.add(who)
            log.warning("%s: concurrency=%d ignored: %s is a local model, which batches its prompts instead",
                        who, concurrency, getattr(llm, "name", type(llm).__name__))
        return None
    return concurrency
