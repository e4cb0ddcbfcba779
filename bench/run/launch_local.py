"""Run a planned suite: one process per run, records on disk, resumable.

Finished runs (any record with status ``ok``) are skipped; failed ones (``failed``, ``oom``,
``nan``) are skipped too unless ``retry_failed``. A worker that dies without writing its
record (killed, segfault) gets a ``failed`` record written here with its exit code and
the tail of its output, and the suite goes on.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lorabench.records import config_hash, new_record, read_record, write_json_atomic
from lorabench.run.suite import RunSpec, Suite

log = logging.getLogger(__name__)

RUNS_DIR = "runs"


@dataclass
class SuiteOutcome:
    executed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def records(self) -> list[dict]:
        return self.skipped + self.executed


def record_path(out_dir: Path, run: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f"{run.run_id}.json"


def run_suite(
    suite: Suite,
    runs: list[RunSpec],
    out_dir: Path,
    *,
    retry_failed: bool = False,
    command: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> SuiteOutcome:
    """Execute ``runs`` (each in a child process), skipping the ones already recorded."""
    out_dir = Path(out_dir)
    todo, outcome = prepare(runs, out_dir, retry_failed)
    bar = tqdm(
        todo,
        desc=f"suite {suite.settings.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    for run in bar:
        bar.set_postfix_str(run.run_id)
        record = spawn(run, suite, out_dir, command, progress)
        finish(record, outcome, on_record)
    return outcome


def prepare(runs: list[RunSpec], out_dir: Path, retry_failed: bool) -> tuple[list, SuiteOutcome]:
    """Build the base models, and split ``runs`` into those to execute and those recorded."""
    (out_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    _prepare_base_model(runs)
    outcome = SuiteOutcome()
    todo = []
    for run in runs:
        existing = read_record(record_path(out_dir, run))
        if existing and (existing["status"] == "ok" or not retry_failed):
            outcome.skipped.append(existing)
        else:
            todo.append(run)
    if outcome.skipped:
        log.info(
            "%d of %d runs already recorded in %s; skipping them",
            len(outcome.skipped),
            len(runs),
            out_dir,
        )
    return todo, outcome


def finish(record: dict, outcome: SuiteOutcome, on_record: Callable[[dict], None] | None) -> None:
    log.info(
        "%s: %s%s",
        record["run_id"],
        record["status"],
        f" ({record['error']})" if record["error"] else "",
    )
    outcome.executed.append(record)
    if on_record:
        on_record(record)


def _prepare_base_model(runs: list[RunSpec]) -> None:
    """Build (or fetch and convert) built-in models once, here, so workers only load them."""
    from lorabench.models.zoo import BUILTIN_MODELS, model_path

    for name in sorted({r.config["model"] for r in runs} & set(BUILTIN_MODELS)):
        model_path(name)


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the parent dies, so no orphan keeps training."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(run: RunSpec, suite: Suite, out_dir: Path, command: str | None, progress: bool) -> dict:
    """Run ``run`` in a child process; its record (a crash record if it wrote none)."""
    path = record_path(out_dir, run)
    job = {
        "run_id": run.run_id,
        "config": run.config,
        "record_path": str(path),
        "suite_root": str(suite.root.resolve()),
        "out_dir": str(out_dir.resolve()),
        "command": command,
        "progress": progress,
    }
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", prefix="lorabench-job-", delete=False
    ) as handle:
        json.dump(job, handle)
    log_path = out_dir / "logs" / f"{run.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LORABENCH_LOG": str(log_path)}
    started = time.time()
    try:
        log_path.write_text("")
        with open(log_path, "a") as log_file:  # O_APPEND: shared with the worker's log handler
            proc = subprocess.run(
                [sys.executable, "-m", "lorabench.run.worker", handle.name],
                stdout=log_file,
                # the worker's progress bars go to the terminal; its log lines go to log_path
                stderr=None if progress else subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                env=env,
            )
    finally:
        os.unlink(handle.name)
    record = read_record(path)
    if record is None or record.get("config_hash") != config_hash(run.config):
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        record = _crash_record(run, command, proc.returncode, tail, time.time() - started)
        write_json_atomic(path, record)
    return record


def _crash_record(run: RunSpec, command, returncode: int, tail: str, seconds: float) -> dict:
    # A worker killed by SIGKILL without writing its record was, on a benchmark machine,
    # almost always taken by the kernel's out-of-memory killer.
    killed = returncode == -signal.SIGKILL
    why = (
        "killed by SIGKILL (most likely the out-of-memory killer)"
        if killed
        else f"exited with code {returncode}"
    )
    tail = tail[-500:].strip()
    record = new_record(run.run_id, run.config, command)
    record.update(
        status="oom" if killed else "failed",
        error=f"worker {why} before writing its record" + (f"; log tail: {tail}" if tail else ""),
        metrics={"wall_time_s": seconds},
    )
    return record
