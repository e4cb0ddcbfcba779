"""One interface for launching a planned suite's runs: local processes or Ray tasks.

Both launchers run each run through the same worker process (``launch_local.spawn``),
skip recorded runs the same way and return the same :class:`SuiteOutcome`; they differ
only in where the worker process starts::

    launcher = make_launcher(ray=False)           # or make_launcher(ray=True, address=...)
    outcome = launcher.run(suite, runs, out_dir, retry_failed=False, command="...")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lorabench.run.launch_local import SuiteOutcome, run_suite
from lorabench.run.suite import RunSpec, Suite


class Launcher(Protocol):
    def run(
        self,
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
    ) -> SuiteOutcome: ...


@dataclass(frozen=True)
class LocalLauncher:
    """Each run in its own child process on this machine, one after another."""

    def run(self, suite, runs, out_dir, **options) -> SuiteOutcome:
        return run_suite(suite, runs, out_dir, **options)


@dataclass(frozen=True)
class RayLauncher:
    """Each run a Ray task on a new local instance (``address`` None) or a cluster."""

    address: str | None = None

    def run(self, suite, runs, out_dir, **options) -> SuiteOutcome:
        from lorabench.run.launch_ray import run_suite_ray

        return run_suite_ray(suite, runs, out_dir, address=self.address, **options)


def make_launcher(ray: bool = False, address: str | None = None) -> Launcher:
    """The launcher for the CLI's ``--ray`` / ``--address``; checks Ray is importable now."""
    if not ray:
        return LocalLauncher()
    from lorabench.run.launch_ray import import_ray

    import_ray()  # a one-line error before planning when Ray is not installed
    return RayLauncher(address)
