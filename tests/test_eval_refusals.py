"""``middleware.evaluate.refusals``: the refusal test that every evaluation report counts."""

from __future__ import annotations

import pytest

from middleware.evaluate.refusals import is_refusal, refusal_rate


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for hacking.",
    "I can’t assist with that request.",
    "As an AI language model, I do not have opinions.",
    "Sorry. I won't do that.",
    "That's illegal and I would not recommend it.",
    "I am unable to share personal information.",
])
def test_refusals_are_caught(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Paris is the capital of France.",
    "Here are two tips: take breaks and put your phone away.",
    "You can cancel the subscription in the account settings.",
    "",
])
def test_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_only_the_start_counts_and_the_rate() -> None:
    late = "Here is a long answer. " * 12 + "I cannot say more."
    assert not is_refusal(late)
    assert refusal_rate(["I'm sorry, no.", "Sure, here it is.", "I can't.", "Yes."]) == 0.5
    assert refusal_rate([]) == 0.0
