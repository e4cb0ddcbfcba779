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
PEFT_DIR = "peft"  # OUT/adapters/<run_id>/peft/: the adapter as a standard peft folder


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def execute(job: dict) -> dict:
    """Run ``job`` (keys: run_id, config, record_path, suite_root, out_dir, command, and
    optionally log_samples and tracker); return the record."""
    from lorabench.train import NaNLossError

    config = job["config"]
    record = new_record(job["run_id"], config, job.get("command"))
    record["started_at"] = _now()
    started = time.perf_counter()
    log.info(
        "%s: %s (plugin %s), seed %s, model %s, config %s",
        job["run_id"], config["label"], config["method"], config["seed"], config["model"],
        record["config_hash"][:12],
    )  # fmt: skip
    try:
        from lorabench.models.zoo import model_source

        record["env"]["model"] = model_source(config["model"])
        record["env"]["suite_root"] = job["suite_root"]  # where tasks_dir is: `lorabench eval`
        source = task_source(config)
        if source is not None:
            record["env"]["task_sources"] = {config["tasks_dir"]: source.environment()}
        record["metrics"] = measure_run(
            config, Path(job["suite_root"]), Path(job["out_dir"]), job["run_id"],
            env=record["env"], log_samples=job.get("log_samples", False),
            tracker=job.get("tracker"),
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
    accuracy = record["metrics"].get("accuracy")
    log.info(
        "%s: %s after %.1f s%s%s", job["run_id"], record["status"],
        record["metrics"]["wall_time_s"],
        f", test accuracy {accuracy:.4f}" if isinstance(accuracy, float) else "",
        f" ({record['error']})" if record.get("error") else "",
    )  # fmt: skip
    save_record(Path(job["record_path"]), record)
    return record


def measure_run(
    config: dict,
    suite_root: Path,
    out_dir: Path,
    run_id: str,
    progress: bool = True,
    env: dict | None = None,
    log_samples: bool = False,
    tracker: str | None = None,
) -> dict:
    """Load → inject → train → time → evaluate one run; its metrics.

    ``env`` (the record's environment) receives ``base_weights_sha256``, the checksum of
    the loaded base model taken before anything is injected. The adapter goes to
    ``OUT/adapters/<run_id>/`` (and its ``peft/`` subfolder for peft-backed methods),
    lm-eval's output to ``OUT/lm_eval/<run_id>/`` (per-sample logs with ``log_samples``).
    ``tracker`` (``tensorboard``) also writes the training scalars to
    ``OUT/tensorboard/<run_id>``.
    """
    from lorabench.api.inject import count_parameters, inject
    from lorabench.api.registry import get_method
    from lorabench.models.tiny import HELDOUT_FILE, heldout_perplexity
    from lorabench.models.zoo import load_pretrained, model_path
    from lorabench.run.evaluate import eval_inputs
    from lorabench.run.measure import MemoryMeter, latency_batch, state_dict_sha256
    from lorabench.run.tracking import run_log_dir
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

    inputs = eval_inputs(config, suite_root, progress=progress)
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

    log.info("base model loaded (%s parameters); %s adapter injected", f"{base_params:,}", method)
    if method != "base":
        metrics.update(
            train_run(model, tokenizer, config, train_cfg, inputs, meter=meter,
                      progress=progress, tracker=tracker, log_dir=run_log_dir(out_dir, run_id))
        )  # fmt: skip
    if method != "base":
        log.info(
            "trained %d steps: final loss %.4f, %.0f tokens/s",
            len(metrics["loss_curve"]), metrics["final_loss"], metrics["train_tokens_per_s"] or 0,
        )  # fmt: skip
    metrics.update(latency_metrics(model, method, mergeable, ids, ev, autocast))
    log.info("latency measured; evaluating %d task(s)", len(inputs.tasks))
    with meter.phase("eval"):
        if heldout:
            metrics["heldout_ppl_after"] = heldout_perplexity(model, tokenizer, heldout)
        with autocast:
            metrics.update(
                _score(model, tokenizer, inputs, out_dir / "lm_eval" / run_id, log_samples)
            )
    if method not in ("base", "full"):
        metrics["adapter_bytes"] = _save_adapters(model, out_dir / "adapters" / run_id, config)
    metrics["memory"] = meter.report()
    return metrics


def train_run(
    model, tokenizer, config, train_cfg, inputs, *, meter, progress, tracker, log_dir
) -> dict:
    """Train the injected model on the run's training data (``meter``'s ``train`` phase:
    the loop only); the training metrics."""
    from lorabench.records import is_contended
    from lorabench.run.tracking import scalar_sink
    from lorabench.tasks.train_data import load_train_pairs, load_validation_pairs, tokenize_pairs
    from lorabench.train import train

    seed, device = config["seed"], torch.device(config["device"])
    chat, max_length = config["chat_template"], train_cfg.max_length
    source, tasks_dir, tasks = inputs.source, inputs.tasks_dir, inputs.tasks
    if source is not None and config["train_data"] == "tasks":
        pairs = source.train_pairs(tasks)  # rendered by lm-eval: train prompts = eval prompts
    else:
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


def _score(model, tokenizer, inputs, lm_eval_dir: Path, log_samples: bool) -> dict:
    """The eval metrics of the trained model (test, validation, routing); lm-eval's own
    output goes to ``lm_eval_dir``."""
    from lorabench.run.diagnostics import routing_diagnostics
    from lorabench.run.evaluate import evaluate
    from lorabench.run.lm_eval_output import write_lm_eval_output
    from lorabench.tasks import synthetic as task_data

    scored = evaluate(
        model, tokenizer, inputs.tasks, splits=inputs.splits, lm_eval_output=True, **inputs.options
    )
    for split, result in scored.items():
        write_lm_eval_output(
            lm_eval_dir, result.pop("lm_eval"), log_samples=log_samples, split=split
        )
    metrics = {"eval": scored["test"], "accuracy": scored["test"]["macro_avg"]}
    if "validation" in scored:
        metrics["validation"] = {
            k: scored["validation"][k] for k in ("per_task", "macro_avg", "metric")
        }
    source, tasks_dir, tasks = inputs.source, inputs.tasks_dir, inputs.tasks
    if tasks_dir is not None or source is not None:
        # commonsense prompts are ~50 tokens, not ~10: 32 per task give ample router statistics
        prompts = source.prompts(tasks, 32) if source else {
            t: [row["prompt"] for row in task_data.load_split(tasks_dir, t, "test")[:64]]
            for t in tasks
        }  # fmt: skip
        routing = routing_diagnostics(model, tokenizer, prompts)
        if routing is not None:
            metrics["routing"] = routing
    return metrics


def _save_adapters(model, folder: Path, config: dict) -> int:
    """Save the adapter (lorabench's format; peft's too where it can hold it); its bytes."""
    from lorabench.api.inject import save_adapter
    from lorabench.api.peft_format import peft_export_blocker, save_peft_adapter
    from lorabench.models.zoo import model_path

    weights = save_adapter(model, folder)
    blocker = peft_export_blocker(model)
    if blocker is not None:
        log.info("no peft-format adapter: %s", blocker)
        return weights.stat().st_size
    try:
        save_peft_adapter(model, folder / PEFT_DIR, model_path(config["model"], progress=False))
    except Exception as exc:  # a convenience copy: the run and its own-format adapter stand
        log.warning("the peft-format adapter could not be written: %s: %s", type(exc).__name__, exc)
    return weights.stat().st_size


def task_source(config: dict):
    """The built-in task source of a run config, or None (see :func:`lorabench.run.evaluate.task_source`)."""
    from lorabench.run.evaluate import task_source as source_of

    return source_of(config)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    log_file = os.environ.get("LORABENCH_LOG")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(log_file)] if log_file else None,
        force=True,  # an import may have configured logging already: the run log must get ours
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
