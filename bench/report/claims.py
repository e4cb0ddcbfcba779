"""The report's "Against the papers' claims" section: each claim as a paired comparison."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from lorabench.report.data import NA, ReportData, compare, fmt, fmt_comparison, md_table

#: the claims and ablations, as data (claims.toml beside this module)
CLAIMS_DATA = tomllib.loads((Path(__file__).parent / "claims.toml").read_text())
SIGNIFICANCE = float(CLAIMS_DATA["significance"])
CLAIM_HEADERS = (
    "claim (paper)", "compared", "measured Δ (points)", "95% CI", "McNemar p",
    "trainable params", "verdict",
)  # fmt: skip
#: (claim, candidate method, reference method, task or None, paper's parameter % or None)
CLAIMS = tuple(
    (c["text"], c["candidate"], c["reference"], c.get("task"), c.get("paper_param_percent"))
    for c in CLAIMS_DATA["claim"]
)


def claims_section(data: ReportData) -> list[str]:
    """The "Against the papers' claims" section: each claim tested by a paired comparison."""
    specs = []
    for claim, candidate, reference, task, paper_percent in CLAIMS:
        references = [lb for lb in data.labels if data.methods[lb].startswith(reference)]
        if reference != "moe-lora":  # every MoE-LoRA variant is compared; else one label
            references = [data.label_for(reference)]
        for label in references or [None]:
            compared = f"{data.label_for(candidate) or f'({candidate}: no run)'} vs "
            compared += (label or f"({reference}: no run)") + (f" on {task}" if task else "")
            specs.append((claim, compared, data.label_for(candidate), label, task, paper_percent))
    rows = [_claim_row(data, *spec) for spec in specs]
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
        f"the claimed sign and McNemar p < {SIGNIFICANCE}.",
        "",
        md_table(CLAIM_HEADERS, rows),
        "",
        f"Measured ordering by macro accuracy %: {ordering or NA}.",
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


def _claim_row(
    data: ReportData,
    claim: str,
    compared: str,
    candidate: str | None,
    reference: str | None,
    task: str | None,
    paper_param_percent: float | None,
) -> list[str]:
    """One claims-table row: ``candidate - reference`` paired, with a generated verdict."""
    missing = [name for name, lb in (("candidate", candidate), ("reference", reference)) if not lb]
    if task and task not in data.tasks:
        missing.append(f"task {task}")
    result = None
    if not missing:
        result = compare(data.ok_runs[reference], data.ok_runs[candidate], task)
    if result is None:
        why = f"missing {', '.join(missing)}" if missing else "no paired ok runs"
        return [claim, compared, NA, NA, NA, NA, f"not testable ({why})"]
    delta, ci, p = fmt_comparison(result)
    reference_params = data.stat(reference, "trainable_params")[0]
    ratio = (
        data.stat(candidate, "trainable_params")[0] / reference_params
        if reference_params > 0
        else math.nan
    )
    params = f"{fmt(100 * ratio, '.2f')}% of {reference}"
    if paper_param_percent is not None:
        params += f" (paper: {paper_param_percent:.2f}%)"
    if result.delta_points > 0 and result.p_value < SIGNIFICANCE:
        verdict = "agrees"
    elif result.delta_points > 0:
        verdict = f"does not agree: claimed sign, not significant (p ≥ {SIGNIFICANCE})"
    elif result.p_value < SIGNIFICANCE:
        verdict = "does not agree: significant difference in the opposite direction"
    else:
        verdict = "does not agree: no advantage measured"
    return [claim, compared, delta, ci, p, params, verdict]
