"""Win-rate and mean confidence intervals (``middleware.evaluate.stats``)."""

from __future__ import annotations

import pytest

from middleware.evaluate.stats import mean_interval, win_rate_interval


def test_win_rate_interval() -> None:
    # one win and one loss are added: 10 ties -> 12 scores, mean 0.5, variance 0.5 / 11
    lo, hi = win_rate_interval([0.5] * 10)
    assert lo == pytest.approx(0.5 - 1.96 * (0.5 / 11) ** 0.5 / 12 ** 0.5) and hi == pytest.approx(1 - lo)
    lo, hi = win_rate_interval([1.0, 0.0] * 20)  # 42 scores, mean 0.5, variance 10.5 / 41
    assert lo == pytest.approx(0.5 - 1.96 * (10.5 / 41) ** 0.5 / 42 ** 0.5) and hi == pytest.approx(1 - lo)
    lo, hi = win_rate_interval([1.0, 1.0])  # 2 wins of 2 is not certainty: [1, 1, 1, 0], mean 0.75, sd 0.5
    assert lo == pytest.approx(0.75 - 1.96 * 0.5 / 2) and hi == 1.0  # clipped
    assert win_rate_interval([]) == (0.0, 1.0)
    assert mean_interval([1.0, 3.0]) == pytest.approx((2 - 1.96, 2 + 1.96)) and mean_interval([5.0]) is None
