"""Experiment tracking: each run's training scalars, live, for TensorBoard.

``lorabench run SUITE --log tensorboard`` gives every run its own folder,
``<out>/tensorboard/<run_id>/``, where the worker writes, per optimiser step, ``train/loss``,
``train/lr`` and ``train/tokens_per_s``, and ``val/loss`` at the steps where the validation
loss is measured (``[train] eval_every``). ``tensorboard --logdir <out>/tensorboard`` shows
all runs of the suite side by side. Tracking changes no result and is not in the config hash.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lorabench.errors import ConfigError

TRACKERS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = '--log tensorboard needs TensorBoard: pip install "lorabench[tensorboard]"'

ScalarSink = Callable[[int, dict[str, float]], None]


def check_tracker(tracker: str | None) -> None:
    """A one-line ConfigError, before anything trains, when ``tracker`` cannot be used."""
    if tracker is None:
        return
    if tracker not in TRACKERS:
        raise ConfigError(f"--log: expected one of {', '.join(TRACKERS)}, got {tracker!r}")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs tensorboard)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def run_log_dir(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / TENSORBOARD_DIR / run_id


@contextmanager
def scalar_sink(tracker: str | None, folder: Path) -> Iterator[ScalarSink | None]:
    """A function ``(step, {tag: value})`` that writes to ``tracker`` in ``folder``, or None.

    An earlier attempt's events in ``folder`` (a retried run) are removed first, so the
    folder holds one run's curves, as the results folder holds one record per run.
    """
    if tracker is None:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(folder))

    def write(step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)

    try:
        yield write
    finally:
        writer.close()
