"""The pipeline: async twins, batches, stage checks (``middleware.pipeline``)."""

from __future__ import annotations

import asyncio

import pytest

from middleware import InputError, Pipeline
from core_stages import Boom, Exclaim, Upper, echo_llm


def test_async_twins_match_sync():
    pipe = Pipeline(echo_llm(), [Upper(), Boom(), Exclaim()])

    async def run():
        r = await pipe.achat("abc")
        pieces = [c async for c in pipe.astream("abc")]
        return r, pieces

    r, pieces = asyncio.run(run())
    assert r.text == "echo: ABC!" == "".join(c.delta for c in pieces)
    assert [t.verdict for t in r.trace] == [t.verdict for t in pieces[-1].trace]


def test_batch_keeps_order_and_traces():
    pipe = Pipeline(echo_llm(), [Upper(), Exclaim()])
    out = pipe.batch(["a", "b", "c"])
    assert [r.text for r in out] == ["echo: A!", "echo: B!", "echo: C!"]
    assert all(len(r.trace) == 2 for r in out)


def test_pipeline_rejects_non_stage():
    with pytest.raises(InputError, match=r"stages\[0\] is a str"):
        Pipeline(echo_llm(), ["not a stage"])


def test_the_callers_request_and_the_llms_reply_stay_as_they_were():
    from middleware import ChatRequest, ChatResponse, FunctionLLM
    from middleware.llm import LLM

    request = ChatRequest.build("hello", metadata={"k": "v"})
    r = Pipeline(echo_llm(), [Upper(), Exclaim()]).chat(request)
    assert r.text == "echo: HELLO!" and request.last_user_message == "hello" and request.metadata == {"k": "v"}

    fixed = ChatResponse(text="fixed")

    class Fixed(LLM):
        def complete(self, request, *, model_stages=()):
            return fixed

    out = Pipeline(Fixed(), [Exclaim()]).chat("x")
    assert out.text == "fixed!" and [t.verdict for t in out.trace] == ["modified"]
    assert fixed.text == "fixed" and fixed.trace == []
    assert isinstance(FunctionLLM(lambda m: "y").complete(request), ChatResponse)
