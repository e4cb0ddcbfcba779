"""Performance instruments: the allocation tracker, routed methods' memory, `bench-layers`.

Timings are not asserted here (they belong to `benchmarks/` and `lorabench bench-layers`);
these tests check what is measured and that memory-lean code stays memory-lean.
"""

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lorabench.api.registry import build_config, get_method
from lorabench.cli import main
from lorabench.perf.layers import (
    BUDGET_RANK,
    TARGETS,
    LayerShape,
    build_layer,
    count_flops,
    perturb,
)
from lorabench.perf.render import render_markdown
from lorabench.run.measure import AllocationTracker

T, D_IN, D_OUT, N = 512, 64, 1024, 16
FULL = T * N * D_OUT * 4  # bytes of one fp32 T × N × d_out tensor: 32 MiB, dwarfing the rest


def _forward_backward(layer: nn.Module, naive: bool = False) -> AllocationTracker:
    x = torch.randn(T, D_IN, requires_grad=True)
    grad = torch.randn(T, D_OUT)
    with AllocationTracker() as tracker:
        if naive:  # every expert's full output, then the gated sum: what routed code must avoid
            experts = torch.stack([layer(x) for _ in range(N)], dim=1)  # T × N × d_out
            gates = torch.softmax(torch.randn(T, N), dim=-1)
            (experts * gates[..., None]).sum(1).backward(grad)
        else:
            layer(x).backward(grad)
    return tracker


def test_tracker_sees_a_materialised_experts_tensor():
    tracker = _forward_backward(nn.Linear(D_IN, D_OUT), naive=True)
    assert tracker.largest_bytes >= FULL and tracker.peak_bytes >= FULL


@pytest.mark.parametrize("method", ["mor", "moe-lora", "moe-lora-top2"])
def test_routed_methods_never_allocate_tokens_by_experts_by_dout(method):
    spec = get_method(method)
    layer = spec.adapt(nn.Linear(D_IN, D_OUT), build_config(spec, {"num_experts": N, "r": 2}))
    perturb(layer)
    layer.train()
    tracker = _forward_backward(layer)
    # the largest tensors are T × d_out (2 MiB): output, its grad, the base branch
    assert tracker.largest_bytes <= T * D_OUT * 4, tracker.largest_bytes
    assert tracker.peak_bytes < FULL / 2, tracker.peak_bytes


def test_bench_layers_prints_ratios_to_the_base_and_saves_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench-layers", "--d-in", "64", "--d-out", "96", "--tokens", "32", "--rounds", "1",
            "--min-time", "0.01", "--methods", "lora,mor", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    layers = result["layers"]
    assert sorted(layers) == ["base", "lora", "mor", "peft-lora"]  # JSON keys are sorted
    assert layers["base"]["forward_x_base"] == layers["base"]["train_x_base"] == 1.0
    assert layers["lora"]["params"] == layers["peft-lora"]["params"] == 16 * (64 + 96)
    assert abs(layers["mor"]["params"] - 16 * (64 + 96)) <= 0.5 * 16 * (64 + 96)
    assert "merged_x_base" in layers["lora"] and "merged_x_base" not in layers["mor"]
    lora = layers["lora"]
    assert lora["train_x_base"] == pytest.approx(lora["train_ms"] / layers["base"]["train_ms"])
    steps = result["train_step"]
    assert sorted(steps) == ["base", "lora", "mor"] and steps["base"]["params"] == 0
    assert steps["lora"]["params"] == 98_304  # the tiny suite's budget
    assert steps["mor"]["x_lora"] == pytest.approx(
        steps["mor"]["step_ms"] / steps["lora"]["step_ms"]
    )
    assert [t["target"] for t in result["targets"]] == [text for text, _ in TARGETS.values()]
    for target, (_, limit) in zip(result["targets"], TARGETS.values(), strict=True):
        assert target["met"] == (target["ratio"] <= limit)
    assert result["command"].startswith("lorabench bench-layers --d-in 64")
    base, lora = layers["base"], layers["lora"]
    assert base["forward_x_floor"] == base["train_x_floor"] == 1.0  # the floor's reference
    assert base["train_extra_flops"] == 0 and lora["train_extra_flops"] > 0
    assert lora["train_floor_ms"] == pytest.approx(
        base["train_ms"] * lora["train_flops"] / base["train_flops"]
    )
    assert lora["train_x_floor"] == pytest.approx(lora["train_ms"] / lora["train_floor_ms"])
    assert steps["base"]["step_x_floor"] == 1.0 and steps["mor"]["flops"] > steps["base"]["flops"]
    printed = capsys.readouterr().out
    assert "| mor " in printed and "× frozen base" in printed and f"saved {out}" in printed
    assert "fwd+bwd × floor" in printed
    report = out.with_suffix(".md")
    assert report.read_text() == render_markdown(result, "bench.json")
    written = report.read_text()
    report.unlink()
    assert main(["bench-layers", "--render", str(out)]) == 0  # from the JSON alone
    assert report.read_text() == written


def test_layer_flops_match_the_closed_form():
    """LoRA's forward: the base matmul 2·T·d_in·d_out plus 2·T·r·(d_in + d_out)."""
    shape, r = LayerShape(64, 96, 32), BUDGET_RANK
    x = torch.randn(shape.tokens, shape.d_in)
    base = 2 * shape.tokens * shape.d_in * shape.d_out
    with torch.no_grad():
        assert count_flops(lambda: build_layer("base", shape)(x)) == base
        for variant in ("peft-lora", "lora"):
            layer = build_layer(variant, shape)
            assert count_flops(functools.partial(layer, x)) == base + 2 * shape.tokens * r * (
                64 + 96
            )


def test_committed_performance_report_regenerates_from_its_json():
    folder = Path(__file__).resolve().parents[1] / "reports" / "performance"
    result = json.loads((folder / "bench-layers.json").read_text())
    assert "train_x_floor" in result["layers"]["mora"]  # the floor column is in the real run
    assert (folder / "bench-layers.md").read_text() == render_markdown(result, "bench-layers.json")


def test_bench_layers_rejects_unknown_methods_in_one_line(capsys):
    assert main(["bench-layers", "--methods", "lora,nope", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorabench: error: unknown method 'nope'") and err.count("\n") == 1
