"""The statistics of an evaluation: a prompt's outcome against the plain answer (win, tie, loss) and
the confidence intervals of a win rate and of a mean."""

from __future__ import annotations

import math
from typing import Sequence

DEFAULT_EPSILON = 1e-4  # rewards closer than this tie


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float] | None:
    """The confidence interval of a mean: mean ± z × the standard error (sample standard deviation / √n);
    ``None`` for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    se = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1) / n)
    return (m - z * se, m + z * se)


def win_rate_interval(scores: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """The confidence interval of the win rate, the mean of per-prompt scores (1 win, 0.5 tie, 0 loss).

    Normal approximation (mean ± z × sample standard deviation / √n) after adding one win and one loss,
    as the Agresti–Coull interval does for a proportion: a few prompts with the same outcome (2 wins of
    2) do not give a zero-width interval, and with many prompts the added pair hardly matters. Clipped
    to [0, 1]; ``(0, 1)`` with no scores."""
    if not scores:
        return (0.0, 1.0)
    ci = mean_interval([*scores, 1.0, 0.0], z)
    assert ci is not None
    return (max(0.0, ci[0]), min(1.0, ci[1]))


def outcome(gain: float, epsilon: float) -> float:
    """A prompt's outcome against the plain answer: 1 a win, 0.5 a tie (within ``epsilon``), 0 a loss."""
    return 0.5 if abs(gain) <= epsilon else 1.0 if gain > 0 else 0.0
