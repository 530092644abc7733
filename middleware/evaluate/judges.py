"""Judges: anything that scores (prompt, response) items, a reward model folder loaded as one, and a
judge's accuracy on labelled preference pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, Union, runtime_checkable

from ..errors import InputError
from ..types import PreferencePair, load_pairs


@runtime_checkable
class Judge(Protocol):
    """Anything that scores (prompt, response) items; ``judge.RewardModel`` is one."""

    def score_batch(self, items: Sequence[tuple[Any, str]]) -> list[float]: ...


JudgeLike = Union[Judge, str, Path]


def load_judge(judge: JudgeLike) -> Judge:
    """A judge object, or a reward model folder loaded with ``RewardModel.load`` (``CheckpointError``)."""
    if isinstance(judge, (str, Path)):
        from judge import RewardModel  # the judge package loads only when a folder is given

        return RewardModel.load(judge)
    if not hasattr(judge, "score_batch"):
        raise InputError(f"judge must be a reward model folder or have score_batch(items), got {type(judge).__name__}")
    return judge


def judge_name(judge: JudgeLike) -> str:
    """How a report names its judge: the folder, or the judge object's class."""
    return str(judge) if isinstance(judge, (str, Path)) else type(judge).__name__


def pair_margins(judge: JudgeLike, pairs: "str | Path | Sequence[PreferencePair]", *, limit: int | None = None, batch_size: int = 16, progress: bool = False) -> list[float]:
    """``reward(chosen) − reward(rejected)`` for each pair."""
    judge_obj = load_judge(judge)
    rows = load_pairs(pairs, limit=limit) if isinstance(pairs, (str, Path)) else list(pairs)[:limit] if limit else list(pairs)
    if not rows:
        raise InputError(f"{pairs if isinstance(pairs, (str, Path)) else 'pairs'}: no preference pairs")
    if hasattr(judge_obj, "pair_margins"):
        return list(judge_obj.pair_margins(rows, batch_size=batch_size, progress=progress))  # type: ignore[attr-defined]
    items = [(p.prompt, p.chosen) for p in rows] + [(p.prompt, p.rejected) for p in rows]
    s = judge_obj.score_batch(items)
    return [s[i] - s[i + len(rows)] for i in range(len(rows))]


def pairwise_accuracy(
    judge: JudgeLike,
    pairs: "str | Path | Sequence[PreferencePair]",
    *,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    epsilon: float = 0.0,
) -> float:
    """Share of labelled pairs where the judge scores ``chosen`` above ``rejected``; margins within
    ``epsilon`` of zero are ties and count half."""
    return accuracy(pair_margins(judge, pairs, limit=limit, batch_size=batch_size, progress=progress), epsilon)


def accuracy(margins: Iterable[float], epsilon: float = 0.0) -> float:
    """Share of margins above ``epsilon`` (chosen wins); within ``epsilon`` of zero counts half; NaN for none."""
    m = list(margins)
    if not m:
        return float("nan")
    return sum(1.0 if x > epsilon else 0.0 if x < -epsilon else 0.5 for x in m) / len(m)
