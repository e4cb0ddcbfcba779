"""Method-specific math: each plugin against an independent, slow reference."""

import math

import pytest
import torch
from torch import nn

from lorabench.api.conformance import tiny_model, toy_batch, train_steps
from lorabench.api.inject import adapted_layers, collect_aux_loss, inject
from lorabench.api.layer import lora_scale
from lorabench.api.registry import build_config, get_method
from lorabench.api.routing import Router, load_balance_loss
from lorabench.methods.mora import square_rank


def _layer(method, d_in=24, d_out=40, seed=0, **config):
    torch.manual_seed(seed)
    spec = get_method(method)
    return spec.adapt(nn.Linear(d_in, d_out), build_config(spec, config))


def _randomise(layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g))


def _delta(layer, x):
    with torch.no_grad():
        return layer(x) - layer.base_layer(x)


# --- MoR ----------------------------------------------------------------------------------


def test_mor_with_unit_lambdas_equals_lora_of_shared_pair():
    layer = _layer("mor", r=4, num_experts=5, alpha=8.0)
    with torch.no_grad():
        layer.A.normal_()
        layer.B.normal_()
        layer.router.weight.normal_()  # non-uniform gates: Σ g = 1 still makes them irrelevant
    x = torch.randn(3, 7, 24)
    expected = 2.0 * x @ layer.A.T @ layer.B.T  # s = alpha / r = 2
    torch.testing.assert_close(_delta(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_mor_matches_explicit_sum_over_experts():
    layer = _layer("mor", r=3, num_experts=4)
    _randomise(layer)
    x = torch.randn(6, 24)
    g = torch.softmax(x @ layer.router.weight.T, dim=-1)
    expected = torch.zeros(6, 40)
    for i in range(4):
        inner = layer.lambda_A[i] * (x @ layer.A.T)
        expected += g[:, i : i + 1] * (layer.lambda_B[i] * (inner @ layer.B.T))
    expected *= lora_scale(None, 3)
    torch.testing.assert_close(_delta(layer, x), expected, rtol=1e-4, atol=1e-4)


def _train_tiny(method, config, steps=8):
    model = tiny_model()
    inject(model, method, config, "gate_proj,up_proj,down_proj")
    train_steps(model, toy_batch(batch=4, length=16), steps)
    return model


def _expert_spread(layer):
    lam = torch.cat([layer.lambda_A, layer.lambda_B], dim=1)
    return (lam - lam.mean(0, keepdim=True)).abs().max().item()


def test_mor_expert_lambdas_diverge_with_a_learned_router():
    model = _train_tiny("mor", {"r": 4, "num_experts": 4})
    spreads = [_expert_spread(layer) for _, layer in adapted_layers(model)]
    assert min(spreads) > 1e-4, spreads


def test_mor_expert_lambdas_stay_identical_under_mean_routing():
    """The contrast: without a router signal, every expert gets the same gradient."""
    model = _train_tiny("mor", {"r": 4, "num_experts": 4, "router": "mean"})
    spreads = [_expert_spread(layer) for _, layer in adapted_layers(model)]
    assert max(spreads) < 1e-6, spreads


# --- MELoRA ---------------------------------------------------------------------------------


def test_melora_with_one_block_equals_lora():
    layer = _layer("melora", n=1, r=4, alpha=6.0)
    _randomise(layer)
    x = torch.randn(5, 24)
    expected = 1.5 * x @ layer.A[0].T @ layer.B[0].T
    torch.testing.assert_close(_delta(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_melora_is_block_diagonal_with_rank_up_to_n_r():
    layer = _layer("melora", d_in=24, d_out=36, n=3, r=2)
    _randomise(layer)
    dw = layer.delta_weight()
    assert dw.shape == (36, 24)
    assert dw[:12, 8:].abs().sum() == 0 and dw[12:24, :8].abs().sum() == 0
    assert torch.linalg.matrix_rank(dw).item() == 6  # n·r, beyond a LoRA-r=2's rank
    x = torch.randn(4, 24)
    torch.testing.assert_close(x @ dw.T, _delta(layer, x), rtol=1e-5, atol=1e-5)


def test_melora_rejects_n_not_dividing_dims():
    with pytest.raises(ValueError, match=r"melora.n=5 must divide both d_in=24 and d_out=40"):
        _layer("melora", n=5)


# --- MoRA: independent explicit-matrix reference -------------------------------------------


def _mora_reference_weight(M, d_in, d_out, mora_type):
    """ΔW built entry by entry from the description in docs/methods.md (slow, loop-based)."""
    r_hat = M.shape[0]
    n_b = math.ceil(d_in / r_hat)
    padded = n_b * r_hat
    # P: padded_input = P x, wrap-around (position p reads feature p mod d_in)
    P = torch.zeros(padded, d_in, dtype=M.dtype)
    for p in range(padded):
        P[p, p % d_in] = 1.0
    if mora_type == 1:
        C = torch.zeros(r_hat, padded, dtype=M.dtype)  # sum the chunks
        for p in range(padded):
            C[p % r_hat, p] = 1.0
        D = torch.zeros(d_out, r_hat, dtype=M.dtype)  # output j reads slot j mod r̂
        for j in range(d_out):
            D[j, j % r_hat] = 1.0
        return D @ M @ C @ P
    half = r_hat // 2
    blocks = []
    for b in range(n_b):
        R = torch.zeros(r_hat, r_hat, dtype=M.dtype)
        for j in range(half):
            theta = b * 10000 ** (-2 * j / r_hat)
            c, s = math.cos(theta), math.sin(theta)
            R[j, j], R[j, j + half] = c, -s
            R[j + half, j + half], R[j + half, j] = c, s
        blocks.append(M @ R)
    full = torch.block_diag(*blocks) @ P  # (padded, d_in)
    rows = [full[j % padded] for j in range(d_out)]  # truncate, tiling first if shorter
    return torch.stack(rows)


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize(
    "d_in,d_out,r",
    [(24, 40, 4), (40, 24, 4), (30, 30, 2), (16, 48, 8), (4, 64, 8)],
    ids=["wider-out", "wider-in(truncates)", "ragged", "exact", "r_hat>2d_in"],
)
def test_mora_matches_explicit_reference(mora_type, d_in, d_out, r):
    layer = _layer("mora", d_in=d_in, d_out=d_out, r=r, mora_type=mora_type)
    if (d_in, d_out) == (4, 64):
        assert layer.r_hat > 2 * d_in  # the guard case is really exercised
    _randomise(layer)
    expected = _mora_reference_weight(layer.M.detach().double(), d_in, d_out, mora_type).float()
    torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-4, atol=1e-4)
    x = torch.randn(3, d_in)
    torch.testing.assert_close(_delta(layer, x), x @ expected.T, rtol=1e-4, atol=1e-4)


def test_mora_square_rank_rounding():
    cfg6, cfg1 = build_config("mora", {"r": 16}), build_config("mora", {"r": 16, "mora_type": 1})
    assert square_rank(cfg6, 4096, 11008) == 492  # round(491.6), even
    assert square_rank(build_config("mora", {"r": 8}), 4096, 4096) == 256
    assert square_rank(build_config("mora", {"r": 3, "mora_type": 6}), 100, 100) == 24  # 24.49
    assert square_rank(build_config("mora", {"r": 5, "mora_type": 1}), 100, 101) == 32  # 31.7
    assert square_rank(build_config("mora", {"r": 5, "mora_type": 6}), 100, 101) == 32
    assert square_rank(cfg1, 3, 2) == 9  # sqrt(80) = 8.94 → 9, odd allowed for type 1


# --- MoE-LoRA routing ------------------------------------------------------------------------


def test_topk_gates_renormalise_over_the_chosen_experts():
    router = Router(16, 6, top_k=2)
    x = torch.randn(10, 16)
    gates, _ = router(x)
    probs = torch.softmax(x @ router.weight.T, -1)
    assert ((gates > 0).sum(-1) == 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    top_p, top_i = probs.topk(2, -1)
    torch.testing.assert_close(gates.gather(-1, top_i), top_p / top_p.sum(-1, keepdim=True))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_aux_loss_is_k_under_uniform_routing(k):
    router = Router(16, 8, top_k=k)
    with torch.no_grad():
        router.weight.zero_()  # uniform softmax
    _, aux = router(torch.randn(20, 16), with_aux=True)
    assert aux.item() == pytest.approx(k, abs=1e-6)


def test_aux_loss_known_value_and_padding_mask():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.0, 0.0, 1.0]])
    choices = probs.topk(2, -1).indices
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])  # last token is padding
    # real tokens: P = (0.4333, 0.3, 0.2667); 1st choices: e0, e1, e0; 2nd: e1, e2, e2
    P = torch.tensor([1.3, 0.9, 0.8]) / 3
    f1, f2 = torch.tensor([2, 1, 0]) / 3, torch.tensor([0, 1, 2]) / 3
    expected = 3 * ((f1 * P).sum() + (f2 * P).sum())
    got = load_balance_loss(probs, choices, 3, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_top2_preset_collects_its_aux_loss_once():
    model = tiny_model()
    inject(model, "moe-lora-top2", None, "gate_proj,up_proj")
    model.train()
    batch = toy_batch()
    model(**batch)
    aux = collect_aux_loss(model)
    # 0.001 · L_aux with L_aux near k = 2 for a near-uniform router at init
    assert aux is not None and 0.0015 < aux.item() < 0.0025
    assert collect_aux_loss(model) is None  # consumed
    model.eval()
    model(**batch)
    assert collect_aux_loss(model) is None  # no aux loss at evaluation


def test_aux_loss_ignores_padding_tokens():
    model = tiny_model()
    inject(model, "moe-lora-top2", None, "up_proj")
    model.train()
    short = toy_batch(batch=1, length=6)
    padded_ids = torch.cat([short["input_ids"], torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    model(**short)
    a = collect_aux_loss(model)
    model(input_ids=padded_ids, attention_mask=mask)
    b = collect_aux_loss(model)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_dense_moe_lora_has_no_aux_loss():
    model = tiny_model()
    inject(model, "moe-lora", None, "up_proj")
    model.train()
    model(**toy_batch())
    assert collect_aux_loss(model) is None


# --- LoRA is peft's ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_numbers_are_peft_numbers(use_dora):
    """Our plugin on a model gives the same logits as peft's get_peft_model with the same weights."""
    from peft import LoraConfig, get_peft_model

    ours = tiny_model()
    inject(
        ours,
        "lora",
        {"r": 4, "alpha": 8.0, "use_rslora": True, "use_dora": use_dora},
        "q_proj,v_proj",
    )
    theirs = get_peft_model(
        tiny_model(),
        LoraConfig(
            r=4,
            lora_alpha=8.0,
            use_rslora=True,
            use_dora=use_dora,
            target_modules=["q_proj", "v_proj"],
        ),
    )
    _randomise(ours)
    ours_sd = {
        n.replace("peft_layer.", ""): p for n, p in ours.named_parameters() if p.requires_grad
    }
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if p.requires_grad:
                p.copy_(ours_sd[n.replace("base_model.model.", "")])
    batch = toy_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, rtol=0, atol=1e-6)
    layer = dict(adapted_layers(ours))["model.layers.0.self_attn.q_proj"]
    assert layer.peft_layer.scaling["default"] == pytest.approx(8.0 / 2.0)  # alpha / sqrt(r)


@pytest.mark.parametrize("router", ["softmax", "mean"])
def test_routing_diagnostics_report_load_and_entropy(router):
    from transformers import AutoModelForCausalLM

    from lorabench.api.conformance import tiny_test_config
    from lorabench.models.tiny import train_tokenizer
    from lorabench.run.diagnostics import routing_diagnostics

    tok = train_tokenizer(["the cat sat", "a dog ran far"] * 10, 300)
    config = tiny_test_config()
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    inject(model, "mor", {"router": router, "num_experts": 4}, "up_proj")
    out = routing_diagnostics(model, tok, {"t": ["the cat", "a dog ran"]})
    assert out["num_experts"] == 4 and sorted(out["layers"]) == [
        "model.layers.0.mlp.up_proj",
        "model.layers.1.mlp.up_proj",
    ]
    stats = out["layers"]["model.layers.0.mlp.up_proj"]["t"]
    assert sum(stats["load"]) == pytest.approx(1.0, abs=1e-5)
    if router == "mean":  # uniform gates: equal load, maximal entropy log N
        assert stats["load"] == [0.25] * 4
        assert stats["entropy"] == pytest.approx(math.log(4), abs=1e-5)
    else:
        assert 0 < stats["entropy"] < math.log(4)
