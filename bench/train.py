"""The training driver: one plain PyTorch loop for every method (and for pretraining).

Read it top to bottom: examples → batches in a seed-fixed order → forward (under the
``precision`` autocast; decoder layers recomputed in backward with
``gradient_checkpointing``) → masked loss + the method's aux loss → backward with gradient
accumulation (fp16: through a gradient scaler) → clip → optimiser step (AdamW or SGD) →
warm-up/decay schedule → every ``eval_every`` steps, the validation loss. Identical data
order, schedule and steps for every method under one seed is what makes the comparison fair.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from lorabench.api.inject import collect_aux_loss
from lorabench.api.layer import check_config, knob, positive_int
from lorabench.errors import ConfigError
from lorabench.throughput import LoopMeter

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt and padding)
DEFAULT_STEPS = 200  # optimiser steps when neither steps nor epochs is given
OPTIMIZERS = ("adamw", "adamw_fused", "sgd")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes
DEFAULT_BETAS = [0.9, 0.999]
# Fields added after records existed. A run config leaves each out while it has its
# default, so the configs (and hashes) of runs that do not use them stay what they were.
LATER_FIELDS = (
    "epochs", "optimizer", "betas", "momentum", "precision", "gradient_checkpointing",
    "eval_every",
)  # fmt: skip


class NaNLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run is recorded with status ``nan``."""


@dataclass
class TrainConfig:
    steps: int | None = knob(None, f"optimiser steps ({DEFAULT_STEPS} when epochs is not given)")
    epochs: float | None = knob(
        None, "passes over the training examples instead of steps (see total_steps)"
    )
    batch_size: int = knob(16, "examples per micro-batch")
    grad_accum: int = knob(1, "micro-batches per optimiser step")
    lr: float = knob(1e-3, "peak learning rate")
    weight_decay: float = knob(0.0, "weight decay (AdamW: decoupled; SGD: L2)")
    warmup_steps: int = knob(10, "linear warm-up steps")
    schedule: str = knob("cosine", "decay after warm-up: cosine, linear or constant")
    max_grad_norm: float = knob(1.0, "gradient clipping norm (0 = off)")
    max_length: int = knob(96, "truncate examples to this many tokens")
    throughput_warmup: int = knob(5, "steps excluded from the tokens/s measurement")
    optimizer: str = knob("adamw", "adamw, adamw_fused (the same update, one fused kernel) or sgd")
    betas: list[float] = knob(DEFAULT_BETAS, "AdamW's (beta1, beta2)")
    momentum: float = knob(0.0, "SGD momentum (sgd only)")
    precision: str = knob("fp32", "autocast dtype: fp32 (none), bf16, or fp16 (+ gradient scaler)")
    gradient_checkpointing: bool = knob(
        False, "recompute decoder layers' activations in backward: less memory, more time"
    )
    eval_every: int | None = knob(None, "validation loss every N optimiser steps (None = never)")

    def __post_init__(self) -> None:
        betas_ok = isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
        betas_ok = betas_ok and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)
        check_config(
            "train",
            steps=positive_int(self.steps) if self.steps is not None else (True, ""),
            epochs=(
                self.epochs is None or self.epochs > 0,
                f"a positive number of passes, got {self.epochs}",
            ),
            batch_size=positive_int(self.batch_size),
            grad_accum=positive_int(self.grad_accum),
            lr=(self.lr > 0, f"a positive number, got {self.lr}"),
            schedule=(
                self.schedule in ("cosine", "linear", "constant"),
                f"cosine, linear or constant, got {self.schedule!r}",
            ),
            max_length=(self.max_length >= 2, f"an integer >= 2, got {self.max_length}"),
            optimizer=(
                self.optimizer in OPTIMIZERS,
                f"adamw, adamw_fused or sgd, got {self.optimizer!r}",
            ),
            betas=(betas_ok, f"two numbers in [0, 1), got {self.betas!r}"),
            momentum=(0 <= self.momentum < 1, f"a number in [0, 1), got {self.momentum}"),
            precision=(
                self.precision in PRECISIONS,
                f"fp32, bf16 or fp16, got {self.precision!r}",
            ),
            eval_every=(
                self.eval_every is None or self.eval_every >= 1,
                f"None or a positive integer, got {self.eval_every}",
            ),
        )
        # one spelling per value in the run config: a tuple, or 2 for 2.0, changes the hash
        self.betas = [float(b) for b in self.betas]
        self.epochs = float(self.epochs) if self.epochs is not None else None
        self.momentum = float(self.momentum)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(
                f"train: give steps or epochs, not both (steps={self.steps}, epochs={self.epochs})"
            )
        if self.optimizer == "sgd" and self.betas != DEFAULT_BETAS:
            raise ConfigError("train.betas: applies to AdamW only, but optimizer is 'sgd'")
        if self.optimizer != "sgd" and self.momentum != 0:
            raise ConfigError(
                f"train.momentum: applies to sgd only, but optimizer is {self.optimizer!r}"
            )
        if self.steps is None and self.epochs is None:
            self.steps = DEFAULT_STEPS

    def total_steps(self, examples: int) -> int:
        """Optimiser steps: ``steps``, or ``ceil(epochs × (examples // batch_size) / grad_accum)``.

        An epoch is one permutation of the examples cut into ``examples // batch_size``
        micro-batches: ``batches`` drops the remainder, other examples each epoch.
        """
        if self.steps is not None:
            return self.steps
        return math.ceil(self.epochs * (examples // self.batch_size) / self.grad_accum)

    def run_config(self, device: str = "cpu") -> dict:
        """This config as a run config stores (and hashes) it: ``LATER_FIELDS`` at their
        default are left out; ``precision`` is always kept on CUDA, where a config without
        it meant bf16 autocast (the default before the field existed), not fp32."""
        out = asdict(self)
        defaults = TrainConfig()
        for name in LATER_FIELDS:
            keep = name == "precision" and str(device).startswith("cuda")
            if out[name] == getattr(defaults, name) and not keep:
                del out[name]
        return out


@dataclass
class Example:
    """Token ids and their labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainResult:
    loss_curve: list[float] = field(default_factory=list)
    aux_loss_curve: list[float] = field(default_factory=list)
    tokens_per_s: float | None = None
    train_time_s: float = 0.0
    tokens: int = 0
    # tokens/s of consecutive windows of the measured steps (lorabench.throughput)
    tokens_per_s_windows: list[float] = field(default_factory=list)
    # process CPU time (all threads) / (wall time × torch threads) over the training loop
    cpu_utilisation: float | None = None
    # time the process's threads were runnable but waited for a CPU / (wall × torch threads)
    cpu_wait_fraction: float | None = None
    # [step, validation loss] after every eval_every-th optimiser step and after the last
    val_loss_curve: list[list[float]] = field(default_factory=list)


def batches(examples: list[Example], cfg: TrainConfig, seed: int, pad_id: int):
    """Endless padded micro-batches; the order depends only on ``seed`` (same for every method).

    Each pass is a fresh permutation; its last ``len(examples) % batch_size`` examples are
    skipped (a full batch always), other ones each pass.
    """
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


def masked_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy over the labelled (answer) tokens only."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


# --- setup: optimiser, schedule, precision, checkpointing -------------------------------------


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    fused = True if cfg.optimizer == "adamw_fused" else None  # None: torch's default kernel
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    constant = cfg.schedule == "constant"
    return get_scheduler(
        "constant_with_warmup" if constant else cfg.schedule,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        **({} if constant else {"num_training_steps": steps}),
    )


def autocast_for(precision: str, device: str | torch.device):
    """The forward's autocast context for ``precision`` on ``device`` (fp32: none)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextmanager
def gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each decoder layer in backward while inside; off again afterwards.

    Non-reentrant checkpointing: gradients reach the adapters through frozen layers without
    inputs that require grad, and routers still see grad mode on, so aux losses are kept.
    """
    if not enabled:
        yield
        return
    kwargs = {"use_reentrant": False}
    had_input_grads_hook = hasattr(model, "_require_grads_hook")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = model.activation_checkpointing_disable
    elif getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = model.gradient_checkpointing_disable
    else:
        raise ConfigError(
            f"train.gradient_checkpointing: {type(model).__name__} does not support it"
        )
    try:
        yield
    finally:
        disable()
        if not had_input_grads_hook and hasattr(model, "_require_grads_hook"):
            # transformers makes the embeddings' output require grad, and leaves it so
            model.disable_input_require_grads()


# --- the loop --------------------------------------------------------------------------------


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
    val_examples: list[Example] | None = None,
    on_scalars: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad; returns the loss curve and tokens/s.

    ``val_examples`` are scored every ``cfg.eval_every`` steps; ``on_scalars(step, {tag:
    value})`` receives each step's scalars (a tracker such as TensorBoard). ``fault``
    (``raise``/``oom``/``nan``/``crash``) injects a failure at step 2, to test the harness
    (``crash`` ends the process at once, as a segfault would).
    """
    if len(examples) < cfg.batch_size:
        raise ValueError(
            f"{len(examples)} training examples are fewer than batch_size={cfg.batch_size}"
        )
    if cfg.eval_every and not val_examples:
        raise ValueError("eval_every is set, but there are no validation examples")
    device = torch.device(device)
    steps = cfg.total_steps(len(examples))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    autocast = autocast_for(cfg.precision, device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    stream = batches(examples, cfg, seed, pad_id)
    result = TrainResult()
    meter = LoopMeter(cfg.throughput_warmup)
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    with gradient_checkpointing(model, cfg.gradient_checkpointing):
        for step in bar:
            started = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            loss, aux, tokens = accumulate_gradients(
                model, stream, cfg, device, autocast, scaler, step, fault
            )
            if fault == "crash" and step == 2:
                os._exit(70)
            if fault in ("raise", "oom") and step == 2:
                raise (torch.OutOfMemoryError if fault == "oom" else RuntimeError)(
                    f"injected fault at step {step}"
                )
            optimizer_step(optimizer, params, cfg, scaler)
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            meter.step(step, tokens, elapsed)
            result.loss_curve.append(loss)
            result.aux_loss_curve.append(aux)
            done = step + 1
            scalars = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens / elapsed}
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == steps):
                val = validation_loss(model, val_examples, cfg, device, pad_id, autocast)
                result.val_loss_curve.append([done, val])
                scalars["val/loss"] = val
            if on_scalars is not None:
                on_scalars(done, scalars)
            bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    model.eval()
    return replace(result, **meter.summary())


def accumulate_gradients(model, stream, cfg, device, autocast, scaler, step, fault):
    """Forward and backward ``grad_accum`` micro-batches; (mean loss, mean aux loss, tokens)."""
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
        scaled = total / cfg.grad_accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if cfg.gradient_checkpointing:
            # backward's recomputation ran the routers again, which set their aux losses
            # anew: drop those (already counted in this forward's loss) and their graphs
            collect_aux_loss(model)
        step_loss += loss.item() / cfg.grad_accum
        step_aux += (aux.item() if aux is not None else 0.0) / cfg.grad_accum
        step_tokens += int(batch["attention_mask"].sum())
    return step_loss, step_aux, step_tokens


def optimizer_step(optimizer, params, cfg: TrainConfig, scaler) -> None:
    """Clip (on unscaled gradients) and step; with a scaler, a step with inf/NaN gradients
    is skipped and the scale lowered."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    examples: list[Example],
    cfg: TrainConfig,
    device: torch.device,
    pad_id: int,
    autocast,
) -> float:
    """Masked LM loss over all ``examples`` (token-weighted), in eval mode.

    The training run goes on exactly as without it: the RNG state (dropout) is restored,
    the examples are read in order (no generator), and train mode is set again.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in range(0, len(examples), cfg.batch_size):
            batch = collate(examples[start : start + cfg.batch_size], pad_id, cfg.max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            total += masked_lm_loss(logits, batch["labels"], reduction="sum").item()
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)
