"""The report's "Task protocol" section, for records whose tasks come from a built-in task
source (``env.task_sources``, e.g. ``commonsense``): where each split comes from, its sizes,
how many test items were scored, and the metric each task is ranked on.

Records of a tasks folder or of lm-eval's registry carry no ``task_sources``; for them the
section is empty, so their reports are unchanged.
"""

from __future__ import annotations

from lorabench.report.data import ReportData, md_cell, md_table

PROTOCOL_HEADERS = (
    "task", "metric", "train", "validation", "test", "test items scored", "train from",
    "test from",
)  # fmt: skip


def protocol_section(data: ReportData) -> list[str]:
    sources: dict[str, dict] = {}  # name → env entry (the first record that has one)
    for record in data.records.runs:
        for name, entry in ((record.get("env") or {}).get("task_sources") or {}).items():
            sources.setdefault(name, entry)
    if not sources:
        return []
    ok = [r for r in data.records.runs if r.get("status") == "ok"]
    metrics = _per_task(ok, lambda r, t: r["metrics"]["eval"]["metric"][t].split(",")[0])
    scored = _per_task(ok, lambda r, t: str(len(r["metrics"]["eval"]["per_example"][t])))
    lines = ["## Task protocol", ""]
    for name, entry in sorted(sources.items()):
        packages = "; ".join(
            f"`{package}=={p['version']}` (`{p['wheel']}`, sha256 `{p['sha256']}`)"
            for package, p in sorted(entry["packages"].items())
        )
        protocol = entry.get("protocol") or {}
        lines += [
            f"Tasks from the built-in task source `{name}` (format {entry.get('format')}, "
            f"split seed {entry.get('split_seed')}), converted from {packages}; the converted "
            f"data's manifest has sha256 `{entry.get('manifest_sha256')}`.",
            "",
        ]
        lines += [
            f"- {key}: {protocol[key]}" for key in ("validation", "disjoint") if key in protocol
        ]
        rows = []
        for task, sizes in sorted(entry.get("tasks", {}).items()):
            rows.append([
                task, metrics.get(task, "–"),
                *(f"{sizes[s]:,}" for s in ("train", "validation", "test")),
                scored.get(task, "–"), md_cell(sizes.get("train_from", "–")),
                md_cell(sizes.get("test_from", "–")),
            ])  # fmt: skip
        lines += ["", md_table(PROTOCOL_HEADERS, rows), ""]
    ranked = sorted({m for m in metrics.values()})
    named = "; ".join(
        f"{m} for {', '.join(t for t, mm in sorted(metrics.items()) if mm == m)}" for m in ranked
    )
    seeds = sorted({str(r["config"]["eval"].get("limit_seed")) for r in ok} - {"None"})
    lines += [
        "Training uses the train parts; the validation parts are for learning-rate selection; "
        "every score above is on the test parts. Each task is ranked on lm-eval's "
        f"leaderboard metric ({named or '–'}), and the macro average is their unweighted mean.",
        "",
    ]
    if seeds:
        lines += [
            f"Test items scored: a random subset per task drawn with seed {', '.join(seeds)} "
            "(`eval.limit_seed`), the same items for every method and seed.",
            "",
        ]
    return lines


def _per_task(records: list[dict], get) -> dict[str, str]:
    """``{task: the distinct values of get(record, task) over records, joined}``."""
    found: dict[str, set[str]] = {}
    for record in records:
        for task in (record["metrics"].get("eval") or {}).get("per_task") or {}:
            try:
                found.setdefault(task, set()).add(get(record, task))
            except (KeyError, TypeError):
                continue
    return {task: " / ".join(sorted(values)) for task, values in found.items()}
