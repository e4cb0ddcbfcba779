"""Base models: the built-in ``tiny`` config, and configs/models from paths, on any device.

``params`` needs only a config: models are built on the meta device, so a 7B config
costs no memory and downloads no weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from lorabench.errors import ConfigError
from lorabench.models.smollm2 import SOURCE_FILE, ensure_smollm2, smollm2_config
from lorabench.models.tiny import ensure_tiny_model, tiny_config

TINY = "tiny"
SMOLLM2 = "smollm2"
BUILTIN_MODELS = (TINY, SMOLLM2)


def load_config(model: str) -> PretrainedConfig:
    """A built-in name, a ``config.json`` path, or a model folder → a transformers config."""
    if model == TINY:
        return tiny_config()
    if model == SMOLLM2:
        return smollm2_config()
    path = Path(model)
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            model_type = raw.pop("model_type")
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{path}: not a Hugging Face config.json with a model_type ({exc})"
            ) from exc
        try:
            return AutoConfig.for_model(model_type, **raw)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json")
        return AutoConfig.from_pretrained(str(path))
    raise ConfigError(
        f"model '{model}' is neither a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing "
        "config.json or model folder"
    )


def build_on_meta(config: PretrainedConfig) -> torch.nn.Module:
    """The causal LM for ``config`` with every tensor on the meta device (no memory)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def resolve_config(model: str) -> PretrainedConfig | None:
    """Like :func:`load_config`, plus hub names from the local cache; None if unavailable."""
    if model in BUILTIN_MODELS or Path(model).exists():
        return load_config(model)
    try:
        return AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        return None


def model_path(model: str, progress: bool = True) -> str:
    """What ``from_pretrained`` loads for ``model``: a built-in's cached folder, a path, or a hub name."""
    if model == TINY:
        return str(ensure_tiny_model(progress=progress))
    if model == SMOLLM2:
        return str(ensure_smollm2(progress=progress))
    return model


def model_source(model: str) -> dict:
    """Where ``model``'s weights came from, for result records: name, folder, checksums."""
    from lorabench.models.cache import sha256_file

    path = Path(model_path(model, progress=False))
    source: dict = {"name": model}
    if not path.is_dir():  # a hub name: the local snapshot's revision is all we know cheaply
        config = resolve_config(model)
        source["revision"] = getattr(config, "_commit_hash", None)
        return source
    source["folder"] = str(path)
    if (path / SOURCE_FILE).is_file():  # a converted built-in records its own provenance
        source.update(json.loads((path / SOURCE_FILE).read_text()))
    else:
        for weights in sorted(path.glob("*.safetensors")):
            source.setdefault("sha256", {})[weights.name] = sha256_file(weights)
    return source


def load_pretrained(model: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) through the ordinary ``from_pretrained`` path, in eval mode."""
    tokenizer = load_tokenizer(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(model_path(model), dtype=getattr(torch, dtype))
    except OSError as exc:
        raise ConfigError(f"cannot load model '{model}': {exc}") from exc
    return lm.to(device).eval(), tokenizer


def load_tokenizer(model: str):
    """The tokenizer of ``model`` (a built-in name, folder or hub name), with a pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(model))
    except OSError as exc:
        raise ConfigError(f"cannot load model '{model}': {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def target_shapes(model: str, targets: str | list[str]) -> list[tuple[int, int]] | None:
    """(d_in, d_out) of every targeted layer, from the model's config on the meta device.

    None when the config is not available offline (a hub name not in the local cache).
    """
    from lorabench.api.inject import find_targets

    config = resolve_config(model)
    if config is None:
        return None
    meta = build_on_meta(config)
    modules = dict(meta.named_modules())
    return [(modules[n].in_features, modules[n].out_features) for n in find_targets(meta, targets)]
