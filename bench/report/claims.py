"""The report's "Against the papers' claims" section: each claim as a paired comparison.

A claim names methods, not labels. Which run of a method it compares is chosen by
:func:`choose_point` from the records' configurations, so renaming or reordering labels
never changes a verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorabench.report.data import (
    NA,
    ReportData,
    compare,
    fmt,
    fmt_comparison,
    md_cell,
    md_table,
)

#: the claims and ablations, as data (claims.toml beside this module)
CLAIMS_DATA = tomllib.loads((Path(__file__).parent / "claims.toml").read_text())
SIGNIFICANCE = float(CLAIMS_DATA["significance"])
CLAIM_HEADERS = (
    "claim (paper)", "compared (configuration)", "measured Δ (points)", "95% CI", "p",
    "per-seed Δ (sd)", "trainable params", "verdict",
)  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """One paper claim: ``candidate - reference`` (each reference method its own row)."""

    text: str
    candidate: str
    references: tuple[str, ...]
    task: str | None = None
    paper_param_percent: float | None = None
    candidate_config: dict[str, Any] = field(default_factory=dict)
    reference_config: dict[str, Any] = field(default_factory=dict)


def _claim(entry: dict) -> Claim:
    reference = entry["reference"]
    return Claim(
        text=entry["text"],
        candidate=entry["candidate"],
        references=(reference,) if isinstance(reference, str) else tuple(reference),
        task=entry.get("task"),
        paper_param_percent=entry.get("paper_param_percent"),
        candidate_config=dict(entry.get("candidate_config") or {}),
        reference_config=dict(entry.get("reference_config") or {}),
    )


CLAIMS = tuple(_claim(entry) for entry in CLAIMS_DATA["claim"])


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in config.items()
    )


def _identity(runs: list[dict]) -> tuple[str, str]:
    """A label-free sort key: the run configuration without its names, then the results."""
    config = {k: v for k, v in (runs[0].get("config") or {}).items() if k not in ("label", "sweep")}
    results = [
        (run.get("seed"), ((run.get("metrics") or {}).get("eval") or {}).get("per_example"))
        for run in runs
    ]
    digest = hashlib.sha256(json.dumps(results, sort_keys=True, default=str).encode()).hexdigest()
    return json.dumps(config, sort_keys=True, default=str), digest


def choose_point(data: ReportData, method: str, config: dict[str, Any]) -> str | None:
    """The label whose runs a claim compares for ``method``, chosen by rule (not by label).

    1. Labels of ``method`` with ok runs whose method config has every field of ``config``
       (the paper's configuration) at that value.
    2. A sweep point only if every field it sweeps is in ``config``: a point of a sweep
       over another field (e.g. ``r`` when the claim fixes ``num_experts``) is not the
       paper's configuration, only one value of an ablation.
    3. Nearest the suite's parameter budget (when the records carry one).
    4. Then a label-free key: the run configuration without label and sweep group, then a
       digest of the per-example results. Runs that tie up to here have the same
       configuration: they are the same experiment under different labels.
    """
    candidates = []
    for label in data.labels:
        runs = data.ok_runs[label]
        if data.methods[label] != method or not runs:
            continue
        run_config = runs[0].get("config") or {}
        method_config = run_config.get("method_config") or {}
        if any(method_config.get(k, object()) != v for k, v in config.items()):
            continue
        swept = ((run_config.get("sweep") or {}).get("values")) or {}
        if any(k not in config for k in swept):
            continue
        budget = (runs[0].get("metrics") or {}).get("budget") or {}
        target, reached = budget.get("target"), budget.get("reached")
        off_budget = (
            abs(reached - target) / target
            if isinstance(target, int | float) and isinstance(reached, int | float) and target
            else 0.0
        )
        candidates.append((off_budget, _identity(runs), label))
    return min(candidates)[2] if candidates else None


def claims_section(data: ReportData) -> list[str]:
    """The "Against the papers' claims" section: each claim tested by a paired comparison."""
    rows = []
    for claim in CLAIMS:
        candidate = choose_point(data, claim.candidate, claim.candidate_config)
        chosen = [(m, choose_point(data, m, claim.reference_config)) for m in claim.references]
        found = [(m, lb) for m, lb in chosen if lb] or [(claim.references[0], None)]
        for method, reference in found:
            rows.append(_claim_row(data, claim, candidate, method, reference))
    ranked = sorted(
        (lb for lb in data.labels if math.isfinite(data.stat(lb, "accuracy")[0])),
        key=lambda lb: (-round(data.stat(lb, "accuracy")[0], 6), lb),
    )
    shown = [data.mean(lb, "accuracy", ".2f", 100) for lb in ranked]
    ordering = "".join(
        (("" if i == 0 else " = " if shown[i] == shown[i - 1] else " > ") + f"{lb} ({shown[i]})")
        for i, lb in enumerate(ranked)
    )
    return [
        "## Against the papers' claims",
        "",
        f"{CLAIMS_DATA['papers']} A claim *agrees* when the measured paired difference has "
        f"the claimed sign and p < {SIGNIFICANCE} (the seed-level test of the summary; "
        "equivalently, the 95% CI excludes 0).",
        "",
        "Which runs a claim compares is chosen by a rule, not by label: for each method, the "
        "runs at the paper's configuration (the fields after *at*; the others are the "
        "suite's own settings, such as the budget knob); a sweep point only when every field "
        "it sweeps is one of those; then the run nearest the suite's parameter budget.",
        "",
        md_table(CLAIM_HEADERS, rows),
        "",
        f"Measured ordering by mean macro accuracy % (not a test; see the Δ columns): "
        f"{ordering or NA}.",
        "",
        f"Caveat: {_setting(data)} cannot confirm or refute claims made for 7B models on real "
        "benchmarks; agreement or disagreement here is evidence about this setting only.",
        "",
    ]


def _setting(data: ReportData) -> str:
    """E.g. "a 0.92M-parameter model (tiny) on the embedded synthetic tasks"."""
    sizes = {r["metrics"].get("base_params") for r in data.records.runs if r.get("status") == "ok"}
    models = sorted({str((r.get("config") or {}).get("model")) for r in data.records.runs})
    size = f"{max(sizes) / 1e6:.2f}M-parameter" if sizes and None not in sizes else "small"
    tasks = (
        "the embedded synthetic tasks"
        if data.tasks and all(t.startswith("lb_") for t in data.tasks)
        else "these tasks"
    )
    return f"a {size} model ({', '.join(models)}) on {tasks}"


def _side(label: str | None, method: str, config: dict[str, Any]) -> str:
    at = f" at {_config_text(config)}" if config else ""
    return f"{label}{at}" if label else f"({method}: no ok run{at})"


def _missing(data: ReportData, method: str, config: dict[str, Any]) -> str:
    """Why no run of ``method`` could be chosen."""
    labels = [lb for lb in data.labels if data.methods[lb] == method]
    if not labels:
        return f"no {method} run"
    if not any(data.ok_runs[lb] for lb in labels):
        return f"no ok run of {method}"
    return f"no {method} run at {_config_text(config)}"


def _claim_row(
    data: ReportData,
    claim: Claim,
    candidate: str | None,
    reference_method: str,
    reference: str | None,
) -> list[str]:
    """One claims-table row: ``candidate - reference`` paired, with a generated verdict."""
    compared = (
        f"{_side(candidate, claim.candidate, claim.candidate_config)} vs "
        f"{_side(reference, reference_method, claim.reference_config)}"
        + (f" on {claim.task}" if claim.task else "")
    )
    compared = md_cell(compared)
    missing = [
        _missing(data, method, config)
        for method, config, label in (
            (claim.candidate, claim.candidate_config, candidate),
            (reference_method, claim.reference_config, reference),
        )
        if not label
    ]
    if claim.task and claim.task not in data.tasks:
        missing.append(f"no task {claim.task}")
    result = None
    if not missing:
        result = compare(data.ok_runs[reference], data.ok_runs[candidate], claim.task)
    if result is None:
        why = "; ".join(missing) or "no paired seeds"
        return [claim.text, compared, NA, NA, NA, NA, NA, f"not testable ({why})"]
    cells = fmt_comparison(result)
    reference_params = data.stat(reference, "trainable_params")[0]
    ratio = (
        data.stat(candidate, "trainable_params")[0] / reference_params
        if reference_params > 0
        else math.nan
    )
    params = f"{fmt(100 * ratio, '.2f')}% of {reference}"
    if claim.paper_param_percent is not None:
        params += f" (paper: {claim.paper_param_percent:.2f}%)"
    significant = result.p_value < SIGNIFICANCE
    # the sign as the table prints it: a Δ that shows as +0.00 (equal accuracies, up to
    # floating-point noise in the weighting) is no advantage
    positive = round(result.delta_points, 2) > 0
    if positive and significant:
        verdict = "agrees"
    elif positive:
        verdict = f"does not agree: claimed sign, not significant (p ≥ {SIGNIFICANCE})"
    elif significant:
        verdict = "does not agree: significant difference in the opposite direction"
    else:
        verdict = "does not agree: no advantage measured"
    if result.result.n_seeds == 1:
        verdict += " (one seed: training randomness unmeasured)"
    return [claim.text, compared, *cells, md_cell(params), verdict]
