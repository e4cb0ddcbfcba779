"""Learning-rate selection on validation data: the rule, and the two-stage protocol.

The protocol tests replace the worker with a stub that writes records at once (no model,
no training), so they run in well under a second and exercise the real planning,
resumption and selection code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorabench import selection
from lorabench.records import config_hash, new_record, read_record, write_json_atomic
from lorabench.run import launch_local
from lorabench.run.launch import LocalLauncher
from lorabench.run.protocol import run_protocol, split_stages
from lorabench.run.suite import load_suite, plan

TASKS = Path(__file__).resolve().parents[1] / "suites" / "tasks"


def grid_record(label, lr, seed=0, val=None, test=None, status="ok", select_seed=0, **extra):
    metrics = {}
    if status == "ok":
        metrics = {
            "accuracy": test,
            "eval": {"per_task": {"t": test}, "macro_avg": test, "metric": {}, "per_example": {}},
        }
        if val is not None:
            metrics["validation"] = {"per_task": {"t": val}, "macro_avg": val, "metric": {}}
    return {
        "run_id": f"{label}-lr{lr}-seed{seed}",
        "label": label,
        "seed": seed,
        "status": status,
        "config": {
            "label": label,
            "seed": seed,
            "train": {"lr": lr, "steps": 10, **extra},
            "train_sweep": {"fields": ["lr", *extra], "seed": select_seed},
        },
        "metrics": metrics,
    }


def test_the_highest_validation_score_wins():
    records = [
        grid_record("lora", 1e-3, val=0.40, test=0.50),
        grid_record("lora", 3e-3, val=0.55, test=0.41),
        grid_record("lora", 1e-2, val=0.50, test=0.60),
        grid_record("mor", 1e-3, val=0.30, test=0.30),
        grid_record("mor", 3e-3, status="nan"),  # failed points cannot be chosen
        grid_record("mor", 1e-2, val=0.20, test=0.20),
    ]
    choices = selection.select(records)
    assert choices["lora"].point == {"lr": 3e-3} and choices["lora"].score == 0.55
    assert choices["mor"].point == {"lr": 1e-3}
    assert [c.status for c in choices["mor"].candidates] == ["ok", "nan", "ok"]  # lr order
    assert choices["lora"].seed == 0 and choices["lora"].fields == ("lr",)


def test_ties_go_to_the_smaller_lr_whatever_the_order():
    records = [
        grid_record("lora", 1e-2, val=0.5, test=0.9),
        grid_record("lora", 1e-3, val=0.5, test=0.1),
        grid_record("lora", 3e-3, val=0.5, test=0.5),
    ]
    for order in (records, records[::-1], records[1:] + records[:1]):
        assert selection.select(order)["lora"].point == {"lr": 1e-3}
    # two fields: lr decides the tie first, then the other field by name
    two = [
        grid_record("x", 3e-3, val=0.5, test=0, warmup_steps=5),
        grid_record("x", 1e-3, val=0.5, test=0, warmup_steps=20),
        grid_record("x", 1e-3, val=0.5, test=0, warmup_steps=10),
    ]
    assert selection.select(two)["x"].point == {"lr": 1e-3, "warmup_steps": 10}
    assert selection.point_text({"warmup_steps": 10, "lr": 1e-3}) == "lr=0.001, warmup_steps=10"


def test_test_scores_never_influence_the_choice():
    """Test scores that would pick another lr (and any rewriting of them) change nothing."""
    honest = [
        grid_record("lora", 1e-3, val=0.60, test=0.40),
        grid_record("lora", 3e-3, val=0.58, test=0.70),  # test would pick 3e-3
        grid_record("lora", 1e-2, val=0.30, test=0.90),  # ... or 1e-2
    ]
    choice = selection.select(honest)["lora"]
    assert choice.point == {"lr": 1e-3}
    for rewrite in ([0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.2, 0.95, 0.99]):
        tampered = json.loads(json.dumps(honest))
        for record, test in zip(tampered, rewrite, strict=True):
            record["metrics"]["accuracy"] = test
            record["metrics"]["eval"] = {"per_task": {"t": test}, "macro_avg": test}
        assert selection.select(tampered)["lora"] == choice


def test_a_choice_at_an_end_of_its_grid_is_flagged():
    def choice(vals, lrs=(1e-3, 3e-3, 1e-2)):
        records = [grid_record("m", lr, val=v, test=0.5) for lr, v in zip(lrs, vals, strict=True)]
        return selection.select(records)["m"]

    assert selection.edges(choice([0.5, 0.4, 0.3])) == {"lr": "lowest"}
    assert selection.edges(choice([0.3, 0.4, 0.5])) == {"lr": "highest"}
    assert selection.edges(choice([0.3, 0.5, 0.4])) == {}  # bracketed: an interior optimum
    assert selection.edges(choice([0.3, 0.5], lrs=(1e-3, 1e-2))) == {}  # 2 values: no interior


def test_only_the_selection_seed_counts_and_scoreless_methods_have_no_point():
    records = [
        grid_record("lora", 1e-3, seed=0, val=0.2, test=0.2),
        grid_record("lora", 3e-3, seed=0, val=0.3, test=0.3),
        grid_record("lora", 1e-3, seed=1, val=0.9, test=0.9),  # seed 1 never chooses
        grid_record("dora", 1e-3, status="failed"),
        grid_record("dora", 3e-3, val=None, test=0.5),  # no validation split scored
    ]
    choices = selection.select(records)
    assert choices["lora"].point == {"lr": 3e-3}
    assert choices["dora"].point is None and choices["dora"].score is None
    assert selection.is_selected(records[1], choices) and not selection.is_selected(
        records[2], choices
    )
    assert selection.is_selected(records[3], choices)  # no choice: the report keeps it
    assert not selection.is_selected(records[3], choices, undecided=False)  # protocol: not
    plain = {"label": "base", "seed": 0, "config": {"label": "base", "train": {"lr": 1}}}
    assert selection.is_selected(plain, choices) and selection.point_of(plain) == {}


# ---- the protocol, with a stub worker ----------------------------------------------------

GRID_SUITE = """
[suite]
name = "grid"
model = "tiny"
tasks_dir = "{tasks}"
targets = "gate_proj,up_proj,down_proj"
seeds = [0, 1, 2]

[train]
steps = 4
lr = [1e-3, 3e-3, 1e-2]

[[methods]]
name = "base"

[[methods]]
name = "full"
train = {{ lr = [1e-4, 3e-4] }}

[[methods]]
name = "lora"

[[methods]]
name = "lora"
label = "lora-fixed"
train = {{ lr = 2e-3 }}
"""

# validation prefers 3e-3 (lora) and 1e-4 (full); test would prefer the largest lr
VALIDATION = {1e-4: 0.50, 3e-4: 0.40, 1e-3: 0.30, 3e-3: 0.60, 1e-2: 0.45, 2e-3: 0.5}
TEST = {1e-4: 0.10, 3e-4: 0.20, 1e-3: 0.30, 3e-3: 0.40, 1e-2: 0.90, 2e-3: 0.5}


@pytest.fixture
def stub_worker(monkeypatch):
    """Replace the worker process: each run writes an ok record with fixed scores per lr."""
    spawned = []

    def spawn(run, suite, out_dir, command, progress, log_samples=False, tracker=None):
        spawned.append(run.run_id)
        lr = run.config["train"]["lr"]
        record = new_record(run.run_id, run.config, command)
        record["status"] = "ok"
        record["metrics"] = {
            "accuracy": TEST[lr],
            "validation": {"per_task": {}, "macro_avg": VALIDATION[lr], "metric": {}},
        }
        write_json_atomic(launch_local.record_path(out_dir, run), record)
        return record

    monkeypatch.setattr(launch_local, "spawn", spawn)
    monkeypatch.setattr(launch_local, "_prepare_base_model", lambda runs: None)
    return spawned


def test_two_stages_select_on_validation_and_resume(tmp_path, stub_worker):
    path = tmp_path / "grid.toml"
    path.write_text(GRID_SUITE.format(tasks=TASKS))
    suite = load_suite(path)
    runs = plan(suite)
    first, later = split_stages(runs)
    # stage 1: every point on seed 0, and every run outside a grid (all seeds)
    assert sorted((r.label, r.config["train"]["lr"]) for r in first if r.seed == 0) == sorted(
        [("base", 1e-3), ("full", 1e-4), ("full", 3e-4), ("lora", 1e-3), ("lora", 3e-3),
         ("lora", 1e-2), ("lora-fixed", 2e-3)]
    )  # fmt: skip
    assert {r.label for r in first if r.seed != 0} == {"lora-fixed"}
    assert all(r.config["train_sweep"] == {"fields": ["lr"], "seed": 0} for r in later)
    assert "train_sweep" not in next(r for r in runs if r.label == "lora-fixed").config

    out = tmp_path / "out"
    outcome = run_protocol(LocalLauncher(), suite, runs, out, progress=False)
    assert {k: c.point for k, c in outcome.choices.items()} == {
        "full": {"lr": 1e-4},
        "lora": {"lr": 3e-3},
    }
    by_id = {r.run_id: r for r in runs}
    second = [by_id[i] for i in stub_worker[len(first) :]]
    # stage 2: seeds 1 and 2 at the chosen lr only; the chosen seed-0 run is not retrained
    assert sorted((r.label, r.seed, r.config["train"]["lr"]) for r in second) == [
        ("full", 1, 1e-4), ("full", 2, 1e-4), ("lora", 1, 3e-3), ("lora", 2, 3e-3),
    ]  # fmt: skip
    assert len(stub_worker) == len(set(stub_worker)) == len(first) + 4
    assert len(outcome.not_run) == 2 * 2 + 2 * 1  # unchosen points x other seeds

    # resume: nothing runs again; a lost stage-2 record is the only run redone
    stub_worker.clear()
    again = run_protocol(LocalLauncher(), suite, runs, out, progress=False)
    assert stub_worker == [] and {k: c.point for k, c in again.choices.items()} == {
        k: c.point for k, c in outcome.choices.items()
    }
    lost = next(r for r in second if r.label == "lora" and r.seed == 2)
    launch_local.record_path(out, lost).unlink()
    run_protocol(LocalLauncher(), suite, runs, out, progress=False)
    assert stub_worker == [lost.run_id]
    record = read_record(launch_local.record_path(out, lost))
    assert record["config_hash"] == config_hash(lost.config)


def test_a_method_whose_points_all_fail_gets_no_stage_two(tmp_path, stub_worker, monkeypatch):
    path = tmp_path / "grid.toml"
    path.write_text(GRID_SUITE.format(tasks=TASKS))
    suite = load_suite(path)
    runs = plan(suite, methods=["full"])
    real_spawn = launch_local.spawn

    def failing(run, suite, out_dir, command, progress, log_samples=False, tracker=None):
        record = real_spawn(run, suite, out_dir, command, progress, log_samples=log_samples)
        record.update(status="nan", error="loss is nan at step 2", metrics={})
        write_json_atomic(launch_local.record_path(out_dir, run), record)
        return record

    monkeypatch.setattr(launch_local, "spawn", failing)
    outcome = run_protocol(LocalLauncher(), suite, runs, tmp_path / "out", progress=False)
    assert outcome.choices["full"].point is None
    assert len(outcome.executed) == 2 and len(outcome.not_run) == 4
