"""Batched stages: ``Pipeline.batch`` hands each stage that has ``process_batch`` the whole batch at once,
with per-request skips, notes and failure policy; the model-mode rewriter and corrector give each request
what one-by-one processing gives it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from middleware.errors import StageError
from middleware.llm import FunctionLLM
from middleware.pipeline import Pipeline
from middleware.stages import PromptStage, ResponseStage, batch_item, note
from middleware.types import ChatRequest, ChatResponse
from rewriters.correction_checks import CorrectionCheck
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.response_corrector import ResponseCorrector
from rewriters.templates import get_template

PROMPTS = ["first question about cats", "skip me please", "third question about dogs", "fourth one"]


def echo_llm() -> FunctionLLM:
    return FunctionLLM(lambda msgs: msgs[-1]["content"], name="echo")


class Shout(PromptStage):
    """Upper-cases the last user message; records the batches it was given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batches: list[int] = []
        self.singles = 0

    def process(self, request: ChatRequest) -> ChatRequest:
        self.singles += 1
        return request.with_last_user_message(request.last_user_message.upper())

    def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        self.batches.append(len(requests))
        out = []
        for i, r in enumerate(requests):
            with batch_item(i):
                note(f"item {i} of {len(requests)}")
            out.append(r.with_last_user_message(r.last_user_message.upper()))
        return out


class Suffix(ResponseStage):
    """Appends a mark to every reply, in one batch."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batches: list[int] = []

    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        raise AssertionError("a stage with process_batch gets the batch")

    def process_batch(self, requests: list[ChatRequest], responses: list[ChatResponse]) -> list[ChatResponse]:
        self.batches.append(len(responses))
        return [r.model_copy(update={"text": r.text + " [checked]"}) for r in responses]


def test_batch_stages_get_the_batch_once_with_per_request_skips_and_notes() -> None:
    shout = Shout(skip_if=lambda r: r.last_user_message.startswith("skip"))
    suffix = Suffix()
    replies = Pipeline(echo_llm(), [shout, suffix]).batch(PROMPTS)
    assert shout.batches == [3] and shout.singles == 0 and suffix.batches == [4]
    assert [r.text for r in replies] == [
        "FIRST QUESTION ABOUT CATS [checked]",
        "skip me please [checked]",
        "THIRD QUESTION ABOUT DOGS [checked]",
        "FOURTH ONE [checked]",
    ]
    verdicts = [[(t.stage, t.verdict, t.reason) for t in r.trace] for r in replies]
    assert verdicts[0][0] == ("Shout", "modified", "item 0 of 3")
    assert verdicts[1][0] == ("Shout", "skipped", "skip_if matched")
    assert verdicts[2][0] == ("Shout", "modified", "item 1 of 3")
    assert verdicts[3][0] == ("Shout", "modified", "item 2 of 3")
    assert all(v[-1][:2] == ("Suffix", "modified") for v in verdicts)
    assert replies[0].trace[0].before == "first question about cats" and replies[0].trace[0].after == "FIRST QUESTION ABOUT CATS"


def test_single_requests_and_stages_without_process_batch_run_one_by_one() -> None:
    shout = Shout()
    Pipeline(echo_llm(), [shout]).batch(PROMPTS[:1])
    assert shout.batches == [] and shout.singles == 1

    class Plain(PromptStage):
        def process(self, request: ChatRequest) -> ChatRequest:
            return request.with_last_user_message(request.last_user_message + "?")

    assert [r.text for r in Pipeline(echo_llm(), [Plain()]).batch(PROMPTS[:2])] == [p + "?" for p in PROMPTS[:2]]


class Broken(PromptStage):
    def __init__(self, result: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.result = result

    def process(self, request: ChatRequest) -> ChatRequest:
        return request

    def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        if self.result is None:
            raise RuntimeError("rewriter model unavailable")
        return self.result


@pytest.mark.parametrize(
    "stage, reason",
    [
        (Broken(), "RuntimeError: rewriter model unavailable"),
        (Broken(result=[]), "TypeError: process_batch() returned 0 results for 3 requests"),
        (Broken(result=["not a request"] * 3), "TypeError: process() returned str, expected ChatRequest"),
    ],
    ids=["raises", "wrong-length", "wrong-type"],
)
def test_a_failed_batch_passes_every_request_through(stage: Broken, reason: str) -> None:
    replies = Pipeline(echo_llm(), [stage]).batch(PROMPTS[:3])
    assert [r.text for r in replies] == PROMPTS[:3]
    for r, p in zip(replies, PROMPTS):
        t = r.trace[0]
        assert (t.verdict, t.reason, t.before, t.after) == ("failed", reason, p, p)


def test_a_failed_batch_raises_when_configured_to() -> None:
    with pytest.raises(StageError, match="rewriter model unavailable"):
        Pipeline(echo_llm(), [Broken(on_error="raise")]).batch(PROMPTS[:2])


# -- the model-mode stages ------------------------------------------------------------------------
@dataclass
class Gen:
    text: str
    finish_reason: str = "stop"


class ScriptedGenerator:
    """Stands in for ``TextGenerator``: answers each rendered prompt from a table; records its calls."""

    def __init__(self, answers: dict[str, str], template: str) -> None:
        self.template = get_template(template)
        self.answers = answers
        self.calls: list[list[str]] = []

    def generate_ex(self, texts: list[str], **kw: Any) -> list[Gen]:
        self.calls.append(list(texts))
        out = []
        for t in texts:
            key = next((k for k in self.answers if k in t), None)
            out.append(Gen(self.answers[key]) if key else Gen("", "stop"))
        return out


def test_rewriter_batch_is_one_generation_with_the_one_by_one_results() -> None:
    answers = {
        "cats": "Explain in detail how to care for cats, with examples.",
        "dogs": "Sure! Dogs are great pets.",  # answers instead of rewriting: the safeguard keeps the prompt
    }
    prompts = ["How do I care for cats?", "", "Tell me about dogs", "What about fish?"]
    batch_gen, single_gen = ScriptedGenerator(answers, "bpo"), ScriptedGenerator(answers, "bpo")
    batched = Pipeline(echo_llm(), [PromptRewriter(batch_gen, temperature=0.0)]).batch(prompts)
    single_pipe = Pipeline(echo_llm(), [PromptRewriter(single_gen, temperature=0.0)])
    one_by_one = [single_pipe.chat(p) if p else None for p in prompts]
    assert len(batch_gen.calls) == 1 and len(batch_gen.calls[0]) == 3  # the empty prompt is not sent
    assert batched[0].text == answers["cats"]
    for b, s in zip(batched, one_by_one):
        if s is None:
            assert b.trace[0].reason == "empty prompt: nothing to rewrite"
            continue
        assert b.text == s.text
        assert (b.trace[0].verdict, b.trace[0].reason) == (s.trace[0].verdict, s.trace[0].reason)
    assert "kept the original prompt" in batched[2].trace[0].reason


RELAXED = CorrectionCheck(reject_truncated=False, check_degenerate=False, check_dropped_tail=False, check_template_leak=False)


def test_corrector_batch_equals_one_by_one_on_a_tiny_model_under_greedy(tiny_model_dir: Path) -> None:
    from rewriters.generator import TextGenerator

    gen = TextGenerator.untrained(tiny_model_dir, template="aligner-v1.0", kind="corrector")
    answers = {"q1": "Paris is the capital.", "q2": "", "q3": "Water boils at 100 degrees at sea level, more or less.", "q4": "No."}
    llm = FunctionLLM(lambda msgs: answers[msgs[-1]["content"]], name="fixed")
    for check in (CorrectionCheck(), RELAXED):
        corrector = ResponseCorrector(gen, check=check, temperature=0.0, max_new_tokens=10)
        pipe = Pipeline(llm, [corrector])
        batched = pipe.batch(list(answers))
        one_by_one = [pipe.chat(q) for q in answers]
        assert [r.text for r in batched] == [r.text for r in one_by_one]
        assert [(r.trace[-1].verdict, r.trace[-1].reason) for r in batched] == [
            (r.trace[-1].verdict, r.trace[-1].reason) for r in one_by_one
        ]
        assert batched[1].trace[-1].reason == "empty answer: nothing to correct"
        if check is RELAXED:  # the random model's text went through: equality is not trivial
            assert batched[0].text != answers["q1"] and batched[2].text != answers["q3"]


def test_prompted_corrector_sends_the_batch_to_llm_batch() -> None:
    seen: list[int] = []

    class Counting(FunctionLLM):
        def batch(self, requests, *, model_stages=()):  # type: ignore[no-untyped-def]
            seen.append(len(requests))
            return super().batch(requests, model_stages=model_stages)

    editor = Counting(lambda msgs: "A safer, clearer answer.", name="editor")
    corrector = ResponseCorrector.prompted(editor)
    replies = Pipeline(FunctionLLM(lambda m: "an answer", name="chat"), [corrector]).batch(["a", "b", "c"])
    assert seen == [3] and [r.text for r in replies] == ["A safer, clearer answer."] * 3
    assert json.dumps([t.verdict for r in replies for t in r.trace]) == json.dumps(["modified"] * 3)


def test_a_batch_that_times_out_passes_every_request_through() -> None:
    import time

    class Slow(PromptStage):
        def process(self, request: ChatRequest) -> ChatRequest:
            return request

        def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
            time.sleep(0.5)
            return [r.with_last_user_message("too late") for r in requests]

    replies = Pipeline(echo_llm(), [Slow(timeout=0.05)]).batch(PROMPTS[:2])
    assert [r.text for r in replies] == PROMPTS[:2]
    assert [t.reason for r in replies for t in r.trace] == ["timed out after 0.05s"] * 2
