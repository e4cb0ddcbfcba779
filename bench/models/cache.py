"""The user cache of built models: each folder is built once, atomically, safe across processes.

A folder is complete when its marker file exists. Builders write into a temporary sibling
folder that is renamed into place at the end, so a killed build or a deleted cache leaves
either nothing or a leftover that the next call removes and rebuilds.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from lorabench.errors import LorabenchError, ModelSourceError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    env = os.environ.get("LORABENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorabench"


def build_once(
    folder: Path,
    marker: str,
    build: Callable[[Path], object],
    what: str,
    error: type[LorabenchError] = ModelSourceError,
) -> Path:
    """``folder``, calling ``build(tmp_folder)`` first unless ``folder/marker`` exists.

    Any failure that is not already a :class:`LorabenchError` becomes one ``error`` line."""
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder.with_suffix(".lock"), what):
        if (folder / marker).is_file():  # another process built it meanwhile
            return folder
        log.info("building %s in %s (once)", what, folder)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            try:
                build(tmp)
            except LorabenchError:
                raise
            except Exception as exc:  # one line for the user; the cause stays chained
                raise error(
                    f"building {what} failed ({type(exc).__name__}: {exc}); nothing was kept, "
                    "the next run starts over"
                ) from exc
            if not (tmp / marker).is_file():
                raise error(f"building {what} wrote no {marker}")
            if folder.exists():  # a leftover without the marker
                shutil.rmtree(folder)
            os.replace(tmp, folder)  # atomic: the folder is complete or absent
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextmanager
def _lock(path: Path, what: str = "a cached model"):
    """An exclusive lock on ``path``; says once what it waits for when another process holds it."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            log.warning(
                "waiting for another process%s, which is building %s (lock %s)",
                f" (pid {holder})" if holder.isdigit() else "",
                what,
                path,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("lock %s acquired", path)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
