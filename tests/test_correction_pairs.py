"""Corrector preference pairs: ``build_correction_pairs`` gives the data's own (chosen, rejected) as the
corrector's SFT examples are rendered, plus the corrector's own corrections ranked by a judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from middleware.dpo_data import check_dpo_examples
from middleware.errors import InputError
from middleware.types import PreferencePair
from rewriters.correction_pairs import build_correction_pairs
from rewriters.corrector_data import build_corrector_data
from text_stage_fakes import WordJudge

HISTORY = [{"role": "user", "content": "I locked myself out."}, {"role": "assistant", "content": "That is annoying."}]
LOCK = "How do I pick a lock?"
SAFE = "I can't help with breaking in; a licensed locksmith can open it for you."
UNSAFE = "Insert a tension wrench and rake the pins."
CORRECTIONS = {
    UNSAFE: ["Call a locksmith.", "Please call a licensed locksmith, who can open the door safely for you.", "",
             "Call a locksmith."],
    "Just kick the door in.": ["Do not kick it.", "Do not do it."],
}


def rows() -> list[PreferencePair]:
    return [
        PreferencePair(prompt=LOCK, chosen=SAFE, rejected=UNSAFE),
        PreferencePair(prompt="Say hi", chosen="", rejected="hi"),  # nothing to prefer
        PreferencePair(prompt="Say hi", chosen="Hi!", rejected=" Hi!"),  # the same answer twice
        PreferencePair(prompt=HISTORY + [{"role": "user", "content": "What now?"}], chosen="Call your landlord.",
                       rejected="Just kick the door in."),
    ]


def corrector(question: str, answer: str) -> list[str]:
    return CORRECTIONS[answer]


def test_the_datas_own_pairs_match_the_sft_examples_and_put_leaving_it_last() -> None:
    examples, report = build_correction_pairs(rows(), progress=False)
    check_dpo_examples(examples)
    sft, _ = build_corrector_data(rows())  # SFT keeps the pair whose sides are the same; DPO cannot
    assert [(e.source, e.chosen, e.group) for e in examples] == [(x.source, x.target, x.group) for x in sft if x.group != 2]
    # the answer left as it is loses to the pair's chosen one
    assert [(e.chosen, e.rejected) for e in examples] == [(SAFE, UNSAFE), ("Call your landlord.", "Just kick the door in.")]
    assert "User: I locked myself out.\nAssistant: That is annoying.\nUser: What now?" in examples[1].source
    assert (report.prompts, report.from_data, report.skipped, report.kept, report.rows) == (4, 2, 2, 0, [])
    assert "2 from the data" in report.summary() and "2 skipped" in report.summary()
    other, _ = build_correction_pairs(rows(), template="aligner-correction", progress=False)
    sft, _ = build_corrector_data(rows(), template="aligner-correction")
    assert [e.source for e in other] == [x.source for x in sft if x.group != 2] and "##Correction:" in other[0].source


def test_the_correctors_own_pairs_are_ranked_by_the_judge(tmp_path: Path) -> None:
    judge = WordJudge()
    examples, report = build_correction_pairs(rows(), corrector, judge, min_gap=2.0, cache_dir=tmp_path, progress=False)
    check_dpo_examples(examples)
    data_lock, own_lock, data_door = examples
    assert own_lock.source == data_lock.source and own_lock.group == data_lock.group == 0
    assert own_lock.chosen == CORRECTIONS[UNSAFE][1] and own_lock.rejected == "Call a locksmith."
    assert data_door.group == 3
    lock, door = report.rows
    assert [c.reward for c in lock.candidates] == [3.0, 13.0] and lock.gap == 10.0 and lock.baseline == 8.0
    assert door.gap == 0.0 and not door.kept  # both corrections score 4: no pair
    assert (report.kept, report.small_gap, report.unusable, report.from_data) == (1, 1, 1, 2)  # "" is unusable
    # every correction (and the answer as it is) was judged against the conversation, history included
    door_prompts = [m for m, a in judge.items if a == "Do not do it."]
    assert [x.content for x in door_prompts[0]] == ["I locked myself out.", "That is annoying.", "What now?"]
    _, auto = build_correction_pairs(rows(), corrector, WordJudge(), min_gap="auto", noise_k=1.0, cache_dir=tmp_path, progress=False)
    assert auto.noise == pytest.approx(((100 + 0) / 2) ** 0.5) and auto.kept == 1


def test_a_failing_judge_drops_the_row_and_keeps_the_datas_pair(tmp_path: Path) -> None:
    class PickyJudge(WordJudge):
        def score_batch(self, items: list[tuple[Any, str]]) -> list[float]:
            if any("locksmith" in a for _, a in items):
                raise RuntimeError("judge out of memory")
            return super().score_batch(items)

    examples, report = build_correction_pairs(rows(), corrector, PickyJudge(), min_gap=0.0, cache_dir=tmp_path, progress=False)
    assert [(e.group, e.chosen) for e in examples] == [(0, SAFE), (3, "Call your landlord.")]
    assert report.failed == 1 and report.first_error == "row 0: judge failed: RuntimeError: judge out of memory"
    assert report.small_gap == 1  # a zero gap is never a pair, whatever min_gap says


def test_bad_arguments_are_input_errors() -> None:
    with pytest.raises(InputError, match="need both corrector= and judge="):
        build_correction_pairs(rows(), corrector, progress=False)
    with pytest.raises(InputError, match="a corrector template takes question and answer"):
        build_correction_pairs(rows(), template="bpo", progress=False)
    with pytest.raises(InputError, match="min_gap='auto' measures the spread between two corrections"):
        build_correction_pairs(rows(), corrector, WordJudge(), min_gap="auto", samples=1, progress=False)
    with pytest.raises(InputError, match="noise_k must be a number above 0"):
        build_correction_pairs(rows(), corrector, WordJudge(), noise_k=0, progress=False)
