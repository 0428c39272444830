"""A checkpoint's step, read without torch: `chargpt runs` lists a hundred runs in well under a second, where
importing torch alone takes seconds.

A torch file is a zip archive whose `<archive>/data.pkl` pickles the saved object, its tensors as calls to
torch's rebuild functions on storages kept in other members. Only that member is read (through
`fsutil.open_regular`, and at most `PICKLE_LIMIT` bytes), by an unpickler that builds plain containers and an
inert stand-in for each tensor: it refuses every other global, so no code from the file runs and no tensor is
read. tests/runs/test_ckptmeta.py holds it equal to `torch.load` on checkpoints chargpt writes.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

from ..fsutil import open_regular

FORMAT = "chargpt-checkpoint"  # a checkpoint's "format"
PICKLE_LIMIT = 64 << 20  # data.pkl holds a checkpoint's structure, not its tensors: kilobytes for chargpt's
PICKLE = "data.pkl"


class Tensor:
    """What a tensor or a storage unpickles to here: nothing of it is read, and nothing is called."""

    def __init__(self, *args, **kwargs) -> None:
        pass


def _stand_in(*args, **kwargs) -> Tensor:
    return Tensor()


class _Unpickler(pickle.Unpickler):
    """Plain containers, and `Tensor` for torch's tensors and storages; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):  # a state dict
            return collections.OrderedDict
        if module == "torch._utils" and name.startswith("_rebuild_"):
            return _stand_in
        if module == "torch" and name.endswith("Storage"):  # a storage's type, in its persistent id
            return Tensor
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid) -> Tensor:  # a storage, kept in a member of its own
        return Tensor()


def saved_object(path: str | os.PathLike, within: str | os.PathLike | None = None):
    """The object pickled in the torch file `path`, its tensors as `Tensor`s; OSError for a file that
    `open_regular` refuses, ValueError (or pickle's errors) for one that is not a torch file or wants to run code."""
    with open_regular(path, within) as f, zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        if not names or "/" not in names[0]:
            raise ValueError(f"{path} is not a torch file")
        member = archive.getinfo(f"{names[0].split('/', 1)[0]}/{PICKLE}")  # torch's own rule: the first member's folder
        if member.file_size > PICKLE_LIMIT:
            raise ValueError(f"{path}'s {PICKLE} is over {PICKLE_LIMIT:,} bytes")
        with archive.open(member) as m:
            data = m.read(PICKLE_LIMIT + 1)
    if len(data) > PICKLE_LIMIT:
        raise ValueError(f"{path}'s {PICKLE} is over {PICKLE_LIMIT:,} bytes")
    return _Unpickler(io.BytesIO(data), encoding="utf-8").load()


def is_checkpoint(path: str | os.PathLike, within: str | os.PathLike | None = None) -> bool:
    """Whether `path` is a torch file holding a chargpt checkpoint (by its "format"; nothing else of it is checked)."""
    try:
        state = saved_object(path, within)
    except Exception:  # noqa: BLE001 - whatever a damaged or foreign file raises, it is no checkpoint to use
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def saved_step(path: str | os.PathLike, within: str | os.PathLike | None = None):
    """The "step" the checkpoint `path` was saved at, as stored (the caller checks it is a count); None for a file
    that is missing, refused, not a torch file, damaged, or that holds no step or would run code."""
    try:
        state = saved_object(path, within)
    except Exception:  # noqa: BLE001 - whatever a damaged or hostile file raises, its step is unknown
        return None
    return state.get("step") if isinstance(state, dict) else None
