"""Measurements taken inside a run's own process: memory, inference latency.

Memory on CUDA: peak ``max_memory_allocated`` / ``max_memory_reserved`` above the
loaded-model baseline. On CPU: peak RSS of this process (``ru_maxrss``), plus the RSS
after loading for reference. Every number says which kind it is.
"""

from __future__ import annotations

import resource
import statistics
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MB = 1024 * 1024


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / MB
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class MemoryMeter:
    """Start after the base model is loaded; ``report()`` gives the labelled peaks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline_allocated = torch.cuda.memory_allocated(device) / MB
            self.baseline_reserved = torch.cuda.memory_reserved(device) / MB
        self.baseline_rss = current_rss_mb()

    def report(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return {
                "kind": "cuda",
                "peak_allocated_mb": torch.cuda.max_memory_allocated(self.device) / MB
                - self.baseline_allocated,
                "peak_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MB
                - self.baseline_reserved,
                "baseline_allocated_mb": self.baseline_allocated,
                "baseline_reserved_mb": self.baseline_reserved,
                "peak_rss_mb": peak_rss_mb(),
            }
        return {
            "kind": "cpu_rss",
            "peak_rss_mb": peak_rss_mb(),
            "baseline_rss_mb": self.baseline_rss,
        }


def latency_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of token ids (same for every method) for timing forward passes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)


@torch.no_grad()
def forward_latency_ms(model, input_ids: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median wall time of one forward pass over the batch, in milliseconds."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    was_training = model.training
    model.eval()
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(input_ids=input_ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times)


class AllocationTracker(TorchDispatchMode):
    """Bytes of the tensors that ops create inside the block, on any device (CPU included).

    ``peak_bytes``: the most bytes alive at once (activations, tensors saved for backward,
    gradients); ``largest_bytes``: the largest single tensor. Tensors made before the block
    (weights, inputs) and outputs that alias an input (in-place ops, views of inputs) are
    not counted. Use: ``with AllocationTracker() as t: loss.backward()``.
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = self.peak_bytes = self.largest_bytes = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [live tensor refs, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            if key in inputs or storage.nbytes() == 0:
                return
            entry = self._storages[key] = [0, storage.nbytes()]
            self.live_bytes += entry[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self.largest_bytes = max(self.largest_bytes, entry[1])
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live_bytes -= entry[1]
                del self._storages[key]
