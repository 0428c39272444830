"""Fine-tuning against training from scratch: a model pre-trained on tiny Shakespeare and fine-tuned for N steps
on another English text (Python's own documentation topics, shipped with every Python in `pydoc_data`: no
download) against the same model trained for the same N steps from scratch on that text. The figure: the
full-pass val loss of each on the other text.

    python benchmarks/bench_finetune.py                      # cpu preset: 1,000 steps pre-training, 300 each
    python benchmarks/bench_finetune.py --pretrain-steps 200 --steps 100 --small   # a quick look
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

from chargpt.runs import checkpoint  # noqa: E402
from chargpt.config import get_preset  # noqa: E402
from chargpt.data.dataset import load_dataset, prepare  # noqa: E402
from chargpt.runs.rundir import RunDir  # noqa: E402
from chargpt.train import train  # noqa: E402


def config(steps: int, vocab: int, small: bool):
    cfg = get_preset("cpu")
    cfg.model.vocab_size = vocab
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = steps, max(1, steps // 4), 10
    cfg.train.sample_tokens, cfg.train.compile = 0, False  # eager: the comparison, not the speed, is the point
    if small:
        cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 64, 2, 64
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300, help="N: steps of fine-tuning, and of training from scratch")
    ap.add_argument("--small", action="store_true", help="a 1-layer, 64-wide model with context 64")
    args = ap.parse_args()
    quiet = lambda *_: None  # noqa: E731
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs.txt").write_text("\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
        prepare(tmp / "docs.txt", tmp / "docs", name="python-docs")
        shakespeare, docs = load_dataset(shakespeare_dataset()), load_dataset(tmp / "docs")

        base = RunDir.create(tmp / "runs", "shakespeare")
        pre = train(config(args.pretrain_steps, shakespeare.tokenizer.vocab_size, args.small), shakespeare, base,
                    preset="cpu", echo=quiet)
        state = checkpoint.load(base.ckpt)
        tuned = train(config(args.steps, docs.tokenizer.vocab_size, args.small), docs, RunDir.create(tmp / "runs", "ft"),
                      preset="cpu", echo=quiet,
                      init_from={"state": state, "origin": {"ckpt": str(base.ckpt), "step": state["step"]}})
        scratch = train(config(args.steps, docs.tokenizer.vocab_size, args.small), docs,
                        RunDir.create(tmp / "runs", "scratch"), preset="cpu", echo=quiet)
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
