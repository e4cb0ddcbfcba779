"""Injection into Hugging Face causal LMs: target matching, errors, and adapter files."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lorabench.api.conformance import tiny_model, toy_batch
from lorabench.api.inject import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapted_layers,
    find_targets,
    inject,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from lorabench.errors import AdapterFileError, MergeError, TargetError


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_all_linear_adapts_every_projection_but_not_the_head(family):
    model = tiny_model(family)
    injection = inject(model, "lora", None, "all-linear")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in injection.modules})
    assert leaves == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(injection.modules) == 7 * 2
    assert not any("lm_head" in n for n in injection.modules)


def test_named_targets_select_by_leaf_name():
    model = tiny_model()
    injection = inject(model, "mor", None, "gate_proj, up_proj,down_proj")
    assert injection.targets == ["gate_proj", "up_proj", "down_proj"]
    assert [n for n, _ in adapted_layers(model)] == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")
    ]


def test_target_matching_nothing_names_it_and_the_available_layers():
    with pytest.raises(TargetError) as err:
        find_targets(tiny_model(), ["q_proj", "c_attn"])
    assert str(err.value) == (
        "target 'c_attn' matched no module; linear layers in this model: "
        "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    )


def test_non_linear_target_is_refused_by_type():
    with pytest.raises(
        TargetError, match="matched 'model.embed_tokens', a Embedding; lorabench adapts only"
    ):
        inject(tiny_model(), "lora", None, "embed_tokens")


def test_gpt2_conv1d_is_an_unsupported_layer_type():
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    )
    with pytest.raises(TargetError, match="matched 'transformer.h.0.attn.c_attn', a Conv1D"):
        inject(model, "lora", None, "c_attn")


def test_empty_and_mixed_all_linear_targets_are_errors():
    with pytest.raises(TargetError, match="target_modules is empty"):
        find_targets(tiny_model(), " , ")
    with pytest.raises(TargetError, match="all-linear cannot be combined"):
        find_targets(tiny_model(), "all-linear,q_proj")


def test_injecting_twice_is_refused():
    model = tiny_model()
    inject(model, "lora", None, "q_proj")
    with pytest.raises(TargetError, match="is already adapted"):
        inject(model, "lora", None, "q_proj")


def test_routed_merge_error_message():
    model = tiny_model()
    inject(model, "mor", None, "up_proj")
    with pytest.raises(MergeError, match="MoRLinear is input-dependent .* cannot be merged"):
        merge_adapters(model)


def test_adapter_files_hold_only_adapter_tensors_and_the_config(tmp_path):
    model = tiny_model()
    inject(model, "melora", {"n": 2, "r": 3}, "q_proj,v_proj")
    path = save_adapter(model, tmp_path)
    assert path.name == ADAPTER_WEIGHTS
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert meta["method"] == "melora" and meta["config"]["n"] == 2
    assert meta["targets"] == ["q_proj", "v_proj"]
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(
        f"model.layers.{i}.self_attn.{p}.{t}"
        for i in range(2)
        for p in ("q_proj", "v_proj")
        for t in "AB"
    )
    assert tensors["model.layers.0.self_attn.q_proj.A"].shape == (2, 3, 16)


def test_loading_into_a_different_model_is_a_clear_error(tmp_path):
    model = tiny_model()
    inject(model, "lora", None, "q_proj")
    save_adapter(model, tmp_path)
    with pytest.raises(
        TargetError, match="target 'model.layers.0.self_attn.q_proj' matched no module"
    ):
        load_adapter(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path)
    with pytest.raises(AdapterFileError, match="cannot read adapter"):
        load_adapter(tiny_model(), tmp_path / "missing")


def test_unadapted_model_has_nothing_to_save(tmp_path):
    with pytest.raises(AdapterFileError, match="no lorabench adapter to save"):
        save_adapter(tiny_model(), tmp_path)


def test_adapted_model_generates(tmp_path):
    model = tiny_model()
    inject(model, "moe-lora-top2", None, "all-linear")
    out = model.generate(**toy_batch(batch=1, length=4), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_records_and_adapters_follow_the_umask(tmp_path):
    """mkstemp and safetensors create 0600 files; ours get the user's umask like any file."""
    import os
    import stat

    from lorabench.records import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        model = tiny_model()
        inject(model, "lora", None, "all-linear")
        weights = save_adapter(model, tmp_path / "adapter")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
