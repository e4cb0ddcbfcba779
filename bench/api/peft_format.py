"""The adapter of a peft-backed method as a standard peft adapter folder.

lorabench's own format (:func:`lorabench.api.inject.save_adapter`) stores the trainable
tensors under the harness's module names (``...gate_proj.peft_layer.lora_A.default.weight``).
For methods whose layers are peft's (LoRA, DoRA, rsLoRA and the generic ``peft`` tuners),
:func:`save_peft_adapter` also writes what ``PeftModel.save_pretrained`` would have
written for the same adapter: ``adapter_config.json`` (the peft config, with the adapted
modules as ``target_modules``) and ``adapter_model.safetensors`` under peft's key names
(``base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight``), so that
``PeftModel.from_pretrained(base, folder)`` and lm-eval's ``--model_args peft=folder`` load
it. The key names come from peft's own ``get_peft_model_state_dict``, run on a view of the
model laid out as peft lays out a ``PeftModel`` (no tensor is copied).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from lorabench.api.inject import ALL_LINEAR, Injection, adapted_layers
from lorabench.api.layer import PeftBackedLinear
from lorabench.errors import AdapterFileError
from lorabench.records import default_file_mode

PEFT_WEIGHTS = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
PEFT_CONFIG = "adapter_config.json"  # peft's CONFIG_NAME
ADAPTER_NAME = "default"


def peft_export_blocker(model: nn.Module) -> str | None:
    """Why ``model``'s adapter cannot be written in peft's format, or None if it can."""
    injection: Injection | None = getattr(model, "lorabench_injection", None)
    if injection is None:
        return "the model has no lorabench adapter (call inject first)"
    layers = list(adapted_layers(model))
    for name, layer in layers:
        if not isinstance(layer, PeftBackedLinear) or layer.peft_config is None:
            return (
                f"method '{injection.method}' is not peft-backed ({name} is a "
                f"{type(layer).__name__}); its adapter is in lorabench's own format only"
            )
        if layer.peft_export_blocker:
            return f"method '{injection.method}': {layer.peft_export_blocker}"
    return None if layers else "the model has no adapted layer"


def peft_target_modules(injection: Injection) -> list[str]:
    """``target_modules`` for peft: the suite's names, or every adapted module for
    ``all-linear`` (peft's own ``all-linear`` rule is not guaranteed to pick the same set)."""
    if injection.targets == [ALL_LINEAR]:
        return list(injection.modules)
    return list(injection.targets)


def peft_config_of(model: nn.Module, base_model_name_or_path: str | None = None) -> Any:
    """The peft config object of ``model``'s adapter, for the whole model."""
    blocker = peft_export_blocker(model)
    if blocker:
        raise AdapterFileError(f"cannot write a peft adapter: {blocker}")
    injection: Injection = model.lorabench_injection
    _, first = next(adapted_layers(model))
    config = first.peft_export_config(peft_target_modules(injection))
    config.task_type = "CAUSAL_LM"  # PeftModel.from_pretrained gives a PeftModelForCausalLM
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    return config


def peft_state_dict(model: nn.Module, config: Any) -> dict:
    """The adapter tensors under peft's key names, by peft's ``get_peft_model_state_dict``."""
    from peft.utils import get_peft_model_state_dict

    view = nn.Module()  # laid out like a PeftModel: base_model.model.<module name>
    view.base_model = nn.Module()
    view.base_model.model = nn.Module()
    for name, layer in adapted_layers(model):
        parent = view.base_model.model
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer.peft_layer)  # shared, not copied
    view.peft_config = {ADAPTER_NAME: config}
    tensors = get_peft_model_state_dict(
        view, adapter_name=ADAPTER_NAME, save_embedding_layers=False
    )
    # safetensors refuses aliased tensors; peft's save_pretrained clones them the same way
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.detach().cpu()
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in seen else value.contiguous()
        seen.add(ptr)
    return out


def save_peft_adapter(
    model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None
) -> Path:
    """Write ``model``'s adapter as a peft adapter folder; the weights file's path.

    ``base_model_name_or_path`` goes into ``adapter_config.json`` (where peft looks for
    the base model when none is given). AdapterFileError, saying why, for a method that
    peft's format cannot hold (see :func:`peft_export_blocker`).
    """
    config = peft_config_of(model, base_model_name_or_path)
    tensors = peft_state_dict(model, config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / PEFT_WEIGHTS
    save_file(tensors, str(weights), metadata={"format": "pt"})  # peft's metadata
    weights.chmod(default_file_mode())  # safetensors creates it 0600
    config.save_pretrained(str(folder))
    return weights
