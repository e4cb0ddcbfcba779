"""The report's "Against the paper's ablations" section: measured sweep shapes vs MoR's claims.

The MoR paper (arXiv 2410.13408) argues through ablations: the accuracy optimum over the
number of rank experts N and over the shared rank r, the router ranking, and how trainable
parameters grow with N for MoR against MoE-LoRA. Each claim is set beside the shape the
suite's sweeps measured (see `lorabench.report.sweeps`), with a generated verdict:

- *agrees*: the claimed shape is measured and the decisive paired difference is
  significant (p < 0.05 from the seed-level test every report Δ uses,
  `lorabench.report.stats.seed_delta`);
- *agrees in direction, not significant*: the shape matches, within noise;
- *does not agree*: the measured shape differs (and whether that is within noise).

Parameter growth is exact arithmetic, so its verdict needs no test; its table also checks
each measured count against the plugin's closed form (docs/methods.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from lorabench.errors import LorabenchError
from lorabench.report.claims import CLAIMS_DATA, SIGNIFICANCE
from lorabench.report.data import NA, ReportData, compare, fmt, fmt_comparison, md_table
from lorabench.report.sweeps import point_stats, swept_fields


@dataclass(frozen=True)
class Optimum:
    claim: str
    method: str
    field: str
    value: Any


@dataclass(frozen=True)
class Ranking:
    claim: str
    method: str
    field: str
    best: Any


@dataclass(frozen=True)
class Growth:
    claim: str
    field: str
    steep: str  # the method whose count the paper says grows steeply
    gentle: str


_KINDS = {"optimum": Optimum, "ranking": Ranking, "growth": Growth}
#: the paper's ablation claims, as data (claims.toml beside this package's claims module)
ABLATIONS = tuple(
    _KINDS[entry["kind"]](**{k: v for k, v in entry.items() if k != "kind"})
    for entry in CLAIMS_DATA["ablation"]
)
HEADERS = ("claim (paper)", "series", "measured accuracy % by value", "decisive Δ (points)",
           "95% CI", "p", "per-seed Δ (sd)", "verdict")  # fmt: skip


def ablations_section(data: ReportData) -> list[str]:
    """Empty unless the records hold a sweep that one of the paper's ablations is about."""
    fields = swept_fields(data)
    rows: list[list[str]] = []
    growth: list[str] = []
    for ablation in ABLATIONS:
        series = _series_of(data, fields.get(ablation.field, {}), ablation)
        if isinstance(ablation, Growth):
            growth = _growth_lines(data, ablation, series) if len(series) == 2 else []
            continue
        for name, points in series.items():
            rows.append(_shape_row(data, ablation, name, points))
    if not rows and not growth:
        return []
    lines = ["## Against the paper's ablations", ""]
    if rows:
        lines += [
            "Each sweep's measured shape (macro accuracy %, mean over seeds) beside the MoR "
            "paper's claim. The decisive Δ is computed like every Δ in this report (seed by "
            "seed on per-example correctness, combined over seeds; see the summary's notes): "
            "for an optimum, the claimed value minus the best other value; for a ranking, the "
            f"claimed best minus the strongest rival (by mean accuracy). *Agrees* needs "
            f"p < {SIGNIFICANCE}.",
            "",
            md_table(HEADERS, rows),
            "",
        ]
    return lines + growth


def _series_of(data: ReportData, series: dict, ablation) -> dict[str, list[tuple[Any, str]]]:
    methods = (
        (ablation.steep, ablation.gentle) if isinstance(ablation, Growth) else (ablation.method,)
    )
    return {
        name: points for name, points in series.items() if data.methods[points[0][1]] in methods
    }


def _shape_row(data: ReportData, ablation, name: str, points: list[tuple[Any, str]]) -> list[str]:
    accuracy = {value: point_stats(data, label)[0] for value, label in points}
    labels = dict(points)
    shape = " · ".join(f"{value}: {fmt(acc, '.2f')}" for value, acc in accuracy.items())
    claimed = ablation.value if isinstance(ablation, Optimum) else ablation.best
    if claimed not in labels or len(labels) < 2:
        return [ablation.claim, name, shape, NA, NA, NA, NA, f"not testable ({claimed} not swept)"]
    rival = max((v for v in accuracy if v != claimed), key=lambda v: (accuracy[v], str(v)))
    result = compare(data.ok_runs[labels[rival]], data.ok_runs[labels[claimed]])
    shape_holds = accuracy[claimed] > accuracy[rival]
    if isinstance(ablation, Optimum):
        measured = f"the peak is at {claimed if shape_holds else rival}"
        if shape_holds and claimed == max(labels):
            measured += (
                f"; values above {claimed} were not swept, so the decline beyond is untested"
            )
    else:
        order = sorted(accuracy, key=lambda v: (-accuracy[v], str(v)))
        measured = "measured order " + " > ".join(str(v) for v in order)
    cells = fmt_comparison(result)  # the summary's cells (with its † and * markers)
    return [ablation.claim, name, shape, *cells, _verdict(shape_holds, result, measured)]


def _verdict(shape_holds: bool, result, measured: str) -> str:
    if result is None:
        return f"not testable (no paired ok runs); {measured}"
    # significant only when the seed-level Δ points the way the mean accuracies do
    significant = result.p_value < SIGNIFICANCE and (result.delta_points > 0) == shape_holds
    if shape_holds:
        return ("agrees" if significant else "agrees in direction, not significant") + (
            f": {measured}"
        )
    noise = "significantly" if significant else "within noise"
    return f"does not agree: {measured} ({noise})"


def _growth_lines(data: ReportData, growth: Growth, series: dict) -> list[str]:
    """N → measured and closed-form counts for both methods, and the growth per expert."""
    by_method = {
        data.methods[points[0][1]]: (name, dict(points)) for name, points in series.items()
    }
    if set(by_method) != {growth.steep, growth.gentle}:
        return []
    values = sorted({v for _, points in by_method.values() for v in points})
    rows, mismatches = [], []
    counts: dict[str, dict[Any, float]] = {growth.steep: {}, growth.gentle: {}}
    for value in values:
        row = [str(value)]
        for method in (growth.gentle, growth.steep):
            label = by_method[method][1].get(value)
            measured = point_stats(data, label)[2] if label else math.nan
            formula = closed_form(data, label) if label else None
            counts[method][value] = measured
            if label and formula is not None and formula != measured:
                mismatches.append(f"{label}: measured {measured:,.0f}, closed form {formula:,}")
            row += [fmt(measured, ",.0f"), NA if formula is None else f"{formula:,}"]
        ratio = counts[growth.gentle][value] / counts[growth.steep][value]
        row.append(fmt(100 * ratio, ".1f"))
        rows.append(row)
    slopes = {m: _slope(c) for m, c in counts.items()}
    gentle, steep = slopes[growth.gentle], slopes[growth.steep]
    if not (math.isfinite(gentle) and math.isfinite(steep)):
        verdict = "not testable (too few swept values)"
    elif gentle < steep:
        verdict = f"agrees: {growth.gentle} grows more gently than {growth.steep}"
    else:
        verdict = f"does not agree: {growth.gentle} grows at least as steeply as {growth.steep}"
    g_name, s_name = by_method[growth.gentle][0], by_method[growth.steep][0]
    headers = [
        growth.field,
        f"{g_name} measured", f"{g_name} closed form",
        f"{s_name} measured", f"{s_name} closed form",
        f"{growth.gentle} / {growth.steep} %",
    ]  # fmt: skip
    check = (
        "Every measured count equals its closed form (docs/methods.md)."
        if not mismatches
        else "Measured counts that differ from the closed form: " + "; ".join(mismatches) + "."
    )
    return [
        f"### Parameter growth with {growth.field}",
        "",
        f"Claim (paper): {growth.claim}. Trainable parameters of the swept runs; the closed "
        "form is the plugin's formula summed over the targeted layers.",
        "",
        md_table(headers, rows),
        "",
        f"{check} Growth per added expert (least squares): {growth.gentle} "
        f"{fmt(gentle, ',.0f')}, {growth.steep} {fmt(steep, ',.0f')} parameters. "
        f"Verdict: {verdict}.",
        "",
    ]


def _slope(counts: dict[Any, float]) -> float:
    points = [(float(v), c) for v, c in counts.items() if math.isfinite(c)]
    if len(points) < 2:
        return math.nan
    xs, ys = zip(*points, strict=True)
    return statistics.linear_regression(xs, ys).slope


def closed_form(data: ReportData, label: str) -> int | None:
    """The plugin's closed-form count for ``label``'s config on its model's targets."""
    from lorabench.api.registry import build_config, get_method
    from lorabench.models.zoo import target_shapes

    run = data.ok_runs[label][0]
    config = run["config"]
    try:
        spec = get_method(run["method"])
        method_config = build_config(spec, config["method_config"])
        shapes = target_shapes(config["model"], config["targets"])
    except (LorabenchError, OSError, ValueError):  # unknown plugin, config not available offline
        return None
    if shapes is None:
        return None
    return sum(spec.param_count(method_config, d_in, d_out) for d_in, d_out in shapes)
