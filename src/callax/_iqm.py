"""Aggregate scores over seeds as Agarwal et al. (2021), "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", recommend: the interquartile mean (IQM) with a 95 %
stratified-bootstrap confidence interval. NumPy only (``callax summary`` needs no SciPy).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["interquartile_mean", "stratified_bootstrap_ci"]


def interquartile_mean(scores: ArrayLike) -> float:
    """The mean of the middle 50 % of all scores (``scores[runs, tasks]`` or any shape,
    flattened): sorted, ``floor(n / 4)`` scores cut from each end, the rest averaged (the
    25 % trimmed mean, as ``scipy.stats.trim_mean(scores, 0.25, axis=None)``)."""
    flat = np.sort(np.asarray(scores, np.float64).reshape(-1))
    n = flat.size
    if n == 0:
        return math.nan
    cut = int(0.25 * n)
    return float(flat[cut:n - cut].mean())


def stratified_bootstrap_ci(scores: ArrayLike, *, statistic=interquartile_mean,
                            reps: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """The percentile confidence interval of `statistic` over ``scores[runs, tasks]``
    (a 1-D array is one task) by stratified bootstrap: each replicate resamples the runs
    of every task with replacement, independently per task (the task is the stratum),
    and computes `statistic` on the resampled matrix. Draws ``reps`` replicates from
    ``numpy.random.default_rng(seed)``, task by task (``integers(0, runs, (reps, runs))``
    for each task in order), so the result is reproducible."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    runs, tasks = scores.shape
    if runs == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    # resampled[r, i, t] = scores[index[t][r, i], t]
    resampled = np.empty((reps, runs, tasks))
    for t in range(tasks):
        index = rng.integers(0, runs, size=(reps, runs))
        resampled[:, :, t] = scores[index, t]
    stats = np.array([statistic(resampled[r]) for r in range(reps)])
    alpha = (1.0 - confidence) / 2
    low, high = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)
