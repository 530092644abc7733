"""Worker threads for blocking work: each owner (a stage, a blocking LLM) has a bounded pool of its own.

A stage's ``process`` run from async code, a stage with a ``timeout``, a ``FunctionLLM`` or a local model
called from the server: each runs in a thread of its owner's pool, never in asyncio's shared default pool.
A call that hangs holds one thread of its owner only: the owner's further calls wait for a free thread
(within their stage's ``timeout``, after which the input passes through), and every other stage, LLM and
request goes on. A pool has ``owner.threads`` threads (default ``DEFAULT_THREADS``), started on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from typing import Any, Callable, TypeVar

__all__ = ["DEFAULT_THREADS", "in_thread", "pool_of", "submit"]

T = TypeVar("T")
DEFAULT_THREADS = 8
_ATTR = "_alignware_pool"
_lock = threading.Lock()


def pool_of(owner: Any) -> concurrent.futures.ThreadPoolExecutor:
    """``owner``'s pool of worker threads, made on first use with ``owner.threads`` workers."""
    pool = owner.__dict__.get(_ATTR)
    if pool is None:
        with _lock:
            pool = owner.__dict__.get(_ATTR)
            if pool is None:
                size = getattr(owner, "threads", None) or DEFAULT_THREADS
                name = str(getattr(owner, "name", None) or type(owner).__name__)
                pool = concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"alignware-{name}")
                owner.__dict__[_ATTR] = pool
    return pool


def submit(owner: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
    """Run ``fn`` in ``owner``'s pool with the caller's context (``note()`` and the like keep working)."""
    return pool_of(owner).submit(contextvars.copy_context().run, functools.partial(fn, *args, **kwargs))


async def in_thread(owner: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` on ``owner``'s pool instead of the loop's shared default pool."""
    return await asyncio.wrap_future(submit(owner, fn, *args, **kwargs))
