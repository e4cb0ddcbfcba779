"""The command line: `list`, `params` and one-line errors."""

import json
from pathlib import Path

import pytest

from lorabench.cli import main

LLAMA_7B = str(Path(__file__).parent / "data" / "llama-2-7b-config.json")
FFN = "gate_proj,up_proj,down_proj"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "method,sets,expected",
    [
        ("lora", ["r=16"], 23_199_744),
        ("mor", ["r=8", "num_experts=8"], 23_205_888),
        ("melora", ["r=16", "n=8"], 23_199_744),
        ("mora", ["r=16", "mora_type=6"], 23_238_144),
        ("moe-lora", ["r=2", "num_experts=8"], 28_114_944),
    ],
)
def test_params_on_llama2_7b_match_the_methods_table(capsys, method, sets, expected):
    argv = ["params", "--model", LLAMA_7B, "--method", method, "--targets", FFN, "--json"]
    for s in sets:
        argv += ["--set", s]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    result = json.loads(out)
    assert result["trainable_params"] == expected == result["formula_params"]
    assert result["base_params"] == 6_738_415_616
    assert result["percent"] == pytest.approx(100 * expected / 6_738_415_616, abs=1e-6)
    assert result["adapted_modules"] == 96


def test_params_on_tiny_and_on_a_model_folder(capsys, tmp_path):
    code, out, _ = run(capsys, "params", "--method", "lora", "--json")
    tiny = json.loads(out)
    assert code == 0 and tiny["model"] == "tiny" and tiny["trainable_params"] > 0
    (tmp_path / "config.json").write_text(Path(LLAMA_7B).read_text())
    code, out, _ = run(
        capsys,
        "params",
        "--model",
        str(tmp_path),
        "--method",
        "lora",
        "--set",
        "r=16",
        "--targets",
        FFN,
        "--json",
    )
    assert json.loads(out)["trainable_params"] == 23_199_744


def test_params_human_readable(capsys):
    code, out, _ = run(
        capsys, "params", "--model", LLAMA_7B, "--method", "lora", "--set", "r=16", "--targets", FFN
    )
    assert out.strip() == (
        "lora on "
        + LLAMA_7B
        + ": 23,199,744 trainable parameters (0.3443 % of 6,738,415,616) in 96 layers"
    )


def test_list_shows_methods_fields_defaults_and_knob(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("lora", "mora", "melora", "moe-lora", "moe-lora-top2", "mor"):
        assert f"\n{name} — " in "\n" + out
    assert "size knob: r" in out and "mora_type" in out and "use_rslora" in out
    code, out, _ = run(capsys, "list", "--json")
    listing = json.loads(out)
    assert listing["mora"]["fields"]["mora_type"]["default"] == 6
    assert listing["melora"]["fields"]["n"]["type"] == "int"
    assert listing["mor"]["mergeable"] is False and listing["lora"]["size_knob"] == "r"


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--method", "nope"],
            "unknown method 'nope'; known methods: ia3, loha, lokr, lora, melora",
        ),
        (["--method", "lora", "--set", "rank=4"], "method 'lora' has no config field 'rank'"),
        (["--method", "lora", "--set", "r=four"], "lora.r: expected an integer, got 'four'"),
        (
            ["--method", "melora", "--set", "n=3"],
            "melora.n=3 must divide both d_in=128 and d_out=128",
        ),
        (["--method", "lora", "--targets", "c_attn"], "target 'c_attn' matched no module"),
        (
            ["--method", "lora", "--model", "no/such/model"],
            "model 'no/such/model' is neither a built-in (tiny, smollm2)",
        ),
    ],
)
def test_bad_input_is_one_line_error(capsys, argv, message):
    code, out, err = run(capsys, "params", *argv)
    assert code == 2 and out == ""
    assert err.startswith("lorabench: error: ") and message in err
    assert err.count("\n") == 1


COMMITTED = Path(__file__).parents[1] / "reports" / "tiny" / "runs"


def _saved(tmp_path, name: str, **changes) -> Path:
    """A committed record copied into a results folder ``tmp_path/results/runs``."""
    raw = json.loads((COMMITTED / name).read_text())
    raw.update(changes)
    path = tmp_path / "results" / "runs" / name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize(
    "record,argv,message",
    [
        (None, ["nothing.json"], "run 'nothing.json': no such record file or adapter folder; "
         "give RESULTS/runs/<run_id>.json, or the run id with --results RESULTS"),
        ("lora-lr0.003-seed0-308b0b34.json", ["lora-seed0-xxxxxxxx", "--results", "{results}"],
         "run 'lora-seed0-xxxxxxxx': no record {results}/runs/lora-seed0-xxxxxxxx.json"),
        ("full-lr0.001-seed0-00d89320.json", ["{path}"],
         "run full-lr0.001-seed0-00d89320: full fine-tuning; its weights are not saved"),
        ("lora-lr0.003-seed0-308b0b34.json", ["{path}", "--limit", "0"],
         "limit: expected an integer >= 1, got 0"),
        ("lora-lr0.003-seed0-308b0b34.json", ["{path}", "--num-fewshot", "-1"],
         "num_fewshot: expected an integer >= 0, got -1"),
        ("lora-lr0.003-seed0-308b0b34.json", ["{path}"],
         "run lora-lr0.003-seed0-308b0b34: its record does not say where its tasks_dir 'tasks' is "
         "(recorded before env.suite_root); give the tasks folder (--tasks-dir)"),
        ("lora-lr0.003-seed0-308b0b34.json", ["{path}", "--tasks-dir", "{results}/gone"],
         "run lora-lr0.003-seed0-308b0b34: {results}/gone: no tasks (expected <task>/<task>.yaml "
         "folders)"),
        ("lora-lr0.003-seed0-308b0b34.json", ["{path}", "--tasks", "lb_nope", "--tasks-dir",
                                      str(Path(__file__).parents[1] / "suites" / "tasks")],
         "run lora-lr0.003-seed0-308b0b34: unknown task(s) lb_nope in "),
    ],
)  # fmt: skip
def test_eval_of_a_run_it_cannot_load_is_a_one_line_error(capsys, tmp_path, record, argv, message):
    path = _saved(tmp_path, record) if record else tmp_path / "none"
    results = str(tmp_path / "results")
    argv = [a.format(path=path, results=results) for a in argv]
    code, out, err = run(capsys, "eval", *argv)
    assert code == 2 and out == ""
    assert err.startswith("lorabench: error: ") and message.format(results=results) in err
    assert err.count("\n") == 1


def test_eval_of_an_unfinished_run_says_its_status(capsys, tmp_path):
    path = _saved(tmp_path, "lora-lr0.003-seed0-308b0b34.json", status="failed", error="boom")
    code, _, err = run(capsys, "eval", str(path), "--tasks-dir", str(tmp_path))
    assert code == 2
    assert (
        err
        == "lorabench: error: run lora-lr0.003-seed0-308b0b34: status failed; it saved no adapter\n"
    )
