"""The ``LLM`` protocol's defaults (``middleware.llm``)."""

from __future__ import annotations

import asyncio

import pytest

from middleware import LLM, ChatChunk, ChatRequest, ChatResponse, FunctionLLM, InputError


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


def test_function_llm_passes_the_parameters_its_function_takes():
    """By signature: named parameters get what the request sets; ``**kwargs`` gets every parameter."""
    seen: dict[str, object] = {}

    def named(messages, max_tokens=None, stop=None, temperature=None):
        seen.update(max_tokens=max_tokens, stop=stop, temperature=temperature)
        return messages[-1]["content"]

    llm = FunctionLLM(named)
    request = ChatRequest.build("hi", max_tokens=7, stop="END", temperature=0.3, seed=5)
    assert llm.complete(request).text == "hi"
    assert seen == {"max_tokens": 7, "stop": ["END"], "temperature": 0.3}  # no seed: it does not take one

    got: dict[str, object] = {}

    def anything(messages, **params):
        got.update(params)
        return ChatResponse(text="", tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}])

    tools = [{"type": "function", "function": {"name": "f"}}]
    reply = FunctionLLM(anything, name="kw").complete(
        ChatRequest.build("hi", top_p=0.9, seed=1, openai_fields={"tools": tools, "n": 1})
    )
    assert got == {"top_p": 0.9, "seed": 1, "tools": tools, "n": 1}
    assert reply.tool_calls and reply.model == "kw"

    plain = FunctionLLM(lambda messages: "ok")  # sampling parameters are the function's own business
    assert plain.complete(ChatRequest.build("hi", temperature=1.5, max_tokens=3)).text == "ok"
    with pytest.raises(InputError, match="tools") as e:
        plain.complete(ChatRequest.build("hi", openai_fields={"tools": tools}))
    assert e.value.field == "tools"
    assert plain.complete(ChatRequest.build("hi", openai_fields={"n": 1, "user": "u"})).text == "ok"  # neutral values


def test_default_stream_carries_a_replys_tool_calls_as_deltas():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    llm = FunctionLLM(lambda messages, tools=None: ChatResponse(text="", tool_calls=[call], finish_reason="tool_calls"))
    chunks = list(llm.stream(ChatRequest.build("hi", openai_fields={"tools": [{"type": "function", "function": {"name": "f"}}]})))
    assert chunks[0].tool_calls == [{"index": 0, **call}]
    assert chunks[-1].finish_reason == "tool_calls"
