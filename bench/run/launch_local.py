"""Run a planned suite: one process per run, records on disk, resumable, safe to share.

Finished runs (a valid record with status ``ok``) are skipped; failed ones (``failed``,
``oom``, ``nan``, ``killed``) are skipped too unless ``retry_failed``. A record counts only
if it is valid (:func:`lorabench.records.record_problem`): an invalid one is reported in one
line, moved aside (``*.json.invalid``) and its run done again.

A worker that dies without writing its record gets one written here: ``oom`` when it was
killed by SIGKILL and there is evidence of the out-of-memory killer (the cgroup's or the
kernel's ``oom_kill`` counter rose during the run, or its peak RSS reached 90 % of the
memory limit), ``killed`` for a SIGKILL without such evidence, ``failed`` otherwise.

Two ``lorabench run`` on one results folder split the work: each run is done under an
exclusive ``fcntl`` lock on ``runs/.<run_id>.lock``, and a run whose lock another process
holds is skipped and named. Ctrl-C stops the worker, keeps every finished record and
raises :class:`lorabench.errors.Interrupted`; running the same command again resumes.
The job file a worker reads (``runs/.<run_id>.job``) is removed on every exit path
(by the worker once read, by the launcher afterwards, and by the next launch if both were
killed).
"""

from __future__ import annotations

import ctypes
import fcntl
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

from lorabench.errors import Interrupted, OutputError
from lorabench.records import (
    config_hash,
    fallback_record_paths,
    new_record,
    record_problem,
    save_record,
    write_json_atomic,
)
from lorabench.run.suite import RunSpec, Suite

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
STOP_GRACE_S = 10.0  # after Ctrl-C, how long a worker may take to stop before SIGKILL
OOM_RSS_FRACTION = 0.9  # a peak RSS this close to the memory limit is evidence of OOM


@dataclass
class SuiteOutcome:
    executed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    held: list[tuple[RunSpec, str]] = field(default_factory=list)  # (run, holder) skipped

    @property
    def records(self) -> list[dict]:
        return self.skipped + self.executed


def record_path(out_dir: Path, run: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f"{run.run_id}.json"


def job_path(out_dir: Path, run: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f".{run.run_id}.job"


def lock_path(out_dir: Path, run: RunSpec) -> Path:
    return out_dir / RUNS_DIR / f".{run.run_id}.lock"


# ---- per-run locks ---------------------------------------------------------------------------


class RunLock:
    """An exclusive, non-blocking ``flock`` on a run's lock file; released on close.

    The holder writes its pid into the file so that a process that finds it held can say who
    holds it. The kernel drops the lock when the holder dies, even by SIGKILL.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = None

    def acquire(self) -> bool:
        """True when this process now holds the lock (or no lock file can be made there:
        then the run goes ahead unlocked, and its record to a fallback location)."""
        try:
            handle = open(self.path, "a+")
        except OSError as exc:
            log.warning("cannot lock %s (%s); running without a lock", self.path, exc.strerror)
            return True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return True

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---- the suite -------------------------------------------------------------------------------


def run_suite(
    suite: Suite,
    runs: list[RunSpec],
    out_dir: Path,
    *,
    retry_failed: bool = False,
    command: str | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    log_samples: bool = False,
    tracker: str | None = None,
) -> SuiteOutcome:
    """Execute ``runs`` (each in a child process), skipping the ones already recorded.

    ``tracker`` (``tensorboard``) makes each worker log its training scalars
    (``lorabench.run.tracking``). Raises :class:`Interrupted` on Ctrl-C, after stopping the
    worker.
    """
    out_dir = Path(out_dir)
    todo, outcome = prepare(runs, out_dir, retry_failed)
    bar = tqdm(
        todo,
        desc=f"suite {suite.settings.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    current = None
    try:
        for run in bar:
            bar.set_postfix_str(run.run_id)
            with RunLock(lock_path(out_dir, run)) as lock:
                if not lock.acquire():
                    held_by(outcome, run, lock.holder())
                    continue
                # another process may have finished it since prepare() looked
                done, _ = record_problem(record_path(out_dir, run), config_hash(run.config))
                if done and (done["status"] == "ok" or not retry_failed):
                    outcome.skipped.append(done)
                    continue
                current = run
                record = spawn(
                    run, suite, out_dir, command, progress, log_samples=log_samples,
                    tracker=tracker,
                )  # fmt: skip
                current = None
            finish(record, outcome, on_record)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(interrupted_message(runs, out_dir, outcome, current)) from None
    return outcome


def held_by(outcome: SuiteOutcome, run: RunSpec, holder: str) -> None:
    log.warning("%s: skipped, another lorabench process (%s) is running it", run.run_id, holder)
    outcome.held.append((run, holder))


def interrupted_message(
    runs: list[RunSpec], out_dir: Path, outcome: SuiteOutcome, current: RunSpec | None
) -> str:
    recorded = sum(
        1 for run in runs if record_problem(record_path(out_dir, run), config_hash(run.config))[0]
    )
    done = current and record_problem(record_path(out_dir, current), config_hash(current.config))[0]
    stopped = (
        f"; run {current.run_id} was stopped and left no record" if current and not done else ""
    )
    return (
        f"interrupted: {recorded} of {len(runs)} runs are recorded in {out_dir / RUNS_DIR} "
        f"({len(outcome.executed)} finished now){stopped}; run the same command again to "
        "resume with the rest"
    )


def prepare(runs: list[RunSpec], out_dir: Path, retry_failed: bool) -> tuple[list, SuiteOutcome]:
    """Build the base models, and split ``runs`` into those to execute and those recorded.

    Records saved to a fallback location by an earlier run are moved into place first;
    invalid records are reported, moved aside and their runs executed again.
    """
    runs_dir = out_dir / RUNS_DIR
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the results folder {runs_dir} ({exc.strerror or exc})"
        ) from exc
    _prepare_base_model(runs)
    _remove_stale_job_files(runs, out_dir)
    outcome = SuiteOutcome()
    todo = []
    for run in runs:
        path = record_path(out_dir, run)
        expected = config_hash(run.config)
        _recover_unsaved(path, expected)
        existing, why = record_problem(path, expected)
        if why is not None:
            aside = path.with_name(path.name + ".invalid")
            try:
                os.replace(path, aside)
                where = f"moved to {aside.name}"
            except OSError:
                where = "left in place"
            log.warning("%s: invalid record (%s); %s, running it again", path, why, where)
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


def _recover_unsaved(path: Path, expected: str) -> None:
    """Move a valid record of this run from a fallback location (see ``save_record``) into place."""
    if record_problem(path, expected)[0] is not None:
        return
    for fallback in fallback_record_paths(path):
        record, _ = record_problem(fallback, expected)
        if record is None:
            continue
        try:
            write_json_atomic(path, record)
        except OSError:
            return  # still unwritable: it stays where it is
        fallback.unlink(missing_ok=True)
        log.warning("%s: recovered its record from %s", path.name, fallback)
        return


def _remove_stale_job_files(runs: list[RunSpec], out_dir: Path) -> None:
    """Job files of runs whose lock nobody holds are left over from a killed launcher."""
    for run in runs:
        job = job_path(out_dir, run)
        if job.exists():
            with RunLock(lock_path(out_dir, run)) as lock:
                if lock.acquire():
                    job.unlink(missing_ok=True)


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


# ---- one run ---------------------------------------------------------------------------------


def spawn(
    run: RunSpec,
    suite: Suite,
    out_dir: Path,
    command: str | None,
    progress: bool,
    log_samples: bool = False,
    tracker: str | None = None,
) -> dict:
    """Run ``run`` in a child process; its record (a crash record if it wrote none).

    ``log_samples``: the worker also writes lm-eval's per-sample logs (not part of the
    run's config: they do not change a result).

    KeyboardInterrupt stops the child (SIGINT, then SIGKILL after ``STOP_GRACE_S``) and
    propagates; the interrupted run gets no record, so a rerun does it again.
    """
    path = record_path(out_dir, run)
    job = {
        "run_id": run.run_id,
        "config": run.config,
        "record_path": str(path.absolute()),
        "suite_root": str(suite.root.resolve()),
        "out_dir": str(out_dir.resolve()),
        "command": command,
        "progress": progress,
        "log_samples": log_samples,
        "tracker": tracker,
    }
    job_file = _write_job(job_path(out_dir, run), job)
    log_path = _log_file(out_dir / "logs" / f"{run.run_id}.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LORABENCH_LOG": str(log_path)}
    expected = config_hash(run.config)
    started = time.time()
    memory = MemoryWatch()
    try:
        with open(log_path, "a") as log_file:  # O_APPEND: shared with the worker's log handler
            proc = subprocess.Popen(
                [sys.executable, "-m", "lorabench.run.worker", str(job_file)],
                stdout=log_file,
                # the worker's progress bars go to the terminal; its log lines go to log_path
                stderr=None if progress else subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                env=env,
            )
            returncode, peak_rss = _wait(proc)
    finally:
        job_file.unlink(missing_ok=True)
    record, _ = record_problem(path, expected)
    if record is None:
        record = _unsaved_record(path, expected)
    if record is None:
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        evidence = memory.evidence(peak_rss) if returncode == -signal.SIGKILL else None
        record = _crash_record(run, command, returncode, tail, time.time() - started, evidence)
        try:
            save_record(path, record)
        except OSError:  # save_record printed it; the suite goes on
            log.error("%s: its crash record could not be written anywhere", run.run_id)
    return record


def _write_job(path: Path, job: dict) -> Path:
    """The job file beside the record; in the system temp folder if the results folder
    cannot be written (the worker's record then goes to a fallback too)."""
    try:
        write_json_atomic(path, job)
        return path
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"lorabench-job-{job['run_id']}-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(job, handle)
        return Path(name)


def _log_file(path: Path) -> Path:
    """An empty log file for the worker at ``path``, or in the system temp folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        return path
    except OSError as exc:
        fd, name = tempfile.mkstemp(prefix=f"lorabench-{path.stem}-", suffix=".log")
        os.close(fd)
        log.warning("cannot write %s (%s); the worker logs to %s", path, exc.strerror, name)
        return Path(name)


def _unsaved_record(path: Path, expected: str) -> dict | None:
    """The worker's record from a fallback location, when it could not write ``path``."""
    for fallback in fallback_record_paths(path):
        record, _ = record_problem(fallback, expected)
        if record is not None:
            log.warning(
                "%s: its record is in %s (the results folder was not writable)", path.stem, fallback
            )
            return record
    return None


def _wait(proc: subprocess.Popen) -> tuple[int, int | None]:
    """The child's return code (negative: killed by that signal) and peak RSS in bytes.

    On KeyboardInterrupt: SIGINT to the child, SIGKILL if it has not exited after
    ``STOP_GRACE_S`` (or on a second Ctrl-C); reaps it and re-raises.
    """
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        _stop(proc)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024  # kB on Linux


def _stop(proc: subprocess.Popen) -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        proc.kill()
        proc.wait()


# ---- out-of-memory evidence ------------------------------------------------------------------


def _memory_cgroup(proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")):
    """This process's memory cgroup folder (cgroup v2, or v1's memory controller), or None."""
    try:
        lines = (proc_root / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):  # v1
            folder = cgroup_root / "memory" / rel
        elif controllers == "":  # v2
            folder = cgroup_root / rel
        else:
            continue
        if (folder / "memory.events").is_file() or (folder / "memory.oom_control").is_file():
            return folder
    return None


def _counter(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None


def _memory_limit(cgroup: Path | None, proc_root: Path = Path("/proc")) -> int | None:
    """The memory limit in bytes: the cgroup's, else the machine's RAM."""
    if cgroup is not None:
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                text = (cgroup / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 1 << 60:  # v1's "no limit" is ~2**63
                return int(text)
    try:
        for line in (proc_root / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # "MemTotal:   24683656 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryWatch:
    """Out-of-memory counters read before a run, compared after it dies (Linux)."""

    def __init__(self, proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")):
        self.proc_root = proc_root
        self.cgroup = _memory_cgroup(proc_root, cgroup_root)
        self.before = self._counts()

    def _counts(self) -> dict[str, int | None]:
        counts = {"kernel": _counter(self.proc_root / "vmstat", "oom_kill")}
        if self.cgroup is not None:
            events = self.cgroup / "memory.events"
            counts["cgroup"] = _counter(
                events if events.is_file() else self.cgroup / "memory.oom_control", "oom_kill"
            )
        return counts

    def evidence(self, peak_rss: int | None) -> str | None:
        """Why the run's SIGKILL was the out-of-memory killer, or None without evidence."""
        after = self._counts()
        for scope, before in self.before.items():
            now = after.get(scope)
            if before is not None and now is not None and now > before:
                where = "cgroup memory.events" if scope == "cgroup" else "kernel /proc/vmstat"
                return f"{where} oom_kill rose from {before} to {now} during the run"
        limit = _memory_limit(self.cgroup, self.proc_root)
        if peak_rss and limit and peak_rss >= OOM_RSS_FRACTION * limit:
            return (
                f"peak RSS {peak_rss / 2**30:.1f} GiB reached {100 * peak_rss / limit:.0f} % "
                f"of the {limit / 2**30:.1f} GiB memory limit"
            )
        return None


def _crash_record(
    run: RunSpec,
    command,
    returncode: int,
    tail: str,
    seconds: float,
    evidence: str | None = None,
) -> dict:
    if returncode == -signal.SIGKILL and evidence:
        status, why = "oom", f"worker was killed by the out-of-memory killer ({evidence})"
    elif returncode == -signal.SIGKILL:
        status = "killed"
        why = "worker killed by SIGKILL (possibly the out-of-memory killer; no evidence found)"
    elif returncode < 0:
        status, why = "failed", f"worker died of signal {signal.Signals(-returncode).name}"
    else:
        status, why = "failed", f"worker exited with code {returncode}"
    tail = tail[-500:].strip()
    record = new_record(run.run_id, run.config, command)
    record.update(
        status=status,
        error=f"{why} before writing its record" + (f"; log tail: {tail}" if tail else ""),
        metrics={"wall_time_s": seconds},
    )
    return record
