"""Report data: result records loaded, tidied into a frame, compared and aggregated.

Also the small formatting helpers (fixed-precision numbers, markdown tables) that every
report module shares. Reads result records only (no torch, no model code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from lorabench import selection
from lorabench.errors import ConfigError
from lorabench.records import RecordError, load_record
from lorabench.report.stats import SeedDelta, mean_std, seed_delta
from lorabench.tasks.synthetic import CHOICE_METRIC, N_CHOICES, SENTIMENT_CHOICES, TASK_PREFIX

NA = "n/a"
INTEGER_COLUMNS = (
    "seed", "trainable_params", "base_params", "train_tokens", "adapter_bytes",
    "budget_target", "budget_reached",
)  # fmt: skip
RUN_COLUMNS = (
    "label", "method", "seed", "status", "error", "run_id", "trainable_params", "base_params",
    "trainable_percent", "memory_kind", "peak_rss_mb", "baseline_rss_mb", "peak_allocated_mb",
    "peak_reserved_mb", "train_tokens_per_s", "train_time_s", "train_tokens", "latency_base_ms",
    "latency_unmerged_ms", "latency_merged_ms", "unmerged_ratio", "merged_ratio", "final_loss",
    "heldout_ppl_before", "heldout_ppl_after", "adapter_bytes", "wall_time_s", "accuracy",
    "budget_target", "budget_reached", "budget_knob", "budget_value",
)  # fmt: skip


@dataclass(frozen=True)
class Records:
    """The records of one results folder, one per (label, seed), sorted for reporting.

    A training grid's runs are in ``runs`` at the chosen point only; ``grid`` holds every
    grid record and ``choices`` the choice of each grid method (``lorabench.selection``).
    """

    runs: list[dict]
    unreadable: list[str]  # file names that are not valid records
    superseded: int  # older records of a (label, seed) that a newer one replaced
    grid: list[dict] = field(default_factory=list)
    choices: dict[str, selection.Choice] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # "<file>: <why>" for each unreadable file
    merged: tuple[str, ...] = ()  # what ``merge=True`` combined (empty: nothing to merge)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison ``candidate - reference`` in accuracy points, seed by seed.

    ``result`` is :func:`lorabench.report.stats.seed_delta` on the per-example scores
    (fractions); the fields below are in points. ``seeds`` are the paired seeds in ascending
    order (``per_seed`` follows it). ``fixed`` names the side that is one deterministic run
    (the base model) paired with every seed of the other side, else None. ``unpaired``
    lists, per side, the seeds that had no partner on the other side and were left out.
    """

    result: SeedDelta
    seeds: tuple[object, ...]
    fixed: str | None  # "reference" or "candidate": its one run is paired with each seed
    unpaired: tuple[tuple[str, tuple[object, ...]], ...]  # (side, seeds left out)
    tasks: tuple[str, ...]

    @property
    def delta_points(self) -> float:
        return 100 * self.result.estimate

    @property
    def ci_low(self) -> float:
        return 100 * self.result.low

    @property
    def ci_high(self) -> float:
        return 100 * self.result.high

    @property
    def p_value(self) -> float:
        return self.result.p_value

    @property
    def per_seed(self) -> tuple[float, ...]:
        return tuple(100 * d for d in self.result.per_seed)

    @property
    def per_seed_sd(self) -> float | None:
        sd = self.result.per_seed_sd
        return None if sd is None else 100 * sd


# ---- small helpers ------------------------------------------------------------------------


def num(value: Any) -> float:
    """A float for a JSON number, NaN for anything else (missing, None, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def fmt(value: float | None, spec: str) -> str:
    return NA if value is None or not math.isfinite(value) else format(value, spec)


def first_line(text: Any, limit: int = 200) -> str:
    lines = str(text).strip().splitlines() if text else []
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _is_numeric(cell: str) -> bool:
    return (
        cell in ("", "baseline")
        or cell.startswith(NA)
        or math.isfinite(_leading_number(cell.strip("*[")))
    )


def md_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """A pipe table; columns whose cells are all numbers (or n/a) align right."""
    align = [
        "right" if i and all(_is_numeric(row[i]) for row in rows) else "left"
        for i in range(len(headers))
    ]
    return tabulate(rows, list(headers), "pipe", disable_numparse=True, colalign=align)


def _leading_number(cell: str) -> float:
    """The number a formatted cell starts with ("1,234.5 / 9" -> 1234.5), NaN if none."""
    try:
        return float(cell.split()[0].replace(",", "").strip("*†"))
    except (IndexError, ValueError):
        return math.nan


def bold_best(cells: list[str], higher: bool, eligible: list[bool]) -> None:
    """Bold (in place) the cells showing the best eligible value, as displayed (ties too)."""
    values = [_leading_number(cell) for cell in cells]
    candidates = [v for v, ok in zip(values, eligible, strict=True) if ok and math.isfinite(v)]
    if len(candidates) < 2 or min(candidates) == max(candidates):
        return  # nothing to single out
    best = max(candidates) if higher else min(candidates)
    for i, (value, ok) in enumerate(zip(values, eligible, strict=True)):
        if ok and value == best:
            cells[i] = f"**{cells[i]}**"


def dig(obj: Any, keys: tuple[str, ...]) -> Any:
    """``obj[k1][k2]...``; raises KeyError or TypeError when a level is missing."""
    for key in keys:
        obj = obj[key]
    return obj


def display_path(path: str | Path) -> str:
    """``path`` as given when relative; else relative to the working folder when inside it,
    else absolute — a "regenerate with" line must name a path that works."""
    given = Path(path)
    if not given.is_absolute():
        return given.as_posix()
    try:
        return given.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return given.resolve().as_posix()


def _label_rank(label: str, method: str) -> tuple[int, str]:
    return ({"base": 0, "full": 1}.get(method, 2), label)


def chance_rate(task: str, metric: str | None) -> float | None:
    """The accuracy of guessing uniformly among the choices, for the embedded tasks.

    Known only for the embedded multiple-choice tasks (``lb_*`` scored by ``acc,none``):
    sentiment picks one of two labels, every other task one of ``N_CHOICES``. None for
    anything else (other tasks' choice counts are not in the records).
    """
    if not task.startswith(TASK_PREFIX) or metric != CHOICE_METRIC:
        return None
    return 1 / len(SENTIMENT_CHOICES) if task == f"{TASK_PREFIX}sentiment" else 1 / N_CHOICES


# ---- loading ------------------------------------------------------------------------------


def load_records(results_dir: str | Path, merge: bool = False) -> Records:
    """Records in ``results_dir/runs/*.json`` (or ``results_dir/*.json``), newest per run.

    A results folder holds one suite's runs: records of several suites, or records of one
    (label, seed) with different config hashes, raise ConfigError naming the files, unless
    ``merge`` (then the newest record per (label, seed) is kept and ``Records.merged``
    says what was combined). Raises ConfigError when the folder is missing or holds no
    readable record; files that are not valid records are listed in ``unreadable`` (with
    the reason in ``problems``) and skipped.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        raise ConfigError(f"results folder not found: {folder}")
    files: list[Path] = []
    for candidate in (folder / "runs", folder):
        if candidate.is_dir():
            files = sorted(p for p in candidate.glob("*.json") if not p.name.startswith("."))
        if files:
            break
    found: list[tuple[str, dict]] = []
    unreadable, problems = [], []
    for path in files:
        try:
            record = load_record(path)
            if not isinstance(record["label"], str):
                raise RecordError(f"{path.name}: label: expected a string")
            found.append((path.name, record))
        except RecordError as exc:
            unreadable.append(path.name)
            problems.append(f"{path}: " + str(exc).removeprefix(f"{path.name}: "))
    if not found:
        raise ConfigError(f"no readable result records in {folder} (expected runs/*.json)")
    merged = _mixed(folder, found, merge)
    newest: dict[tuple, dict] = {}
    for record in sorted((record for _, record in found), key=_freshness):
        newest[_run_key(record)] = record
    grid = sorted(
        (r for r in newest.values() if selection.grid_of(r.get("config"))), key=_run_order
    )
    choices = selection.select(grid)
    runs = [r for r in newest.values() if selection.is_selected(r, choices)]
    runs.sort(key=_run_order)
    return Records(
        runs, unreadable, len(found) - len(newest), grid, choices, tuple(problems), merged
    )


def _run_key(record: dict) -> tuple:
    """One run: its label, seed and training-grid point (an lr grid holds several per seed)."""
    return (record["label"], str(record.get("seed")), selection.point_key(record))


def _names(files: list[str], limit: int = 4) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _mixed(folder: Path, found: list[tuple[str, dict]], merge: bool) -> tuple[str, ...]:
    """What mixes in ``found``: several suites, several configs of one (label, seed).

    ConfigError naming the files unless ``merge``; with ``merge``, one line per kind.
    """
    suites: dict[str, list[str]] = {}
    configs: dict[tuple, dict[str, list[str]]] = {}
    for name, record in found:
        suites.setdefault(str(record["suite"]), []).append(name)
        configs.setdefault(_run_key(record), {}).setdefault(record["config_hash"], []).append(name)
    conflicts = {key[:2]: hashes for key, hashes in configs.items() if len(hashes) > 1}
    hint = "pass --merge to report them together (the newest record of each run is kept)"
    if len(suites) > 1 and not merge:
        listing = "; ".join(f"suite {s}: {_names(n)}" for s, n in sorted(suites.items()))
        raise ConfigError(
            f"{folder} holds records of {len(suites)} suites ({listing}); a results folder "
            f"holds one suite's runs: move the others away, or {hint}"
        )
    if conflicts and not merge:
        listing = "; ".join(
            f"{label} seed {seed}: {_names([n for names in hashes.values() for n in names])}"
            for (label, seed), hashes in sorted(conflicts.items())
        )
        raise ConfigError(
            f"{folder} holds records of different configs for {len(conflicts)} run(s) "
            f"({listing}); move the outdated records away, or {hint}"
        )
    merged = []
    if len(suites) > 1:
        merged.append(f"records of {len(suites)} suites ({', '.join(sorted(suites))})")
    if conflicts:
        runs = ", ".join(f"{label} seed {seed}" for label, seed in sorted(conflicts))
        merged.append(
            f"records of different configs for {len(conflicts)} run(s) ({runs}), of which "
            "the newest is kept"
        )
    return tuple(merged)


def _freshness(record: dict) -> tuple[bool, str, str]:
    return (record.get("status") == "ok", str(record.get("finished_at")), str(record["run_id"]))


def _run_order(record: dict) -> tuple[int, str, int, str]:
    seed = record.get("seed")
    rank, label = _label_rank(record["label"], str(record.get("method")))
    return (rank, label, seed if isinstance(seed, int) else -1, str(record.get("run_id")))


# ---- one tidy row per run -----------------------------------------------------------------


def run_row(record: dict) -> dict[str, Any]:
    """The scalar facts of one run: identity, status, every scalar metric, per-task accuracy."""
    metrics = record.get("metrics") or {}
    memory = metrics.get("memory") or {}
    latency = metrics.get("latency_ms") or {}
    budget = metrics.get("budget") or {}
    per_task = (metrics.get("eval") or {}).get("per_task") or {}
    base_ms = num(latency.get("base"))
    row: dict[str, Any] = {
        "label": record["label"],
        "method": str(record.get("method")),
        "seed": record.get("seed"),
        "status": record.get("status"),
        "error": first_line(record.get("error")) or None,
        "run_id": record.get("run_id"),
        "memory_kind": memory.get("kind"),
        "latency_base_ms": base_ms,
        "latency_unmerged_ms": num(latency.get("unmerged")),
        "latency_merged_ms": num(latency.get("merged")),
        "budget_target": num(budget.get("target")),
        "budget_reached": num(budget.get("reached")),
        "budget_knob": budget.get("knob"),
        "budget_value": num(budget.get("value")),
    }
    for key in ("peak_rss_mb", "baseline_rss_mb", "peak_allocated_mb", "peak_reserved_mb"):
        row[key] = num(memory.get(key))
    for key in RUN_COLUMNS:
        row.setdefault(key, num(metrics.get(key)))
    row["unmerged_ratio"] = row["latency_unmerged_ms"] / base_ms if base_ms > 0 else math.nan
    row["merged_ratio"] = row["latency_merged_ms"] / base_ms if base_ms > 0 else math.nan
    for task in sorted(per_task):
        row[f"acc_{task}"] = num(per_task[task])
    return row


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run, in report order; integer columns use the nullable Int64 type."""
    rows = [run_row(record) for record in runs]
    tasks = sorted({key for row in rows for key in row if key.startswith("acc_")})
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *tasks])
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").round().astype("Int64")
    return frame


# ---- paired comparisons -------------------------------------------------------------------


def _per_example(record: dict) -> dict[str, list[float]]:
    per_example = ((record.get("metrics") or {}).get("eval") or {}).get("per_example") or {}
    return {task: [float(x) for x in values] for task, values in per_example.items()}


def _seed_key(seed: object) -> tuple[bool, int, str]:
    """Ascending seed order: integers by value, then anything else by its text."""
    is_int = isinstance(seed, int) and not isinstance(seed, bool)
    return (not is_int, seed if is_int else 0, str(seed))  # type: ignore[return-value]


def _is_fixed(runs: list[dict]) -> bool:
    """One run of the base model: deterministic (nothing is trained), so no seed to match."""
    return len(runs) == 1 and str(runs[0].get("method")) == "base"


def compare(
    reference: list[dict], candidate: list[dict], task: str | None = None
) -> Comparison | None:
    """``candidate - reference`` on per-example correctness, seed by seed (one procedure).

    Seeds pair by seed number: candidate seed s against reference seed s; seeds that only
    one side has are left out and listed in ``unpaired`` (never paired with another seed).
    The base model is one deterministic run: when one side is that, it is paired with every
    seed of the other side (``fixed``). Tasks: those every paired run has with the same
    number of examples (only ``task`` when given). Each seed's macro Δ and the seeds'
    random-effects combination come from :func:`lorabench.report.stats.seed_delta`. None
    when no seed pairs or no task is shared.
    """
    if not reference or not candidate:
        return None
    fixed = None
    if _is_fixed(reference) and not _is_fixed(candidate):
        fixed = "reference"
    elif _is_fixed(candidate) and not _is_fixed(reference):
        fixed = "candidate"
    ref_by_seed = {run.get("seed"): run for run in reference}
    cand_by_seed = {run.get("seed"): run for run in candidate}
    unpaired: tuple[tuple[str, tuple[object, ...]], ...] = ()
    if fixed == "reference":
        pairs = {seed: (reference[0], run) for seed, run in cand_by_seed.items()}
    elif fixed == "candidate":
        pairs = {seed: (run, candidate[0]) for seed, run in ref_by_seed.items()}
    else:
        pairs = {
            seed: (ref_by_seed[seed], run)
            for seed, run in cand_by_seed.items()
            if seed in ref_by_seed
        }
        left_out = (
            ("candidate", tuple(sorted(set(cand_by_seed) - set(ref_by_seed), key=_seed_key))),
            ("reference", tuple(sorted(set(ref_by_seed) - set(cand_by_seed), key=_seed_key))),
        )
        unpaired = tuple((side, seeds) for side, seeds in left_out if seeds)
    seeds = tuple(sorted(pairs, key=_seed_key))
    examples = {seed: tuple(_per_example(run) for run in pairs[seed]) for seed in seeds}
    runs = [side for pair in examples.values() for side in pair]
    shared = set.intersection(*(set(run) for run in runs)) if runs else set()
    tasks = sorted(
        name
        for name in shared
        if (task is None or name == task)
        and len({len(run[name]) for run in runs}) == 1
        and len(runs[0][name]) > 0
    )
    if not seeds or not tasks:
        return None
    a = {i: {t: examples[seed][0][t] for t in tasks} for i, seed in enumerate(seeds)}
    b = {i: {t: examples[seed][1][t] for t in tasks} for i, seed in enumerate(seeds)}
    return Comparison(seed_delta(a, b), seeds, fixed, unpaired, tuple(tasks))


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_comparison(result: Comparison | None) -> list[str]:
    """Cells: Δ points, 95% CI, p, and the per-seed Δs with their sd.

    The Δ carries "†" when seeds were left out for lack of a partner, "*" when the interval
    covers example sampling only (one seed, or seeds that all gave the same Δ).
    """
    if result is None:
        return [NA, NA, NA, NA]
    marks = ("†" if result.unpaired else "") + (
        "*" if result.result.df is None and math.isfinite(result.ci_low) else ""
    )
    per_seed = ", ".join(f"{d:+.1f}" for d in result.per_seed)
    if result.per_seed_sd is not None:
        per_seed += f" (sd {result.per_seed_sd:.1f}"
        per_seed += "; base: one run, paired with each seed)" if result.fixed else ")"
    return [
        f"{result.delta_points:+.2f}{marks}",
        f"[{result.ci_low:+.2f}, {result.ci_high:+.2f}]",
        fmt_p(result.p_value),
        per_seed,
    ]


# ---- aggregates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """Routing diagnostics of one label, averaged over its runs (seeds)."""

    num_experts: int
    layers: list[str]
    tasks: list[str]
    entropy: dict[tuple[str, str], float]  # (layer, task) -> mean entropy / log N
    load: dict[str, list[float]]  # task -> layer-averaged mean gate per expert


def routing_summary(runs: list[dict]) -> Routing | None:
    """Seed-averaged routing diagnostics of ``runs``, or None if none has any."""
    found = [r["metrics"]["routing"] for r in runs if (r.get("metrics") or {}).get("routing")]
    experts = int(found[0].get("num_experts") or 0) if found else 0
    if experts < 1:
        return None
    entropies: dict[tuple[str, str], list[float]] = {}
    loads: dict[str, list[list[float]]] = {}
    for routing in found:
        for layer, per_task in (routing.get("layers") or {}).items():
            for task, stats in per_task.items():
                entropies.setdefault((layer, task), []).append(num(stats.get("entropy")))
                load = [num(x) for x in stats.get("load") or []]
                if len(load) == experts:
                    loads.setdefault(task, []).append(load)
    max_entropy = math.log(experts) if experts > 1 else math.nan
    entropy = {key: mean_std(v)[0] / max_entropy for key, v in entropies.items()}
    load = {
        task: [mean_std(col)[0] for col in zip(*rows, strict=True)] for task, rows in loads.items()
    }
    layers = sorted({layer for layer, _ in entropies})
    tasks = sorted({task for _, task in entropies} | set(loads))
    return Routing(experts, layers, tasks, entropy, load)


class ReportData:
    """Aggregates of one set of records: the tidy frame, ok runs per label, routing."""

    def __init__(
        self,
        records: Records,
        baseline: str,
        results_dir: str | Path = "results",
        out_dir: str | Path = "report",
    ) -> None:
        self.records = records
        self.results_dir, self.out_dir = results_dir, out_dir
        self.baseline = baseline
        self.frame = runs_frame(records.runs)
        self.ok = self.frame[self.frame["status"] == "ok"]
        self.labels = list(dict.fromkeys(self.frame["label"]))
        self.methods = dict(zip(self.frame["label"], self.frame["method"], strict=True))
        self.ok_runs: dict[str, list[dict]] = {label: [] for label in self.labels}
        for record in records.runs:
            if record.get("status") == "ok":
                self.ok_runs[record["label"]].append(record)
        self.tasks = sorted(c[4:] for c in self.frame.columns if c.startswith("acc_"))
        metrics: dict[str, set[str]] = {}
        for record in records.runs:
            for task, name in (
                ((record.get("metrics") or {}).get("eval") or {}).get("metric") or {}
            ).items():
                metrics.setdefault(task, set()).add(str(name))
        #: task -> chance accuracy (fraction), for the tasks where it is known
        self.chance = {
            task: rate
            for task in self.tasks
            if len(metrics.get(task, ())) == 1
            and (rate := chance_rate(task, next(iter(metrics[task])))) is not None
        }
        self.adapted = [self.methods[label] != "base" for label in self.labels]
        self.routing = {lb: routing_summary(self.ok_runs[lb]) for lb in self.labels}

    def stat(self, label: str, column: str) -> tuple[float, float | None]:
        """Mean and sample std over the label's ok runs of one column."""
        return mean_std(self.ok.loc[self.ok["label"] == label, column].astype(float).tolist())

    def mean(self, label: str, column: str, spec: str, scale: float = 1.0) -> str:
        return fmt(scale * self.stat(label, column)[0], spec)

    def values(self, get: Any) -> str:
        """The sorted distinct non-empty values ``get(record)`` takes, comma-separated."""
        found = set()
        for record in self.records.runs:
            try:
                value = get(record)
            except (KeyError, TypeError, AttributeError):
                continue
            if value is not None and value != "":
                if isinstance(value, dict):
                    value = [f"{k}={v}" for k, v in sorted(value.items())]
                found.add(", ".join(map(str, value)) if isinstance(value, list) else str(value))
        numbers_first = sorted(
            found, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)
        )
        return "; ".join(numbers_first) or NA
