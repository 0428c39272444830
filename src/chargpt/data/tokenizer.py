"""CharTokenizer: the notebook's character vocabulary (sorted set of the corpus's characters), vectorized."""
from __future__ import annotations

import os

import numpy as np

from ..errors import DataError, VocabularyError
from ..fsutil import read_json, write_json


def _codepoints(text: str) -> np.ndarray:
    """The Unicode code points of `text` as a uint32 array, without a Python loop.

    A lone surrogate (what undecodable bytes on a command line become) passes through as its code point:
    to the vocabulary it is just another unknown character.
    """
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    """Maps each character of the vocabulary to its index in the sorted vocabulary.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars, tok.encode("hole"), tok.decode(tok.encode("hole"))
    ('ehlo', [1, 3, 2, 0], 'hole')
    """

    def __init__(self, chars: str | list[str]):
        chars = "".join(chars)
        if not chars:
            raise VocabularyError("empty vocabulary: the corpus has no characters")
        if len(set(chars)) != len(chars):
            raise VocabularyError("vocabulary has repeated characters")
        self.chars = "".join(sorted(chars))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))
        cps = _codepoints(self.chars)
        self._table = np.full(int(cps.max()) + 1, -1, dtype=np.int64)
        self._table[cps] = np.arange(len(cps))
        self._itos_cp = cps

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to an int64 numpy array (vectorized lookup in a code-point table)."""
        cps = _codepoints(text)
        inside = cps < len(self._table)
        ids = np.full(len(cps), -1, dtype=np.int64)
        ids[inside] = self._table[cps[inside]]
        bad = np.flatnonzero(ids < 0)
        if len(bad):
            pos = int(bad[0])
            raise VocabularyError(
                f"character {text[pos]!r} at position {pos} is not in the vocabulary of "
                f"{self.vocab_size} characters; remove it or prepare the dataset from a corpus that has it"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(arr) and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise VocabularyError(f"token id out of range 0..{self.vocab_size - 1}")
        return self._itos_cp[arr].tobytes().decode("utf-32-le", "surrogatepass")

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise DataError("not a chargpt character vocabulary (expected {'type': 'char', 'chars': ...})")
        return cls(d["chars"])

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        try:
            return cls.from_dict(read_json(path))
        except (OSError, ValueError) as e:  # unreadable, not a regular file, not UTF-8 or not JSON
            raise DataError(f"cannot read vocabulary {path}: {e}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
