"""Fine-tuning against training from scratch: a model pre-trained on tiny Shakespeare and fine-tuned for N steps
on another English text (Python's own documentation topics, shipped with every Python in `pydoc_data`: no
download) against the same model trained for the same N steps from scratch on that text. The figure: the
full-pass val loss of each on the other text.

    python benchmarks/bench_finetune.py                      # cpu preset: 1,000 steps pre-training, 300 each
    python benchmarks/bench_finetune.py --pretrain-steps 200 --steps 100 --small   # a quick look
    python benchmarks/bench_finetune.py --pretrain-steps 4 --steps 2 --small --evals 1 --eval-iters 1 --eval-tokens 2000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pydoc_data.topics  # noqa: E402

from common import commit, machine, print_table, shakespeare_dataset  # noqa: E402

import chargpt  # noqa: E402

SMALL = dict(n_layer=1, n_embd=64, n_head=2, block_size=64)  # --small: the model's fields


def schedule(steps: int, args: argparse.Namespace) -> dict:
    """The training fields of each run: `steps` steps, `--evals` evaluations, eager (the comparison, not the speed,
    is the point), no sample."""
    fields = dict(max_steps=steps, eval_interval=max(1, steps // args.evals), eval_iters=args.eval_iters,
                  sample_tokens=0, compile=False)
    return fields | ({"eval_tokens": args.eval_tokens} if args.eval_tokens else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300, help="N: steps of fine-tuning, and of training from scratch")
    ap.add_argument("--small", action="store_true", help="a 1-layer, 64-wide model with context 64")
    ap.add_argument("--evals", type=int, default=4, help="evaluations during each run (each redraws its loss plot)")
    ap.add_argument("--eval-iters", type=int, default=10, help="batches of each evaluation during training")
    ap.add_argument("--eval-tokens", type=int, help="characters of the final val pass (default: the run's default)")
    args = ap.parse_args()
    model = SMALL if args.small else {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs.txt").write_text("\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
        docs = chargpt.prepare(tmp / "docs.txt", tmp / "docs", name="python-docs")
        runs = dict(runs_dir=tmp / "runs", verbose=False)
        pre = chargpt.train("cpu", str(shakespeare_dataset()), name="shakespeare", **runs, **model,
                            **schedule(args.pretrain_steps, args))
        # fine-tuning keeps the pre-trained model's shape: only the training fields are given
        tuned = chargpt.train(data=docs, init_from=pre.path, name="finetuned", **runs,
                              **schedule(args.steps, args))
        scratch = chargpt.train("cpu", docs, name="scratch", **runs, **model, **schedule(args.steps, args))
        pre, tuned, scratch = pre.summary, tuned.summary, scratch.summary
    print(f"machine: {machine()}; commit {commit()}; {time.perf_counter() - t0:.0f} s in all")
    print(f"other text: Python's pydoc topics, {docs.meta['total_chars']:,} characters, vocabulary "
          f"{docs.tokenizer.vocab_size} ({tuned['init_from']['shared_chars']} shared with tiny Shakespeare)")
    print_table([
        {"figure": f"pre-trained on tiny Shakespeare, {args.pretrain_steps} steps: its val loss",
         "value": f"{pre['val_loss_full']:.4f}"},
        {"figure": f"fine-tuned {args.steps} steps: full-pass val loss on the other text",
         "value": f"{tuned['val_loss_full']:.4f}", "target": "< from scratch"},
        {"figure": f"from scratch {args.steps} steps: full-pass val loss on the other text",
         "value": f"{scratch['val_loss_full']:.4f}"},
    ], title="fine-tuning vs from scratch" + (" (small model)" if args.small else ""))


if __name__ == "__main__":
    main()
