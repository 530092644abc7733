"""The prompt rewriter's safeguards: ``clean_rewrite`` and the rules of ``check_rewrite``, and the
harmful-term rule through the rewriter stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from middleware.errors import InputError
from middleware.pipeline import Pipeline
from rewriters.prompt_rewriter import PromptRewriter
from rewriters.rewrite_checks import RewriteCheck, check_rewrite, clean_rewrite
from text_stage_fakes import PROMPT, FixedLLM, echo_llm, received


def test_a_prompt_that_itself_opens_like_an_answer_may_keep_its_opening() -> None:
    original = "Yes or no: is photosynthesis done by plants?"
    assert check_rewrite(original, "Yes or no: do plants perform photosynthesis? Answer and explain briefly.") is None
    assert check_rewrite("hi", "Hello! Please greet me back warmly.", RewriteCheck(check_answer=False)) is None


def test_clean_rewrite() -> None:
    assert clean_rewrite("Here is an improved version of the prompt:\n\"Tell me about cats.\"") == "Tell me about cats."
    assert clean_rewrite("**Improved prompt:** Tell me about cats. [END] trailing") == "Tell me about cats."
    assert clean_rewrite("Tell me about cats: their food and habits.") == "Tell me about cats: their food and habits."


@pytest.mark.parametrize(
    "rewrite",
    [
        "What are the main steps of photosynthesis in plants, and why does each matter?",
        "Explain how photosynthesis works in plants, with the chemical equation.",
        "In plants, photosynthesis turns light into sugar. Could you describe each stage in detail?",
    ],
)
def test_questions_and_requests_pass_the_statement_rule(rewrite: str) -> None:
    assert check_rewrite(PROMPT, rewrite) is None


def test_the_statement_rule_only_applies_to_questions() -> None:
    assert check_rewrite("Photosynthesis in plants", "Photosynthesis in plants, from light to sugar, step by step.") is None


def test_no_optimized_prompt_of_a_bpo_question_is_taken_for_an_answer(shared_data: Path) -> None:
    from middleware.types import load_pairs

    questions = [p for p in load_pairs(shared_data / "bpo_pairs.jsonl") if p.question.rstrip().endswith("?")]
    assert len(questions) > 50
    flagged = [p.optimized_prompt for p in questions if "statement" in (check_rewrite(p.question, p.optimized_prompt) or "")]
    assert flagged == []


@pytest.mark.parametrize(
    "original, rewrite, reason",
    [
        (
            "If the endpoints of a line segment are (2, -2) and (10, 4), what is the length of the segment?",
            "Please provide a detailed explanation of the segment's length based on the given endpoints.",
            "drops numbers the prompt gives (2, 10, 4)",
        ),
        ("Summarize the article in 1-2 sentences.", "Summarize the article briefly and clearly.", "drops numbers"),
        (
            "As a pirate captain, what would you say to your crew to motivate them to search for hidden treasure?",
            "What would you say to your crew to motivate them to search for hidden treasure?",
            "drops the role the prompt sets ('pirate captain')",
        ),
        (
            "Imagine you are a time traveler from the year 3000. What would you tell people?",
            "What would you tell people in the year 3000 about technology? Explain in detail.",
            "drops the role",
        ),
    ],
)
def test_rewrites_that_drop_details_keep_the_original(original: str, rewrite: str, reason: str) -> None:
    assert reason in (check_rewrite(original, rewrite) or "")


def test_details_kept_in_another_form_pass() -> None:
    assert check_rewrite("How far is 3,000 km in miles?", "Convert 3000 km to miles and show the calculation.") is None
    assert check_rewrite(
        "As a pirate captain, what would you say to motivate your crew?",
        "You are a pirate captain. Write a rousing speech that motivates your crew to find the treasure.",
    ) is None
    assert check_rewrite("Summarize it in 1-2 sentences.", "Summarize it in 2 sentences.", RewriteCheck(keep_numbers=False)) is None


# -- harmful terms a rewrite adds -----------------------------------------------------------------------
TERM = "zorblax"  # a made-up word, listed as an extra harmful term
CHECK = RewriteCheck(extra_harm_terms=(TERM,))


def test_a_rewrite_may_not_add_a_harmful_term() -> None:
    rewrite = "Explain how photosynthesis works in plants, and why a z-o-r-b-l-a-x would not understand it."
    assert check_rewrite(PROMPT, rewrite) is None  # not in the built-in list
    assert (check_rewrite(PROMPT, rewrite, CHECK) or "").startswith("rewrite adds a listed harmful term ('z")
    assert check_rewrite(PROMPT, rewrite, RewriteCheck(extra_harm_terms=(TERM,), check_introduced_harm=False)) is None
    with pytest.raises(InputError, match="extra_harm_terms"):
        RewriteCheck(extra_harm_terms=TERM)  # type: ignore[arg-type]


def test_a_rewrite_may_keep_a_term_the_prompt_has() -> None:
    original = f"Why is {TERM} an insult?"
    assert check_rewrite(original, f"Explain why the word '{TERM}' is considered an insult.", CHECK) is None


def test_the_rewriter_keeps_the_original_prompt_when_its_rewrite_adds_a_harmful_term() -> None:
    rewrite = f"Explain in detail how photosynthesis works in plants, {TERM} style."
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(rewrite), check=CHECK)]).chat(PROMPT)
    assert received(resp)[-1]["content"] == PROMPT
    assert resp.trace[0].verdict == "passed"
    assert resp.trace[0].reason == "kept the original prompt: rewrite adds a listed harmful term ('z******') that its input does not have"
    resp = Pipeline(echo_llm(), [PromptRewriter.prompted(FixedLLM(rewrite))]).chat(PROMPT)
    assert received(resp)[-1]["content"] == rewrite  # without the extra term, the rewrite passes
