r"""The plugin surface: everything a method plugin imports, and nothing else.

A plugin is one module that subclasses :class:`AdaptedLinear` (or :class:`PeftBackedLinear`,
adding :class:`RoutedLinear` for token routing), declares a typed config dataclass whose
fields are :func:`knob` s, and registers both with :func:`register_method`::

    from dataclasses import dataclass

    import torch

    from lorabench.api import AdaptedLinear, kaiming_uniform_, knob, register_method


    @dataclass
    class DiagLoRAConfig:
        r: int = knob(8, "rank")


    @register_method("diag-lora", config=DiagLoRAConfig, size_knob="r")
    class DiagLoRALinear(AdaptedLinear):
        \"\"\"LoRA with a learned diagonal: Δ(x) = B diag(d) A x.\"\"\"

        mergeable = True

        def __init__(self, base_layer, config):
            super().__init__(base_layer)
            self.A = self.new_param(config.r, self.in_features)
            self.d = self.new_param(config.r)
            self.B = self.new_param(self.out_features, config.r)  # zeros: Δ ≡ 0 at init
            kaiming_uniform_(self.A, fan_in=self.in_features)
            with torch.no_grad():
                self.d.fill_(1.0)

        @staticmethod
        def param_count(config, d_in, d_out):
            return config.r * (d_in + d_out + 1)

        def delta(self, x_dropped, x):  # x is the un-dropped input, for routers
            return ((x_dropped @ self.A.T) * self.d) @ self.B.T

Declare it in your package's ``pyproject.toml`` so the harness finds it::

    [project.entry-points."lorabench.methods"]
    diag-lora = "my_package.diag_lora"

and test it with the conformance kit: ``lorabench.api.conformance.run_all("diag-lora")``.
"""

from lorabench.api import conformance
from lorabench.api.inject import (
    adapted_layers,
    collect_aux_loss,
    count_parameters,
    inject,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from lorabench.api.layer import (
    AdaptedLinear,
    PeftBackedLinear,
    check_config,
    kaiming_uniform_,
    knob,
    lora_scale,
    non_negative,
    positive_int,
    probability,
    resolve_alpha,
)
from lorabench.api.registry import (
    ENTRY_POINT_GROUP,
    MethodSpec,
    available_methods,
    build_config,
    get_method,
    register_method,
)
from lorabench.api.routing import RoutedLinear, Router, TokenMask, load_balance_loss
from lorabench.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "AdaptedLinear",
    "ConfigError",
    "MethodSpec",
    "PeftBackedLinear",
    "RoutedLinear",
    "Router",
    "TokenMask",
    "adapted_layers",
    "available_methods",
    "build_config",
    "check_config",
    "collect_aux_loss",
    "conformance",
    "count_parameters",
    "get_method",
    "inject",
    "kaiming_uniform_",
    "knob",
    "load_adapter",
    "load_balance_loss",
    "lora_scale",
    "merge_adapters",
    "non_negative",
    "positive_int",
    "probability",
    "register_method",
    "resolve_alpha",
    "save_adapter",
    "unmerge_adapters",
]
