"""pytest-benchmark over the same layers and train steps as `lorabench bench-layers`.

Not part of the test run: ``tox -e bench`` or ``pytest benchmarks``. pytest-benchmark keeps
the statistics (``--benchmark-save``/``--benchmark-compare`` to track them over commits);
`lorabench bench-layers` prints the same measurements as ratios to the frozen base.
"""

import pytest
import torch

from lorabench.api.registry import get_method
from lorabench.perf.layers import (
    BASE,
    LAYER_METHODS,
    PEFT_LORA,
    LayerShape,
    build_layer,
    perturb,
    train_step_model,
)
from lorabench.run.measure import MB, AllocationTracker

SHAPE = LayerShape()  # d_in 1024, d_out 2816, 2048 tokens, fp32
LAYERS = [BASE, PEFT_LORA, *LAYER_METHODS]
MERGEABLE = [BASE, PEFT_LORA, *(m for m in LAYER_METHODS if get_method(m).mergeable)]


def _layer_and_inputs(variant: str):
    layer = build_layer(variant, SHAPE)
    perturb(layer)
    x = torch.randn(SHAPE.tokens, SHAPE.d_in)
    return layer, x


@pytest.mark.benchmark(group="layer forward (eval, no grad)")
@pytest.mark.parametrize("variant", LAYERS)
def test_layer_forward(benchmark, variant):
    layer, x = _layer_and_inputs(variant)
    layer.eval()
    with torch.no_grad():
        out = benchmark(layer, x)
    assert out.shape == (SHAPE.tokens, SHAPE.d_out)


@pytest.mark.benchmark(group="layer forward+backward")
@pytest.mark.parametrize("variant", LAYERS)
def test_layer_forward_backward(benchmark, variant):
    layer, x = _layer_and_inputs(variant)
    x.requires_grad_(True)
    grad = torch.randn(SHAPE.tokens, SHAPE.d_out)

    def step():
        layer(x).backward(grad)
        x.grad = None
        for p in layer.parameters():
            p.grad = None

    with AllocationTracker() as tracker:
        step()
    benchmark.extra_info["peak_mib"] = tracker.peak_bytes / MB
    benchmark.extra_info["largest_tensor_mib"] = tracker.largest_bytes / MB
    benchmark(step)


@pytest.mark.benchmark(group="layer merged forward")
@pytest.mark.parametrize("variant", MERGEABLE)
def test_layer_merged_forward(benchmark, variant):
    layer, x = _layer_and_inputs(variant)
    layer.eval()
    if variant != BASE:
        layer.merge()
    with torch.no_grad():
        benchmark(layer, x)


@pytest.mark.benchmark(group="tiny model train step")
@pytest.mark.parametrize("variant", [BASE, *LAYER_METHODS])
def test_tiny_train_step(benchmark, variant):
    step, trainable = train_step_model(variant)
    benchmark.extra_info["trainable_params"] = trainable
    benchmark(step)
