"""Suite files: validation errors before any training, planning, the budget search."""

from pathlib import Path

import pytest
import torch

from lorabench.api.registry import build_config, get_method
from lorabench.errors import ConfigError
from lorabench.models.zoo import target_shapes
from lorabench.run.suite import fit_budget, load_suite, plan

SUITES = Path(__file__).parents[1] / "suites"

MINIMAL = """
[suite]
name = "t"
model = "tiny"
{suite_extra}

[train]
steps = 4
{train_extra}

[[methods]]
name = "lora"
{method_extra}
"""


def write_suite(tmp_path, suite_extra="", train_extra="", method_extra="", text=None):
    path = tmp_path / "suite.toml"
    if not (tmp_path / "tasks").exists():  # the default tasks_dir, checked by plan()
        (tmp_path / "tasks").symlink_to(SUITES / "tasks")
    path.write_text(
        text
        or MINIMAL.format(
            suite_extra=suite_extra, train_extra=train_extra, method_extra=method_extra
        )
    )
    return path


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(suite_extra="colour = 1"),
            "unknown key 'colour' in [suite]; known keys: budget_tolerance",
        ),
        (dict(train_extra="stpes = 3"), "unknown key 'stpes' in [train]"),
        (dict(method_extra="rank = 4"), "unknown key 'rank' in [[methods]] #1"),
        (dict(train_extra="lr = 'fast'"), "[train].lr: expected a number, got 'fast'"),
        (dict(suite_extra="seeds = 3"), "[suite].seeds: expected a list of int, got 3"),
        (dict(suite_extra="seeds = []"), "[suite].seeds is empty"),
        (
            dict(method_extra="config = { r = 'x' }"),
            "[[methods]] #1: lora.r: expected an integer, got 'x'",
        ),
        (
            dict(method_extra="config = { colour = 1 }"),
            "method 'lora' has no config field 'colour'",
        ),
        (dict(suite_extra="device = 'tpu'"), "[suite].device: expected cpu or cuda, got 'tpu'"),
        (
            dict(train_extra="schedule = 'exp'"),
            "train.schedule: expected cosine, linear or constant",
        ),
        (
            dict(method_extra="inject_fault = 'boom'"),
            "inject_fault: expected one of ['raise', 'oom', 'nan', 'crash']",
        ),
    ],
)
def test_bad_suites_get_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(tmp_path, **kwargs))
    text = str(err.value)
    assert message in text and "\n" not in text
    assert text.startswith(str(tmp_path / "suite.toml"))


def test_missing_required_fields_and_unknown_method(tmp_path):
    with pytest.raises(ConfigError, match=r"\[suite\] is missing the required key 'model'"):
        load_suite(write_suite(tmp_path, text='[suite]\nname = "x"\n[[methods]]\nname = "lora"\n'))
    with pytest.raises(ConfigError, match="missing required table"):
        load_suite(write_suite(tmp_path, text='[[methods]]\nname = "lora"\n'))
    with pytest.raises(ConfigError, match="no \\[\\[methods\\]\\] entries"):
        load_suite(write_suite(tmp_path, text='[suite]\nname = "x"\nmodel = "tiny"\n'))
    with pytest.raises(ConfigError, match="is missing the required key 'name'"):
        load_suite(
            write_suite(
                tmp_path, text='[suite]\nname = "x"\nmodel = "tiny"\n[[methods]]\nlabel = "a"\n'
            )
        )
    text = '[suite]\nname = "x"\nmodel = "tiny"\n[[methods]]\nname = "lorra"\n'
    with pytest.raises(
        ConfigError,
        match="unknown method 'lorra'; known: base, full, ia3, loha, lokr, lora, melora",
    ):
        load_suite(write_suite(tmp_path, text=text))
    with pytest.raises(ConfigError, match="cannot read suite file"):
        load_suite(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_suite(write_suite(tmp_path, text="[suite\n"))


def test_duplicate_labels_are_refused(tmp_path):
    text = '[suite]\nname = "x"\nmodel = "tiny"\n[[methods]]\nname = "lora"\n[[methods]]\nname = "lora"\n'
    with pytest.raises(ConfigError, match=r"duplicate method label\(s\) \['lora'\]"):
        load_suite(write_suite(tmp_path, text=text))


def test_plan_time_checks_need_no_training(tmp_path):
    suite = load_suite(
        write_suite(tmp_path, method_extra="config = { }", suite_extra="targets = 'q_projx'")
    )
    with pytest.raises(ConfigError, match="target 'q_projx' matched no module"):
        plan(suite)
    text = '[suite]\nname = "x"\nmodel = "tiny"\n[[methods]]\nname = "melora"\nconfig = { n = 3 }\n'
    with pytest.raises(ConfigError, match="melora.n=3 must divide both d_in=128"):
        plan(load_suite(write_suite(tmp_path, text=text)))


def test_budget_unreachable_is_an_error(tmp_path):
    suite = load_suite(write_suite(tmp_path, suite_extra="param_budget = 100"))
    with pytest.raises(
        ConfigError,
        match=r"method 'lora' cannot reach param_budget=100 within 25%: nearest is r=1 with 9,728 parameters",
    ):
        plan(suite)


def test_budget_search_picks_the_nearest_knob():
    shapes = target_shapes("tiny", "gate_proj,up_proj,down_proj")
    assert sorted(shapes) == sorted([(128, 384), (128, 384), (384, 128)] * 4)
    expect = {"lora": 16, "mora": 16, "mor": 8, "moe-lora": 2}
    for method, value in expect.items():
        cfg, count = fit_budget(method, build_config(method), shapes, 98304, 0.25)
        assert cfg.r == value, method
        below = fit_budget(method, build_config(method, {"r": 1}), shapes, count, 0.0)[0]
        assert below.r == value
    cfg, count = fit_budget("lora", build_config("lora"), shapes, 98304, 0.25)
    assert count == 98304


def test_plan_expands_methods_and_seeds_with_stable_ids():
    suite = load_suite(SUITES / "tiny.toml")
    runs = plan(suite)
    labels = [r.label for r in runs]
    assert labels.count("base") == 1  # base does not depend on the seed
    # every trained method: 3 lrs x 3 seeds planned (the protocol runs 3 + 2 of them)
    assert labels.count("mor") == labels.count("dora") == 9 and len(runs) == 1 + 8 * 9
    again = plan(load_suite(SUITES / "tiny.toml"))
    assert [r.run_id for r in runs] == [r.run_id for r in again]
    mor = next(r for r in runs if r.label == "mor")
    assert mor.config["budget"] == {
        "target": 98304,
        "reached": mor.config["budget"]["reached"],
        "knob": "r",
        "value": 8,
    }
    assert mor.config["method_config"]["r"] == 8 and mor.run_id.startswith("mor-lr0.001-seed0-")
    lrs = {lb: sorted({r.config["train"]["lr"] for r in runs if r.label == lb}) for lb in labels}
    assert lrs["full"] == [1e-4, 3e-4, 1e-3]  # full fine-tuning: its own, smaller grid
    assert all(len(v) >= 3 for lb, v in lrs.items() if lb != "base")
    assert lrs["mor"] == [1e-3, 3e-3, 1e-2] and mor.config["train_sweep"] == {
        "fields": ["lr"],
        "seed": 0,
    }
    device = "cuda" if torch.cuda.is_available() else "cpu"  # no CUDA: cuda is refused
    subset = plan(suite, methods=["lora"], seeds=[5], device=device)
    assert [(r.label, r.seed, r.config["device"]) for r in subset] == [("lora", 5, device)] * 3
    assert {r.config["train_sweep"]["seed"] for r in subset} == {5}
    assert {r.label for r in plan(suite, methods=["dora"])} == {"dora"}
    with pytest.raises(ConfigError, match="--methods: 'vera' is not in suite tiny"):
        plan(suite, methods=["vera"])


NEEDS_TASK_SOURCE = [  # planning fetches and converts the built-in task source `commonsense`
    pytest.param(name, marks=[pytest.mark.network, pytest.mark.slow])
    for name in ("commonsense", "commonsense-smollm2")
]


@pytest.mark.parametrize(
    "name",
    [
        "smoke",
        "tiny",
        "mor-paper",
        "mor-ablation-tiny",
        "mor-ablation",
        "smollm2",
        *NEEDS_TASK_SOURCE,
    ],
)
def test_shipped_suites_parse_and_plan(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path))  # never the user's cache
    suite = load_suite(SUITES / f"{name}.toml")
    no_cuda = suite.settings.device == "cuda" and not torch.cuda.is_available()
    runs = plan(suite, device="cpu" if no_cuda else None)  # without CUDA, cuda is refused
    assert runs and all(r.config["suite"] == name for r in runs)
    if name == "mor-paper":
        counts = {r.label: r.config["method_config"] for r in runs}
        assert counts["mor"] == {**counts["mor"], "r": 8, "num_experts": 8}
        assert suite.settings.tasks_dir is None and suite.settings.device == "cuda"


SWEEP = """
[suite]
name = "sweep"
model = "tiny"
targets = "gate_proj,up_proj,down_proj"
seeds = [0, 1]

[[methods]]
name = "mor"
{extra}
"""


def sweep_suite(tmp_path, extra):
    return load_suite(write_suite(tmp_path, text=SWEEP.format(extra=extra)))


def test_a_list_value_sweeps_a_field_and_lists_combine_as_a_product(tmp_path):
    suite = sweep_suite(
        tmp_path, 'config = { num_experts = [2, 4, 8], router = ["softmax", "mean"] }'
    )
    labels = [m.label for m in suite.methods]
    assert labels == [
        f"mor[num_experts={n}][router={r}]" for n in (2, 4, 8) for r in ("softmax", "mean")
    ]
    runs = plan(suite)
    assert len(runs) == 6 * 2  # every point, every seed
    point = next(r for r in runs if r.label == "mor[num_experts=4][router=mean]")
    assert point.config["method_config"]["num_experts"] == 4
    assert point.config["method_config"]["router"] == "mean"
    assert point.config["sweep"] == {"group": "mor", "values": {"num_experts": 4, "router": "mean"}}
    assert len({r.run_id for r in runs}) == 12


def test_zip_sweeps_pair_values(tmp_path):
    suite = sweep_suite(tmp_path, 'sweep = "zip"\nconfig = { r = [4, 8], num_experts = [8, 4] }')
    assert [m.label for m in suite.methods] == [
        "mor[r=4][num_experts=8]",
        "mor[r=8][num_experts=4]",
    ]


@pytest.mark.parametrize(
    "extra,message",
    [
        ("config = { num_experts = [] }", "config.num_experts: a sweep needs at least one value"),
        ("config = { nexperts = [2, 4] }", "method 'mor' has no config field 'nexperts'"),
        (
            "config = { num_experts = [2, 'four'] }",
            "mor.num_experts: expected an integer, got 'four'",
        ),
        (
            "config = { num_experts = [2, 0] }",
            "mor.num_experts: expected a positive integer, got 0",
        ),
        ('sweep = "grid"\nconfig = { r = [2] }', "sweep: expected 'product' or 'zip', got 'grid'"),
        ('sweep = "zip"\nconfig = { r = [2, 4], num_experts = [8] }', "needs lists of one length"),
    ],
)
def test_bad_sweeps_are_one_line_errors_before_any_run(tmp_path, extra, message):
    with pytest.raises(ConfigError) as err:
        sweep_suite(tmp_path, extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ablation_suite_parameter_growth_follows_the_closed_forms():
    """MoR grows by r + d_out + d_in per expert and layer; MoE-LoRA by r_e (d_in + d_out) + d_in."""
    runs = plan(load_suite(SUITES / "mor-ablation-tiny.toml"), seeds=[0])
    assert len(runs) == 18
    shapes = target_shapes("tiny", "gate_proj,up_proj,down_proj")
    for run in runs:
        n = run.config["method_config"]["num_experts"]
        r = run.config["method_config"]["r"]
        if run.method == "mor" and run.config["method_config"]["router"] == "softmax":
            expected = sum(r * (i + o) + n * (r + o) + n * i for i, o in shapes)
        elif run.method == "moe-lora":
            expected = sum(n * r * (i + o) + n * i for i, o in shapes)
        else:
            continue
        spec = get_method(run.method)
        cfg = build_config(run.method, run.config["method_config"])
        assert sum(spec.param_count(cfg, i, o) for i, o in shapes) == expected, run.label


# ---- training grids (a [train] list: selected on validation) ------------------------------

GRID = """
[suite]
name = "g"
model = "tiny"
tasks_dir = "{tasks}"
targets = "gate_proj,up_proj,down_proj"
seeds = [0, 1]

[train]
steps = 4
{train}

[[methods]]
name = "base"

[[methods]]
name = "lora"
{lora}

[[methods]]
name = "mor"
"""


def grid_suite(tmp_path, train="", lora="", tasks=None):
    text = GRID.format(train=train, lora=lora, tasks=tasks or SUITES / "tasks")
    return load_suite(write_suite(tmp_path, text=text))


def test_train_lists_are_grids_globally_and_per_method(tmp_path):
    suite = grid_suite(
        tmp_path,
        train="lr = [1e-3, 3e-3]\nwarmup_steps = [2, 4]",
        lora="train = { lr = [5e-4], warmup_steps = 3 }",
    )
    runs = plan(suite)
    points = {
        lb: sorted({(r.config["train"]["lr"], r.config["train"]["warmup_steps"]) for r in runs
                    if r.label == lb})
        for lb in ("base", "lora", "mor")
    }  # fmt: skip
    assert points["base"] == [(1e-3, 10)]  # base trains nothing: no grid, one run, defaults
    assert points["lora"] == [(5e-4, 3)]  # the method's own settings replace the suite's
    assert points["mor"] == [(1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)]  # product
    mor = [r for r in runs if r.label == "mor"]
    assert len(mor) == 4 * 2 and mor[0].config["train_sweep"] == {
        "fields": ["lr", "warmup_steps"],
        "seed": 0,
    }
    assert mor[0].run_id.startswith("mor-lr0.001-warmup_steps2-seed0-")
    lora = next(r for r in runs if r.label == "lora")
    assert lora.config["train_sweep"] == {"fields": ["lr"], "seed": 0}


def test_runs_outside_a_grid_keep_their_config_hash(tmp_path):
    """No train list, no train_sweep key: the configs (and hashes) runs always had."""
    runs = plan(load_suite(SUITES / "mor-ablation-tiny.toml"))
    committed = {p.stem for p in (SUITES.parent / "reports" / "mor-ablation-tiny").glob("runs/*")}
    assert {r.run_id for r in runs} == committed
    plain = plan(grid_suite(tmp_path, train="lr = 3e-3"))
    gridded = plan(grid_suite(tmp_path, train="lr = [3e-3]"))  # a one-point grid is a grid
    assert all("train_sweep" not in r.config for r in plain)
    assert {r.config["train"]["lr"] for r in gridded if r.label == "mor"} == {3e-3}
    assert all("train_sweep" in r.config for r in gridded if r.label != "base")


@pytest.mark.parametrize(
    "train,message",
    [
        ("schedule = ['cosine', 'linear']", "[train].schedule: a list (a grid to select on "
         "validation) is allowed for numeric fields only"),
        ("lr = []", "[train].lr: a grid needs at least one value"),
        ("lr = [1e-3, 1e-3]", "[train].lr: the grid repeats a value"),
        ("lr = [1e-3, -1.0]", "train.lr: expected a positive number, got -1.0"),
        ("lr = [1e-3, 'x']", "[train].lr: expected a number, got 'x'"),
    ],
)  # fmt: skip
def test_bad_grids_are_one_line_errors(tmp_path, train, message):
    with pytest.raises(ConfigError) as info:
        plan(grid_suite(tmp_path, train=train))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_grid_needs_validation_splits(tmp_path):
    from lorabench.tasks.synthetic import write_tasks

    tasks = tmp_path / "tasks"
    write_tasks(tasks, sizes={f: (40, 8, 10) for f in ("kv_memory", "list_ops", "arithmetic",
                                                       "word_swap", "sentiment")})  # fmt: skip
    (tasks / "lb_sentiment" / "validation.jsonl").unlink()
    with pytest.raises(ConfigError, match="has no validation.jsonl"):
        plan(grid_suite(tmp_path, train="lr = [1e-3, 3e-3]", tasks=tasks))
    assert plan(grid_suite(tmp_path, train="lr = 1e-3", tasks=tasks))  # no grid: no need


def test_eval_primary_reaches_the_run_config_only_when_set(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = plan(load_suite(write_suite(tmp_path / "a")), methods=["lora"])
    assert "primary" not in plain[0].config["eval"]  # unset: the configs (hashes) of before
    extra = '[eval]\nprimary = { lb_sentiment = "acc" }\n'
    text = MINIMAL.format(suite_extra="", train_extra="", method_extra="") + extra
    named = plan(load_suite(write_suite(tmp_path / "b", text=text)), methods=["lora"])
    assert named[0].config["eval"]["primary"] == {"lb_sentiment": "acc"}
    assert named[0].run_id != plain[0].run_id


@pytest.mark.parametrize(
    "primary,message",
    [
        ('{ lb_nope = "acc" }', "[eval].primary names task(s) lb_nope that the suite does not "
         "evaluate; its tasks: lb_arithmetic, lb_kv_memory"),
        ('{ lb_sentiment = "acc,none" }', "eval.primary: expected a table {task = metric name} "
         "such as {arc_easy = \"acc_norm\"} (a name without lm-eval's ',filter' suffix), got "
         "{'lb_sentiment': 'acc,none'}"),
        ('{ lb_sentiment = 3 }', "eval.primary: expected a table {task = metric name}"),
        ('"acc"', "[eval].primary: expected dict | None, got 'acc'"),
    ],
)  # fmt: skip
def test_bad_eval_primary_is_a_one_line_error_at_plan_time(tmp_path, primary, message):
    text = MINIMAL.format(suite_extra="", train_extra="", method_extra="")
    path = write_suite(tmp_path, text=text + f"[eval]\nprimary = {primary}\n")
    with pytest.raises(ConfigError) as info:
        plan(load_suite(path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))
