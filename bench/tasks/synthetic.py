"""The embedded multi-task benchmark: synthetic task families, generated once, committed as data.

Tasks are data. This module only *generates* ``suites/tasks`` (run
``lorabench make-tasks --out suites/tasks --seed 0``) and reads it back:

    suites/tasks/_default_template_yaml     settings shared by every task (not a task itself)
    suites/tasks/lorabench_tiny.yaml        lm-eval group of all tasks
    suites/tasks/<task>/train.jsonl         rows for the training driver
    suites/tasks/<task>/validation.jsonl    rows carved out of the training data (never trained
                                            on): the score that picks hyperparameters
    suites/tasks/<task>/test.jsonl          held-out rows, evaluated by lm-eval
    suites/tasks/<task>/<task>.yaml         the lm-eval task

A task has one name everywhere (folder, lm-eval task, results key): ``lb_<what>``, e.g.
``lb_kv_memory``; the prefix keeps clear of lm-eval's built-in task names.

Every row has ``prompt`` and ``answer``; multiple-choice rows add ``choices`` and ``label``
(``choices[label] == answer``). Training and evaluation see one text format:
``format_example`` gives ``(context, completion)`` = ``(prompt, " " + answer + "\\n")``.

* generation tasks: lm-eval generates from ``prompt`` until ``"\\n"``, strips whitespace and
  compares with ``answer`` (metric key ``exact_match,strip``);
* multiple choice: lm-eval scores ``prompt`` + ``" " + choice`` for each choice (its
  ``target_delimiter`` is ``" "``) and picks the most likely (metric key ``acc,none``).

The task configs are pure data (no ``!function``): ``dataset_path: json`` with ``data_files``
relative to each task YAML, which lorabench's evaluator hands to lm-eval as absolute paths
(see :mod:`lorabench.tasks.lm_eval_yaml`).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lorabench.errors import ConfigError

Row = dict[str, Any]
Splits = tuple[list[Row], list[Row], list[Row]]  # (train, validation, test)

ANSWER_PREFIX = " "  # lm-eval's target_delimiter: between prompt and answer
ANSWER_END = "\n"  # lm-eval's `until`: ends every answer
TASK_PREFIX = "lb_"  # every task name starts with it
GROUP_NAME = "lorabench_tiny"
GENERATION_METRIC = "exact_match,strip"  # "<metric>,<filter name>" in lm-eval results
CHOICE_METRIC = "acc,none"
TEMPLATE_FILE = "_default_template_yaml"  # no .yaml suffix: lm-eval does not index it as a task
VALIDATION_SPLIT = "validation"  # <task>/validation.jsonl: picks hyperparameters (lr)

# family -> (n_train, n_validation, n_test). The one place to change sizes. Tasks of one
# family share it. The validation rows are carved out of a training pool of n_train +
# n_validation rows (drawn last from the family's seeded stream, so train and test rows are
# those of the two-split generator); they are never trained on and disjoint from test.
# Calibrated so that, at suites/tiny's budget, the 0.9 M-parameter base model is near chance
# and adapted models land in between (see the calibration note in docs/suites.md).
SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    # n_train = number of pairs (each KV_REPEATS times); test = all keys. Validation: further
    # pairs that are never trained on, so its score is at chance by construction (a
    # memorisation task cannot be validated on unseen pairs); kept so every task has one.
    "kv_memory": (64, 32, 64),
    "list_ops": (500, 100, 100),  # per task; the same input lists under every list task
    "arithmetic": (240, 60, 100),  # of the 400 sums a + b with a, b < 20
    "word_swap": (500, 100, 100),
    "sentiment": (500, 100, 100),
}
N_CHOICES = 4  # multiple choice: the answer and three plausible wrong ones (chance 1/4)
KV_REPEATS = 8  # memorisation needs several passes over each pair
LIST_ALPHABET = "abcdefghkmnoprst"  # letters; lists of 3-4 of them

LIST_OPS: dict[str, Callable[[list[str]], list[str]]] = {
    "reverse": lambda items: items[::-1],
    "sort": sorted,
    "rotate": lambda items: items[1:] + items[:1],  # first item moves to the end
}
SENTIMENT_CHOICES = ["negative", "positive"]  # label index = position here
POSITIVE_WORDS = (
    "good great lovely tasty friendly clean quiet fresh pleasant superb excellent nice "
    "wonderful cosy cheerful"
).split()
NEGATIVE_WORDS = (
    "bad awful rude dirty noisy stale bland boring terrible poor horrible dull gross slow cramped"
).split()
REVIEW_SUBJECTS = (
    "food room staff service music bread soup bed view coffee waiter price hotel show film "
    "book game trip seat cake"
).split()
INTENSIFIERS = ("", "", "very ", "really ", "quite ")


def format_example(row: Mapping[str, Any]) -> tuple[str, str]:
    """``(context, completion)``: train on both, with loss on the completion only.

    The completion starts with a space and the context ends without one, so a byte-level
    BPE splits ``context + completion`` at the boundary: tokenising the two apart (as the
    driver does) gives the same tokens as tokenising them together (as lm-eval does).
    """
    return row["prompt"], ANSWER_PREFIX + row["answer"] + ANSWER_END


def _row(tag: str, task_input: str, answer: str) -> Row:
    return {"prompt": f"{tag}: {task_input} =", "answer": answer}


def _with_choices(row: Row, wrong: Sequence[str], rng: random.Random) -> Row:
    """Make ``row`` multiple choice: its answer among ``wrong`` ones, in a random order."""
    choices = [row["answer"], *wrong]
    rng.shuffle(choices)
    return {**row, "choices": choices, "label": choices.index(row["answer"])}


def _carve(rows: list[Row], count: int, rng: random.Random) -> tuple[list[Row], list[Row]]:
    """``(kept, carved)``: ``count`` of ``rows`` drawn by ``rng``; both keep the rows' order."""
    picked = set(rng.sample(range(len(rows)), count))
    return (
        [row for i, row in enumerate(rows) if i not in picked],
        [row for i, row in enumerate(rows) if i in picked],
    )


def _unique(draw: Callable[[], Any], count: int, reject: Callable[[Any], bool] = lambda _: False):
    """``count`` distinct values of ``draw()`` in drawing order, skipping ``reject``-ed ones."""
    seen: dict[Any, None] = {}
    while len(seen) < count:
        value = draw()
        if not reject(value):
            seen.setdefault(value, None)
    return list(seen)


# --- the families: each builder returns {task name: (train, validation, test rows)} ----------


def kv_memory(rng: random.Random, n_train: int, n_val: int, n_test: int) -> dict[str, Splits]:
    """Key→value memorisation with random 3-character IDs: a capacity test (MoRA's claim).

    Memorisation is the point, so the test split queries keys that ARE in the train split
    (a random subset of them); nothing about a value can be inferred from its key. Each
    pair appears ``KV_REPEATS`` times in train. The validation split holds further pairs,
    never trained on (so disjoint from train and test): chance level by construction.
    """
    alphabet = string.ascii_lowercase + string.digits

    def draw() -> str:
        return "".join(rng.choices(alphabet, k=3))

    keys = _unique(draw, n_train)
    values = _unique(draw, n_train)
    rows = []
    for i, key in enumerate(keys):  # the wrong choices are other keys' values
        others = rng.sample(values[:i] + values[i + 1 :], N_CHOICES - 1)
        rows.append(_with_choices(_row("lookup", key, values[i]), others, rng))
    test = rng.sample(rows, n_test)
    train = rows * KV_REPEATS
    rng.shuffle(train)
    taken = set(keys)
    val_keys = _unique(draw, n_val, lambda key: key in taken)
    val_values = [draw() for _ in val_keys]
    validation = []
    for key, value in zip(val_keys, val_values, strict=True):
        others = rng.sample([v for v in values + val_values if v != value], N_CHOICES - 1)
        validation.append(_with_choices(_row("lookup", key, value), others, rng))
    return {"kv_memory": (train, validation, test)}


def list_ops(rng: random.Random, n_train: int, n_val: int, n_test: int) -> dict[str, Splits]:
    """Several tasks, ONE input format: ``<op>: <letters> =``; only the tag word says what to do.

    The multi-task setting that MoR and MoE-LoRA target. Every task sees the same input
    lists (train inputs, and disjoint validation and test inputs), and each input's outputs
    under the different ops all differ from each other and from the input, so the tag must
    be read.
    """

    def draw() -> tuple[str, ...]:
        return tuple(rng.sample(LIST_ALPHABET, rng.randint(3, 4)))

    def ambiguous(items: tuple[str, ...]) -> bool:
        outputs = {tuple(op(list(items))) for op in LIST_OPS.values()} | {items}
        return len(outputs) < len(LIST_OPS) + 1

    inputs = _unique(draw, n_train + n_val + n_test, ambiguous)
    pool, test_inputs = inputs[: n_train + n_val], inputs[n_train + n_val :]

    def candidates(items: tuple[str, ...]) -> list[str]:
        # the same four candidates under every tag: only the tag tells which is right
        outs = [" ".join(op(list(items))) for op in LIST_OPS.values()] + [" ".join(items)]
        rng.shuffle(outs)
        return outs

    shared = {items: candidates(items) for items in inputs}
    train_inputs, val_inputs = _carve(pool, n_val, rng)  # the same inputs under every op

    def rows(op: str, batch: list[tuple[str, ...]]) -> list[Row]:
        out = []
        for items in batch:
            answer = " ".join(LIST_OPS[op](list(items)))
            row = _row(op, " ".join(items), answer)
            out.append({**row, "choices": shared[items], "label": shared[items].index(answer)})
        return out

    return {
        f"list_{op}": (rows(op, train_inputs), rows(op, val_inputs), rows(op, test_inputs))
        for op in LIST_OPS
    }


def arithmetic(rng: random.Random, n_train: int, n_val: int, n_test: int) -> dict[str, Splits]:
    """Addition of two numbers below 20; the test sums are not in train (generalisation)."""
    pool = n_train + n_val
    problems = _unique(lambda: (rng.randint(0, 19), rng.randint(0, 19)), pool + n_test)
    rows = []
    for a, b in problems:
        total = a + b
        near = [t for t in (total - 2, total - 1, total + 1, total + 2, total + 10) if t >= 0]
        wrong = [str(t) for t in rng.sample(near, N_CHOICES - 1)]
        rows.append(_with_choices(_row("math", f"{a} + {b}", str(total)), wrong, rng))
    train, validation = _carve(rows[:pool], n_val, rng)
    return {"arithmetic": (train, validation, rows[pool:])}


SWAP_WORDS = (
    "cat dog fox owl hen cow pig bee ant bat red blue green pink grey box cup hat map pen "
    "sun sea tree lamp door key ball book ship"
).split()


def word_swap(rng: random.Random, n_train: int, n_val: int, n_test: int) -> dict[str, Splits]:
    """A string transform on whole words: swap the first and last of three; test triples are new.

    Character-level transforms (spelling a word backwards) are out of reach for a small
    BPE model whose tokens hide their letters; a word-level transform is not.
    """
    pool = n_train + n_val
    triples = _unique(lambda: tuple(rng.sample(SWAP_WORDS, 3)), pool + n_test)
    rows = []
    for a, b, c in triples:
        wrong = [f"{a} {b} {c}", f"{b} {c} {a}", f"{c} {a} {b}"]  # unchanged, and the rotations
        rows.append(_with_choices(_row("swap", f"{a} {b} {c}", f"{c} {b} {a}"), wrong, rng))
    train, validation = _carve(rows[:pool], n_val, rng)
    return {"word_swap": (train, validation, rows[pool:])}


def sentiment(rng: random.Random, n_train: int, n_val: int, n_test: int) -> dict[str, Splits]:
    """Multiple choice: is a short review negative or positive? Chance is 1/2.

    A clause is ``the <thing> was [not] [very] <adjective>``; ``not`` flips it. A review is
    one clause, two of the same polarity joined by ``and``, or two opposite ones joined by
    ``but``, where the clause after ``but`` decides. Labels are balanced in every split;
    validation and test reviews are not in train.
    """

    def clause(positive: bool) -> str:
        negated = rng.random() < 0.25
        adjective = rng.choice(POSITIVE_WORDS if positive != negated else NEGATIVE_WORDS)
        modifiers = ("not " if negated else "") + rng.choice(INTENSIFIERS)
        return f"the {rng.choice(REVIEW_SUBJECTS)} was {modifiers}{adjective}"

    def draw(label: int) -> Callable[[], str]:
        def review() -> str:
            positive, shape = bool(label), rng.random()
            if shape < 0.5:
                return clause(positive)
            if shape < 0.8:
                return f"{clause(positive)} and {clause(positive)}"
            return f"{clause(not positive)} but {clause(positive)}"

        return review

    train: list[Row] = []
    test: list[Row] = []
    for label, answer in enumerate(SENTIMENT_CHOICES):  # each split is half and half
        n_label_train, n_label_test = (n_train + n_val + label) // 2, (n_test + label) // 2
        texts = _unique(draw(label), n_label_train + n_label_test)
        rows = [
            {**_row("review", text, answer), "choices": SENTIMENT_CHOICES, "label": label}
            for text in texts
        ]
        train += rows[:n_label_train]
        test += rows[n_label_train:]
    rng.shuffle(train)
    rng.shuffle(test)
    picked = set()
    for label in range(len(SENTIMENT_CHOICES)):  # half and half again
        of_label = [i for i, row in enumerate(train) if row["label"] == label]
        picked |= set(rng.sample(of_label, (n_val + label) // 2))
    validation = [row for i, row in enumerate(train) if i in picked]
    train = [row for i, row in enumerate(train) if i not in picked]
    return {"sentiment": (train, validation, test)}


FAMILIES: dict[str, Callable[[random.Random, int, int, int], dict[str, Splits]]] = {
    "kv_memory": kv_memory,
    "list_ops": list_ops,
    "arithmetic": arithmetic,
    "word_swap": word_swap,
    "sentiment": sentiment,
}


def generate_tasks(
    seed: int = 0, sizes: Mapping[str, tuple[int, int, int]] = SPLIT_SIZES
) -> dict[str, Splits]:
    """Every task's ``(train, validation, test)`` rows; the same for the same seed and sizes.

    Each family draws from its own random stream, so resizing one family changes no other.
    """
    tasks: dict[str, Splits] = {}
    for family, build in FAMILIES.items():
        rng = random.Random(f"lorabench-tasks:{seed}:{family}")  # str seeds hash stably
        tasks.update(
            {TASK_PREFIX + name: splits for name, splits in build(rng, *sizes[family]).items()}
        )
    return tasks


# --- files ------------------------------------------------------------------------------------


def write_tasks(
    out_dir: str | Path, seed: int = 0, sizes: Mapping[str, tuple[int, int, int]] = SPLIT_SIZES
) -> list[str]:
    """(Re)write the task files under ``out_dir`` byte-for-byte deterministically; the task names."""
    out = Path(out_dir)
    tasks = generate_tasks(seed, sizes)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / TEMPLATE_FILE, _template_yaml())
    for task, (train, validation, test) in tasks.items():
        folder = out / task
        folder.mkdir(exist_ok=True)
        for split, rows in (("train", train), (VALIDATION_SPLIT, validation), ("test", test)):
            _write_text(folder / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        _write_text(folder / f"{task}.yaml", _task_yaml(task, train + validation + test, seed))
    group = {"group": GROUP_NAME, "task": list(tasks), "metadata": {"version": 1.0}}
    _write_text(out / f"{GROUP_NAME}.yaml", _HEADER + _yaml(group))
    return list(tasks)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


_HEADER = "# Generated by `lorabench make-tasks`; edit bench/tasks/synthetic.py, not this file.\n"


class _Tagged(str):
    """A YAML scalar written as is, e.g. a tag (the shipped tasks use none: they are pure data)."""


def _yaml(mapping: Mapping[str, Any], indent: int = 0) -> str:
    """Block-style YAML for nested dicts; other values in JSON form (which is valid YAML)."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"{'  ' * indent}{key}:\n{_yaml(value, indent + 1)}")
        else:
            text = value if isinstance(value, _Tagged) else json.dumps(value)
            lines.append(f"{'  ' * indent}{key}: {text}\n")
    return "".join(lines)


def _template_yaml() -> str:
    shared = {
        "dataset_path": "json",  # datasets' json builder over each task's data_files
        "test_split": "test",
        "fewshot_split": "train",  # only used if someone asks for few-shot (e.g. a base model)
        "num_fewshot": 0,
        "target_delimiter": ANSWER_PREFIX,
        "fewshot_delimiter": ANSWER_END,  # a few-shot example then reads exactly like a train row
    }
    return (
        _HEADER
        + "# Settings that every task YAML includes. Pure data, no code tags. Each task's\n"
        + "# data_files are relative to its YAML; lorabench passes them to lm-eval as absolute\n"
        + "# paths (lorabench.tasks.lm_eval_yaml), as lm-eval alone resolves them against the cwd.\n"
        + _yaml(shared)
    )


_MEAN = {"aggregation": "mean", "higher_is_better": True}
_STRIP = [{"function": "remove_whitespace"}, {"function": "take_first"}]


def _task_yaml(task: str, rows: Sequence[Row], seed: int) -> str:
    config: dict[str, Any] = {
        "include": f"../{TEMPLATE_FILE}",
        "task": task,
        "dataset_kwargs": {
            "data_files": {
                "train": "train.jsonl",
                VALIDATION_SPLIT: f"{VALIDATION_SPLIT}.jsonl",  # scored by lorabench, not lm-eval
                "test": "test.jsonl",
            }
        },
        "doc_to_text": "{{prompt}}",
    }
    if "choices" in rows[0]:
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",  # the row's own field: choices differ per row
            "doc_to_target": "{{label}}",  # a digit string → an index into the choices
            "metric_list": [{"metric": "acc", **_MEAN}],
        }
    else:
        longest = max(len(format_example(row)[1]) for row in rows)  # ASCII: tokens <= characters
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {
                "until": [ANSWER_END],
                "do_sample": False,
                "max_gen_toks": longest,
            },
            "filter_list": [{"name": "strip", "filter": _STRIP}],  # " answer" → "answer"
            "metric_list": [{"metric": "exact_match", **_MEAN}],
        }
    config["metadata"] = {"version": 1.0, "seed": seed}
    return _HEADER + _yaml(config)


# --- reading ----------------------------------------------------------------------------------


def list_tasks(tasks_dir: str | Path) -> list[str]:
    """The task folders under ``tasks_dir`` (those holding ``<task>/<task>.yaml``), sorted."""
    return sorted(
        p.parent.name for p in Path(tasks_dir).glob("*/*.yaml") if p.stem == p.parent.name
    )


def resolve_tasks(tasks_dir: str | Path, tasks: str | Sequence[str]) -> list[str]:
    """Task names from a suite's ``tasks`` setting, checked against ``tasks_dir``.

    ``"all"`` or the group name ``lorabench_tiny`` (alone or in a list) means every task;
    a string may also be a comma-separated list.
    """
    available = list_tasks(tasks_dir)
    if not available:
        raise ConfigError(f"{tasks_dir}: no tasks (expected <task>/<task>.yaml folders)")
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    chosen: dict[str, None] = {}  # ordered, without repeats
    for name in filter(None, names):
        chosen.update(dict.fromkeys(available if name in ("all", GROUP_NAME) else [name]))
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise ConfigError(
            f"unknown task(s) {', '.join(unknown)} in {tasks_dir}; available: {', '.join(available)}"
        )
    return list(chosen)


def prepare_task_folder(tasks_dir: str | Path) -> Path:
    """The folder to give lm-eval (``TaskManager(include_path=...)``) for ``tasks_dir``.

    This checks the folder and returns its absolute path; the evaluator gives lm-eval a copy
    of its YAMLs with absolute data paths (``lorabench.tasks.lm_eval_yaml``).
    """
    folder = Path(tasks_dir).resolve()
    if not (folder / TEMPLATE_FILE).is_file():
        raise ConfigError(f"{folder} is not a lorabench tasks folder (no {TEMPLATE_FILE})")
    return folder


def load_split(tasks_dir: str | Path, task: str, split: str) -> list[Row]:
    """The rows of ``<tasks_dir>/<task>/<split>.jsonl`` (``train``, ``validation`` or ``test``)."""
    return _read_jsonl(Path(tasks_dir) / task / f"{split}.jsonl")


def has_validation(tasks_dir: str | Path, tasks: Sequence[str]) -> bool:
    """Whether every one of ``tasks`` has a validation split (``<task>/validation.jsonl``)."""
    return all((Path(tasks_dir) / task / f"{VALIDATION_SPLIT}.jsonl").is_file() for task in tasks)


def primary_metric(tasks_dir: str | Path, task: str) -> str:
    """The key of the task's score in lm-eval's ``results[task]``.

    The per-example score in ``samples`` is under the part before the comma.
    """
    first = load_split(tasks_dir, task, "test")[0]
    return CHOICE_METRIC if "choices" in first else GENERATION_METRIC


def _read_jsonl(path: Path) -> list[Row]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
