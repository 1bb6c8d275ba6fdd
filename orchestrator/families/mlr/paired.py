"""Paired comparison across seeds: is setup A better than setup B on the same seeds?

Each seed gives both setups the same partial labels and initialisation stream, so the per-seed
differences are what varies; their mean, its confidence interval and the paired t-test follow
(Student's t with n - 1 degrees of freedom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    mean: float
    """Mean over seeds of a - b."""
    low: float
    high: float
    """The confidence interval of the mean (NaN with fewer than two seeds)."""
    t: float
    p_value: float
    """Two-sided paired t-test of mean 0 (NaN with fewer than two seeds or no spread)."""
    n: int


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Mean of a - b over paired samples, its `confidence` interval and the paired t-test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {a.shape} and {b.shape}")
    differences = a - b
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, math.nan, math.nan, n)
    standard_error = float(differences.std(ddof=1)) / math.sqrt(n)
    half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * standard_error
    if standard_error == 0:
        return PairedDifference(mean, mean, mean, math.nan, math.nan, n)
    t = mean / standard_error
    return PairedDifference(mean, mean - half_width, mean + half_width, t, float(2 * stats.t.sf(abs(t), n - 1)), n)
