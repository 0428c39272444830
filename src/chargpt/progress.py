"""Training progress: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, pipes)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total: int | None, initial: int = 0, enabled: bool = True, budget: float = 0.0, stream=None):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.budget = budget
        self.total = total
        self.last_plain = -1.0
        self.bar = None
        if self.tty:
            unit = "s" if budget else "step"
            self.bar = tqdm(total=round(budget) if budget else total, initial=0 if budget else initial, unit=unit,
                            file=self.stream, dynamic_ncols=True, leave=True)
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_sec: float, fraction: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = round(fraction * self.budget) if self.budget else step
            self.bar.set_postfix_str(f"step {step} loss {loss:.4f} {tokens_per_sec:,.0f} tok/s", refresh=False)
            self.bar.refresh()
        elif fraction - self.last_plain >= 0.1 or fraction >= 1.0:  # every 10% of the run
            self.last_plain = fraction
            elapsed = time.perf_counter() - self.t0
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
            print(f"step {step:>6} | loss {loss:.4f} | {tokens_per_sec:,.0f} tok/s | {fraction:5.1%} | "
                  f"eta {eta:,.0f} s", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
