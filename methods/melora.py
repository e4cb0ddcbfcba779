"""MELoRA (Ren et al. 2024, arXiv 2402.17263): n mini-LoRAs on contiguous slices.

``ΔW = blockdiag(s B_i A_i)`` with ``A_i: r × d_in/n`` and ``B_i: d_out/n × r``: rank up to
``n·r`` for LoRA-r parameters. ``s = α / r`` with r the mini rank (as in the reference
scripts). The merge is built from that formula (the reference merge is broken).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorabench.api import (
    AdaptedLinear,
    ConfigError,
    check_config,
    kaiming_uniform_,
    knob,
    lora_scale,
    positive_int,
    probability,
    register_method,
)


@dataclass
class MELoRAConfig:
    r: int = knob(8, "mini rank of each of the n mini-LoRAs")
    n: int = knob(4, "number of mini-LoRAs; must divide d_in and d_out of every target")
    alpha: float | None = knob(None, "scale numerator; s = alpha / r (mini rank). None means 2·r")
    dropout: float = knob(0.0, "dropout on the adapter input")

    def __post_init__(self) -> None:
        check_config(
            "melora",
            r=positive_int(self.r),
            n=positive_int(self.n),
            dropout=probability(self.dropout),
        )


@register_method("melora", config=MELoRAConfig, size_knob="r")
class MELoRALinear(AdaptedLinear):
    """MELoRA: n block-diagonal mini-LoRAs, rank up to n·r with r(d_in + d_out) params."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: MELoRAConfig):
        d_in, d_out, n = base_layer.in_features, base_layer.out_features, config.n
        if d_in % n or d_out % n:
            raise ConfigError(
                f"melora.n={n} must divide both d_in={d_in} and d_out={d_out} of the adapted layer"
            )
        super().__init__(base_layer, config.dropout)
        self.n = n
        self.scale = lora_scale(config.alpha, config.r)
        self.A = self.new_param(n, config.r, d_in // n)  # A_i, kaiming per mini-LoRA
        self.B = self.new_param(n, d_out // n, config.r)  # B_i = 0: Δ ≡ 0
        kaiming_uniform_(self.A, fan_in=d_in // n)

    @staticmethod
    def param_count(config: MELoRAConfig, d_in: int, d_out: int) -> int:
        return config.r * (d_in + d_out)

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        slices = x_dropped.unflatten(-1, (self.n, -1))  # (..., n, d_in/n)
        mid = torch.einsum("...ni,nri->...nr", slices, self.A.to(slices.dtype))
        out = torch.einsum("...nr,nor->...no", mid, self.B.to(slices.dtype))
        return self.scale * out.flatten(-2)

    def delta_weight(self) -> torch.Tensor:
        self._require_mergeable()
        blocks = self.scale * torch.bmm(self.B, self.A)  # (n, d_out/n, d_in/n)
        return torch.block_diag(*blocks.unbind(0))
