"""Small, exact statistics for reports: paired tests, bootstrap intervals, Pareto fronts.

Pure functions over plain sequences (numpy only, no scipy), deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mcnemar_exact(a: Sequence[int], b: Sequence[int]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes ``a`` and ``b``.

    Counts the discordant pairs (``a`` right and ``b`` wrong, and the reverse) and returns
    ``min(1, 2 * P(X <= min count))`` for ``X ~ Binomial(discordant, 1/2)``, computed
    exactly with integer binomial coefficients. No discordant pairs gives 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples (with replacement) of ``values``.

    Draws the multiplicity of each distinct value from a multinomial, which gives the
    same distribution as resampling indices but costs O(distinct values) per resample.
    """
    distinct, counts = np.unique(values, return_counts=True)
    draws = rng.multinomial(len(values), counts / len(values), size=n_resamples)
    return draws @ distinct / len(values)


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[object] | None = None,
) -> tuple[float, float, float]:
    """Mean paired difference ``b - a`` and its percentile bootstrap interval.

    Returns ``(mean_difference, low, high)``. With ``strata`` (one key per pair, e.g. the
    task), pairs are resampled within each stratum and the statistic is the unweighted
    mean over strata of the within-stratum mean difference (a macro average), so the
    interval matches a macro-averaged accuracy difference. Deterministic for ``seed``.
    Raises ValueError for samples of unequal length or no pairs.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(diffs) == 0:
        raise ValueError("paired_bootstrap_ci needs at least one pair")
    keys = [0] * len(diffs) if strata is None else list(strata)
    if len(keys) != len(diffs):
        raise ValueError("strata must give one key per pair")
    groups: dict[object, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    rng = np.random.default_rng(seed)
    estimate = 0.0
    resampled = np.zeros(n_resamples)
    for key in sorted(groups, key=str):
        group = diffs[groups[key]]
        estimate += float(group.mean())
        resampled += _resampled_means(group, n_resamples, rng)
    estimate /= len(groups)
    resampled /= len(groups)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return estimate, float(low), float(high)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values.

    The std is None for fewer than two values; the mean is NaN when there is none.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, None
    mean = math.fsum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    Each point is ``(cost, value)``: lower cost and higher value are better (e.g.
    trainable parameters and accuracy). A point is dominated when another is at least as
    good in both and strictly better in one. Points with a NaN coordinate are left out.
    """
    valid = [
        (i, float(c), float(v))
        for i, (c, v) in enumerate(points)
        if math.isfinite(float(c)) and math.isfinite(float(v))
    ]
    front = []
    for i, cost, value in valid:
        dominated = any(
            c <= cost and v >= value and (c < cost or v > value) for j, c, v in valid if j != i
        )
        if not dominated:
            front.append(i)
    return front
