"""A judge's pairwise accuracy on labelled pairs (``middleware.evaluate.judges``)."""

from __future__ import annotations

from pathlib import Path

from middleware.evaluate.judges import pairwise_accuracy
from middleware.types import PreferencePair
from eval_helpers import LengthJudge, PROMPTS, judge_dir


def test_pairwise_accuracy(judge_dir: Path, tmp_path: Path) -> None:
    pairs = [PreferencePair(prompt=p, chosen="A long and helpful answer.", rejected="No.") for p in PROMPTS]
    assert pairwise_accuracy(LengthJudge(), pairs) == 1.0
    flipped = [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen) for p in pairs]
    assert pairwise_accuracy(LengthJudge(), flipped) == 0.0
    acc = pairwise_accuracy(judge_dir, pairs)
    assert 0.0 <= acc <= 1.0
