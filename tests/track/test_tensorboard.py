"""The tensorboard tracker: event files in the run directory, read back with TensorBoard's own reader."""
import json
from collections import defaultdict

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import chargpt
from chargpt.runs.rundir import read_metrics
from conftest import TINY_GPT, run_main


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def text(acc: EventAccumulator, tag: str) -> str:
    (event,) = acc.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def test_train_tracker_tensorboard_writes_every_metrics_record_images_and_summary_as_event_files(dataset_dir,
                                                                                              tmp_path):
    p = run_main("train", "--data", dataset_dir, *TINY_GPT, "--log-interval", "5", "--name", "t", "--tracker",
                 "tensorboard", cwd=tmp_path, check=True)
    run_dir = tmp_path / "runs/t"
    assert f"tensorboard: writing runs/t/tensorboard; view with: tensorboard --logdir runs/t/tensorboard" in p.stdout
    acc = events(run_dir)
    logged = defaultdict(set)  # (key, step) -> values: a step with a training record and an evaluation has two lr
    for key in acc.Tags()["scalars"]:
        for event in acc.Scalars(key):
            logged[key, event.step].add(event.value)
    records = read_metrics(run_dir)
    assert {r["step"] for r in records} == {0, 5, 10, 15, 20}
    for record in records:  # the same record feeds metrics.jsonl and the tracker: every key, every step
        for key, value in record.items():
            if key != "step":
                assert any(v == pytest.approx(value, rel=1e-6) for v in logged[key, record["step"]]), (key, record)
    summary = json.loads((run_dir / "summary.json").read_text())
    (val_loss_full,) = logged["summary/val_loss_full", 20]
    assert val_loss_full == pytest.approx(summary["val_loss_full"], rel=1e-6)
    images = {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    assert sorted(images) == ["attention", "loss_curve"]
    assert all(image.step == 20 and image.width > 100 for (image,) in images.values())
    assert "1 layer x 2 heads" in text(acc, "attention/caption")  # the label `chargpt attention` writes
    assert summary["sample"] in text(acc, "sample").replace("\n    ", "\n")
    # where each checkpoint is: the final one last (best.pt before it when that is an earlier step)
    models = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("model/text_summary")]
    assert models[-1].startswith(("latest, best, step-20: runs/t/ckpt.pt", "latest, step-20: runs/t/ckpt.pt"))
    assert len(models) == 1 or models[0].startswith("best, step-") and "runs/t/best.pt" in models[0]


def test_the_library_writes_the_same_event_files_with_tracker_tensorboard(dataset_dir, tmp_path, capfd):
    run = chargpt.train("cpu", dataset_dir, out_dir=tmp_path, name="p", tracker="tensorboard", n_layer=1, n_embd=16,
                        n_head=2, block_size=8, batch_size=4, max_steps=6, eval_interval=3, eval_iters=1,
                        sample_tokens=0, compile=False, device="cpu", threads=1, verbose=False)
    acc = events(run.path)
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [
        (r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in run.metrics if "val_loss" in r]
    assert json.loads(text(acc, "config").replace("\n    ", "\n"))["model"]["n_embd"] == 16
