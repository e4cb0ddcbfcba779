"""Training features: gradient checkpointing, precision, optimisers, epochs, validation loss,
TensorBoard tracking — each a [train] key (or `--log`) that changes no existing config hash."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lorabench.api.conformance import perturb_adapters, tiny_model, toy_batch
from lorabench.api.inject import adapted_layers, collect_aux_loss, inject
from lorabench.api.registry import available_methods
from lorabench.errors import ConfigError
from lorabench.run.suite import load_suite, plan
from lorabench.train import (
    IGNORE_INDEX,
    Example,
    TrainConfig,
    autocast_for,
    gradient_checkpointing,
    make_optimizer,
    masked_lm_loss,
    train,
)

ROOT = Path(__file__).parents[1]
SUITES = ROOT / "suites"
SMOKE = SUITES / "smoke.toml"


def toy_examples(count: int = 16, length: int = 12, seed: int = 0) -> list[Example]:
    ids = toy_batch(seed=seed, batch=count, length=length)["input_ids"].tolist()
    return [Example(row, [IGNORE_INDEX] * 6 + row[6:]) for row in ids]


def adapted_model(method: str, config: dict | None = None) -> torch.nn.Module:
    """The conformance kit's tiny random Llama with ``method`` injected, off its init."""
    model = tiny_model()
    if method == "full":
        model.requires_grad_(True)
        return model
    torch.manual_seed(0)
    inject(model, method, config, "all-linear")
    perturb_adapters(model)  # B = 0 at init would leave most gradients trivially zero
    return model


# --- config: validation and hashes ------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(steps=10, epochs=1.0), "train: give steps or epochs, not both (steps=10, epochs=1.0)"),
        (dict(epochs=0), "train.epochs: expected a positive number of passes, got 0"),
        (dict(precision="fp64"), "train.precision: expected fp32, bf16 or fp16, got 'fp64'"),
        (dict(optimizer="adam"), "train.optimizer: expected adamw, adamw_fused or sgd, got 'adam'"),
        (dict(betas=[0.9]), "train.betas: expected two numbers in [0, 1), got [0.9]"),
        (dict(betas=[0.9, 1.0]), "train.betas: expected two numbers in [0, 1), got [0.9, 1.0]"),
        (dict(optimizer="sgd", betas=[0.8, 0.9]), "train.betas: applies to AdamW only"),
        (dict(momentum=0.9), "train.momentum: applies to sgd only, but optimizer is 'adamw'"),
        (dict(optimizer="sgd", momentum=1.0), "train.momentum: expected a number in [0, 1)"),
        (dict(eval_every=0), "train.eval_every: expected None or a positive integer, got 0"),
    ],
)  # fmt: skip
def test_bad_train_values_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**fields)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_new_fields_stay_out_of_the_run_config_at_their_default():
    old_keys = {
        "steps", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "schedule",
        "max_grad_norm", "max_length", "throughput_warmup",
    }  # fmt: skip
    assert TrainConfig().run_config("cpu") == {
        "steps": 200, "batch_size": 16, "grad_accum": 1, "lr": 1e-3, "weight_decay": 0.0,
        "warmup_steps": 10, "schedule": "cosine", "max_grad_norm": 1.0, "max_length": 96,
        "throughput_warmup": 5,
    }  # fmt: skip
    # on CUDA a config without precision meant bf16 autocast: fp32 must be recorded there
    assert TrainConfig().run_config("cuda:1") == {**TrainConfig().run_config(), "precision": "fp32"}
    used = TrainConfig(
        epochs=2.5, optimizer="sgd", momentum=0.9, precision="bf16",
        gradient_checkpointing=True, eval_every=50,
    ).run_config("cpu")  # fmt: skip
    assert set(used) - old_keys == {
        "epochs", "optimizer", "momentum", "precision", "gradient_checkpointing", "eval_every",
    }  # fmt: skip
    assert used["steps"] is None and used["epochs"] == 2.5
    assert TrainConfig(betas=(0.8, 0.95)).run_config()["betas"] == [0.8, 0.95]


COMMITTED = sorted(ROOT.glob("reports/*/runs/*.json"))


def test_committed_train_configs_round_trip_unchanged():
    """Every committed record's train config loads and is stored again exactly as it was."""
    assert len(COMMITTED) >= 60
    for path in COMMITTED:
        config = json.loads(path.read_text())["config"]
        train = TrainConfig(**config["train"])
        assert train.run_config(config["device"]) == config["train"], path.name


# `lorabench run suites/<name>.toml --dry-run` before the [train] keys of issue 16 existed
PLANNED_BEFORE = {
    "smoke": [
        "base-seed0-f081d894", "full-seed0-6c2cca5e", "lora-seed0-b1257f53",
        "mora-seed0-b2b971d8", "melora-seed0-3e5010ff", "moe-lora-seed0-6af5d49f",
        "moe-lora-top2-seed0-304a5605", "mor-seed0-7539e590",
    ],
    "tiny": [
        "base-seed0-3defa8c8", "full-lr0.0001-seed0-2a92c278", "full-lr0.0001-seed1-0784fb04",
        "full-lr0.0001-seed2-40243e8d", "full-lr0.0003-seed0-8f7a0045",
        "full-lr0.0003-seed1-8d4a7046", "full-lr0.0003-seed2-3237563c",
        "full-lr0.001-seed0-00d89320", "full-lr0.001-seed1-e331024d",
        "full-lr0.001-seed2-17141803", "lora-lr0.001-seed0-f3d1d93d",
        "lora-lr0.001-seed1-617ec4e4", "lora-lr0.001-seed2-12cfe062",
        "lora-lr0.003-seed0-308b0b34", "lora-lr0.003-seed1-d408a2d0",
        "lora-lr0.003-seed2-0c336106", "lora-lr0.01-seed0-cae7efc5",
        "lora-lr0.01-seed1-dcfad0ed", "lora-lr0.01-seed2-e9084302",
        "dora-lr0.001-seed0-ef51cc5c", "dora-lr0.001-seed1-2aa99f61",
        "dora-lr0.001-seed2-a1feb30b", "dora-lr0.003-seed0-f0faeb97",
        "dora-lr0.003-seed1-2d8190cd", "dora-lr0.003-seed2-c7507e2f",
        "dora-lr0.01-seed0-19c99555", "dora-lr0.01-seed1-f55df6c7",
        "dora-lr0.01-seed2-49ce5b87", "mora-lr0.001-seed0-3511acd1",
        "mora-lr0.001-seed1-42bcbdb6", "mora-lr0.001-seed2-1431387a",
        "mora-lr0.003-seed0-714b9111", "mora-lr0.003-seed1-e55f98cf",
        "mora-lr0.003-seed2-d92cba68", "mora-lr0.01-seed0-775fc8aa",
        "mora-lr0.01-seed1-d48ceb59", "mora-lr0.01-seed2-94736089",
        "melora-lr0.001-seed0-b5139ddb", "melora-lr0.001-seed1-84a8724c",
        "melora-lr0.001-seed2-d808570c", "melora-lr0.003-seed0-03e3b088",
        "melora-lr0.003-seed1-73a4a365", "melora-lr0.003-seed2-5ccfff1c",
        "melora-lr0.01-seed0-1e572f86", "melora-lr0.01-seed1-7e84cc12",
        "melora-lr0.01-seed2-b77eb9cb", "moe-lora-lr0.001-seed0-b8d24776",
        "moe-lora-lr0.001-seed1-1e9e0ceb", "moe-lora-lr0.001-seed2-686c074b",
        "moe-lora-lr0.003-seed0-4e3489d5", "moe-lora-lr0.003-seed1-c5c0c850",
        "moe-lora-lr0.003-seed2-79afae3e", "moe-lora-lr0.01-seed0-3c36b47c",
        "moe-lora-lr0.01-seed1-14444df1", "moe-lora-lr0.01-seed2-580d76cb",
        "moe-lora-top2-lr0.001-seed0-db4d3d30", "moe-lora-top2-lr0.001-seed1-5916e894",
        "moe-lora-top2-lr0.001-seed2-2631eb80", "moe-lora-top2-lr0.003-seed0-7bc20b6d",
        "moe-lora-top2-lr0.003-seed1-c87f2f5f", "moe-lora-top2-lr0.003-seed2-b0558cc8",
        "moe-lora-top2-lr0.01-seed0-aeb51c6c", "moe-lora-top2-lr0.01-seed1-490e1082",
        "moe-lora-top2-lr0.01-seed2-abb75e59", "mor-lr0.001-seed0-9d1ef7f4",
        "mor-lr0.001-seed1-1ee65e05", "mor-lr0.001-seed2-b39622bb",
        "mor-lr0.003-seed0-5a3db7be", "mor-lr0.003-seed1-11e57b5b",
        "mor-lr0.003-seed2-034cb285", "mor-lr0.01-seed0-dd8d439b", "mor-lr0.01-seed1-c96dc4de",
        "mor-lr0.01-seed2-5dd2db94",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PLANNED_BEFORE))
def test_shipped_suites_plan_the_run_ids_they_planned_before(name):
    runs = plan(load_suite(SUITES / f"{name}.toml"))
    assert [r.run_id for r in runs] == PLANNED_BEFORE[name]


MINIMAL = """
[suite]
name = "t"
model = "tiny"
targets = "gate_proj,up_proj,down_proj"
tasks_dir = "{tasks}"

[train]
{train}

[[methods]]
name = "lora"
{method}
"""


def suite_file(tmp_path: Path, train: str = "steps = 4", method: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(MINIMAL.format(tasks=SUITES / "tasks", train=train, method=method))
    return path


def test_a_method_s_epochs_replace_the_suite_s_steps(tmp_path):
    path = suite_file(tmp_path, "steps = 30", 'train = { epochs = 2 }\n[[methods]]\nname = "mor"')
    runs = {r.label: r.config["train"] for r in plan(load_suite(path))}
    assert (runs["lora"]["steps"], runs["lora"]["epochs"]) == (None, 2.0)
    assert runs["mor"]["steps"] == 30 and "epochs" not in runs["mor"]
    plain = plan(load_suite(suite_file(tmp_path, "steps = 30")))[0]
    used = plan(load_suite(suite_file(tmp_path, "steps = 30\ngradient_checkpointing = true")))[0]
    assert used.config["train"] == {**plain.config["train"], "gradient_checkpointing": True}
    assert used.run_id != plain.run_id  # a different config, a different hash


@pytest.mark.parametrize(
    "train, method, message",
    [
        ("steps = 4\nepochs = 1", "", "train: give steps or epochs, not both"),
        ("steps = 4", "train = { steps = 3, epochs = 1 }", "train: give steps or epochs"),
        ("eval_every = [5, 10]", "", "[train].eval_every: how often the validation loss is "
         "measured is no hyperparameter; give one value"),
        ("gradient_checkpointing = [true, false]", "", "[train].gradient_checkpointing: a list "
         "(a grid to select on validation) is allowed for numeric fields only"),
        ("precision = 'fp8'", "", "train.precision: expected fp32, bf16 or fp16, got 'fp8'"),
        ("betas = [[0.9, 0.99], [0.8, 0.9]]", "", "[train].betas: expected a number"),
        ("momentum = 0.5", "", "train.momentum: applies to sgd only"),
    ],
)  # fmt: skip
def test_bad_suite_train_values_are_one_line_errors(tmp_path, train, method, message):
    with pytest.raises(ConfigError) as info:
        plan(load_suite(suite_file(tmp_path, train, method)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_numeric_new_fields_may_be_grids_and_betas_is_one_value(tmp_path):
    path = suite_file(tmp_path, "steps = 4\noptimizer = 'sgd'\nmomentum = [0.0, 0.9]")
    runs = plan(load_suite(path))
    assert [r.config["train"].get("momentum") for r in runs] == [None, 0.9]  # 0.0 is the default
    assert runs[0].config["train_sweep"] == {"fields": ["momentum"], "seed": 0}
    (run,) = plan(load_suite(suite_file(tmp_path, "steps = 4\nbetas = [0.9, 0.95]")))
    assert run.config["train"]["betas"] == [0.9, 0.95] and "train_sweep" not in run.config


def test_eval_every_needs_validation_splits(tmp_path):
    from lorabench.tasks.synthetic import write_tasks

    tasks = tmp_path / "tasks"
    sizes = {f: (40, 8, 10) for f in ("kv_memory", "list_ops", "arithmetic", "word_swap")}
    write_tasks(tasks, sizes={**sizes, "sentiment": (40, 8, 10)})
    (tasks / "lb_sentiment" / "validation.jsonl").unlink()
    path = tmp_path / "suite.toml"
    path.write_text(MINIMAL.format(tasks=tasks, train="steps = 4\neval_every = 2", method=""))
    with pytest.raises(ConfigError, match="eval_every scores the validation splits, but some "):
        plan(load_suite(path))


# --- the driver ---------------------------------------------------------------------------------


def test_epochs_give_the_number_of_steps_without_the_partial_batch():
    examples = toy_examples(count=21)  # 21 // 4 = 5 micro-batches an epoch; one example left
    cfg = TrainConfig(epochs=1.5, batch_size=4, grad_accum=2, warmup_steps=1)
    assert cfg.total_steps(21) == 4  # ceil(1.5 * 5 / 2)
    model = adapted_model("lora")
    result = train(model, examples, cfg, seed=0, progress=False)
    assert len(result.loss_curve) == 4 and result.tokens == 4 * 2 * 4 * 12


ROUTED = [("moe-lora-top2", None), ("mor", {"router": "balanced"})]
CHECKPOINTED = [(m, None) for m in [*available_methods(), "full"]]
CHECKPOINTED += [("lora", {"dropout": 0.1}), *ROUTED]


def gradients(method: str, config: dict | None, checkpointing: bool):
    """One forward + backward of LM loss + aux loss; (gradients, loss, aux, MLP calls)."""
    model = adapted_model(method, config)
    model.train()
    calls = []
    # a pre-hook: the recomputation stops once it has what backward needs, which may be
    # inside the MLP (before a forward hook would fire)
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    batch = toy_batch(batch=4, length=12)
    labels = batch["input_ids"].masked_fill(torch.arange(12) < 5, IGNORE_INDEX)
    with gradient_checkpointing(model, checkpointing):
        torch.manual_seed(1)  # dropout masks
        loss = masked_lm_loss(model(**batch).logits, labels)
        aux = collect_aux_loss(model)
        (loss + aux if aux is not None else loss).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return grads, loss.item(), None if aux is None else aux.item(), len(calls)


@pytest.mark.parametrize(
    "method, config", CHECKPOINTED, ids=lambda v: v if isinstance(v, str) else str(v or "")
)
def test_gradient_checkpointing_gives_the_same_gradients(method, config):
    plain, loss, aux, calls = gradients(method, config, checkpointing=False)
    checked, loss_c, aux_c, calls_c = gradients(method, config, checkpointing=True)
    assert (calls, calls_c) == (1, 2)  # checkpointing recomputed the layer in backward
    assert loss_c == loss and aux_c == aux
    assert set(checked) == set(plain) and plain
    for name, grad in plain.items():
        assert grad is not None and checked[name] is not None, name
        torch.testing.assert_close(checked[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in plain.values())
    if (method, config) in ROUTED:
        assert aux is not None and aux > 0  # the aux loss's gradients were compared too


@pytest.mark.parametrize("method, config", ROUTED, ids=["moe-lora-top2", "mor-balanced"])
def test_checkpointed_training_of_routed_methods_counts_aux_once(method, config):
    cfg = TrainConfig(steps=4, batch_size=4, grad_accum=2, warmup_steps=1, lr=1e-2)
    curves = {}
    for checkpointing in (False, True):
        model = adapted_model(method, config)
        on = TrainConfig(**{**cfg.run_config(), "gradient_checkpointing": checkpointing})
        result = train(model, toy_examples(), on, seed=3, progress=False)
        curves[checkpointing] = (result.loss_curve, result.aux_loss_curve)
        # backward's recomputation set the aux losses again; the driver dropped them
        assert all(layer.aux_loss is None for _, layer in adapted_layers(model))
    assert curves[True][0] == pytest.approx(curves[False][0], rel=1e-5)
    assert curves[True][1] == pytest.approx(curves[False][1], rel=1e-5)
    assert all(a > 0 for a in curves[True][1])


def test_eval_every_leaves_the_training_run_unchanged():
    cfg = TrainConfig(steps=5, batch_size=4, warmup_steps=1, lr=1e-2, throughput_warmup=1)
    examples, held_out = toy_examples(), toy_examples(count=6, seed=9)
    runs, models = {}, {}
    for eval_every in (None, 2):
        models[eval_every] = model = adapted_model("lora", {"dropout": 0.2})  # RNG matters
        torch.manual_seed(5)
        on = TrainConfig(**{**cfg.run_config(), "eval_every": eval_every})
        runs[eval_every] = train(model, examples, on, seed=0, progress=False, val_examples=held_out)
    assert runs[2].loss_curve == runs[None].loss_curve  # exactly: same batches, same dropout
    assert runs[None].val_loss_curve == []
    assert [step for step, _ in runs[2].val_loss_curve] == [2, 4, 5]  # and after the last step
    for model in models.values():  # trained alike, so scored alike
        with torch.no_grad():
            ids = torch.tensor([e.input_ids for e in held_out])
            labels = torch.tensor([e.labels for e in held_out])
            direct = masked_lm_loss(model(input_ids=ids).logits, labels).item()
        assert runs[2].val_loss_curve[-1][1] == pytest.approx(direct, rel=1e-5)
    with pytest.raises(ValueError, match="eval_every is set, but there are no validation"):
        train(adapted_model("lora"), examples, TrainConfig(eval_every=2, batch_size=4), seed=0)


def test_precision_autocasts_on_the_run_s_device_and_fp16_scales(monkeypatch):
    assert autocast_for("fp32", "cpu").__class__.__name__ == "nullcontext"
    with autocast_for("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    scalers = []
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a: scalers.append(a) or real(*a))
    cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, lr=1e-2, throughput_warmup=1)
    curves = {}
    for precision in ("fp32", "bf16", "fp16"):
        on = TrainConfig(**{**cfg.run_config(), "precision": precision})
        curves[precision] = train(adapted_model("lora"), toy_examples(), on, seed=0, progress=False)
    assert scalers == [("cpu",)]  # fp16 only, on the run's device
    first = curves["fp32"].loss_curve[0]
    for precision in ("bf16", "fp16"):
        assert curves[precision].loss_curve[0] == pytest.approx(first, rel=2e-2)
        assert curves[precision].loss_curve != curves["fp32"].loss_curve  # autocast was on


def test_optimizers():
    params = [torch.nn.Parameter(torch.ones(3))]
    adamw = make_optimizer(params, TrainConfig(betas=[0.8, 0.95], weight_decay=0.1))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.95) and not adamw.param_groups[0]["fused"]
    assert make_optimizer(params, TrainConfig(optimizer="adamw_fused")).param_groups[0]["fused"]
    sgd = make_optimizer(params, TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=0.1))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.param_groups[0]["momentum"], sgd.param_groups[0]["weight_decay"]) == (0.9, 0.1)
    # one SGD step of the driver: p - lr * grad (constant lr, no warm-up, no clipping)
    cfg = TrainConfig(
        steps=1, batch_size=4, optimizer="sgd", lr=0.5, warmup_steps=0, schedule="constant",
        max_grad_norm=0.0,
    )  # fmt: skip
    examples = toy_examples()
    model = adapted_model("lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    reference = copy.deepcopy(model).train()
    from lorabench.train import batches

    batch = next(batches(examples, cfg, 0, 0))
    masked_lm_loss(reference(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                   batch["labels"]).backward()  # fmt: skip
    train(model, examples, cfg, seed=0, progress=False)
    for name, p in reference.named_parameters():
        if p.requires_grad:
            expected = before[name] - 0.5 * p.grad
            torch.testing.assert_close(dict(model.named_parameters())[name].detach(), expected)
    # the fused AdamW kernel: the same update as the default one, to rounding
    finals = []
    for optimizer in ("adamw", "adamw_fused"):
        model = adapted_model("lora")
        on = TrainConfig(steps=3, batch_size=4, warmup_steps=1, optimizer=optimizer)
        finals.append(train(model, examples, on, seed=0, progress=False).loss_curve)
    assert finals[1] == pytest.approx(finals[0], rel=1e-5)


# --- the report ---------------------------------------------------------------------------------


def test_loss_curve_plot_draws_the_validation_loss():
    import matplotlib

    matplotlib.use("Agg")
    from lorabench.report.plots import loss_curve_figure

    def run(seed: int, val: list | None) -> dict:
        metrics = {"loss_curve": [3.0 - 0.1 * i for i in range(10)]}
        return {"metrics": metrics | ({"val_loss_curve": val} if val else {}), "seed": seed}

    report = SimpleNamespace(
        labels=["lora", "mor"],
        ok_runs={
            "lora": [run(0, [[5, 2.5], [10, 2.0]]), run(1, [[5, 2.7], [10, 2.2]])],
            "mor": [run(0, None)],
        },
    )
    ax = loss_curve_figure(report).axes[0]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(dashed) == 1  # lora's, the mean over its two seeds; mor measured none
    assert list(dashed[0].get_xdata()) == [5, 10]
    assert list(dashed[0].get_ydata()) == pytest.approx([2.6, 2.1])
    assert "validation" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora", "mor", "validation loss"]


# --- TensorBoard ---------------------------------------------------------------------------------


def test_log_tensorboard_without_tensorboard_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    import sys

    from lorabench.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    missing = tmp_path / "no-such-suite.toml"  # checked before the suite is even read
    assert main(["run", str(missing), "--log", "tensorboard", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == (
        'lorabench: error: --log tensorboard needs TensorBoard: pip install "lorabench[tensorboard]"\n'
    )


def reduced_smoke(tmp_path: Path, train_extra: str, methods: list[str]) -> Path:
    text = SMOKE.read_text().split("[[methods]]")[0]
    text = text.replace('tasks_dir = "tasks"', f'tasks_dir = "{SUITES / "tasks"}"')
    text = text.replace("max_length = 48", f"max_length = 48\n{train_extra}")
    text = text.replace("limit = 10", "limit = 2")
    text += "".join(f'\n[[methods]]\nname = "{m}"\n' for m in methods)
    path = tmp_path / "smoke-reduced.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_run_with_log_tensorboard_writes_each_run_s_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    import jsonschema
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorabench.cli import main
    from lorabench.records import SCHEMA_FILE

    suite = reduced_smoke(tmp_path, "eval_every = 3", ["lora"])
    out = tmp_path / "out"
    assert (
        main(["run", str(suite), "--out", str(out), "--log", "tensorboard", "--no-progress"]) == 0
    )
    (record_file,) = (out / "runs").glob("lora-*.json")
    record = json.loads(record_file.read_text())
    jsonschema.validate(record, json.loads(SCHEMA_FILE.read_text()))
    metrics = record["metrics"]
    assert [step for step, _ in metrics["val_loss_curve"]] == [3, 6, 8]
    assert metrics["val_examples"] == 592  # every task's validation split
    events = EventAccumulator(str(out / "tensorboard" / record["run_id"]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"train/loss", "train/lr", "train/tokens_per_s", "val/loss"}
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx(metrics["loss_curve"], rel=1e-6)
    val = events.Scalars("val/loss")
    assert [[e.step, e.value] for e in val] == [
        [step, pytest.approx(value, rel=1e-6)] for step, value in metrics["val_loss_curve"]
    ]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[:3] == pytest.approx([0.0, 1e-3, 2e-3])  # the 2 warm-up steps, then the peak
    assert all(e.value > 0 for e in events.Scalars("train/tokens_per_s"))


def train_like_the_worker(config: dict, suite_root: Path) -> list[float]:
    """The worker's load → inject → train of ``config`` (lorabench.run.worker); the losses."""
    from lorabench.models.zoo import load_pretrained
    from lorabench.run.evaluate import eval_inputs
    from lorabench.run.measure import MemoryMeter
    from lorabench.run.worker import train_run

    torch.manual_seed(config["seed"])
    model, tokenizer = load_pretrained(config["model"], config["dtype"], "cpu")
    if config["method"] == "full":
        model.requires_grad_(True)
    else:
        torch.manual_seed(config["seed"])
        inject(model, config["method"], config["method_config"], config["targets"])
    metrics = train_run(
        model, tokenizer, config, TrainConfig(**config["train"]),
        eval_inputs(config, suite_root, progress=False), meter=MemoryMeter(torch.device("cpu")),
        progress=False, tracker=None, log_dir=None,
    )  # fmt: skip
    return metrics["loss_curve"], metrics["aux_loss_curve"]


@pytest.mark.slow
def test_smoke_suite_trains_alike_with_gradient_checkpointing():
    suite = load_suite(SMOKE)
    runs = [r for r in plan(suite) if r.method != "base"]
    assert len(runs) == 7
    for run in runs:
        checked = copy.deepcopy(run.config)
        checked["train"]["gradient_checkpointing"] = True
        loss, aux = train_like_the_worker(run.config, suite.root)
        loss_c, aux_c = train_like_the_worker(checked, suite.root)
        assert loss_c == pytest.approx(loss, rel=1e-5), run.label
        assert (aux_c is None) == (aux is None), run.label
        if aux is not None:
            assert aux_c == pytest.approx(aux, rel=1e-5), run.label
