"""Sweeps in a report: accuracy and trainable parameters against each swept config field,
and every point of each training grid (e.g. an lr grid) with its validation score.

A sweep point's record carries ``config["sweep"] = {"group": label, "values": {field: v}}``
(see `lorabench.run.suite`). For every swept field we draw one line per series — a group with its
other swept fields held fixed — so e.g. a ``num_experts`` sweep of MoR and of MoE-LoRA share
one plot, as in the MoR paper's ablations.

A training grid's records carry ``config["train_sweep"]``; the table lists every point of
every grid method on the selection seed, its validation score, and which point
`lorabench.selection` chose (the same choice the runner made, and the main tables show).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from lorabench import selection
from lorabench.report.data import ReportData, fmt, md_cell, md_table, num
from lorabench.report.stats import mean_std

Series = dict[str, list[tuple[Any, str]]]  # series name -> [(swept value, run label)]


def swept_fields(data: ReportData) -> dict[str, Series]:
    """field -> series -> points, in a deterministic order (values sorted)."""
    fields: dict[str, dict[str, list[tuple[Any, str]]]] = defaultdict(lambda: defaultdict(list))
    for label in data.labels:
        runs = data.ok_runs.get(label) or []
        sweep = (runs[0].get("config") or {}).get("sweep") if runs else None
        if not sweep:
            continue
        values = sweep["values"]
        for field, value in values.items():
            others = "".join(f"[{k}={v}]" for k, v in values.items() if k != field)
            fields[field][sweep["group"] + others].append((value, label))
    return {
        field: {
            name: sorted(points, key=lambda p: (str(type(p[0])), p[0]))
            for name, points in sorted(series.items())
        }
        for field, series in sorted(fields.items())
    }


def point_stats(data: ReportData, label: str) -> tuple[float, float | None, float]:
    mean, std = data.stat(label, "accuracy")
    params, _ = mean_std(
        data.ok.loc[data.ok["label"] == label, "trainable_params"].astype(float).tolist()
    )
    return 100 * mean, None if std is None else 100 * std, params


def sweep_section(data: ReportData) -> list[str]:
    grid = grid_lines(data)
    lines = config_sweep_lines(data)
    if not lines and not grid:
        return []
    if not lines:
        lines = ["## Sweeps", ""]
    return lines + grid


def grid_lines(data: ReportData) -> list[str]:
    """Every training-grid point of every method, its validation score, and the choice."""
    choices = data.records.choices
    if not choices:
        return []
    fields = selection.ordered_fields({f for c in choices.values() for f in c.fields})
    by_run = {r.get("run_id"): r for r in data.records.grid}
    rows = []
    for label, choice in sorted(choices.items()):
        seeds_at_choice = sum(
            1
            for r in data.records.grid
            if r["label"] == label and r.get("status") == "ok"
            and selection.is_selected(r, choices, undecided=False)
        )  # fmt: skip
        for candidate in choice.candidates:
            record = by_run.get(candidate.run_id) or {}
            test = num((record.get("metrics") or {}).get("accuracy"))
            chosen = candidate.point == choice.point
            score = None if candidate.score is None else 100 * candidate.score
            rows.append(
                [
                    label,
                    *(str(candidate.point.get(f, "—")) for f in fields),
                    candidate.status,
                    f"**{fmt(score, '.2f')}**" if chosen else fmt(score, ".2f"),
                    fmt(100 * test, ".2f"),
                    f"chosen ({seeds_at_choice} seed(s) ok)" if chosen else "",
                ]
            )
    seeds = ", ".join(str(s) for s in sorted({c.seed for c in choices.values()}))
    return [
        f"### Training grid: {', '.join(fields)} chosen on validation",
        "",
        f"Every point of each method on the selection seed ({seeds}), scored on the tasks' "
        "validation splits (carved out of the training data, never trained on). Rule: "
        f"{md_cell(selection.RULE)}. The test accuracy of each point is shown for "
        "reference only: it takes no part in the choice. The other seeds ran at the chosen "
        "point only, and every other table of this report shows that point.",
        "",
        md_table(
            ["method", *fields, "status", "validation % (macro)", "test % (not used)", "choice"],
            rows,
        ),
        "",
    ]


def config_sweep_lines(data: ReportData) -> list[str]:
    fields = swept_fields(data)
    if not fields:
        return []
    lines = [
        "## Sweeps",
        "",
        "Macro accuracy % (mean ± std over seeds) and trainable parameters at each swept value; "
        "one series per sweep group with its other swept fields held fixed.",
        "",
    ]
    for field, series in fields.items():
        rows = []
        for name, points in series.items():
            for value, label in points:
                acc, std, params = point_stats(data, label)
                rows.append(
                    [name, str(value), f"{fmt(acc, '.2f')} ± {fmt(std, '.2f')}", f"{params:,.0f}"]
                )
        lines += [
            f"### {field}",
            "",
            md_table(["series", field, "accuracy %", "trainable params"], rows),
            "",
        ]
        lines += [f"![sweep over {field}](sweep_{field}.png)", ""]
    return lines


def write_sweep_plots(data: ReportData, out: Path, save: Any) -> None:
    """One PNG per swept field: accuracy (with std) and trainable parameters against it."""
    import matplotlib.pyplot as plt

    for field, series in swept_fields(data).items():
        fig, (acc_ax, par_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
        for n, (name, points) in enumerate(series.items()):
            numeric = all(isinstance(v, int | float) for v, _ in points)
            xs = [v if numeric else str(v) for v, _ in points]  # numbers keep their spacing
            stats = [point_stats(data, label) for _, label in points]
            acc_ax.errorbar(
                xs,
                [s[0] for s in stats],
                yerr=[s[1] or 0.0 for s in stats],
                fmt="-o",
                capsize=3,
                color=f"C{n % 10}",
                label=name,
            )
            par_ax.plot(xs, [s[2] for s in stats], "-o", color=f"C{n % 10}", label=name)
        acc_ax.set(xlabel=field, ylabel="macro accuracy %")
        par_ax.set(xlabel=field, ylabel="trainable parameters")
        acc_ax.legend(fontsize=7)
        save(fig, f"sweep_{field}.png")
