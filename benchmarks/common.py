"""Shared by the benchmark scripts: the machine description and the table printer."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_table(rows: list[dict], title: str | None = None) -> None:
    if title:
        print(f"\n## {title}")
    cols = ["figure", "value", "target"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) + " |")


def shakespeare_dataset() -> Path:
    """The prepared tiny Shakespeare dataset (prepared into data/shakespeare on first use)."""
    data = REPO / "data" / "shakespeare"
    if not (data / "meta.json").is_file():
        subprocess.run([sys.executable, "-m", "chargpt", "prepare", "--dataset", "shakespeare", "--out", str(data)],
                       check=True, cwd=REPO)
    return data
