"""The embedded base model ``tiny``: a tokenizer and a small Llama pretrained here, offline.

Built once per cache folder: generate a corpus (`lorabench.models.corpus`), train a byte-level BPE
tokenizer with `tokenizers`, pretrain a `LlamaForCausalLM` with the shared training
driver, report held-out perplexity, then ``save_pretrained`` — so every run loads it
through the same ``from_pretrained`` path as a real model. Deterministic per seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorabench.models.cache import build_once, cache_root
from lorabench.models.corpus import generate_corpus, split_corpus
from lorabench.train import IGNORE_INDEX, Example, TrainConfig, train

log = logging.getLogger(__name__)

HELDOUT_FILE = "lorabench_heldout.txt"  # perplexity text; any model folder may carry one
INFO_FILE = "lorabench_pretrain.json"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 as in tiny_config


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the tiny model; its hash names the cache folder."""

    version: int = 4
    seed: int = 0
    corpus_lines: int = 24000
    heldout_lines: int = 600
    vocab_size: int = 1024
    block_size: int = 128
    steps: int = 900
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 50

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def tiny_model_dir(recipe: PretrainRecipe = PretrainRecipe()) -> Path:
    return cache_root() / "models" / f"tiny-v{recipe.version}-{recipe.digest()}"


def tiny_config(vocab_size: int = 1024) -> LlamaConfig:
    """The embedded default: a ~1 M-parameter Llama (pretrained below)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def ensure_tiny_model(recipe: PretrainRecipe = PretrainRecipe(), progress: bool = True) -> Path:
    """The cached tiny model folder, building it first if absent (safe across processes)."""
    return build_once(
        tiny_model_dir(recipe),
        INFO_FILE,
        lambda tmp: build_tiny_model(tmp, recipe, progress=progress),
        "the embedded base model 'tiny' (a few minutes)",
    )


def train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text (task IDs, digits, symbols) is encodable."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def pack_blocks(token_lines: list[list[int]], block_size: int) -> list[Example]:
    """Concatenate lines and cut fixed-length blocks; loss on every token."""
    stream = [t for line in token_lines for t in line]
    return [
        Example(stream[i : i + block_size], stream[i : i + block_size])
        for i in range(0, len(stream) - block_size + 1, block_size)
    ]


def heldout_perplexity(model, tokenizer, lines: list[str], batch_size: int = 32) -> float:
    """Token-level perplexity of ``lines`` (each scored on its own, newline appended)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(lines), batch_size):
            enc = tokenizer(
                [line + "\n" for line in lines[start : start + batch_size]],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
            logits = model(**enc).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1),
                labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_nll += nll.item()
            total_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1))


def build_tiny_model(folder: Path, recipe: PretrainRecipe, progress: bool = True) -> dict:
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    lines = generate_corpus(recipe.seed, recipe.corpus_lines + recipe.heldout_lines)
    # held-out lines that repeat a training line verbatim are dropped (generalisation only)
    train_lines, heldout = split_corpus(lines, recipe.heldout_lines / len(lines))
    tokenizer = train_tokenizer(train_lines, recipe.vocab_size)
    # Lines end with "\n", as task answers do, so the newline token is well trained.
    ids = tokenizer([line + "\n" for line in train_lines], add_special_tokens=False)["input_ids"]
    examples = pack_blocks(ids, recipe.block_size)
    config = tiny_config(vocab_size=len(tokenizer))
    model = LlamaForCausalLM(config)
    untrained_ppl = heldout_perplexity(model, tokenizer, heldout)
    cfg = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        weight_decay=0.01,
        max_length=recipe.block_size,
    )
    result = train(model, examples, cfg, seed=recipe.seed, desc="pretrain tiny", progress=progress)
    ppl = heldout_perplexity(model, tokenizer, heldout)
    info = {
        "recipe": asdict(recipe),
        "params": sum(p.numel() for p in model.parameters()),
        "train_tokens": result.tokens,
        "final_loss": result.loss_curve[-1],
        "heldout_perplexity": ppl,
        "untrained_perplexity": untrained_ppl,
        "build_seconds": time.perf_counter() - started,
    }
    log.info(
        "tiny model: %d params, held-out perplexity %.2f (untrained %.1f), built in %.0f s",
        info["params"],
        ppl,
        untrained_ppl,
        info["build_seconds"],
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / HELDOUT_FILE).write_text("\n".join(heldout) + "\n")
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
