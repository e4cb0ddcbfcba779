"""MoRA (Jiang et al. 2024, arXiv 2405.12130): one square high-rank matrix.

A zero-initialised ``M: r̂ × r̂`` with ``r̂ ≈ sqrt((d_in + d_out) r)`` (same budget as
LoRA-r) sits between a parameter-free compression of the input and a decompression to
``d_out``. Type 1 ("sharing") sums wrap-padded chunks; type 6 rotates chunk b with RoPE
position b and applies ``M`` to every chunk. Behaviour follows kongds/MoRA, including its
truncation when ``d_in > d_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lorabench.api import (
    AdaptedLinear,
    check_config,
    knob,
    positive_int,
    probability,
    register_method,
)


@dataclass
class MoRAConfig:
    r: int = knob(8, "LoRA-equivalent rank: M is r̂ × r̂ with r̂ = round(sqrt((d_in + d_out) r))")
    mora_type: int = knob(6, "6 = RoPE rotation (small r, the paper's default); 1 = sharing")
    dropout: float = knob(0.0, "dropout on the adapter input")

    def __post_init__(self) -> None:
        check_config(
            "mora",
            r=positive_int(self.r),
            mora_type=(self.mora_type in (1, 6), f"1 or 6, got {self.mora_type}"),
            dropout=probability(self.dropout),
        )


def square_rank(config: MoRAConfig, d_in: int, d_out: int) -> int:
    """r̂: rounded sqrt of the LoRA-r budget; even for type 6 (rotation pairs dimensions)."""
    r_hat = int(math.sqrt((d_in + d_out) * config.r) + 0.5)
    if config.mora_type == 6:
        r_hat = max(2, r_hat // 2 * 2)
    return r_hat


@register_method("mora", config=MoRAConfig, size_knob="r")
class MoRALinear(AdaptedLinear):
    """MoRA: square matrix M (r̂²≈r(d_in+d_out) params) between compress/decompress maps."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: MoRAConfig):
        super().__init__(base_layer, config.dropout)
        self.mora_type = config.mora_type
        self.r_hat = r_hat = square_rank(config, self.in_features, self.out_features)
        self.n_chunks = math.ceil(self.in_features / r_hat)
        self.M = self.new_param(r_hat, r_hat)  # zero init: Δ ≡ 0
        device = base_layer.weight.device
        padded = self.n_chunks * r_hat
        # Wrap-around padding: padded position p reads input feature p mod d_in (this also
        # covers r̂ > 2 d_in, where the input must repeat more than once).
        self.register_buffer(
            "pad_index", torch.arange(padded, device=device) % self.in_features, persistent=False
        )
        if config.mora_type == 6:
            inv_freq = 1.0 / 10000 ** (torch.arange(0, r_hat, 2, device=device).float() / r_hat)
            angles = torch.outer(torch.arange(self.n_chunks, device=device).float(), inv_freq)
            angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: (n_chunks, r̂)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def param_count(config: MoRAConfig, d_in: int, d_out: int) -> int:
        return square_rank(config, d_in, d_out) ** 2

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_in)`` → wrap-padded ``(..., n_chunks, r̂)``."""
        if self.n_chunks * self.r_hat != self.in_features:
            x = x.index_select(-1, self.pad_index)
        return x.unflatten(-1, (self.n_chunks, self.r_hat))

    def _tile_to_out(self, y: torch.Tensor) -> torch.Tensor:
        """Truncate (tiling first if shorter) the last dimension to d_out."""
        width = y.shape[-1]
        if width < self.out_features:
            y = y.repeat(*([1] * (y.dim() - 1)), math.ceil(self.out_features / width))
        return y[..., : self.out_features]

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        chunks = self._chunks(x_dropped)
        M = self.M.to(x_dropped.dtype)
        if self.mora_type == 1:
            # sharing: input feature k feeds slot k mod r̂; output j reads slot j mod r̂
            return self._tile_to_out(chunks.sum(-2) @ M.T)
        half = self.r_hat // 2
        rotated_half = torch.cat([-chunks[..., half:], chunks[..., :half]], dim=-1)
        cos, sin = self.cos.to(chunks.dtype), self.sin.to(chunks.dtype)
        chunks = chunks * cos + rotated_half * sin
        return self._tile_to_out((chunks @ M.T).flatten(-2))
