"""Put a method into a Hugging Face causal LM, and take it out again.

``inject`` replaces each targeted ``nn.Linear`` by the method's adapted layer and freezes
everything else; the other functions act on every adapted layer of a model: merge,
unmerge, aux loss, parameter counts, and safetensors save/load of the adapter.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorabench.api.layer import AdaptedLinear
from lorabench.api.registry import MethodSpec, build_config, get_method
from lorabench.api.routing import Router, TokenMask
from lorabench.errors import AdapterFileError, TargetError
from lorabench.records import default_file_mode

ALL_LINEAR = "all-linear"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Injection:
    """What ``inject`` did: the method, its resolved config, and the adapted module names."""

    method: str
    config: Any
    targets: list[str]
    modules: list[str]

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "config": dataclasses.asdict(self.config),
            "targets": self.targets,
            "modules": self.modules,
        }


def parse_targets(targets: str | Iterable[str]) -> list[str]:
    """``"q_proj,v_proj"`` or ``["q_proj", "v_proj"]`` or ``"all-linear"`` → a clean list."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [t.strip() for t in items if t and t.strip()]
    if not items:
        raise TargetError(
            "target_modules is empty; name linear layers (e.g. q_proj,v_proj) or all-linear"
        )
    return items


def find_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Names of the modules that ``targets`` selects; clear errors for misses and non-Linear."""
    targets = parse_targets(targets)
    modules = dict(model.named_modules())
    output_layer = _output_layer(model)
    linear_names = [
        n for n, m in modules.items() if isinstance(m, nn.Linear) and m is not output_layer
    ]
    if targets == [ALL_LINEAR]:
        if not linear_names:
            raise TargetError("all-linear matched no nn.Linear layer in this model")
        return linear_names
    if ALL_LINEAR in targets:
        raise TargetError("all-linear cannot be combined with other target names")
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if n == target or n.endswith("." + target)]
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
            raise TargetError(
                f"target '{target}' matched no module; linear layers in this model: {', '.join(leaves)}"
            )
        for name in hits:
            module = modules[name]
            if isinstance(module, AdaptedLinear):
                raise TargetError(f"module '{name}' is already adapted")
            if not isinstance(module, nn.Linear):
                raise TargetError(
                    f"target '{target}' matched '{name}', a {type(module).__name__}; "
                    "lorabench adapts only torch.nn.Linear layers"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def _output_layer(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def inject(
    model: nn.Module,
    method: str | MethodSpec,
    config: Any = None,
    targets: str | Iterable[str] = ALL_LINEAR,
) -> Injection:
    """Freeze ``model`` and replace each targeted ``nn.Linear`` with the method's layer.

    ``config`` is the method's config dataclass, a mapping of overrides, or None for the
    defaults.
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    if config is None or isinstance(config, Mapping):
        config = build_config(spec, config)
    names = find_targets(model, targets)
    model.requires_grad_(False)
    token_mask = TokenMask()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapted = spec.adapt(getattr(parent, child), config)
        setattr(parent, child, adapted)
    for module in model.modules():
        if isinstance(module, Router):
            module.token_mask = token_mask
    if any(isinstance(m, Router) for m in model.modules()):
        model.register_forward_pre_hook(_mask_hook(token_mask), with_kwargs=True)
    injection = Injection(spec.name, config, parse_targets(targets), names)
    model.lorabench_injection = injection  # read back by save_adapter
    return injection


def _mask_hook(token_mask: TokenMask):
    def hook(module, args, kwargs):
        token_mask.mask = kwargs.get("attention_mask")

    return hook


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module


def merge_adapters(model: nn.Module) -> None:
    """Merge every adapted layer into its base weight (MergeError for routed methods)."""
    for _, layer in adapted_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapted_layers(model):
        layer.unmerge()


def collect_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Mean over layers of the coefficient-weighted aux losses of the last forward, or None.

    Each routed layer's ``aux_loss`` is consumed (reset), so a stale value is never
    added twice. The mean keeps the coefficient's meaning independent of depth.
    """
    losses = []
    for _, layer in adapted_layers(model):
        if layer.aux_loss is not None:
            losses.append(layer.aux_loss)
            layer.aux_loss = None
    return torch.stack(losses).mean() if losses else None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def formula_parameters(model: nn.Module, injection: Injection) -> int:
    """The closed-form count summed over the adapted layers (must equal the real count)."""
    spec = get_method(injection.method)
    layers = dict(adapted_layers(model))
    return sum(
        spec.param_count(injection.config, layers[n].in_features, layers[n].out_features)
        for n in injection.modules
    )


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write ``adapter.safetensors`` (trainable tensors) and ``adapter_config.json``."""
    injection: Injection | None = getattr(model, "lorabench_injection", None)
    if injection is None:
        raise AdapterFileError("model has no lorabench adapter to save (call inject first)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    meta = injection.to_json()
    weights = folder / ADAPTER_WEIGHTS
    save_file(tensors, str(weights), metadata={"lorabench": json.dumps(meta)})
    weights.chmod(default_file_mode())  # safetensors creates it 0600; use the user's umask
    (folder / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder / ADAPTER_WEIGHTS


def load_adapter(model: nn.Module, folder: str | Path) -> Injection:
    """Inject the saved method into a fresh base ``model`` and load its tensors."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (OSError, ValueError) as exc:
        raise AdapterFileError(f"cannot read adapter in {folder}: {exc}") from exc
    injection = inject(model, meta["method"], meta["config"], meta["modules"])
    injection.targets = meta["targets"]
    expected = set(adapter_state_dict(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise AdapterFileError(
            f"adapter in {folder} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))
    return injection
