"""The method conformance kit: the properties of docs/methods.md, for any plugin.

Every registered method (in-tree or from an entry point) runs through these checks in
``tests/test_conformance.py``; a third-party plugin can call :func:`run_all` from its own
tests. The checks use tiny config-built models, so they run in seconds on a CPU.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from lorabench.api.inject import (
    adapted_layers,
    collect_aux_loss,
    count_parameters,
    formula_parameters,
    inject,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from lorabench.api.registry import build_config, get_method
from lorabench.errors import MergeError

TARGETS = "all-linear"
VOCAB = 64


def tiny_test_config(family: str = "llama") -> PretrainedConfig:
    """A 2-layer model small enough for unit tests; dims divisible by small n."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown test model family {family!r}")


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_test_config(family))
    return model.eval()


def toy_batch(seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def perturb_adapters(model: torch.nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Move every trainable tensor off its init (Δ ≡ 0 there would make checks vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _adapted(method: str, config: Mapping[str, Any] | None, family: str = "llama"):
    base = tiny_model(family)
    model = copy.deepcopy(base)
    injection = inject(model, method, dict(config or {}), TARGETS)
    return base, model, injection


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# --- the seven properties ---------------------------------------------------------------


def check_only_adapters_trainable(method: str, config=None, family: str = "llama") -> None:
    base, model, _ = _adapted(method, config, family)
    layers = dict(adapted_layers(model))
    for name, p in model.named_parameters():
        owner = next((ln for ln in layers if name.startswith(ln + ".")), None)
        is_base = owner is None or any(p is q for q in layers[owner].base_layer.parameters())
        assert p.requires_grad != is_base, (
            f"{method}: {name} is {'a base' if is_base else 'an adapter'} tensor but "
            f"requires_grad={p.requires_grad}"
        )
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == count_parameters(base)[1], f"{method}: frozen count differs from the base"
    assert count_parameters(model)[0] > 0, f"{method}: no trainable parameter"


def check_zero_delta_at_init(method: str, config=None, family: str = "llama") -> None:
    base, model, _ = _adapted(method, config, family)
    batch = toy_batch()
    torch.testing.assert_close(_logits(model, batch), _logits(base, batch), rtol=0, atol=1e-6)


def check_param_count(method: str, config=None, family: str = "llama") -> None:
    _, model, injection = _adapted(method, config, family)
    trainable, _ = count_parameters(model)
    assert trainable == formula_parameters(model, injection), (
        f"{method}: {trainable} trainable parameters, formula says "
        f"{formula_parameters(model, injection)}"
    )


def check_merge(method: str, config=None, family: str = "llama") -> None:
    """Mergeable: ΔW parity with Δ(x), merge/unmerge restores W0, merged logits equal.
    Not mergeable: merge raises MergeError."""
    spec = get_method(method)
    _, model, _ = _adapted(method, config, family)
    perturb_adapters(model)
    if not spec.mergeable:
        try:
            merge_adapters(model)
        except MergeError as exc:
            assert "cannot be merged" in str(exc)
            return
        raise AssertionError(f"{method} is not mergeable but merge() did not raise MergeError")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, layer in adapted_layers(model):
            x = torch.randn(5, layer.in_features, generator=g)
            delta = layer(x) - layer.base_layer(x)
            torch.testing.assert_close(
                x @ layer.delta_weight().T, delta, rtol=1e-5, atol=1e-5, msg=f"{method} {name}"
            )
    batch = toy_batch()
    unmerged = _logits(model, batch)
    weights = {n: layer.base_layer.weight.detach().clone() for n, layer in adapted_layers(model)}
    merge_adapters(model)
    torch.testing.assert_close(_logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    unmerge_adapters(model)
    for n, layer in adapted_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(_logits(model, batch), unmerged, rtol=1e-5, atol=1e-5)


def check_biased_layer(method: str, config=None, family: str = "llama") -> None:
    """On an ``nn.Linear`` with a non-zero bias: ΔW is the weight part of Δ (its constant
    part is no column of ΔW), and merging keeps the layer's output (bias changes included)."""
    spec = get_method(method)
    g = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(16, 8, bias=True)  # divisible by MELoRA's n
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 16, generator=g))
        linear.bias.copy_(torch.randn(8, generator=g))
    layer = spec.adapt(linear, build_config(spec, config))
    with torch.no_grad():
        for param in layer.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    layer.eval()
    x = torch.randn(7, 16, generator=g)
    zero = torch.zeros(1, 16)
    with torch.no_grad():
        before = layer(x)
        if not spec.mergeable:
            return
        weight_part = (before - layer(zero)) - (layer.base_layer(x) - layer.base_layer(zero))
        torch.testing.assert_close(
            x @ layer.delta_weight().T, weight_part, rtol=1e-5, atol=1e-5, msg=method
        )
        layer.merge()
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5, msg=method)
        layer.unmerge()
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5, msg=method)


def check_save_load_roundtrip(method: str, config=None, family: str = "llama") -> None:
    _, model, injection = _adapted(method, config, family)
    perturb_adapters(model)
    batch = toy_batch()
    with tempfile.TemporaryDirectory() as folder:
        save_adapter(model, folder)
        fresh = tiny_model(family)
        loaded = load_adapter(fresh, folder)
    assert loaded.method == injection.method and loaded.modules == injection.modules
    torch.testing.assert_close(_logits(fresh, batch), _logits(model, batch), rtol=0, atol=0)


def train_steps(model, batch, steps: int, lr: float = 1e-2) -> tuple[list[float], dict[str, bool]]:
    """AdamW steps on one batch (LM loss + aux loss); returns the losses and, per trainable
    tensor, whether it ever received a non-zero gradient."""
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    got_grad = dict.fromkeys(params, False)
    losses = []
    for _ in range(steps):
        out = model(**batch, labels=batch["input_ids"])
        aux = collect_aux_loss(model)
        loss = out.loss + (aux if aux is not None else 0.0)
        opt.zero_grad()
        loss.backward()
        for n, p in params.items():
            got_grad[n] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
        losses.append(out.loss.item())
    return losses, got_grad


def check_training_step(method: str, config=None, family: str = "llama", steps: int = 6) -> None:
    """A few AdamW steps on a toy batch: loss decreases, every trainable tensor gets a grad."""
    _, model, _ = _adapted(method, config, family)
    losses, got_grad = train_steps(model, toy_batch(batch=4, length=16), steps)
    assert losses[-1] < losses[0], f"{method}: loss did not decrease: {losses}"
    missing = [n for n, ok in got_grad.items() if not ok]
    assert not missing, f"{method}: no gradient ever reached {missing[:4]}"


CHECKS: dict[str, Callable[..., None]] = {
    "only_adapters_trainable": check_only_adapters_trainable,
    "zero_delta_at_init": check_zero_delta_at_init,
    "param_count": check_param_count,
    "merge": check_merge,
    "save_load_roundtrip": check_save_load_roundtrip,
    "biased_layer": check_biased_layer,
    "training_step": check_training_step,
}


def run_all(method: str, config=None, family: str = "llama") -> None:
    """Run every conformance check on ``method`` (raises AssertionError on the first failure)."""
    for check in CHECKS.values():
        check(method, config, family)
