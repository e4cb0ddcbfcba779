"""Report statistics: the paired seed-level comparison of two methods, mean ± std, Pareto fronts.

Every Δ in a report comes from :func:`seed_delta` (docs/statistics.md explains it for
readers). Pure functions (numpy + scipy), deterministic.

The comparison ``b - a`` of two methods, each trained with several seeds. Input: per seed,
per task, the per-example scores (0/1 correctness or floats) of both methods on the same
examples.

1. Per seed ``s``: ``delta_s`` = macro average over the ``T`` tasks of the within-task mean
   of ``b - a``; ``v_s = (1/T^2) sum_t var_t(b - a) / n_t`` (ddof=1) is its example-level
   variance. Seeds are the unit of replication: (seed, example) pairs are never pooled.
2. ``k >= 2`` seeds: random-effects meta-analysis of the ``delta_s``. Between-seed variance
   ``tau2`` by Paule-Mandel; weights ``w_s = 1/(v_s + tau2)``; ``mu = sum w delta / sum w``;
   plain Hartung-Knapp variance ``q / sum w`` with ``q = sum w (delta_s - mu)^2 / (k - 1)``;
   interval ``mu +- t_{k-1} sqrt(var)`` and the two-sided p-value of the same
   ``t = mu / sqrt(var)`` with ``k - 1`` df, so the interval excludes 0 exactly when
   ``p < 1 - level``.
3. ``k = 1``: normal interval from ``v_1`` alone, flagged ``seed_variance_measured=False``:
   it covers example sampling only; training randomness is unmeasured.

Why, with numbers. Simulation (``tests/test_stats.py::simulate``; table by
``scripts/stats_coverage.py``): 4 tasks of 50-200 examples, per-example difficulty shared
by both methods and all seeds, 70 % shared luck between the methods on an example
(correlated pairs), a normal method x seed shift; true delta 0; per-seed example SE 1.84
points; 3 seeds; 2000 comparisons per column; coverage % of the 95 % interval (median
half-width in points):

    tau / example SE          0          0.5        1          1.5        2          3           5
    plain HK (this module)    94.7 (3.8) 95.7 (4.3) 95.2 (5.4) 95.5 (7.0) 95.0 (8.3) 95.8 (12.3) 95.7 (19.5)
    t over per-seed deltas    94.7 (3.9) 95.7 (4.3) 95.3 (5.5) 95.7 (7.0) 95.1 (8.4) 95.8 (12.3) 95.5 (19.5)
    modified HK max(q, 1)     100 (4.7)  100 (4.9)  100 (5.5)  99.7 (7.0) 99.0 (8.3) 98.0 (12.3) 96.5 (19.5)
    hierarchical bootstrap    97.5 (2.5) 97.0 (2.6) 93.2 (2.9) 88.8 (3.3) 85.5 (3.8) 81.3 (4.9)  79.4 (7.5)
    pooled pairs              94.2 (2.1) 92.7 (2.1) 85.1 (2.2) 72.9 (2.2) 64.2 (2.2) 50.4 (2.3)  33.8 (2.4)

With 5 seeds (1000 comparisons per column): plain HK 94.8 / 93.8 / 95.7 / 95.1 / 95.5 /
94.7 / 95.2 %, modified HK 99.3 / 99.4 / 98.5 / 96.7 / 96.4 / 94.8 / 95.2 %, pooled pairs
94.6 ... 34.4 %, naive hierarchical bootstrap 97.9 ... 84.8 %. docs/statistics.md has the
full tables.

* Pooled pairs (every (seed, example) pair independent) is fine only when seeds do not
  matter; its width stays ~2 points whatever the seed spread, so coverage collapses to
  34 % when seeds dominate. Seeds must be the replication unit. A naive hierarchical
  bootstrap (seeds, then examples, with replacement) sees the seeds but understates the
  spread of 3 values (79 % when seeds dominate).
* Plain rather than modified Hartung-Knapp. The modification ``max(q, 1) / sum w`` never
  lets the variance fall below the random-effects one, but it covers 100 % whenever the
  seed effect is small (tau up to the example SE with 3 seeds), outside the 90-99 % band
  the report promises; plain HK is nominal in every regime measured. Its price: ``q ~
  chi2_{k-1} / (k-1)`` can be near 0 when a few seeds happen to agree, and the interval is
  then narrower than the example noise alone would justify (median half-width 3.8 vs 4.7
  points at tau = 0 with 3 seeds); the t_{k-1} reference pays for that on average, not in
  each comparison. A "significant" Δ resting on 3 seeds that agree closely deserves a
  look at the per-seed Δs and their example-level intervals, which the report prints.
  When all seeds give exactly the same Δ, q = 0 would give a zero-width interval; the
  module then falls back to the one-seed normal interval (see :func:`seed_delta`).
* Paule-Mandel rather than DerSimonian-Laird: the two give the same coverage (to 0.1
  point in every column, 0.4 with 5 seeds), but DerSimonian-Laird needs the fixed-effect
  weights ``1/v_s``, which do not exist when the example variance is 0 in every seed
  (every task a single example, or float scores shifted by a constant per seed).
  Paule-Mandel is defined there and reduces to the one-sample t test on the per-seed
  deltas; Veroniki et al. (2016, Res Synth Methods) recommend it over DerSimonian-Laird.
  With equal ``v_s`` the whole procedure is exactly the one-sample t test on the per-seed
  deltas; the weights matter when the seeds' example variances differ.
* The t reference with ``k - 1`` df is what makes 3 seeds honest (t_{2,0.975} = 4.30);
  with 2 seeds (t_{1,0.975} = 12.7) the interval is nearly useless: plan for >= 3,
  ideally 5.

Power (:func:`power`; exact under normal per-seed deltas with equal ``v_s``): for a true
+8 points, tau = 3 points and a per-seed example SE of 2.17 points (the same tasks), power
is 0.52 with 3 seeds, 0.94 with 5 and 1.00 with 10 (simulated detection rates in
tests/test_stats.py). One seed gives 0.84 "power" but a 25 % false-positive rate at
delta = 0 under that tau, because the seed variance is not in its interval.

Known limitation: the test examples are shared by all seeds, but the meta-analysis treats
the seeds' example noise as independent. A method x example effect that persists across
seeds (b better on some examples, worse on others) then shrinks like 1/k when it should
not. The between-seed spread does not contain it, so no choice of tau2 repairs it; the
interval speaks for "these test examples, over training randomness" rather than for the
task's population of examples. Measured (``scripts/stats_coverage.py caveat``: population
delta 0, per-example SD of the persistent effect 15 / 30 points, tau 0.7 points, 800
comparisons each): coverage 93.4 / 90.2 % at k = 3, 89.2 / 82.0 % at k = 5 and
83.9 / 66.9 % at k = 10 (the modified variant: 97.6 / 93.9 % at k = 5, 91.4 / 78.2 % at
k = 10). A crossed seed x example variance would repair it; not implemented.

Degenerate inputs: see :func:`seed_delta` (equal per-seed deltas, zero example variance)
and :func:`per_seed_deltas` (tasks with a single example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

Scores = Mapping[int, Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class SeedDelta:
    """Result of :func:`seed_delta`: the difference ``b - a`` and its interval.

    ``estimate`` is the random-effects mean of the per-seed deltas (the plain delta for one
    seed); ``low``/``high`` the interval at the requested level; ``p_value`` the two-sided
    p-value of the same statistic (so the interval excludes 0 exactly when ``p_value`` is
    below ``1 - level``). ``per_seed`` holds each seed's macro-averaged delta in ascending
    seed order, ``per_seed_sd`` their sample standard deviation (None for one seed).
    ``n_examples`` counts the examples of one seed (all tasks). ``df`` is the degrees of
    freedom of the t reference (None: normal reference). ``tau2`` is the estimated
    between-seed variance (None for one seed). ``seed_variance_measured`` is False for a
    single seed: the interval then covers example sampling only.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    per_seed: tuple[float, ...]
    per_seed_sd: float | None
    n_seeds: int
    n_examples: int
    df: int | None
    tau2: float | None
    seed_variance_measured: bool
    method: str


def _validated(
    a: Scores, b: Scores
) -> tuple[list[int], list[str], dict[tuple[int, str], np.ndarray]]:
    """Check that ``a`` and ``b`` pair up; return seeds, tasks and the ``b - a`` arrays.

    Every seed must appear in both, every seed must have the same tasks, and each
    (seed, task) must hold the same number of finite scores in ``a`` and ``b`` and the same
    number in every seed (the same test examples). Raises ValueError naming the culprit.
    """
    seeds_a, seeds_b = set(a), set(b)
    if seeds_a != seeds_b:
        raise ValueError(
            f"seeds differ: only in a {sorted(seeds_a - seeds_b)}, only in b {sorted(seeds_b - seeds_a)}"
        )
    if not seeds_a:
        raise ValueError("no seeds given")
    seeds = sorted(seeds_a)
    tasks = sorted(a[seeds[0]])
    diffs: dict[tuple[int, str], np.ndarray] = {}
    for seed in seeds:
        tasks_a, tasks_b = set(a[seed]), set(b[seed])
        if tasks_a != tasks_b:
            raise ValueError(
                f"seed {seed}: tasks differ: only in a {sorted(tasks_a - tasks_b)}, "
                f"only in b {sorted(tasks_b - tasks_a)}"
            )
        if tasks_a != set(tasks):
            raise ValueError(
                f"seed {seed}: tasks {sorted(tasks_a)} differ from seed {seeds[0]}'s {tasks}"
            )
        if not tasks_a:
            raise ValueError(f"seed {seed}: no tasks")
        for task in tasks:
            xa = np.asarray(a[seed][task], dtype=float)
            xb = np.asarray(b[seed][task], dtype=float)
            if xa.ndim != 1 or xb.ndim != 1:
                raise ValueError(f"seed {seed}, task {task!r}: scores must be flat sequences")
            if len(xa) != len(xb):
                raise ValueError(
                    f"seed {seed}, task {task!r}: a has {len(xa)} examples, b has {len(xb)}"
                )
            if len(xa) == 0:
                raise ValueError(f"seed {seed}, task {task!r}: no examples")
            if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
                raise ValueError(f"seed {seed}, task {task!r}: non-finite score")
            first = diffs.get((seeds[0], task))
            if first is not None and len(first) != len(xa):
                raise ValueError(
                    f"seed {seed}, task {task!r}: {len(xa)} examples, seed {seeds[0]} has {len(first)}"
                )
            diffs[(seed, task)] = xb - xa
    return seeds, tasks, diffs


def _sum_sq(d: np.ndarray) -> float:
    """Sum of squared deviations of ``d`` from its mean; 0 when ``d`` is constant.

    Differences equal up to floating-point rounding (e.g. float scores all shifted by 0.1)
    count as constant, so they take the documented zero-variance path rather than a
    variance of 1e-34 and an interval of width 1e-16.
    """
    spread = float(np.ptp(d))
    if spread <= 8 * np.finfo(float).eps * float(np.abs(d).max()):
        return 0.0
    return float(((d - d.mean()) ** 2).sum())


def per_seed_deltas(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's macro-averaged delta ``b - a`` and its example-level variance.

    For seed ``s`` over its ``T`` tasks: ``delta_s = (1/T) sum_t mean_t(b - a)`` and
    ``v_s = (1/T^2) sum_t var_t(b - a) / n_t`` with the sample variance (ddof=1). A task
    with a single example has no variance of its own; it borrows the seed's pooled
    within-task variance, ``sum (n_t - 1) var_t / sum (n_t - 1)`` over its tasks with two or
    more examples, because that is the best available estimate of the example noise on
    that seed. If no task of the seed has two examples, ``v_s`` is NaN (unknown). Returns
    two arrays in ascending seed order. Raises ValueError as :func:`seed_delta` does.
    """
    seeds, tasks, diffs = _validated(a, b)
    deltas = np.empty(len(seeds))
    variances = np.empty(len(seeds))
    for i, seed in enumerate(seeds):
        cells = [diffs[(seed, task)] for task in tasks]
        sums_sq = [_sum_sq(d) for d in cells]
        dof = sum(len(d) - 1 for d in cells)
        pooled = sum(sums_sq) / dof if dof > 0 else math.nan
        total = 0.0
        for d, ss in zip(cells, sums_sq, strict=True):
            var_t = ss / (len(d) - 1) if len(d) > 1 else pooled
            total += var_t / len(d)
        deltas[i] = math.fsum(float(d.mean()) for d in cells) / len(tasks)
        variances[i] = total / len(tasks) ** 2
    return deltas, variances


def _q_statistic(deltas: np.ndarray, variances: np.ndarray, tau2: float) -> float:
    """Generalized Q: ``sum w (delta - mu_w)^2`` with ``w = 1/(v + tau2)``.

    Seeds with ``v + tau2 == 0`` get infinite weight; Q is then +inf if the deltas of those
    seeds are not all equal to the weighted mean, the limit as ``tau2`` falls to 0.
    """
    total = variances + tau2
    exact = total == 0
    if exact.any():
        anchors = deltas[exact]
        if np.ptp(anchors) > 0:
            return math.inf
        mu = float(anchors[0])
        rest = ~exact
        return float(((deltas[rest] - mu) ** 2 / total[rest]).sum())
    w = 1.0 / total
    mu = float((w * deltas).sum() / w.sum())
    return float((w * (deltas - mu) ** 2).sum())


def paule_mandel_tau2(deltas: Sequence[float], variances: Sequence[float]) -> float:
    """Paule-Mandel between-study variance: the ``tau2 >= 0`` that makes Q equal ``k - 1``.

    ``Q(tau2) = sum w (delta - mu_w)^2`` with ``w = 1/(v + tau2)`` falls monotonically in
    ``tau2``, so the root is unique; it is 0 when ``Q(0) <= k - 1``. The root lies below
    the sample variance of the deltas (there every ``w <= 1/tau2``), which brackets it.
    Zero within-study variances are allowed (Q(0) is then +inf unless the deltas agree).
    """
    d = np.asarray(deltas, dtype=float)
    v = np.asarray(variances, dtype=float)
    k = len(d)
    if k < 2:
        raise ValueError("Paule-Mandel needs at least two studies")
    if _q_statistic(d, v, 0.0) <= k - 1:
        return 0.0
    upper = float(d.var(ddof=1))
    # Q(0) > k-1 implies the deltas differ, so upper > 0; a tiny positive lower end keeps
    # Q finite when some within-study variance is exactly 0.
    lower = 0.0 if (v > 0).all() else upper * 1e-15

    def excess(tau2: float) -> float:
        return _q_statistic(d, v, tau2) - (k - 1)

    if excess(upper) >= 0:  # rounding at the bracket's end
        return upper
    if excess(lower) <= 0:
        return lower
    return float(optimize.brentq(excess, lower, upper, xtol=1e-300, rtol=1e-12))


def _t_result(mu: float, var: float, df: int | None, level: float) -> tuple[float, float, float]:
    """Interval and two-sided p-value from the one statistic ``mu / sqrt(var)``.

    ``df=None`` uses the normal reference. Zero variance gives the point interval
    ``[mu, mu]`` and ``p = 1`` if ``mu == 0`` else ``0`` (the limits of both), keeping the
    interval-excludes-0 and ``p < 1 - level`` decisions identical. Infinite variance gives
    ``(-inf, inf)`` and ``p = 1``.
    """
    if var == 0:
        return mu, mu, 1.0 if mu == 0 else 0.0
    if not math.isfinite(var):
        return -math.inf, math.inf, 1.0
    se = math.sqrt(var)
    upper = 0.5 + level / 2
    # scipy.special rather than frozen scipy.stats objects: same functions, 20x cheaper.
    if df is None:
        crit, p = float(special.ndtri(upper)), float(2 * special.ndtr(-abs(mu) / se))
    else:
        crit, p = float(special.stdtrit(df, upper)), float(2 * special.stdtr(df, -abs(mu) / se))
    return mu - crit * se, mu + crit * se, p


def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(special.stdtrit(df, 0.5 + level / 2))


def _usable_variances(variances: np.ndarray) -> np.ndarray:
    """The ``v_s`` used as weights: zeros borrowed from the other seeds, NaN read as 0.

    A seed whose differences are all equal (e.g. identical predictions on that seed) has
    an observed example variance of 0, which would give it infinite weight and collapse
    the interval onto its delta whatever the other seeds say; it borrows the mean ``v`` of
    the seeds with a positive one instead, since the test examples are the same. Unknown
    example noise (NaN: every task has one example, so in every seed) counts as 0: the
    between-seed spread, which contains that noise, then carries all of the uncertainty.
    Only when every seed has zero variance does a zero survive (nothing varies there).
    """
    v = np.nan_to_num(variances, nan=0.0)
    positive = v > 0
    if positive.any() and not positive.all():
        v = np.where(positive, v, v[positive].mean())
    return v


def seed_delta(a: Scores, b: Scores, level: float = 0.95) -> SeedDelta:
    """Estimate ``b - a`` from per-seed, per-task, per-example paired scores.

    ``a[seed][task]`` and ``b[seed][task]`` are the per-example scores (0/1 correctness or
    any float score) of the two methods on the same examples in the same order. Each seed
    is summarized by its macro-averaged delta and example-level variance
    (:func:`per_seed_deltas`); the seeds are combined by a random-effects meta-analysis
    with the Paule-Mandel between-seed variance and the plain Hartung-Knapp t interval
    with ``k - 1`` degrees of freedom; the p-value comes from the same t statistic. With one
    seed the interval is normal and covers example sampling only
    (``seed_variance_measured=False``).

    Degenerate inputs. If every seed has the same delta (up to rounding), the seeds carry no
    information beyond one seed's examples (they are the same examples), and plain
    Hartung-Knapp would give a zero-width interval; the interval is then the normal one
    from the seeds' mean example variance, as for one seed (the ``method`` text says so).
    If that variance is 0 too (e.g. identical methods), the interval is the point
    ``[delta, delta]`` with ``p = 1`` for a zero delta and ``p = 0`` otherwise. A single
    zero-variance seed among others borrows their variance (:func:`_usable_variances`).
    Raises ValueError with a one-line message naming the seed/task on any mismatch.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    deltas, variances = per_seed_deltas(a, b)
    k = len(deltas)
    n_examples = sum(len(a[min(a)][t]) for t in a[min(a)])
    per_seed = tuple(float(x) for x in deltas)
    sd = None if k == 1 else float(np.std(deltas, ddof=1))
    if k == 1 or _sum_sq(deltas) == 0:
        mean_v = float(np.mean(variances))  # NaN: no task with two examples
        var = math.inf if math.isnan(mean_v) else mean_v
        low, high, p = _t_result(per_seed[0], var, None, level)
        if k == 1:
            method = "normal interval from example sampling only (1 seed; training randomness unmeasured)"
        else:
            method = (
                f"all {k} seeds gave the same delta: normal interval from example sampling "
                "only (the seeds share their test examples)"
            )
        return SeedDelta(
            estimate=per_seed[0],
            low=low,
            high=high,
            p_value=p,
            per_seed=per_seed,
            per_seed_sd=0.0 if k > 1 else None,
            n_seeds=k,
            n_examples=n_examples,
            df=None,
            tau2=None if k == 1 else 0.0,
            seed_variance_measured=k > 1,
            method=method,
        )
    v = _usable_variances(variances)
    tau2 = paule_mandel_tau2(deltas, v)
    # The deltas differ, so Q(0) > 0 and v + tau2 > 0 for every seed (a zero v survives
    # _usable_variances only when every v is 0, and then Q(0) is infinite and tau2 > 0).
    w = 1.0 / (v + tau2)
    mu = float((w * deltas).sum() / w.sum())
    q = float((w * (deltas - mu) ** 2).sum()) / (k - 1)
    var = q / float(w.sum())  # plain Hartung-Knapp: no max(q, 1) floor (module docstring)
    low, high, p = _t_result(mu, var, k - 1, level)
    return SeedDelta(
        estimate=mu,
        low=low,
        high=high,
        p_value=p,
        per_seed=per_seed,
        per_seed_sd=sd,
        n_seeds=k,
        n_examples=n_examples,
        df=k - 1,
        tau2=float(tau2),
        seed_variance_measured=True,
        method=f"random effects over {k} seeds (Paule-Mandel tau2, Hartung-Knapp t, df={k - 1})",
    )


def power(
    true_delta: float,
    n_seeds: int,
    example_var: float,
    seed_var: float,
    level: float = 0.95,
) -> float:
    """Probability that :func:`seed_delta` excludes 0 (two-sided) when the truth is ``true_delta``.

    Model: each seed's delta is ``N(true_delta, example_var + seed_var)``, independent
    across seeds, with the same ``example_var`` (the ``v_s`` of :func:`per_seed_deltas`,
    known) for every seed; ``seed_var`` is the between-seed variance tau^2. With equal
    ``v_s`` the weights are equal and the plain Hartung-Knapp variance is ``s^2 / k``
    (``s^2`` the sample variance of the deltas) whatever Paule-Mandel estimates, so the
    test is the one-sample t test on the per-seed deltas: its power is that of a noncentral
    t with ``k - 1`` df and noncentrality ``true_delta / sqrt((example_var + seed_var) / k)``.
    For one seed the test is ``|delta| > z sqrt(v)`` while the delta varies with
    ``v + tau2`` (so its size exceeds the level whenever ``tau2 > 0``).
    """
    if n_seeds < 1:
        raise ValueError("n_seeds must be at least 1")
    if example_var < 0 or seed_var < 0:
        raise ValueError("variances must be non-negative")
    total = example_var + seed_var
    if total == 0:
        return 0.0 if true_delta == 0 else 1.0
    tail = 0.5 + level / 2
    if n_seeds == 1:
        if example_var == 0:  # a point interval, which excludes 0 almost surely
            return 1.0
        sd = math.sqrt(total)
        half = float(stats.norm.ppf(tail)) * math.sqrt(example_var)
        return float(
            stats.norm.sf((half - true_delta) / sd) + stats.norm.cdf((-half - true_delta) / sd)
        )
    df = n_seeds - 1
    crit = float(stats.t.ppf(tail, df))
    nc = abs(true_delta) / math.sqrt(total / n_seeds)  # the power is symmetric in the sign
    near = float(stats.nct.sf(crit, df, nc))
    # The far tail P(T < -crit) is below P(T < 0) = Phi(-nc); scipy's noncentral t returns
    # NaN there for large nc (e.g. df 4, nc 10), where that bound is below 1e-23.
    far = float(stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(far):
        far = 0.0
    return min(1.0, near + min(far, float(stats.norm.cdf(-nc))))


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
