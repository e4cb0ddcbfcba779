"""Coverage and width of candidate intervals for a paired Δ over seeds (dev tool, not a test).

Reproduces the table in docs/statistics.md and in lorabench.report.stats' docstring:

    python scripts/stats_coverage.py [REPS] [N_SEEDS]     # defaults: 2000 comparisons, 3 seeds
    python scripts/stats_coverage.py caveat [REPS]        # the shared-examples caveat (800)

The data come from ``tests/test_stats.py::simulate`` (true Δ = 0, a method x seed shift
with standard deviation tau, correlated pairs, 4 tasks of 50-200 examples). For each tau
(a multiple of the per-seed example-level SE) it prints the coverage % of the nominal 95 %
interval and its median half-width in points, for:

* pooled pairs: every (seed, example) pair independent (task-stratified normal interval);
* naive hierarchical bootstrap: resample seeds with replacement, then examples within
  each task of each drawn seed; percentile interval (1000 resamples);
* t over per-seed Δs: one-sample t interval on the k per-seed macro Δs (k - 1 df);
* plain HK: :func:`lorabench.report.stats.seed_delta` (Paule-Mandel, Hartung-Knapp);
* modified HK: the same with the variance floored at ``1 / sum w`` (``max(q, 1)``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_stats import expected_example_var, pooled_interval, simulate  # noqa: E402

from lorabench.report.stats import paule_mandel_tau2, per_seed_deltas, seed_delta  # noqa: E402

RATIOS = (0, 0.5, 1, 1.5, 2, 3, 5)
BOOTSTRAP = 1000


def modified_hk(deltas: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    k = len(deltas)
    tau2 = paule_mandel_tau2(deltas, v)
    w = 1 / (v + tau2)
    mu = float((w * deltas).sum() / w.sum())
    q = float((w * (deltas - mu) ** 2).sum()) / (k - 1)
    half = stats.t.ppf(0.975, k - 1) * math.sqrt(max(q, 1.0) / w.sum())
    return mu - half, mu + half


def t_over_seeds(deltas: np.ndarray) -> tuple[float, float]:
    k = len(deltas)
    half = stats.t.ppf(0.975, k - 1) * deltas.std(ddof=1) / math.sqrt(k)
    return deltas.mean() - half, deltas.mean() + half


def hierarchical_bootstrap(a, b, rng: np.random.Generator) -> tuple[float, float]:
    """Seeds with replacement, then examples within task within each drawn seed."""
    seeds = sorted(a)
    tasks = sorted(a[seeds[0]])
    k, draws = len(seeds), BOOTSTRAP * len(seeds)
    macro = np.zeros((k, draws))  # macro Δ of seed i under example resample j
    for i, s in enumerate(seeds):
        for t in tasks:
            d = np.asarray(b[s][t], float) - np.asarray(a[s][t], float)
            values, counts = np.unique(d, return_counts=True)
            picks = rng.multinomial(len(d), counts / len(d), size=draws)
            macro[i] += picks @ values / len(d)
    macro /= len(tasks)
    chosen = rng.integers(0, k, size=(BOOTSTRAP, k))
    slots = np.arange(draws).reshape(BOOTSTRAP, k)
    replicates = macro[chosen, slots].mean(axis=1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return float(low), float(high)


def simulate_persistent(rng, k, sigma_g, sigma_e, sizes=(50, 90, 140, 200), rho=0.7):
    """Like ``simulate`` plus a method x example effect (SD ``sigma_e``) shared by all seeds."""
    n = sum(sizes)
    q = rng.uniform(0.15, 0.85, size=n)
    e = rng.normal(0, sigma_e, size=n)
    g = rng.normal(0, sigma_g, size=(2, k, 1))
    pa = np.clip(q + g[0] - e / 2, 0, 1)
    pb = np.clip(q + g[1] + e / 2, 0, 1)
    ua = rng.random((k, n))
    ub = np.where(rng.random((k, n)) < rho, ua, rng.random((k, n)))
    bounds = np.cumsum((0, *sizes))

    def nest(c):
        return {
            s: {
                f"t{i}": c[s, lo:hi]
                for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
            }
            for s in range(k)
        }

    return nest((ua < pa).astype(int)), nest((ub < pb).astype(int))


def caveat(reps: int) -> None:
    """Coverage when b - a has a per-example effect that persists across seeds."""
    for k in (3, 5, 10):
        for sigma_e in (0.15, 0.3):
            rng = np.random.default_rng(5)
            covered = 0
            for _ in range(reps):
                r = seed_delta(*simulate_persistent(rng, k, 0.005, sigma_e))
                covered += r.low <= 0 <= r.high
            print(
                f"{k} seeds, per-example SD {100 * sigma_e:.0f} points: coverage "
                f"{100 * covered / reps:.1f} %",
                flush=True,
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "caveat":
        caveat(int(sys.argv[2]) if len(sys.argv) > 2 else 800)
        return
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    se = math.sqrt(expected_example_var(0.0))
    print(f"{k} seeds, {reps} comparisons per column, per-seed example SE {100 * se:.2f} points")
    names = (
        "pooled pairs",
        "hierarchical bootstrap",
        "t over per-seed Δs",
        "plain HK",
        "modified HK",
    )
    for ratio in RATIOS:
        tau = ratio * se
        rng = np.random.default_rng(1000 + int(ratio * 10))
        boot_rng = np.random.default_rng(77)
        covered = dict.fromkeys(names, 0)
        widths: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(reps):
            a, b = simulate(rng, k, tau / math.sqrt(2))
            deltas, v = per_seed_deltas(a, b)
            ours = seed_delta(a, b)
            intervals = {
                "pooled pairs": pooled_interval(a, b),
                "hierarchical bootstrap": hierarchical_bootstrap(a, b, boot_rng),
                "t over per-seed Δs": t_over_seeds(deltas),
                "plain HK": (ours.low, ours.high),
                "modified HK": modified_hk(deltas, v),
            }
            for name, (low, high) in intervals.items():
                covered[name] += low <= 0 <= high
                widths[name].append(high - low)
        cells = "  ".join(
            f"{n}: {100 * covered[n] / reps:.1f} ({100 * np.median(widths[n]) / 2:.1f})"
            for n in names
        )
        print(f"tau/SE {ratio:>3} (tau {100 * tau:.2f} pts)  {cells}", flush=True)


if __name__ == "__main__":
    main()
