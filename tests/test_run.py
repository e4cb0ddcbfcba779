"""`lorabench run` end to end on the embedded model: records, resumption, failures, determinism.

These tests build the embedded `tiny` model once (cached under ~/.cache/lorabench, about
two minutes on 2 cores) and run `suites/smoke` subsets, each run in its own process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorabench.records import RECORD_KEYS, config_hash
from lorabench.run.launch_local import run_suite
from lorabench.run.suite import load_suite, plan
from lorabench.tasks.train_data import tokenize_pairs
from lorabench.train import IGNORE_INDEX, Example, TrainConfig, batches, masked_lm_loss, train

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "suites" / "smoke.toml"


def fault_suite(tmp_path: Path) -> Path:
    """The smoke settings with lora entries that fail in each recorded way."""
    text = SMOKE.read_text().split("[[methods]]")[0]
    text = text.replace('tasks_dir = "tasks"', f'tasks_dir = "{ROOT / "suites" / "tasks"}"')
    text = text.replace('name = "smoke"', 'name = "faults"')
    for label, fault in [
        ("lora", None),
        ("lora-raise", "raise"),
        ("lora-oom", "oom"),
        ("lora-nan", "nan"),
        ("lora-crash", "crash"),
    ]:
        text += f'\n[[methods]]\nname = "lora"\nlabel = "{label}"\n'
        if fault:
            text += f'inject_fault = "{fault}"\n'
    path = tmp_path / "faults.toml"
    path.write_text(text)
    return path


# --- the driver, in process ----------------------------------------------------------------


def test_data_order_depends_only_on_the_seed():
    examples = [Example([i, i + 1], [IGNORE_INDEX, i + 1]) for i in range(40)]
    cfg = TrainConfig(batch_size=4)
    first = [
        next(b)["input_ids"][:, 0].tolist()
        for b in [batches(examples, cfg, 7, 0)]
        for _ in range(5)
    ]
    again = [
        next(b)["input_ids"][:, 0].tolist()
        for b in [batches(examples, cfg, 7, 0)]
        for _ in range(5)
    ]
    other = [
        next(b)["input_ids"][:, 0].tolist()
        for b in [batches(examples, cfg, 8, 0)]
        for _ in range(5)
    ]
    assert first == again and first != other


def test_loss_is_taken_on_answer_tokens_only():
    logits = torch.zeros(1, 4, 10)
    logits[0, 2, 7] = 50.0  # position 2 predicts token 7 (the label at position 3) perfectly
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7]])
    assert masked_lm_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    labels = torch.tensor([[IGNORE_INDEX, 3, IGNORE_INDEX, 7]])  # adds an unpredicted token
    assert masked_lm_loss(logits, labels).item() == pytest.approx(
        torch.log(torch.tensor(10.0)).item() / 2, rel=1e-4
    )


def test_tokenized_pairs_mask_the_context():
    from lorabench.models.tiny import train_tokenizer

    tok = train_tokenizer(["math: 1 + 2 = 3", "the cat sat on the mat"] * 20, 300)
    [ex] = tokenize_pairs(tok, [("math: 1 + 2 =", " 3\n")], max_length=32)
    n_ctx = len(tok("math: 1 + 2 =", add_special_tokens=False)["input_ids"])
    assert ex.labels[:n_ctx] == [IGNORE_INDEX] * n_ctx
    assert ex.labels[n_ctx:] == ex.input_ids[n_ctx:] and len(ex.labels) > n_ctx


def test_driver_is_deterministic_and_applies_aux_loss():
    from lorabench.api.conformance import tiny_model, toy_batch
    from lorabench.api.inject import inject

    ids = toy_batch(batch=16, length=12)["input_ids"].tolist()
    examples = [Example(row, [IGNORE_INDEX] * 6 + row[6:]) for row in ids]
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=1, lr=1e-2, throughput_warmup=1)
    curves = []
    for _ in range(2):
        model = tiny_model()
        torch.manual_seed(0)
        inject(model, "moe-lora-top2", None, "all-linear")
        result = train(model, examples, cfg, seed=3, progress=False)
        curves.append((result.loss_curve, result.aux_loss_curve))
        assert result.tokens_per_s > 0 and result.tokens == 6 * 4 * 12
    assert curves[0] == curves[1]
    assert all(a > 0 for a in curves[0][1])  # top-2 MoE-LoRA's balance loss was collected
    assert curves[0][0][-1] < curves[0][0][0]


def test_driver_rejects_too_few_examples():
    with pytest.raises(ValueError, match="2 training examples are fewer than batch_size=4"):
        train(torch.nn.Linear(2, 2), [Example([1], [1])] * 2, TrainConfig(batch_size=4), seed=0)


# --- whole runs, each in its own process ----------------------------------------------------


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    suite = load_suite(SMOKE)
    runs = plan(suite, methods=["base", "lora", "mor", "full"])
    outcome = run_suite(suite, runs, out, progress=False, log_samples=True)
    return suite, runs, out, outcome


@pytest.mark.slow
def test_every_run_leaves_a_complete_record(smoke_records):
    suite, runs, out, outcome = smoke_records
    assert [r["status"] for r in outcome.executed] == ["ok"] * 4, [
        r["error"] for r in outcome.executed
    ]
    files = sorted((out / "runs").glob("*.json"))
    assert [f.stem for f in files] == sorted(r.run_id for r in runs)
    tasks = [
        "lb_arithmetic",
        "lb_kv_memory",
        "lb_list_reverse",
        "lb_list_rotate",
        "lb_list_sort",
        "lb_sentiment",
        "lb_word_swap",
    ]
    first_env = json.loads(files[0].read_text())["env"]
    for f in files:
        # each run's own log holds what its worker did, start to end (it was empty once)
        run_log = (out / "logs" / f"{f.stem}.log").read_text()
        assert f"{f.stem}: " in run_log.splitlines()[0] and "config " in run_log.splitlines()[0]
        assert f"{f.stem}: ok after " in run_log and "evaluating 7 task(s)" in run_log
        record = json.loads(f.read_text())
        assert set(RECORD_KEYS) <= set(record)
        assert record["config_hash"] == config_hash(record["config"])
        m = record["metrics"]
        assert sorted(m["eval"]["per_task"]) == tasks
        assert all(len(m["eval"]["per_example"][t]) == 10 for t in tasks)  # eval limit = 10
        assert m["eval"]["macro_avg"] == pytest.approx(sum(m["eval"]["per_task"].values()) / 7)
        assert m["memory"]["kind"] == "cpu_rss" and m["memory"]["peak_rss_mb"] > 100
        assert m["latency_ms"]["base"] > 0 and m["wall_time_s"] > 0
        assert m["heldout_ppl_before"] > 1
        assert record["env"]["versions"]["torch"].startswith(torch.__version__.split("+")[0])
        source = record["env"]["model"]  # where the weights came from, with checksums
        assert source["name"] == "tiny" and len(source["sha256"]["model.safetensors"]) == 64
        # reproducibility: the loaded weights' checksum (one base model for every run) and
        # the floating-point identity of the machine
        env = record["env"]
        assert env["base_weights_sha256"] == first_env["base_weights_sha256"]
        assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert env["cpu_model"]
        # validation splits scored beside the test splits; memory per phase; every repeat
        assert sorted(m["validation"]["per_task"]) == tasks
        assert m["validation"]["macro_avg"] == pytest.approx(
            sum(m["validation"]["per_task"].values()) / 7
        )
        phases = m["memory"]["phases"]
        assert phases["eval"]["peak_rss_mb"] > 100 and phases["eval"]["method"] == "vmhwm"
        assert m["memory"]["peak_rss_mb"] >= phases["eval"]["peak_rss_mb"]
        assert len(m["latency_samples_ms"]["base"]) == 3  # eval.latency_repeats
        assert m["latency_ms"]["base"] == pytest.approx(
            sorted(m["latency_samples_ms"]["base"])[1]  # the median of 3
        )
        if record["method"] == "base":
            assert m["trainable_params"] == 0 and "loss_curve" not in m
            assert "train" not in phases and set(m["latency_samples_ms"]) == {"base"}
            continue
        assert len(m["loss_curve"]) == 8 and m["train_tokens_per_s"] > 0
        assert len(m["train_tokens_per_s_windows"]) == 6  # 8 steps, 2 of warm-up
        assert 0 < m["cpu_utilisation"] <= 1.5 and isinstance(m["contended"], bool)
        wait = m["cpu_wait_fraction"]
        assert wait is None or 0 <= wait <= 1.5
        assert m["contended"] == (m["cpu_utilisation"] < 0.7 or (wait or 0) > 0.1)
        assert phases["train"]["peak_rss_mb"] > 100
        assert m["latency_ms"]["unmerged"] > 0
        if record["method"] == "lora":
            assert m["latency_ms"]["merged"] > 0 and m["adapter_bytes"] > 4 * m["trainable_params"]
            assert len(m["latency_samples_ms"]["merged"]) == 3
            assert (
                m["budget"]["target"] == 120000 and m["trainable_params"] == m["budget"]["reached"]
            )
        if record["method"] == "mor":
            assert "merged" not in m["latency_ms"]
        if record["method"] == "full":
            assert m["trainable_params"] == m["base_params"] and "adapter_bytes" not in m


@pytest.mark.slow
def test_runs_keep_lm_evals_output_and_every_metric(smoke_records):
    import math

    _, _, out, outcome = smoke_records
    for record in outcome.executed:
        folder = out / "lm_eval" / record["run_id"]
        m = record["metrics"]["eval"]
        lm_eval_results = json.loads((folder / "results.json").read_text())
        assert sorted(lm_eval_results["results"]) == sorted(m["per_task"])
        assert lm_eval_results["n-samples"]["lb_sentiment"]["effective"] == 10
        assert (folder / "results_validation.json").is_file()
        for task, score in m["per_task"].items():
            row = m["metrics"][task]
            assert (
                lm_eval_results["results"][task][m["metric"][task]]
                == score
                == row[m["metric"][task]]
            )
            name = m["metric"][task].split(",")[0]
            # mean-aggregated metrics: lm-eval's closed-form standard error sqrt(p(1-p)/(n-1))
            assert row[f"{name}_stderr,none"] == pytest.approx(math.sqrt(score * (1 - score) / 9))
            lines = (folder / f"samples_{task}.jsonl").read_text().splitlines()
            assert sorted(json.loads(line)["doc_id"] for line in lines) == list(range(10))


@pytest.mark.slow
def test_lorabench_eval_reproduces_a_routed_run_exactly(smoke_records, capsys):
    from lorabench.cli import main

    _, _, out, outcome = smoke_records
    mor = next(r for r in outcome.executed if r["method"] == "mor")
    record_file = out / "runs" / f"{mor['run_id']}.json"
    assert main(["eval", str(record_file), "--no-progress", "--out", str(out / "again.json")]) == 0
    printed = capsys.readouterr().out
    assert "reproduces the record exactly" in printed and "lb_arithmetic" in printed
    again = json.loads((out / "again.json").read_text())
    assert again["reproduces"] is True
    assert again["accuracy"] == mor["metrics"]["accuracy"]
    for key in ("per_task", "per_example", "metric", "metrics"):
        assert again["eval"][key] == mor["metrics"]["eval"][key], key
    # by run id, on one task with another limit: scored, nothing to compare with
    argv = ["eval", mor["run_id"], "--results", str(out), "--tasks", "lb_sentiment",
            "--limit", "4", "--no-progress", "--out", str(out / "one.json")]  # fmt: skip
    assert main(argv) == 0
    one = json.loads((out / "one.json").read_text())
    assert one["tasks"] == ["lb_sentiment"] and one["reproduces"] is None
    assert len(one["eval"]["per_example"]["lb_sentiment"]) == 4
    assert one["accuracy"] == sum(one["eval"]["per_example"]["lb_sentiment"]) / 4


@pytest.mark.slow
def test_load_run_and_the_peft_folder_give_the_trained_model(smoke_records):
    from peft import PeftModel

    import lorabench
    from lorabench.api.inject import adapted_layers
    from lorabench.models.zoo import load_pretrained

    _, _, out, outcome = smoke_records
    lora = next(r for r in outcome.executed if r["method"] == "lora")
    mor = next(r for r in outcome.executed if r["method"] == "mor")
    model, tokenizer, record = lorabench.load_run(out / "adapters" / lora["run_id"])
    assert record == lora and len(dict(adapted_layers(model))) == 4 * 7
    peft_dir = out / "adapters" / lora["run_id"] / "peft"
    reloaded = PeftModel.from_pretrained(load_pretrained("tiny")[0], str(peft_dir)).eval()
    ids = tokenizer(["math: 12 + 30 =", "reverse: a b c ->"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, model(**ids).logits, rtol=0, atol=1e-5)
    assert not (out / "adapters" / mor["run_id"] / "peft").exists()  # routed: own format only
    routed, _, _ = lorabench.load_run(mor["run_id"], results=out)
    assert all(type(layer).__name__ == "MoRLinear" for _, layer in adapted_layers(routed))


@pytest.mark.slow
def test_rerunning_a_suite_trains_nothing(smoke_records):
    suite, runs, out, _ = smoke_records
    again = run_suite(suite, runs, out, progress=False)
    assert again.executed == [] and len(again.skipped) == 4


@pytest.mark.slow
@pytest.mark.ray
def test_ray_runs_give_the_same_records_and_resume(smoke_records, tmp_path):
    """`--ray`: a local Ray instance with 2 CPU workers runs suites/smoke's runs; records match."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra lorabench[ray]")
    from lorabench.run.launch_ray import run_suite_ray

    suite, runs, _, local = smoke_records
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        first = run_suite_ray(suite, runs, tmp_path, progress=False)
        again = run_suite_ray(suite, runs, tmp_path, progress=False)
    finally:
        ray.shutdown()
    assert again.executed == [] and len(again.skipped) == len(runs)  # resumption as locally
    reference = {r["run_id"]: r for r in local.executed}
    assert sorted(r["run_id"] for r in first.executed) == sorted(reference)
    for record in first.executed:
        expected = reference[record["run_id"]]
        on_disk = json.loads((tmp_path / "runs" / f"{record['run_id']}.json").read_text())
        assert on_disk["config_hash"] == record["config_hash"] == expected["config_hash"]
        assert record["status"] == "ok" and set(record) == set(expected)
        assert set(record["metrics"]) == set(expected["metrics"])
        assert record["env"]["torch_threads"] == expected["env"]["torch_threads"]
        # same config, seed and threads: the same numbers as the local run
        for key in ("trainable_params", "final_loss", "accuracy"):
            assert record["metrics"].get(key) == expected["metrics"].get(key), key
        assert (
            record["metrics"]["eval"]["per_example"] == expected["metrics"]["eval"]["per_example"]
        )


def test_ray_flag_without_ray_is_a_one_line_error(monkeypatch, capsys):
    from lorabench.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["run", str(SMOKE), "--ray"]) == 2
    assert capsys.readouterr().err == (
        "lorabench: error: --ray needs Ray, an optional extra: pip install 'lorabench[ray]'\n"
    )
    assert main(["run", str(SMOKE), "--address", "auto"]) == 2
    assert "--address is the Ray cluster to run on; it needs --ray" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_gives_the_same_loss_and_accuracy(smoke_records, tmp_path):
    suite, runs, out, outcome = smoke_records
    lora = next(r for r in runs if r.label == "lora")
    first = next(r for r in outcome.executed if r["label"] == "lora")
    second = run_suite(suite, [lora], tmp_path, progress=False).executed[0]
    assert second["metrics"]["final_loss"] == first["metrics"]["final_loss"]
    assert second["metrics"]["eval"]["per_example"] == first["metrics"]["eval"]["per_example"]


@pytest.mark.slow
def test_failures_are_recorded_with_their_status_and_the_suite_goes_on(tmp_path):
    suite = load_suite(fault_suite(tmp_path))
    outcome = run_suite(suite, plan(suite), tmp_path / "out", progress=False)
    status = {r["label"]: (r["status"], r["error"]) for r in outcome.executed}
    assert status["lora"] == ("ok", None)
    assert status["lora-raise"] == ("failed", "RuntimeError: injected fault at step 2")
    assert status["lora-oom"] == ("oom", "OutOfMemoryError: injected fault at step 2")
    assert status["lora-nan"][0] == "nan" and status["lora-nan"][1] == "loss is nan at step 2"
    # a worker that dies without writing its record gets one written by the runner
    assert status["lora-crash"][0] == "failed"
    assert status["lora-crash"][1].startswith(
        "worker exited with code 70 before writing its record"
    )
    # failed runs are kept, not retried ... unless asked
    again = run_suite(suite, plan(suite), tmp_path / "out", progress=False)
    assert again.executed == []
    retried = run_suite(
        suite,
        plan(suite, methods=["lora-raise"]),
        tmp_path / "out",
        retry_failed=True,
        progress=False,
    )
    assert [r["status"] for r in retried.executed] == ["failed"]


@pytest.mark.slow
def test_sigkill_mid_suite_loses_nothing_and_the_next_run_resumes(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lorabench.cli",
        "run",
        str(SMOKE),
        "--methods",
        "base,lora,melora",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    runs_dir = out / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs_dir.glob("*.json")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(runs_dir.glob("*.json"))
    assert 1 <= len(finished) < 3
    for f in finished:
        assert json.loads(f.read_text())["status"] == "ok"
    time.sleep(1.0)  # the worker of the interrupted run dies with its parent (PDEATHSIG)
    assert not list(runs_dir.glob(".*.tmp"))
    assert len(list(runs_dir.glob("*.json"))) == len(finished)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped (recorded)" in done.stdout
    assert len(list(runs_dir.glob("*.json"))) == 3
