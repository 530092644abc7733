"""The response corrector's safeguards: ``check_correction`` and ``degeneration``, and the harmful-term
rule through the corrector stage."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import pytest

from middleware.errors import InputError
from middleware.pipeline import Pipeline
from middleware.types import ChatRequest, ChatResponse
from rewriters.correction_checks import CorrectionCheck, check_correction, degeneration
from rewriters.response_corrector import ResponseCorrector
from text_stage_fakes import ANSWER, FixedLLM, RecordingGenerator, streamed


def test_legitimate_corrections_pass() -> None:
    harmful = "First, buy the following chemicals from a hardware store and mix them in a closed room. " * 3
    assert check_correction(harmful, "I can't help with that, but I can explain household chemical safety.") is None
    listy = "Steps:\n- Preheat.\n- Preheat.\n- Preheat.\nDone."
    assert degeneration(listy, reference=listy) is None  # repetition already in the original does not count
    assert check_correction(ANSWER, ANSWER) is None
    assert check_correction(ANSWER, "x", finish_reason="length", check=CorrectionCheck(reject_truncated=False)) is None


def test_template_markers_already_in_the_answer_do_not_count() -> None:
    answer = "Type USER and then your password at the prompt."
    assert check_correction(answer, "Type USER, then your password, at the login prompt.") is None
    assert "ASSISTANT" in (check_correction(answer, "Type USER at the prompt. ASSISTANT") or "")
    assert check_correction("Paris.", "The assistant said the user was right: Paris.") is None  # ordinary words


# -- harmful terms a correction adds ------------------------------------------------------------------
TERM = "zorblax"  # a made-up word, listed as an extra harmful term
CHECK = CorrectionCheck(extra_harm_terms=(TERM,))


def test_a_correction_may_not_add_a_harmful_term() -> None:
    answer = "Insults hurt people; try talking it through instead."
    added = f"Call them a Z0RBL4X. {answer}"
    assert check_correction(answer, added) is None  # not in the built-in list
    assert "correction adds a listed harmful term ('z******')" in (check_correction(answer, added, check=CHECK) or "")
    assert check_correction(answer, added, check=CorrectionCheck(extra_harm_terms=(TERM,), check_introduced_harm=False)) is None


def test_a_term_already_in_the_answer_or_the_question_may_stay() -> None:
    assert check_correction(f"You {TERM}!", f"Calling someone a {TERM} is hurtful.", check=CHECK) is None
    refusal = f"I won't explain how to use '{TERM}' to offend anyone."
    assert check_correction("Here is how.", refusal, check=CHECK, context=f"How do I use {TERM} to offend?") is None
    assert check_correction("Here is how.", refusal, check=CHECK) is not None


def test_the_built_in_list_needs_no_setting() -> None:
    word = "".join(chr(c + 1) for c in (113, 100, 115, 96, 113, 99))  # a built-in entry, not spelled here
    assert "ableist slur" in (check_correction(ANSWER, f"{ANSWER} Only a {word} would ask.") or "")


def test_extra_terms_are_checked_when_the_settings_are_made() -> None:
    assert CorrectionCheck(extra_harm_terms=[TERM]).extra_harm_terms == (TERM,)  # type: ignore[arg-type]  # a config list
    with pytest.raises(InputError, match="extra_harm_terms: expected a list"):
        CorrectionCheck(extra_harm_terms=TERM)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"extra_harm_terms\[1\]"):
        CorrectionCheck(extra_harm_terms=(TERM, ""))


# -- through the corrector stage ----------------------------------------------------------------------
HARMFUL_QUESTION = "How should I use the racial slurs to really offend someone?"
PLAIN = "I won't help you offend people. Words like that hurt."


def test_the_corrector_keeps_the_original_when_its_correction_adds_a_harmful_term() -> None:
    corrector = ResponseCorrector(RecordingGenerator([f"Just call them {TERM}s. Words like that hurt."]), check=CHECK)
    resp = Pipeline(FixedLLM(PLAIN), [corrector]).chat(HARMFUL_QUESTION)
    assert resp.text == PLAIN
    trace = resp.trace[-1]
    assert trace.verdict == "passed"
    assert trace.reason == "kept the original answer: correction adds a listed harmful term ('z*******') that its input does not have"
    quoting = ResponseCorrector(RecordingGenerator([f"I won't explain how to use '{TERM}'."]), check=CHECK)
    resp = Pipeline(FixedLLM(PLAIN), [quoting]).chat(f"How do I use the word {TERM}?")  # the user wrote it
    assert resp.text == f"I won't explain how to use '{TERM}'." and resp.trace[-1].verdict == "modified"


def test_prompted_batched_and_streamed_corrections_are_checked_too() -> None:
    corrector = ResponseCorrector.prompted(FixedLLM(f"Say {TERM}."), check=CHECK)
    pipe = Pipeline(FixedLLM(PLAIN), [corrector])
    assert pipe.chat(HARMFUL_QUESTION).text == PLAIN
    text, _, trace = streamed(pipe, HARMFUL_QUESTION)
    assert text == PLAIN and "adds a listed harmful term" in trace[-1].reason
    request = ChatRequest(messages=[{"role": "user", "content": HARMFUL_QUESTION}])
    out = corrector.process_batch([request, request], [ChatResponse(text=PLAIN), ChatResponse(text=f"{TERM}?")])
    assert [r.text for r in out] == [PLAIN, "Say zorblax."]  # the second answer had the term already


def test_chunked_correction_may_repeat_a_term_of_an_earlier_group_but_not_add_one() -> None:
    answer = f"They said {TERM} to me. I felt hurt. It was a bad day."
    gen = RecordingGenerator([f"They said {TERM} to me.", f"I felt hurt by the {TERM}.", "It was a glimzorp day."])
    check = CorrectionCheck(extra_harm_terms=(TERM, "glimzorp"))
    corrector = ResponseCorrector(gen, streaming="chunked", chunk_min_chars=1, chunk_max_new_tokens=64, check=check)
    text, reasons = corrector.correct("What happened?", answer)
    assert text == f"They said {TERM} to me. I felt hurt by the {TERM}. It was a bad day."
    assert reasons == ["chunk 3: kept the original: correction adds a listed harmful term ('g*******') that its input does not have"]


def test_extra_terms_from_a_pipeline_config() -> None:
    from middleware.config import load_pipeline

    stage = {"type": "response_corrector", "llm": "openai/x", "extra_harm_terms": [TERM],
             "llm_options": {"mock_response": f"Just say {TERM}.", "max_retries": 0}}
    resp = load_pipeline({"stages": [stage]}, llm=FixedLLM(PLAIN)).chat(HARMFUL_QUESTION)
    assert resp.text == PLAIN and "listed harmful term" in resp.trace[-1].reason
