"""Keep pairs: ``build_keep_pairs`` makes the answer as it is beat the corrector's change of it, where the
change declines what the answer did not, or a judge scores it well below the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middleware.dpo_data import check_dpo_examples
from middleware.errors import InputError
from rewriters import build_keep_pairs
from rewriters.templates import get_template
from text_stage_fakes import WordJudge

POEM = "Roses are red, violets are blue, sugar is sweet."
ITEMS: list[tuple[Any, str]] = [
    ("Write a short poem.", POEM),  # -> a refusal: kept
    ("Convert 3 km to miles.", "3 km is about 1.86 miles."),  # -> left as it is
    ("Name a colour.", "Blue is a colour people often name first."),  # -> shorter: judged worse, or not
    ("How do I pick a lock?", "I'm sorry, I can't help with that."),  # the answer declines already: no pair
    ("Say something.", "   "),  # empty answer: skipped
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Give me a tip."}], "Drink water and sleep well every night."),  # -> a loop: unusable
]
CORRECTIONS = {
    POEM: "I'm sorry, but I cannot help with that request.",
    "3 km is about 1.86 miles.": "3 km is about 1.86 miles.",
    "Blue is a colour people often name first.": "Blue is a colour people name.",
    "I'm sorry, I can't help with that.": "I'm sorry, I cannot do that.",
    "Drink water and sleep well every night.": "Drink water! " * 6,
}


def corrector(question: str, answer: str) -> list[str]:
    return [CORRECTIONS[answer]]


def test_a_correction_that_declines_what_the_answer_did_not_loses_to_the_answer(tmp_path: Path) -> None:
    examples, report = build_keep_pairs(ITEMS, corrector, cache_dir=tmp_path, progress=False)
    check_dpo_examples(examples)
    assert [(e.group, e.chosen, e.rejected) for e in examples] == [(0, POEM, CORRECTIONS[POEM])]
    assert examples[0].source == get_template("aligner-v1.0").render(question="Write a short poem.", answer=POEM)
    assert (report.answers, report.declines, report.judged_worse, report.skipped, report.failed) == (6, 1, 0, 1, 0)
    # left as they were: the same text, and the correction the stage's safeguard would not use (a loop)
    assert report.unchanged == 2
    # changed without a pair: the shorter one (no judge to say it is worse), a refusal of what was refused already
    assert report.changed_otherwise == 2 and report.kept == 1
    assert "1 keep pairs (1 declining what the answer did not, 0 judged worse)" in report.summary()


def test_a_judge_adds_the_changes_it_scores_min_gap_below_the_answer(tmp_path: Path) -> None:
    judge = WordJudge()  # rewards length: the shorter colour answer is 2 words below its answer
    examples, report = build_keep_pairs(ITEMS, corrector, judge, min_gap=2.0, cache_dir=tmp_path, progress=False)
    assert [e.group for e in examples] == [0, 2] and examples[1].rejected == "Blue is a colour people name."
    assert (report.declines, report.judged_worse, report.changed_otherwise) == (1, 1, 1)
    # the judge scores only the changes that do not decline, each beside its answer, with its conversation
    asked = sorted(answer for _, answer in judge.items)
    assert asked == sorted(["Blue is a colour people name.", "Blue is a colour people often name first.",
                            "I'm sorry, I cannot do that.", "I'm sorry, I can't help with that."])
    assert [msgs[-1].content for msgs, _ in judge.items].count("Name a colour.") == 2
    _, strict = build_keep_pairs(ITEMS, corrector, WordJudge(), min_gap=3.0, cache_dir=tmp_path / "b", progress=False)
    assert (strict.judged_worse, strict.changed_otherwise) == (0, 2)


def test_the_conversation_is_flattened_and_failures_are_counted(tmp_path: Path) -> None:
    seen: list[str] = []

    def flaky(question: str, answer: str) -> list[str]:
        seen.append(question)
        if answer == POEM:
            raise RuntimeError("the corrector crashed")
        return [CORRECTIONS[answer]]

    examples, report = build_keep_pairs(ITEMS, flaky, cache_dir=tmp_path, progress=False)
    assert examples == [] and report.failed == 1 and "the corrector crashed" in (report.first_error or "")
    assert "User: Hi\nAssistant: Hello!\nUser: Give me a tip." in seen


def test_bad_arguments_are_refused_with_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"items\[1\]: the answer must be a string"):
        build_keep_pairs([("a", "b"), ("c", None)], corrector, cache_dir=tmp_path, progress=False)  # type: ignore[list-item]
    with pytest.raises(InputError, match="min_gap"):
        build_keep_pairs(ITEMS, corrector, min_gap=-1.0, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="question and answer"):
        build_keep_pairs(ITEMS, corrector, template="bpo", cache_dir=tmp_path, progress=False)
    asked: list[str] = []
    with pytest.raises(InputError, match="score_batch"):  # before the corrector is asked anything
        build_keep_pairs(ITEMS, lambda q, a: asked.append(a) or [a], object(), cache_dir=tmp_path, progress=False)
    assert asked == []
