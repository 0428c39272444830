"""Experiment tracking behind one interface, `Tracker`. The run directory (metrics.jsonl, summary.json) is always
written; a tracker adds a service. The training loop hands every tracker the same metrics record it writes to
metrics.jsonl, and `finish_tracking` gives each the same images, checkpoints and summary at the end.

A tracker named `x` in `config.TrackerName` is the class `TRACKER` of the module `chargpt.track.x`, imported
only when chosen: a further tracker is one file plus its name in that Literal. Tracking never breaks training:
`GuardedTracker`, which `make_tracker` wraps every tracker in, turns a failure (in a call, or in a thread the tracker
started, such as TensorBoard's event writer) into one warning line, after which the tracker goes quiet. A tracker's
files stay inside its run: its directory is made by `RunDir.subdir`, which refuses a symlink.
"""
from __future__ import annotations

import importlib
import sys
import tempfile
import threading
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, get_args, runtime_checkable

from ..config import TrackerName
from ..errors import ConfigError
from ..runs.rundir import BEST, CKPT, PLOT

if TYPE_CHECKING:
    from ..config import Config
    from ..data.dataset import Dataset
    from ..runs.rundir import RunDir

ATTENTION_PROMPT_CHARS = 32  # characters of the validation text drawn in the attention map logged at the end


@runtime_checkable
class Tracker(Protocol):
    def start(self, run: RunDir | None, config: dict, data: Dataset) -> None:
        """Begin tracking `run` (None on a rank that writes nothing); `config` is `run_config`'s record."""

    def log(self, record: dict, step: int) -> None:
        """One metrics record, the same one metrics.jsonl receives (its keys are the charts' names)."""

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        """A PNG (the loss curve, the attention map); `path` may be removed once this returns."""

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        """A version of a `kind` ("model") made of `files` ({name in the artifact: path}), known by `aliases`."""

    def finish(self, summary: dict) -> None:
        """The run's summary (summary.json, with its sample); the last call."""


class NullTracker:
    """Tracks nothing (no tracker chosen)."""

    def start(self, run, config: dict, data) -> None:
        pass

    def log(self, record: dict, step: int) -> None:
        pass

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        pass

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


def make_tracker(choice: str | Tracker | None, **options) -> Tracker:
    """The tracker of `choice`: a name in `TrackerName` (built with `options`), a `Tracker` object, or None; every
    one but None's is guarded (`GuardedTracker`)."""
    if choice is None:
        return NullTracker()
    if isinstance(choice, str):
        check_tracker(choice)
        return GuardedTracker(importlib.import_module(f"chargpt.track.{choice}").TRACKER(**options), choice)
    if isinstance(choice, (GuardedTracker, NullTracker)):
        return choice
    return GuardedTracker(choice, type(choice).__name__)


class GuardedTracker:
    """`tracker`, whose failures are one warning line naming `service`, after which it goes quiet: the one place
    where a tracker's errors are caught. That covers the threads the tracker starts during its calls (TensorBoard
    writes its event files in one, and reports a failed write by raising there). The tracker may have `abandon()`,
    called once after a failure to release what it holds."""

    def __init__(self, tracker: Tracker, service: str):
        self.tracker, self.service = tracker, service
        self.failed = self.abandoned = False
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # those the tracker started
        self.before: set[threading.Thread] | None = None  # the threads alive when the current call began
        self.lock = threading.Lock()
        _guards.add(self)
        _catch_thread_failures()

    def start(self, run: RunDir | None, config: dict, data: Dataset) -> None:
        self._call("starting", lambda: self.tracker.start(run, config, data))

    def log(self, record: dict, step: int) -> None:
        self._call("logging metrics", lambda: self.tracker.log(record, step))

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        self._call(f"logging the image {key}", lambda: self.tracker.image(key, path, caption, step))

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        self._call(f"logging the {kind}", lambda: self.tracker.artifact(kind, files, aliases, metadata))

    def finish(self, summary: dict) -> None:
        self._call("recording the summary", lambda: self.tracker.finish(summary))

    def owns(self, thread: threading.Thread) -> bool:
        before = self.before
        return thread in self.threads or (before is not None and thread not in before)

    def _call(self, what: str, fn) -> None:
        if self.failed:
            self._abandon()
            return
        self.before = set(threading.enumerate())
        try:
            fn()
        except Exception as e:
            self.fail(what, e)
        finally:
            self.threads.update(set(threading.enumerate()) - self.before)
            self.before = None
        if self.failed:
            self._abandon()

    def fail(self, what: str, exc: BaseException) -> None:
        """The tracker failed at `what`: one warning line, the first time (a call and its thread may both fail)."""
        with self.lock:
            if self.failed:
                return
            self.failed = True
        warn(f"{what} failed; training goes on without {self.service}", exc, self.service)

    def _abandon(self) -> None:
        """Let the failed tracker release what it holds, once, from the calling thread (never from its own)."""
        if self.abandoned:
            return
        self.abandoned = True
        try:
            getattr(self.tracker, "abandon", lambda: None)()
        except Exception:  # it has failed already, and said so
            pass


_guards: weakref.WeakSet[GuardedTracker] = weakref.WeakSet()


def _catch_thread_failures() -> None:
    """Route an exception that ends a thread a tracker started to its `GuardedTracker` (one warning line, not
    Python's traceback); any other thread's goes on to the hook that was there before."""
    previous = threading.excepthook
    if getattr(previous, "routes_tracker_threads", False):
        return

    def hook(args) -> None:
        owner = next((g for g in list(_guards) if args.thread is not None and g.owns(args.thread)), None)
        if owner is None or not isinstance(args.exc_value, Exception):
            previous(args)
            return
        owner.fail("writing in the background", args.exc_value)

    hook.routes_tracker_threads = True
    threading.excepthook = hook


def check_tracker(choice: str | Tracker | None) -> None:
    names = get_args(TrackerName)
    if isinstance(choice, str) and choice not in names:
        raise ConfigError(f"unknown tracker {choice!r}; choose one of {', '.join(names)}")
    if choice is not None and not isinstance(choice, (str, Tracker)):
        raise ConfigError(f"tracker must be one of {', '.join(names)} or an object with the methods start, log, "
                          f"image, artifact and finish (chargpt.track.tracker.Tracker), got {type(choice).__name__}")


def run_config(config: Config, run: RunDir | None, data: Dataset, preset: str | None,
               argv: list[str] | None = None, *, device=None, data_dir: str | None = None,
               origin: dict | None = None) -> dict:
    """What a tracker records as the run's config: the run's config as config.json has it (`records.run_config`),
    with the run directory and the provenance (versions, git commit, `device`, command line)."""
    from ..runs.provenance import provenance
    from ..runs.records import run_config as recorded

    if device is None:
        from ..runtime.device import resolve_device

        device = resolve_device(config.train.device)
    return recorded(config, data, preset, data_dir, origin) | {
        "run_dir": str(run.path) if run is not None else None, "provenance": provenance(device, argv)}


def _shown(line: str) -> None:
    print(line, flush=True)


_NOTICES: ContextVar = ContextVar("tracker_notices", default=_shown)


@contextmanager
def notices_to(echo):
    """Within it, a tracker's notices (where it writes, how to view or upload it) go to `echo`, as the run's own
    lines do: None shows none (the library's `verbose=False`)."""
    token = _NOTICES.set(echo)
    try:
        yield
    finally:
        _NOTICES.reset(token)


def notice(service: str, text: str) -> None:
    """A tracker's line of what it does, shown where the run's lines are (`notices_to`)."""
    echo = _NOTICES.get()
    if echo is not None:
        echo(f"{service}: {text}")


def warn(what: str, exc: BaseException | None = None, service: str | None = None) -> None:
    """One line on stderr: what failed and that the work goes on."""
    reason = ""
    if exc is not None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        reason = f" ({exc.__class__.__name__}: {first})" if first else f" ({exc.__class__.__name__})"
    print(f"warning: {service + ': ' if service else ''}{what}{reason}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the end of a run
def finish_tracking(tracker: Tracker, run: RunDir | None, summary: dict, data: Dataset) -> None:
    """The loss curve and (for a GPT) the attention over the start of the validation text as images, the
    checkpoints as `model` versions, then the summary: the same for every tracker."""
    if isinstance(tracker, NullTracker):
        return  # nothing would receive the pictures: none are drawn
    steps = int(summary.get("steps") or 0)
    if run is not None:
        with tempfile.TemporaryDirectory(prefix="chargpt-tracking-") as tmp:
            try:
                for key, path, caption in _images(run, data, Path(tmp)):
                    tracker.image(key, path, caption, steps)
            except Exception as e:  # a picture is not worth the summary and the checkpoint
                warn("cannot draw the loss curve or attention map; the rest is recorded", e)
        for files, aliases, metadata in model_versions(run, summary):
            tracker.artifact("model", files, aliases, metadata)
    tracker.finish(summary)


def _images(run: RunDir, data: Dataset, tmp: Path) -> list[tuple[str, Path, str]]:
    name = Path(run.path).name
    images = []
    if (Path(run.path) / PLOT).is_file():
        images.append(("loss_curve", Path(run.path) / PLOT, f"{name}: loss"))
    if Path(run.ckpt).is_file():
        drawn = draw_attention_of(run.ckpt, data, tmp / "attention.png", name)
        if drawn is not None:
            images.append(("attention", *drawn))
    return images


def model_versions(run: RunDir, summary: dict) -> list[tuple[dict[str, Path], list[str], dict]]:
    """(files, aliases, metadata) of each checkpoint worth keeping: the final one as `latest` and `step-N`, and
    `best` on the run's best.pt when that is an earlier step (listed first, so `latest` ends on the final one),
    else on the final one too."""
    path, steps = Path(run.path), int(summary.get("steps") or 0)
    if not Path(run.ckpt).is_file():
        return []

    def files(ckpt: Path) -> dict[str, Path]:
        return {"ckpt.pt": ckpt} | {extra: path / extra for extra in ("config.json", "summary.json")
                                    if (path / extra).is_file()}

    scalars = {k: v for k, v in summary.items() if k != "sample" and isinstance(v, (int, float, str))}
    best_step = separate_best(path)
    if best_step is None:
        return [(files(Path(run.ckpt)), ["latest", "best", f"step-{steps}"], scalars)]
    return [(files(path / BEST), ["best", f"step-{best_step}"], {"checkpoint": BEST, "steps": best_step}),
            (files(Path(run.ckpt)), ["latest", f"step-{steps}"], scalars)]


def separate_best(run_path: Path) -> int | None:
    """The step of the run's best.pt when it is another checkpoint than ckpt.pt (an earlier step); None when
    there is none or it holds the same step (the final checkpoint is then the best)."""
    from ..fsutil import load_torch

    try:
        best_step = int(load_torch(Path(run_path) / BEST, within=run_path, mmap=True)["step"])
        final_step = int(load_torch(Path(run_path) / CKPT, within=run_path, mmap=True)["step"])
        return None if best_step == final_step else best_step
    except Exception:  # no best.pt, or one that cannot be read: `best` goes to the final checkpoint
        return None


def draw_attention_of(ckpt: Path, data: Dataset, out: Path, name: str) -> tuple[Path, str] | None:
    """The attention map of a GPT checkpoint over the start of `data`'s validation text, and its caption; None
    for a model without attention."""
    import torch

    from ..model.attention import attention_title, attention_weights, draw_attention
    from ..runs.checkpoint import load_model
    from ..model.gpt import GPT

    model, tok, state = load_model(ckpt, "cpu")
    if not isinstance(model, GPT):
        return None
    prompt = data.tokenizer.decode(data.split("val")[:min(ATTENTION_PROMPT_CHARS, model.config.block_size)].tolist())
    if not prompt:
        return None
    weights = attention_weights(model, torch.tensor([tok.encode(prompt)], dtype=torch.long))[0]
    title = attention_title(name, state["step"], *weights.shape[:2])
    return draw_attention(weights, prompt, out, title=title), f"{title}, over {prompt!r}"
