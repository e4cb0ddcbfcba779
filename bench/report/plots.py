"""The report's PNG plots (matplotlib, imported only when plots are written)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lorabench.report.data import ReportData, num
from lorabench.report.stats import pareto_front
from lorabench.report.sweeps import write_sweep_plots


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _short_number(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


#: point styles: colour C0-C9 by label index, then the marker, so up to 100 labels differ
MARKERS = "osD^v<>ph*"


HATCHES = ("", "////", "....", "xxxx")
LINESTYLES = ("-", "--", ":", "-.")


def point_style(index: int) -> tuple[str, str]:
    """The (colour, marker) of the label at ``index``; distinct for indices below 100."""
    return f"C{index % 10}", MARKERS[(index // 10) % len(MARKERS)]


def _scatter(ax: Any, points: list[tuple[int, str, float, float, float]], log_x: bool) -> None:
    """Accuracy points with std error bars, one legend entry each, and their Pareto front.

    Points are identified by the legend only (a distinct colour and marker per label, the
    handle drawn from the point itself): text labels next to points can end up beside
    the wrong point when two points are close.
    """
    if not points:
        _no_data(ax)
        return
    for index, label, x, y, err in points:
        color, marker = point_style(index)
        ax.errorbar([x], [y], yerr=[err], fmt=marker, color=color, capsize=3, ms=5, label=label)
    front = sorted(
        (points[i][2], points[i][3]) for i in pareto_front([(p[2], p[3]) for p in points])
    )
    ax.plot(
        [x for x, _ in front],
        [y for _, y in front],
        "--",
        color="grey",
        lw=1,
        label="Pareto front",
    )
    if log_x:  # ticks at 1, 2, 5 x 10^k; the margin keeps at least one in view
        from matplotlib import ticker

        xs = [p[2] for p in points]
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _short_number(v)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def accuracy_scatter(report: ReportData, column: str, xlabel: str, log_x: bool) -> Any:
    """The figure of macro accuracy against ``column`` (mean over seeds), one point per label."""
    import matplotlib.pyplot as plt

    labels = report.labels
    accuracy = {lb: report.stat(lb, "accuracy") for lb in labels}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    points = []
    for i, label in enumerate(labels):
        kind = report.ok.loc[report.ok["label"] == label, "memory_kind"]
        use = "peak_allocated_mb" if column == "peak_rss_mb" and (kind == "cuda").any() else column
        x = report.stat(label, use)[0]
        mean, std = accuracy[label]
        if math.isfinite(x) and math.isfinite(mean) and (x > 0 or not log_x):
            points.append((i, label, x, 100 * mean, 100 * (std or 0.0)))
    _scatter(ax, points, log_x)
    base = [accuracy[lb][0] for lb in labels if report.methods[lb] == "base"]
    if log_x and base and math.isfinite(base[0]):
        ax.axhline(100 * base[0], color="grey", lw=0.8, ls=":", label="base (no adapter)")
    if points:
        ax.legend(
            fontsize=6,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncol=1 if len(points) <= 14 else 2,
        )
    ax.set(xlabel=xlabel, ylabel="macro accuracy % (mean ± std)")
    return fig


def _val_curve(runs: list[dict]) -> tuple[list[float], list[float]] | None:
    """(steps, mean validation loss over the runs) of ``metrics.val_loss_curve``; only the
    runs measured at the first run's steps are averaged. None when no run has one."""
    curves = [
        r["metrics"]["val_loss_curve"]
        for r in runs
        if isinstance(r["metrics"].get("val_loss_curve"), list) and r["metrics"]["val_loss_curve"]
    ]
    if not curves:
        return None
    steps = [num(step) for step, _ in curves[0]]
    same = [c for c in curves if [num(step) for step, _ in c] == steps]
    losses = [sum(num(c[i][1]) for c in same) / len(same) for i in range(len(steps))]
    return steps, losses


def loss_curve_figure(report: ReportData) -> Any:
    """Training loss per step (mean over seeds, smoothed), and the validation loss (dashed,
    mean over seeds) where runs measured it (``[train] eval_every``), one colour per label."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = validated = False
    for i, label in enumerate(report.labels):
        runs = report.ok_runs[label]
        color, style = f"C{i % 10}", LINESTYLES[(i // 10) % len(LINESTYLES)]
        curves = [
            [num(x) for x in r["metrics"]["loss_curve"]]
            for r in runs
            if isinstance(r["metrics"].get("loss_curve"), list) and r["metrics"]["loss_curve"]
        ]
        if curves:
            mean = np.nanmean(np.array([c[: min(map(len, curves))] for c in curves]), axis=0)
            window = max(1, len(mean) // 50)
            smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
            x = np.arange(len(smooth)) + (window - 1) / 2
            # beyond 10 labels the colours repeat, so the line style changes
            ax.plot(x, smooth, label=label, color=color, ls=style, lw=1)
            drawn = True
        val = _val_curve(runs)
        if val is not None:
            # the loss after step s sits at index s of the training curve (step s + 1's loss)
            ax.plot(*val, color=color, ls="--", marker="o", ms=3, lw=1)
            validated = True
    if validated:
        ax.plot([], [], color="grey", ls="--", marker="o", ms=3, lw=1, label="validation loss")
    if drawn or validated:
        ax.legend(fontsize=7)
    else:
        _no_data(ax)
    label = "loss (training smoothed; validation dashed)" if validated else None
    ax.set(xlabel="step", ylabel=label or "training loss (smoothed)")
    return fig


def write_plots(report: ReportData, out: Path) -> list[Path]:
    """accuracy_vs_params, accuracy_vs_memory, per_task_accuracy, loss_curves (+ routing, sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100, metadata={"Software": None})
        plt.close(fig)
        written.append(out / name)

    labels = report.labels
    cuda = (report.ok["memory_kind"] == "cuda").any()
    memory_kind = "peak CUDA allocated (CUDA runs) / RSS" if cuda else "peak RSS"
    for name, column, xlabel, log_x in (
        ("accuracy_vs_params.png", "trainable_params", "trainable parameters (log)", True),
        ("accuracy_vs_memory.png", "peak_rss_mb", f"{memory_kind} (MiB)", False),
    ):
        save(accuracy_scatter(report, column, xlabel, log_x), name)

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(report.tasks) + 2), 3.5))
    with_runs = [(i, lb) for i, lb in enumerate(labels) if report.ok_runs[lb]]
    width = 0.8 / max(1, len(with_runs))
    for slot, (i, label) in enumerate(with_runs):
        heights = [100 * report.stat(label, f"acc_{t}")[0] for t in report.tasks]
        ax.bar(
            np.arange(len(report.tasks)) + slot * width,
            np.nan_to_num(heights),
            width,
            label=label,
            color=f"C{i % 10}",
            hatch=HATCHES[(i // 10) % len(HATCHES)],  # beyond 10 labels the colours repeat
        )
    if report.tasks:
        ax.set_xticks(
            np.arange(len(report.tasks)) + 0.4 - width / 2,
            report.tasks,
            rotation=30,
            ha="right",
            fontsize=7,
        )
        ax.legend(fontsize=6, ncol=2)
    else:
        _no_data(ax)
    ax.set(ylabel="accuracy %")
    save(fig, "per_task_accuracy.png")

    save(loss_curve_figure(report), "loss_curves.png")

    routed = [(lb, r) for lb, r in report.routing.items() if r is not None]
    if routed:
        fig, axes = plt.subplots(
            1, len(routed), figsize=(3.2 * len(routed) + 0.5, 3), squeeze=False
        )
        for ax, (label, routing) in zip(axes[0], routed, strict=True):
            missing = [math.nan] * routing.num_experts
            by_task = [routing.load.get(task, missing) for task in routing.tasks]
            grid = 100 * np.array(by_task, dtype=float).T  # experts x tasks
            image = ax.imshow(grid, aspect="auto", vmin=0, cmap="viridis")
            ax.set_xticks(
                range(len(routing.tasks)), routing.tasks, rotation=30, ha="right", fontsize=6
            )
            experts = range(routing.num_experts)
            ax.set_yticks(experts, [f"e{e}" for e in experts], fontsize=6)
            ax.set(title=f"{label}: load %", ylabel="expert")
            fig.colorbar(image, ax=ax)
        save(fig, "routing_heatmap.png")
    write_sweep_plots(report, out, save)
    return written
