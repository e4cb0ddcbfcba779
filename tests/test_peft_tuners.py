"""The generic `peft` plugin: peft's numbers, its presets, and clear refusals."""

import json

import pytest
import torch

from lorabench.api.conformance import tiny_model, toy_batch
from lorabench.api.inject import count_parameters, inject
from lorabench.api.registry import build_config, get_method
from lorabench.errors import ConfigError
from lorabench.run.suite import fit_budget


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    "method,peft_config",
    [
        ("loha", {"peft_type": "LOHA", "r": 4, "alpha": 8}),
        ("lokr", {"peft_type": "LOKR", "r": 4, "alpha": 8}),
        ("ia3", {"peft_type": "IA3", "feedforward_modules": []}),
    ],
)
def test_peft_plugin_numbers_are_peft_numbers(method, peft_config):
    """Per-layer injection gives the logits of peft's whole-model get_peft_model."""
    from peft import get_peft_model
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    fields = {k: v for k, v in peft_config.items() if k != "peft_type"}
    ours_config = {"r": fields["r"]} if "r" in fields else {}
    ours_config["options"] = {
        k: v for k, v in fields.items() if k not in ("r", "feedforward_modules")
    }
    ours = tiny_model()
    inject(ours, method, ours_config, "q_proj,down_proj")
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[peft_config["peft_type"]]]
    theirs = get_peft_model(tiny_model(), cls(target_modules=["q_proj", "down_proj"], **fields))
    _randomise(ours)
    mine = {n.replace("peft_layer.", ""): p for n, p in ours.named_parameters() if p.requires_grad}
    copied = 0
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if p.requires_grad:
                p.copy_(mine[n.replace("base_model.model.", "")])
                copied += 1
    assert copied == len(mine) > 0
    assert count_parameters(ours)[0] == count_parameters(theirs)[0]
    batch = toy_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, rtol=0, atol=1e-5)


def test_vera_counts_peft_vectors_and_lora_through_peft_equals_lora_formula():
    spec = get_method("vera")
    assert spec.param_count(build_config(spec, {"r": 16}), 32, 64) == 64 + 16  # λ_b + λ_d
    peft_lora = get_method("peft")
    config = build_config(peft_lora, {"peft_type": "LORA", "r": 4})
    assert peft_lora.param_count(config, 32, 64) == 4 * (32 + 64)


def test_budget_fitting_tunes_the_peft_rank():
    shapes = [(128, 384)] * 4
    config, count = fit_budget("loha", build_config(get_method("loha"), None), shapes, 8192, 0.25)
    assert config.r == 2 and count == 4 * 2 * 2 * (128 + 384)  # LoHa: two rank-r pairs per layer
    with pytest.raises(ConfigError, match=r"^ia3: has no size knob, so a parameter budget"):
        fit_budget("ia3", build_config(get_method("ia3"), None), shapes, 8192, 0.25)


def test_list_says_ia3_has_no_size_knob(capsys):
    from lorabench.cli import main

    assert main(["list"]) == 0
    lines = {line.split(" — ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["ia3"].endswith("[mergeable; no size knob]"), lines["ia3"]
    assert "size knob: r" not in lines["ia3"]
    assert lines["loha"].endswith("; size knob: r]")


@pytest.mark.parametrize(
    "method,config,message",
    [
        ("peft", {"peft_type": "ADALORA"}, r"ADALORA is not supported: its rank allocator"),
        ("peft", {"peft_type": "VBLORA"}, r"VBLORA is not supported: its trainable vector bank"),
        ("peft", {"peft_type": "PROMPT_TUNING"}, r"PROMPT_TUNING is prompt learning"),
        ("peft", {"peft_type": "NOPE"}, r"peft.peft_type: expected a peft type name \(.*LOHA"),
        ("ia3", {"r": 4}, r"peft.r: IA3Config has no rank field r"),
        ("loha", {"options": {"foo": 1}}, r"peft.options: LoHaConfig has no field foo"),
        ("loha", {"options": {"target_modules": ["x"]}}, r"options.target_modules: set by"),
        ("loha", {"r": 0}, r"peft.r: expected a positive integer, got 0"),
        ("vera", {"peft_type": "LOHA"}, r"vera.peft_type: fixed to VERA by this preset"),
        (
            "peft",
            {"options": {"init_lora_weights": "loftq"}},
            r"peft.options: LoraConfig rejected them: `loftq_config` must be specified",
        ),
    ],
)
def test_unsupported_types_and_bad_options_get_one_line_errors(method, config, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_config(get_method(method), config)
    assert "\n" not in str(info.value)


def test_cli_takes_peft_options_as_an_inline_table(capsys):
    from lorabench.cli import main

    argv = ["params", "--method", "loha", "--set", "options={alpha = 4}", "--targets", "down_proj"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["options"] == {"alpha": 4}
    assert result["trainable_params"] == 4 * 2 * 8 * (384 + 128)  # tiny: 4 down_proj, r=8
    assert main(["params", "--method", "loha", "--set", "options=oops"]) == 2
    assert "loha.options: expected a table, got 'oops'" in capsys.readouterr().err
