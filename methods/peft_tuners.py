"""Any peft tuner that adapts ``nn.Linear`` layers, by type name: ``peft`` and its presets.

``peft`` takes ``peft_type`` (a ``peft.PeftType`` name such as ``VERA``, ``IA3``, ``LOHA``,
``LOKR``, ``OFT``, ``HRA``), the rank ``r`` when the type has one (the size knob a
parameter budget tunes) and ``options`` (any other field of that type's peft config
class). Each targeted ``nn.Linear`` is handed to peft (``get_peft_model`` on a one-layer
module), so the layer maths, init and merge are peft's. Presets ``vera``, ``ia3``,
``loha`` and ``lokr`` fix the type.

What this does not cover, and why (the error message says it too):

- prompt-learning types (prompt/prefix/p-tuning, adaption prompt, CPT, ...) add virtual
  tokens or prefixes, not ``nn.Linear`` adapters;
- types whose training needs a per-step hook or a model-level loss that the one shared
  training driver does not run (AdaLoRA's rank allocator and orthogonality penalty);
- types that need more than one layer, task ids or trained adapters to exist (X-LoRA,
  Poly) or adapt other layer kinds (LayerNorm tuning, trainable tokens);
- types whose trainable tensors are shared across layers (VB-LoRA's vector bank): injected
  one layer at a time, each layer would get its own bank and the count would be wrong.

VeRA's frozen random projections are per layer here (peft shares one pair across layers
to save memory); the trainable vectors and their count are unaffected. The same is why
types whose tuner holds such model-level state (VeRA, RandLoRA, ...) are saved in
lorabench's adapter format only, never as a peft folder (``peft_export_blocker``). (IA)^3 scales each
layer's output (peft's ``feedforward_modules`` names no layer here, since the one layer
is called ``layer``; ``options = {feedforward_modules = ["layer"]}`` scales inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import torch
from peft import PeftType, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from lorabench.api import ConfigError, PeftBackedLinear, knob, register_method

UNSUPPORTED: dict[str, str] = {
    "ADALORA": "its rank allocator (update_and_allocate each step) and orthogonality penalty "
    "need hooks the shared training driver does not run",
    "XLORA": "it mixes already-trained LoRA adapters through a classifier",
    "POLY": "it routes by task ids that the harness's data does not carry",
    "LN_TUNING": "it tunes LayerNorm layers; lorabench adapts nn.Linear layers",
    "TRAINABLE_TOKENS": "it trains embedding rows; lorabench adapts nn.Linear layers",
    "VBLORA": "its trainable vector bank is shared across layers; injected one layer at a time "
    "each layer would get its own bank",
}


def peft_config_class(peft_type: str) -> type:
    """The peft config class for a type name, or a ConfigError saying why it cannot be used."""
    name = peft_type.upper().replace("-", "_")
    if name in UNSUPPORTED:
        raise ConfigError(f"peft.peft_type: {name} is not supported: {UNSUPPORTED[name]}")
    try:
        cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[name]]
    except KeyError:
        known = sorted(t.value for t in PEFT_TYPE_TO_CONFIG_MAPPING if t.value not in UNSUPPORTED)
        raise ConfigError(
            f"peft.peft_type: expected a peft type name ({', '.join(known)}), got {peft_type!r}"
        ) from None
    if cls().is_prompt_learning:
        raise ConfigError(
            f"peft.peft_type: {name} is prompt learning (virtual tokens or prefixes), "
            "not an nn.Linear adapter"
        )
    return cls


@dataclass
class PeftTunerConfig:
    peft_type: str = knob(
        "LORA", "peft type name: LORA, VERA, IA3, LOHA, LOKR, OFT, HRA, ... (peft.PeftType)"
    )
    r: int | None = knob(
        None, "the type's rank field `r` (the budget's size knob); None = peft's default"
    )
    options: dict = knob({}, "other fields of the type's peft config, e.g. {alpha = 16}")

    def __post_init__(self) -> None:
        self.peft_config()  # every error surfaces when the config is built, not at injection

    def peft_config(self):
        """The peft config object this entry describes (target: the single wrapped layer)."""
        cls = peft_config_class(self.peft_type)
        names = {f.name for f in dataclasses.fields(cls)}
        fields = dict(self.options)
        for reserved in ("target_modules", "peft_type", "task_type"):
            if reserved in fields:
                raise ConfigError(f"peft.options.{reserved}: set by lorabench; remove it")
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ConfigError(f"peft.options: {cls.__name__} has no field {', '.join(unknown)}")
        if "feedforward_modules" in names:  # (IA)^3 requires it; [] = scale outputs
            fields.setdefault("feedforward_modules", [])
        if self.r is not None:
            if "r" not in names:
                raise ConfigError(f"peft.r: {cls.__name__} has no rank field r; leave r unset")
            if self.r < 1:
                raise ConfigError(f"peft.r: expected a positive integer, got {self.r}")
            fields["r"] = self.r
        try:
            return cls(target_modules=[_Holder.TARGET], **fields)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"peft.options: {cls.__name__} rejected them: {exc}") from exc


class _Holder(nn.Module):
    """A one-layer module for peft's injection: the targeted linear, under a known name."""

    TARGET = "layer"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.layer = linear


@register_method("peft", config=PeftTunerConfig, size_knob="r")
class PeftTunerLinear(PeftBackedLinear):
    """One peft tuner layer around the frozen linear; peft's maths, init and merge."""

    def __init__(self, base_layer: nn.Linear, config: PeftTunerConfig):
        holder = _Holder(base_layer)
        # get_peft_model, not inject_adapter_in_model: types with tuner-held state (VeRA's
        # projections) only inject through it. The wrapper is dropped; the layer keeps what
        # it references.
        peft_config = config.peft_config()
        wrapper = get_peft_model(holder, peft_config)
        if not isinstance(holder.layer, BaseTunerLayer):
            raise ConfigError(
                f"peft.peft_type: {config.peft_type} did not adapt the nn.Linear layer"
            )
        shared = _model_level_state(wrapper.base_model)
        blocker = None
        if shared:  # peft would rebuild it once per model: other values than these layers'
            blocker = (
                f"peft's {peft_config.peft_type.value} {shared}; here each layer has its own, "
                "which peft's format cannot hold"
            )
        # every supported type is linear in x
        super().__init__(base_layer, holder.layer, peft_config, blocker)

    def peft_export_config(self, target_modules: list[str]):
        """The config for a whole model: ``layer`` (the one wrapped layer) becomes the targets."""
        renamed = {}
        if getattr(self.peft_config, "feedforward_modules", None):  # (IA)^3 scaling inputs
            renamed["feedforward_modules"] = list(target_modules)
        return dataclasses.replace(self.peft_config, target_modules=list(target_modules), **renamed)

    @staticmethod
    def param_count(config: PeftTunerConfig, d_in: int, d_out: int) -> int:
        # peft has no closed forms to call: count a layer built on the meta device (no memory).
        return _meta_count(_config_key(config), d_in, d_out)

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # For the identity probe of delta_weight (dropout off): what peft adds to W0 x.
        return self.peft_layer(x) - self.base_layer(x)


def _model_level_state(tuner: nn.Module) -> str | None:
    """What a peft tuner shares across the layers of a model, in words; None if nothing.

    Either state the tuner holds itself, beside its model (VeRA's projections), or tensors
    it ties across layers once all are injected (LiLy's shared B), in its
    ``_post_injection_hook``.
    """
    names = [n for n, _ in tuner.named_children() if n != "model"]
    names += [n for n, _ in tuner.named_parameters(recurse=False)]
    names += [n for n, _ in tuner.named_buffers(recurse=False)]
    if names:
        return f"keeps {', '.join(sorted(names))} once per model, shared by every layer"
    hook = getattr(type(tuner), "_post_injection_hook", None)
    if hook is not None and hook is not getattr(BaseTuner, "_post_injection_hook", None):
        return "ties tensors across layers once they are all injected"
    return None


def _config_key(config: PeftTunerConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)


@functools.lru_cache(maxsize=4096)
def _meta_count(key: str, d_in: int, d_out: int) -> int:
    config = PeftTunerConfig(**json.loads(key))
    try:
        with torch.device("meta"):
            layer = PeftTunerLinear(nn.Linear(d_in, d_out, bias=False), config)
    except (RuntimeError, NotImplementedError):  # some inits read values (BOFT): build for real
        layer = PeftTunerLinear(nn.Linear(d_in, d_out, bias=False), config)
    return sum(p.numel() for p in layer.parameters() if p.requires_grad)


def _preset(name: str, peft_type: str, r: int | None, about: str) -> None:
    """Register ``name``: the ``peft`` plugin with ``peft_type`` fixed."""

    def check_type(self) -> None:
        if self.peft_type != peft_type:
            raise ConfigError(
                f"{name}.peft_type: fixed to {peft_type} by this preset; use method 'peft' "
                f"for {self.peft_type}"
            )
        PeftTunerConfig.__post_init__(self)

    preset = dataclasses.make_dataclass(
        f"{name.capitalize()}Config",
        [
            ("peft_type", str, knob(peft_type, "peft type name (fixed by this preset)")),
            ("r", int | None, knob(r, "the type's rank field r (the budget's size knob)")),
            ("options", dict, knob({}, f"other fields of peft's {peft_type} config")),
        ],
        bases=(PeftTunerConfig,),
        namespace={"__post_init__": check_type},
    )
    knob_name = "r" if r is not None else None  # a type without a rank has no size knob
    register_method(name, config=preset, size_knob=knob_name, description=about)(PeftTunerLinear)


_preset("vera", "VERA", 256, "VeRA (Kopiczko et al. 2024) through peft")
_preset("ia3", "IA3", None, "(IA)^3 (Liu et al. 2022) through peft")
_preset("loha", "LOHA", 8, "LoHa (Hadamard product of low-rank pairs) through peft")
_preset("lokr", "LOKR", 8, "LoKr (Kronecker product) through peft")
