"""Where a named corpus comes from: --input, $CHARGPT_DATA, the cache, then a download."""
from __future__ import annotations

import socket

import pytest

from chargpt.data import corpus
from chargpt.errors import DataError


def closed_loopback_url() -> str:
    """A URL on this machine that refuses at once: no network is needed or touched."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"


def test_a_failed_download_says_chargpt_data_is_set_to_a_place_without_the_corpus(monkeypatch, tmp_path):
    rel, _, sha = corpus.DATASETS["shakespeare"]
    monkeypatch.setitem(corpus.DATASETS, "shakespeare", (rel, closed_loopback_url(), sha))
    monkeypatch.setenv("CHARGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CHARGPT_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=f"CHARGPT_DATA is {tmp_path / 'empty'}, which holds no {rel}: point it at"):
        corpus.locate("shakespeare", timeout=5)
    monkeypatch.delenv("CHARGPT_DATA")
    with pytest.raises(DataError, match=f"set CHARGPT_DATA to a directory holding {rel}"):
        corpus.locate("shakespeare", timeout=5)
