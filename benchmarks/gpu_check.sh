#!/usr/bin/env bash
# chargpt's GPU check: one command, about 5-8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh [DATA_ROOT]
#
# (a) runs the tests marked `gpu` (tests/test_gpu.py: a compiled bf16 training run, KV-cache generation equal to
#     naive generation on CUDA, checkpoints moving CUDA <-> CPU, a one-process nccl DDP run);
# (b) trains the `lecture` preset (the lecture's 6x384 GPT, 5000 steps, compiled, estimates every 250 steps) and reports when its validation estimate
#     first reached 1.47 and its final full-pass val loss;
# (c) trains the `gpu` preset for 60 s of training and reports its full-pass val loss (target <= 1.40);
# (d) prints one table: card, torch, CUDA, figures.
#
# Downloads nothing (the GPU machine may have no internet). It needs, already installed: a python3 (or $PYTHON)
# with a CUDA build of torch >= 2.9, numpy, matplotlib, tqdm, pytest and hypothesis; chargpt is used from this
# checkout's src/ (no install). Tiny Shakespeare must be on disk: DATA_ROOT/tinyshakespeare/input.txt, where
# DATA_ROOT is the argument, else $CHARGPT_DATA, else ../shared/data. Logs and runs go to $GPU_CHECK_DIR
# (default: a new temporary directory), and the table is also written there as gpu_check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
die() { echo "gpu_check: $*" >&2; exit 2; }

"$PY" -c 'import torch' 2>/dev/null || die "'$PY' cannot import torch: install a CUDA build of torch there, or set PYTHON"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || die "no CUDA device is visible to torch in '$PY': run this on a machine with an NVIDIA GPU and a CUDA build of torch"
DATA_ROOT=${1:-${CHARGPT_DATA:-../shared/data}}
[ -f "$DATA_ROOT/tinyshakespeare/input.txt" ] \
  || die "tiny Shakespeare not found at $DATA_ROOT/tinyshakespeare/input.txt; pass the folder that holds tinyshakespeare/ as the argument"
export CHARGPT_DATA=$(cd "$DATA_ROOT" && pwd) PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
DIR=${GPU_CHECK_DIR:-$(mktemp -d -t chargpt-gpu-check.XXXXXX)}
mkdir -p "$DIR"
echo "gpu_check: logs and runs in $DIR"

# (a) the gpu tests
t0=$SECONDS
timeout "${GPU_CHECK_TEST_S:-300}" "$PY" -m pytest -q -ra -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$DIR/pytest.log"
tests_rc=${PIPESTATUS[0]}
tests_line=$(grep -E '(passed|failed|error)' "$DIR/pytest.log" | tail -n 1)
tests_s=$((SECONDS - t0))

# (b) the lecture's model, and (c) the gpu preset for 60 s
"$PY" -m chargpt prepare --dataset shakespeare --out "$DIR/data" > "$DIR/prepare.log" 2>&1 || { cat "$DIR/prepare.log"; die "prepare failed"; }
t0=$SECONDS
timeout "${GPU_CHECK_LECTURE_S:-330}" "$PY" -m chargpt train --preset lecture --compile --data "$DIR/data" --runs-dir "$DIR/runs" --name lecture \
  --eval-interval 250 --eval-iters 100 \
  2>&1 | tee "$DIR/lecture.log" | grep -vE '^\s*$' | tail -n 4
lecture_s=$((SECONDS - t0))
t0=$SECONDS
timeout "${GPU_CHECK_GPU_S:-200}" "$PY" -m chargpt train --preset gpu --time-budget 60 --data "$DIR/data" --runs-dir "$DIR/runs" --name gpu60 \
  2>&1 | tee "$DIR/gpu60.log" | grep -vE '^\s*$' | tail -n 4
gpu_s=$((SECONDS - t0))

# (d) one table
"$PY" - "$DIR" "$tests_rc" "$tests_line" "$tests_s" "$lecture_s" "$gpu_s" <<'PYEOF' | tee "$DIR/gpu_check.md"
import json, sys
from pathlib import Path
import torch
d, tests_rc, tests_line, tests_s, lecture_s, gpu_s = sys.argv[1:]
d = Path(d)

def run(name):
    p = d / "runs" / name
    s = json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else {}
    m = [json.loads(l) for l in (p / "metrics.jsonl").read_text().splitlines() if l.strip()] if (p / "metrics.jsonl").is_file() else []
    return s, m

def f(v, fmt="{:.4f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "-"

rows = [("card", torch.cuda.get_device_name(0)), ("torch / CUDA", f"{torch.__version__} / {torch.version.cuda}"),
        ("gpu tests", f"{tests_line.strip() or 'no result'} (exit {tests_rc}, {tests_s} s)")]
s, m = run("lecture")
hit = next((r for r in m if isinstance(r.get("val_loss"), (int, float)) and r["val_loss"] <= 1.47), None)
rows += [("lecture: full-pass val after its steps", f"{f(s.get('val_loss_full'))} after {s.get('steps', '-')} steps, "
          f"{f(s.get('train_seconds'), '{:.1f}')} s of training, {f(s.get('tokens_per_sec'), '{:,.0f}')} tok/s ({lecture_s} s wall with compile and evals)"),
         ("lecture: first val estimate <= 1.47", f"step {hit['step']}, {f(hit.get('train_seconds'), '{:.1f}')} s of training" if hit else "not reached")]
best = min((r for r in m if isinstance(r.get("val_loss"), (int, float))), key=lambda r: r["val_loss"], default=None)
if best:
    rows.append(("lecture: lowest val estimate", f"{best['val_loss']:.4f} at step {best['step']}, {f(best.get('train_seconds'), '{:.1f}')} s of training"))
s, _ = run("gpu60")
rows += [("gpu preset, 60 s budget: full-pass val (target <= 1.40)",
          f"{f(s.get('val_loss_full'))} after {s.get('steps', '-')} steps, {f(s.get('tokens_per_sec'), '{:,.0f}')} tok/s ({gpu_s} s wall)")]
print("| figure | value |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
PYEOF
