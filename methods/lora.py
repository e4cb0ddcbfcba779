"""LoRA (Hu et al. 2021, arXiv 2106.09685), delegated to peft's own LoRA layer (and DoRA).

Using peft's ``lora.Linear`` makes the harness's LoRA numbers peft's numbers: the
reference everybody uses. ``Δ(x) = s · B A drop(x)``, ``s = α / r`` (rsLoRA: ``α / √r``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from lorabench.api import (
    PeftBackedLinear,
    check_config,
    knob,
    positive_int,
    probability,
    register_method,
    resolve_alpha,
)


@dataclass
class LoRAConfig:
    r: int = knob(8, "rank of A (r × d_in) and B (d_out × r)")
    alpha: float | None = knob(None, "scale numerator; s = alpha / r. None means 2·r (s = 2)")
    dropout: float = knob(0.0, "dropout on the adapter input")
    use_rslora: bool = knob(False, "rank-stabilised scale s = alpha / sqrt(r)")
    use_dora: bool = knob(False, "DoRA (Liu et al. 2024): also learn a magnitude per output row")

    def __post_init__(self) -> None:
        check_config(
            "lora",
            r=positive_int(self.r),
            dropout=probability(self.dropout),
        )


@register_method("lora", config=LoRAConfig, size_knob="r")
class LoRALinear(PeftBackedLinear):
    """LoRA through peft's lora.Linear: Δ(x) = s·B A drop(x), r(d_in + d_out) params."""

    def __init__(self, base_layer: nn.Linear, config: LoRAConfig):
        alpha = resolve_alpha(config.alpha, config.r)
        peft_config = PeftLoraConfig(
            r=config.r,
            lora_alpha=alpha,
            lora_dropout=config.dropout,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
        )
        peft_layer = PeftLoraLinear(
            base_layer, "default", config=peft_config, r=config.r, lora_alpha=alpha
        )
        super().__init__(base_layer, peft_layer, peft_config)  # config: peft-format export

    @staticmethod
    def param_count(config: LoRAConfig, d_in: int, d_out: int) -> int:
        return config.r * (d_in + d_out) + (d_out if config.use_dora else 0)

    def delta_weight(self) -> torch.Tensor:
        variant = self.peft_layer.lora_variant.get("default")  # DoRA: a weight-dependent merge
        if variant is None:
            return self.peft_layer.get_delta_weight("default")
        w0 = self.base_layer.weight.detach()
        return variant.merge_safe(self.peft_layer, "default", w0.clone()) - w0
