"""What a training loop measures about itself: tokens/s, its spread, and CPU contention.

Steps before the throughput warm-up are excluded from tokens/s; the measured steps are
also cut into consecutive windows, whose spread is the throughput's spread. CPU
utilisation and run-queue wait say whether other work held the CPUs meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

THROUGHPUT_WINDOWS = 10  # the measured steps are split into this many consecutive windows


def run_queue_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (the second
    field of Linux's ``/proc/self/task/*/schedstat``); None where that is not available.

    Busy-waiting OpenMP threads keep the CPU time high while another process holds the
    cores, so utilisation alone misses contention; run-queue waiting does not.
    """
    total, found = 0, False
    for path in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
            found = True
        except (OSError, ValueError, IndexError):  # a thread that just exited
            continue
    return total / 1e9 if found else None


def throughput_windows(
    tokens: list[int], seconds: list[float], windows: int = THROUGHPUT_WINDOWS
) -> list[float]:
    """Tokens/s of consecutive windows of steps, as equal in length as possible."""
    count = min(windows, len(tokens))
    bounds = [round(i * len(tokens) / count) for i in range(count + 1)] if count else []
    out = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        elapsed = sum(seconds[start:end])
        if elapsed > 0:
            out.append(sum(tokens[start:end]) / elapsed)
    return out


class LoopMeter:
    """Tokens/s (after ``warmup`` steps), windows, and the CPU use of the training loop."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.tokens: list[int] = []
        self.seconds: list[float] = []
        self.total_tokens, self.total_time = 0, 0.0
        self.wait_started = run_queue_wait_s()
        self.cpu_started, self.wall_started = time.process_time(), time.perf_counter()

    def step(self, step: int, tokens: int, elapsed: float) -> None:
        """Count one optimiser step (0-based ``step``) of ``tokens`` that took ``elapsed`` s."""
        self.total_tokens += tokens
        self.total_time += elapsed
        if step >= self.warmup:
            self.tokens.append(tokens)
            self.seconds.append(elapsed)

    def summary(self) -> dict:
        """The loop's measurements, under ``TrainResult``'s field names."""
        out: dict = {"tokens": self.total_tokens, "train_time_s": self.total_time}
        wall = time.perf_counter() - self.wall_started
        if wall > 0:
            cpu = time.process_time() - self.cpu_started
            out["cpu_utilisation"] = cpu / (wall * torch.get_num_threads())
            wait_ended = run_queue_wait_s()
            if self.wait_started is not None and wait_ended is not None:
                waited = max(0.0, wait_ended - self.wait_started)
                out["cpu_wait_fraction"] = waited / (wall * torch.get_num_threads())
        if sum(self.seconds) > 0:
            out["tokens_per_s"] = sum(self.tokens) / sum(self.seconds)
            out["tokens_per_s_windows"] = throughput_windows(self.tokens, self.seconds)
        return out
