"""MoR — Mixture of Ranks (Tang et al. 2024, arXiv 2410.13408), the seed paper.

One shared LoRA pair ``A: r × d_in``, ``B: d_out × r``; expert i owns only scaling
vectors ``λA_i ∈ R^r`` and ``λB_i ∈ R^d_out`` (rows of ``ΩA``, ``ΩB``), mixed by a router:
``Δ(x) = (α/r) Σ_i g_i(x) λB_i ⊙ B(λA_i ⊙ A drop(x))``. Computed as
``e = [g_i λA_i ⊙ u]_i`` (T × N r) times ``B̃ = [diag(λB_i) B]_i`` (d_out × N r), so no
``T × N × d_out`` tensor is ever built. Init (ours; the paper is silent): A kaiming,
B zeros, λ ones, router N(0, 0.02²) — with λ = 1, MoR equals LoRA(A, B) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
class MoRConfig:
    r: int = knob(8, "rank of the shared pair A (r × d_in), B (d_out × r)")
    num_experts: int = knob(8, "number of rank experts N (each: λA ∈ R^r, λB ∈ R^d_out)")
    router: Literal["softmax", "mean", "balanced"] = knob(
        "softmax",
        "softmax (learned, the paper's best); mean (uniform 1/N, no router params); "
        "balanced (softmax + Switch load-balance loss)",
    )
    aux_loss_coef: float = knob(0.001, "load-balance coefficient, used only by router=balanced")
    alpha: float | None = knob(None, "scale numerator; s = alpha / r. None means 2·r")
    dropout: float = knob(0.0, "dropout on the adapter input (the router sees un-dropped x)")

    def __post_init__(self) -> None:
        check_config(
            "mor",
            r=positive_int(self.r),
            num_experts=positive_int(self.num_experts),
            aux_loss_coef=non_negative(self.aux_loss_coef),
            dropout=probability(self.dropout),
        )


@register_method("mor", config=MoRConfig, size_knob="r")
class MoRLinear(RoutedLinear, AdaptedLinear):
    """MoR: shared A, B with N routed rank-scaling experts; not mergeable exactly."""

    def __init__(self, base_layer: nn.Linear, config: MoRConfig):
        AdaptedLinear.__init__(self, base_layer, config.dropout)
        n, r = config.num_experts, config.r
        self.scale = lora_scale(config.alpha, r)
        self.A = self.new_param(r, self.in_features)
        self.B = self.new_param(self.out_features, r)  # zeros: Δ ≡ 0
        kaiming_uniform_(self.A, fan_in=self.in_features)
        self.lambda_A = self.new_param(n, r)  # ΩA
        self.lambda_B = self.new_param(n, self.out_features)  # ΩB
        with torch.no_grad():
            self.lambda_A.fill_(1.0)
            self.lambda_B.fill_(1.0)
        self.init_router(
            n,
            top_k=None,
            mode="mean" if config.router == "mean" else "softmax",
            aux_loss_coef=config.aux_loss_coef if config.router == "balanced" else 0.0,
        )

    @staticmethod
    def param_count(config: MoRConfig, d_in: int, d_out: int) -> int:
        n, r = config.num_experts, config.r
        mode = "mean" if config.router == "mean" else "softmax"
        return r * (d_in + d_out) + n * (r + d_out) + Router.param_count(d_in, n, mode)

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dtype = x_dropped.dtype
        gates = self.route(x)  # (..., N)
        u = F.linear(x_dropped, self.A.to(dtype))  # (..., r)
        e = (gates[..., :, None] * self.lambda_A.to(dtype) * u[..., None, :]).flatten(-2)
        # B̃ = [diag(λB_1) B | … | diag(λB_N) B]: (d_out, N r), built once per forward
        b_tilde = (self.lambda_B.to(dtype)[:, :, None] * self.B.to(dtype)).transpose(0, 1)
        return self.scale * F.linear(e, b_tilde.flatten(1))
