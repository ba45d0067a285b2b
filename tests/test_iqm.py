"""IQM and the stratified-bootstrap CI against direct computations."""

import numpy as np
import pytest

from callax._iqm import interquartile_mean, stratified_bootstrap_ci


def direct_iqm(values):
    """The middle 50 % by hand: drop the floor(n/4) smallest and largest, average."""
    values = sorted(float(v) for v in np.ravel(values))
    k = len(values) // 4
    middle = values[k:len(values) - k]
    return sum(middle) / len(middle)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 10, 11])
def test_iqm_is_the_middle_half(n):
    values = np.random.default_rng(n).normal(size=n) * 10
    assert interquartile_mean(values) == pytest.approx(direct_iqm(values), rel=1e-12)


def test_iqm_known_values():
    assert interquartile_mean([1, 2, 3, 100]) == 2.5  # 1 and 100 cut
    assert interquartile_mean([5, 1, 3]) == 3.0  # n = 3: nothing cut
    assert interquartile_mean(np.arange(8).reshape(4, 2)) == 3.5  # flattened: 2..5


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(7).exponential(size=(9, 3))
    assert interquartile_mean(values) == pytest.approx(
        stats.trim_mean(values, 0.25, axis=None), rel=1e-12)


def test_stratified_bootstrap_matches_a_direct_loop():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 3)) + np.arange(3)  # 5 runs x 3 tasks
    reps = 300
    low, high = stratified_bootstrap_ci(scores, reps=reps, seed=4)
    # Direct: the same draws (task by task), one replicate at a time, the IQM by hand.
    draw = np.random.default_rng(4)
    index = [draw.integers(0, 5, size=(reps, 5)) for _ in range(3)]
    stats = []
    for r in range(reps):
        matrix = [[scores[index[t][r, i], t] for t in range(3)] for i in range(5)]
        stats.append(direct_iqm(matrix))
    expected = np.percentile(stats, [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected), rel=1e-12)
    assert low <= interquartile_mean(scores) <= high


def test_bootstrap_of_identical_scores_is_a_point():
    assert stratified_bootstrap_ci(np.full(4, 2.5)) == (2.5, 2.5)
