"""lm-eval's own output of a run, kept in lm-eval's format beside the record.

:func:`lorabench.run.evaluate.evaluate` calls ``simple_evaluate`` once per task (so that
its progress bar can say where it is); :func:`merge_outputs` joins those outputs into the
one a single call over every task returns. :func:`write_lm_eval_output` writes it as
``lm_eval``'s command line does (``EvaluationTracker.save_results_aggregated`` /
``save_results_samples``): ``json.dumps(..., indent=2, default=handle_non_serializable,
ensure_ascii=False)``, the samples one JSON line each after the same sanitising.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorabench.records import write_text_atomic

RESULTS_FILE = "results.json"
LM_EVAL_DIR = "lm_eval"  # RESULTS/lm_eval/<run_id>/
NO_STDERR = "N/A"  # lm-eval's value for a standard error it did not compute


def merge_outputs(outputs: list[dict]) -> dict:
    """Several ``simple_evaluate`` outputs (one per task) as one: the tables keyed by task
    (``results``, ``configs``, ``versions``, ``n-shot``, ``n-samples``, ``samples`` …) are
    joined; the run-level entries (``config``, ``date``, tokenizer fields …) are the first
    call's (``config.limit`` is then the first task's; ``n-samples`` has each task's)."""
    merged: dict[str, Any] = {}
    for output in outputs:
        for key, value in output.items():
            if isinstance(value, dict) and key != "config":
                merged.setdefault(key, {}).update(value)
            else:
                merged.setdefault(key, value)
    return merged


def task_metrics(results: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """``{task: {"acc,none": x, "acc_stderr,none": y, …}}``: every metric lm-eval reported
    per task (its ``"metric,filter"`` keys), numbers as floats and lm-eval's ``"N/A"``
    (a standard error it did not compute) as None. Group rows are included."""
    table: dict[str, dict[str, float | None]] = {}
    for task, row in results.items():
        values: dict[str, float | None] = {}
        for key, value in row.items():
            if "," not in key:  # "alias", "name", "sample_len": not metrics
                continue
            if value == NO_STDERR or value is None:
                values[key] = None
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
            elif hasattr(value, "item"):  # numpy scalars
                values[key] = float(value.item())
        table[task] = values
    return table


def _dumps(obj: Any, **options) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(obj, default=handle_non_serializable, ensure_ascii=False, **options)


def _sample_line(sample: dict) -> str:
    """One sample as lm-eval's ``save_results_samples`` writes it (a copy is sanitised)."""
    from lm_eval.utils import sanitize_list

    sample = dict(sample)
    arguments = {}
    for i, arg in enumerate(sample["arguments"]):
        arguments[f"gen_args_{i}"] = {f"arg_{j}": value for j, value in enumerate(arg)}
    sample["resps"] = sanitize_list(sample["resps"])
    sample["filtered_resps"] = sanitize_list(sample["filtered_resps"])
    sample["arguments"] = arguments
    sample["target"] = str(sample["target"])
    return _dumps(sample) + "\n"


def write_lm_eval_output(
    folder: Path, output: dict, *, log_samples: bool = False, split: str = "test"
) -> list[Path]:
    """Write ``output`` (a merged ``simple_evaluate`` output) into ``folder``; the paths.

    ``results.json`` (``results_<split>.json`` for a split other than test) holds the output
    without its samples; with ``log_samples``, ``samples_<task>.jsonl`` (``samples_<split>_
    <task>.jsonl``) holds each task's per-example log.
    """
    suffix = "" if split == "test" else f"_{split}"
    results = {k: v for k, v in output.items() if k != "samples"}
    path = folder / f"results{suffix}.json"
    write_text_atomic(path, _dumps(results, indent=2))
    written = [path]
    if log_samples:
        for task, samples in (output.get("samples") or {}).items():
            path = folder / f"samples{suffix}_{task}.jsonl"
            write_text_atomic(path, "".join(_sample_line(s) for s in samples))
            written.append(path)
    return written
