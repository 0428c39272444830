"""Every bad input of every entry point gets one line on stderr, a non-zero exit, no traceback, and leaves the
files that were already there untouched (issue 7, section 3), and exits 2, the code of bad input. Each row runs
in-process (`main(argv)`); a few of each kind also run as `python -m chargpt` for real."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from chargpt.runs import checkpoint
from chargpt.runs.rundir import RunDir
from chargpt.cli import main
from chargpt.errors import EXIT_USAGE

from conftest import ckpt_commands, on_cpu, run_main

TINY = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2", "--sample-tokens", "20",
        "--threads", "1", "--device", "cpu", "--no-compile"]


def chargpt(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, errors="replace")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` with its kind, and for files their bytes' hash and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        elif not stat.S_ISREG(st.st_mode):  # a FIFO or a device: its kind and identity, never its contents
            out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev, st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, _sha256(p, st))
    return out


_HASHES: dict[tuple, str] = {}


def _sha256(p: Path, st: os.stat_result) -> str:
    """The file's hash, read again only when its inode, size, mtime or ctime changed: any write changes its ctime,
    which no call can set back (the workspace holds dozens of datasets, snapshotted twice by each row)."""
    key = (p, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return _HASHES[key]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, dataset_dir, tiny_run) -> Path:
    """A working directory with a dataset, a finished run and bad files of every kind, built once."""
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(dataset_dir, root / "data")
    (root / "corpus.txt").write_text("hello world, this is a small corpus. " * 40)
    (root / "tiny.txt").write_text("too short for a block\n")
    (root / "two.txt").write_text("ab")
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 20)
    (root / "afile").write_text("a plain file where a directory is expected\n")
    (root / "emptydir").mkdir()
    with contextlib.chdir(root), contextlib.redirect_stdout(io.StringIO()):
        for name, corpus in (("data_tiny", "tiny.txt"), ("data_other", "corpus.txt")):
            assert main(["prepare", "--input", corpus, "--out", name]) == 0
    shutil.copytree(tiny_run, root / "runs" / "base")  # the session's run: every reader's rows read it
    RunDir(root / "runs" / "base").mark_latest()
    base = root / "runs" / "base"
    for name, mangle in (("truncated", lambda b: b[: len(b) // 2]), ("garbage", lambda b: os.urandom(4096)),
                         ("emptyckpt", lambda b: b""), ("textckpt", lambda b: b"hello there, not a checkpoint\n")):
        (root / "runs" / name).mkdir()
        shutil.copy(base / "config.json", root / "runs" / name / "config.json")
        (root / "runs" / name / "ckpt.pt").write_bytes(mangle((base / "ckpt.pt").read_bytes()))
    # A checkpoint whose recorded config claims another model shape than its weights.
    state = torch.load(base / "ckpt.pt", weights_only=True)
    state["config"]["model"]["n_embd"] = 64
    state["checksum"] = checkpoint.digest(state)  # consistent, so what is tested is the shape
    (root / "runs" / "othershape").mkdir()
    torch.save(state, root / "runs" / "othershape" / "ckpt.pt")
    # A valid torch file that is not a checkpoint (a dataset split).
    (root / "runs" / "tensor").mkdir()
    shutil.copy(root / "data" / "train.pt", root / "runs" / "tensor" / "ckpt.pt")
    # A dataset whose split file is not a tensor file.
    shutil.copytree(root / "data", root / "data_corrupt")
    (root / "data_corrupt" / "train.pt").write_bytes(b"not a tensor file")
    damage_datasets(root)
    damage_checkpoints(root, state_of=lambda: torch.load(base / "ckpt.pt", weights_only=True))
    damage_runs(root, base)
    # A user's own directory (not a chargpt dataset) holding files named like a dataset's.
    (root / "userdir").mkdir()
    (root / "userdir" / "train.pt").write_bytes(b"the user's own train.pt\n")
    (root / "userdir" / "meta.json").write_text('{"mine": true}\n')
    return root


def damage_datasets(root: Path) -> None:
    """Dataset directories edited by hand, from another version, or damaged (issue 11, section 3)."""
    meta = json.loads((root / "data" / "meta.json").read_text())
    train = torch.load(root / "data" / "train.pt", weights_only=True)
    def copy(name: str) -> Path:
        shutil.copytree(root / "data", root / name)
        return root / name
    for name, tensor in (("data_bool", train.bool()), ("data_complex", train.to(torch.complex64)),
                         ("data_float", train.float()), ("data_2d", train[: len(train) // 2 * 2].reshape(2, -1))):
        torch.save(tensor, copy(name) / "train.pt")
    for name, text in (("meta_list", "[1, 2]"), ("meta_null", "null"), ("meta_string", '"chargpt-dataset"'),
                       ("meta_vocab_list", json.dumps(meta | {"vocab": list(meta["vocab"])})),
                       ("meta_vocab_int", json.dumps(meta | {"vocab": 65})),
                       ("meta_hash_int", json.dumps(meta | {"train_sha256": 12345})),
                       ("meta_huge_vocab", json.dumps(meta | {"vocab": "".join(map(chr, range(0x100, 0x100 + 100_000))),
                                                              "vocab_size": 100_000})),
                       ("meta_size_str", json.dumps(meta | {"vocab_size": "65"}))):
        (copy(name) / "meta.json").write_text(text)
    (copy("meta_bad_utf8") / "meta.json").write_bytes(b'{"format": "chargpt-dataset", "vocab": "\xff\xfe"}')
    # The same meta.json over a train.pt with other contents (same length, same ids): only the files tell.
    torch.save(train.flip(0).clone(), copy("data_swapped") / "train.pt")


def damage_checkpoints(root: Path, state_of) -> None:
    """Checkpoints with missing or wrong-typed fields, their checksums recomputed (so only the structure is wrong)."""
    def drop(key):
        return lambda s: s.pop(key)
    def put(key, value):
        return lambda s: s.__setitem__(key, value)
    def rng(**fields):
        return lambda s: s["rng"].update(fields)
    for name, edit in (("ck_rng_torch_short", rng(torch=torch.zeros(3, dtype=torch.uint8))),
                       ("ck_rng_torch_zeros", rng(torch=torch.zeros(5056, dtype=torch.uint8))),
                       ("ck_rng_rank_short", rng(batch_per_rank=[torch.zeros(3, dtype=torch.uint8)])),
                       ("ck_rng_python_index", rng(python=[0] * 624 + [4_000_000_000])),
                       ("ck_rng_python_version", rng(python_version=7)),
                       ("ck_nostep", drop("step")), ("ck_strstep", put("step", "3")), ("ck_extralist", put("extra", [])),
                       ("ck_norng", drop("rng")), ("ck_hashint", put("dataset_hash", 7)),
                       ("ck_configtype", lambda s: s["config"]["model"].__setitem__("n_layer", "1")),
                       ("ck_noconfig", drop("config")), ("ck_datadir", lambda s: s["extra"].__setitem__("data_dir", 5))):
        state = state_of()
        edit(state)
        state["checksum"] = checkpoint.digest(state)
        (root / "runs" / name).mkdir()
        torch.save(state, root / "runs" / name / "ckpt.pt")


def damage_runs(root: Path, base: Path) -> None:
    """Runs whose own files were damaged; resuming one must refuse before it writes anything."""
    for name, file, text in (("run_summary_list", "summary.json", "[]"), ("run_summary_null", "summary.json", "null"),
                             ("run_config_list", "config.json", "[]"),
                             ("run_metrics_bad", "metrics.jsonl", '{"step": 0, "val_loss": 4.2}\nnot json\n{"step": 1}\n')):
        shutil.copytree(base, root / "runs" / name, symlinks=True)
        (root / "runs" / name / file).write_text(text)





# (id, argv, a fragment the one line must contain (lower case))
ROWS = [
    # -- prepare: missing, empty, binary, non-UTF-8 input; val fraction outside (0, 1); unwritable output
    ("prepare-missing-input", ["prepare", "--input", "nope.txt", "--out", "data"], "does not exist"),
    ("prepare-input-is-dir", ["prepare", "--input", "emptydir", "--out", "data"], "is not a file"),
    ("prepare-empty-input", ["prepare", "--input", "empty.txt", "--out", "data"], "empty"),
    ("prepare-binary-input", ["prepare", "--input", "binary.bin", "--out", "data"], "binary"),
    ("prepare-non-utf8-input", ["prepare", "--input", "latin1.txt", "--out", "data"], "utf-8"),
    ("prepare-too-short-to-split", ["prepare", "--input", "two.txt", "--out", "data"], "too few"),
    ("prepare-val-fraction-0", ["prepare", "--input", "corpus.txt", "--out", "data", "--val-fraction", "0"], "val-fraction"),
    ("prepare-val-fraction-1", ["prepare", "--input", "corpus.txt", "--out", "data", "--val-fraction", "1"], "val-fraction"),
    ("prepare-val-fraction-neg", ["prepare", "--input", "corpus.txt", "--out", "data", "--val-fraction", "-0.1"], "val-fraction"),
    ("prepare-val-fraction-nan", ["prepare", "--input", "corpus.txt", "--out", "data", "--val-fraction", "nan"], "val-fraction"),
    ("prepare-val-fraction-text", ["prepare", "--input", "corpus.txt", "--val-fraction", "half"], "val-fraction"),
    ("prepare-unwritable-out", ["prepare", "--input", "corpus.txt", "--out", "afile/data"], "afile"),
    ("prepare-bad-dtype", ["prepare", "--input", "corpus.txt", "--out", "data", "--token-dtype", "float16"], "dtype"),
    ("prepare-unknown-dataset", ["prepare", "--dataset", "wikipedia"], "wikipedia"),
    # -- train: bad dataset directories, a corpus shorter than one block
    ("train-missing-data", ["train", *TINY, "--data", "nope"], "nope"),
    ("train-data-empty-dir", ["train", *TINY, "--data", "emptydir"], "meta.json"),
    ("train-data-is-file", ["train", *TINY, "--data", "corpus.txt"], "not a dataset directory"),
    ("train-data-corrupt-split", ["train", *TINY, "--data", "data_corrupt"], "train.pt"),
    ("train-corpus-shorter-than-block", ["train", *TINY, "--data", "data_tiny"], "block"),
    # -- train: invalid configurations
    ("train-embd-not-divisible", ["train", *TINY, "--data", "data", "--n-embd", "30", "--n-head", "4"], "divisible"),
    ("train-n-layer-0", ["train", *TINY, "--data", "data", "--n-layer", "0"], "--n-layer"),
    ("train-n-embd-negative", ["train", *TINY, "--data", "data", "--n-embd", "-32"], "--n-embd"),
    ("train-n-head-0", ["train", *TINY, "--data", "data", "--n-head", "0"], "--n-head"),
    ("train-block-size-0", ["train", *TINY, "--data", "data", "--block-size", "0"], "--block-size"),
    ("train-batch-size-0", ["train", *TINY, "--data", "data", "--batch-size", "0"], "--batch-size"),
    ("train-max-steps-0", ["train", *TINY, "--data", "data", "--max-steps", "0"], "--max-steps"),
    ("train-max-steps-negative", ["train", *TINY, "--data", "data", "--max-steps", "-5"], "--max-steps"),
    ("train-eval-iters-0", ["train", *TINY, "--data", "data", "--eval-iters", "0"], "--eval-iters"),
    ("train-lr-0", ["train", *TINY, "--data", "data", "--lr", "0"], "--lr"),
    ("train-lr-negative", ["train", *TINY, "--data", "data", "--lr", "-0.001"], "--lr"),
    ("train-lr-nan", ["train", *TINY, "--data", "data", "--lr", "nan"], "--lr"),
    ("train-lr-inf", ["train", *TINY, "--data", "data", "--lr", "inf"], "--lr"),
    ("train-muon-lr-0", ["train", *TINY, "--data", "data", "--muon-lr", "0"], "--muon-lr"),
    ("train-lr-text", ["train", *TINY, "--data", "data", "--lr", "fast"], "--lr"),
    ("train-time-budget-text", ["train", *TINY, "--data", "data", "--time-budget", "soon"], "duration"),
    ("train-unknown-preset", ["train", "--preset", "huge", "--data", "data"], "huge"),
    ("train-unknown-model", ["train", *TINY, "--data", "data", "--model", "transformer-xl"], "transformer-xl"),
    ("train-unknown-device", ["train", *TINY, "--data", "data", "--device", "tpu"], "tpu"),
    ("train-device-cuda-without-cuda", ["train", *TINY, "--data", "data", "--device", "cuda"], "cuda"),
    ("train-device-cuda-99", ["train", *TINY, "--data", "data", "--device", "cuda:99"], "cuda"),
    ("train-unwritable-out-dir", ["train", *TINY, "--data", "data", "--runs-dir", "afile/runs"], "afile"),
    ("train-existing-run-name", ["train", *TINY, "--data", "data", "--name", "base"], "already exists"),
    # -- train --resume: a missing or incompatible run
    ("resume-missing-run", ["train", "--resume", "runs/nope"], "runs/nope"),
    ("resume-not-a-run", ["train", "--resume", "emptydir"], "emptydir"),
    ("resume-other-dataset", ["train", "--resume", "runs/base", "--data", "data_other"], "dataset"),
    ("resume-other-model-shape", ["train", "--resume", "runs/base", "--n-embd", "64"], "n-embd"),
    ("resume-other-optimizer", ["train", "--resume", "runs/base", "--optimizer", "adamw"], "optimizer"),
    ("resume-ckpt-config-mismatch", ["train", "--resume", "runs/othershape", "--data", "data"], "does not match"),
    ("resume-truncated-ckpt", ["train", "--resume", "runs/truncated", "--data", "data"], "truncated"),
    ("resume-garbage-ckpt", ["train", "--resume", "runs/garbage", "--data", "data"], "garbage"),
    ("resume-empty-ckpt", ["train", "--resume", "runs/emptyckpt", "--data", "data"], "emptyckpt"),
    ("resume-text-file-ckpt", ["train", "--resume", "runs/textckpt", "--data", "data"], "textckpt"),
    ("resume-tensor-not-ckpt", ["train", "--resume", "runs/tensor", "--data", "data"], "not a chargpt checkpoint"),
    ("resume-with-preset", ["train", "--resume", "runs/base", "--preset", "cpu"], "drop --preset"),
    ("init-from-with-preset", ["train", "--init-from", "runs/base", "--data", "data", "--preset", "bigram"],
     "--init-from keeps the one of the run it starts from; drop --preset"),  # ee5dced trained the GPT unasked
    ("init-from-with-config", ["train", "--init-from", "runs/base", "--data", "data", "--config", "c.toml"],
     "--config and --init-from"),
    ("train-two-trackers", ["train", *TINY, "--data", "data", "--wandb", "--tracker", "tensorboard"], "two trackers"),
    ("train-unknown-tracker", ["train", *TINY, "--data", "data", "--tracker", "mlflow"], "mlflow"),
    ("resume-unknown-device", ["train", "--resume", "runs/base", "--device", "tpu"], "tpu"),
    ("resume-invalid-override", ["train", "--resume", "runs/base", "--lr", "-1"], "--lr"),
    # -- sample: prompt outside the vocabulary, negative --max-new-tokens, other bad values
    ("sample-prompt-outside-vocab", ["sample", "--ckpt", "runs/base", "--prompt", "caf\u00e9"], "vocabulary"),
    ("sample-prompt-control-char", ["sample", "--ckpt", "runs/base", "--prompt", "a\x01b"], "vocabulary"),
    ("sample-negative-max-new-tokens", ["sample", "--ckpt", "runs/base", "--max-new-tokens", "-1"], "--max-new-tokens"),
    ("sample-num-samples-0", ["sample", "--ckpt", "runs/base", "--num-samples", "0"], "--num-samples"),
    ("sample-negative-temperature", ["sample", "--ckpt", "runs/base", "--temperature", "-1"], "--temperature"),
    ("sample-top-k-negative", ["sample", "--ckpt", "runs/base", "--top-k", "-1"], "--top-k"),
    ("sample-top-p-1.5", ["sample", "--ckpt", "runs/base", "--top-p", "1.5"], "--top-p"),
    ("sample-unknown-device", ["sample", "--ckpt", "runs/base", "--device", "tpu"], "tpu"),
    ("sample-device-cuda-without-cuda", ["sample", "--ckpt", "runs/base", "--device", "cuda"], "cuda"),
    # -- eval: a dataset that does not fit the checkpoint
    ("eval-other-vocabulary", ["eval", "--ckpt", "runs/base", "--data", "data_other"], "vocabulary"),
    ("eval-missing-data", ["eval", "--ckpt", "runs/base", "--data", "nope"], "nope"),
    ("eval-unknown-split", ["eval", "--ckpt", "runs/base", "--split", "test"], "split"),
    # -- issue 11, section 1: never replace what is not ours
    ("prepare-into-user-dir", ["prepare", "--input", "corpus.txt", "--out", "userdir"], "not a chargpt dataset"),
    ("prepare-over-own-input", ["prepare", "--input", "data/train.pt", "--out", "data"], "input"),
    ("prepare-out-is-file", ["prepare", "--input", "corpus.txt", "--out", "corpus.txt"], "not a directory"),
    ("train-name-outside-out-dir", ["train", *TINY, "--data", "data", "--name", "../x"], "plain run name"),
    ("train-name-latest", ["train", *TINY, "--data", "data", "--name", "latest"], "plain run name"),
    ("train-name-absolute", ["train", *TINY, "--data", "data", "--name", "/tmp/x"], "plain run name"),
    ("train-out-dir-is-file", ["train", *TINY, "--data", "data", "--runs-dir", "corpus.txt"], "corpus.txt"),
    # -- issue 11, section 2: sizes that cannot fit, bounds, non-finite values, one line before any work
    ("train-batch-size-huge", ["train", *TINY, "--data", "data", "--batch-size", "100000000"], "--batch-size"),
    ("train-block-size-huge-learned", ["train", *TINY, "--data", "data", "--block-size", "100000", "--pos", "learned"],
     "--block-size"),
    ("train-sample-tokens-huge", ["train", *TINY, "--data", "data", "--sample-tokens", str(10 ** 20)], "--sample-tokens"),
    ("train-n-layer-huge", ["train", *TINY, "--data", "data", "--n-layer", "100000000"], "--n-layer"),
    ("train-threads-huge", ["train", *TINY, "--data", "data", "--threads", "100000"], "--threads"),
    ("train-nproc-0", ["train", *TINY, "--data", "data", "--nproc", "0"], "--nproc"),
    ("train-nproc-huge", ["train", *TINY, "--data", "data", "--nproc", "100000"], "--nproc"),
    ("train-nproc-2-bad-argument", ["train", *TINY, "--data", "data", "--nproc", "2", "--lr", "-1"], "--lr"),
    ("train-beta1-nan", ["train", *TINY, "--data", "data", "--beta1", "nan"], "--beta1"),
    ("train-beta2-1.5", ["train", *TINY, "--data", "data", "--beta2", "1.5"], "--beta2"),
    ("train-beta2-1", ["train", *TINY, "--data", "data", "--beta2", "1"], "--beta2"),
    ("train-grad-clip-inf", ["train", *TINY, "--data", "data", "--grad-clip", "inf"], "--grad-clip"),
    ("train-grad-clip-nan", ["train", *TINY, "--data", "data", "--grad-clip", "nan"], "--grad-clip"),
    ("train-logit-softcap-nan", ["train", *TINY, "--data", "data", "--logit-softcap", "nan"], "--logit-softcap"),
    ("train-logit-softcap-inf", ["train", *TINY, "--data", "data", "--logit-softcap", "inf"], "--logit-softcap"),
    ("train-weight-decay-nan", ["train", *TINY, "--data", "data", "--weight-decay", "nan"], "--weight-decay"),
    ("train-dropout-nan", ["train", *TINY, "--data", "data", "--dropout", "nan"], "--dropout"),
    ("train-seed-beyond-64-bits", ["train", *TINY, "--data", "data", "--seed", str(2 ** 70)], "--seed"),
    ("train-seed-negative", ["train", *TINY, "--data", "data", "--seed", "-1"], "--seed"),
    ("sample-temperature-nan", ["sample", "--ckpt", "runs/base", "--temperature", "nan"], "--temperature"),
    ("sample-temperature-inf", ["sample", "--ckpt", "runs/base", "--temperature", "inf"], "--temperature"),
    ("sample-top-p-nan", ["sample", "--ckpt", "runs/base", "--top-p", "nan"], "--top-p"),
    ("sample-seed-beyond-64-bits", ["sample", "--ckpt", "runs/base", "--seed", str(2 ** 70)], "--seed"),
    ("sample-max-new-tokens-huge", ["sample", "--ckpt", "runs/base", "--max-new-tokens", str(10 ** 20)], "--max-new-tokens"),
    ("sample-num-samples-huge", ["sample", "--ckpt", "runs/base", "--num-samples", str(10 ** 8),
                                 "--max-new-tokens", "1000"], "--num-samples"),
    # -- issue 11, section 3: damaged datasets, checkpoints and runs
    *((f"train-{name}", ["train", *TINY, "--data", name], "not a chargpt dataset") for name in (
        "data_bool", "data_complex", "data_float", "data_2d", "meta_list", "meta_null", "meta_string",
        "meta_vocab_list", "meta_vocab_int", "meta_hash_int", "meta_huge_vocab", "meta_size_str", "meta_bad_utf8")),
    ("resume-swapped-dataset-files", ["train", "--resume", "runs/base", "--data", "data_swapped"], "differ"),
    *((f"resume-{name}", ["train", "--resume", f"runs/{name}", "--data", "data"], "not a chargpt checkpoint")
      for name in ("ck_nostep", "ck_strstep", "ck_extralist", "ck_norng", "ck_hashint", "ck_configtype", "ck_noconfig",
                   "ck_datadir")),
    *((f"resume-{name}", ["train", "--resume", f"runs/{name}", "--data", "data"],
       f"runs/{name}/ckpt.pt is not a chargpt checkpoint ('rng.{field}")
      for name, field in (("ck_rng_torch_short", "torch"), ("ck_rng_torch_zeros", "torch"),
                          ("ck_rng_rank_short", "batch_per_rank[0]"), ("ck_rng_python_index", "python"),
                          ("ck_rng_python_version", "python"))),
    ("resume-summary-list", ["train", "--resume", "runs/run_summary_list"], "summary.json"),
    ("resume-summary-null", ["train", "--resume", "runs/run_summary_null"], "summary.json"),
    ("resume-config-list", ["train", "--resume", "runs/run_config_list"], "config.json"),
    ("resume-metrics-bad-line", ["train", "--resume", "runs/run_metrics_bad"], "metrics.jsonl"),
    # -- a file that is no run's, named where a run is meant: the line names it, not a ckpt.pt beside it
    ("resume-a-plain-file", ["train", "--resume", "corpus.txt"],
     "cannot resume 'corpus.txt': its directory . holds no ckpt.pt"),
    ("resume-a-datasets-file", ["train", "--resume", "data/meta.json"],
     "cannot resume 'data/meta.json': its directory data holds no ckpt.pt"),
    ("runs-plot-a-plain-file", ["runs", "--plot", "corpus.txt", "--out", "p.png"],
     "no run 'corpus.txt': a file but not a chargpt checkpoint"),
    # -- the command line itself
    ("no-command", [], "command"),
    ("unknown-command", ["frobnicate"], "frobnicate"),
    ("unknown-flag", ["train", "--learning-rate", "1"], "--learning-rate"),
]

# Every checkpoint reader gets the same bad checkpoints.
for _cmd in ckpt_commands():
    ROWS += [
        (f"{_cmd}-missing-ckpt", [_cmd, "--ckpt", "runs/nope", *on_cpu(_cmd)], "runs/nope"),
        (f"{_cmd}-truncated-ckpt", [_cmd, "--ckpt", "runs/truncated", *on_cpu(_cmd)], "truncated"),
        (f"{_cmd}-garbage-ckpt", [_cmd, "--ckpt", "runs/garbage", *on_cpu(_cmd)], "garbage"),
        (f"{_cmd}-empty-ckpt", [_cmd, "--ckpt", "runs/emptyckpt", *on_cpu(_cmd)], "emptyckpt"),
        (f"{_cmd}-text-file-ckpt", [_cmd, "--ckpt", "runs/textckpt", *on_cpu(_cmd)], "textckpt"),
        (f"{_cmd}-tensor-not-ckpt", [_cmd, "--ckpt", "runs/tensor", *on_cpu(_cmd)], "not a chargpt checkpoint"),
        (f"{_cmd}-ckpt-of-another-model", [_cmd, "--ckpt", "runs/othershape", *on_cpu(_cmd)], "does not match"),
        *((f"{_cmd}-{name}", [_cmd, "--ckpt", f"runs/{name}", *on_cpu(_cmd)], "not a chargpt checkpoint")
          for name in ("ck_nostep", "ck_strstep", "ck_extralist", "ck_norng", "ck_hashint", "ck_configtype",
                       "ck_noconfig", "ck_datadir")),
    ]


# A device index torch cannot parse (beyond 2^31, or digits of another script), in every command that takes --device.
for _dev in ("cuda:99999999999999999999", "cuda:2147483648", "cuda:\u0663"):
    ROWS += [(f"train-device-{_dev}", ["train", *TINY, "--data", "data", "--device", _dev], _dev),
             (f"resume-device-{_dev}", ["train", "--resume", "runs/base", "--device", _dev], _dev),
             *((f"{_cmd}-device-{_dev}", [_cmd, "--ckpt", "runs/base", *on_cpu(_cmd), "--device", _dev], _dev)
               for _cmd in ckpt_commands() if "--device" in on_cpu(_cmd))]


# Every row runs in-process (`main(argv)`); these also run as real processes, one of each kind: a command's bad
# value, a bad file of each reader, and the usage errors argparse itself answers.
PROCESS_ROWS = {
    "prepare-missing-input", "train-embd-not-divisible", "resume-other-dataset", "sample-prompt-outside-vocab",
    "eval-other-vocabulary", "attention-truncated-ckpt", "train-nproc-2-bad-argument", "unknown-flag",
}


def _param(row_id, argv, fragment):
    marks = [pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")] if "without-cuda" in row_id else []
    return pytest.param(argv, fragment, id=row_id, marks=marks)


def check_one_line(code: int, stdout: str, stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0, f"exit 0:\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr + stdout, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert fragment.lower() in lines[0].lower(), lines[0]


def check_unchanged(before: dict, after: dict) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed: {changed}"


@pytest.fixture(scope="module")
def process_results(ws, tmp_path_factory) -> dict[str, tuple]:
    """Run every issue row as a real process, several at once, each in its own copy of the workspace."""
    def one(row):
        row_id, argv, _ = row
        home = tmp_path_factory.mktemp(row_id) / "ws"
        shutil.copytree(ws, home, symlinks=True)
        before = snapshot(home)
        p = chargpt(*argv, cwd=home)
        return row_id, (p, before, snapshot(home))

    rows = [r for r in ROWS if r[0] in PROCESS_ROWS]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, rows))


@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [_param(*r) for r in ROWS if r[0] in PROCESS_ROWS])
def test_bad_input_gets_one_line_and_changes_nothing(process_results, request, argv, fragment):
    p, before, after = process_results[request.node.callspec.id]
    check_one_line(p.returncode, p.stdout, p.stderr, fragment)
    check_unchanged(before, after)


@pytest.mark.parametrize("argv, fragment", [_param(*r) for r in ROWS])
def test_bad_input_in_process_gets_one_line_and_changes_nothing(ws, argv, fragment, monkeypatch, capsys):
    monkeypatch.chdir(ws)
    before = snapshot(ws)
    code = main(argv)
    out, err = capsys.readouterr()
    check_one_line(code, out, err, fragment)
    assert code == EXIT_USAGE, code
    check_unchanged(before, snapshot(ws))


def test_the_process_rows_are_rows_of_the_table():
    assert PROCESS_ROWS <= {r[0] for r in ROWS}, PROCESS_ROWS - {r[0] for r in ROWS}


# ------------------------------------------------------------------------------------------ issue 11
def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_runs_lists_every_run_and_says_what_is_damaged(ws, monkeypatch, capsys):
    """One damaged run directory does not stop the listing: its row says what is wrong, the others print."""
    home = ws.parent / "runs_listing"
    shutil.copytree(ws / "runs", home / "runs", symlinks=True)
    odd = {"run_strings": ("summary.json", '{"steps": "many", "val_loss_full": "low"}'),
           "run_absurd": ("config.json", json.dumps({"model": {"model": "gpt", "vocab_size": 65, "n_layer": 10 ** 12,
                                                                "n_embd": 32, "n_head": 2, "block_size": 16},
                                                      "train": {}}))}
    for name, (file, text) in odd.items():
        shutil.copytree(ws / "runs" / "base", home / "runs" / name)
        (home / "runs" / name / "summary.json").unlink()
        (home / "runs" / name / file).write_text(text)
    monkeypatch.chdir(home)
    before = snapshot(home)
    assert main(["runs"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "finished" in rows["base"] and "damaged" not in rows["base"]
    for name in ("run_summary_list", "run_summary_null", "run_config_list", "run_metrics_bad", "run_strings", "run_absurd"):
        assert "damaged:" in rows[name], (name, rows.get(name))
    assert "metrics.jsonl line 2" in rows["run_metrics_bad"]
    check_unchanged(before, snapshot(home))


def _targets(tmp: Path) -> dict[str, Path]:
    """A FIFO, a symlink to a file of the user's, and (as root) a character device made with mknod."""
    out = {}
    os.mkfifo(tmp / "fifo.png")
    out["fifo"] = tmp / "fifo.png"
    (tmp / "users_file.png").write_bytes(b"the user's own picture")
    (tmp / "link.png").symlink_to("users_file.png")
    out["symlink"] = tmp / "link.png"
    if os.geteuid() == 0:
        os.mknod(tmp / "null.png", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        out["device"] = tmp / "null.png"
    return out


WRITERS = {  # every command that writes a path the user names: argv with OUT where that path goes
    "attention": ["attention", "--ckpt", "runs/base", "--prompt", "First", "--device", "cpu", "--out", "OUT"],
    "runs-plot": ["runs", "--plot", "base", "--out", "OUT"],
    "prepare": ["prepare", "--input", "corpus.txt", "--out", "OUT"],
    "train-out-dir": ["train", *TINY, "--max-steps", "1", "--data", "data", "--runs-dir", "OUT"],
}


@pytest.mark.slow
def test_outputs_that_are_not_regular_files_are_refused_and_left_untouched(ws, tmp_path):
    if os.geteuid() != 0:
        print("SKIPPED PART: not root, so no device node is made with mknod; FIFOs and symlinks are still tried")
    jobs = []
    for cmd, argv in WRITERS.items():
        targets = _targets(tmp_path / cmd) if (tmp_path / cmd).mkdir() is None else {}
        jobs += [(cmd, kind, path, [str(path) if a == "OUT" else a for a in argv]) for kind, path in targets.items()]

    # A FIFO is written by real processes: a command that opened it would wait for a reader, and a process can be
    # timed out. The symlinks and device nodes run in-process (`main(argv)`), as the table's rows do.
    def one(job):
        cmd, kind, path, argv = job
        before = snapshot(path.parent)
        if kind == "fifo":
            p = chargpt(*argv, cwd=ws, timeout=180)
        else:
            p = run_main(*argv, cwd=ws)
        return job, p, before, snapshot(path.parent)

    fifos = [job for job in jobs if job[1] == "fifo"]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        processes = pool.map(one, fifos)  # started now, run while the in-process jobs run here
        in_process = [one(job) for job in jobs if job[1] != "fifo"]
        results = list(processes) + in_process
    assert len(results) == len(jobs) and fifos
    for (cmd, kind, path, argv), p, before, after in results:
        assert p.returncode != 0, (cmd, kind, p.stdout, p.stderr)
        one_error_line(p.stderr)
        check_unchanged(before, after)
    if os.geteuid() == 0:
        assert any(kind == "device" for _, kind, _, _ in jobs)


@pytest.mark.slow
def test_latest_that_is_not_chargpts_symlink_is_left_alone(ws, tmp_path):
    """`latest` a user's regular file: the run trains, a warning says why `latest` was not updated."""
    shutil.copytree(ws / "data", tmp_path / "data")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").write_text("my notes, not a link\n")
    before = snapshot(tmp_path / "runs")
    p = chargpt("train", *TINY, "--max-steps", "1", "--data", "data", "--name", "r", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "latest" in p.stderr and "left as it is" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "runs" / "latest").read_text() == "my notes, not a link\n"
    assert before["latest"] == snapshot(tmp_path / "runs")["latest"]


def test_two_runs_with_the_same_default_name_get_their_own_directories(tmp_path):
    from chargpt.runs.rundir import RunDir

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda _: RunDir.create(tmp_path, "train-gpt-cpu-20260101-000000", unique=True), range(8)))
    assert len({r.path for r in runs}) == 8
    with pytest.raises(Exception, match="already exists"):
        RunDir.create(tmp_path, "train-gpt-cpu-20260101-000000")  # a name the user gave is never reused


@pytest.mark.slow
def test_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(ws, tmp_path):
    """A real small filesystem (tmpfs, as root) that fills up while `train` writes its checkpoint."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs; the injected ENOSPC test below still runs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here (a container without CAP_SYS_ADMIN)")
    try:
        p = chargpt("train", *TINY, "--max-steps", "1", "--sample-tokens", "0", "--data", str(ws / "data"),
                    "--runs-dir", str(mnt), "--name", "r", cwd=ws)
        lines = [line for line in p.stderr.splitlines() if line.startswith("error")]
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert len(lines) == 1 and "no space left" in lines[0].lower() and "free space" in lines[0], p.stderr
        assert not [q for q in (mnt / "r").iterdir() if q.name.endswith(".tmp")]  # no temporaries left behind
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_injected_enospc_while_saving_is_one_line(ws, tmp_path, monkeypatch, capsys):
    """The same, by an OSError(ENOSPC) from the OS call that flushes the file (runs everywhere)."""
    import errno

    shutil.copytree(ws / "runs" / "base", tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = main(["attention", "--ckpt", "base", "--prompt", "First", "--device", "cpu", "--out", "att.png"])
    monkeypatch.undo()
    line = one_error_line(capsys.readouterr().err)
    assert code != 0 and "no space left" in line.lower() and "free space" in line
    check_unchanged(before, snapshot(tmp_path))


@pytest.mark.slow
def test_sigterm_during_prepare_leaves_no_temporaries_and_the_next_run_removes_stale_ones(shakespeare_path, tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(shakespeare_path.read_bytes() * 60)  # ~65 MB: prepare takes long enough to be caught writing
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "prepare", "--input", str(big), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("**/.*.tmp")):  # the new dataset's files, written beside `out` until they are whole
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "terminated" in lines[0] and not lines[0].startswith("error: "), err  # a plain line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]  # no temporaries, nor the directory it made
    # A writer killed outright (kill -9) leaves a temporary: the next prepare removes it, then writes the dataset.
    out.mkdir()
    stale = out / ".train.pt.999999999.abcd1234.tmp"
    stale.write_bytes(b"x" * 1000)
    p = chargpt("prepare", "--input", str(shakespeare_path), "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not stale.exists() and (out / "meta.json").is_file()


@pytest.mark.slow
def test_fifo_inside_a_dataset_is_refused_not_waited_on(ws, tmp_path):
    for name in ("train.pt", "meta.json"):
        ds = tmp_path / f"fifo_{name}"
        shutil.copytree(ws / "data", ds)
        (ds / name).unlink()
        os.mkfifo(ds / name)
        p = chargpt("train", *TINY, "--data", str(ds), cwd=tmp_path, timeout=120)
        line = one_error_line(p.stderr)
        assert p.returncode != 0 and "fifo" in line.lower() and "not a chargpt dataset" in line


def test_a_corpus_that_changes_while_prepare_reads_it_is_one_error_and_writes_nothing(tmp_path, monkeypatch):
    import chargpt.data.dataset as data_mod
    from chargpt.errors import DataError

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, a corpus that someone is editing. " * 50)
    original = data_mod._up_to_date

    def edit_between_the_passes(out_dir, meta):  # pass 1 counted one text; pass 2 would encode another
        with open(corpus, "a") as f:
            f.write("QXZ appended while prepare was running\n")
        return original(out_dir, meta)

    monkeypatch.setattr(data_mod, "_up_to_date", edit_between_the_passes)
    with pytest.raises(DataError, match="changed while it was read"):
        data_mod.prepare(corpus, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


@pytest.mark.slow
def test_sample_to_an_ascii_terminal_escapes_what_it_cannot_show(ws, tmp_path):
    (tmp_path / "fr.txt").write_text("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, d\u00e9j\u00e0 vu. " * 200, encoding="utf-8")
    assert chargpt("prepare", "--input", "fr.txt", "--out", "fr", cwd=tmp_path).returncode == 0
    p = chargpt("train", *TINY, "--max-steps", "1", "--sample-tokens", "0", "--data", "fr", "--name", "fr", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, PYTHONIOENCODING="ascii", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "chargpt", "sample", "--ckpt", "runs/fr", "--prompt", "caf\u00e9",
                        "--max-new-tokens", "200", "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    err = p.stderr.decode()
    assert p.returncode == 0 and "Traceback" not in err, err
    assert err.count("warning:") == 1 and "ascii" in err
    assert p.stdout.decode("ascii").startswith("caf\\xe9")


def test_an_allocation_the_memory_estimate_did_not_foresee_is_one_line_not_a_traceback(ws, tmp_path):
    """Under an address-space limit (`ulimit -v`) the free memory chargpt reads is not what it may use: the allocation
    that fails is still one line and exit 1."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "chargpt", "sample", "--ckpt", str(ws / "runs/latest/ckpt.pt"),
                        "--num-samples", "1000", "--max-new-tokens", "1000000"], cwd=tmp_path, env=env, text=True,
                       capture_output=True, timeout=120, preexec_fn=limit)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.splitlines() == ["error: out of memory; choose a smaller model, --batch-size, --num-samples or "
                                     "--max-new-tokens, or free memory, then retry"], p.stderr
