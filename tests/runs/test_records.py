"""The figures a run reports are named and computed in one place, and every door reports them under those names."""
import json
import math

import pytest

from chargpt.data.dataset import load_dataset
from chargpt.runs import records
from chargpt.training.evaluate import PassResult
from conftest import run_main


def test_a_metrics_record_counts_tokens_and_their_rate_from_the_step():
    record = records.metrics_record(10, {"loss": 2.5}, lr=1e-3, tokens_per_step=256, seconds=2.0)
    assert record == {"step": 10, "loss": 2.5, "lr": 1e-3, "tokens_seen": 2560, "train_seconds": 2.0,
                      "tokens_per_sec": 1280.0}
    assert records.throughput(0, 256, 0.0) == {"tokens_seen": 0, "tokens_per_sec": 0.0}


def test_a_full_pass_is_named_after_its_split_with_bits_per_char_from_nats():
    result = PassResult(loss=math.log(2), tokens=100, split_tokens=200, stderr=0.01)
    figures = records.full_pass(result, 1.23456)
    assert figures == {"val_loss_full": math.log(2), "val_bpc_full": pytest.approx(1.0),
                       "val_loss_full_exact": False, "val_loss_full_stderr": 0.01, "val_eval_tokens": 100,
                       "val_tokens": 200, "eval_seconds": 1.235}
    assert "train_bpc_full" in records.full_pass(result, 1.0, "train")


def test_the_run_config_records_the_dataset_once_for_config_json_and_the_trackers(tiny_run, dataset_dir):
    from chargpt.config import Config
    from chargpt.track.tracker import run_config

    saved = json.loads((tiny_run / "config.json").read_text())
    data = load_dataset(dataset_dir)
    assert saved["dataset"] == records.dataset_entry(data)
    assert saved == records.run_config(Config.from_dict(saved), data, "cpu", saved["data_dir"])
    tracked = run_config(Config.from_dict(saved), None, data, "cpu", data_dir=saved["data_dir"])
    assert {k: v for k, v in tracked.items() if k not in ("run_dir", "provenance")} == saved


def test_eval_json_uses_the_summary_names_and_keeps_the_short_ones(tiny_run, tmp_path):
    summary = json.loads((tiny_run / "summary.json").read_text())
    scored = json.loads(run_main("eval", "--ckpt", tiny_run, "--json", "--device", "cpu", check=True).stdout)
    for name in ("val_loss_full", "val_bpc_full", "val_loss_full_exact", "val_eval_tokens", "val_tokens"):
        assert scored[name] == pytest.approx(summary[name]), name
    assert scored["loss"] == scored["val_loss_full"] and scored["bpc"] == scored["val_bpc_full"]


def test_eval_json_is_standard_json_when_a_figure_is_not_finite(tiny_run, tmp_path):
    """Finite weights so large that every logit overflows: the loss is NaN, which `--json` printed as NaN (no JSON
    parser in a browser or jq reads it); JSON that leaves chargpt says null."""
    import shutil

    from chargpt.fsutil import load_torch, save_torch
    from chargpt.runs import checkpoint

    shutil.copytree(tiny_run, tmp_path / "run")
    state = load_torch(tmp_path / "run" / "ckpt.pt")
    state["model"]["lm_head.weight"].fill_(1e38)
    state["checksum"] = checkpoint.digest(state)
    save_torch(tmp_path / "run" / "ckpt.pt", state)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    p = run_main("eval", "--ckpt", tmp_path / "run" / "ckpt.pt", "--json", "--eval-tokens", "64", "--device", "cpu")
    scored = json.loads(p.stdout, parse_constant=refuse)
    assert p.returncode == 0 and scored["loss"] is None and scored["val_loss_full"] is None and scored["tokens"] == 64
    assert records.json_text({"a": [float("inf"), -float("inf"), 1.5], "b": (float("nan"),)}) == \
        '{"a": [null, null, 1.5], "b": [null]}'
