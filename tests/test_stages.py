"""A stage's failure policy and trace: fail-open, on_error, timeout, skip_if, notes (``middleware.stages``)."""

from __future__ import annotations

import pytest

from middleware import FunctionLLM, Pipeline, StageError
from middleware.stages import is_title_request
from core_stages import Boom, BoomResponse, Exclaim, Noting, Slow, Upper, echo_llm


def test_middle_stage_failure_keeps_request_and_answer():
    pipe = Pipeline(echo_llm(), [Upper(), Boom(), Exclaim()])
    r = pipe.chat("hello")
    assert r.text == "echo: HELLO!"
    verdicts = [(t.stage, t.verdict) for t in r.trace]
    assert verdicts == [("Upper", "modified"), ("Boom", "failed"), ("Exclaim", "modified")]
    assert "RuntimeError: rewriter crashed" in r.trace[1].reason


def test_response_stage_failure_passes_answer_through():
    r = Pipeline(echo_llm(), [BoomResponse(), Exclaim()]).chat("x")
    assert r.text == "echo: x!"
    assert r.trace[0].verdict == "failed" and "corrector crashed" in r.trace[0].reason


def test_on_error_raise():
    with pytest.raises(StageError, match="'Boom' failed: RuntimeError: rewriter crashed"):
        Pipeline(echo_llm(), [Boom(on_error="raise")]).chat("x")


def test_timeout_fails_open():
    r = Pipeline(echo_llm(), [Slow(timeout=0.05)]).chat("original")
    assert r.text == "echo: original"
    assert r.trace[0].verdict == "failed" and r.trace[0].reason == "timed out after 0.05s"


def test_skip_if_and_notes():
    pipe = Pipeline(echo_llm(), [Upper(skip_if=is_title_request), Noting()])
    r = pipe.chat("### Task: Generate a concise title for the chat")
    assert r.trace[0].verdict == "skipped"
    assert r.trace[1].verdict == "passed" and r.trace[1].reason == "kept the original: looked fine"
    assert pipe.chat("plain").trace[0].verdict == "modified"


def test_a_request_without_a_user_message_passes_prompt_stages():
    pipe = Pipeline(FunctionLLM(lambda msgs: f"{len(msgs)} messages"), [Upper()])
    r = pipe.chat([{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello!"}])
    assert r.text == "2 messages"
    assert r.trace[0].verdict == "failed" and "no user message" in r.trace[0].reason
    with pytest.raises(StageError, match="no user message"):
        Pipeline(echo_llm(), [Upper(on_error="raise")]).chat([{"role": "system", "content": "Be brief."}])


def test_a_stage_runs_inline_without_a_timeout_and_in_a_worker_thread_with_one():
    import threading

    from middleware import PromptStage

    seen = []

    class Where(PromptStage):
        def process(self, request):
            seen.append(threading.current_thread())
            return request

    Pipeline(echo_llm(), [Where(), Where(timeout=5)]).chat("x")
    assert seen[0] is threading.current_thread() and seen[1] is not threading.current_thread()


def test_append_to_prompt_adds_text_to_the_last_user_message_only():
    from middleware import load_pipeline

    pipe = load_pipeline({"stages": [{"type": "append_to_prompt", "text": "Please answer in a safe way."}]}, llm=echo_llm())
    r = pipe.chat([{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "How?"}])
    assert r.text == "echo: How? Please answer in a safe way."
    assert r.trace[0].verdict == "modified" and r.trace[0].after == "How? Please answer in a safe way."
    with pytest.raises(ValueError, match="non-empty"):
        load_pipeline({"stages": [{"type": "append_to_prompt", "text": " "}]}, llm=echo_llm())
