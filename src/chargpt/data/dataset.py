"""Dataset directories: encode a corpus into train/val tensors (the notebook's 90/10 split) and read them back.

A dataset directory holds `train.pt` and `val.pt` (1-D integer tensors, int64 as the notebook makes them up to
`NOTEBOOK_DTYPE_CHARS` characters, readable with `torch.load(path, weights_only=True)`) and `meta.json`
(vocabulary, sizes, split fraction, source sha256, content hash). Preparation streams the input in chunks, so
memory stays bounded, and writes the same bytes for the same input and options in any directory. A dataset is
identified by its content: its vocabulary and its splits' token values (`content_hash`).
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ..config import PrepareOptions, TokenDtype
from ..errors import DataError
from ..schema import check_value
from ..fsutil import (atomic_path, claim_output, kind_of, load_torch, not_regular, open_regular, read_json,
                      read_json_object, refused_global, remove_stale_temporaries, write_json)
from .swap import DirectoryWriter, restore
from .tensorfile import TensorFileWriter, chunks, load_mapped
from .tokenizer import CharTokenizer

FORMAT = "chargpt-dataset"
FORMAT_VERSION = 1
CHUNK = 1 << 24  # 16 MiB of input per step
DTYPES = {name: getattr(torch, name) for name in get_args(TokenDtype) if name != "auto"}
NOTEBOOK_DTYPE_CHARS = 100_000_000  # int64 (8 bytes a character) up to here; the smallest type above it
FILES = ("train.pt", "val.pt", "meta.json")  # all that chargpt writes into a dataset directory


class InputChanged(DataError):
    def __init__(self, path: Path):
        super().__init__(f"{path} changed while it was read; nothing was written. Run `chargpt prepare` again "
                         f"once the file stops changing")


def check_dataset_out(out_dir: Path, input_path: Path) -> None:
    """Refuse to write a dataset into a directory that holds files and is not a chargpt dataset, over the input
    itself, or inside a run or another dataset (`claim_output`, every output's check): chargpt replaces only the
    files of its own datasets."""
    claim_output(out_dir, directory=True)  # the input is held against it below, as the files it would replace
    kind = kind_of(out_dir)
    if kind is None:
        return
    if not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is {kind}, not a directory; choose a new or empty directory")
    for name in FILES:
        target = out_dir / name
        if target.exists() and input_path.exists() and os.path.samefile(target, input_path):
            raise DataError(f"--input {input_path} is the dataset's own {name}: preparing would overwrite its "
                            f"input; choose another --out")
    for name in FILES:
        if kind_of(out_dir / name) not in (None, "a regular file"):
            raise DataError(f"{out_dir / name} is {kind_of(out_dir / name)}, not a file chargpt wrote; "
                            f"remove it or choose another --out")
    remove_stale_temporaries(out_dir, FILES)
    if not any(out_dir.iterdir()):
        return
    if read_json_object(out_dir / "meta.json").get("format") != FORMAT:
        raise DataError(f"--out {out_dir} holds files and is not a chargpt dataset (no chargpt meta.json); "
                        f"chargpt leaves them as they are: choose a new or empty directory")


class DatasetExists(DataError):
    """`prepare --out` names a dataset of other content: runs trained on it could no longer resume or be scored."""


def smallest_dtype(vocab_size: int) -> str:
    if vocab_size <= 256:
        return "uint8"
    if vocab_size <= 32767:
        return "int16"
    return "int32"


def _read_chunks(path: Path):
    """Yield (raw bytes, text-as-uint32-code-points or uint8-ASCII array) chunks of a UTF-8 file."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with open_regular(path) as f:
        while True:
            raw = f.read(CHUNK)
            final = not raw
            if raw and b"\x00" in raw:
                at = offset + raw.index(b"\x00")
                raise DataError(f"{path} looks binary (NUL byte at offset {at}); chargpt trains on UTF-8 text")
            if raw.isascii() and not decoder.getstate()[0]:
                yield raw, np.frombuffer(raw, dtype=np.uint8)
            else:
                try:
                    text = decoder.decode(raw, final=final)
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path} is not valid UTF-8 (byte offset {offset + e.start}); convert it, e.g. "
                        f"`iconv -f latin1 -t utf-8 {path} > fixed.txt`"
                    ) from None
                if text:
                    yield raw, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if final:
                return
            offset += len(raw)


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict
    changed: bool
    note: str | None = None  # one line for the user: why the tensors are not int64


def prepare(input_path: str | os.PathLike, out_dir: str | os.PathLike, val_fraction: float = 0.1,
            name: str | None = None, dtype: str = "auto", replace: bool = False,
            source: str | None = None) -> PrepareResult:
    """Encode `input_path` into `out_dir`; a second call with the same input and options changes nothing.

    The dataset in `out_dir` is replaced whole, in one step, by one prepare at a time (`swap.DirectoryWriter`): a
    signal or a kill at any moment leaves the old dataset or the new one.

    `dtype="auto"` stores int64 (the notebook's tensors) up to `NOTEBOOK_DTYPE_CHARS` characters and the smallest
    type that holds the vocabulary above it, saying so in `PrepareResult.note`. A dataset of other content already
    in `out_dir` is replaced only with `replace`. `source` is where the text came from, as meta.json records it
    (default: `input_path`; text given in Python has no file to name)."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    check_value(PrepareOptions, "val_fraction", val_fraction, error=DataError)
    check_value(PrepareOptions, "token_dtype", dtype, error=DataError)
    if not input_path.is_file():
        what = "is not a file" if input_path.exists() else "does not exist"
        raise DataError(f"input file {input_path} {what}; pass --input with a UTF-8 text file")
    restore(out_dir)
    check_dataset_out(out_dir, input_path)
    corpus = scan_corpus(input_path)
    meta, note = dataset_meta(corpus, name or input_path.stem, val_fraction, dtype)
    meta["source"] = source or meta["source"]
    with DirectoryWriter(out_dir, FILES) as writer:  # one prepare at a time writes a dataset directory
        old = _existing_meta(out_dir)
        if old is not None and not replace and not _same_content(old, meta):
            raise DatasetExists(f"--out {out_dir} holds another dataset, {_describe(old)}, that runs may have been "
                                f"trained on; pass --replace to replace it, or choose another --out")
        if _up_to_date(out_dir, meta):
            return PrepareResult(out_dir, read_json(out_dir / "meta.json"), changed=False, note=note)
        # What runs of an older chargpt call the tokens there, when they are ours.
        same = old is not None and _same_content(old, meta)
        former_content, former = _former_hashes(out_dir, old) if same else (None, [])
        with writer.build() as new_dir:  # the old dataset stays whole until the new one replaces it in one step
            write_splits(corpus, new_dir, meta)
            if former and former_content == meta["content_hash"]:
                meta["former_hashes"] = former
            write_json(new_dir / "meta.json", meta)
    return PrepareResult(out_dir, meta, changed=True, note=note)


@dataclass
class Corpus:
    """What the first pass over an input found: its characters, how many, and its bytes' hash, size and time."""

    path: Path
    seen: np.ndarray  # indexed by code point: whether the input holds that character
    seen_ascii: bytes  # the ASCII characters among them (for bytes.translate)
    total: int
    sha256: str
    stamp: tuple[int, int]  # size and modification time, to notice a change before the second pass ends

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer("".join(map(chr, np.flatnonzero(self.seen))))


def scan_corpus(path: Path) -> Corpus:
    """Pass 1: find the vocabulary, count the characters and hash the source."""
    stamp = _stamp(path)
    sha = hashlib.sha256()
    seen = np.zeros(256, dtype=bool)
    seen_ascii = b""
    total = 0
    for raw, cps in _read_chunks(path):
        sha.update(raw)
        total += len(cps)
        if cps.dtype == np.uint8:  # ASCII: translate deletes the known characters at memory speed
            new = raw.translate(None, seen_ascii)
            if new:
                seen[np.frombuffer(new, dtype=np.uint8)] = True
        elif len(cps):
            if int(cps.max()) >= len(seen):
                seen = np.concatenate([seen, np.zeros(int(cps.max()) + 1 - len(seen), dtype=bool)])
            seen[cps] = True
        seen_ascii = bytes(np.flatnonzero(seen[:128]).tolist())
    if total == 0:
        raise DataError(f"{path} is empty; give a UTF-8 text file with at least a few hundred characters")
    return Corpus(path, seen, seen_ascii, total, sha.hexdigest(), stamp)


def dataset_meta(corpus: Corpus, name: str, val_fraction: float, dtype: str) -> tuple[dict, str | None]:
    """The vocabulary, the split and the stored type of the dataset `corpus` becomes (its meta.json before the
    files' hashes), and one line for the user when the tensors will not be int64."""
    tok, total = corpus.tokenizer, corpus.total
    n_train, n_val = split_sizes(total, val_fraction)
    if min(n_train, n_val) < MIN_SPLIT:
        bounds = val_fraction_bounds(total, MIN_SPLIT)
        if bounds is None:
            raise DataError(f"{corpus.path} has {total} character{'s' * (total != 1)}: too few to split into train "
                            f"and val")
        raise DataError(f"--val-fraction {val_fraction!r} leaves {n_train:,} of {corpus.path}'s {total:,} characters "
                        f"for train and {n_val:,} for val, and each needs at least {MIN_SPLIT}; use a fraction from "
                        f"{bounds[0]!r} to {bounds[1]!r}")
    note = None
    if dtype == "auto":
        dtype = "int64" if total <= NOTEBOOK_DTYPE_CHARS else smallest_dtype(tok.vocab_size)
        if dtype != "int64":
            note = (f"{total:,} characters: stored as {dtype} to save memory (int64, the notebook's type, would take "
                    f"{8 * total / 1e9:.1f} GB); pass --token-dtype int64 for the notebook's exact tensors")
    if tok.vocab_size > torch.iinfo(DTYPES[dtype]).max + 1:
        raise DataError(f"--token-dtype {dtype} cannot hold a vocabulary of {tok.vocab_size} characters; "
                        f"use --token-dtype auto")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "source": str(corpus.path),
        "source_sha256": corpus.sha256,
        "source_bytes": corpus.stamp[0],
        "total_chars": total,
        "vocab_size": tok.vocab_size,
        "vocab": tok.chars,
        "val_fraction": val_fraction,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "dtype": dtype,
    }
    return meta, note


MIN_SPLIT = 2  # a split holds at least one character and its next-character target


def split_sizes(total: int, val_fraction: float) -> tuple[int, int]:
    """How many of `total` characters go to train and to val: the notebook's `n = int(0.9 * len(data))`."""
    n_train = int((1.0 - val_fraction) * total)
    return n_train, total - n_train


def val_fraction_bounds(total: int, need: int) -> tuple[float, float] | None:
    """The smallest and the largest val fraction, in few digits, that leave at least `need` of `total` characters
    in each split; None when no fraction does."""
    if total < 2 * need:
        return None
    # val gets total - int((1 - f) * total) characters: at least `need` once f > (need - 1) / total
    lo = _short_decimal((need - 1) / total, lambda d: split_sizes(total, float(d))[1] >= need)
    gap = _short_decimal(need / total, lambda d: split_sizes(total, float(1 - d))[0] >= need)
    lo, hi = float(lo), float(1 - gap)
    return (lo, hi) if lo <= hi and min(*split_sizes(total, lo), *split_sizes(total, hi)) >= need else None


def _short_decimal(x: float, works) -> Decimal:
    """A decimal of few significant digits, at or just above `x`, for which `works` holds."""
    for digits in range(2, 18):
        exponent = math.floor(math.log10(x)) - digits + 1
        for k in range(3):
            candidate = Decimal(math.ceil(x / 10.0 ** exponent) + k).scaleb(exponent)
            if works(candidate):
                return candidate
    return Decimal(x)


def write_splits(corpus: Corpus, out_dir: Path, meta: dict) -> None:
    """Pass 2: encode the input chunk by chunk straight into `train.pt` and `val.pt` (no split is ever held in
    memory), then add the files' sha256 and the content hash to `meta`. The input is read a second time: it must
    be the bytes of pass 1, or what was counted is not what is encoded."""
    dtype, n_train = DTYPES[meta["dtype"]], meta["train_tokens"]
    np_dtype = np.dtype(str(dtype).replace("torch.", ""))
    table = np.zeros(len(corpus.seen), dtype=np_dtype)
    present = np.flatnonzero(corpus.seen)
    table[present] = np.arange(len(present), dtype=np_dtype)
    translation = table[:256].tobytes() if np_dtype == np.uint8 else None  # for bytes.translate, the fastest lookup
    with atomic_path(out_dir / "train.pt") as train_tmp, atomic_path(out_dir / "val.pt") as val_tmp:
        sha = hashlib.sha256()
        with TensorFileWriter(train_tmp, n_train, dtype) as ft, \
                TensorFileWriter(val_tmp, corpus.total - n_train, dtype) as fv:
            written = 0
            for raw, cps in _read_chunks(corpus.path):
                sha.update(raw)
                if written + len(cps) > corpus.total or _unseen(raw, cps, corpus.seen, corpus.seen_ascii):
                    raise InputChanged(corpus.path)
                ids = memoryview(raw.translate(translation) if translation and cps.dtype == np.uint8 else table[cps])
                cut = max(0, min(len(ids), n_train - written))
                ft.write(ids[:cut])
                fv.write(ids[cut:])
                written += len(ids)
            if written != corpus.total or sha.hexdigest() != corpus.sha256 or _stamp(corpus.path) != corpus.stamp:
                raise InputChanged(corpus.path)
        for split, tmp in (("train", train_tmp), ("val", val_tmp)):
            meta[f"{split}_sha256"] = _sha256(tmp)
        meta["content_hash"] = content_hash(meta["vocab"], train_tmp, val_tmp)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _unseen(raw: bytes, cps: np.ndarray, seen: np.ndarray, seen_ascii: bytes) -> bool:
    """Whether a chunk holds a character pass 1 did not see (the file changed in between)."""
    if cps.dtype == np.uint8:
        return bool(raw.translate(None, seen_ascii))
    return bool(len(cps)) and (int(cps.max()) >= len(seen) or not seen[cps].all())


def _sha256(path: Path) -> str:
    from .corpus import sha256_file

    return sha256_file(path)


def content_hash(vocab: str, train: Path, val: Path) -> str:
    """sha256 over the vocabulary and each split's token values, not over the files' bytes: the same tokens
    stored as another integer type, or written by another version of torch, are the same dataset."""
    canonical = np.dtype({"uint8": "u1", "int16": "<i2", "int32": "<i4"}[smallest_dtype(len(vocab))])
    h = hashlib.sha256(json.dumps({"content": "chargpt-dataset/1", "vocab": vocab}).encode())
    for name, path in (("train", train), ("val", val)):
        h.update(f"\n{name} {len(load_mapped(path))}\n".encode())
        for piece in chunks(path, CHUNK):
            h.update(piece.numpy().astype(canonical).tobytes())
    return h.hexdigest()


def file_hash(train: Path, val: Path) -> str:
    """What chargpt before content hashes called a dataset's hash: of its two files' bytes."""
    return hashlib.sha256((_sha256(train) + _sha256(val)).encode()).hexdigest()


def _existing_meta(out_dir: Path) -> dict | None:
    old = read_json_object(out_dir / "meta.json")
    return old if old.get("format") == FORMAT else None


CONTENT_KEYS = ("source_sha256", "vocab", "train_tokens", "val_tokens")  # same input and split: same tokens


def _same_content(old: dict, meta: dict) -> bool:
    return all(old.get(k) == meta[k] for k in CONTENT_KEYS)


def _describe(meta: dict) -> str:
    chars = meta.get("total_chars")
    sha = meta.get("source_sha256")
    return (f"{meta.get('name', 'unnamed')!r} ({f'{chars:,} characters' if isinstance(chars, int) else 'size unknown'}"
            f" from {meta.get('source', 'an unknown source')}"
            f"{f', sha256 {sha[:12]}' if isinstance(sha, str) else ''})")


def _former_hashes(out_dir: Path, old: dict) -> tuple[str | None, list[str]]:
    """The content hash of the dataset in `out_dir` and the other hashes runs may know it by (of its files'
    bytes, as chargpt named datasets before content hashes, and those it had itself)."""
    try:
        ds = load_dataset(out_dir)
        current, files = ds.content_hash, ds.file_hash
    except DataError:
        return None, []
    former = [h for h in old.get("former_hashes", []) if isinstance(h, str)]
    return current, former + [h for h in (files,) if h not in former and h != current]


def _up_to_date(out_dir: Path, meta: dict) -> bool:
    old = _existing_meta(out_dir)
    if old is None:
        return False
    same = all(old.get(k) == v for k, v in meta.items() if k not in ("source", "name"))
    return same and all(
        (out_dir / f"{s}.pt").is_file() and _sha256(out_dir / f"{s}.pt") == old.get(f"{s}_sha256")
        for s in ("train", "val")
    )


@dataclass
class Dataset:
    """A prepared dataset: its tokenizer, its splits (memory-mapped tensors) and its metadata."""

    path: Path
    meta: dict
    tokenizer: CharTokenizer
    train: torch.Tensor
    val: torch.Tensor

    @functools.cached_property
    def content_hash(self) -> str:
        """The dataset's identity (vocabulary and token values), so that a run resumes only on its own data. Computed
        from the split files, not taken from meta.json: a file swapped under it must not pass for the original."""
        return content_hash(self.tokenizer.chars, self.path / "train.pt", self.path / "val.pt")

    @functools.cached_property
    def file_hash(self) -> str:
        return file_hash(self.path / "train.pt", self.path / "val.pt")

    def is_identified_by(self, recorded: str) -> bool:
        """Whether a checkpoint's `dataset_hash` names this dataset: its content hash, or for a run of an older
        chargpt the hash of these files' bytes or of those this dataset was re-prepared from (`former_hashes`)."""
        if recorded == self.content_hash:
            return True
        former = self.meta.get("former_hashes")
        return recorded == self.file_hash or (isinstance(former, list) and recorded in former)

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one block plus its next-character target."""
        bounds = val_fraction_bounds(len(self.train) + len(self.val), block_size + 1)
        for name in ("train", "val"):
            n = len(self.split(name))
            if n < block_size + 1:
                fraction = "" if bounds is None else (
                    f", or re-prepare it with --replace and a --val-fraction of "
                    f"{'at least' if name == 'val' else 'at most'} {bounds[name == 'train']!r}")
                raise DataError(f"the {name} split of {self.path} has {n} tokens, fewer than one block "
                                f"({block_size} + 1); use a smaller --block-size, a larger corpus{fraction}")

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise DataError(f"unknown split {name!r}; use train or val")
        return self.train if name == "train" else self.val


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_dataset_file(path: Path, if_missing: str) -> None:
    """A dataset's file must be a regular file: `if_missing` when it is absent, one line naming what it is else."""
    kind = not_regular(path)
    if kind == "missing":
        raise DataError(if_missing)
    if kind:
        raise DataError(f"not a chargpt dataset: {path} is {kind}, not a file; re-run `chargpt prepare`")


def load_split(path: str | os.PathLike) -> torch.Tensor:
    """Read one split tensor memory-mapped (bounded memory), never running code from the file."""
    path = Path(path)
    _check_dataset_file(path, f"{path} is missing; run `chargpt prepare` first")
    try:
        t = load_torch(path, mmap=True)
    except Exception as e:
        blocked = refused_global(e)
        if blocked:
            raise DataError(f"{path} refused: loading it would call {blocked}, and chargpt never runs code from a "
                            f"file; re-run `chargpt prepare`") from None
        raise DataError(f"{path} is not a readable tensor file ({e.__class__.__name__}); re-run `chargpt prepare`") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype not in INTEGER_DTYPES:
        what = f"a {t.dtype} tensor of {t.ndim} dimensions" if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"not a chargpt dataset: {path} holds {what}, not a 1-D integer tensor; re-run `chargpt prepare`")
    return t


def read_meta(path: Path) -> dict:
    """`path`/meta.json, checked field by field: every later use of it may rely on its types."""
    meta_path = path / "meta.json"
    _check_dataset_file(meta_path, f"{path} has no meta.json; create it with `chargpt prepare --out {path}`")
    try:
        meta = read_json(meta_path)
    except OSError as e:
        raise DataError(f"{meta_path} is unreadable ({e.strerror or e}); check its permissions") from None
    except ValueError as e:  # invalid JSON or invalid UTF-8
        first = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise DataError(f"not a chargpt dataset: {meta_path} is not valid JSON ({first}); re-run `chargpt prepare`") from None
    problem = _meta_problem(meta)
    if problem:
        raise DataError(f"not a chargpt dataset: {meta_path} {problem}; re-run `chargpt prepare`")
    return meta


def _meta_problem(meta) -> str | None:
    if not isinstance(meta, dict):
        return f"holds {type(meta).__name__ if meta is not None else 'null'}, not an object"
    if meta.get("format") != FORMAT:
        return f"has format {meta.get('format')!r}, not {FORMAT!r}"
    vocab = meta.get("vocab")
    if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
        return "has no vocabulary string of distinct characters ('vocab')"
    if "vocab_size" in meta and (type(meta["vocab_size"]) is not int or meta["vocab_size"] != len(vocab)):
        return f"records vocab_size {meta['vocab_size']!r} for a vocabulary of {len(vocab)} characters"
    former = meta.get("former_hashes")
    if former is not None and not (isinstance(former, list) and all(isinstance(h, str) for h in former)):
        return "has former_hashes that are not a list of hashes"
    for key in ("train_sha256", "val_sha256", "content_hash"):
        if key in meta and not (isinstance(meta[key], str) and re.fullmatch(r"[0-9a-f]{64}", meta[key])):
            return f"has a {key} that is not a sha256 hex digest"
    for key in ("train_tokens", "val_tokens", "total_chars"):
        if key in meta and (type(meta[key]) is not int or meta[key] < 0):
            return f"has a {key} that is not a count ({meta[key]!r})"
    for key in ("name", "source", "dtype"):
        if key in meta and not isinstance(meta[key], str):
            return f"has a {key} that is not a string"
    return None


def _nearby_dataset(path: Path) -> str:
    """" (did you mean data/shakespeare?)" for a dataset beside the missing `path` whose name it nearly is."""
    from itertools import islice

    from ..schema import closest

    try:
        with os.scandir(path.parent if str(path.parent) else ".") as entries:
            near = [e.name for e in islice(entries, 1000)
                    if e.is_dir() and os.path.isfile(os.path.join(e.path, "meta.json"))]
    except OSError:
        return ""
    name = closest(path.name, near)  # the names alike, not their folder's
    return f" (did you mean {path.parent / name}?)" if name else ""


def load_dataset(path: str | os.PathLike) -> Dataset:
    from ..schema import check

    path = Path(check("path", path, os.PathLike, DataError))  # None or a number: one line, not a TypeError
    restore(path)  # a prepare killed in the middle of replacing this dataset by two renames
    if path.exists() and not path.is_dir():
        raise DataError(f"{path} is a file, not a dataset directory; pass the directory `chargpt prepare --out` wrote")
    if not path.is_dir():
        raise DataError(f"dataset directory {path} does not exist{_nearby_dataset(path)}; create it with "
                        f"`chargpt prepare --input FILE --out {path}` (or --dataset shakespeare)")
    meta = read_meta(path)
    tok = CharTokenizer(meta["vocab"])
    train, val = load_split(path / "train.pt"), load_split(path / "val.pt")
    top = -1
    for name, t in (("train", train), ("val", val)):
        lo, hi = _id_range(path / f"{name}.pt")
        if lo < 0 or hi >= tok.vocab_size:
            raise DataError(f"{path / (name + '.pt')} has token ids beyond the vocabulary; re-run `chargpt prepare`")
        recorded = meta.get(f"{name}_tokens")
        if recorded is not None and recorded != len(t):
            raise DataError(f"not a chargpt dataset: {path / (name + '.pt')} holds {len(t):,} tokens, meta.json "
                            f"records {recorded:,}; re-run `chargpt prepare`")
        top = max(top, hi)
    if top != tok.vocab_size - 1:  # prepare keeps exactly the characters the corpus has: the largest id occurs
        raise DataError(f"not a chargpt dataset: {path / 'meta.json'} has a vocabulary of {tok.vocab_size:,} "
                        f"characters but the splits use ids up to {top}; re-run `chargpt prepare`")
    return Dataset(path, meta, tok, train, val)


def _id_range(path: Path) -> tuple[int, int]:
    """Smallest and largest id in a split file, scanned in chunks that are each released after use: scanning
    the training tensor instead would leave the whole split resident in this process."""
    lo, hi = 0, 0
    for i, ids in enumerate(chunks(path, CHUNK)):
        a, b = torch.aminmax(ids)
        lo, hi = (int(a), int(b)) if i == 0 else (min(lo, int(a)), max(hi, int(b)))
    return lo, hi
