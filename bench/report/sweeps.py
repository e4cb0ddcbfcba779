"""Sweeps in a report: accuracy and trainable parameters against each swept config field.

A sweep point's record carries ``config["sweep"] = {"group": label, "values": {field: v}}``
(see `lorabench.run.suite`). For every swept field we draw one line per series — a group with its
other swept fields held fixed — so e.g. a ``num_experts`` sweep of MoR and of MoE-LoRA share
one plot, as in the MoR paper's ablations.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from lorabench.report.data import ReportData, fmt, md_table
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
