"""Training data for the driver: (context, completion) pairs → token ids with masked labels.

Loss is taken on completion tokens only. Context and completion are tokenised separately,
exactly as lm-eval's ``generate_until`` sees the context and produces the completion.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorabench.errors import ConfigError
from lorabench.train import IGNORE_INDEX, Example


def load_train_pairs(
    train_data: str | dict, tasks: list[str], tasks_dir: Path | None
) -> list[tuple[str, str]]:
    """(context, completion) pairs from the suite's ``train_data`` setting."""
    from lorabench.tasks import synthetic as task_data

    if train_data == "tasks":
        if tasks_dir is None:
            raise ConfigError("train_data = 'tasks' needs a tasks_dir with train splits")
        pairs = []
        for task in tasks:
            pairs += [
                task_data.format_example(row)
                for row in task_data.load_split(tasks_dir, task, "train")
            ]
        return pairs
    if isinstance(train_data, dict) and "jsonl" in train_data:
        path = Path(train_data["jsonl"])
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [_pair(row, train_data) for row in rows[: train_data.get("limit")]]
    if isinstance(train_data, dict) and "hf_dataset" in train_data:
        import datasets

        ds = datasets.load_dataset(
            train_data["hf_dataset"],
            data_files=train_data.get("data_files"),
            split=train_data.get("split", "train"),
        )
        limit = train_data.get("limit")
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        return [_pair(row, train_data) for row in ds]
    raise ConfigError(
        f"train_data: expected 'tasks', {{jsonl=...}} or {{hf_dataset=...}}, got {train_data!r}"
    )


def load_validation_pairs(tasks: list[str], tasks_dir: Path) -> list[tuple[str, str]]:
    """(context, completion) pairs of the tasks' validation splits, in the training format:
    the held-out set of the validation loss (``[train] eval_every``)."""
    from lorabench.tasks import synthetic as task_data

    return [
        task_data.format_example(row)
        for task in tasks
        for row in task_data.load_split(tasks_dir, task, task_data.VALIDATION_SPLIT)
    ]


def _pair(row: dict, spec: dict) -> tuple[str, str]:
    """A row with prompt/answer fields, or chat ``messages`` (last assistant turn = completion)."""
    messages = row.get(spec.get("messages_field", "messages"))
    if messages:
        *history, last = messages
        context = "".join(f"{m['role']}: {m['content']}\n" for m in history) + "assistant:"
        return context, " " + last["content"] + "\n"
    prompt, answer = spec.get("prompt_field", "prompt"), spec.get("answer_field", "answer")
    if prompt not in row or answer not in row:
        raise ConfigError(
            f"train_data row lacks '{prompt}'/'{answer}' (or messages): {sorted(row)}"
        )
    return row[prompt], " " + str(row[answer]).strip() + "\n"


def apply_chat(tokenizer, context: str, completion: str) -> tuple[str, str]:
    """Wrap a pair in the tokenizer's chat template (the model is used as it was tuned)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_template = true, but the tokenizer has no chat template")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": context.strip()}], tokenize=False, add_generation_prompt=True
    )
    return prompt, completion.strip() + (tokenizer.eos_token or "")


def tokenize_pairs(
    tokenizer, pairs: list[tuple[str, str]], max_length: int, chat: bool = False
) -> list[Example]:
    if chat:
        pairs = [apply_chat(tokenizer, c, a) for c, a in pairs]
    contexts = tokenizer([c for c, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    examples = []
    for ctx, comp in zip(contexts, completions, strict=True):
        ids = (ctx + comp)[:max_length]
        labels = ([IGNORE_INDEX] * len(ctx) + comp)[:max_length]
        if any(label != IGNORE_INDEX for label in labels):  # keep only examples with an answer
            examples.append(Example(ids, labels))
    return examples
