"""Result records: one JSON file per run, written atomically, never half-written.

A record carries the full resolved run config and its hash, the environment, the status
(``ok`` / ``failed`` / ``oom`` / ``nan``) with the error text, and the metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "oom", "nan")
RECORD_KEYS = (
    "schema", "run_id", "suite", "label", "method", "seed", "config", "config_hash",
    "status", "error", "env", "metrics", "started_at", "finished_at", "command",
)  # fmt: skip


def new_record(run_id: str, config: dict, command: str | None) -> dict:
    """The record of a run before it has a result: status ``failed`` until it says otherwise."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "suite": config["suite"],
        "label": config["label"],
        "method": config["method"],
        "seed": config["seed"],
        "config": config,
        "config_hash": config_hash(config),
        "status": "failed",
        "error": None,
        "env": environment(config["device"]),
        "metrics": {},
        "started_at": None,
        "finished_at": None,
        "command": command,
    }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None if it is absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") in STATUSES else None


def environment(device: str) -> dict:
    import torch

    versions = {}
    for dist in ("lorabench", "torch", "transformers", "peft", "lm_eval", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    env = {
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
