"""The training driver: one plain PyTorch loop for every method (and for pretraining).

Read it top to bottom: examples → batches in a seed-fixed order → forward (bf16 autocast on
CUDA) → masked loss + the method's aux loss → backward with gradient accumulation →
clip → AdamW step → warm-up/decay schedule. Identical data order, schedule and steps for
every method under one seed is what makes the comparison fair.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from lorabench.api.inject import collect_aux_loss
from lorabench.api.layer import check_config, knob, positive_int

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt and padding)


class NaNLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run is recorded with status ``nan``."""


@dataclass
class TrainConfig:
    steps: int = knob(200, "optimiser steps")
    batch_size: int = knob(16, "examples per micro-batch")
    grad_accum: int = knob(1, "micro-batches per optimiser step")
    lr: float = knob(1e-3, "peak learning rate")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    warmup_steps: int = knob(10, "linear warm-up steps")
    schedule: str = knob("cosine", "decay after warm-up: cosine, linear or constant")
    max_grad_norm: float = knob(1.0, "gradient clipping norm (0 = off)")
    max_length: int = knob(96, "truncate examples to this many tokens")
    throughput_warmup: int = knob(5, "steps excluded from the tokens/s measurement")

    def __post_init__(self) -> None:
        check_config(
            "train",
            steps=positive_int(self.steps),
            batch_size=positive_int(self.batch_size),
            grad_accum=positive_int(self.grad_accum),
            lr=(self.lr > 0, f"a positive number, got {self.lr}"),
            schedule=(
                self.schedule in ("cosine", "linear", "constant"),
                f"cosine, linear or constant, got {self.schedule!r}",
            ),
            max_length=(self.max_length >= 2, f"an integer >= 2, got {self.max_length}"),
        )


@dataclass
class Example:
    """Token ids and their labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


THROUGHPUT_WINDOWS = 10  # the measured steps are split into this many consecutive windows


@dataclass
class TrainResult:
    loss_curve: list[float] = field(default_factory=list)
    aux_loss_curve: list[float] = field(default_factory=list)
    tokens_per_s: float | None = None
    train_time_s: float = 0.0
    tokens: int = 0
    # tokens/s of each of up to THROUGHPUT_WINDOWS consecutive windows of the measured steps
    tokens_per_s_windows: list[float] = field(default_factory=list)
    # process CPU time (all threads) / (wall time × torch threads) over the training loop
    cpu_utilisation: float | None = None
    # time the process's threads were runnable but waited for a CPU / (wall × torch threads)
    cpu_wait_fraction: float | None = None


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


def batches(examples: list[Example], cfg: TrainConfig, seed: int, pad_id: int):
    """Endless padded micro-batches; the order depends only on ``seed`` (same for every method)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            chunk = [examples[i] for i in order[start : start + cfg.batch_size]]
            yield collate(chunk, pad_id, cfg.max_length)


def collate(chunk: list[Example], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    length = min(max_length, max(len(e.input_ids) for e in chunk))
    ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
    labels = torch.full((len(chunk), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(chunk), length), dtype=torch.long)
    for row, e in enumerate(chunk):
        n = min(length, len(e.input_ids))
        ids[row, :n] = torch.tensor(e.input_ids[:n])
        labels[row, :n] = torch.tensor(e.labels[:n])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the labelled (answer) tokens only."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def train(
    model: torch.nn.Module,
    examples: list[Example],
    cfg: TrainConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    pad_id: int = 0,
    desc: str = "train",
    progress: bool = True,
    fault: str | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad; returns the loss curve and tokens/s.

    ``fault`` (``raise``/``oom``/``nan``/``crash``) injects a failure at step 2, to test the
    harness (``crash`` ends the process at once, as a segfault would).
    """
    if len(examples) < cfg.batch_size:
        raise ValueError(
            f"{len(examples)} training examples are fewer than batch_size={cfg.batch_size}"
        )
    device = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        **({} if cfg.schedule == "constant" else {"num_training_steps": cfg.steps}),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    stream = batches(examples, cfg, seed, pad_id)
    result = TrainResult()
    measured_tokens: list[int] = []
    measured_time: list[float] = []
    model.train()
    wait_started = run_queue_wait_s()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        started = time.perf_counter()
        step_loss = step_aux = 0.0
        step_tokens = 0
        for _ in range(cfg.grad_accum):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            with autocast:
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            loss = masked_lm_loss(logits, batch["labels"])
            aux = collect_aux_loss(model)
            total = loss + aux if aux is not None else loss
            if fault == "nan" and step == 2:
                total = total * float("nan")
            if not math.isfinite(total.item()):
                raise NaNLossError(f"loss is {total.item()} at step {step}")
            (total / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            step_aux += (aux.item() if aux is not None else 0.0) / cfg.grad_accum
            step_tokens += int(batch["attention_mask"].sum())
        if fault == "crash" and step == 2:
            os._exit(70)
        if fault in ("raise", "oom") and step == 2:
            raise (torch.OutOfMemoryError if fault == "oom" else RuntimeError)(
                f"injected fault at step {step}"
            )
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        result.loss_curve.append(step_loss)
        result.aux_loss_curve.append(step_aux)
        result.tokens += step_tokens
        result.train_time_s += elapsed
        if step >= cfg.throughput_warmup:
            measured_tokens.append(step_tokens)
            measured_time.append(elapsed)
        bar.set_postfix(loss=f"{step_loss:.3f}")
    bar.close()
    wall = time.perf_counter() - wall_started
    if wall > 0:
        cpu = time.process_time() - cpu_started
        result.cpu_utilisation = cpu / (wall * torch.get_num_threads())
        wait_ended = run_queue_wait_s()
        if wait_started is not None and wait_ended is not None:
            waited = max(0.0, wait_ended - wait_started)
            result.cpu_wait_fraction = waited / (wall * torch.get_num_threads())
    if sum(measured_time) > 0:
        result.tokens_per_s = sum(measured_tokens) / sum(measured_time)
        result.tokens_per_s_windows = throughput_windows(measured_tokens, measured_time)
    model.eval()
    return result
