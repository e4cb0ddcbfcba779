"""The embedded benchmark data: corpus, task generation, and the lm-eval plumbing."""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

import pytest

from lorabench.errors import ConfigError
from lorabench.models.corpus import generate_corpus, split_corpus
from lorabench.tasks.synthetic import (
    ANSWER_END,
    GROUP_NAME,
    LIST_OPS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SENTIMENT_CHOICES,
    SPLIT_SIZES,
    format_example,
    list_tasks,
    load_split,
    prepare_task_folder,
    primary_metric,
    resolve_tasks,
    write_tasks,
)

TASKS_DIR = Path(__file__).resolve().parents[1] / "suites" / "tasks"
SMALL_SIZES = {family: (40, 8, 10) for family in SPLIT_SIZES}
PROMPT = re.compile(r"^(?P<tag>[a-z]+): (?P<input>.+) =$")


def all_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- corpus -----------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_english_like():
    lines = generate_corpus(0, 2000)
    assert lines == generate_corpus(0, 2000)
    assert lines != generate_corpus(1, 2000)
    lengths = [len(line.split()) for line in lines]
    assert min(lengths) >= 5 and max(lengths) <= 30
    assert len(set(lines)) > 0.9 * len(lines)


def test_corpus_holds_no_task_format():
    words = {w for line in generate_corpus(0, 5000) for w in re.findall(r"[a-z]+", line)}
    text = "\n".join(generate_corpus(0, 5000))
    assert not set(text) & set(":=+-")
    tags = {"lookup", "math", "swap", "review", *LIST_OPS}
    assert not words & (tags | set(SENTIMENT_CHOICES) | set(POSITIVE_WORDS) | set(NEGATIVE_WORDS))


def test_split_corpus_holds_out_unseen_lines():
    lines = generate_corpus(0, 1000)
    train, heldout = split_corpus(lines, 0.1)
    assert len(train) == 900 and 0 < len(heldout) <= 100
    assert not set(train) & set(heldout)


# --- generation -------------------------------------------------------------------------------


def test_generation_is_byte_deterministic(tmp_path):
    write_tasks(tmp_path / "a", seed=0, sizes=SMALL_SIZES)
    write_tasks(tmp_path / "b", seed=0, sizes=SMALL_SIZES)
    write_tasks(tmp_path / "c", seed=1, sizes=SMALL_SIZES)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")
    assert all_files(tmp_path / "a") != all_files(tmp_path / "c")


def test_committed_tasks_match_the_generator(tmp_path):
    write_tasks(tmp_path, seed=0)  # if this fails: lorabench make-tasks --out suites/tasks
    assert all_files(tmp_path) == all_files(TASKS_DIR)


def test_every_row_has_the_shared_format():
    families = ("kv_memory", "list_reverse", "list_sort", "list_rotate", "arithmetic")
    families += ("word_swap", "sentiment")
    assert list_tasks(TASKS_DIR) == sorted("lb_" + name for name in families)
    for task in list_tasks(TASKS_DIR):
        for split in SPLITS:
            for row in load_split(TASKS_DIR, task, split):
                context, completion = format_example(row)
                assert PROMPT.match(context), context
                assert completion == f" {row['answer']}{ANSWER_END}"
                assert row["answer"] == row["answer"].strip() and "\n" not in row["answer"]
                if "choices" in row:
                    assert row["choices"][row["label"]] == row["answer"]


SPLITS = ("train", "validation", "test")


def content_hashes(rows: list[dict]) -> set[str]:
    """sha256 of each row's prompt and choices (multiple choice) or target (generation)."""
    import hashlib
    import json

    return {
        hashlib.sha256(
            json.dumps([r["prompt"], r.get("choices", r["answer"])]).encode()
        ).hexdigest()
        for r in rows
    }


def test_splits_are_disjoint_except_memorisation():
    for task in list_tasks(TASKS_DIR):
        train = {r["prompt"]: r["answer"] for r in load_split(TASKS_DIR, task, "train")}
        test = {r["prompt"]: r["answer"] for r in load_split(TASKS_DIR, task, "test")}
        if task == "lb_kv_memory":  # memorisation by design: every test key is a train key
            assert test.items() <= train.items()
        else:
            assert not train.keys() & test.keys(), task


@pytest.mark.parametrize("sizes", [None, SMALL_SIZES], ids=["committed", "small"])
def test_validation_is_disjoint_from_train_and_test(sizes, tmp_path):
    """Carved from the training pool with the generation seed; never trained on, never tested.

    Disjoint on content hashes of prompt + choices/target, and on prompts alone (so no
    training row asks the same question with other choices).
    """
    folder = TASKS_DIR
    if sizes is not None:
        folder = tmp_path / "tasks"
        write_tasks(folder, seed=3, sizes=sizes)
    for task in list_tasks(folder):
        rows = {split: load_split(folder, task, split) for split in SPLITS}
        validation = content_hashes(rows["validation"])
        assert len(validation) == len(rows["validation"]) > 0, task  # no repeats
        assert not validation & content_hashes(rows["train"]), task
        assert not validation & content_hashes(rows["test"]), task
        prompts = {r["prompt"] for r in rows["validation"]}
        assert not prompts & {r["prompt"] for r in rows["train"] + rows["test"]}, task


def test_validation_is_carved_out_of_the_training_pool():
    """Train + validation of the three-split generator = train of a two-split one (pool)."""
    from lorabench.tasks.synthetic import generate_tasks

    pooled = {family: (n + v, 0, t) for family, (n, v, t) in SPLIT_SIZES.items()}
    unsplit = generate_tasks(0, pooled)
    for task, (train, validation, test) in generate_tasks(0).items():
        if task == "lb_kv_memory":
            continue  # its validation pairs are new (memorisation cannot be validated)
        key = content_hashes
        assert key(train) | key(validation) == key(unsplit[task][0]), task
        assert key(test) == key(unsplit[task][2]), task


def test_list_tasks_share_inputs_and_differ_in_outputs():
    for split in SPLITS:
        by_op = {op: load_split(TASKS_DIR, f"lb_list_{op}", split) for op in LIST_OPS}
        inputs = {
            op: [PROMPT.match(r["prompt"])["input"] for r in rows] for op, rows in by_op.items()
        }
        assert len({tuple(v) for v in inputs.values()}) == 1  # same inputs, same order
        assert {PROMPT.match(rows[0]["prompt"])["tag"] for rows in by_op.values()} == set(LIST_OPS)
        for answers in zip(*([r["answer"] for r in rows] for rows in by_op.values()), strict=True):
            assert len(set(answers)) == len(LIST_OPS)


def test_sentiment_is_balanced():
    for split in SPLITS:
        labels = [r["label"] for r in load_split(TASKS_DIR, "lb_sentiment", split)]
        assert abs(sum(labels) * 2 - len(labels)) <= 1


# --- lm-eval ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """lm-eval over the committed tasks as the evaluator gives them: data files absolute."""
    from lm_eval.tasks import TaskManager

    from lorabench.tasks.lm_eval_yaml import lm_eval_task_folder

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tmp = tmp_path_factory.mktemp("lm_eval_tasks")
    folder = lm_eval_task_folder(TASKS_DIR, tmp / "tasks", tmp / "cache")
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate_corpus(0, 300), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def evaluate(model, task_manager, **kwargs) -> dict:
    import lm_eval

    return lm_eval.simple_evaluate(
        model=model,
        tasks=[GROUP_NAME],
        task_manager=task_manager,
        bootstrap_iters=0,
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
        **kwargs,
    )


def test_group_holds_every_task(task_manager):
    loaded = task_manager.load([GROUP_NAME])["tasks"]
    assert sorted(loaded) == list_tasks(TASKS_DIR)
    for name, task in loaded.items():
        first = load_split(TASKS_DIR, name, "test")[0]
        doc = task.test_docs()[0]
        assert task.doc_to_text(doc) == format_example(first)[0]


def test_context_and_completion_tokenise_apart_as_together(tiny_tokenizer):
    # The driver tokenises context and completion apart; lm-eval tokenises them together.
    for task in list_tasks(TASKS_DIR):
        rows = load_split(TASKS_DIR, task, "train")[:200] + load_split(TASKS_DIR, task, "test")
        contexts, completions = zip(*map(format_example, rows), strict=True)
        encode = partial(tiny_tokenizer, add_special_tokens=False)
        joint = encode([c + d for c, d in zip(contexts, completions, strict=True)])["input_ids"]
        context_ids = encode(list(contexts))["input_ids"]
        completion_ids = encode(list(completions))["input_ids"]
        assert list(map(list.__add__, context_ids, completion_ids)) == joint, task


def test_resolve_and_prepare(tmp_path):
    every = list_tasks(TASKS_DIR)
    assert resolve_tasks(TASKS_DIR, "all") == every
    assert resolve_tasks(TASKS_DIR, [GROUP_NAME, "lb_sentiment"]) == every
    assert resolve_tasks(TASKS_DIR, "lb_arithmetic, lb_kv_memory") == [
        "lb_arithmetic",
        "lb_kv_memory",
    ]
    with pytest.raises(ConfigError, match="lb_nope"):
        resolve_tasks(TASKS_DIR, ["lb_nope"])
    assert prepare_task_folder(TASKS_DIR) == TASKS_DIR.resolve()
    with pytest.raises(ConfigError):
        prepare_task_folder(tmp_path)


def oracle_lm(wrong: bool = False):
    """An lm-eval model that answers each test row with its training completion (or wrongly)."""
    from lm_eval.api.model import LM

    rows = [r for t in list_tasks(TASKS_DIR) for r in load_split(TASKS_DIR, t, "test")]
    completions = dict(map(format_example, rows))

    class Oracle(LM):
        def generate_until(self, requests, disable_tqdm=False):
            outputs = []
            for context, gen_kwargs in (r.args for r in requests):
                text = " nonsense\n" if wrong else completions[context] + "and more"
                for stop in gen_kwargs["until"]:  # as HFLM cuts its generations
                    text = text.split(stop)[0]
                outputs.append(text)
            return outputs

        def loglikelihood(self, requests, disable_tqdm=False):
            def score(context: str, continuation: str) -> tuple[float, bool]:
                right = continuation + ANSWER_END == completions[context]
                return (0.0, True) if right != wrong else (-5.0, False)

            return [score(*r.args) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return Oracle()


def test_exact_match_and_acc_score_the_training_completion(task_manager):
    perfect = evaluate(oracle_lm(), task_manager)["results"]
    hopeless = evaluate(oracle_lm(wrong=True), task_manager)["results"]
    for task in list_tasks(TASKS_DIR):
        key = primary_metric(TASKS_DIR, task)
        assert perfect[task][key] == 1.0, task
        assert hopeless[task][key] == 0.0, task


def test_simple_evaluate_runs_a_tiny_llama(task_manager, tiny_tokenizer):
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaForCausalLM

    from lorabench.models.zoo import tiny_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(vocab_size=len(tiny_tokenizer)))
    lm = HFLM(pretrained=model, tokenizer=tiny_tokenizer, batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls gain nothing from threads, and lose 10x on a busy box
    try:
        out = evaluate(lm, task_manager, limit=3, log_samples=True)
    finally:
        torch.set_num_threads(threads)
    for task in list_tasks(TASKS_DIR):
        key = primary_metric(TASKS_DIR, task)
        assert 0.0 <= out["results"][task][key] <= 1.0
        samples = out["samples"][task]
        assert [s["doc_id"] for s in samples] == [0, 1, 2]
        assert all(key.split(",")[0] in s for s in samples)
