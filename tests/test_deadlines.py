"""``middleware/deadlines.py``: the bounds on a remote backend's async waits."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from middleware.deadlines import AttemptTimeout, ChunkWatch, within


async def _chunks(gaps: list[float]) -> AsyncIterator[int]:
    for i, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield i


async def _read(watch: ChunkWatch, chunks: AsyncIterator[int], pause: float = 0.0) -> list[int]:
    got = []
    try:
        while True:
            got.append(await watch.next(chunks))
            await asyncio.sleep(pause)  # the consumer's own time between chunks
    except StopAsyncIteration:
        return got
    finally:
        watch.close()


async def test_each_wait_is_bounded_not_the_whole_stream() -> None:
    """Ten chunks 50 ms apart under a 200 ms bound: 0.5 s in all, none cut."""
    assert await _read(ChunkWatch(0.2), _chunks([0.05] * 10)) == list(range(10))


async def test_a_wait_past_the_bound_is_an_attempt_timeout() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(AttemptTimeout, match="no next chunk within the timeout of 0.2s"):
        await _read(ChunkWatch(0.2), _chunks([0.01, 0.01, 5.0]))
    assert loop.time() - t0 < 1.0  # at most about two bounds (the timer is set back once)


async def test_the_consumers_time_between_chunks_is_not_counted() -> None:
    """The stream's consumer holds each chunk 300 ms (a slow client) under a 200 ms bound on the waits."""
    assert await _read(ChunkWatch(0.2), _chunks([0.01] * 4), pause=0.3) == [0, 1, 2, 3]


async def test_the_task_being_cancelled_is_not_a_timeout() -> None:
    watch = ChunkWatch(5.0)
    task = asyncio.ensure_future(_read(watch, _chunks([0.01, 10.0])))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_closed_watch_cancels_nothing_later() -> None:
    """Once the stream is done the timer is gone: the task goes on past the bound unharmed."""
    watch = ChunkWatch(0.1)
    assert await _read(watch, _chunks([0.01])) == [0]
    await asyncio.sleep(0.3)  # would be cancelled here if the timer were still set


async def test_within_bounds_one_wait() -> None:
    assert await within(asyncio.sleep(0.01, result="x"), 1.0, "no answer") == "x"
    with pytest.raises(AttemptTimeout, match="no answer within the timeout of 0.05s"):
        await within(asyncio.sleep(5), 0.05, "no answer")
