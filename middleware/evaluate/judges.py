"""Judges: anything that scores (prompt, response) items, a reward model folder loaded as one, a
judge's accuracy on labelled preference pairs, and the panel of judges a report is scored by (each with
the accuracy it is known to have)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, Union, runtime_checkable

from ..errors import InputError
from ..types import PreferencePair, load_pairs
from .stats import win_rate_interval


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


@dataclass
class JudgeAccuracy:
    """A judge's pairwise accuracy on labelled pairs: ``n`` pairs from ``source``, with its 95% interval."""

    accuracy: float
    n: int
    source: str
    ci: tuple[float, float] | None = None

    def describe(self) -> str:
        ci = f" (95% CI {self.ci[0]:.2f}-{self.ci[1]:.2f})" if self.ci else ""
        return f"pairwise accuracy {self.accuracy:.3f}{ci} on {self.n} pairs from {self.source}"


@dataclass
class PanelJudge:
    """One judge of a report: its name (a folder, or a class), its short column ``label``, the loaded
    judge and its accuracy (``None``: not measured)."""

    name: str
    label: str
    judge: Judge
    accuracy: JudgeAccuracy | None = None


def measured_accuracy(judge: Judge, pairs: "str | Path | Sequence[PreferencePair]", *, progress: bool = False) -> JudgeAccuracy:
    """``judge``'s pairwise accuracy on ``pairs`` (ties count half), with its 95% interval."""
    margins = pair_margins(judge, pairs, progress=progress)
    scores = [1.0 if m > 0 else 0.0 if m < 0 else 0.5 for m in margins]
    return JudgeAccuracy(accuracy(margins), len(margins), str(pairs) if isinstance(pairs, (str, Path)) else "the given list",
                         win_rate_interval(scores))


def recorded_accuracy(judge: Judge) -> JudgeAccuracy | None:
    """The held-out accuracy a reward model's training recorded in its folder (``train_metrics`` in
    ``reward_config.json``: ``eval_acc`` on ``n_eval`` pairs), or ``None`` when there is none. The interval
    treats the accuracy as a share of ``n`` wins (ties, which count half, are not known from the record)."""
    metrics = (getattr(judge, "info", None) or {}).get("train_metrics") or {}
    acc, n = metrics.get("eval_acc"), metrics.get("n_eval")
    if acc is None or not n:
        return None
    k = round(float(acc) * int(n))
    return JudgeAccuracy(float(acc), int(n), "its training's held-out split",
                         win_rate_interval([1.0] * k + [0.0] * (int(n) - k)))


def load_panel(
    judges: "JudgeLike | Sequence[JudgeLike]",
    pairs: "str | Path | Sequence[PreferencePair] | None" = None,
    *,
    progress: bool = False,
) -> list[PanelJudge]:
    """The judges of a report, loaded once each, labelled for the report's columns (a folder's last part
    or a class name, ``#2``… where two are the same), each with its accuracy: measured on ``pairs`` when
    given, else the held-out accuracy its training recorded, else ``None``."""
    given: list[JudgeLike] = [judges] if isinstance(judges, (str, Path, Judge)) else list(judges)
    if not given:
        raise InputError("no judge given")
    panel: list[PanelJudge] = []
    for j in given:
        name = judge_name(j)
        base = Path(name).name if isinstance(j, (str, Path)) else name
        label, k = base, 2
        while label in {p.label for p in panel}:
            label, k = f"{base}#{k}", k + 1
        obj = load_judge(j)
        acc = measured_accuracy(obj, pairs, progress=progress) if pairs is not None else recorded_accuracy(obj)
        panel.append(PanelJudge(name, label, obj, acc))
    return panel
