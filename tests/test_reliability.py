"""Reliability: every bad input refused before training, no silent mixing, no lost result.

Each case replays a defect and asserts either a one-line error (no traceback) or the right
behaviour, and that no finished result is lost. docs/reliability.md lists the guarantees
and the test of each. Tests marked ``slow`` start real worker processes on the embedded
model (built once, cached); the rest need no model.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lorabench.cli import main
from lorabench.errors import ConfigError, SuiteCodeError
from lorabench.records import config_hash, load_record, new_record, save_record
from lorabench.run import launch_local
from lorabench.run.launch_local import (
    MemoryWatch,
    RunLock,
    _crash_record,
    job_path,
    lock_path,
    prepare,
    record_path,
)
from lorabench.run.suite import load_suite, plan
from lorabench.tasks.lm_eval_yaml import lm_eval_task_folder, suite_code

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.toml"
TASKS = ROOT / "suites" / "tasks"


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("lorabench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def quick_suite(tmp_path: Path, *, name: str = "quick", extra: str = "", **suite) -> Path:
    """The embedded model on one small task: runs that take seconds, not minutes."""
    settings = {
        "name": f'"{name}"',
        "model": '"tiny"',
        "tasks": '["lb_arithmetic"]',
        "tasks_dir": f'"{TASKS}"',
        "seeds": "[0]",
        **suite,
    }
    text = "[suite]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    text += "[train]\nsteps = 4\nbatch_size = 8\nwarmup_steps = 1\nthroughput_warmup = 1\n"
    text += "max_length = 48\n[eval]\nlimit = 4\nlatency_repeats = 1\n"
    text += extra or '[[methods]]\nname = "base"\n[[methods]]\nname = "lora"\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def no_model_build(monkeypatch):
    """prepare() without building the embedded model (tests that start no worker)."""
    monkeypatch.setattr(launch_local, "_prepare_base_model", lambda runs: None)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The system temp folder of this test (fallback records go there)."""
    folder = tmp_path / "systemtmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def unwritable_paths(tmp_path: Path) -> list[Path]:
    """Output folders that cannot be written, also as root: below a file, and (not as
    root, who ignores permission bits) a read-only folder."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = [blocker / "out"]
    if os.geteuid() != 0:
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o500)
        paths.append(readonly / "out")
    return paths


# ---- 1. report: no silent mixing ------------------------------------------------------------


def _records_folder(tmp_path: Path, records: list[dict]) -> Path:
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for i, rec in enumerate(records):
        (runs / f"{rec['run_id']}-{i}.json").write_text(json.dumps(rec))
    return tmp_path / "results"


def _synthetic(label: str, seed: int, suite: str = "synthetic", digest: str = "abcdef12") -> dict:
    from test_report import ones, record  # the report tests' synthetic records

    rec = record(label, seed, {"t_a": ones(5), "t_b": ones(6)}, rss=500.0, params=10)
    rec["suite"] = rec["config"]["suite"] = suite
    rec["config_hash"] = digest
    return rec


def test_report_refuses_records_of_two_suites_unless_merged(tmp_path, capsys):
    results = _records_folder(
        tmp_path, [_synthetic("lora", 0), _synthetic("base", 0, suite="other")]
    )
    code, out, err = cli(capsys, "report", results, "--out", tmp_path / "out")
    one_line_error(
        code, err, "holds records of 2 suites", "suite other: base-seed0-abcdef12-1.json"
    )
    assert "--merge" in err and not (tmp_path / "out").exists()
    code, out, err = cli(capsys, "report", results, "--out", tmp_path / "out", "--merge")
    assert code == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**Merged (`--merge`):** this results folder holds records of 2 suites" in text
    assert "--merge\n" in text  # the regenerate command


def test_report_refuses_two_configs_of_one_run_unless_merged(tmp_path, capsys):
    old = _synthetic("lora", 0, digest="0ld0ld00")
    new = _synthetic("lora", 0, digest="4e34e34e")
    new["finished_at"] = "2026-02-01T00:00:00+00:00"
    new["metrics"]["accuracy"] = 0.9
    results = _records_folder(tmp_path, [old, new, _synthetic("base", 0)])
    code, _, err = cli(capsys, "report", results, "--out", tmp_path / "out")
    one_line_error(code, err, "different configs for 1 run(s)", "lora seed 0:", "-0.json")
    code, _, err = cli(capsys, "report", results, "--out", tmp_path / "out", "--merge")
    assert code == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "records of different configs for 1 run(s) (lora seed 0)" in text
    csv = (tmp_path / "out" / "results.csv").read_text()
    assert csv.count("\nlora,") == 1 and ",0.9," in csv  # the newest kept, nothing doubled


# ---- 2. records are checked before they are trusted ------------------------------------------


def test_invalid_records_are_reported_and_their_runs_redone(tmp_path, no_model_build, caplog):
    suite = load_suite(SMOKE)
    base, lora, mor = plan(suite, methods=["base", "lora", "mor"])
    out = tmp_path / "out"
    ok = new_record(base.run_id, base.config, "test") | {"status": "ok", "error": None}
    (out / "runs").mkdir(parents=True)
    # a valid record of base; lora's file holds base's record; mor's is not JSON
    record_path(out, base).write_text(json.dumps(ok))
    record_path(out, lora).write_text(json.dumps(ok | {"run_id": lora.run_id}))
    record_path(out, mor).write_text('{"status": "ok"')
    with caplog.at_level(logging.WARNING):
        todo, outcome = prepare([base, lora, mor], out, retry_failed=False)
    assert [r["run_id"] for r in outcome.skipped] == [base.run_id]
    assert todo == [lora, mor]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(lora.run_id in w and "does not match the file name" in w for w in warnings)
    assert any(mor.run_id in w and "not JSON" in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    # nothing is destroyed: the bad files are kept beside, out of the report's way
    assert (out / "runs" / f"{mor.run_id}.json.invalid").read_text() == '{"status": "ok"'
    # an edited config (hash no longer matching) is invalid too
    edited = ok | {"config": {**ok["config"], "seed": 9}}
    record_path(out, base).write_text(json.dumps(edited))
    todo, _ = prepare([base], out, retry_failed=False)
    assert todo == [base]


# ---- 3. output that cannot be written --------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "report", "make-tasks"])
def test_unwritable_out_is_a_one_line_error_before_anything_runs(command, tmp_path, capsys):
    for out in unwritable_paths(tmp_path):
        argv = {
            "run": ["run", SMOKE, "--out", out],
            "report": ["report", ROOT / "reports" / "tiny", "--out", out],
            "make-tasks": ["make-tasks", "--out", out],
        }[command]
        code, stdout, err = cli(capsys, *argv)
        one_line_error(code, err, "cannot write there", str(out))
        assert stdout == ""


def test_a_record_that_cannot_be_written_goes_to_a_fallback_and_comes_back(
    tmp_path, private_tmp, no_model_build, capsys
):
    suite = load_suite(SMOKE)
    [run] = plan(suite, methods=["base"])
    out = tmp_path / "out"
    path = record_path(out, run)
    path.mkdir(parents=True)  # the record cannot be written where it belongs
    record = new_record(run.run_id, run.config, "test") | {"status": "ok", "error": None}
    record["metrics"] = {"accuracy": 0.5, "wall_time_s": 1.0}
    written = save_record(path, record)
    assert written == private_tmp / "lorabench-unsaved-records" / path.name
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"saved it to {written}" in err
    assert load_record(written)["metrics"]["accuracy"] == 0.5
    # the launcher finds it where the worker put it ...
    assert launch_local._unsaved_record(path, config_hash(run.config)) == load_record(written)
    # ... and the next run of the suite moves it into place and skips the run
    path.rmdir()
    todo, outcome = prepare([run], out, retry_failed=False)
    assert todo == [] and outcome.skipped[0]["metrics"]["accuracy"] == 0.5
    assert load_record(path)["metrics"]["accuracy"] == 0.5 and not written.exists()


def test_with_nothing_writable_the_record_goes_to_stderr(tmp_path, monkeypatch, capsys):
    suite = load_suite(SMOKE)
    [run] = plan(suite, methods=["base"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr("tempfile.tempdir", str(blocker))  # the temp folder is a file too
    record = new_record(run.run_id, run.config, "test")
    with pytest.raises(OSError):
        save_record(blocker / "results" / "runs" / "x.json", record)
    err = capsys.readouterr().err
    assert json.loads(err.split("the record follows:\n")[1]) == json.loads(json.dumps(record))


# ---- 4. two processes on one results folder --------------------------------------------------


def test_a_run_locked_by_another_process_is_skipped_and_named(tmp_path, no_model_build, capsys):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    [run] = plan(load_suite(SMOKE), methods=["lora"])
    other = subprocess.Popen(  # another process holds the run's lock
        [sys.executable, "-c", f"""
import fcntl, sys, time
handle = open({str(lock_path(out, run))!r}, "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.write("4242\\n"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "locked"
        code, stdout, err = cli(capsys, "run", SMOKE, "--methods", "lora", "--out", out)
    finally:
        other.kill()
        other.wait()
    assert code == 0, err
    assert "running elsewhere" in stdout and "held by pid 4242" in stdout
    assert f"skipped 1 run(s) that another lorabench process is running: {run.run_id}" in stdout
    assert not record_path(out, run).exists()  # nothing trained twice, nothing faked
    with RunLock(lock_path(out, run)) as lock:  # the lock died with its holder
        assert lock.acquire()


# ---- 5. SIGKILL is `killed` unless there is evidence of OOM ----------------------------------


def _fake_system(tmp_path: Path, version: int, oom_kills: int, limit: str = "max") -> tuple:
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "vmstat").write_text("nr_free_pages 1\noom_kill 7\n")
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\n")
    if version == 2:
        (proc / "self" / "cgroup").write_text("0::/job\n")
        folder = cgroups / "job"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.events").write_text(
            f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kills}\n"
        )
        (folder / "memory.max").write_text(f"{limit}\n")
    else:
        (proc / "self" / "cgroup").write_text("4:memory:/job\n1:cpu:/\n")
        folder = cgroups / "memory" / "job"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.oom_control").write_text(f"oom_kill_disable 0\noom_kill {oom_kills}\n")
        (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    return proc, cgroups, folder


@pytest.mark.parametrize("version", [1, 2])
def test_oom_needs_evidence(tmp_path, version):
    proc, cgroups, folder = _fake_system(tmp_path, version, oom_kills=0)
    watch = MemoryWatch(proc, cgroups)
    assert watch.cgroup == folder
    assert watch.evidence(peak_rss=2**30) is None  # 1 GiB of 16: no evidence
    assert "peak RSS 15.5 GiB reached 97 %" in watch.evidence(peak_rss=int(15.5 * 2**30))
    _fake_system(tmp_path, version, oom_kills=1)  # the cgroup's OOM killer struck meanwhile
    assert "oom_kill rose from 0 to 1 during the run" in watch.evidence(peak_rss=2**30)
    (proc / "vmstat").write_text("oom_kill 8\n")  # the kernel-wide counter counts too
    assert watch.evidence(peak_rss=None) is not None


def test_sigkill_without_evidence_is_recorded_as_killed():
    [run] = plan(load_suite(SMOKE), methods=["lora"])
    killed = _crash_record(run, "cmd", -signal.SIGKILL, "", 3.0, evidence=None)
    assert killed["status"] == "killed"
    assert killed["error"].startswith(
        "worker killed by SIGKILL (possibly the out-of-memory killer; no evidence found)"
    )
    oom = _crash_record(run, "cmd", -signal.SIGKILL, "", 3.0, evidence="oom_kill rose")
    assert oom["status"] == "oom" and "out-of-memory killer (oom_kill rose)" in oom["error"]
    assert _crash_record(run, "cmd", 70, "", 1.0)["status"] == "failed"


# ---- 6. seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seeds,message",
    [
        ("1,1", "--seeds: seed(s) 1 given more than once in '1,1'"),
        (",", "--seeds: no seed in ','"),
        ("", "--seeds: no seed in ''"),
    ],
)
def test_empty_or_repeated_seeds_are_one_line_errors(seeds, message, capsys):
    code, out, err = cli(capsys, "run", SMOKE, "--seeds", seeds, "--dry-run")
    one_line_error(code, err, message)
    assert out == ""


def test_repeated_seeds_in_a_suite_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"seed\(s\) 1 given more than once"):
        plan(load_suite(quick_suite(tmp_path, seeds="[1, 1]")))


# ---- 7. bad input refused at plan time (--dry-run included) ----------------------------------


@pytest.mark.parametrize(
    "settings,argv,message",
    [
        ({"tasks": '["lb_nope"]'}, [], "unknown task(s) lb_nope in"),
        ({"tasks_dir": '"no-such-tasks"'}, [], "tasks_dir 'no-such-tasks' not found"),
        ({"model": '"./models/llama-local"'}, [], "model folder './models/llama-local' not found"),
        ({"model": '"/nonexistent/a/b"'}, [], "model folder '/nonexistent/a/b' not found"),
        ({"train_data": '"tasks"', "tasks": '["lb_kv_memory"]'}, ["--methods", "lora"], None),
        ({"tasks_dir": '""', "tasks": '"all"'}, [], "tasks = 'all' needs a tasks_dir"),
        ({"train_data": '{jsonl = "nope.jsonl"}'}, [], "training data nope.jsonl cannot be read"),
    ],
)
def test_bad_input_is_a_one_line_error_at_plan_time(tmp_path, capsys, settings, argv, message):
    path = quick_suite(tmp_path, **settings)
    if message is None:  # batch size 600 > the 512 training rows of lb_kv_memory
        path.write_text(path.read_text().replace("batch_size = 8", "batch_size = 600"))
        message = "method 'lora': batch_size=600 is larger than the 512 training examples"
    code, out, err = cli(capsys, "run", path, "--dry-run", *argv)
    one_line_error(code, err, message, str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    code, _, err = cli(capsys, "run", quick_suite(tmp_path), "--device", "cuda", "--dry-run")
    one_line_error(code, err, "--device: device 'cuda', but torch", "sees no CUDA device")
    code, _, err = cli(capsys, "run", quick_suite(tmp_path, device='"cuda"'), "--dry-run")
    one_line_error(code, err, "[suite].device: device 'cuda'")


@pytest.mark.slow  # a cold cache indexes lm-eval's registry once (about a minute)
def test_unknown_registry_task_is_checked_with_lm_eval(tmp_path, capsys):
    path = quick_suite(tmp_path, tasks_dir='""', tasks='["hellaswag", "siqa"]')
    code, _, err = cli(capsys, "run", path, "--dry-run", "--methods", "base")
    one_line_error(code, err, "unknown task(s) siqa: not in lm-eval's task registry")
    ok = quick_suite(tmp_path, name="ok", tasks_dir='""', tasks='["hellaswag", "social_iqa"]',
                     train_data='{hf_dataset = "x", split = "train"}')  # fmt: skip
    code, out, err = cli(capsys, "run", ok, "--dry-run", "--methods", "base")
    assert code == 0, err


# ---- 9. bad records and baselines in reports --------------------------------------------------


def test_report_warns_on_stderr_per_bad_record(tmp_path, capsys):
    results = _records_folder(tmp_path, [_synthetic("lora", 0), _synthetic("base", 0)])
    (results / "runs" / "broken.json").write_text("{not json")
    (results / "runs" / "empty.json").write_text("{}")
    code, out, err = cli(capsys, "report", results, "--out", tmp_path / "out")
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("lorabench: warning: ") for ln in lines)
    assert "runs/broken.json: not JSON" in lines[0] and lines[0].endswith("; skipped")
    assert "runs/empty.json: schema_version: expected 2" in lines[1]


def test_unknown_baseline_is_a_one_line_error_listing_the_labels(tmp_path, capsys):
    code, out, err = cli(
        capsys, "report", ROOT / "reports" / "tiny", "--out", tmp_path / "o", "--baseline", "nosuch"
    )
    one_line_error(code, err, "--baseline 'nosuch' is not a method label", "labels: base, full")
    assert not (tmp_path / "o" / "report.md").exists()


# ---- 10. job files ----------------------------------------------------------------------------


def test_stale_job_files_are_removed_unless_their_run_is_running(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    stale, live = plan(load_suite(SMOKE), methods=["lora", "mor"])
    for run in (stale, live):
        job_path(out, run).write_text("{}")
    with RunLock(lock_path(out, live)) as lock:
        assert lock.acquire()
        launch_local._remove_stale_job_files([stale, live], out)
        assert not job_path(out, stale).exists() and job_path(out, live).exists()
    assert job_path(out, stale).parent == out / "runs"


def test_the_worker_removes_its_job_file_once_read(tmp_path, monkeypatch):
    from lorabench.run import worker

    job = tmp_path / "runs" / ".x.job"
    job.parent.mkdir()
    job.write_text(json.dumps({"run_id": "x"}))
    seen = []
    monkeypatch.setattr(worker, "execute", lambda j: seen.append(job.exists()) or {"status": "ok"})
    assert worker.main([str(job)]) == 0
    assert seen == [False] and not job.exists()

    def interrupted(j):
        raise KeyboardInterrupt

    job.write_text(json.dumps({"run_id": "x"}))
    monkeypatch.setattr(worker, "execute", interrupted)
    assert worker.main([str(job)]) == 130  # Ctrl-C: no record, no traceback


# ---- 11. the model cache says what it waits for ------------------------------------------------


def test_the_model_cache_lock_says_what_it_waits_for(tmp_path, caplog):
    from lorabench.models.cache import build_once

    folder = tmp_path / "model"
    lock = folder.with_suffix(".lock")
    handle = open(lock, "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write("4242\n")
    handle.flush()

    def build(tmp: Path) -> None:
        (tmp / "done").write_text("")

    thread = threading.Thread(target=build_once, args=(folder, "done", build, "the test model"))
    with caplog.at_level(logging.INFO, logger="lorabench.models.cache"):
        thread.start()
        deadline = time.time() + 10
        while time.time() < deadline and not caplog.records:
            time.sleep(0.05)
        waiting = [r.getMessage() for r in caplog.records]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        thread.join(10)
    assert waiting == [
        f"waiting for another process (pid 4242), which is building the test model (lock {lock})"
    ]
    assert (folder / "done").is_file()


# ---- suite code --------------------------------------------------------------------------------


def test_shipped_tasks_are_pure_data():
    assert suite_code(TASKS) == []
    template = (TASKS / "_default_template_yaml").read_text()
    assert 'dataset_path: "json"' in template and "custom_dataset" not in template


def _tasks_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    shutil.copytree(TASKS, folder)
    return folder


def test_task_code_is_refused_unless_trusted(tmp_path, capsys):
    folder = _tasks_copy(tmp_path)
    task_yaml = folder / "lb_arithmetic" / "lb_arithmetic.yaml"
    task_yaml.write_text(task_yaml.read_text() + "process_docs: !function utils.process\n")
    suite = quick_suite(tmp_path, tasks_dir=f'"{folder}"')
    code, out, err = cli(capsys, "run", suite, "--dry-run")
    one_line_error(code, err, f"{task_yaml}: !function utils.process", "--trust-suite-code")
    assert out == ""
    code, out, err = cli(capsys, "run", suite, "--dry-run", "--trust-suite-code")
    assert code == 0, err


def test_python_files_in_the_tasks_folder_are_refused(tmp_path):
    folder = _tasks_copy(tmp_path)
    (folder / "lb_sentiment" / "utils.py").write_text("import os\n")
    with pytest.raises(SuiteCodeError, match=r"lb_sentiment/utils.py: a Python file"):
        plan(load_suite(quick_suite(tmp_path, tasks_dir=f'"{folder}"')))
    template = folder / "_default_template_yaml"  # a tag in an included file counts too
    (folder / "lb_sentiment" / "utils.py").unlink()
    template.write_text(template.read_text() + "x: !!python/name:os.system\n")
    with pytest.raises(SuiteCodeError, match="_default_template_yaml: tag:yaml.org,2002:python"):
        plan(load_suite(quick_suite(tmp_path, tasks_dir=f'"{folder}"')))


def test_lm_eval_stock_configs_reached_by_include_stay_allowed(tmp_path):
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
    assert "!function" in stock.read_text()  # HellaSwag's utils.process_docs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.yaml").write_text(f'include: "{stock}"\ntask: my_hellaswag\n')
    assert suite_code(tmp_path) == []
    (tmp_path / "mine" / "other.yaml").write_text("include: mine.yaml\nx: !function a.b\n")
    assert suite_code(tmp_path) == [f"{tmp_path / 'mine' / 'other.yaml'}: !function a.b"]


def test_evaluation_reads_the_current_rows_from_any_working_folder(tmp_path, monkeypatch):
    """Data files resolve against the task YAML, not the cwd, and no datasets cache serves
    rows of an earlier version of a file (same path, same modification time)."""
    from lm_eval.tasks import TaskManager

    folder = _tasks_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    test_file = folder / "lb_arithmetic" / "test.jsonl"
    stamp = test_file.stat().st_mtime_ns

    def first_prompt(run: int) -> str:
        wrapped = lm_eval_task_folder(folder, tmp_path / f"w{run}", tmp_path / f"c{run}")
        manager = TaskManager(include_path=str(wrapped), include_defaults=False)
        task = manager.load(["lb_arithmetic"])["tasks"]["lb_arithmetic"]
        return task.doc_to_text(task.test_docs()[0])

    assert first_prompt(0) == json.loads(test_file.read_text().splitlines()[0])["prompt"]
    rows = test_file.read_text().splitlines()
    changed = json.loads(rows[0]) | {"prompt": "math: 99 + 99 ="}
    test_file.write_text("\n".join([json.dumps(changed), *rows[1:]]) + "\n")
    os.utime(test_file, ns=(stamp, stamp))  # same path, same mtime, new content
    assert first_prompt(1) == "math: 99 + 99 ="


# ---- end to end: real workers (slow) -----------------------------------------------------------


def _lorabench(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lorabench.cli", *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kwargs,
    )


def _wait_for(predicate, timeout: float = 600.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def _workers_of(parent: int) -> list[int]:
    """The worker processes whose parent is ``parent`` (our own `lorabench run`)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"lorabench.run.worker" in (stat.parent / "cmdline").read_bytes():
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_says_what_finished_and_exits_130(tmp_path):
    # lora trains long enough that Ctrl-C always lands while it runs (a 4-step run could
    # finish between its job file's removal and the signal on a fast machine)
    long_lora = '[[methods]]\nname = "base"\n[[methods]]\nname = "lora"\ntrain = { steps = 150 }\n'
    suite = quick_suite(tmp_path, extra=long_lora)
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = _lorabench("run", suite, "--out", out, "--no-progress", env=env)
    runs = out / "runs"
    # the first run (base) finishes, then Ctrl-C while the second (lora) trains
    _wait_for(lambda: len(list(runs.glob("*.json"))) == 1 and list(runs.glob("*.job")))
    _wait_for(lambda: not list(runs.glob("*.job")))  # its worker has read its job
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lorabench: interrupted: 1 of 2 runs are recorded in ")
    assert "was stopped and left no record" in last and "run the same command again" in last
    [finished] = runs.glob("*.json")
    assert load_record(finished)["status"] == "ok" and load_record(finished)["method"] == "base"
    assert not list(runs.glob("*.job")) and not list(tmp_path.glob("lorabench-job-*"))
    # (the worker logs "interrupted (SIGINT)" when it stops within the launcher's grace
    # period; on a loaded machine it may be SIGKILLed after it, so the log is not asserted)
    again = _lorabench("run", suite, "--out", out, "--no-progress", env=env)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    assert "skipped (recorded)" in stdout and len(list(runs.glob("*.json"))) == 2


@pytest.mark.slow
def test_kill_9_of_a_worker_is_recorded_as_killed(tmp_path):
    suite = quick_suite(tmp_path, extra='[[methods]]\nname = "lora"\n')
    out = tmp_path / "out"
    proc = _lorabench("run", suite, "--out", out, "--no-progress")
    _wait_for(lambda: _workers_of(proc.pid))
    time.sleep(2.0)  # the worker is importing / loading
    for pid in _workers_of(proc.pid):
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    [path] = (out / "runs").glob("*.json")
    record = load_record(path)
    assert record["status"] in ("killed", "oom")  # oom only if this machine's counters rose
    if record["status"] == "killed":
        assert (
            "killed by SIGKILL (possibly the out-of-memory killer; no evidence found)"
            in (record["error"])
        )
    assert "killed" in stdout


@pytest.mark.slow
def test_two_processes_on_one_results_folder_split_the_runs(tmp_path):
    extra = "".join(f'[[methods]]\nname = "base"\nlabel = "base-{i}"\n' for i in range(2))
    suite = quick_suite(tmp_path, extra=extra + '[[methods]]\nname = "lora"\n')
    out = tmp_path / "out"
    first = _lorabench("run", suite, "--out", out, "--no-progress")
    _wait_for(lambda: list((out / "runs").glob("*.job")) or first.poll() is not None)
    second = _lorabench("run", suite, "--out", out, "--no-progress")
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    records = [load_record(p) for p in (out / "runs").glob("*.json")]
    assert sorted(r["label"] for r in records) == ["base-0", "base-1", "lora"]
    # each run was executed by one of the two processes: the other skipped it
    executed = [
        line for out, _ in outputs for line in out.splitlines() if re.search(r"\d+ s$", line)
    ]
    assert len(executed) == 3, outputs
