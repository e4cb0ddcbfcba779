"""Saved runs back in memory, and scored again: ``lorabench.load_run`` and ``lorabench eval``.

A results folder ``RESULTS`` holds per run ``runs/<run_id>.json`` (the record),
``adapters/<run_id>/`` (the adapter in lorabench's format, with ``peft/`` beside it for
peft-backed methods) and ``lm_eval/<run_id>/`` (lm-eval's own output). :func:`load_run`
loads the base model the record names, checks that its weights are the ones the run was
trained on (``env.base_weights_sha256``), and loads the adapter. :func:`rescore` scores
it through the same :func:`~lorabench.run.evaluate.eval_inputs` and
:func:`~lorabench.run.evaluate.evaluate` as the run itself did, so that with the run's own
tasks and settings it reproduces the record's scores exactly (same machine and threads).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorabench.errors import LorabenchError, RunFileError
from lorabench.records import Record, RecordError, load_record

RUNS_DIR = "runs"
ADAPTERS_DIR = "adapters"
RESULTS_OPTION = "--results"  # how the CLI spells ``results``, for error messages


@dataclass
class SavedRun:
    """A run's record and the results folder it lives in."""

    record: dict
    results: Path

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def adapter_dir(self) -> Path:
        return self.results / ADAPTERS_DIR / self.run_id


def find_run(run: str | Path | Mapping, results: str | Path | None = None) -> SavedRun:
    """The saved run ``run`` names: a record file (``RESULTS/runs/<run_id>.json``), a run's
    adapter folder (``RESULTS/adapters/<run_id>``), or a run id or record (a dict) with
    ``results``, the results folder. RunFileError, saying what to give, otherwise."""
    if isinstance(run, Mapping):
        if results is None:
            raise RunFileError("run: a record given as a dict needs its results folder (results=)")
        try:
            return SavedRun(Record.from_dict(dict(run)).to_dict(), Path(results))
        except (RecordError, TypeError) as exc:
            raise RunFileError(f"run: not a valid record: {exc}") from exc
    path = Path(run)
    if path.is_file():
        return SavedRun(_read(path), path.absolute().parent.parent)
    if path.is_dir() and path.parent.name == ADAPTERS_DIR:
        return SavedRun(
            _read(path.parent.parent / RUNS_DIR / f"{path.name}.json"), path.parent.parent
        )
    if results is not None and not path.is_dir():
        record = Path(results) / RUNS_DIR / f"{str(run).removesuffix('.json')}.json"
        if not record.is_file():
            raise RunFileError(f"run {str(run)!r}: no record {record}")
        return SavedRun(_read(record), Path(results))
    raise RunFileError(
        f"run {str(run)!r}: no such record file or adapter folder; give "
        f"RESULTS/runs/<run_id>.json, or the run id with {RESULTS_OPTION} RESULTS"
    )


def _read(path: Path) -> dict:
    try:
        return load_record(path)
    except RecordError as exc:
        raise RunFileError(f"run record {path}: {exc}") from exc


def load_run(
    run: str | Path | Mapping,
    model: torch.nn.Module | None = None,
    *,
    results: str | Path | None = None,
    device: str | None = None,
    check_base: bool = True,
) -> tuple[torch.nn.Module, Any, dict]:
    """Load a saved run: ``(model, tokenizer, record)``.

    ``run``: a record file ``RESULTS/runs/<run_id>.json``, the run's adapter folder
    ``RESULTS/adapters/<run_id>``, or a run id (or a record dict) with ``results=RESULTS``.
    ``model``: the base model to load the adapter into (it is modified in place); None
    loads the one the record names (``config.model``, in the run's dtype, on ``device``,
    default the run's) and, with ``check_base``, checks that its weights are the ones the
    run trained on (``env.base_weights_sha256``). A ``base`` run loads no adapter; a
    ``full`` run has no saved weights (RunFileError), nor has a run that did not finish.

    >>> model, tokenizer, record = lorabench.load_run("results/smoke/runs/mor-seed0-1a2b3c4d.json")
    """
    from lorabench.api.inject import load_adapter
    from lorabench.models.zoo import load_pretrained, load_tokenizer
    from lorabench.run.checks import check_device

    saved = find_run(run, results)
    record, config = saved.record, saved.record["config"]
    _require_weights(saved)
    if model is None:
        device = device or config["device"]
        check_device(device, "device")
        model, tokenizer = load_pretrained(config["model"], config["dtype"], device)
        if check_base:
            _check_base(model, saved)
    else:
        tokenizer = load_tokenizer(config["model"])
    if config["method"] != "base":
        injection = load_adapter(model, saved.adapter_dir)
        if injection.method != config["method"]:
            raise RunFileError(
                f"run {saved.run_id}: the adapter in {saved.adapter_dir} is a "
                f"'{injection.method}' adapter, not the run's '{config['method']}'"
            )
    return model, tokenizer, record


def _require_weights(saved: SavedRun) -> None:
    """A finished run that saved what it trained (or a ``base`` run, which trained nothing)."""
    if saved.record["status"] != "ok":
        raise RunFileError(
            f"run {saved.run_id}: status {saved.record['status']}; it saved no adapter"
        )
    if saved.record["config"]["method"] == "full":
        raise RunFileError(f"run {saved.run_id}: full fine-tuning; its weights are not saved")


def _check_base(model: torch.nn.Module, saved: SavedRun) -> None:
    from lorabench.run.measure import state_dict_sha256

    expected = saved.record["env"].get("base_weights_sha256")
    if expected is None:  # records from before the checksum
        return
    found = state_dict_sha256(model)
    if found != expected:
        raise RunFileError(
            f"run {saved.run_id}: base model '{saved.record['config']['model']}' has other "
            f"weights than the run trained on (sha256 {found[:12]}, recorded {expected[:12]}); "
            "check_base=False (--any-base) loads the adapter anyway"
        )


@dataclass
class Overrides:
    """What ``lorabench eval`` changes from the run's own evaluation (None: the run's)."""

    tasks: list[str] | None = None
    tasks_dir: str | None = None  # a tasks folder, "commonsense", or "" for lm-eval's registry
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int | None = None

    def apply(self, config: dict) -> dict:
        """The run config with these settings in place (a copy)."""
        config = copy.deepcopy(config)
        for name, least in (("limit", 1), ("num_fewshot", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RunFileError(f"{name}: expected an integer >= {least}, got {value!r}")
            config["eval"][name] = value
        if self.tasks_dir is not None:
            config["tasks_dir"] = self.tasks_dir or None
        return config


def rescore(
    run: str | Path | Mapping,
    overrides: Overrides | None = None,
    *,
    results: str | Path | None = None,
    device: str | None = None,
    check_base: bool = True,
    progress: bool = True,
) -> dict:
    """Score a saved run again, without training; the result.

    With no ``overrides`` the run's own tasks and eval settings are used, through the same
    code as the run (:func:`~lorabench.run.evaluate.eval_inputs`), and ``reproduces`` says
    whether every per-example result equals the record's. The result: ``run_id``,
    ``tasks``, ``eval`` (``per_task``, ``macro_avg``, ``metric``, ``per_example``,
    ``metrics``), ``accuracy``, ``settings`` (the eval settings used), ``recorded`` (the
    record's ``per_task`` and ``accuracy``) and ``reproduces`` (None when the tasks or
    settings differ from the run's, so there is nothing to compare).
    """
    from lorabench.run.evaluate import eval_inputs, evaluate

    overrides = overrides or Overrides()
    saved = find_run(run, results)
    _require_weights(saved)
    config = overrides.apply(saved.record["config"])
    suite_root = _suite_root(saved, config, overrides)
    try:  # before loading anything: bad task names fail fast
        inputs = eval_inputs(config, suite_root, tasks=overrides.tasks, progress=progress)
    except LorabenchError as exc:
        raise RunFileError(f"run {saved.run_id}: {exc}") from exc
    model, tokenizer, record = load_run(saved.record, results=saved.results, device=device,
                                        check_base=check_base)  # fmt: skip
    on_cuda = str(next(model.parameters()).device).startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    with autocast:  # as the worker scores
        scored = evaluate(model, tokenizer, inputs.tasks, split="test", **inputs.options)
    recorded = record["metrics"].get("eval") or {}
    own_tasks = sorted(recorded.get("per_task", {}))
    same = config == record["config"] and sorted(inputs.tasks) == own_tasks
    return {
        "run_id": saved.run_id,
        "tasks": inputs.tasks,
        "eval": scored,
        "accuracy": scored["macro_avg"],
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in inputs.options.items()
            if k != "progress"
        },
        "recorded": {
            "per_task": recorded.get("per_task"),
            "accuracy": record["metrics"].get("accuracy"),
        },
        "reproduces": (
            scored["per_task"] == recorded.get("per_task")
            and scored["per_example"] == recorded.get("per_example")
        )
        if same
        else None,
    }


def render(result: dict) -> str:
    """:func:`rescore`'s result as a small table, with the recorded scores beside."""
    from tabulate import tabulate

    recorded = result["recorded"]["per_task"] or {}
    rows = [
        (task, result["eval"]["metric"][task], f"{score:.4f}",
         f"{recorded[task]:.4f}" if task in recorded else "")
        for task, score in result["eval"]["per_task"].items()
    ]  # fmt: skip
    macro, was = result["accuracy"], result["recorded"]["accuracy"]
    compared = result["reproduces"] is not None and was is not None
    rows.append(("macro average", "", "n/a" if macro is None else f"{macro:.4f}",
                 f"{was:.4f}" if compared else ""))  # fmt: skip
    lines = [
        f"run {result['run_id']}",
        tabulate(rows, headers=["task", "metric", "score", "recorded"]),
    ]
    if result["reproduces"] is not None:
        lines.append(
            "reproduces the record exactly"
            if result["reproduces"]
            else "differs from the record (per-task or per-example results)"
        )
    return "\n".join(lines)


def _suite_root(saved: SavedRun, config: dict, overrides: Overrides) -> Path:
    """The folder the (possibly overridden) ``tasks_dir`` is relative to."""
    from lorabench.tasks import commonsense

    tasks_dir = config["tasks_dir"]
    if overrides.tasks_dir is not None or not tasks_dir or commonsense.is_task_source(tasks_dir):
        return Path.cwd()
    root = saved.record["env"].get("suite_root")
    if root is None and not Path(tasks_dir).is_absolute():
        raise RunFileError(
            f"run {saved.run_id}: its record does not say where its tasks_dir {tasks_dir!r} "
            "is (recorded before env.suite_root); give the tasks folder (--tasks-dir)"
        )
    folder = Path(root or ".") / tasks_dir
    if not folder.is_dir():
        raise RunFileError(
            f"run {saved.run_id}: its tasks folder {folder} is gone; give it (--tasks-dir)"
        )
    return Path(root or ".")
