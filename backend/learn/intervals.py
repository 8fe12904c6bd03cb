"""Confidence intervals for the numbers a report shows: Wilson for proportions (accuracy, a class's
recall), a percentile bootstrap for statistics that are not proportions (macro-F1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Z95 = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval, from n items."""
    value: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "half_width": None if self.half_width is None else round(self.half_width, 4)}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when n = 0. Honest at small n and near 0 or 1,
    where the normal approximation gives intervals outside [0, 1] or of zero width."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always holds p; rounding would leave 1.0 just outside (0.9999999999999999, 1.0)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def proportion(successes: int, n: int) -> Estimate:
    if n <= 0:
        return Estimate(None, None, None, 0)
    low, high = wilson_interval(successes, n)
    return Estimate(successes / n, low, high, n)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, rounds: int = 1000, seed: int = 0) -> Estimate:
    """Percentile bootstrap of statistic(indices) over n items resampled with replacement."""
    if n <= 0:
        return Estimate(None, None, None, 0)
    rng = np.random.default_rng(seed)
    value = float(statistic(np.arange(n)))
    draws = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)], dtype=np.float64)
    low, high = np.quantile(draws, [0.025, 0.975])
    return Estimate(value, float(low), float(high), n)
