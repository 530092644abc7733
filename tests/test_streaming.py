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
