"""Weights & Biases: the `wandb` tracker (a `training` run per run directory, resumed runs continued), and the
dataset artifacts of `chargpt prepare --wandb` and `--dataset-artifact`.

A training run's failures become one warning line on stderr, after which the tracker goes quiet
(`tracker.GuardedTracker`); its files go into the run directory's `wandb/` unless WANDB_DIR names another place.
`wandb` is imported only when used. wandb's own environment variables (WANDB_MODE, WANDB_PROJECT,
WANDB_ENTITY, ...), also from a `.env` file, count as chargpt's defaults; flags given on the command line win.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Callable

from . import tracker
from ..fsutil import read_json_object, write_json
from ..runs.rundir import default_run_name
from ..runtime.envfile import load_env_file

# wandb reads WANDB_SILENT when its settings singleton is first made (is_logged_in makes it, before wandb.setup
# could pass silent=True), and prints "wandb: [wandb.login()] Loaded credentials ..." otherwise. A user's own
# WANDB_SILENT=false is kept.
os.environ.setdefault("WANDB_SILENT", "true")
INIT_TIMEOUT = 10.0  # seconds wandb may spend reaching the server before we fall back to offline (its default: 90)
FINISH_TIMEOUT = 120.0  # seconds to wait for uploads at the end before leaving them to `wandb sync`
DOWNLOAD_TIMEOUT = 300.0
TINY_SHAKESPEARE_ARTIFACT = "mini-shakespeare-tensors"  # the notebook's name
DEFAULT_PROJECT = "nanogpt"  # the notebook's project: its use_artifact('nanogpt/mini-shakespeare-tensors:latest')
RUN_ID_FILE = "wandb-run.json"  # in the run directory: the W&B run a resumed run continues
SUBDIR = "wandb"  # in the run directory: wandb's files of its training run (offline: what `wandb sync` uploads)


# ------------------------------------------------------------------------------------------ helpers
def warn(what: str, exc: BaseException | None = None) -> None:
    tracker.warn(what, exc, "wandb")


def notice(text: str) -> None:
    tracker.notice("wandb", text)


def dataset_artifact_name(meta: dict) -> str:
    """`mini-shakespeare-tensors` for tiny Shakespeare (by name or by content; the notebook's name), else
    `<name>-tensors`."""
    from ..data.corpus import SHAKESPEARE_SHA256

    name = str(meta.get("name") or "dataset")
    if name == "shakespeare" or meta.get("source_sha256") == SHAKESPEARE_SHA256:
        return TINY_SHAKESPEARE_ARTIFACT
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + "-tensors"


def resolve_project(project: str | None) -> str:
    """The flag, else wandb's WANDB_PROJECT, else the notebook's project."""
    return project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def resolve_mode(mode: str) -> tuple[str, str]:
    """(online | offline | disabled, why): a mode other than auto is kept; auto follows wandb's WANDB_MODE (or
    WANDB_DISABLED) when set, else is online when an API key is configured and offline otherwise."""
    if mode != "auto":
        return mode, ""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={env}, so "
    if env == "disabled" or os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled", ("WANDB_MODE=disabled" if env == "disabled" else "WANDB_DISABLED is set") + ", so "
    if env in ("online", "run"):
        return "online", ""
    return ("online", "") if is_logged_in() else ("offline", "not logged in, so ")


def is_logged_in() -> bool:
    """Whether an API key is configured (environment, ~/.netrc or wandb settings); no network is used."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth import authenticate_session

        host = wandb_setup.singleton().settings.base_url
        return authenticate_session(host=host, source="chargpt", prompt=False, update_session=False) is not None
    except Exception:  # an internal API that moved: fall back to the documented variable
        return bool(os.environ.get("WANDB_API_KEY"))


def _bounded(fn: Callable[[], object], seconds: float) -> tuple[bool, object]:
    """Run `fn` in a daemon thread for at most `seconds`: (finished, result or exception)."""
    box: list = [None]

    def target():
        try:
            box[0] = fn()
        except Exception as e:  # handed back to the caller, who turns it into a warning
            box[0] = e

    t = threading.Thread(target=target, daemon=True, name="chargpt-wandb")
    t.start()
    t.join(seconds)
    return not t.is_alive(), box[0]


def _init_timeout() -> float:
    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT))
    except ValueError:
        return INIT_TIMEOUT


def _init(*, mode: str, job_type: str, name: str, project: str | None, entity: str | None, config: dict,
          run_id: str | None = None, run_dir=None):
    """Start a wandb run (`resolve_mode`); an online start that fails or times out falls back to offline. With
    `run_id`, the run continues that W&B run (resume="allow"); with `run_dir` (a `RunDir`), wandb's files go into
    its `wandb/` (unless WANDB_DIR is set). Returns the run, or None (disabled or failed, already reported)."""
    load_env_file()
    want, why = resolve_mode(mode)
    if want == "disabled":
        if why:
            notice(f"{why}not tracking {name}")
        return None
    root = {}
    if run_dir is not None and not os.environ.get("WANDB_DIR"):
        root = {"dir": str(run_dir.subdir(SUBDIR).parent)}  # a directory of the run, never a link out of it
    try:
        import wandb

        # Silent before anything else reads the settings: chargpt prints the few lines that matter itself.
        wandb.setup(settings=wandb.Settings(silent=True))
    except Exception as e:
        warn("cannot load wandb; going on without it", e)
        return None

    def start(m: str):
        settings = wandb.Settings(init_timeout=_init_timeout(), silent=True, console="off")
        resume = {"id": run_id, "resume": "allow"} if run_id else {}
        return wandb.init(project=resolve_project(project), entity=entity, name=name, job_type=job_type,
                          config=config, mode=m, settings=settings, **resume, **root)

    if want == "online":
        try:
            run = start("online")
            notice(f"tracking {name} online at {run.url}")
            return run
        except Exception as e:
            _teardown(wandb)
            warn_prefix = "cannot start an online run"
            try:
                run = start("offline")
            except Exception as e2:
                warn(f"{warn_prefix}, nor an offline one; going on without wandb", e2)
                _teardown(wandb)
                return None
            sync_dir = _sync_dir(run)
            warn(f"{warn_prefix}; tracking offline in {sync_dir} instead, upload later with: "
                 f"wandb sync {sync_dir}", e)
            return run
    try:
        run = start("offline")
    except Exception as e:
        warn("cannot start an offline run; going on without wandb", e)
        _teardown(wandb)
        return None
    notice(f"{why}tracking offline in {_sync_dir(run)}; upload later with: wandb sync {_sync_dir(run)}")
    return run


def _sync_dir(run) -> str:
    """The offline run's directory, relative when it is under the working directory (shorter to copy)."""
    try:
        path = Path(run.settings.sync_dir)
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    except Exception:
        return "the wandb directory"


def _is_offline(run) -> bool:
    try:
        return bool(run.settings._offline)
    except Exception:
        return run.settings.mode in ("offline", "dryrun")


def _teardown(wandb) -> None:
    """Stop wandb-core (it outlives `finish()` until `teardown()` or interpreter exit)."""
    try:
        wandb.teardown()
    except Exception:
        pass


def _finish(run, what: str) -> None:
    """finish() and teardown() within FINISH_TIMEOUT; a stuck upload is left to `wandb sync`."""
    import wandb

    sync_dir = _sync_dir(run)

    def stop():
        run.finish()
        wandb.teardown()

    done, err = _bounded(stop, FINISH_TIMEOUT)
    if not done:
        warn(f"{what}: uploading did not finish within {FINISH_TIMEOUT:.0f} s; the data is kept in {sync_dir}, "
             f"upload it with: wandb sync {sync_dir}")
    elif isinstance(err, Exception):
        warn(f"{what}: finishing the run failed", err)
        _teardown(wandb)


# ------------------------------------------------------------------------------------------ dataset
def log_dataset(out_dir: Path, meta: dict, *, mode: str = "auto", project: str | None = None,
                entity: str | None = None, artifact_name: str | None = None) -> None:
    """`chargpt prepare --wandb`: a `dataset-prep` run that logs the dataset directory as a `dataset` artifact
    (project: `resolve_project`; entity: WANDB_ENTITY or the logged-in default)."""
    name = artifact_name or dataset_artifact_name(meta)
    metadata = {k: meta.get(k) for k in ("name", "vocab_size", "vocab", "total_chars", "train_tokens", "val_tokens",
                                         "val_fraction", "dtype", "source_sha256", "train_sha256", "val_sha256")}
    metadata["source"] = Path(str(meta.get("source", ""))).name
    run = _init(mode=mode, job_type="dataset-prep", name=f"prepare-{meta.get('name', 'dataset')}",
                project=project, entity=entity, config={k: v for k, v in metadata.items() if k != "vocab"})
    if run is None:
        return
    try:
        import wandb

        artifact = wandb.Artifact(name, type="dataset", metadata=metadata,
                                  description=f"{meta.get('name')} encoded by chargpt: train.pt and val.pt are 1-D "
                                              f"token tensors, meta.json holds the vocabulary")
        for file in ("train.pt", "val.pt", "meta.json"):
            artifact.add_file(str(Path(out_dir) / file), name=file)
        run.log_artifact(artifact)
        notice(f"logged {out_dir} as dataset artifact {name}")
    except Exception as e:
        warn(f"cannot log {out_dir} as artifact {name}; the local dataset is unaffected", e)
    _finish(run, "dataset-prep run")


def download_dataset(artifact: str, *, mode: str = "auto") -> Path | None:
    """Download a dataset artifact (online only) and return its directory; None, with one line why, otherwise."""
    load_env_file()
    want, why = resolve_mode(mode)
    if want != "online":
        notice(f"{why}{artifact} cannot be downloaded; using the local dataset" if why else
               f"{want} mode cannot download {artifact}; using the local dataset")
        return None
    try:
        import wandb

        done, result = _bounded(lambda: wandb.Api(timeout=30).artifact(artifact, type="dataset").download(),
                                DOWNLOAD_TIMEOUT)
    except Exception as e:
        done, result = True, e
    if not done:
        warn(f"downloading {artifact} took over {DOWNLOAD_TIMEOUT:.0f} s; using the local dataset")
        return None
    if isinstance(result, Exception):
        warn(f"cannot download {artifact}; using the local dataset", result)
        return None
    notice(f"downloaded dataset artifact {artifact} to {result}")
    return Path(str(result))


# ----------------------------------------------------------------------------------------- training
class WandbTracker:
    """A `training` run: config (with provenance), metrics, samples table, summary, loss curve and attention map
    as images, and the checkpoints as `model` artifacts. A resumed run continues the same W&B run.

    project: the given one, else the one the run was started in, else `resolve_project`; entity: the given one,
    else the run's, else WANDB_ENTITY or the logged-in default; name: the given one, else the run's, else
    WANDB_NAME, else `default_run_name`; mode: see `resolve_mode`."""

    def __init__(self, *, mode: str = "auto", project: str | None = None, entity: str | None = None,
                 name: str | None = None, dataset_artifact: str | None = None):
        self.options = dict(mode=mode, project=project, entity=entity)
        self.name = name
        self.dataset_artifact = dataset_artifact  # the artifact trained on, recorded in the run's lineage
        self.run = None  # the wandb run; None before start and once wandb has failed: the tracker does nothing

    def start(self, run, config: dict, data) -> None:
        load_env_file()
        previous = read_run_id(run.path) if run is not None else {}
        self.name = self.name or previous.get("name") or os.environ.get("WANDB_NAME") or \
            default_run_name(config["model"]["model"], config.get("preset"))
        artifact = self.dataset_artifact or dataset_artifact_name(data.meta)
        config = config | {"dataset": config.get("dataset", {}) | {"artifact": artifact}}
        self.run = _init(mode=self.options["mode"], job_type="training", name=self.name, config=config,
                         run_id=previous.get("id"), project=self.options["project"] or previous.get("project"),
                         entity=self.options["entity"] or previous.get("entity"), run_dir=run)
        if self.run is None:
            return
        if run is not None:
            _remember_run_id(run.path, self.run, self.name)
        self._use_dataset(data, artifact, named=self.dataset_artifact is not None)

    def _use_dataset(self, data, artifact: str, named: bool) -> None:
        """Record the dataset in the run's lineage; offline runs cannot, so the content hash (in the config) stands in."""
        if _is_offline(self.run):
            notice(f"offline runs cannot use artifacts: the local dataset {data.path} (content hash "
                   f"{data.content_hash[:12]}) is recorded in the config instead of {artifact}")
            return
        try:
            if named:
                self.run.use_artifact(artifact)
            else:
                # The same files as `chargpt prepare --wandb` logged: wandb deduplicates by digest, so the lineage
                # points at that version (or creates one).
                import wandb

                draft = wandb.Artifact(artifact, type="dataset", metadata={"content_hash": data.content_hash})
                for file in ("train.pt", "val.pt", "meta.json"):
                    draft.add_file(str(Path(data.path) / file), name=file)
                self.run.use_artifact(draft)
        except Exception as e:
            warn(f"cannot record dataset artifact {artifact}; its content hash is in the config", e)

    def abandon(self) -> None:
        """After a failure: end the W&B run as failed, without waiting long (a wandb that fails may also hang)."""
        run, self.run = self.run, None
        if run is None:
            return

        def stop():
            import wandb

            run.finish(exit_code=1)
            _teardown(wandb)

        _bounded(stop, 30.0)

    def log(self, record: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)  # copies the file now

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        if self.run is None:
            return
        import wandb

        version = wandb.Artifact(f"{self.name}-{kind}", type=kind, metadata=metadata,
                                 description="chargpt checkpoint: weights, config, vocabulary, optimizer state")
        for name, path in files.items():
            version.add_file(str(path), name=name)
        self.run.log_artifact(version, aliases=aliases)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        import wandb

        if summary.get("sample"):  # the same step as the images: one row of the run's history
            self.run.log({"samples": wandb.Table(columns=["step", "sample"],
                                                 data=[[int(summary.get("steps") or 0), summary["sample"]]])},
                         step=int(summary.get("steps") or 0))
        self.run.summary.update({k: v for k, v in summary.items()
                                 if k != "sample" and isinstance(v, (int, float, str, bool))})
        wrun, self.run = self.run, None
        _finish(wrun, "training run")


TRACKER = WandbTracker


# --------------------------------------------------------------------------------- the run's W&B id
def read_run_id(run_path: str | os.PathLike) -> dict:
    """The W&B run a run directory was tracked in ({"id", "project", "entity", "name"}), or {}."""
    found = read_json_object(Path(run_path) / RUN_ID_FILE, within=run_path)
    return {k: v for k, v in found.items() if isinstance(v, str) and v}


def _remember_run_id(run_path: Path, wrun, name: str) -> None:
    try:
        write_json(Path(run_path) / RUN_ID_FILE, {"id": wrun.id, "project": wrun.project,
                                                  "entity": wrun.entity or None, "name": name})
    except Exception as e:  # an offline run's entity, or a full disk: resuming then starts a new W&B run
        warn(f"cannot keep the W&B run id in {run_path}; a resumed run will start a new W&B run", e)
