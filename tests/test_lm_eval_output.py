"""lm-eval's own output kept per run, every metric it reports, and the primary metric."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorabench.errors import ConfigError


def test_merged_outputs_and_metric_tables():
    from lorabench.run.lm_eval_output import merge_outputs, task_metrics

    a = {"results": {"t1": {"alias": "t1", "acc,none": np.float64(0.5), "acc_stderr,none": "N/A"}},
         "n-samples": {"t1": {"original": 10, "effective": 4}},
         "config": {"limit": 4}, "date": 1.0}  # fmt: skip
    b = {"results": {"t2": {"alias": "t2", "exact_match,none": 1, "exact_match_stderr,none": 0.0}},
         "n-samples": {"t2": {"original": 3, "effective": 3}},
         "config": {"limit": None}, "date": 2.0}  # fmt: skip
    merged = merge_outputs([a, b])
    assert sorted(merged["results"]) == ["t1", "t2"] and sorted(merged["n-samples"]) == ["t1", "t2"]
    assert merged["config"] == {"limit": 4} and merged["date"] == 1.0  # the first call's
    assert task_metrics(merged["results"]) == {
        "t1": {"acc,none": 0.5, "acc_stderr,none": None},
        "t2": {"exact_match,none": 1.0, "exact_match_stderr,none": 0.0},
    }


def test_results_and_samples_are_written_as_lm_eval_writes_them(tmp_path):
    from lm_eval.utils import handle_non_serializable

    from lorabench.run.lm_eval_output import write_lm_eval_output

    sample = {"doc_id": 0, "arguments": [("ctx", " a"), ("ctx", " b")], "resps": [[(-1.0, True)]],
              "filtered_resps": [(-1.0, True)], "target": 0, "acc": np.float32(1.0)}  # fmt: skip
    output = {"results": {"t": {"acc,none": np.float64(1.0)}}, "samples": {"t": [sample]},
              "config": {"limit": {1, 2}}}  # fmt: skip
    paths = write_lm_eval_output(tmp_path, output)
    assert paths == [tmp_path / "results.json"]  # no samples without log_samples
    text = (tmp_path / "results.json").read_text()
    expected = {"results": output["results"], "config": output["config"]}
    assert text == json.dumps(
        expected, indent=2, default=handle_non_serializable, ensure_ascii=False
    )
    assert json.loads(text)["config"]["limit"] == [1, 2]
    paths = write_lm_eval_output(tmp_path, output, log_samples=True, split="validation")
    assert [p.name for p in paths] == ["results_validation.json", "samples_validation_t.jsonl"]
    line = json.loads(paths[1].read_text())
    assert line["arguments"] == {
        "gen_args_0": {"arg_0": "ctx", "arg_1": " a"},
        "gen_args_1": {"arg_0": "ctx", "arg_1": " b"},
    }
    assert line["target"] == "0" and line["acc"] == 1.0
    assert output["samples"]["t"][0]["target"] == 0  # the caller's samples are untouched


def test_a_named_primary_metric_must_be_reported():
    from lorabench.run.evaluate import _primary_key

    result = {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.6}
    assert _primary_key("t", result, None) == "acc,none"
    assert _primary_key("t", result, "acc_norm") == "acc_norm,none"
    with pytest.raises(ConfigError) as info:
        _primary_key("t", result, "f1")
    assert str(info.value) == (
        "eval.primary.t: lm-eval reported no metric 'f1' for t (it reported: acc, acc_norm)"
    )
