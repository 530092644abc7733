"""The ``LLM`` protocol's defaults (``middleware.llm``)."""

from __future__ import annotations

import asyncio

import pytest

from middleware import LLM, ChatChunk, ChatRequest


def test_default_astream_takes_any_iterator_from_stream():
    """``stream`` may return a plain iterator (not a generator) or raise before yielding anything; the
    default ``astream`` hands over the chunks or the error and always ends."""

    class ListStream(LLM):
        def complete(self, request, *, model_stages=()):
            raise AssertionError("stream is overridden")

        def stream(self, request, *, model_stages=()):
            if request.last_user_message == "fail":
                raise ConnectionError("backend down")
            return iter([ChatChunk(delta="a"), ChatChunk(delta="b"), ChatChunk(finish_reason="stop")])

    async def collect(text):
        request = ChatRequest(messages=[{"role": "user", "content": text}])
        return [c async for c in ListStream().astream(request)]

    chunks = asyncio.run(asyncio.wait_for(collect("x"), timeout=10))
    assert [c.delta for c in chunks] == ["a", "b", ""] and chunks[-1].finish_reason == "stop"
    with pytest.raises(ConnectionError, match="backend down"):
        asyncio.run(asyncio.wait_for(collect("fail"), timeout=10))
