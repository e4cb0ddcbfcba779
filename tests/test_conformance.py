"""The conformance kit over every registered method, plus config variants and a 2nd family."""

import pytest

from lorabench.api import conformance
from lorabench.api.registry import available_methods

# Variants whose code paths differ from the registered defaults.
VARIANTS = [
    ("lora", {"use_rslora": True, "r": 4}),
    ("lora", {"use_dora": True}),
    ("mora", {"mora_type": 1}),
    ("mora", {"r": 2}),
    ("melora", {"n": 2, "r": 3}),
    ("mor", {"router": "mean"}),
    ("mor", {"router": "balanced"}),
    ("moe-lora", {"top_k": 1, "aux_loss_coef": 0.01}),
    ("peft", {"peft_type": "HRA", "r": 4}),  # an orthogonal (Householder) tuner through peft
]
CASES = [(m, {}) for m in available_methods()] + VARIANTS


def _id(case):
    method, config = case
    return method + "".join(f"[{k}={v}]" for k, v in config.items())


@pytest.mark.parametrize("check", list(conformance.CHECKS), ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_conformance(case, check):
    method, config = case
    conformance.CHECKS[check](method, config)


@pytest.mark.parametrize("method", available_methods())
def test_conformance_on_qwen2(method):
    """A second model family: injection, Δ ≡ 0 at init, counts and training all hold."""
    for check in ("zero_delta_at_init", "param_count", "training_step"):
        conformance.CHECKS[check](method, None, family="qwen2")
