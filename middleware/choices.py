"""Response stages over replies that are more than one text: several choices (``n > 1``), tool calls.

Stages see and may rewrite only text. Each choice of a reply goes through the response stages on its
own (its traces carry ``choice``); a choice with no text (tool calls only) passes them untouched, with a
``skipped`` trace that says why. A streamed reply whose first piece is a tool call passes them the same
way; tool-call deltas and logprobs of a streamed reply with text go to the client after its text, since
the stages may rewrite that text.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Sequence

from .stages import ResponseStage
from .types import ChatChunk, ChatRequest, ChatResponse, StageTrace

NO_TEXT = "no text to act on: the reply is tool calls only"


def tool_calls_only(response: ChatResponse) -> bool:
    """Whether ``response`` has tool calls and no text."""
    return not response.text and bool(response.tool_calls)


def skipped(stages: Sequence[ResponseStage], choice: int | None = None) -> list[StageTrace]:
    """The ``skipped`` traces of ``stages`` for a choice with no text."""
    return [StageTrace(stage=rs.name, kind="response", verdict="skipped", reason=NO_TEXT, choice=choice) for rs in stages]


def _split(response: ChatResponse) -> list[ChatResponse]:
    first = response.model_copy(update={"more_choices": None})
    return [first, *(response.more_choices or ())]


def _join(choices: list[ChatResponse]) -> ChatResponse:
    return choices[0] if len(choices) == 1 else choices[0].model_copy(update={"more_choices": choices[1:]})


def _label(trace: StageTrace, choice: int) -> StageTrace:
    return trace.model_copy(update={"choice": choice})


def needs_choices(response: ChatResponse) -> bool:
    """Whether the plain one-text path does not fit ``response``."""
    return response.more_choices is not None or tool_calls_only(response)


def run_response_stages(
    stages: Sequence[ResponseStage], request: ChatRequest, response: ChatResponse, traces: list[StageTrace]
) -> ChatResponse:
    """Every response stage over every choice of ``response``; the traces are appended to ``traces``."""
    if not needs_choices(response):
        for rs in stages:
            response, t = rs.run(request, response)
            traces.append(t)
        return response
    many = response.more_choices is not None
    out = []
    for i, choice in enumerate(_split(response)):
        label = i if many else None
        if tool_calls_only(choice):
            traces.extend(skipped(stages, label))
        else:
            for rs in stages:
                choice, t = rs.run(request, choice)
                traces.append(_label(t, i) if many else t)
        out.append(choice)
    return _join(out)


async def arun_response_stages(
    stages: Sequence[ResponseStage], request: ChatRequest, response: ChatResponse, traces: list[StageTrace]
) -> ChatResponse:
    """Async twin of ``run_response_stages``."""
    if not needs_choices(response):
        for rs in stages:
            response, t = await rs.arun(request, response)
            traces.append(t)
        return response
    many = response.more_choices is not None
    out = []
    for i, choice in enumerate(_split(response)):
        label = i if many else None
        if tool_calls_only(choice):
            traces.extend(skipped(stages, label))
        else:
            for rs in stages:
                choice, t = await rs.arun(request, choice)
                traces.append(_label(t, i) if many else t)
        out.append(choice)
    return _join(out)


def _extras(chunk: ChatChunk) -> bool:
    return chunk.tool_calls is not None or chunk.logprobs is not None


def after_text(held: list[ChatChunk], model: Any) -> Iterator[ChatChunk]:
    """The tool-call deltas and logprobs held back while the stages rewrote the text, in order."""
    for ch in held:
        yield ChatChunk(model=model, tool_calls=ch.tool_calls, logprobs=ch.logprobs)


def passthrough(chunk: ChatChunk) -> ChatChunk | None:
    """What of a backend's chunk goes to the client when no stage acts on the stream (``None``: nothing)."""
    if chunk.delta or _extras(chunk):
        return ChatChunk(delta=chunk.delta, model=chunk.model, tool_calls=chunk.tool_calls, logprobs=chunk.logprobs)
    return None


def peek(chunks: Iterator[ChatChunk]) -> tuple[list[ChatChunk], bool]:
    """Read ``chunks`` up to the first with text or tool calls (or the end); return what was read and
    whether the reply starts with tool calls (then the stages are skipped for it)."""
    seen = []
    for ch in chunks:
        seen.append(ch)
        if ch.delta:
            return seen, False
        if ch.tool_calls:
            return seen, True
    return seen, False


async def apeek(chunks: AsyncIterator[ChatChunk]) -> tuple[list[ChatChunk], bool]:
    """Async twin of ``peek``."""
    seen = []
    async for ch in chunks:
        seen.append(ch)
        if ch.delta:
            return seen, False
        if ch.tool_calls:
            return seen, True
    return seen, False
