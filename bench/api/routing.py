"""Token routers shared by the routed methods (MoE-LoRA, MoR).

The router is a bias-free ``N × d_in`` linear map computed in fp32 on the un-dropped
input, initialised N(0, 0.02²). It returns per-token gates; in training mode it can also
return the Mixtral/MixLoRA load-balance loss over the non-pad tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenMask:
    """Which tokens are real (not padding) in the current forward, shared by a model's routers.

    `lorabench.api.inject` installs a forward pre-hook on the model that stores the
    ``attention_mask`` here, so routed layers can average their statistics over real
    tokens only without the layer API knowing about masks.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def flat_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mask flattened to ``x``'s token count, or None (every token counts)."""
        m = self.mask
        if m is None or m.shape != x.shape[:-1]:
            return None
        return m.reshape(-1).to(torch.float32)


class Router(nn.Module):
    """Softmax router over ``num_experts``; optional top-k with renormalisation.

    ``mode``: ``softmax`` (learned, dense or top-k), or ``mean`` (uniform 1/N gates and
    no parameters — an ablation baseline).
    """

    def __init__(
        self,
        d_in: int,
        num_experts: int,
        *,
        top_k: int | None = None,
        mode: str = "softmax",
        device: torch.device | None = None,
    ):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.mode = mode
        self.token_mask: TokenMask | None = None
        #: set while diagnostics are on: per-token gates of the last forward, for reports
        self.last_gates: torch.Tensor | None = None
        self.record_gates = False
        if mode == "softmax":
            w = torch.empty(num_experts, d_in, device=device, dtype=torch.float32)
            self.weight = nn.Parameter(nn.init.normal_(w, std=0.02))
        elif mode == "mean":
            self.register_parameter("weight", None)
        else:
            raise ValueError(f"router mode must be 'softmax' or 'mean', got {mode!r}")

    @staticmethod
    def param_count(d_in: int, num_experts: int, mode: str = "softmax") -> int:
        return num_experts * d_in if mode == "softmax" else 0

    def forward(
        self, x: torch.Tensor, *, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gates ``(T, N)`` in fp32 for the flattened tokens of ``x``, and the aux loss.

        The aux loss (``N · Σ_j Σ_e f_{j,e} P_e`` over real tokens, ``f_{j,e}`` the share of
        tokens whose j-th choice is e, ``P_e`` the mean full softmax probability) is
        computed only when ``with_aux``; top-1 is used for dense routing (Switch form).
        """
        tokens = x.reshape(-1, x.shape[-1])
        aux = None
        if self.mode == "mean":
            gates = tokens.new_full((tokens.shape[0], self.num_experts), 1.0 / self.num_experts)
            gates = gates.float()
        else:
            gates, aux = self._softmax_gates(tokens, x, with_aux)
        if self.record_gates:
            self.last_gates = gates.detach()
        return gates, aux

    def _softmax_gates(
        self, tokens: torch.Tensor, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        probs = F.softmax(F.linear(tokens.float(), self.weight.float()), dim=-1)
        k = self.top_k
        if k is not None and k < self.num_experts:
            top_p, top_i = probs.topk(k, dim=-1)
            gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
        else:
            gates = probs
            top_i = probs.argmax(-1, keepdim=True) if with_aux else None
        aux = None
        if with_aux:
            mask = self.token_mask.flat_for(x) if self.token_mask is not None else None
            aux = load_balance_loss(probs, top_i, self.num_experts, mask)
        return gates, aux


def load_balance_loss(
    probs: torch.Tensor, choices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``N · Σ_j Σ_e f_{j,e} · P_e`` over the tokens where ``mask`` is 1 (all if None).

    ``probs``: ``(T, N)`` full softmax; ``choices``: ``(T, k)`` expert indices, j-th column
    = each token's j-th choice. Equals ``k`` under uniform routing.
    """
    if mask is None:
        mask = probs.new_ones(probs.shape[0])
    denom = mask.sum().clamp_min(1.0)
    mean_prob = (probs * mask[:, None]).sum(0) / denom  # P_e
    onehot = F.one_hot(choices, num_experts).to(probs.dtype)  # (T, k, N)
    frac = (onehot * mask[:, None, None]).sum(0) / denom  # f_{j,e}: (k, N)
    return num_experts * (frac * mean_prob[None, :]).sum()


class RoutedLinear:
    """Mixin for input-dependent methods: owns a :class:`Router` and its aux loss.

    Use with :class:`~lorabench.api.layer.AdaptedLinear`; call ``init_router`` in ``__init__``
    and ``route(x)`` in ``delta``. ``route`` stores ``aux_loss_coef · L_aux`` in
    ``self.aux_loss`` during training when the coefficient is positive.
    """

    mergeable = False

    def init_router(
        self, num_experts: int, *, top_k: int | None, mode: str, aux_loss_coef: float
    ) -> None:
        self.aux_loss_coef = aux_loss_coef
        self.router = Router(
            self.in_features,
            num_experts,
            top_k=top_k,
            mode=mode,
            device=self.base_layer.weight.device,
        )

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token gates shaped ``x.shape[:-1] + (N,)``, in ``x``'s dtype."""
        with_aux = self.training and self.aux_loss_coef > 0 and torch.is_grad_enabled()
        gates, aux = self.router(x, with_aux=with_aux)
        self.aux_loss = self.aux_loss_coef * aux if aux is not None else None
        return gates.to(x.dtype).reshape(*x.shape[:-1], -1)
