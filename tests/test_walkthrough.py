"""docs/walkthrough.md runs: its python blocks, in order, in one namespace."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "walkthrough.md"
SHARED_DATA = REPO.parent / "shared" / "data"  # holds tinyshakespeare/input.txt on machines without internet


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```\s*$", markdown, flags=re.MULTILINE | re.DOTALL)


def test_every_python_block_of_the_walkthrough_runs_in_order(tmp_path, monkeypatch, capsys):
    if not os.environ.get("CHARGPT_DATA"):
        monkeypatch.setenv("CHARGPT_DATA", str(SHARED_DATA))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 15
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares its cores with other processes; one thread each avoids stalls
    namespace: dict = {"__name__": "walkthrough"}
    try:
        for i, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"{DOC.name}, python block {i}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"walkthrough block {i} failed ({type(e).__name__}: {e}):\n{block}") from e
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "length of dataset in characters: 1,115,394" in out
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_python_blocks_are_found_and_other_fences_are_not():
    doc = "text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(doc) == ["a = 1\n", "b = 2\n"]
