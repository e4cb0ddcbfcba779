"""One run, in its own process: load → inject → train → measure → evaluate → record.

Started by `lorabench.run.launch_local` as ``python -m lorabench.run.worker RUN_JSON``; the JSON holds the run's
full config; the worker removes that file once read. Whatever happens, the record is written
atomically with its status: ``ok``, ``failed`` (an exception), ``oom`` (out of memory) or
``nan`` (non-finite loss); if the results folder cannot be written, it goes to a fallback
file (``lorabench.records.save_record`` says where) and the launcher picks it up. Ctrl-C
(SIGINT) stops the run without a record and exit status 130, so that a rerun does it again.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import torch

from lorabench.records import new_record, save_record

log = logging.getLogger("lorabench.run.worker")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def execute(job: dict) -> dict:
    """Run ``job`` (keys: run_id, config, record_path, suite_root, out_dir, command, and
    optionally tracker); return the record."""
    from lorabench.train import NaNLossError

    config = job["config"]
    record = new_record(job["run_id"], config, job.get("command"))
    record["started_at"] = _now()
    started = time.perf_counter()
    try:
        from lorabench.models.zoo import model_source

        record["env"]["model"] = model_source(config["model"])
        record["metrics"] = measure_run(
            config, Path(job["suite_root"]), Path(job["out_dir"]), job["run_id"],
            env=record["env"], tracker=job.get("tracker"),
        )  # fmt: skip
        record["status"] = "ok"
    except NaNLossError as exc:
        record.update(status="nan", error=str(exc))
    except (torch.OutOfMemoryError, MemoryError) as exc:
        record.update(status="oom", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # recorded, and the suite goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        record["traceback"] = traceback.format_exc(limit=-8)
    record["metrics"]["wall_time_s"] = time.perf_counter() - started
    record["finished_at"] = _now()
    save_record(Path(job["record_path"]), record)
    return record


def measure_run(
    config: dict,
    suite_root: Path,
    out_dir: Path,
    run_id: str,
    progress: bool = True,
    env: dict | None = None,
    tracker: str | None = None,
) -> dict:
    """Load → inject → train → time → evaluate one run; its metrics.

    ``env`` (the record's environment) receives ``base_weights_sha256``, the checksum of
    the loaded base model taken before anything is injected. ``tracker`` (``tensorboard``)
    also writes the training scalars to ``<out_dir>/tensorboard/<run_id>``.
    """
    from lorabench.api.inject import count_parameters, inject, save_adapter
    from lorabench.api.registry import get_method
    from lorabench.models.tiny import HELDOUT_FILE, heldout_perplexity
    from lorabench.models.zoo import load_pretrained, model_path
    from lorabench.run.measure import MemoryMeter, latency_batch, state_dict_sha256
    from lorabench.run.tracking import run_log_dir
    from lorabench.tasks import synthetic as task_data
    from lorabench.train import TrainConfig, autocast_for

    seed, method, ev = config["seed"], config["method"], config["eval"]
    device = torch.device(config["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device is cuda, but torch sees no CUDA device")
    train_cfg = TrainConfig(**config["train"])
    torch.manual_seed(seed)
    model, tokenizer = load_pretrained(config["model"], config["dtype"], str(device))
    if env is not None:
        env["base_weights_sha256"] = state_dict_sha256(model)
    meter = MemoryMeter(device)
    # latency and evaluation run under the training's autocast (none for fp32)
    autocast = autocast_for(train_cfg.precision, device)
    metrics: dict = {
        "memory_note": "CUDA: peaks above the loaded model"
        if meter.cuda
        else "CPU: peak RSS of the run's process"
    }
    _, base_params = count_parameters(model)
    ids = latency_batch(len(tokenizer), ev["latency_batch_size"], ev["latency_seq_len"])
    heldout_file = Path(model_path(config["model"], progress=False)) / HELDOUT_FILE
    heldout = heldout_file.read_text().splitlines()[:300] if heldout_file.is_file() else None
    if heldout:
        metrics["heldout_ppl_before"] = heldout_perplexity(model, tokenizer, heldout)

    tasks_dir = (suite_root / config["tasks_dir"]) if config["tasks_dir"] else None
    tasks = (
        task_data.resolve_tasks(tasks_dir, config["tasks"]) if tasks_dir else list(config["tasks"])
    )
    mergeable = False
    if method == "full":
        model.requires_grad_(True)
    elif method != "base":
        spec = get_method(method)
        mergeable = spec.mergeable
        torch.manual_seed(seed)  # adapter init depends on the seed only
        inject(model, spec, config["method_config"], config["targets"])
    trainable, _ = count_parameters(model)
    metrics.update(
        trainable_params=trainable if method != "base" else 0,
        base_params=base_params,
        trainable_percent=100.0 * (trainable if method != "base" else 0) / base_params,
        budget=config.get("budget"),
    )
    if method != "base":
        log_dir = run_log_dir(out_dir, run_id)
        metrics.update(
            train_run(model, tokenizer, config, train_cfg, tasks, tasks_dir, meter=meter,
                      progress=progress, tracker=tracker, log_dir=log_dir)
        )  # fmt: skip
    metrics.update(latency_metrics(model, method, mergeable, ids, ev, autocast))
    with meter.phase("eval"):
        if heldout:
            metrics["heldout_ppl_after"] = heldout_perplexity(model, tokenizer, heldout)
        metrics.update(eval_metrics(model, tokenizer, config, tasks, tasks_dir, autocast, progress))
    if method not in ("base", "full"):
        weights = save_adapter(model, out_dir / "adapters" / run_id)
        metrics["adapter_bytes"] = weights.stat().st_size
    metrics["memory"] = meter.report()
    return metrics


def train_run(
    model, tokenizer, config, train_cfg, tasks, tasks_dir, *, meter, progress, tracker, log_dir
) -> dict:
    """Train the injected model on the run's training data (``meter``'s ``train`` phase:
    the loop only); the training metrics."""
    from lorabench.records import is_contended
    from lorabench.run.tracking import scalar_sink
    from lorabench.tasks.train_data import load_train_pairs, load_validation_pairs, tokenize_pairs
    from lorabench.train import train

    seed, device = config["seed"], torch.device(config["device"])
    chat, max_length = config["chat_template"], train_cfg.max_length
    pairs = load_train_pairs(config["train_data"], tasks, tasks_dir)
    examples = tokenize_pairs(tokenizer, pairs, max_length, chat)
    val_examples = None
    if train_cfg.eval_every:  # plan() made sure every task has a validation split
        val_pairs = load_validation_pairs(tasks, tasks_dir)
        val_examples = tokenize_pairs(tokenizer, val_pairs, max_length, chat)
    with scalar_sink(tracker, log_dir) as on_scalars, meter.phase("train"):
        result = train(
            model, examples, train_cfg, seed=seed, device=device,
            pad_id=tokenizer.pad_token_id, desc=f"train {config['label']} s{seed}",
            fault=config.get("inject_fault"), progress=progress,
            val_examples=val_examples, on_scalars=on_scalars,
        )  # fmt: skip
    metrics = dict(
        train_examples=len(examples),
        train_tokens=result.tokens,
        train_tokens_per_s=result.tokens_per_s,
        train_tokens_per_s_windows=result.tokens_per_s_windows,
        train_time_s=result.train_time_s,
        cpu_utilisation=result.cpu_utilisation,
        cpu_wait_fraction=result.cpu_wait_fraction,
        loss_curve=result.loss_curve,
        aux_loss_curve=result.aux_loss_curve if any(result.aux_loss_curve) else None,
        final_loss=result.loss_curve[-1],
    )
    if val_examples is not None:
        metrics.update(val_loss_curve=result.val_loss_curve, val_examples=len(val_examples))
    if device.type == "cpu" and result.cpu_utilisation is not None:
        metrics["contended"] = is_contended(result.cpu_utilisation, result.cpu_wait_fraction)
    return metrics


def latency_metrics(model, method: str, mergeable: bool, ids, ev: dict, autocast) -> dict:
    """Forward latency of the base model (adapters bypassed) and each adapted state, interleaved."""
    from lorabench.run.measure import MergeState, adapters_bypassed, interleaved_latency

    variants: dict = {
        "base": (lambda: adapters_bypassed(model)) if method != "base" else nullcontext
    }
    merge_state = MergeState(model) if mergeable else None
    if method != "base":
        variants["unmerged"] = merge_state.unmerged if merge_state else nullcontext
    if merge_state:
        variants["merged"] = merge_state.merged
    with autocast:
        try:
            samples = interleaved_latency(model, ids, ev["latency_repeats"], variants)
        finally:
            if merge_state:
                merge_state.restore()  # exactly the trained weights again, for evaluation
    return {
        "latency_samples_ms": samples,
        "latency_ms": {name: statistics.median(times) for name, times in samples.items()},
    }


def eval_metrics(model, tokenizer, config, tasks, tasks_dir, autocast, progress) -> dict:
    """lm-eval scores on the test (and validation) splits, and routing diagnostics."""
    from lorabench.run.evaluate import evaluate
    from lorabench.tasks import synthetic as task_data

    ev = config["eval"]
    include = task_data.prepare_task_folder(tasks_dir) if tasks_dir else None
    options = dict(
        include_path=include, batch_size=ev["batch_size"], limit=ev["limit"],
        num_fewshot=ev["num_fewshot"], chat_template=config["chat_template"], progress=progress,
    )  # fmt: skip
    validation = tasks_dir is not None and task_data.has_validation(tasks_dir, tasks)
    splits = ("test", "validation") if validation else ("test",)
    with autocast:
        scored = evaluate(model, tokenizer, tasks, splits=splits, **options)
    metrics: dict = {"eval": scored["test"]}
    if validation:
        metrics["validation"] = {
            k: scored["validation"][k] for k in ("per_task", "macro_avg", "metric")
        }
    metrics["accuracy"] = metrics["eval"]["macro_avg"]
    if tasks_dir is not None:
        from lorabench.run.diagnostics import routing_diagnostics

        prompts = {
            t: [row["prompt"] for row in task_data.load_split(tasks_dir, t, "test")[:64]]
            for t in tasks
        }
        with autocast:
            routing = routing_diagnostics(model, tokenizer, prompts)
        if routing is not None:
            metrics["routing"] = routing
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log_file = os.environ.get("LORABENCH_LOG")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(log_file)] if log_file else None,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    job_file.unlink(missing_ok=True)  # it holds the full config; nothing else needs it now
    try:
        record = execute(job)
    except KeyboardInterrupt:
        log.info("%s: interrupted (SIGINT); no record written", job["run_id"])
        return 130
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
