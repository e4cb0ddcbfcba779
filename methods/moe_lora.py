"""MoE-LoRA: N LoRA experts mixed by a learned router (LoRAMoE / MoLA / MixLoRA family).

``Δ(x) = (α / r_e) Σ_e g_e(x) B_e A_e drop(x)``; dense softmax gates, or top-k gates
renormalised to sum 1 with the Mixtral/MixLoRA load-balance loss. Experts are stacked
(``A_cat: N r_e × d_in``, ``B_cat: d_out × N r_e``) and the ``N r_e`` middle activations
are gated, so there is no loop over experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.api import (
    AdaptedLinear,
    RoutedLinear,
    Router,
    check_config,
    kaiming_uniform_,
    knob,
    lora_scale,
    non_negative,
    positive_int,
    probability,
    register_method,
)


@dataclass
class MoELoRAConfig:
    r: int = knob(2, "rank r_e of each expert")
    num_experts: int = knob(8, "number of LoRA experts N")
    top_k: int | None = knob(None, "route each token to its k best experts; None = dense")
    aux_loss_coef: float = knob(0.0, "coefficient c of the load-balance loss (0 = off)")
    alpha: float | None = knob(None, "scale numerator; s = alpha / r_e. None means 2·r_e")
    dropout: float = knob(0.0, "dropout on the adapter input (the router sees un-dropped x)")

    def __post_init__(self) -> None:
        check_config(
            "moe-lora",
            r=positive_int(self.r),
            num_experts=positive_int(self.num_experts),
            top_k=(
                self.top_k is None or 1 <= self.top_k <= self.num_experts,
                f"None or an integer in [1, num_experts={self.num_experts}], got {self.top_k}",
            ),
            aux_loss_coef=non_negative(self.aux_loss_coef),
            dropout=probability(self.dropout),
        )


@dataclass
class MoELoRATop2Config(MoELoRAConfig):
    top_k: int | None = knob(2, "route each token to its k best experts; None = dense")
    aux_loss_coef: float = knob(0.001, "coefficient c of the load-balance loss (0 = off)")


@register_method("moe-lora", config=MoELoRAConfig, size_knob="r")
class MoELoRALinear(RoutedLinear, AdaptedLinear):
    """MoE-LoRA: N routed LoRA experts, N r_e (d_in + d_out) + N d_in params; not mergeable."""

    def __init__(self, base_layer: nn.Linear, config: MoELoRAConfig):
        AdaptedLinear.__init__(self, base_layer, config.dropout)
        n, r = config.num_experts, config.r
        self.expert_rank = r
        self.scale = lora_scale(config.alpha, r)
        self.A = self.new_param(n * r, self.in_features)  # A_cat; each A_e kaiming
        self.B = self.new_param(self.out_features, n * r)  # B_cat = 0: Δ ≡ 0
        kaiming_uniform_(self.A, fan_in=self.in_features)
        self.init_router(n, top_k=config.top_k, mode="softmax", aux_loss_coef=config.aux_loss_coef)

    @staticmethod
    def param_count(config: MoELoRAConfig, d_in: int, d_out: int) -> int:
        n = config.num_experts
        return n * config.r * (d_in + d_out) + Router.param_count(d_in, n)

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gates = self.route(x).repeat_interleave(self.expert_rank, dim=-1)  # (..., N r_e)
        mid = F.linear(x_dropped, self.A.to(x_dropped.dtype)) * gates
        return self.scale * F.linear(mid, self.B.to(mid.dtype))


register_method(
    "moe-lora-top2",
    config=MoELoRATop2Config,
    size_knob="r",
    description="MoE-LoRA, top-2 of 8 experts with the load-balance loss (c = 0.001)",
)(MoELoRALinear)
