"""What each adapter costs beside the frozen base, measured in one run: `lorabench bench-layers`.

Two benchmarks, each reported as ratios to a reference measured in the same process:

- **one layer** at a LLaMA-like shape scaled for CPU (default d_in 1024, d_out 2816, 2048
  tokens, fp32): forward (eval, no grad), forward+backward (train; the input requires grad
  as inside a model) and merged forward, for the frozen ``nn.Linear``, peft's own LoRA
  layer, and every plugin at LoRA-r16's parameter count on that layer; with the peak and
  largest tensor bytes of forward+backward (`lorabench.run.measure.AllocationTracker`);
- **a train step** of the embedded ``tiny`` model (forward, backward, AdamW step) per method
  at the tiny suite's budget, against the *frozen-base step*: the same forward and backward
  with only the input embeddings requiring grad, i.e. the backprop every adapter pays for.

Timings are medians of ``torch.utils.benchmark`` blocked measurements after two warm-up
calls, interleaved over rounds in a rotating order so that drift of the machine and
position effects hit every variant alike.

**Arithmetic floor.** Each variant's matrix-multiply FLOPs (forward, and forward+backward)
are counted from its shapes by ``torch.utils.flop_counter.FlopCounterMode`` (it counts
mm/addmm/bmm/einsum-as-bmm and attention; elementwise work is not counted). The *floor* is
the time the variant would take if its extra FLOPs ran as fast as the frozen base's own
matmuls: ``base_ms × flops / base_flops``. ``measured ÷ floor`` then separates what a method
costs in arithmetic (a ratio near 1: it is slow because it computes more) from overhead
(reshapes, copies, small kernels, Python: a ratio well above 1).
"""

from __future__ import annotations

import dataclasses
import statistics
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from lorabench.api.registry import build_config, get_method
from lorabench.run.measure import MB, AllocationTracker
from lorabench.run.suite import fit_budget

BASE, PEFT_LORA = "base", "peft-lora"
LAYER_METHODS = ("lora", "mora", "melora", "moe-lora", "moe-lora-top2", "mor")
BUDGET_RANK = 16  # every plugin gets LoRA-r16's parameter count on the layer
TINY_BUDGET = 98_304  # suites/tiny.toml: LoRA r=16 on the tiny model's FFN projections
#: the targets, as {key: (what, limit)}; data in targets.toml beside this module
TARGETS = {
    key: (target["text"], float(target["limit"]))
    for key, target in tomllib.loads((Path(__file__).parent / "targets.toml").read_text()).items()
}


@dataclass(frozen=True)
class LayerShape:
    d_in: int = 1024
    d_out: int = 2816
    tokens: int = 2048


def median_ms(fn: Callable[[], object], min_time: float) -> float:
    """Median milliseconds of ``fn()`` over blocked runs lasting at least ``min_time`` s."""
    for _ in range(2):  # warm-up: allocator, thread pool, lazy inits
        fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median * 1000


def build_layer(variant: str, shape: LayerShape, seed: int = 0) -> nn.Module:
    """The frozen linear, peft's LoRA layer, or a plugin fitted to the LoRA-r16 count."""
    torch.manual_seed(seed)
    linear = nn.Linear(shape.d_in, shape.d_out, bias=False).requires_grad_(False)
    if variant == BASE:
        return linear
    if variant == PEFT_LORA:
        from peft import LoraConfig
        from peft.tuners.lora.layer import Linear as PeftLoraLinear

        config = LoraConfig(r=BUDGET_RANK, lora_alpha=2 * BUDGET_RANK)
        return PeftLoraLinear(linear, "default", config=config, r=BUDGET_RANK, lora_alpha=32)
    spec = get_method(variant)
    budget = BUDGET_RANK * (shape.d_in + shape.d_out)
    config, _ = fit_budget(
        variant, build_config(spec, None), [(shape.d_in, shape.d_out)], budget, 0.5
    )
    return spec.adapt(linear, config)


def count_flops(fn: Callable[[], object]) -> int:
    """Matrix-multiply FLOPs of one call of ``fn`` (``FlopCounterMode``, from shapes)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def perturb(module: nn.Module) -> None:
    """Move adapters off their zero init, so no branch is skipped or trivially zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)


def measure_layer(variant: str, shape: LayerShape, min_time: float) -> dict:
    """One round of forward, forward+backward and merged-forward timings for one variant."""
    layer = build_layer(variant, shape)
    perturb(layer)
    x = torch.randn(shape.tokens, shape.d_in)
    x_train = x.clone().requires_grad_(True)
    grad = torch.randn(shape.tokens, shape.d_out)

    def train() -> None:
        layer(x_train).backward(grad)
        x_train.grad = None
        for p in layer.parameters():
            p.grad = None

    layer.eval()
    with torch.no_grad():
        forward = median_ms(lambda: layer(x), min_time)
        forward_flops = count_flops(lambda: layer(x))
    layer.train()
    row = {"forward_ms": forward, "train_ms": median_ms(train, min_time)}
    row |= {"forward_flops": forward_flops, "train_flops": count_flops(train)}
    with AllocationTracker() as tracker:
        train()
    row |= {"peak_mb": tracker.peak_bytes / MB, "largest_mb": tracker.largest_bytes / MB}
    row["params"] = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    mergeable = variant != BASE and (variant == PEFT_LORA or get_method(variant).mergeable)
    if mergeable:
        layer.eval()
        layer.merge()
        with torch.no_grad():
            row["merged_ms"] = median_ms(lambda: layer(x), min_time)
    return row


def train_step_model(variant: str, seed: int = 0) -> tuple[Callable[[], None], int]:
    """A ``step()`` of the tiny model (frozen base or ``variant`` at the tiny budget), params."""
    from transformers.utils import logging as hf_logging

    from lorabench.api.inject import collect_aux_loss, inject
    from lorabench.models.zoo import load_pretrained, target_shapes

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per variant is noise here
    model, _ = load_pretrained("tiny")
    model.train()
    targets = "gate_proj,up_proj,down_proj"
    if variant == BASE:
        model.requires_grad_(False)
        model.enable_input_require_grads()  # backprop through the frozen stack, nothing else
    else:
        spec = get_method(variant)
        shapes = target_shapes("tiny", targets)
        config, _ = fit_budget(variant, build_config(spec, None), shapes, TINY_BUDGET, 0.25)
        torch.manual_seed(seed)
        inject(model, spec, config, targets)
        perturb(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (16, 64), generator=g)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        aux = collect_aux_loss(model)
        (loss if aux is None else loss + aux).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in trainable)


def add_floor(rows: dict[str, dict], time_key: str, flops_key: str, base: str = BASE) -> None:
    """``<time>_floor_ms`` (the base's time scaled by the FLOP ratio: the variant's
    arithmetic at the base's FLOP rate), ``<time>_x_floor`` and the extra FLOPs, in place."""
    reference = rows[base]
    stem = time_key.removesuffix("_ms")
    for row in rows.values():
        floor = reference[time_key] * row[flops_key] / reference[flops_key]
        row[f"{stem}_extra_flops"] = row[flops_key] - reference[flops_key]
        row[f"{stem}_floor_ms"] = floor
        row[f"{stem}_x_floor"] = row[time_key] / floor


def run_benchmarks(
    shape: LayerShape = LayerShape(),
    methods: tuple[str, ...] = LAYER_METHODS,
    rounds: int = 5,
    min_time: float = 0.5,
    model_step: bool = True,
    progress: bool = True,
) -> dict:
    """Both benchmarks; medians over ``rounds`` interleaved rounds, and the ratios."""
    variants = [BASE, PEFT_LORA, *methods]
    step_variants = [BASE, *methods] if model_step else []
    steps = {v: train_step_model(v) for v in step_variants}
    step_flops = {v: count_flops(steps[v][0]) for v in step_variants}
    layer_runs: dict[str, list[dict]] = {v: [] for v in variants}
    step_runs: dict[str, list[float]] = {v: [] for v in step_variants}
    total = rounds * (len(variants) + len(step_variants))
    with tqdm(total=total, desc="bench-layers", unit="variant", disable=not progress) as bar:
        for round_ in range(rounds):
            shift = round_ % len(variants)  # rotate the order: no variant always runs first
            for variant in variants[shift:] + variants[:shift]:
                bar.set_postfix_str(f"layer {variant}")
                layer_runs[variant].append(measure_layer(variant, shape, min_time))
                bar.update()
            for variant in step_variants:
                bar.set_postfix_str(f"step {variant}")
                step_runs[variant].append(median_ms(steps[variant][0], min_time))
                bar.update()
    layers = {v: _median_row(runs) for v, runs in layer_runs.items()}
    base = layers[BASE]
    for row in layers.values():
        for key in ("forward", "train", "merged"):
            if f"{key}_ms" in row:
                denominator = base["forward_ms"] if key == "merged" else base[f"{key}_ms"]
                row[f"{key}_x_base"] = row[f"{key}_ms"] / denominator
    add_floor(layers, "forward_ms", "forward_flops")
    add_floor(layers, "train_ms", "train_flops")
    train_steps = {
        v: {"step_ms": statistics.median(times), "params": steps[v][1], "flops": step_flops[v]}
        for v, times in step_runs.items()
    }
    for row in train_steps.values():
        row["x_frozen"] = row["step_ms"] / train_steps[BASE]["step_ms"]
        if "lora" in train_steps:
            row["x_lora"] = row["step_ms"] / train_steps["lora"]["step_ms"]
    if train_steps:
        add_floor(train_steps, "step_ms", "flops")
    result = {
        "shape": dataclasses.asdict(shape),
        "rounds": rounds,
        "min_time_s": min_time,
        "torch_threads": torch.get_num_threads(),
        "layers": layers,
        "train_step": train_steps,
    }
    result["targets"] = check_targets(result)
    return result


def _median_row(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def check_targets(result: dict) -> list[dict]:
    """Each target with its measured worst ratio and whether it is met."""
    layers, steps = result["layers"], result["train_step"]

    def worst(values: dict[str, float]) -> tuple[str, float] | None:
        return max(values.items(), key=lambda kv: kv[1]) if values else None

    measured = {
        "merged": worst(
            {m: layers[m]["merged_x_base"] for m in ("lora", "mora", "melora") if m in layers}
        ),
        "train": worst({m: steps[m]["x_frozen"] for m in ("lora", "melora", "mora") if m in steps}),
        "routed": worst(
            {
                m: steps[m]["x_lora"]
                for m in ("mor", "moe-lora")
                if m in steps and "x_lora" in steps[m]
            }
        ),
        "peft": worst(
            {
                f"lora {k}": layers["lora"][f"{k}_ms"] / layers[PEFT_LORA][f"{k}_ms"]
                for k in ("forward", "train")
                if "lora" in layers
            }
        ),
    }
    out = []
    for key, (text, limit) in TARGETS.items():
        hit = measured[key]
        if hit is None:
            continue
        out.append({"target": text, "worst": hit[0], "ratio": hit[1], "met": hit[1] <= limit})
    return out
