"""The response corrector's safeguards: ``check_correction`` and ``degeneration``."""

from __future__ import annotations

from rewriters.correction_checks import CorrectionCheck, check_correction, degeneration
from text_stage_fakes import ANSWER


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
