"""The time budget: which model a budget buys on this machine, and how its wall clock is split.

`--time-budget B` is the user's wall clock, from the command's start to its final figure: start-up, compiling,
evaluations, checkpoints and the final pass over val all count. Without a preset, the budget chooses the model:
this machine's training speed for a size (measured in a few steps, then cached per machine and shape) gives the
tokens a run of that size will see, and `SIZES` gives the largest size that those tokens suit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, get_preset
from ..runtime.compiling import CompileFigures

# The most of a budget's training part the periodic estimates may take (one is skipped when it would take more):
# kept back from training when a size is chosen, with the checkpoints written with them.
EVAL_SHARE = 0.03
PROBE_STEPS = 3  # timed training steps per speed probe (after one untimed step)
SPEED_STEPS = 50  # a run of at least this many steps teaches the speed cache its speed
FINAL_MARGIN = 1.25  # the final pass's time as measured on one batch, with room for a busier machine
FINAL_SHARE = 0.2  # the most of a budget the final pass may take; past it, it scores an evenly spread subset
SAMPLE_RATE = 2000.0  # characters/s the end-of-run sample is generated at, at least (KV cache)


@dataclass(frozen=True)
class Size:
    """One row of the size table: changes to the `cpu` preset, and the training tokens from which it is chosen."""

    name: str
    min_tokens: float
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


# Smallest first. A size is chosen when the budget buys it at least `min_tokens` of training; below that a
# smaller, faster model gets further. The thresholds are measured: benchmarks/RESULTS.md, "The budget chooses the
# model" (where the average of the weights never beat the final model in a run as short as the 2-layer size's).
SIZES: tuple[Size, ...] = (
    Size("2 layers x 128", 0.0, {"n_layer": 2}, {"ema": 0.0}),
    Size("3 layers x 128", 4e6, {}),
    Size("4 layers x 192, dropout 0.1", 11e6, {"n_layer": 4, "n_embd": 192, "n_head": 6, "dropout": 0.1},
         {"batch_size": 32}),
    Size("6 layers x 384, context 256, dropout 0.2", 60e6,
         {"n_layer": 6, "n_embd": 384, "n_head": 6, "block_size": 256, "dropout": 0.2},
         {"batch_size": 64, "warmup": 0.02, "decay": 0.4}),
)


def sized_config(size: Size, base: Config | None = None) -> Config:
    """The `cpu` preset (or `base`) with `size`'s changes."""
    config = base or get_preset("cpu")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **size.model),
                               train=dataclasses.replace(config.train, **size.train))


def flops_per_token(config: Config) -> float:
    """Training FLOPs per token (6 per parameter and the attention's 12 L d T), to scale a measured speed to
    another size before that size is measured."""
    mc = config.model
    params = 12 * mc.n_layer * mc.n_embd ** 2 + 2 * mc.vocab_size * mc.n_embd
    return 6 * params + 12 * mc.n_layer * mc.n_embd * mc.block_size


# ---------------------------------------------------------------------------------------------- speed
def _machine_key(device: torch.device, precision: str) -> str:
    name = platform.processor() or platform.machine()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    return f"{name}|{device.type}|{precision}|{torch.get_num_threads()} threads|torch {torch.__version__}"


def _shape_key(config: Config) -> str:
    mc, tc = config.model, config.train
    return (f"{mc.n_layer}x{mc.n_embd}/{mc.n_head} ctx{mc.block_size} b{tc.batch_size} v{mc.vocab_size} "
            f"{mc.pos} {mc.norm} {mc.mlp} {tc.optimizer}")


class SpeedCache:
    """Training tokens/s per machine and shape, and what compiling costs there, kept in chargpt's cache directory
    (speeds.json). A speed only rises and a cost only falls: a run on a busy machine never teaches a later run
    that this machine is slow."""

    def __init__(self, path: Path | None):
        self.path = path
        from ..fsutil import read_json_object

        loaded = read_json_object(path) if path is not None else {}  # missing or damaged: measure again
        self.values: dict[str, float] = {k: float(v) for k, v in loaded.items() if isinstance(v, (int, float)) and v > 0}

    def get(self, key: str) -> float | None:
        return self.values.get(key)

    def put(self, key: str, value: float, *, cost: bool = False) -> None:
        """Keep `value` under `key` where it beats the figure kept: a higher speed, or a lower `cost`."""
        kept = self.values.get(key)
        if not value > 0 or (kept is not None and (value >= kept if cost else value <= kept)):
            return
        self.values[key] = value
        if self.path is None:
            return
        try:
            from ..fsutil import write_text

            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self.values, indent=1, sort_keys=True) + "\n")
        except OSError:  # an unwritable cache costs a probe next time, not the run
            pass


def speed_cache() -> SpeedCache:
    from ..data.corpus import cache_dir

    return SpeedCache(cache_dir() / "speeds.json")


def probe_speed(config: Config, device: torch.device, autocast) -> float:
    """Training tokens/s of `config` here, eager: one untimed step, then `PROBE_STEPS` timed ones on random tokens."""
    from ..model.gpt import build_model
    from .optim import make_optimizers

    model = build_model(config.model).to(device)
    optimizers = make_optimizers(model, config.train, device.type, bf16=False)
    gen = torch.Generator().manual_seed(0)
    shape = (config.train.batch_size, config.model.block_size)
    x = torch.randint(config.model.vocab_size, shape, generator=gen).to(device)
    y = torch.randint(config.model.vocab_size, shape, generator=gen).to(device)
    elapsed = 0.0
    for i in range(PROBE_STEPS + 1):
        t0 = time.perf_counter()
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            elapsed += time.perf_counter() - t0
    return PROBE_STEPS * shape[0] * shape[1] / max(elapsed, 1e-9)


# ------------------------------------------------------------------------------------------ the choice
@dataclass
class Choice:
    """What a budget buys here: the sized config, its measured speed, the training seconds expected, and why."""

    config: Config
    size: Size | None
    tokens_per_sec: float
    train_seconds: float
    reason: str


def choose(budget: float, base: Config, device: torch.device, precision: str, autocast, *, elapsed: float,
           val_tokens: int = 0, cache: SpeedCache | None = None) -> Choice:
    """The largest size whose expected training tokens in `budget` reach its `min_tokens` on this machine.

    `elapsed`: seconds of the budget already gone (start-up); `val_tokens`: the final pass's length (its time, at
    about half the training speed per token, is not training time)."""
    cache = cache if cache is not None else speed_cache()
    machine = _machine_key(device, precision)
    configs = [sized_config(s, base) for s in SIZES]
    speeds: dict[int, float] = {}

    def kept(i: int) -> float | None:
        return cache.get(f"{machine}|{_shape_key(configs[i])}")

    def speed(i: int, measure: bool) -> float:
        if i in speeds:
            return speeds[i]
        key = f"{machine}|{_shape_key(configs[i])}"
        known = kept(i)
        if known is None and measure:
            known = probe_speed(configs[i], device, autocast)
            cache.put(key, known)
            cache.put(f"{key}|{EAGER}", known)  # the probe trains eagerly: what a compile is weighed against
        if known is not None:
            # at least a smaller size's speed scaled by the FLOPs per token: a larger model's wider matrix products
            # run no less efficiently, and a few probed steps read low (3 layers x 128 probed at 11,600 tokens/s on
            # a float32 EPYC and trained at 19,000; 2 layers x 128 trained at 28,900, scaled: 19,500)
            scaled = [kept(j) * flops_per_token(configs[j]) / flops_per_token(configs[i])
                      for j in range(i) if kept(j) is not None]
            speeds[i] = max([known, *scaled])
            return speeds[i]
        # not measured yet: scale a measured size's speed by the FLOPs per token
        ref = next(iter(speeds)) if speeds else 0
        return speed(ref, True) * flops_per_token(configs[ref]) / flops_per_token(configs[i])

    def train_seconds(i: int, measure: bool) -> float:
        tps = speed(i, measure)
        return max(0.0, (budget - elapsed - FINAL_MARGIN * val_tokens / (tps / 2)) * (1 - EVAL_SHARE))

    def suits(i: int, measure: bool) -> bool:
        return speed(i, measure) * train_seconds(i, measure) >= SIZES[i].min_tokens

    speed(0, True)
    # the largest size the budget suits, its speed measured before it is trusted
    chosen = next((i for i in range(len(SIZES) - 1, 0, -1) if suits(i, False) and suits(i, True)), 0)
    tps, seconds = speed(chosen, True), train_seconds(chosen, True)
    nxt = (f"; {SIZES[chosen + 1].name} would need {SIZES[chosen + 1].min_tokens / 1e6:.0f}M"
           if chosen + 1 < len(SIZES) else "")
    reason = (f"the budget chose {SIZES[chosen].name}: ~{seconds:.0f} s of training at {tps:,.0f} tokens/s "
              f"measured here is ~{tps * seconds / 1e6:.1f}M tokens{nxt}")
    return Choice(configs[chosen], SIZES[chosen], tps, seconds, reason)


def record_speed(config: Config, device: torch.device, precision: str, tokens_per_sec: float, *,
                 compiled: bool = False) -> None:
    """Remember a finished run's steady speed for the budget's next choice (compiled runs are faster), and an
    eager run's as the eager speed a compile is weighed against."""
    cache, key = speed_cache(), speed_key(config, device, precision)
    cache.put(key, tokens_per_sec)
    if not compiled:
        cache.put(f"{key}|{EAGER}", tokens_per_sec)


# Figures of compiling, kept in the speed cache beside the speeds, under the speed's key and one of these.
EAGER, COMPILED, COLD_COMPILE, WARM_COMPILE = "eager", "compiled", "cold compile s", "warm compile s"


def speed_key(config: Config, device: torch.device, precision: str) -> str:
    """The speed cache's key of `config`'s model trained here: machine, device, precision, threads, torch, shape."""
    return f"{_machine_key(device, precision)}|{_shape_key(config)}"


def compile_figures(config: Config, device: torch.device, precision: str,
                    cache: SpeedCache | None = None) -> CompileFigures:
    """What compiling `config`'s model costs and wins here, as earlier runs measured it (`compile_decision`)."""
    cache, key = cache if cache is not None else speed_cache(), speed_key(config, device, precision)
    return CompileFigures(cold_seconds=cache.get(f"{key}|{COLD_COMPILE}"),
                          warm_seconds=cache.get(f"{key}|{WARM_COMPILE}"),
                          compiled_speed=cache.get(f"{key}|{COMPILED}"), eager_speed=cache.get(f"{key}|{EAGER}"))


def record_compile(config: Config, device: torch.device, precision: str, *, cold: bool | None,
                   seconds: float | None, tokens_per_sec: float | None, cache: SpeedCache | None = None) -> None:
    """Remember what a compiling run measured: the `seconds` its compile added (from a cold cache or a warm one;
    not kept where `cold` is unknown) and its compiled steps' speed (None: not measured)."""
    cache, key = cache if cache is not None else speed_cache(), speed_key(config, device, precision)
    if seconds is not None and cold is not None:
        cache.put(f"{key}|{COLD_COMPILE if cold else WARM_COMPILE}", max(seconds, 1e-3), cost=True)
    if tokens_per_sec is not None:
        cache.put(f"{key}|{COMPILED}", tokens_per_sec)


def final_pass_seconds(model, val_tokens: int, block_size: int, device: torch.device, eval_tokens: int) -> float:
    """Seconds the end-of-run pass over val will take here: one of its batches timed, times their number."""
    from .evaluate import pass_windows

    n = max(1, val_tokens - 1)
    starts, rest = pass_windows(n, block_size, eval_tokens)
    batch = max(1, 2048 // block_size)
    batches = -(-len(starts) // batch) + (1 if rest else 0)
    x = torch.zeros((min(batch, max(1, len(starts))), block_size), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)  # untimed: first calls allocate
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            one = time.perf_counter() - t0
    finally:
        model.train(was_training)
    return batches * one


def process_start() -> float:
    """`time.perf_counter()` at this process's start (Linux: /proc), so a budget counts the interpreter's start-up
    and imports too; elsewhere, now."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.perf_counter() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.perf_counter()
