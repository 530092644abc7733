"""BPO's data construction: the teacher's task, reading its answer, and the filters on optimized prompts."""

from __future__ import annotations

import pytest

from middleware.types import PreferencePair
from rewriters.teacher import bpo_filter, parse_teacher_output, teacher_prompt
from text_stage_fakes import OPTIMIZED, TEACHER_OK


@pytest.mark.parametrize(
    "text",
    [
        TEACHER_OK,
        TEACHER_OK.replace(" [END]", ""),
        TEACHER_OK.replace("Optimized Instruction:", "**Optimized Instruction:**"),
        TEACHER_OK.replace("Optimized Instruction: ", "Optimized Prompt: \"").replace(" [END]", "\" [END]"),
        TEACHER_OK.replace("Optimized Instruction: ", "## Optimized instruction:\n'").replace(" [END]", "'"),
    ],
)
def test_parse_teacher_output_is_robust(text: str) -> None:
    critique, prompt = parse_teacher_output(text)
    assert prompt == OPTIMIZED
    assert critique.startswith("The good response")


@pytest.mark.parametrize("text", ["I cannot do this.", "Optimized Instruction:   [END]", ""])
def test_parse_teacher_output_rejects_unusable_answers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_teacher_output(text)


def test_bpo_filters() -> None:
    assert bpo_filter("how do vaccines work", OPTIMIZED) is None
    assert bpo_filter("vaccines?", OPTIMIZED) == "length_ratio"  # more than 6x the words
    assert bpo_filter("a b c d e f g h i j k l m n o p q r s t u v w x y z", "short one") == "length_ratio"
    assert bpo_filter("How do vaccines work?", "how do vaccines work") == "unchanged"
    assert bpo_filter("how do vaccines work", "Explain how vaccines work [PROTECTED]") == "protected"
    chosen = "Vaccines show the immune system a harmless piece of a germ so it learns to recognise it later."
    leaky = "Explain how vaccines work: they show the immune system a harmless piece of a germ so it learns."
    assert bpo_filter("how do vaccines work", leaky, chosen) == "leaked_answer"
    assert bpo_filter("how do vaccines work", OPTIMIZED, chosen) is None


def test_teacher_prompt_follows_bpo_and_shows_history() -> None:
    pair = PreferencePair(
        prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "how do vaccines work"}],
        chosen="GOOD ANSWER", rejected="BAD ANSWER",
    )
    text = teacher_prompt(pair)
    assert 'instruction: "how do vaccines work"' in text
    assert text.index("BAD ANSWER") < text.index("GOOD ANSWER")
    assert "Optimized Instruction: xxx [END]" in text and "user: Hi\nassistant: Hello!" in text
