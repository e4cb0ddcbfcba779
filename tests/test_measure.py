"""Honest costs, measured in the run's process: memory per phase, interleaved latency with
every repeat kept, throughput windows, CPU utilisation, and the base weights' checksum."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from lorabench.run.measure import (
    MemoryMeter,
    MergeState,
    adapters_bypassed,
    hwm_rss_mb,
    interleaved_latency,
    state_dict_sha256,
)
from lorabench.throughput import throughput_windows
from lorabench.train import TrainConfig


def _touch(mb: int, hold_s: float = 0.05) -> None:
    block = torch.ones(mb * 1024 * 1024 // 4)  # written, so resident
    time.sleep(hold_s)  # long enough for the sampling thread to see it
    del block


@pytest.mark.parametrize("clear_refs", [True, False], ids=["vmhwm", "sampled"])
def test_memory_phases_are_measured_apart(clear_refs):
    if clear_refs and hwm_rss_mb() is None:
        pytest.skip("no /proc/self/status here")
    meter = MemoryMeter(torch.device("cpu"), use_clear_refs=clear_refs)
    with meter.phase("train"):
        _touch(200)
    with meter.phase("eval"):
        _touch(20)
    report = meter.report()
    train, evaluation = report["phases"]["train"], report["phases"]["eval"]
    method = {"vmhwm", "sampled"} if clear_refs else {"sampled"}
    assert train["method"] in method and evaluation["method"] in method
    # the big block is freed before eval starts: eval's own peak does not include it
    assert train["peak_rss_mb"] > evaluation["peak_rss_mb"] + 120
    assert report["peak_rss_mb"] >= train["peak_rss_mb"]  # the overall peak keeps counting
    assert report["kind"] == "cpu_rss"


class Timed(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, input_ids):
        return self.linear(input_ids.float())


def test_latency_is_interleaved_in_rotating_rounds_and_every_repeat_is_kept():
    model = Timed()
    order = []

    def variant(name):
        class Enter:
            def __enter__(self):
                order.append(name)

            def __exit__(self, *exc):
                return False

        return Enter

    names = ["base", "unmerged", "merged"]
    samples = interleaved_latency(
        model, torch.ones(2, 4, dtype=torch.long), 4, {n: variant(n) for n in names}
    )
    assert {k: len(v) for k, v in samples.items()} == {n: 4 for n in names}
    assert all(t > 0 for times in samples.values() for t in times)
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) == 2 + 4  # warm-up rounds, then the kept ones
    assert rounds[:3] == [names, names[1:] + names[:1], names[2:] + names[:2]]
    assert model.training  # put back as it was


def tiny_adapted(seed: int = 0):
    from transformers import LlamaForCausalLM

    from lorabench.api.inject import inject
    from lorabench.models.zoo import tiny_config

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(vocab_size=64)).eval()
    before = state_dict_sha256(model)
    inject(model, "lora", {"r": 2}, ["up_proj", "down_proj"])
    with torch.no_grad():  # a non-zero adapter, as after training
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model, before


def test_bypass_is_the_base_model_and_merge_timing_leaves_the_weights_exact():
    from transformers import LlamaForCausalLM

    from lorabench.models.zoo import tiny_config

    model, _ = tiny_adapted()
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config(vocab_size=64)).eval()
    ids = torch.randint(3, 64, (2, 8))
    with torch.no_grad():
        adapted_out = model(input_ids=ids).logits
        with adapters_bypassed(model):
            assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
        assert torch.equal(model(input_ids=ids).logits, adapted_out)  # adapters back
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = MergeState(model)
    samples = interleaved_latency(
        model,
        ids,
        3,
        {
            "base": lambda: adapters_bypassed(model),
            "unmerged": state.unmerged,
            "merged": state.merged,
        },
    )
    state.restore()
    assert {k: len(v) for k, v in samples.items()} == {"base": 3, "unmerged": 3, "merged": 3}
    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # bit for bit
    assert not any(layer.merged for layer in state.layers)


def test_base_weights_checksum_names_the_weights():
    _, first = tiny_adapted(seed=0)
    _, again = tiny_adapted(seed=0)
    _, other = tiny_adapted(seed=1)
    assert first == again and first != other and len(first) == 64


def test_throughput_windows_and_cpu_utilisation():
    assert throughput_windows([10] * 20, [1.0] * 10 + [2.0] * 10, windows=4) == [
        10.0,
        10.0,
        5.0,
        5.0,
    ]
    assert len(throughput_windows([1] * 7, [1.0] * 7)) == 7  # fewer steps than windows
    assert throughput_windows([], []) == []

    from lorabench.train import Example, train

    examples = [Example([1, 2, 3], [-100, 2, 3]) for _ in range(8)]

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(8, 8)

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.emb(input_ids)})()

    result = train(LM(), examples, TrainConfig(steps=12, batch_size=4, throughput_warmup=2),
                   seed=0, progress=False)  # fmt: skip
    assert len(result.tokens_per_s_windows) == 10
    assert result.cpu_utilisation is not None and 0 < result.cpu_utilisation <= 1.5
    assert result.cpu_wait_fraction is None or 0 <= result.cpu_wait_fraction <= 1.5
