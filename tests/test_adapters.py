"""Adapters outside lorabench: peft's folder format and lm-eval's HFLM.

A peft-backed adapter saved with ``save_peft_adapter`` must load with
``PeftModel.from_pretrained`` into a fresh base model and give the trained model's logits,
and lm-eval's ``HFLM(pretrained=folder, peft=folder)`` must score with it.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorabench.api.conformance import perturb_adapters, tiny_model, toy_batch
from lorabench.api.inject import inject
from lorabench.api.peft_format import (
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    peft_export_blocker,
    save_peft_adapter,
)
from lorabench.errors import AdapterFileError, ConfigError

ATTN = "q_proj,v_proj"


def _round_trip(tmp_path, method: str, config: dict, targets: str = ATTN):
    """(trained logits, logits of peft's reload, the peft folder) for one method."""
    from peft import PeftModel

    model = tiny_model()
    torch.manual_seed(0)
    inject(model, method, config, targets)
    perturb_adapters(model, seed=3)  # off the init: B = 0 would make the check vacuous
    folder = tmp_path / "peft"
    save_peft_adapter(model, folder, base_model_name_or_path="tiny-test")
    reloaded = PeftModel.from_pretrained(tiny_model(), str(folder)).eval()
    batch = toy_batch()
    with torch.no_grad():
        return model.eval()(**batch).logits, reloaded(**batch).logits, folder


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4},
        {"r": 4, "alpha": 16, "dropout": 0.1},
        {"r": 4, "use_rslora": True, "alpha": 6},
        {"r": 4, "use_dora": True},
    ],
    ids=["lora", "lora-alpha-dropout", "rslora", "dora"],
)
def test_lora_variants_reload_in_peft_with_the_same_logits(tmp_path, config):
    ours, theirs, folder = _round_trip(tmp_path, "lora", config)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    saved = json.loads((folder / PEFT_CONFIG).read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"
    assert saved["r"] == 4 and saved["lora_alpha"] == config.get("alpha", 8)
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert saved["use_rslora"] == config.get("use_rslora", False)
    assert saved["use_dora"] == config.get("use_dora", False)
    assert saved["lora_dropout"] == config.get("dropout", 0.0)
    assert saved["base_model_name_or_path"] == "tiny-test" and saved["inference_mode"] is True
    tensors = load_file(str(folder / PEFT_WEIGHTS))
    layer = "base_model.model.model.layers.1.self_attn.q_proj"
    assert tensors[f"{layer}.lora_A.weight"].shape == (4, 32)
    assert tensors[f"{layer}.lora_B.weight"].shape == (32, 4)
    per_layer = 3 if config.get("use_dora") else 2  # DoRA: lora_magnitude_vector too
    assert len(tensors) == 2 * 2 * per_layer  # 2 layers x (q_proj, v_proj)
    if config.get("use_dora"):
        assert tensors[f"{layer}.lora_magnitude_vector"].shape == (32,)


def test_all_linear_names_every_adapted_module(tmp_path):
    ours, theirs, folder = _round_trip(tmp_path, "lora", {"r": 2}, "all-linear")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    targets = json.loads((folder / PEFT_CONFIG).read_text())["target_modules"]
    assert len(targets) == 2 * 7 and "model.layers.0.mlp.down_proj" in targets
    assert "lm_head" not in targets


# The generic `peft` plugin: every type it offers, with options that fit the 32-wide test model.
ROUND_TRIP = {
    "ADAMSS": {}, "BEFT": {}, "BOFT": {"options": {"boft_block_size": 4}},
    "C3A": {"options": {"block_size": 8}}, "DEFT": {}, "DELORA": {},
    "FOURIERFT": {"options": {"n_frequency": 16}}, "GLORA": {}, "GRALORA": {}, "HIRA": {},
    "HRA": {"r": 4}, "IA3": {}, "LOHA": {"r": 4}, "LOKR": {"r": 4}, "LORA": {"r": 4},
    "MISS": {"r": 8}, "OFT": {"options": {"oft_block_size": 8}}, "OSF": {}, "PEANUT": {},
    "PSOFT": {"r": 8}, "ROAD": {"options": {"group_size": 8}}, "SHIRA": {"r": 4},
    "SUPERTUNING": {}, "WAVEFT": {"options": {"n_frequency": 16}},
}  # fmt: skip
# state peft keeps once per model (or ties across layers): lorabench's format only
SHARED = {"FROD", "LILY", "PVERA", "RANDLORA", "TINYLORA", "UNILORA", "VERA"}
NOT_LINEAR = {"ADAPTION_PROMPT", "SHADOW"}  # offered by peft_config_class, fail at injection


def test_every_offered_peft_type_is_covered_here():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from lorabench.methods.peft_tuners import peft_config_class

    offered = set()
    for peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        try:
            peft_config_class(peft_type.value)
        except (ConfigError, ValueError):  # CPT's config cannot even be built with defaults
            continue
        offered.add(peft_type.value)
    assert offered == set(ROUND_TRIP) | SHARED | NOT_LINEAR


@pytest.mark.parametrize("peft_type", sorted(ROUND_TRIP))
def test_peft_tuners_reload_in_peft_with_the_same_logits(tmp_path, peft_type):
    ours, theirs, folder = _round_trip(
        tmp_path, "peft", {"peft_type": peft_type, **ROUND_TRIP[peft_type]}
    )
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    assert json.loads((folder / PEFT_CONFIG).read_text())["peft_type"] == peft_type


@pytest.mark.parametrize("peft_type", sorted(SHARED))
def test_tuners_with_model_level_state_are_not_written_in_peft_format(peft_type):
    model = tiny_model()
    inject(model, "peft", {"peft_type": peft_type}, ATTN)
    blocker = peft_export_blocker(model)
    assert blocker.startswith(f"method 'peft': peft's {peft_type} ")
    assert blocker.endswith("here each layer has its own, which peft's format cannot hold")


def test_ia3_scaling_inputs_names_the_targets_as_feedforward(tmp_path):
    config = {"options": {"feedforward_modules": ["layer"]}}
    ours, theirs, folder = _round_trip(tmp_path, "ia3", config, "down_proj")
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    saved = json.loads((folder / PEFT_CONFIG).read_text())
    assert saved["feedforward_modules"] == ["down_proj"] == saved["target_modules"]


def test_shared_projections_and_lorabench_methods_are_refused_with_the_reason(tmp_path):
    model = tiny_model()
    inject(model, "vera", {"r": 8}, ATTN)
    with pytest.raises(AdapterFileError) as info:
        save_peft_adapter(model, tmp_path / "vera")
    assert str(info.value) == (
        "cannot write a peft adapter: method 'vera': peft's VERA keeps vera_A, vera_B once "
        "per model, shared by every layer; here each layer has its own, which peft's format "
        "cannot hold"
    )
    model = tiny_model()
    inject(model, "mor", None, ATTN)
    with pytest.raises(AdapterFileError, match="method 'mor' is not peft-backed"):
        save_peft_adapter(model, tmp_path / "mor")
    assert not (tmp_path / "mor").exists() and not (tmp_path / "vera").exists()


def test_lm_eval_hflm_loads_the_peft_folder(tmp_path):
    """``lm_eval --model hf --model_args pretrained=...,peft=...`` in one request."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from lorabench.api.conformance import tiny_test_config
    from lorabench.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(["math: 1 + 2 = 3", "the cat sat on the mat"] * 20, 300)
    config = tiny_test_config()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    inject(base, "lora", {"r": 4}, ATTN)
    perturb_adapters(base, seed=5)
    save_peft_adapter(base, tmp_path / "peft", str(tmp_path / "base"))

    request = [Instance("loglikelihood", {}, ("math: 1 + 2 =", " 3"), 0)]
    folder, adapter = str(tmp_path / "base"), str(tmp_path / "peft")
    from_files = HFLM(pretrained=folder, peft=adapter, batch_size=1, device="cpu")
    in_memory = HFLM(pretrained=base.eval(), tokenizer=tokenizer, batch_size=1)
    plain = HFLM(pretrained=folder, batch_size=1, device="cpu")
    [(theirs, _)] = from_files.loglikelihood(request)
    [(ours, _)] = in_memory.loglikelihood(request)
    [(without, _)] = plain.loglikelihood(request)
    assert theirs == pytest.approx(ours, abs=1e-5)
    assert abs(theirs - without) > 1e-3  # the adapter was applied
