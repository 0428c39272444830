"""chargpt from Python (a notebook cell at a time): `prepare` a dataset, `train` in this process, `load` a run,
then generate, score and plot. Each function writes and reads the same files as the CLI."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from .config import (DEFAULT_RUN, DEFAULT_RUNS_DIR, Config, PrepareOptions, RunOptions, TrainConfig, check_given,
                     dataset_dir)
from .data.dataset import Dataset, load_dataset
from .errors import ChargptError, CheckpointError, ConfigError, DataError
from .runs.rundir import CKPT, SUMMARY, Located, read_metrics
from .model.sampling import DEFAULTS, MAX_TOGETHER, SamplingParams, prompt_ids
from .schema import RENAMED, check, check_value, renamed_note
from .sweeps.study import DEFAULT_PRUNER

if TYPE_CHECKING:
    from .track.tracker import Tracker


def prepare(source: str | os.PathLike | None = None, out: str | os.PathLike | None = None, val_fraction: float = 0.1,
            name: str | None = None, token_dtype: str = "auto", replace: bool = False, *, text: str | None = None,
            **renamed) -> Dataset:
    """Encode a text file, a known corpus ("shakespeare": found or downloaded) or, with `text=`, a string of
    text into a dataset directory (default `data/<name>`); return it: what `chargpt prepare` does with the same
    arguments (`--input`/`--dataset` are `source`).

    `source` is always a file or a corpus name, never text: a mistyped path is an error, not a dataset of its
    characters. Text given in Python is recorded as such in the dataset's meta.json, with its sha256."""
    from .data.corpus import DATASETS, locate
    from .data.dataset import prepare as prepare_files

    token_dtype = _renamed(renamed, prepare, DataError, token_dtype=token_dtype)["token_dtype"]
    if (source is None) == (text is None):
        raise DataError("prepare() takes a file or corpus name, or text=\"the text itself\": pass one of them")
    if text is not None and not isinstance(text, str):
        raise DataError(f"text= must be a string, got {type(text).__name__}; pass a file's path as the first argument")
    _check_paths(DataError, source=source, out=out)
    check_value(PrepareOptions, "val_fraction", val_fraction, error=DataError)
    check_value(PrepareOptions, "token_dtype", token_dtype, error=DataError)
    if name is not None:
        check("name", name, str, DataError)
    if isinstance(source, str) and source in DATASETS and not Path(source).exists():
        name, source = name or source, locate(source)
    if source is not None:
        if not Path(source).is_file():
            what = "is not a file" if Path(source).exists() else "does not exist"
            raise DataError(f"{source} {what}; pass a text file, a known corpus ({', '.join(DATASETS)}), or the "
                            f"text itself as prepare(text=...)")
        name = name or Path(source).stem
        _say(prepare_files(source, out or dataset_dir(name), val_fraction=val_fraction, name=name, dtype=token_dtype,
                           replace=replace).note)
        return load_dataset(out or dataset_dir(name))
    digest = hashlib.sha256(_utf8(text)).hexdigest()
    name = name or "text-" + digest[:8]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        _say(prepare_files(path, out or dataset_dir(name), val_fraction=val_fraction, name=name, dtype=token_dtype,
                           replace=replace, source=f"text given in Python (prepare(text=...), sha256 {digest})").note)
    return load_dataset(out or dataset_dir(name))


def _utf8(text: str) -> bytes:
    """`text=` as the UTF-8 a dataset's text file holds; a lone surrogate (no character: what decoding bytes with
    errors="surrogateescape" leaves) is refused, naming where it is."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"text= holds a lone surrogate {text[e.start]!r} at character {e.start:,}, which is no "
                        f"character and no UTF-8 text can hold; remove it, or decode the text's bytes without "
                        f"errors=\"surrogateescape\"") from None


def _say(note: str | None) -> None:
    if note:
        print(note)


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (whose output is no terminal, yet shows a progress bar)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def train(preset: str | None = None, data: Dataset | str | os.PathLike | None = None, *,
          resume: str | os.PathLike | None = None, init_from: str | os.PathLike | None = None,
          config: str | os.PathLike | None = None, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
          name: str | None = None, tracker: "str | Tracker | None" = None, wandb: bool = False, verbose: bool = True,
          **fields) -> "Run":
    """Train in this process and return the `Run`: what `chargpt train` does with the same arguments.

    `preset` is a named configuration (default: lecture on CUDA, cpu elsewhere), `config` a config file, and any
    config field is a keyword (`n_layer=4`, `time_budget="2m"`); the vocabulary, and so the head's size, come from
    `data` (default: data/shakespeare). `resume` continues a run directory; `init_from` fine-tunes a run's
    weights on `data`. `tracker` is "tensorboard", "wandb" (or `wandb=True`) or a `chargpt.track.tracker.Tracker`.
    `verbose=False` shows nothing."""
    from .training.entry import TrainRequest, plan_training

    runs_dir = _renamed(fields, runs_dir=runs_dir)["runs_dir"]  # the other keywords: config fields
    _check_keywords(fields)
    _check_train_arguments(preset, data, resume, init_from, config, runs_dir, name, fields)
    if wandb and tracker not in (None, "wandb"):
        raise ConfigError(f"wandb=True and tracker={tracker!r} name two trackers; pass one")
    request = TrainRequest(preset=preset, config_file=config, fields=fields, fields_from="train()", data=data,
                           resume=resume, init_from=init_from, runs_dir=runs_dir, name=name,
                           tracker="wandb" if wandb else tracker)
    echo = print if verbose else None
    plan = plan_training(request, echo=echo)
    if plan.finished:
        plan.resume_run.unlock()  # nothing to write: the run is free for another writer
        if echo:
            echo(plan.finished)
        return Run(plan.resume_run.path)
    t, _ = plan.run(echo=echo, notebook=verbose and in_jupyter())
    return Run(t.writer.run.path, _model=t.model.eval(), _tokenizer=t.data.tokenizer)


def _renamed(given: dict, function=None, error: type = ConfigError, **current) -> dict:
    """`current` (keyword: value), with the value of a keyword's old name (`schema.RENAMED`) taken out of `given`
    instead, where one was passed: it works for one more release, with a FutureWarning saying the new name. Given
    the `function` whose extra keywords `given` holds, any other keyword left there is refused, as Python would."""
    import warnings

    for old, new in RENAMED.items():
        if old in given and new in current:
            warnings.warn(renamed_note(old).removeprefix("note: "), FutureWarning, stacklevel=3)
            current[new] = given.pop(old)
    if function is not None and given:
        _refuse_keyword(next(iter(given)), function, error)
    return current


def _refuse_keyword(keyword: str, function, error: type = ConfigError, also: list[str] = (),
                    also_said: str = "") -> None:
    """Refuse `keyword`, which `function` does not take, as Python would, naming the keywords it takes (and
    `also_said`, what else it takes: the names `also`) and the one meant where one is close: the one message of
    every function of the library."""
    import inspect

    from .schema import did_you_mean

    takes = [p.name for p in inspect.signature(function).parameters.values()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]
    raise error(f"{function.__qualname__}() got an unexpected keyword {keyword!r}"
                f"{did_you_mean(keyword, [*takes, *also])}; it takes {', '.join(takes)}{also_said}")


def _check_paths(error: type = ConfigError, **paths) -> None:
    """Each of `paths` (argument: value) a path or None."""
    for name, value in paths.items():
        if value is not None:
            check(name, value, os.PathLike, error)


def _text(name: str, value) -> str:
    """A text argument (a prompt): a string, or None for the empty one (which starts from a newline)."""
    return "" if value is None else check(name, value, str)


def _check_train_arguments(preset, data, resume, init_from, config, runs_dir, name, fields) -> None:
    """`train`'s arguments by the rules of `chargpt train`'s flags, before any work: config fields by their
    declarations (type and range), the run name by its pattern."""
    if preset is not None:
        check("preset", preset, str)
    if not isinstance(data, Dataset):
        _check_paths(data=data)
    _check_paths(resume=resume, init_from=init_from, config=config, runs_dir=runs_dir)
    if name is not None:
        check_value(RunOptions, "name", name, spell=str)
    check_given(fields, "train()")


def _check_keywords(given: dict) -> None:
    """Refuse a keyword `train` does not use, as Python does, naming those it takes."""
    from .config import config_fields

    known = {f.name for _, f in config_fields()}
    unknown = [k for k in given if k not in known]
    if unknown:
        _refuse_keyword(unknown[0], train, also=sorted(known),
                        also_said=" and any config field (`chargpt train --help` lists them)")


def sweep(name: str, data: Dataset | str | os.PathLike | None = None, *, trials: int | None = None,
          trial_budget: str | float | None = None, time_budget: str | float | None = None,
          space: str | os.PathLike | dict | None = None, search: list[str] | tuple = (), storage: str | None = None,
          workers: int = 1, pruner: str = DEFAULT_PRUNER, seed: int = TrainConfig.seed, grace_period: float = 30.0,
          show: bool = False, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, tracker: str | None = None,
          wandb: bool = False, verbose: bool = True):
    """Search for the best configuration in this process: what `chargpt sweep` does with the same arguments; return
    the Optuna study (`study.best_trial`, `study.trials_dataframe()`).

    `trials` runs (and/or `time_budget` of wall clock), each an ordinary run of `trial_budget` ("90s", "500steps")
    on `data`; `space` is a TOML file or a dict of the same tables ({"lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "n_layer": [2, 3, 4]}), `search` its "NAME=VALUE" lines. The study is kept in sweeps/NAME/study.db, or `storage`
    (any Optuna storage URL, shared by other machines); `pruner` as `chargpt sweep --pruner`.
    `show` prints the table and writes the plots."""
    from .sweeps.entry import SweepRequest, run_sweep

    if wandb and tracker not in (None, "wandb"):
        raise ConfigError(f"wandb=True and tracker={tracker!r} name two trackers; pass one")
    request = SweepRequest(name, data=data, trials=trials, trial_budget=trial_budget, time_budget=time_budget,
                           space=space, search=list(search), storage=storage, workers=workers, pruner=pruner,
                           seed=seed, grace_period=grace_period, show=show, runs_dir=runs_dir,
                           tracker="wandb" if wandb else tracker, spell=str)
    return run_sweep(request, echo=print if verbose else None)


def load(path: str | os.PathLike = DEFAULT_RUN, device: str = "cpu", **renamed) -> "Run":
    """A run directory (`runs/latest`: the newest run with a checkpoint), or a checkpoint file, ready to generate,
    score and plot on `device` (as `--device`: cpu, cuda, cuda:N, mps or auto)."""
    from .runs.rundir import clear_stale_temporaries, locate_run

    _renamed(renamed, load)
    check("path", path, os.PathLike)
    device = _device(device)
    found = locate_run(path, checkpoint=False)
    clear_stale_temporaries(found.run)
    return Run(found.run, ckpt=found, device=device)


def _device(device: "str | torch.device") -> torch.device:
    """`device=` resolved by `--device`'s rules (`runtime.device.resolve_device`): one that is not here is refused
    now, not when the model is first used."""
    from .runtime.device import resolve_device

    if isinstance(device, torch.device):
        return device
    check_value(TrainConfig, "device", device, spell=str)
    return resolve_device(device, spell=str)


class Run:
    """A training run on disk: config, metrics, summary, and its model, loaded when first used."""

    def __init__(self, path: str | os.PathLike, ckpt: str | os.PathLike | Located | None = None,
                 device: str | torch.device = "cpu", _model=None, _tokenizer=None):
        _check_paths(path=path, ckpt=None if isinstance(ckpt, Located) else ckpt)
        self.path = Path(path)
        # the checkpoint as `locate_run` found it, read by its rule: a run's own only from inside the run
        self._found = ckpt if isinstance(ckpt, Located) else Located(
            self.path, Path(ckpt) if ckpt is not None else self.path / CKPT, None if ckpt is not None else self.path)
        self.ckpt = self._found.ckpt
        self.device = _device(device)
        self._model, self._tokenizer, self._config = _model, _tokenizer, None
        self._step: int | None = None  # the loaded checkpoint's step (a model handed over by train(): its summary's)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self) -> Config:
        if self._config is None:
            from .runs import checkpoint

            self._config = Config.from_dict(checkpoint.load(self._found)["config"])
        return self._config

    @property
    def summary(self) -> dict:
        from .fsutil import read_json

        path = self.path / SUMMARY
        if not path.exists():
            return {}
        try:
            summary = read_json(path, within=self.path)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); the run's other "
                                  f"records (metrics, checkpoint) are still there") from None
        if not isinstance(summary, dict):
            raise CheckpointError(f"{path} is not a JSON object; the run's other records are still there")
        return summary

    @property
    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def _load(self) -> None:
        from .runs.checkpoint import load_model

        self._model, self._tokenizer, state = load_model(self._found, self.device)
        self._config, self._step = Config.from_dict(state["config"]), state["step"]

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    # ----------------------------------------------------------------------------------- generation
    def stream(self, prompt: str = "", max_new_tokens: int = DEFAULTS.max_new_tokens,
               temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k,
               top_p: float = DEFAULTS.top_p, seed: int = DEFAULTS.seed, **renamed) -> Iterator[str]:
        """Yield the generated characters one at a time (the prompt itself is not repeated). The parameters are
        `chargpt sample`'s, checked by the same rules (top_k 0: every character; None: the default, and an empty
        or None prompt starts from a newline)."""
        from .model.engine import Engine

        _renamed(renamed, self.stream)
        prompt = _text("prompt", prompt)
        params = SamplingParams.checked(str, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                        top_p=top_p, seed=seed)
        tok = self.tokenizer
        columns = Engine(self.model.eval()).sample(prompt_ids(tok, prompt), params)  # refused here, not when read
        return (tok.decode(col[0].tolist()) for col in columns)

    def generate(self, prompt: str | list[str] = "", max_new_tokens: int = DEFAULTS.max_new_tokens,
                 temperature: float = DEFAULTS.temperature, top_k: int = DEFAULTS.top_k,
                 top_p: float = DEFAULTS.top_p, seed: int = DEFAULTS.seed, **renamed) -> str | list[str]:
        """The prompt and its continuation: the same text `chargpt sample` prints for the same arguments. A list of
        prompts is sampled together, one batched step per character (`chargpt sample --prompts-file`): the list of
        what each prompt gives alone, to float32 rounding."""
        _renamed(renamed, self.generate)
        if isinstance(prompt, (list, tuple)):
            return self._generate_all(prompt, max_new_tokens, temperature, top_k, top_p, seed)
        prompt = _text("prompt", prompt)
        return prompt + "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed))

    def _generate_all(self, prompts, max_new_tokens, temperature, top_k, top_p, seed) -> list[str]:
        from .model.batchdecode import sample_all
        from .model.engine import Engine

        check("the number of prompts (sampled together)", len(prompts), int, min=0, max=MAX_TOGETHER)
        prompts = [_text(f"prompt[{i}]", p) for i, p in enumerate(prompts)]
        params = SamplingParams.checked(str, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                        top_p=top_p, seed=seed)
        tok = self.tokenizer
        new = sample_all(Engine(self.model.eval()), [prompt_ids(tok, p) for p in prompts], params)
        return [p + tok.decode(ids) for p, ids in zip(prompts, new)]

    def loss(self, text: str, **renamed) -> float:
        """Mean cross-entropy of `text` in nats/char: every character after the first scored once."""
        from .training.evaluate import full_pass_loss

        _renamed(renamed, self.loss)
        ids = torch.tensor(self.tokenizer.encode(check("text", text, str)), dtype=torch.long)
        if len(ids) < 2:
            raise DataError("loss() needs a text of at least 2 characters")
        model = self.model
        return full_pass_loss(model, ids, model.config.block_size, next(model.parameters()).device)

    # -------------------------------------------------------------------------------------- figures
    def plot(self, path: str | os.PathLike | None = None, **renamed):
        """Train and val loss against steps and training time, as a matplotlib Figure (saved to `path` too)."""
        from .runs.plotting import run_figure

        _renamed(renamed, self.plot)
        out = _claimed(path, self.path)
        fig = run_figure(self.path)
        if fig is None:
            raise DataError(f"{self.path} has no evaluations to plot yet")
        return _saved(fig, out)

    def attention(self, prompt: str, path: str | os.PathLike | None = None, **renamed):
        """Each head's attention over `prompt` (a row per layer, a column per head) as a Figure."""
        from .model.attention import attention_figure, attention_title, attention_weights

        _renamed(renamed, self.attention)
        out = _claimed(path, self.path, self.ckpt)
        check("prompt", prompt, str)
        model = self.model
        idx = torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=next(model.parameters()).device)
        weights = attention_weights(model, idx)[0]
        step = self._step if self._step is not None else self.summary.get("steps")
        title = attention_title(self.path.name, step, *weights.shape[:2]) if step is not None else None
        return _saved(attention_figure(weights, prompt, title=title), out)  # titled as `chargpt attention` titles it


def compare(runs: list["Run | str | os.PathLike"], path: str | os.PathLike | None = None, *,
            all: bool = False, **renamed):  # noqa: A002 (`chargpt runs --plot --all`'s name)
    """Several runs' validation curves on one Figure (saved to `path` too); runs trained on different datasets
    only with `all` (as `chargpt runs --plot --all`)."""
    all = _renamed(renamed, compare, all=all)["all"]
    from .runs.plotting import runs_figure
    from .runs.rundir import METRICS
    from .runs.listing import check_comparable, read_run

    if not isinstance(runs, (list, tuple)):
        raise ConfigError(f"compare() takes a list of runs (Run objects or run directories), got "
                          f"{type(runs).__name__}; e.g. compare([\"runs/a\", \"runs/b\"])")
    _check_paths(**{f"runs[{i}]": r for i, r in enumerate(runs) if not isinstance(r, Run)})
    paths = [r.path if isinstance(r, Run) else Path(r) for r in runs]
    if not paths:
        raise ConfigError("compare() needs at least one run: a Run or a run directory")
    for p in paths:
        if not (p / METRICS).is_file():
            raise CheckpointError(f"{p} is not a run directory (no {METRICS} there); pass runs `chargpt train` "
                                  f"wrote, e.g. compare([\"runs/a\", \"runs/b\"])")
    out = _claimed(path, *paths)
    if not all:
        check_comparable([read_run(p) for p in paths], "all=True")
    return _saved(runs_figure(paths), out)


def _claimed(path, *inputs):
    """`path=` checked as the output of a call that reads `inputs`, before anything is drawn (None: no file)."""
    from .fsutil import claim_output

    _check_paths(path=path)
    return None if path is None else claim_output(path, inputs, name="path")


def _saved(fig, out):
    ipython = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if ipython is not None:  # Jupyter: a returned Figure shows as a PNG (no pyplot state, no second copy)
        ipython.display_formatter.formatters["image/png"].for_type(type(fig), _png)
    if out is not None:
        from .fsutil import save_figure

        save_figure(fig, out)
    return fig


def _png(fig) -> bytes:
    from .runs.plotting import png_bytes

    return png_bytes(fig)


def load_artifact(name: str, *, root: str | os.PathLike | None = None) -> "Dataset | Run":
    """Download a W&B artifact ("entity/project/name:alias"): a dataset gives its `Dataset`, a model its `Run`."""
    check("name", name, str)
    _check_paths(root=root)
    try:
        import wandb

        artifact = wandb.Api(timeout=30).artifact(name)
        where = Path(artifact.download(root=None if root is None else str(root)))
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise ChargptError(f"cannot download W&B artifact {name} ({first}); log in with `wandb login` and check "
                           f"the name (entity/project/name:alias)") from None
    if artifact.type == "dataset":
        return load_dataset(where)
    ckpts = sorted(where.glob("*.pt"))
    if not ckpts:
        raise CheckpointError(f"artifact {name} holds no checkpoint (.pt) in {where}")
    return load(ckpts[0])
