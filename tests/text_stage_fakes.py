"""Stand-ins and fixtures shared by the tests of the prompt rewriter, the response corrector and their
training data: recording generators, fixed LLMs, a judge, and the texts the tests use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from middleware.llm import LLM, FunctionLLM
from middleware.pipeline import Pipeline
from middleware.types import ChatChunk, ChatRequest, ChatResponse, PreferencePair
from rewriters.templates import get_template

# -- the rewriter's texts ---------------------------------------------------------------------------
BPO_PUBLISHED = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{} [/INST]"
)
PROMPT = "how does photosynthesis work in plants?"
TEACHER_OK = (
    "Detailed Comparison Result: The good response explains the mechanism; the bad one is vague.\n"
    "Optimized Instruction: Explain in detail how vaccines train the immune system, with one example. [END]"
)
OPTIMIZED = "Explain in detail how vaccines train the immune system, with one example."

# -- the corrector's texts --------------------------------------------------------------------------
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower and its museums! Anything else?"
ALIGNER_V1 = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    "harmless: {} | {} ASSISTANT:"
)
LONG_ANSWER = (
    "Water them when the top of the soil feels dry. Most houseplants like bright, indirect light! "
    "Use a pot with drainage holes, e.g. a terracotta one, because standing water rots the roots.\n\n"
    "1. Feed them monthly in spring.\n2. Wipe dust off the leaves. Is that all? Mostly, yes... Good luck"
)


# -- models -------------------------------------------------------------------------------------------
@dataclass
class Gen:
    text: str
    finish_reason: str = "stop"
    n_tokens: int = 0


class RecordingGenerator:
    """Stands in for ``TextGenerator``: records the exact texts it is asked to continue (and the decoding
    arguments). Its template is the corrector's ``aligner-v1.0`` unless given."""

    default_template = "aligner-v1.0"

    def __init__(self, outputs: list[str], template: str | None = None, finish_reason: str = "stop") -> None:
        self.template = get_template(template or self.default_template)
        self.outputs = list(outputs)
        self.finish_reason = finish_reason
        self.seen: list[str] = []
        self.kwargs: list[dict[str, Any]] = []

    def generate_ex(self, texts: list[str], **kw: Any) -> list[Gen]:
        self.seen.extend(texts)
        self.kwargs.append(kw)
        return [Gen(self.outputs.pop(0) if self.outputs else "", self.finish_reason) for _ in texts]


class BPORecordingGenerator(RecordingGenerator):
    """A :class:`RecordingGenerator` with the rewriter's ``bpo`` template unless given."""

    default_template = "bpo"


class FixedLLM(LLM):
    """Returns one text with a chosen finish reason (FunctionLLM always says ``stop``), streamed in small
    pieces: the chat model, or a rewriter or corrector backend. Records its requests."""

    def __init__(self, text: str, finish_reason: str = "stop", piece: int = 3) -> None:
        self.text, self.finish_reason, self.piece = text, finish_reason, piece
        self.requests: list[ChatRequest] = []

    def complete(self, request: ChatRequest, *, model_stages: Any = ()) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text=self.text, finish_reason=self.finish_reason)

    def stream(self, request: ChatRequest, *, model_stages: Any = ()) -> Iterator[ChatChunk]:
        for i in range(0, len(self.text), self.piece):
            yield ChatChunk(delta=self.text[i : i + self.piece])
        yield ChatChunk(finish_reason="stop")


def echo_llm() -> FunctionLLM:
    """The chat model: answers with the conversation it received, as JSON, so tests see what reached it."""
    return FunctionLLM(lambda msgs: json.dumps(msgs), name="echo")


def received(resp: ChatResponse) -> list[dict[str, str]]:
    return json.loads(resp.text)


def streamed(pipe: Pipeline, messages: Any) -> tuple[str, list[str], Any]:
    pieces, trace = [], None
    for ch in pipe.stream(messages):
        if ch.delta:
            pieces.append(ch.delta)
        if ch.trace is not None:
            trace = ch.trace
    return "".join(pieces), pieces, trace


# -- reward selection -----------------------------------------------------------------------------------
class WordJudge:
    """A judge that prefers longer answers, and records what it was asked to score."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, str]] = []

    def score_batch(self, items: list[tuple[Any, str]]) -> list[float]:
        self.items.extend(items)
        return [float(len(answer.split())) for _, answer in items]


def detail_app(calls: list[list[dict[str, str]]]) -> FunctionLLM:
    """A chat app that answers at length only when asked for detail."""

    def fn(msgs: list[dict[str, str]]) -> str:
        calls.append(msgs)
        last = msgs[-1]["content"]
        return "step one, then step two, then step three." if "detail" in last else "It depends."

    return FunctionLLM(fn, name="detail-app")


def selection_pairs() -> list[PreferencePair]:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    return [
        PreferencePair(prompt="how do vaccines work", chosen="a", rejected="b",
                       optimized_prompt="Explain in detail how vaccines train the immune system."),
        PreferencePair(prompt="how do tides work", chosen="a", rejected="b",
                       optimized_prompt="How do ocean tides work?"),
        PreferencePair(prompt=history + [{"role": "user", "content": "why is the sky blue"}], chosen="a", rejected="b",
                       optimized_prompt="Explain in detail why the sky looks blue during the day."),
    ]
