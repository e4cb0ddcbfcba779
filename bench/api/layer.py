"""The plugin base: what every adapted ``nn.Linear`` shares.

A method module subclasses :class:`AdaptedLinear`, implements ``delta`` (its trainable
branch) and ``param_count`` (closed form), and sets ``mergeable``. Freezing the base,
dropout, merge/unmerge, and the aux-loss slot live here once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar

import torch
from torch import nn

from lorabench.errors import ConfigError, MergeError


def knob(default: Any, help: str) -> Any:
    """A config-dataclass field with its documentation (shown by `lorabench list`)."""
    if isinstance(default, (list, dict)):  # mutable defaults need a factory
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def check_config(name: str, **conditions: tuple[bool, str]) -> None:
    """Raise ConfigError for the first failed ``field=(ok, expectation)`` condition."""
    for field_name, (ok, expected) in conditions.items():
        if not ok:
            raise ConfigError(f"{name}.{field_name}: expected {expected}")


def positive_int(value: int) -> tuple[bool, str]:
    """A ``check_config`` condition: ``value`` is an integer >= 1."""
    return value >= 1, f"a positive integer, got {value}"


def probability(value: float) -> tuple[bool, str]:
    """A ``check_config`` condition: ``value`` is a dropout probability in [0, 1)."""
    return 0.0 <= value < 1.0, f"a probability in [0, 1), got {value}"


def non_negative(value: float) -> tuple[bool, str]:
    """A ``check_config`` condition: ``value`` >= 0."""
    return value >= 0, f"a number >= 0, got {value}"


def resolve_alpha(alpha: float | None, r: int) -> float:
    """``alpha=None`` means ``2 r``: the scale stays 2 when a budget search changes r."""
    return 2.0 * r if alpha is None else float(alpha)


def lora_scale(alpha: float | None, r: int, rslora: bool = False) -> float:
    """``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA), with :func:`resolve_alpha`."""
    alpha = resolve_alpha(alpha, r)
    return alpha / math.sqrt(r) if rslora else alpha / r


def kaiming_uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default init (kaiming-uniform, a=sqrt(5)) for a weight with ``fan_in``."""
    bound = 1.0 / math.sqrt(fan_in)  # = gain(a=sqrt 5) * sqrt(3 / fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` (``base_layer``) plus a trainable branch: ``h = W0 x + Δ(x)``.

    Subclasses implement ``delta(x_dropped, x)`` → Δ for the last dimension of ``x``;
    ``x_dropped`` is ``x`` after the adapter's input dropout (routers read the un-dropped
    ``x``). Mergeable subclasses may override ``delta_weight`` with a closed form; the
    default pushes the identity through ``delta``, which is exact for linear operators.
    """

    mergeable: ClassVar[bool] = False
    #: set by a routed layer's forward in training mode; collected by lorabench.api.inject.collect_aux_loss
    aux_loss: torch.Tensor | None

    def __init__(self, base_layer: nn.Linear, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.aux_loss = None

    # --- helpers for subclasses ---------------------------------------------------------
    def new_param(self, *shape: int, dtype: torch.dtype | None = None) -> nn.Parameter:
        """A trainable tensor on the base weight's device (meta stays meta) and dtype."""
        w = self.base_layer.weight
        return nn.Parameter(torch.zeros(*shape, device=w.device, dtype=dtype or w.dtype))

    # --- the interface --------------------------------------------------------------------
    @staticmethod
    def param_count(config: Any, d_in: int, d_out: int) -> int:
        raise NotImplementedError

    def delta(self, x_dropped: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.delta(self.dropout(x), x).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (``d_out × d_in``) with ``x @ ΔW.T == Δ(x) - Δ(0)`` (dropout off).

        Pushes the identity through ``delta`` and subtracts the response to a zero input: a
        branch that also shifts the bias (peft's (IA)³ scales ``W x + b``) is affine, and its
        constant part belongs to the bias, not to every column of ΔW.
        """
        self._require_mergeable()
        p = next(self.parameters())
        eye = torch.eye(self.in_features, device=p.device, dtype=p.dtype)
        zero = torch.zeros(1, self.in_features, device=p.device, dtype=p.dtype)
        return (self.delta(eye, eye) - self.delta(zero, zero)).T

    def merge(self) -> None:
        self._require_mergeable()
        if not self.merged:
            w = self.base_layer.weight
            w.data += self.delta_weight().to(w.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            w = self.base_layer.weight
            w.data -= self.delta_weight().to(w.dtype)
            self.merged = False

    def _require_mergeable(self) -> None:
        if not self.mergeable:
            raise MergeError(
                f"{type(self).__name__} is input-dependent (its Δ depends on a router), "
                "so it cannot be merged into the base weight"
            )


class PeftBackedLinear(AdaptedLinear):
    """An adapted layer whose maths is a peft tuner layer wrapped around the frozen linear.

    peft's layer owns the base layer; this keeps a single registration of it (see
    ``base_layer``), so state dicts hold the frozen weight once. Forward, merge and unmerge
    are peft's.

    ``peft_config`` (the peft config object the layer was built from) lets
    :func:`lorabench.api.peft_format.save_peft_adapter` write the adapter as a standard
    peft folder; without one, or with ``peft_export_blocker`` set (why peft's whole-model
    layout cannot hold this layer), only lorabench's own format is written.
    """

    mergeable = True

    def __init__(
        self,
        base_layer: nn.Linear,
        peft_layer: nn.Module,
        peft_config: Any = None,
        peft_export_blocker: str | None = None,
    ):
        super().__init__(base_layer)
        del self.base_layer
        self.peft_layer = peft_layer
        self.peft_config = peft_config
        self.peft_export_blocker = peft_export_blocker
        base_layer.requires_grad_(False)

    def peft_export_config(self, target_modules: list[str]) -> Any:
        """This layer's peft config for a whole model whose targets are ``target_modules``.

        Plugins whose config names the wrapped layer itself (e.g. (IA)³'s
        ``feedforward_modules``) override this to rename it.
        """
        return dataclasses.replace(self.peft_config, target_modules=list(target_modules))

    @property
    def base_layer(self) -> nn.Linear:  # type: ignore[override]
        return self.peft_layer.get_base_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peft_layer(x)

    def merge(self) -> None:
        self.peft_layer.merge()
        self.merged = True

    def unmerge(self) -> None:
        self.peft_layer.unmerge()
        self.merged = False
