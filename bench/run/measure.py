"""Measurements taken inside a run's own process: memory, inference latency, weights.

Memory on CUDA: peak ``max_memory_allocated`` / ``max_memory_reserved`` above the
loaded-model baseline. On CPU: peak RSS of this process (``ru_maxrss``), plus the RSS
after loading for reference. Every number says which kind it is. ``MemoryMeter.phase``
measures one phase (training, evaluation) on its own: on CUDA by resetting the peak
statistics, on CPU by resetting the kernel's peak-RSS counter (``/proc/self/clear_refs``
← ``5``, then ``VmHWM``), or, where that is not allowed, by sampling the RSS in a thread.

Latency: :func:`interleaved_latency` times the base model and the adapted variants in
rounds (one forward each per round, the order rotated every round), so that a slow
moment of a busy machine hits every variant alike; each repeat's time is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import resource
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterator
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


def hwm_rss_mb() -> float | None:
    """The kernel's peak RSS of this process since start or the last reset (VmHWM), MiB."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_hwm_rss() -> bool:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs`` ← 5); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return hwm_rss_mb() is not None


class RssSampler:
    """The peak RSS seen by a thread that samples ``/proc/self/statm`` every ``interval`` s."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


class MemoryMeter:
    """Start after the base model is loaded; ``report()`` gives the labelled peaks.

    ``with meter.phase("train"): ...`` records that phase's own peak (``report()["phases"]``);
    the run's overall peak keeps counting across phases.
    """

    def __init__(self, device: torch.device, use_clear_refs: bool = True):
        self.device = device
        self.cuda = device.type == "cuda"
        self.use_clear_refs = use_clear_refs
        self.phases: dict[str, dict] = {}
        self._overall_allocated = self._overall_reserved = 0.0  # peaks of reset CUDA periods
        self._overall_rss = 0.0  # peaks of reset VmHWM periods
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline_allocated = torch.cuda.memory_allocated(device) / MB
            self.baseline_reserved = torch.cuda.memory_reserved(device) / MB
        self.baseline_rss = current_rss_mb()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the peak memory of the block on its own, as ``phases[name]``."""
        if self.cuda:
            self._fold_cuda_peaks()
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.phases[name] = {
                "peak_allocated_mb": torch.cuda.max_memory_allocated(self.device) / MB
                - self.baseline_allocated,
                "peak_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MB
                - self.baseline_reserved,
            }
            return
        self._overall_rss = max(self._overall_rss, hwm_rss_mb() or 0.0)
        if self.use_clear_refs and reset_hwm_rss():
            yield
            peak, method = hwm_rss_mb() or current_rss_mb(), "vmhwm"
        else:
            with RssSampler() as sampler:
                yield
            peak, method = sampler.peak, "sampled"
        self._overall_rss = max(self._overall_rss, peak)
        self.phases[name] = {"peak_rss_mb": peak, "method": method}

    def _fold_cuda_peaks(self) -> None:
        torch.cuda.synchronize(self.device)
        self._overall_allocated = max(
            self._overall_allocated, torch.cuda.max_memory_allocated(self.device) / MB
        )
        self._overall_reserved = max(
            self._overall_reserved, torch.cuda.max_memory_reserved(self.device) / MB
        )

    def report(self) -> dict:
        phases = {"phases": dict(self.phases)} if self.phases else {}
        if self.cuda:
            self._fold_cuda_peaks()
            return {
                "kind": "cuda",
                "peak_allocated_mb": self._overall_allocated - self.baseline_allocated,
                "peak_reserved_mb": self._overall_reserved - self.baseline_reserved,
                "baseline_allocated_mb": self.baseline_allocated,
                "baseline_reserved_mb": self.baseline_reserved,
                "peak_rss_mb": max(peak_rss_mb(), self._overall_rss, hwm_rss_mb() or 0.0),
                **phases,
            }
        return {
            "kind": "cpu_rss",
            "peak_rss_mb": max(peak_rss_mb(), self._overall_rss, hwm_rss_mb() or 0.0),
            "baseline_rss_mb": self.baseline_rss,
            **phases,
        }


def latency_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of token ids (same for every method) for timing forward passes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)


@torch.no_grad()
def forward_latency_ms(model, input_ids: torch.Tensor, repeats: int, warmup: int = 2) -> float:
    """Median wall time of one forward pass over the batch, in milliseconds."""
    samples = interleaved_latency(model, input_ids, repeats, {"model": contextlib.nullcontext})
    return statistics.median(samples["model"])


def _forward_ms(model, input_ids: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(input_ids=input_ids)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


@torch.no_grad()
def interleaved_latency(
    model,
    input_ids: torch.Tensor,
    repeats: int,
    variants: dict[str, Callable[[], contextlib.AbstractContextManager]],
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Each variant's forward times (ms), measured in interleaved rounds.

    ``variants`` maps a name to a context-manager factory that puts the model in that
    state (e.g. adapters bypassed, or merged). Every round times each variant once, in the
    order rotated by one per round; the first ``warmup`` rounds are not kept. Returns
    ``repeats`` times per variant, in round order (so the i-th times are paired).
    """
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    was_training = model.training
    model.eval()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        for i in range(warmup + repeats):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                with variants[name]():
                    elapsed = _forward_ms(model, input_ids, device)
                if i >= warmup:
                    samples[name].append(elapsed)
    finally:
        model.train(was_training)
    return samples


@contextlib.contextmanager
def adapters_bypassed(model: torch.nn.Module) -> Iterator[None]:
    """The model with every adapted layer swapped for its frozen base linear (the base
    model's compute), put back afterwards. A no-op for a model without adapters."""
    from lorabench.api.inject import adapted_layers

    swapped = []
    for name, layer in list(adapted_layers(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, layer.base_layer)
        swapped.append((parent, child, layer))
    try:
        yield
    finally:
        for parent, child, layer in swapped:
            setattr(parent, child, layer)


class MergeState:
    """Switches a model's adapters between merged and unmerged, lazily, for timing.

    ``merged()`` and ``unmerged()`` are context-manager factories for
    :func:`interleaved_latency`; ``restore()`` (call it once at the end) unmerges and copies
    back the adapted layers' base weights saved at the start (on the CPU), so the repeated
    merges leave no rounding trace in the model that is evaluated afterwards.
    """

    def __init__(self, model: torch.nn.Module):
        from lorabench.api.inject import adapted_layers

        self.model = model
        self.layers = [layer for _, layer in adapted_layers(model)]
        self.saved = [
            layer.base_layer.weight.detach().to("cpu", copy=True) for layer in self.layers
        ]
        self.is_merged = False

    def _set(self, merged: bool) -> None:
        from lorabench.api.inject import merge_adapters, unmerge_adapters

        if merged != self.is_merged:
            (merge_adapters if merged else unmerge_adapters)(self.model)
            self.is_merged = merged

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        self._set(True)
        yield

    @contextlib.contextmanager
    def unmerged(self) -> Iterator[None]:
        self._set(False)
        yield

    def restore(self) -> None:
        self._set(False)
        with torch.no_grad():
            for layer, weight in zip(self.layers, self.saved, strict=True):
                layer.base_layer.weight.copy_(weight)


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict in name order: each tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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
