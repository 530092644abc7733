"""Response stages over a stream: pass-through on failure, upstream errors, timeouts (``middleware.stages.streaming``)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from middleware import LLM, ChatChunk, Pipeline, ResponseStage
from middleware.stages import IdentityResponseStage
from core_stages import BoomResponse, Exclaim, Upper, echo_llm


def test_stream_matches_chat_and_failed_stream_stage_passes_through():
    pipe = Pipeline(echo_llm(), [Upper(), BoomResponse(), Exclaim()])
    chunks = list(pipe.stream("hey"))
    assert "".join(c.delta for c in chunks) == pipe.chat("hey").text == "echo: HEY!"
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert [t.verdict for t in final.trace] == ["modified", "failed", "modified"]


class BrokenStream(LLM):
    """Streams half an answer, then the connection breaks."""

    name = "broken"

    def complete(self, request, *, model_stages=()):
        raise AssertionError("only streamed")

    def stream(self, request, *, model_stages=()):
        yield ChatChunk(delta="The first half, ")
        raise ConnectionError("the stream broke")


def test_an_upstream_stream_error_is_not_a_stage_failure():
    """The LLM's broken stream reaches the caller even with response stages in between; it is not
    recorded as a stage that failed and passed a truncated answer through as if complete."""
    pipe = Pipeline(BrokenStream(), [Exclaim(), IdentityResponseStage()])
    got = []
    with pytest.raises(ConnectionError, match="the stream broke"):
        for c in pipe.stream("x"):
            got.append(c)
    assert all(c.finish_reason is None for c in got)

    async def run():
        return [c async for c in pipe.astream("x")]

    with pytest.raises(ConnectionError, match="the stream broke"):
        asyncio.run(run())


class Hangs(ResponseStage):
    """Blocks in ``process`` until released (a hung corrector model)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.release = threading.Event()

    def process(self, request, response):
        self.release.wait(30)
        return response.model_copy(update={"text": "too late"})


def test_stream_timeout_passes_the_answer_through():
    stage = Hangs(timeout=0.1)
    try:
        chunks = list(Pipeline(echo_llm(), [stage]).stream("original"))
    finally:
        stage.release.set()
    astage = Hangs(timeout=0.1)

    async def run():
        try:
            return [c async for c in Pipeline(echo_llm(), [astage]).astream("original")]
        finally:
            astage.release.set()  # lets asyncio.run's executor shut down

    achunks = asyncio.run(run())
    for got in (chunks, achunks):
        assert "".join(c.delta for c in got) == "echo: original"
        trace = got[-1].trace[0]
        assert trace.verdict == "failed" and trace.reason == "timed out after 0.1s"


class SlowStream(LLM):
    """A slow upstream: each chunk takes a while to arrive."""

    name = "slow"

    def complete(self, request, *, model_stages=()):
        raise AssertionError("only streamed")

    def stream(self, request, *, model_stages=()):
        for word in ("one ", "two ", "three"):
            time.sleep(0.3)
            yield ChatChunk(delta=word)
        yield ChatChunk(finish_reason="stop")


class UpperStream(ResponseStage):
    def process_stream(self, request, chunks):
        for c in chunks:
            yield c.upper()


def test_stream_timeout_does_not_count_the_upstream_wait():
    """0.9 s of upstream chunks through a stage with a 0.25 s timeout: the stage's own time is tiny."""
    pipe = Pipeline(SlowStream(), [UpperStream(timeout=0.25)])
    chunks = list(pipe.stream("x"))
    assert "".join(c.delta for c in chunks) == "ONE TWO THREE"
    assert chunks[-1].trace[0].verdict == "modified"


def _timed(chunks):
    """(seconds since the start at which each non-empty piece arrived, the chunks)."""
    t0, times, got = time.perf_counter(), [], []
    for c in chunks:
        got.append(c)
        if c.delta:
            times.append(time.perf_counter() - t0)
    return times, got


def test_identity_response_stage_streams_piece_by_piece():
    """The README's example pipeline (identity prompt and response stages): the first piece arrives
    with the upstream's first chunk, not after the whole answer."""
    from middleware.stages import IdentityPromptStage

    times, got = _timed(Pipeline(SlowStream(), [IdentityPromptStage(), IdentityResponseStage()]).stream("x"))
    assert [c.delta for c in got if c.delta] == ["one ", "two ", "three"]
    assert times[0] < 0.55 < times[-1]  # the first word after ~0.3 s, the last after ~0.9 s
    assert got[-1].trace[1].verdict == "passed"

    async def arun():
        t0, first = time.perf_counter(), None
        pieces = []
        async for c in Pipeline(SlowStream(), [IdentityResponseStage()]).astream("x"):
            if c.delta:
                first = first if first is not None else time.perf_counter() - t0
                pieces.append(c.delta)
        return first, pieces

    first, pieces = asyncio.run(arun())
    assert pieces == ["one ", "two ", "three"] and first < 0.55


def test_whole_answer_stage_buffers_when_streamed():
    """A stage with only ``process`` sees the whole answer first: one piece, the corrected text."""
    times, got = _timed(Pipeline(SlowStream(), [Exclaim()]).stream("x"))
    assert [c.delta for c in got if c.delta] == ["one two three!"]
    assert times[0] > 0.85


def test_streamed_latency_counts_only_the_stage_own_time():
    """0.9 s of upstream waits and 0.3 s of a slow consumer: the stage's latency_ms is its own time."""
    for stage in (UpperStream(), UpperStream(timeout=5), IdentityResponseStage()):
        chunks = []
        for c in Pipeline(SlowStream(), [stage]).stream("x"):
            chunks.append(c)
            time.sleep(0.1)  # the consumer (a client on a slow link) holds each piece
        trace = chunks[-1].trace[0]
        assert trace.latency_ms < 150, (stage, trace.latency_ms)

    async def arun():
        chunks = []
        async for c in Pipeline(SlowStream(), [UpperStream()]).astream("x"):
            chunks.append(c)
            await asyncio.sleep(0.1)
        return chunks

    assert asyncio.run(arun())[-1].trace[0].latency_ms < 150
