"""Every bad input of every entry point gets one line on stderr, a non-zero exit, no traceback, and leaves the
files that were already there untouched (issue 7, section 3). Each row runs `python -m chargpt` for real."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from chargpt import checkpoint
from chargpt.cli import build_parser, main

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
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            st = p.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory, dataset_dir) -> Path:
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
    for name, corpus in (("data_tiny", "tiny.txt"), ("data_other", "corpus.txt")):
        p = chargpt("prepare", "--input", corpus, "--out", name, cwd=root)
        assert p.returncode == 0, p.stderr
    p = chargpt("train", *TINY, "--max-steps", "2", "--data", "data", "--name", "base", cwd=root)
    assert p.returncode == 0, p.stderr
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
    return root


def _subparsers() -> dict:
    return next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices


def ckpt_commands() -> list[str]:
    """Every subcommand that reads a checkpoint with --ckpt (attention joins when it exists)."""
    return sorted(name for name, p in _subparsers().items() if any("--ckpt" in a.option_strings for a in p._actions))


def on_cpu(cmd: str) -> list[str]:
    """`--device cpu` where `cmd` takes it, and a value for each other option it requires (e.g. attention's --prompt)."""
    actions = _subparsers()[cmd]._actions
    extra = [x for a in actions if a.required and a.option_strings and "--ckpt" not in a.option_strings
             for x in (a.option_strings[-1], "a")]
    return extra + (["--device", "cpu"] if any("--device" in a.option_strings for a in actions) else [])


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
    ("prepare-bad-dtype", ["prepare", "--input", "corpus.txt", "--out", "data", "--dtype", "float16"], "dtype"),
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
    ("train-unwritable-out-dir", ["train", *TINY, "--data", "data", "--out-dir", "afile/runs"], "afile"),
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
    ("resume-unknown-device", ["train", "--resume", "runs/base", "--device", "tpu"], "tpu"),
    ("resume-invalid-override", ["train", "--resume", "runs/base", "--lr", "-1"], "--lr"),
    # -- sample: prompt outside the vocabulary, negative --max-new-tokens, other bad values
    ("sample-prompt-outside-vocab", ["sample", "--ckpt", "runs/base", "--prompt", "caf\u00e9"], "vocabulary"),
    ("sample-prompt-control-char", ["sample", "--ckpt", "runs/base", "--prompt", "a\x01b"], "vocabulary"),
    ("sample-negative-max-new-tokens", ["sample", "--ckpt", "runs/base", "--max-new-tokens", "-1"], "--max-new-tokens"),
    ("sample-num-samples-0", ["sample", "--ckpt", "runs/base", "--num-samples", "0"], "--num-samples"),
    ("sample-negative-temperature", ["sample", "--ckpt", "runs/base", "--temperature", "-1"], "--temperature"),
    ("sample-top-k-0", ["sample", "--ckpt", "runs/base", "--top-k", "0"], "--top-k"),
    ("sample-top-p-1.5", ["sample", "--ckpt", "runs/base", "--top-p", "1.5"], "--top-p"),
    ("sample-unknown-device", ["sample", "--ckpt", "runs/base", "--device", "tpu"], "tpu"),
    ("sample-device-cuda-without-cuda", ["sample", "--ckpt", "runs/base", "--device", "cuda"], "cuda"),
    # -- eval: a dataset that does not fit the checkpoint
    ("eval-other-vocabulary", ["eval", "--ckpt", "runs/base", "--data", "data_other"], "vocabulary"),
    ("eval-missing-data", ["eval", "--ckpt", "runs/base", "--data", "nope"], "nope"),
    ("eval-unknown-split", ["eval", "--ckpt", "runs/base", "--split", "test"], "split"),
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
    ]


# One row per bad input the issue names; these also run as real processes (the rest run in-process only).
ISSUE_ROWS = {
    "prepare-missing-input", "prepare-empty-input", "prepare-binary-input", "prepare-non-utf8-input",
    "train-corpus-shorter-than-block", "prepare-val-fraction-0", "prepare-val-fraction-1",
    "train-embd-not-divisible", "train-n-layer-0", "train-max-steps-0", "train-lr-0",
    "sample-prompt-outside-vocab", "sample-negative-max-new-tokens", "train-unwritable-out-dir",
    "prepare-unwritable-out", "resume-missing-run", "resume-other-dataset", "resume-other-model-shape",
    "train-unknown-preset", "train-unknown-model", "train-unknown-device", "train-device-cuda-without-cuda",
    *(f"{cmd}-{what}" for cmd in ckpt_commands() for what in ("truncated-ckpt", "ckpt-of-another-model")),
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

    rows = [r for r in ROWS if r[0] in ISSUE_ROWS]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, rows))


@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [_param(*r) for r in ROWS if r[0] in ISSUE_ROWS])
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
    check_unchanged(before, snapshot(ws))


def test_every_bad_input_of_the_issue_runs_as_a_process():
    ids = {r[0] for r in ROWS}
    assert ISSUE_ROWS <= ids, ISSUE_ROWS - ids
    assert len(ISSUE_ROWS) >= 22 + 2 * len(ckpt_commands())
