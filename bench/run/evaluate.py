"""Accuracy through lm-eval, on the in-memory model, offline.

``simple_evaluate`` runs on ``HFLM(pretrained=model, tokenizer=tokenizer)`` with a
``TaskManager`` over our task folder (or lm-eval's registry for standard tasks): a temporary
copy of its YAMLs with the data files as absolute paths and a fresh datasets cache
(:func:`lorabench.tasks.lm_eval_yaml.lm_eval_task_folder`), removed afterwards. We keep
per-example correctness for paired statistics, restore the model's train/eval mode and
the global RNG states (lm-eval reseeds and advances them), and keep its output quiet.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lorabench.errors import ConfigError

log = logging.getLogger(__name__)

PRIMARY_METRICS = ("acc", "exact_match")  # first present is the task's accuracy
# Standard errors: any value > 0 makes lm-eval compute them. Metrics aggregated by a mean
# (acc, acc_norm, exact_match: every lorabench task) get the closed form, whatever the value;
# only bootstrappable ones (f1, mcc, bleu, perplexity, ...) resample, this many times
# (seeded, so reproducible). 0 would leave every stderr "N/A".
BOOTSTRAP_ITERS = 1000


@contextmanager
def _preserved_state(model):
    """lm-eval calls model.eval() and touches global RNGs; put both back afterwards."""
    training = model.training
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        model.train(training)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _quiet_lm_eval() -> None:
    import lm_eval.evaluator as evaluator

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # These shell out to git and collect torch's environment report: slow and noisy, and
    # our records carry their own environment.
    evaluator.get_git_commit_hash = lambda: None
    evaluator.add_env_info = lambda results: None


def _quiet_hflm():
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        """HFLM without its per-request progress bars (our own bar covers the tasks)."""

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

    return QuietHFLM


def _on_split(manager, task: str, split: str):
    """The lm-eval task ``task`` built as usual, then scored on ``split`` instead of test."""
    from lm_eval.tasks import get_task_dict

    if hasattr(manager, "load"):
        built = manager.load([task])["tasks"][task]
    else:  # older lm-eval
        built = get_task_dict([task], manager)[task]
    if split not in built.dataset:
        raise ValueError(f"task {task} has no {split!r} split (its splits: {list(built.dataset)})")
    built.config.test_split = split
    return built


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: str | Path | None,
    batch_size: int = 32,
    limit: int | Mapping[str, int] | None = None,
    num_fewshot: int = 0,
    chat_template: bool = False,
    progress: bool = True,
    limit_seed: int | None = None,
    primary: Mapping[str, str] | None = None,
    split: str = "test",
    splits: tuple[str, ...] | None = None,
    lm_eval_output: bool = False,
) -> dict:
    """Accuracy per task, macro average, and per-example correctness (by doc id).

    ``include_path``: folder of our task YAMLs; None uses lm-eval's registry (standard
    benchmarks, which need hub access for their data). ``limit``: items per task, one
    number or ``{task: n}`` (tasks not named: all items); lm-eval's first ``n`` unless
    ``limit_seed`` is set, then a seeded random subset (:func:`seeded_subset`), the same
    for every method and seed; it applies to every split scored. ``primary``:
    ``{task: metric}`` to rank a task on (e.g. ``acc_norm``) instead of the first of
    :data:`PRIMARY_METRICS` it reports. ``split``: the data split scored (``test``, the
    task's own; or e.g. ``validation``, a split its data files also name). ``splits``:
    several splits scored in one go, sharing the task folder, its data cache and the model
    wrapper; the result is then ``{split: result}``. Each result also holds ``metrics``:
    every metric lm-eval reported per task (:func:`~lorabench.run.lm_eval_output.task_metrics`);
    with ``lm_eval_output``, ``lm_eval``: lm-eval's own output, samples included
    (:func:`~lorabench.run.lm_eval_output.merge_outputs`).
    """
    from lm_eval.tasks import TaskManager

    from lorabench.tasks.lm_eval_yaml import lm_eval_task_folder

    _quiet_lm_eval()
    wanted = tuple(splits) if splits else (split,)
    lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    options = (lm, limit, limit_seed, primary, num_fewshot, chat_template, progress, lm_eval_output)
    if include_path is None:
        manager = TaskManager()
        scored = {s: _evaluate(model, tasks, manager, *options, s) for s in wanted}
        return scored if splits else scored[split]
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a "Generating split" bar per task and split is noise
    try:
        with tempfile.TemporaryDirectory(prefix="lorabench-eval-") as tmp:
            folder = lm_eval_task_folder(include_path, Path(tmp) / "tasks", Path(tmp) / "cache")
            manager = TaskManager(include_path=str(folder), include_defaults=False)
            scored = {s: _evaluate(model, tasks, manager, *options, s) for s in wanted}
    finally:
        if bars:
            datasets.enable_progress_bars()
    return scored if splits else scored[split]


def _evaluate(
    model,
    tasks,
    manager,
    lm,
    limit,
    limit_seed,
    primary,
    num_fewshot,
    chat_template,
    progress,
    keep_output,
    split,
) -> dict:
    import lm_eval

    from lorabench.run.lm_eval_output import merge_outputs, task_metrics

    outputs = []
    # One call per task, so that the progress bar can say where evaluation is.
    desc = "evaluate" if split == "test" else f"evaluate ({split})"
    for task in tqdm(tasks, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        scored = task if split == "test" else _on_split(manager, task, split)
        task_limit, subset = _limit_for(manager, task, scored, limit, limit_seed)
        with _preserved_state(model):
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=[scored],
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=task_limit,
                samples=subset,
                log_samples=True,
                bootstrap_iters=BOOTSTRAP_ITERS,
                apply_chat_template=chat_template,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
                fewshot_random_seed=1234,
            )
        outputs.append(output)
    merged = merge_outputs(outputs)
    results, samples = merged.get("results", {}), merged.get("samples", {})
    per_task, per_example, metric_names = {}, {}, {}
    for task, result in results.items():
        task_samples = samples.get(task)
        if not task_samples:
            continue  # a group row: its subtasks are reported one by one
        key = _primary_key(task, result, (primary or {}).get(task))
        if key is None:
            continue
        metric = key.split(",")[0]
        per_task[task] = float(result[key])
        metric_names[task] = key
        ordered = sorted(task_samples, key=lambda s: s["doc_id"])
        per_example[task] = [int(float(s[metric]) > 0.5) for s in ordered]
    macro = sum(per_task.values()) / len(per_task) if per_task else None
    scored = {
        "per_task": per_task,
        "macro_avg": macro,
        "metric": metric_names,
        "per_example": per_example,
        "metrics": task_metrics(results),
    }
    if keep_output:
        scored["lm_eval"] = merged
    return scored


def _primary_key(task: str, result: dict, named: str | None) -> str | None:
    """The result key ranked on: ``named``'s (an error if lm-eval did not report it), else
    the first of :data:`PRIMARY_METRICS` reported; None when there is none."""
    values = [k for k in result if "," in k and "_stderr," not in k]
    for metric in (named, *PRIMARY_METRICS) if named else PRIMARY_METRICS:
        key = next((k for k in values if k.startswith(metric + ",")), None)
        if key is not None:
            return key
        if metric == named:
            reported = ", ".join(sorted({k.split(",")[0] for k in values})) or "none"
            raise ConfigError(
                f"eval.primary.{task}: lm-eval reported no metric {named!r} for {task} "
                f"(it reported: {reported})"
            )
    return None


def seeded_subset(n_docs: int, k: int, seed: int, task: str) -> list[int]:
    """``k`` of the ``n_docs`` evaluation items of ``task`` (sorted doc indices), drawn with
    ``random.Random(f"lorabench-eval:{seed}:{task}")``: the same set for every method, seed
    and machine."""
    rng = random.Random(f"lorabench-eval:{seed}:{task}")
    return sorted(rng.sample(range(n_docs), min(k, n_docs)))


def _limit_for(manager, task: str, scored, limit, limit_seed: int | None):
    """(lm-eval ``limit``, lm-eval ``samples``) for one task; ``scored`` is the task name
    (its test split) or the task object set to another split."""
    n = limit.get(task) if isinstance(limit, Mapping) else limit
    if n is None or limit_seed is None:
        return n, None
    built = manager.load([task])["tasks"][task] if isinstance(scored, str) else scored
    n_docs = len(built.eval_docs)
    return None, {task: seeded_subset(n_docs, n, limit_seed, task)}


@dataclass
class EvalInputs:
    """What a run config says to evaluate, resolved: the tasks, where they come from, and
    the keyword arguments of :func:`evaluate`. The worker and ``lorabench eval`` both
    build it here, so that a saved run is scored again exactly as it was."""

    tasks: list[str]
    source: Any  # a built-in task source (commonsense), else None
    tasks_dir: Path | None  # a lorabench tasks folder, else None (source or lm-eval's registry)
    options: dict[str, Any]
    splits: tuple[str, ...]  # test, and validation where the run scores it


def task_source(config: dict):
    """The built-in task source a run's ``tasks_dir`` names (``commonsense``), built and
    rendered (once, in the user cache), or None for a tasks folder or lm-eval's registry."""
    from lorabench.tasks import commonsense

    if commonsense.is_task_source(config["tasks_dir"]):
        return commonsense.open_commonsense()
    return None


def eval_inputs(
    config: dict, suite_root: Path, *, tasks: list[str] | None = None, progress: bool = True
) -> EvalInputs:
    """:class:`EvalInputs` of run ``config`` (``tasks``: other task names than its own,
    from the same task folder or source). ``suite_root``: the folder ``tasks_dir`` is
    relative to. The primary metrics are the task source's, then ``eval.primary``'s."""
    from lorabench.tasks import synthetic as task_data

    source = task_source(config)
    tasks_dir = (
        Path(suite_root) / config["tasks_dir"] if config["tasks_dir"] and not source else None
    )
    wanted = config["tasks"] if tasks is None else tasks
    if source is not None:
        names = source.resolve_tasks(wanted)
    elif tasks_dir is not None:
        names = task_data.resolve_tasks(tasks_dir, wanted)
    else:
        names = [t.strip() for t in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    if source is not None:
        include, validation = source.include, "train_sweep" in config  # lr grids only
    else:
        include = task_data.prepare_task_folder(tasks_dir) if tasks_dir else None
        validation = tasks_dir is not None and task_data.has_validation(tasks_dir, names)
    ev = config["eval"]
    primary = {**(source.primary_metrics if source else {}), **(ev.get("primary") or {})}
    options = dict(
        include_path=include, batch_size=ev["batch_size"], limit=ev["limit"],
        num_fewshot=ev["num_fewshot"], chat_template=config["chat_template"], progress=progress,
        limit_seed=ev.get("limit_seed"), primary=primary or None,
    )  # fmt: skip
    splits = ("test", "validation") if validation else ("test",)
    return EvalInputs(names, source, tasks_dir, options, splits)
