"""Reports: report.md / results.csv / plots from synthetic records, and the committed reports.

The statistics themselves are tested in test_stats.py. No test here treats (seed, example)
pairs as independent: every Δ is checked against ``seed_delta`` over per-seed scores.
"""

import json
import math
from pathlib import Path

import pytest

from lorabench.errors import ConfigError
from lorabench.report.claims import claims_section
from lorabench.report.data import ReportData, load_records
from lorabench.report.document import write_report
from lorabench.report.stats import seed_delta

# ---- synthetic records --------------------------------------------------------------------

TASKS = ("t_a", "t_b")


def ones(n: int, total: int = 10) -> list[int]:
    return [1] * n + [0] * (total - n)


METHOD_CONFIGS = {  # full configs, as real records carry them (claims match on fields)
    "base": {},
    "lora": {"r": 4, "use_dora": False, "use_rslora": False},
    "mor": {"r": 4, "num_experts": 8, "router": "softmax"},
}


def record(label, seed, correct=None, status="ok", error=None, **extra) -> dict:
    """A result record like lorabench.records writes; ``correct`` gives per-task per-example 0/1."""
    metrics: dict = {"wall_time_s": 1.5}
    if status == "ok":
        per_task = {task: sum(v) / len(v) for task, v in correct.items()}
        metrics |= {
            "trainable_params": extra.get("params", 0),
            "base_params": 1000,
            "trainable_percent": 100 * extra.get("params", 0) / 1000,
            "memory": {"kind": "cpu_rss", "peak_rss_mb": extra["rss"], "baseline_rss_mb": 300.0},
            "memory_note": "CPU: peak RSS of the run's process",
            "latency_ms": {"base": 10.0, **extra.get("latency", {})},
            "heldout_ppl_before": 4.0,
            "heldout_ppl_after": extra.get("ppl", 4.0),
            "accuracy": sum(per_task.values()) / len(per_task),
            "eval": {
                "per_task": per_task,
                "macro_avg": sum(per_task.values()) / len(per_task),
                "metric": {task: "acc,none" for task in correct},
                "per_example": correct,
            },
            "budget": extra.get("budget"),
        }
        if "tokens_per_s" in extra:
            metrics |= {
                "train_tokens_per_s": extra["tokens_per_s"],
                "loss_curve": [3.0 - 0.1 * i + 0.01 * seed for i in range(20)],
                "final_loss": 1.1,
                "adapter_bytes": 4096,
            }
        if "routing" in extra:
            metrics["routing"] = extra["routing"]
    method = extra.get("method", label)
    return {
        "schema": 1,
        "run_id": f"{label}-seed{seed}-abcdef12",
        "suite": "synthetic",
        "label": label,
        "method": method,
        "seed": seed,
        "config": {  # every RunConfig field, so that the record is valid (load_record)
            "suite": "synthetic",
            "label": label,
            "method": method,
            "seed": seed,
            "tasks_dir": "tasks",
            "train_data": "tasks",
            "budget": extra.get("budget"),
            "device": "cpu",
            "dtype": "float32",
            "chat_template": False,
            "inject_fault": None,
            "model": "tiny",
            "tasks": "all",
            "targets": ["up_proj"],
            "train": {"steps": 20, "batch_size": 4, "lr": 0.002, "schedule": "cosine"},
            "eval": {"batch_size": 8, "latency_batch_size": 2, "latency_seq_len": 16},
            "method_config": METHOD_CONFIGS.get(method, {"r": 4}),
        },
        "config_hash": "abcdef12",
        "status": status,
        "error": error,
        "env": {
            "python": "3.11.7",
            "platform": "Linux",
            "device": "cpu",
            "device_name": "x86_64",
            "cpu_count": 2,
            "torch_threads": 2,
            "versions": {"torch": "2.13.0", "lorabench": "0.1.0"},
        },
        "metrics": metrics,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "command": "lorabench run suites/synthetic.toml --out results/synthetic",
    }


ROUTING = {
    "num_experts": 4,
    "layers": {
        f"layers.{i}.mlp.up_proj": {
            "t_a": {"load": [0.7, 0.1, 0.1, 0.1], "entropy": 0.5 * math.log(4)},
            "t_b": {"load": [0.1, 0.1, 0.1, 0.7], "entropy": 0.25 * math.log(4)},
        }
        for i in range(2)
    },
}


def synthetic_records() -> list[dict]:
    lora = {"params": 100, "tokens_per_s": 1000.0, "latency": {"unmerged": 15.0, "merged": 11.0}}
    mor = {"params": 96, "tokens_per_s": 800.0, "latency": {"unmerged": 20.0}, "routing": ROUTING}
    mora = {"params": 98, "tokens_per_s": 1200.0, "latency": {"unmerged": 18.0, "merged": 10.5}}
    budget = {"target": 100, "reached": 96, "knob": "r", "value": 2}
    return [
        record("base", 0, {"t_a": ones(0), "t_b": ones(0)}, rss=400.0),
        record("lora", 0, {"t_a": ones(5), "t_b": ones(5)}, rss=500.0, **lora),
        record("lora", 1, {"t_a": ones(6), "t_b": ones(4)}, rss=500.0, **lora),
        record("mor", 0, {"t_a": ones(10), "t_b": ones(9)}, rss=450.0, budget=budget, **mor),
        record("mor", 1, {"t_a": ones(10), "t_b": ones(10)}, rss=450.0, budget=budget, **mor),
        record("mora", 0, {"t_a": ones(5), "t_b": ones(6)}, rss=520.0, ppl=3.5, **mora),
        record("mora", 1, status="failed", error="RuntimeError: boom\nTraceback (most recent)"),
        record("moe-lora", 0, status="oom", error="MemoryError: out of memory"),
        record("melora", 0, status="nan", error="loss became NaN at step 3"),
    ]


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "records" / "runs"
    runs.mkdir(parents=True)
    for rec in synthetic_records():
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec, indent=2))
    (runs / "broken.json").write_text("{not json")
    return tmp_path / "records"


def per_seed_scores(labels: tuple[str, ...]) -> list[dict]:
    """``{seed: {task: per-example 0/1}}`` of each label's ok synthetic records."""
    runs = [r for r in synthetic_records() if r["status"] == "ok"]
    return [
        {r["seed"]: r["metrics"]["eval"]["per_example"] for r in runs if r["label"] == label}
        for label in labels
    ]


def summary_table(text: str) -> dict[str, dict[str, str]]:
    """The summary table as {method label: {column header: cell}} (columns by name)."""
    section = text.split("## Summary")[1].split("\n## ")[0]
    body = section[section.index("\n|") + 1 :]
    lines = body[: body.find("\n\n") if "\n\n" in body else len(body)].splitlines()
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(headers, cells, strict=True))
    return table


def row(text: str, label: str) -> list[str]:
    """The cells of the first table row that starts with ``label``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_tables(results_dir, tmp_path):
    paths = write_report(results_dir, tmp_path / "out")
    names = {p.name for p in paths}
    plots = {
        "accuracy_vs_params.png",
        "accuracy_vs_memory.png",
        "per_task_accuracy.png",
        "loss_curves.png",
        "routing_heatmap.png",
    }
    assert names == {"report.md", "results.csv"} | plots
    for name in plots:
        assert (tmp_path / "out" / name).stat().st_size > 1000
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.startswith("# lorabench report: suite synthetic")
    assert "lorabench run suites/synthetic.toml --out results/synthetic" in text
    # summary: order base, full?, then alphabetical; values, bold best, n/a where absent
    table = summary_table(text)
    assert list(table) == ["base", "lora", "melora", "moe-lora", "mor", "mora"]

    def cell(label: str, header_start: str) -> str:
        """The summary cell of ``label`` in the column whose header starts so."""
        if header_start in table[label]:
            return table[label][header_start]
        (header,) = [h for h in table[label] if h.startswith(header_start)]
        return table[label][header]

    assert [cell("mor", h) for h in ("runs ok", "trainable params", "% of base")] == [
        "2/2", "96", "9.600",
    ]  # fmt: skip
    assert cell("mor", "peak") == "450.0"  # lowest memory, but no spread recorded: not bolded
    assert cell("mora", "train tokens/s") == "1,200" and cell("lora", "train tokens/s") == "1,000"
    assert [cell("lora", "latency unmerged"), cell("lora", "latency merged")] == ["1.50", "1.10"]
    assert [cell("mor", "latency unmerged"), cell("mor", "latency merged")] == ["2.00", "n/a"]
    assert cell("mora", "latency merged") == "1.05"
    assert (
        cell("mor", "accuracy") == "**97.50 ± 3.54**" and cell("lora", "accuracy") == "50.00 ± 0.00"
    )
    assert cell("mora", "accuracy") == "55.00 ± n/a"  # single seed
    assert [cell("base", h) for h in ("train tokens/s", "latency unmerged", "latency merged")] == [
        "n/a", "n/a", "n/a",
    ]  # fmt: skip
    # Δ against lora: seed s of mor vs seed s of lora, combined over the 2 seeds
    expected = seed_delta(*per_seed_scores(("lora", "mor")))
    assert expected.per_seed == pytest.approx((0.45, 0.50))
    assert [cell("mor", h) for h in ("Δ vs lora", "95% CI", "p", "per-seed Δ")] == [
        f"{100 * expected.estimate:+.2f}",
        f"[{100 * expected.low:+.2f}, {100 * expected.high:+.2f}]",
        f"{expected.p_value:.3f}",
        "+45.0, +50.0 (sd 3.5)",
    ]
    assert [cell("lora", h) for h in ("Δ vs lora", "95% CI", "p", "per-seed Δ")] == [
        "baseline", "", "", "",
    ]  # fmt: skip
    # base: its one run paired with each lora seed (0 correct against 10/20 and 10/20)
    assert cell("base", "Δ vs lora") == "-50.00*"
    assert (
        cell("base", "per-seed Δ") == "-50.0, -50.0 (sd 0.0; base: one run, paired with each seed)"
    )
    assert "base: one deterministic run" in text
    assert cell("melora", "runs ok") == "0/1" and cell("melora", "accuracy") == "n/a ± n/a"
    # per-task table, router diagnostics, setup
    per_task = text.split("## Per-task accuracy")[1]
    assert row(per_task, "mor")[1:] == ["**100.0**", "**95.0**"]
    routing = text.split("## Router diagnostics")[1]
    assert row(routing, "layers.0.mlp.up_proj")[1:] == ["0.500", "0.250", "0.375"]
    assert row(routing, "t_a")[1:] == ["70.0", "10.0", "10.0", "10.0"]
    assert "![routing heat map](routing_heatmap.png)" in text
    assert row(text.split("## Setup")[1], "mor")[3:5] == ["r=2", "96 / 100"]
    # failures, with the first line of each error
    failures = text.split("## Failed, OOM and NaN runs")[1].split("##")[0]
    assert row(failures, "mora")[1:] == ["1", "failed", "RuntimeError: boom"]
    assert row(failures, "moe-lora")[2:] == ["oom", "MemoryError: out of memory"]
    assert row(failures, "melora")[2:] == ["nan", "loss became NaN at step 3"]
    assert "Unreadable record files (skipped): broken.json." in failures
    # claims: computed verdicts, the caveat
    claims = text.split("## Against the papers' claims")[1]
    assert row(claims, "MoR beats LoRA by ≈7.4 points")[-1] == "agrees"
    assert "not testable (no task lb_kv_memory)" in claims
    assert "not testable (no ok run of melora)" in claims  # melora: its only run is NaN
    assert "not testable (no ok run of moe-lora)" in claims  # its only run ran out of memory
    assert "cannot confirm or refute" in claims
    assert "mor (97.50) > mora (55.00) > lora (50.00) > base (0.00)" in claims


def test_results_csv(results_dir, tmp_path):
    write_report(results_dir, tmp_path / "out")
    lines = (tmp_path / "out" / "results.csv").read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    assert header[:4] == ["label", "method", "seed", "status"]
    assert header[-2:] == ["acc_t_a", "acc_t_b"]
    assert len(lines) == 1 + 9 + 1 and lines[-1] == b""  # one row per run, "\n" endings
    rows = [dict(zip(header, ln.decode().split(","), strict=True)) for ln in lines[1:-1]]
    assert [(r["label"], r["seed"]) for r in rows][:4] == [
        ("base", "0"),
        ("lora", "0"),
        ("lora", "1"),
        ("melora", "0"),
    ]
    mor = rows[5]
    assert (mor["label"], mor["seed"], mor["trainable_params"], mor["accuracy"]) == (
        "mor",
        "0",
        "96",
        "0.95",
    )
    assert mor["merged_ratio"] == "" and mor["unmerged_ratio"] == "2"


def test_reports_are_byte_identical(results_dir, tmp_path, monkeypatch):
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        write_report(results_dir, "report")
        outputs.append(
            {f: (tmp_path / name / "report" / f).read_bytes() for f in ("report.md", "results.csv")}
        )
    assert outputs[0] == outputs[1]
    text = outputs[0]["report.md"].decode()
    # the records folder is outside the working folder: named absolutely, so the line runs
    assert f"lorabench report {Path(results_dir).resolve().as_posix()} --out report\n" in text


def test_missing_baseline_and_flat_folder(results_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (results_dir / "runs").glob("*-abcdef12.json"):
        (flat / path.name).write_text(path.read_text())
    write_report(flat, tmp_path / "out", baseline="nope")
    text = (tmp_path / "out" / "report.md").read_text()
    mor = summary_table(text)["mor"]
    assert [mor[c] for c in ("Δ vs nope (points)", "95% CI", "p")] == ["n/a"] * 3
    assert "Baseline `nope` has no ok run" in text
    out = (tmp_path / "out").resolve().as_posix()
    assert f"lorabench report {flat.resolve().as_posix()} --out {out} --baseline nope" in text


def test_unusable_folders_raise_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk" / "runs").mkdir(parents=True)
    (tmp_path / "junk" / "runs" / "x.json").write_text('{"status": "weird"}')
    for folder in ("missing", "empty", "junk"):
        with pytest.raises(ConfigError) as error:
            write_report(tmp_path / folder, tmp_path / "out")
        assert "\n" not in str(error.value) and folder in str(error.value)
    assert not (tmp_path / "out").exists()


def test_reused_baseline_seed_and_cuda_memory(tmp_path):
    runs = tmp_path / "mixed" / "runs"
    runs.mkdir(parents=True)
    for rec in synthetic_records():
        if rec["label"] == "lora" and rec["seed"] == 1:
            continue  # the baseline lacks seed 1
        if rec["label"] == "mor":
            rec["metrics"]["memory"] = {
                "kind": "cuda",
                "peak_allocated_mb": 12.5,
                "peak_reserved_mb": 20.0,
            }
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    write_report(tmp_path / "mixed", tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    summary = summary_table(text)
    memory = next(c for c in summary["mor"] if c.startswith("peak memory") or "memory" in c)
    assert summary["mor"][memory] == "12.5 / 20.0 (cuda)"  # unlike kinds are never ranked
    assert summary["lora"][memory] == "500.0 (cpu_rss)"
    # the baseline lacks seed 1: mor seed 1 is left out (not paired with another seed)
    delta = next(c for c in summary["mor"] if c.startswith("Δ vs"))
    assert summary["mor"][delta] == "+45.00†*"
    assert summary["mor"]["per-seed Δ (sd)"].startswith("+45.0")
    assert (
        "†: seeds without a partner are left out, never paired with another seed: mor seed 1 (`lora` has none)."
        in text
    )
    assert "*: the interval covers example sampling only: one seed" in text


# ---- the committed report ------------------------------------------------------------------

REPORTS = Path(__file__).parents[1] / "reports"


@pytest.mark.parametrize(
    "name,baseline",
    [
        ("tiny", "lora"),
        ("mor-ablation-tiny", "mor-N[num_experts=8]"),
        ("smollm2", "lora"),
        ("commonsense-smollm2", "lora"),
    ],
)
def test_committed_reports_regenerate_byte_for_byte(name, baseline, tmp_path, monkeypatch):
    import shutil

    committed = REPORTS / name
    assert (committed / "runs").is_dir(), f"reports/{name}/runs is missing"
    work = tmp_path / "reports" / name
    shutil.copytree(committed / "runs", work / "runs")
    monkeypatch.chdir(tmp_path)  # the report names its folders relative to the working directory
    write_report(Path(f"reports/{name}"), Path(f"reports/{name}"), baseline=baseline)
    for file in ("report.md", "results.csv"):
        assert (work / file).read_bytes() == (committed / file).read_bytes(), file


def test_sweeps_get_a_table_and_a_plot_per_swept_field(tmp_path):
    runs = tmp_path / "sweep" / "runs"
    runs.mkdir(parents=True)
    for group, method, base_params in (("mor", "mor", 100), ("moe", "moe-lora", 150)):
        for n, correct in ((2, 4), (4, 6), (8, 7)):
            for seed in (0, 1):
                label = f"{group}[num_experts={n}]"
                rec = record(
                    label,
                    seed,
                    {"t_a": ones(correct + seed), "t_b": ones(correct)},
                    rss=500.0,
                    params=base_params * n,
                    method=method,
                )
                rec["config"]["sweep"] = {"group": group, "values": {"num_experts": n}}
                rec["run_id"] = f"{group}-{n}-seed{seed}"
                (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    paths = write_report(tmp_path / "sweep", tmp_path / "out")
    assert (tmp_path / "out" / "sweep_num_experts.png").stat().st_size > 1000
    assert tmp_path / "out" / "sweep_num_experts.png" in paths
    text = (tmp_path / "out" / "report.md").read_text()
    sweeps = text.split("## Sweeps")[1].split("\n## ")[0]
    # mor at N=4: accuracies (6+6)/20 and (7+6)/20 → mean 62.50, std 3.54; params 400
    mor_rows = [ln for ln in sweeps.splitlines() if ln.startswith("| mor ")]
    assert [cell.strip() for cell in mor_rows[1].strip("|").split("|")] == [
        "mor",
        "4",
        "62.50 ± 3.54",
        "400",
    ]
    moe_rows = [ln for ln in sweeps.splitlines() if ln.startswith("| moe ")]
    assert [c.strip() for c in moe_rows[2].strip("|").split("|")] == [
        "moe",
        "8",
        "72.50 ± 3.54",
        "1,200",
    ]
    assert "![sweep over num_experts](sweep_num_experts.png)" in sweeps


def test_ablation_section_sets_measured_shapes_beside_the_paper(tmp_path):
    """Verdicts follow the measured shapes; the growth table equals docs/methods.md's closed forms."""
    runs = tmp_path / "abl" / "runs"
    runs.mkdir(parents=True)
    # Closed forms per layer for the records' targets (tiny: up_proj 128 → 384, 4 layers):
    mor_params = lambda n: 4 * (4 * (128 + 384) + n * (4 + 384) + n * 128)  # noqa: E731
    moe_params = lambda n: 4 * (n * 2 * (128 + 384) + n * 128)  # noqa: E731
    points = [  # (group, method, field, value, correct per task, params, method_config)
        *[("mor-N", "mor", "num_experts", n, c, mor_params(n), {"r": 4, "num_experts": n})
          for n, c in ((2, 5), (4, 6), (8, 10), (12, 7))],
        *[("moe-N", "moe-lora", "num_experts", n, 5, moe_params(n), {"r": 2, "num_experts": n})
          for n in (2, 4, 8, 12)],
        *[("mor-router", "mor", "router", v, c, mor_params(8), {"r": 4, "router": v})
          for v, c in (("softmax", 5), ("mean", 10), ("balanced", 6))],
    ]  # fmt: skip
    for group, method, field, value, correct, params, config in points:
        for seed in (0, 1):
            label = f"{group}[{field}={value}]"
            rec = record(label, seed, {"t_a": ones(correct), "t_b": ones(correct)}, rss=500.0,
                         params=params, method=method)  # fmt: skip
            rec["config"]["method_config"] = config
            rec["config"]["sweep"] = {"group": group, "values": {field: value}}
            rec["run_id"] = f"{group}-{value}-seed{seed}"
            (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    write_report(tmp_path / "abl", tmp_path / "out", baseline="mor-N[num_experts=8]")
    text = (tmp_path / "out" / "report.md").read_text()
    section = text.split("## Against the paper's ablations")[1]
    n_row = next(ln for ln in section.splitlines() if "| mor-N " in ln)
    assert "2: 50.00 · 4: 60.00 · 8: 100.00 · 12: 70.00" in n_row
    # decisive Δ: N=8 minus the best other value (12): 100 - 70 points. Both seeds give the
    # same Δ here, so the interval is the example-sampling one, marked *
    assert " +30.00* |" in n_row and "| +30.0, +30.0 (sd 0.0) |" in n_row
    assert "| agrees: the peak is at 8 " in n_row
    router_row = next(ln for ln in section.splitlines() if "| mor-router " in ln)
    assert "does not agree: measured order mean > balanced > softmax (significantly)" in router_row
    assert "-50.00" in router_row  # softmax minus mean
    assert "shared rank r = 32" not in section  # no r sweep, no row
    growth = section.split("### Parameter growth with num_experts")[1]
    assert row(growth, "8") == [
        "8", f"{mor_params(8):,}", f"{mor_params(8):,}", f"{moe_params(8):,}",
        f"{moe_params(8):,}", f"{100 * mor_params(8) / moe_params(8):.1f}",
    ]  # fmt: skip
    assert "Every measured count equals its closed form" in growth
    assert "Verdict: agrees: mor grows more gently than moe-lora." in growth


def test_ablation_growth_table_regenerated_equals_the_closed_forms(tmp_path):
    """reports/mor-ablation-tiny regenerated from its records: MoR (r=8) and MoE-LoRA
    (r_e=2) on tiny's FFN, N = 2…16, against the formulas written out here."""
    write_report(REPORTS / "mor-ablation-tiny", tmp_path, baseline="mor-N[num_experts=8]")
    text = (tmp_path / "report.md").read_text()
    growth = text.split("### Parameter growth with num_experts")[1]
    lines = [ln for ln in growth.split("\n\n")[2].splitlines()]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {
        cells[0]: dict(zip(headers, cells, strict=True))
        for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])
    }
    ffn = [(128, 384), (128, 384), (384, 128)] * 4  # gate, up, down of 4 layers
    for n in (2, 4, 8, 12, 16):
        mor = sum(
            8 * (i + o) + n * (8 + o) + n * i for i, o in ffn
        )  # r(d_in+d_out)+N(r+d_out)+N d_in
        moe = sum(n * 2 * (i + o) + n * i for i, o in ffn)  # N r_e (d_in+d_out) + N d_in
        got = table[str(n)]
        assert got["mor-N measured"] == got["mor-N closed form"] == f"{mor:,}", n
        assert got["moe-lora-N measured"] == got["moe-lora-N closed form"] == f"{moe:,}", n


# ---- claims compare like with like ----------------------------------------------------------

CLAIM_POINTS = [  # (label, sweep group or None, method, method config, correct per task by seed)
    ("mor-N[num_experts=2]", "mor-N", "mor", {"r": 4, "num_experts": 2, "router": "softmax"}, (9, 9, 8)),
    ("mor-N[num_experts=8]", "mor-N", "mor", {"r": 4, "num_experts": 8, "router": "softmax"}, (7, 8, 9)),
    ("mor-r[r=8]", "mor-r", "mor", {"r": 8, "num_experts": 8, "router": "softmax"}, (2, 3, 2)),
    ("moe-lora-N[num_experts=4]", "moe-lora-N", "moe-lora", {"r": 2, "num_experts": 4}, (9, 10, 9)),
    ("moe-lora-N[num_experts=8]", "moe-lora-N", "moe-lora", {"r": 2, "num_experts": 8}, (4, 5, 5)),
    ("dora", None, "lora", {"r": 4, "use_dora": True, "use_rslora": False}, (10, 10, 9)),
    ("lora", None, "lora", {"r": 4, "use_dora": False, "use_rslora": False}, (5, 4, 6)),
]  # fmt: skip


def write_claim_records(folder: Path, rename: dict[str, str], reverse: bool) -> None:
    """The CLAIM_POINTS records under renamed labels (and sweep groups), written in an order."""
    runs = folder / "runs"
    runs.mkdir(parents=True)
    points = list(reversed(CLAIM_POINTS)) if reverse else CLAIM_POINTS
    for n, (label, group, method, config, correct) in enumerate(points):
        for seed, c in enumerate(correct):
            new = rename.get(label, label)
            rec = record(new, seed, {"t_a": ones(c), "t_b": ones(max(0, c - seed))}, rss=500.0,
                         params=100, method=method)  # fmt: skip
            rec["config"]["method_config"] = config
            if group:
                value = {k: v for k, v in config.items() if f"[{k}=" in label}
                rec["config"]["sweep"] = {"group": rename.get(group, group), "values": value}
            rec["run_id"] = f"run{n}-seed{seed}"
            (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))


def claim_cells(folder: Path, back: dict[str, str]) -> list[list[str]]:
    """The claims table's rows, with labels mapped back to the original names."""
    data = ReportData(load_records(folder), "lora")
    lines = "\n".join(claims_section(data)).splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and "---" not in ln][1:]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    for row_cells in cells:
        for new, old in back.items():
            row_cells[1] = row_cells[1].replace(new, old)
            row_cells[6] = row_cells[6].replace(new, old)
    return cells


def test_claims_choose_points_by_rule_and_ignore_label_names_and_order(tmp_path):
    """Renaming and reordering labels changes no verdict: points are chosen by configuration."""
    write_claim_records(tmp_path / "plain", {}, reverse=False)
    plain = claim_cells(tmp_path / "plain", {})
    mor_vs_moe, mor_vs_lora = plain[0], plain[1]
    # MoR at the paper's N = 8 (a point of the N sweep; mor-r[r=8] sweeps r, so it is not the
    # paper's configuration) against MoE-LoRA at N = 8; LoRA without DoRA
    assert mor_vs_moe[1] == (
        "mor-N[num_experts=8] at num_experts=8, router=softmax vs "
        "moe-lora-N[num_experts=8] at num_experts=8"
    )
    assert mor_vs_lora[1].endswith("vs lora at use_dora=false, use_rslora=false")
    assert mor_vs_moe[5] == "+30.0, +30.0, +40.0 (sd 5.8)" and mor_vs_moe[-1] == "agrees"
    # labels renamed so that they sort differently, sweep groups renamed, files reversed
    # (first in label order: the decoys mor-r[r=8], at N = 8 but a point of an r sweep, and
    # DoRA, a lora-plugin label that is not plain LoRA)
    rename = {
        "mor-N[num_experts=2]": "z-mor-1", "mor-N[num_experts=8]": "b-mor-2", "mor-r[r=8]": "a-mor-3",
        "moe-lora-N[num_experts=4]": "a-moe-1", "moe-lora-N[num_experts=8]": "z-moe-2",
        "dora": "a-lora", "lora": "zz-lora", "mor-N": "g1", "mor-r": "g0", "moe-lora-N": "g2",
    }  # fmt: skip
    write_claim_records(tmp_path / "renamed", rename, reverse=True)
    renamed = claim_cells(
        tmp_path / "renamed",
        {v: k for k, v in rename.items() if "[" in k or k in ("dora", "lora")},
    )
    assert renamed == plain


# ---- plots: every point identifiable -------------------------------------------------------


def test_scatter_legend_entries_are_bound_to_their_own_points(tmp_path):
    """Each legend entry is the point drawn at that label's data; no free text labels.

    Two methods at the same parameter count and nearly the same accuracy (moe-lora and
    moe-lora-top2 in reports/smollm2): text placed beside points by alternating offsets put
    each name next to the other's point; legend entries drawn from the points cannot swap.
    """
    import matplotlib

    matplotlib.use("Agg")
    from lorabench.report.plots import accuracy_scatter

    runs = tmp_path / "close" / "runs"
    runs.mkdir(parents=True)
    records = [r for r in synthetic_records() if r["label"] != "moe-lora"]
    records += [
        record("moe-lora", 0, {"t_a": ones(6), "t_b": ones(5)}, rss=510.0, params=120),
        record("moe-lora-top2", 0, {"t_a": ones(5), "t_b": ones(5)}, rss=505.0, params=120),
    ]
    for rec in records:
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    data = ReportData(load_records(tmp_path / "close"), "lora")
    for column in ("trainable_params", "peak_rss_mb"):
        fig = accuracy_scatter(data, column, column, log_x=column == "trainable_params")
        ax = fig.axes[0]
        assert len(ax.texts) == 0  # no annotation that could sit by the wrong point
        points = {c.get_label(): c.lines[0] for c in ax.containers}
        expected = {
            lb: (data.stat(lb, column)[0], 100 * data.stat(lb, "accuracy")[0])
            for lb in data.labels
            if data.ok_runs[lb] and (data.stat(lb, column)[0] > 0 or column != "trainable_params")
        }
        assert set(points) == set(expected)
        handles, names = ax.get_legend_handles_labels()
        shown = [t.get_text() for t in ax.get_legend().get_texts()]
        assert shown == names and set(expected) <= set(shown)
        for label, (x, y) in expected.items():
            container = handles[names.index(label)]
            line = container.lines[0]
            assert line is points[label]
            assert (list(line.get_xdata()), list(line.get_ydata())) == ([x], [pytest.approx(y)])
        styles = {(line.get_color(), line.get_marker()) for line in points.values()}
        assert len(styles) == len(points)  # no two points look alike
        # the close pair of the docstring: same x, different points, each under its own name
        if column == "trainable_params":
            assert points["moe-lora"].get_xdata()[0] == points["moe-lora-top2"].get_xdata()[0]
        assert points["moe-lora"].get_ydata()[0] == pytest.approx(55.0)
        assert points["moe-lora-top2"].get_ydata()[0] == pytest.approx(50.0)
        matplotlib.pyplot.close(fig)


# ---- wording: sentences say what the numbers say -----------------------------------------------


def test_generated_sentences_follow_the_records(tmp_path):
    """Chance, latency gaps and shared settings are worded from the records at hand."""
    from lorabench.report import sections

    runs = tmp_path / "words" / "runs"
    runs.mkdir(parents=True)
    for rec in synthetic_records():
        if rec["status"] == "ok":  # the embedded tasks: 2-way sentiment, 4-way arithmetic
            rename = {"t_a": "lb_sentiment", "t_b": "lb_arithmetic"}
            ev = rec["metrics"]["eval"]
            for key in ("per_task", "metric", "per_example"):
                ev[key] = {rename[t]: v for t, v in ev[key].items()}
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    data = ReportData(load_records(tmp_path / "words"), "lora")
    assert data.chance == {"lb_arithmetic": 0.25, "lb_sentiment": 0.5}
    text = "\n".join(sections.per_task(data) + sections.summary(data) + sections.intro(data))
    assert row(text, "(chance)")[1:] == ["25.0", "50.0"]
    # base gets nothing right; lora's seeds average 50 % on each task (at chance, not below)
    assert "Means below chance (a description, not a test): base on lb_arithmetic (0.0), " in text
    assert "lora on" not in text.split("Means below chance")[1].split("\n")[0]
    assert (
        "chance (guessing uniformly among each task's choices): 37.50 % macro; below chance: base (0.00)"
        in text
    )
    # no full row here: the latency note names only what is there
    assert "full" not in text.split("- Latency:")[1].split("\n")[0]
    assert "n/a: base (the base model itself, no adapter); mor (routed, cannot merge)" in text
    assert "Every run starts from the same base model (tiny)" in text
    assert "share the training data, steps, batch size, learning rate and schedule." in text
    assert "Seeds: 0, 1 (base: one run, nothing is trained)." in text


# ---- lr chosen on validation, honest costs (validation-protocol branch) --------------------


def grid_records() -> list[dict]:
    """lora on an lr grid (validation picks 3e-3, test would pick 1e-2) and mor at a fixed
    lr; 3 seeds at the chosen lr; latency repeats, throughput windows, training-phase memory."""
    out = []

    def add(label, seed, lr, val, correct, *, grid=True, rss=500.0, ratio=1.5, tps=1000.0, **kw):
        rec = record(label, seed, {"t_a": ones(correct), "t_b": ones(correct)}, rss=rss,
                     params=100, tokens_per_s=tps, latency={"unmerged": 10 * ratio},
                     method="lora", **kw)  # fmt: skip
        m = rec["metrics"]
        m["validation"] = {"per_task": {"t_a": val}, "macro_avg": val, "metric": {}}
        m["memory"]["phases"] = {"train": {"peak_rss_mb": rss - 100, "method": "vmhwm"}}
        m["latency_samples_ms"] = {
            "base": [10.0, 10.2, 9.8, 10.1],
            "unmerged": [10 * ratio * f for f in (1.0, 1.02, 0.98, 1.01)],
        }
        m["train_tokens_per_s_windows"] = [tps * f for f in (0.97, 1.0, 1.03, 1.01)]
        rec["config"]["train"]["lr"] = lr
        if grid:
            rec["config"]["train_sweep"] = {"fields": ["lr"], "seed": 0}
        rec["env"] |= {"base_weights_sha256": "a" * 64, "cpu_capability": "AVX2",
                       "cpu_model": "Test CPU"}  # fmt: skip
        rec["run_id"] = f"{label}-lr{lr}-seed{seed}"
        out.append(rec)
        return rec

    add("lora", 0, 1e-3, 0.40, 4)
    add("lora", 0, 3e-3, 0.60, 5)  # chosen: best validation
    add("lora", 0, 1e-2, 0.50, 9)  # best test: must not be chosen
    for seed in (1, 2):
        add("lora", seed, 3e-3, 0.61, 6)
    for seed in (0, 1, 2):  # mor: clearly faster training, latency inside lora's spread
        add("mor", seed, 2e-3, 0.5, 7, grid=False, rss=450.0, ratio=1.5, tps=2000.0,
            contended=seed == 2)  # fmt: skip
        out[-1]["metrics"]["contended"] = seed == 2
    return out


def write_runs(folder: Path, records: list[dict]) -> Path:
    runs = folder / "runs"
    runs.mkdir(parents=True)
    for rec in records:
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return folder


def test_the_report_shows_the_lr_chosen_on_validation_and_every_lr_in_the_sweep(tmp_path):
    write_report(write_runs(tmp_path / "grid", grid_records()), tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert row(summary, "method")[1] == "lr"
    lora, mor = row(summary, "lora"), row(summary, "mor")
    assert lora[1:3] == ["0.003 (chosen of 3)", "3/3"] and mor[1:3] == ["0.002", "3/3 ‡"]
    assert lora[10] == "56.67 ± 5.77"  # seeds 0-2 at 3e-3 only: (50 + 60 + 60) / 3
    assert "by highest validation macro-average accuracy" in summary
    assert "‡: 1 run(s) ran beside other work while training" in summary
    grid = text.split("### Training grid: lr chosen on validation")[1].split("\n## ")[0]
    rows = [ln for ln in grid.splitlines() if ln.startswith("| lora ")]
    assert [[c.strip() for c in ln.strip("|").split("|")] for ln in rows] == [
        ["lora", "0.001", "ok", "40.00", "40.00", ""],
        ["lora", "0.003", "ok", "**60.00**", "50.00", "chosen (3 seed(s) ok)"],
        ["lora", "0.01", "ok", "50.00", "90.00", ""],
    ]
    setup = text.split("## Setup")[1]
    assert f"- base weights sha256: {'a' * 64}" in setup and "- CPU model: Test CPU" in setup
    assert "Warning" not in setup


def test_timings_and_memory_are_bold_only_outside_the_spread(tmp_path):
    write_report(write_runs(tmp_path / "grid", grid_records()), tmp_path / "out")
    summary = (tmp_path / "out" / "report.md").read_text().split("## Summary")[1]
    header = row(summary, "method")
    lora, mor = row(summary, "lora"), row(summary, "mor")
    assert header[5] == "peak RSS, training (MiB)"  # the training phase, labelled so
    assert lora[5] == "400.0" and mor[5] == "**350.0**"  # seeds agree: spread 0, apart
    assert mor[6] == "**2,000**" and lora[6] == "1,000"  # windows do not overlap
    assert lora[7] == mor[7] == "1.50"  # the same ratios: inside the spread, no bold
    # overlapping spreads: mor only slightly faster than lora → no bold
    close = grid_records()
    for rec in close:
        if rec["label"] == "mor":
            rec["metrics"]["train_tokens_per_s_windows"] = [1010.0, 980.0, 1040.0, 1000.0]
            rec["metrics"]["train_tokens_per_s"] = 1010.0
    write_report(write_runs(tmp_path / "close", close), tmp_path / "out2")
    summary = (tmp_path / "out2" / "report.md").read_text().split("## Summary")[1]
    assert row(summary, "mor")[6] == "1,010" and row(summary, "lora")[6] == "1,000"


def test_records_of_different_base_weights_are_flagged(tmp_path):
    records = grid_records()
    records[-1]["env"]["base_weights_sha256"] = "b" * 64
    write_report(write_runs(tmp_path / "mixed", records), tmp_path / "out")
    setup = (tmp_path / "out" / "report.md").read_text().split("## Setup")[1]
    assert "**Warning:** these records loaded 2 different base models" in setup
