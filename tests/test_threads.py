"""Worker pools per owner (``middleware.threads``): a stage or a blocking LLM that hangs holds its own
threads only, so other stages, LLMs and requests go on."""

from __future__ import annotations

import asyncio
import threading

from middleware import FunctionLLM, Pipeline, ResponseStage
from middleware.stages import IdentityPromptStage, note
from middleware.stages.base import current_notes
from middleware.threads import in_thread, pool_of


class Hangs(ResponseStage):
    """Blocks until released (a stuck model call, a dead socket)."""

    def __init__(self, release: threading.Event, **kw) -> None:
        super().__init__(**kw)
        self.release = release

    def process(self, request, response):
        self.release.wait(10)
        return response


async def test_hung_stage_calls_do_not_hold_up_other_requests() -> None:
    release = threading.Event()
    stuck = Pipeline(FunctionLLM(lambda m: "stuck", name="a"), [Hangs(release, timeout=3.0)])
    healthy = Pipeline(FunctionLLM(lambda m: "fine", name="b"), [IdentityPromptStage()])
    try:
        hung = [asyncio.ensure_future(stuck.achat("hi")) for _ in range(12)]  # more than the stage's 8 threads
        await asyncio.sleep(0.05)
        ok = await healthy.achat("hi")
        # answered while every stuck call still holds its thread or waits for one: nothing shared was blocked
        assert ok.text == "fine" and not any(h.done() for h in hung)
        # never released: each ends at its timeout, running or queued, with its input passed through
        replies = await asyncio.wait_for(asyncio.gather(*hung), 30)
        assert not release.is_set()
        assert all(r.text == "stuck" and r.trace[-1].verdict == "failed" for r in replies)
    finally:
        release.set()


async def test_a_blocking_llm_has_its_own_threads() -> None:
    release = threading.Event()
    slow = FunctionLLM(lambda m: release.wait(10) and "late", name="slow")
    quick = Pipeline(FunctionLLM(lambda m: "quick", name="quick"))
    try:
        stuck = [asyncio.ensure_future(Pipeline(slow).achat("hi")) for _ in range(10)]
        await asyncio.sleep(0.05)
        # answered while the ten blocked calls still hold the slow LLM's threads
        assert (await quick.achat("hi")).text == "quick" and not any(s.done() for s in stuck)
        assert pool_of(slow) is not pool_of(quick.llm) and pool_of(slow)._max_workers == 8
    finally:
        release.set()
    assert [r.text for r in await asyncio.gather(*stuck)] == ["late"] * 10


async def test_in_thread_keeps_the_callers_context() -> None:
    class Owner:
        threads = 2

    notes: list[str] = []
    token = current_notes.set(notes)
    try:
        await in_thread(Owner(), note, "seen in the worker")
    finally:
        current_notes.reset(token)
    assert notes == ["seen in the worker"]
