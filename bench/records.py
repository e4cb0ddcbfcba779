"""Result records: one JSON file per run, written atomically, never half-written.

A record carries the full resolved run config and its hash, the environment, the status
(``ok`` / ``failed`` / ``oom`` / ``nan`` / ``killed``) with the error text, and the metrics.
:class:`Record` and :class:`RunConfig` are the typed form that the worker writes and the
report reads; ``schema/record.schema.json`` is the same contract as a JSON Schema and
``docs/records.md`` documents it field by field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: the key "schema" became "schema_version"; records became typed
STATUSES = ("ok", "failed", "oom", "nan", "killed")
SCHEMA_FILE = Path(__file__).parent / "schema" / "record.schema.json"
# metrics.contended: a CPU run ran beside other work when, while training, it used less
# than CONTENDED_BELOW of its threads' CPU time (process CPU time / (wall time × torch
# threads)), or its threads waited for a CPU more than CONTENDED_WAIT_ABOVE of that time
# (run-queue wait: busy-waiting threads keep the CPU time high on a crowded machine)
CONTENDED_BELOW = 0.7
CONTENDED_WAIT_ABOVE = 0.1


def is_contended(cpu_utilisation: float, cpu_wait_fraction: float | None) -> bool:
    """The ``metrics.contended`` rule (thresholds above)."""
    waited = cpu_wait_fraction is not None and cpu_wait_fraction > CONTENDED_WAIT_ABOVE
    return cpu_utilisation < CONTENDED_BELOW or waited


UNSAVED_DIR = "lorabench-unsaved-records"  # fallback folder in the system temp folder

log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A record file that is not a valid record (the message says which field and why)."""


@dataclass
class RunConfig:
    """Everything that decides a run's result; its canonical JSON hash names the run."""

    suite: str
    label: str
    method: str
    seed: int
    model: str
    tasks: str | list[str]
    tasks_dir: str
    train_data: Any
    targets: list[str]
    method_config: dict[str, Any]
    budget: dict[str, Any] | None
    train: dict[str, Any]
    eval: dict[str, Any]
    device: str
    dtype: str
    chat_template: bool
    inject_fault: str | None
    sweep: dict[str, Any] | None = None  # only on sweep points (absent otherwise)
    # only on training-grid runs (absent otherwise): {"fields": [...], "seed": s}
    train_sweep: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for optional in ("sweep", "train_sweep"):
            if out[optional] is None:  # absent, so older configs keep their hash
                del out[optional]
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = "config") -> RunConfig:
        return cls(**_fields_of(cls, raw, where))


@dataclass
class Record:
    """One run's result record: identity, full config and hash, environment, status, metrics.

    ``metrics`` holds what the worker measured (documented key by key in docs/records.md
    and checked by the JSON Schema); a failed run's metrics may be nearly empty.
    """

    run_id: str
    suite: str
    label: str
    method: str
    seed: int
    config: RunConfig
    config_hash: str
    status: str
    error: str | None
    env: dict[str, Any]
    metrics: dict[str, Any]
    started_at: str | None
    finished_at: str | None
    command: str | None
    schema_version: int = SCHEMA_VERSION
    traceback: str | None = None  # a failed worker's last frames

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise RecordError(f"status: expected one of {', '.join(STATUSES)}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.to_dict()
        if out["traceback"] is None:
            del out["traceback"]
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> Record:
        """A record from its JSON object, migrating older schema versions; RecordError if invalid."""
        raw = migrate(raw)
        fields = _fields_of(cls, raw, "record")
        fields["config"] = RunConfig.from_dict(fields["config"])
        for key in ("env", "metrics"):
            if not isinstance(fields[key], dict):
                raise RecordError(f"{key}: expected an object, got {type(fields[key]).__name__}")
        return cls(**fields)


RECORD_KEYS = tuple(f.name for f in dataclasses.fields(Record) if f.name != "traceback")


def migrate(raw: Any) -> dict:
    """The JSON object of a record in the current schema (version 1 → 2: key renamed)."""
    if not isinstance(raw, dict):
        raise RecordError(f"expected a JSON object, got {type(raw).__name__}")
    if "schema_version" not in raw and raw.get("schema") == 1:
        raw = {k: v for k, v in raw.items() if k != "schema"} | {"schema_version": SCHEMA_VERSION}
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema_version: expected {SCHEMA_VERSION} (or 1), got {version!r}")
    return raw


def _fields_of(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """``raw``'s values for ``cls``'s fields: required ones present, no unknown key."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {', '.join(unknown)}")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    return dict(raw)


def new_record(run_id: str, config: dict, command: str | None) -> dict:
    """The record of a run before it has a result: status ``failed`` until it says otherwise."""
    record = Record(
        run_id=run_id,
        suite=config["suite"],
        label=config["label"],
        method=config["method"],
        seed=config["seed"],
        config=RunConfig.from_dict(config),
        config_hash=config_hash(config),
        status="failed",
        error=None,
        env=environment(config["device"]),
        metrics={},
        started_at=None,
        finished_at=None,
        command=command,
    )
    return record.to_dict()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def default_file_mode() -> int:
    """The mode an ordinary new file gets under the user's umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` the way :func:`write_json_atomic` writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; records are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: str | Path, what: str) -> Path:
    """``folder`` (absolute) if files can be written there, creating nothing; else OutputError.

    A missing folder is fine when its nearest existing ancestor is a writable folder (it
    is created later). Writability is probed by creating and removing a temporary file,
    which also catches read-only file systems and, unlike permission bits, root's limits.
    """
    from lorabench.errors import OutputError

    target = Path(folder).expanduser().absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {folder}: cannot write there ({probe} is not a folder)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lorabench-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"{what} {folder}: cannot write there ({exc.strerror or exc}: {probe})"
        ) from exc
    return target


def fallback_record_paths(path: Path) -> list[Path]:
    """Where a record goes when ``path`` cannot be written: the system temp folder, then
    beside the results folder (``RESULTS/runs/x.json`` → ``RESULTS.unsaved/x.json``)."""
    results = Path(path).absolute().parent.parent
    return [
        Path(tempfile.gettempdir()) / UNSAVED_DIR / Path(path).name,
        results.parent / f"{results.name}.unsaved" / Path(path).name,
    ]


def save_record(path: Path, record: dict) -> Path:
    """Write ``record`` to ``path`` atomically; if that fails, to the first fallback that
    works (saying where on the log and on stderr); the path written.

    Metrics are never dropped: if no file can be written at all, the record goes to stderr
    as JSON and OSError is raised.
    """
    try:
        write_json_atomic(path, record)
        return path
    except OSError as exc:
        first = exc
    for fallback in fallback_record_paths(path):
        try:
            write_json_atomic(fallback, record)
        except OSError:
            continue
        message = (
            f"cannot write record {path} ({first.strerror or first}); saved it to {fallback}; "
            "the next `lorabench run` of this suite moves it into place"
        )
        log.warning(message)
        print(f"lorabench: warning: {message}", file=sys.stderr, flush=True)
        return fallback
    print(
        f"lorabench: error: cannot write record {path} nor any fallback; the record follows:\n"
        + json.dumps(record, sort_keys=True, default=str),
        file=sys.stderr,
        flush=True,
    )
    raise first


def record_problem(path: Path, expected_hash: str | None = None) -> tuple[dict | None, str | None]:
    """``(record, None)`` when ``path`` holds a valid record of the expected config,
    ``(None, None)`` when there is no file, else ``(None, why)`` in a few words.

    Valid: it loads through :func:`load_record`, its ``config_hash`` is the hash of its
    ``config``, its file name is its ``run_id`` and ends with the hash, and (when given)
    the hash is ``expected_hash``, the planned run's.
    """
    if not path.exists():
        return None, None
    try:
        record = load_record(path)
    except RecordError as exc:
        return None, str(exc).removeprefix(f"{path.name}: ")
    digest = record["config_hash"]
    if config_hash(record["config"]) != digest:
        return None, "its config_hash is not the hash of its config (edited by hand?)"
    if record["run_id"] != path.stem or not path.stem.endswith(digest[:8]):
        return None, f"its run_id {record['run_id']!r} / config hash does not match the file name"
    if expected_hash is not None and digest != expected_hash:
        return None, "its config is not the planned run's config"
    return record, None


def read_record(path: Path) -> dict | None:
    """The record at ``path`` in the current schema, or None if it is absent or invalid."""
    try:
        return load_record(path)
    except RecordError:
        return None


def load_record(path: Path) -> dict:
    """The record at ``path``, validated through :class:`Record` and migrated to the current
    schema, as its JSON object. RecordError (naming the file and the field) otherwise."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise RecordError(f"{path.name}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise RecordError(f"{path.name}: not JSON ({exc})") from exc
    try:
        return Record.from_dict(raw).to_dict()
    except (RecordError, TypeError) as exc:
        raise RecordError(f"{path.name}: {exc}") from exc


def environment(device: str) -> dict:
    import torch

    versions = {}
    for dist in ("lorabench", "torch", "transformers", "peft", "lm_eval", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    env = {
        "cpu_capability": _cpu_capability(torch),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "device": device,
        "device_name": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def _cpu_capability(torch) -> str | None:
    """The SIMD level torch dispatches CPU kernels to (e.g. AVX2, AVX512): it decides the
    floating-point results of CPU runs."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
