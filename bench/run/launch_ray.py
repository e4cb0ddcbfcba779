"""Fan a suite out on Ray: each run is a Ray task that runs the ordinary worker process.

``lorabench run SUITE --ray [--address ADDR]``. Ray schedules; lorabench does not grow a
scheduler of its own. Every task calls the same `lorabench.run.launch_local.spawn` as a local run (one
child process per run, crash records included), so records have the same content; the
driver writes each returned record into the results folder, so resumption (skip what is
recorded, ``--retry-failed``) works exactly as locally, and records come back even when
workers do not share the driver's filesystem. Adapters and logs stay where the worker ran
(the same folder on a local cluster or a shared mount).

Resources per task: one GPU when the run's device is CUDA; otherwise as many CPUs as a
local run's torch threads (capped at the cluster's CPUs), so a run computes with the same
threads as it would locally and its numbers stay comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorabench.errors import ConfigError, Interrupted
from lorabench.records import new_record, save_record
from lorabench.run.launch_local import (
    RunLock,
    SuiteOutcome,
    finish,
    held_by,
    interrupted_message,
    lock_path,
    prepare,
    record_path,
    spawn,
)
from lorabench.run.suite import RunSpec, Suite

log = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install 'lorabench[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def run_suite_ray(
    suite: Suite,
    runs: list[RunSpec],
    out_dir: Path,
    *,
    address: str | None = None,
    retry_failed: bool = False,
    command: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    log_samples: bool = False,
    tracker: str | None = None,
) -> SuiteOutcome:
    """Like `lorabench.run.launch_local.run_suite`, with each run a Ray task on ``address`` (None: local)."""
    ray = import_ray()
    out_dir = Path(out_dir).resolve()
    todo, outcome = prepare(runs, out_dir, retry_failed)
    locks = {}
    for run in todo:  # the driver holds each run's lock until its record is written
        lock = RunLock(lock_path(out_dir, run))
        if lock.acquire():
            locks[run.run_id] = lock
        else:
            held_by(outcome, run, lock.holder())
    todo = [run for run in todo if run.run_id in locks]
    if not todo:
        return outcome
    try:
        return _run_on_ray(
            ray, suite, todo, out_dir, address, (command, log_samples, tracker), progress,
            on_record, outcome, locks,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(runs, out_dir, outcome, None)) from None
    finally:
        for lock in locks.values():
            lock.release()


def _run_on_ray(ray, suite, todo, out_dir, address, job, progress, on_record, outcome, locks):
    command, log_samples, tracker = job
    started_here = not ray.is_initialized()
    if started_here:
        log.info("connecting to Ray at %s", address or "a new local instance")
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        cpus = max(1, min(torch.get_num_threads(), int(ray.cluster_resources().get("CPU", 1))))
        task = ray.remote(_run_task)
        pending = {}
        for run in todo:
            cuda = str(run.config["device"]).startswith("cuda")
            options = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": cpus}
            options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(cpus)}}
            ref = task.options(**options).remote(
                run, suite, str(out_dir), command, log_samples, tracker
            )
            pending[ref] = run
        bar = tqdm(
            total=len(todo), desc=f"suite {suite.settings.name} (ray)", unit="run",
            disable=not progress, dynamic_ncols=True,
        )  # fmt: skip
        with bar:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task itself died (node lost, ...)
                    record = new_record(run.run_id, run.config, command)
                    record["error"] = f"Ray task failed: {str(exc).strip().splitlines()[0]}"
                save_record(record_path(out_dir, run), record)
                locks.pop(run.run_id).release()
                finish(record, outcome, on_record)
                bar.update()
    finally:
        if started_here:
            ray.shutdown()
    return outcome


def _run_task(
    run: RunSpec,
    suite: Suite,
    out_dir: str,
    command: str | None,
    log_samples: bool = False,
    tracker: str | None = None,
) -> dict:
    """On a Ray worker: the ordinary worker process for one run; its record."""
    return spawn(
        run, suite, Path(out_dir), command, progress=False, log_samples=log_samples,
        tracker=tracker,
    )  # fmt: skip
