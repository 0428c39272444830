"""The README's shell examples run as shown, and print the lines it shows.

Every ```console block runs in a fresh directory, command by command (`$ ...`), through a `chargpt` on PATH
that shortens training (a small model, a few steps, a 3 s budget) so the suite stays fast. Each line the README
shows after a command must appear in the command's output, in order: words as written, any token holding a digit
(losses, timings, dates, run ids) standing for whatever token is there, `...` for lines left out, and a line
ending in `...` for its beginning. ```bash blocks made only of `chargpt` commands run too, and must succeed.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
SKIP = ("WANDB_API_KEY=...",)  # needs an unreachable server and its 10 s timeout: covered by test_tracking
NOTEBOOK_DIR = "/home/me/notebooks"  # the README's working directory in its examples

WRAPPER = '''\
import sys
sys.path.insert(0, {src!r})
from chargpt.cli import main

GPT_PRESETS = ("cpu", "gpu", "lecture", "nanogpt-cpu")


def shorten(args):
    """A README training command as a few seconds of training of a small model."""
    if "--resume" in args or "--init-from" in args:
        return args + ["--max-steps", "40"] if "--init-from" in args else args
    preset = args[args.index("--preset") + 1] if "--preset" in args else "cpu"
    out = list(args)
    if "--time-budget" in out:
        out[out.index("--time-budget") + 1] = "3s"
        out += ["--eval-tokens", "all"]  # a 3 s budget would score a subset of val; the README shows the exact pass
    elif "--max-steps" not in out:
        out += ["--max-steps", "60", "--eval-interval", "20"]
    if preset in GPT_PRESETS:  # a bigram run of the README's length is already short: left as shown
        out += ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--no-compile",
                "--eval-iters", "2", "--sample-tokens", "40"]
    return out


args = sys.argv[1:]
if args[:1] == ["train"]:
    args = ["train"] + shorten(args[1:])
sys.exit(main(args))
'''


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def examples(block: str) -> list[tuple[str, list[str]]]:
    """(command, the lines shown after it) for each `$ command` of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out and line.strip():
            out[-1][1].append(line)
    return out


def pattern(shown: str) -> re.Pattern:
    prefix = shown.endswith("...") and shown.strip() != "..."
    tokens = shown[:-3].split() if prefix else shown.split()
    parts = [r"\S+" if re.search(r"\d", t) else re.escape(t) for t in tokens]
    return re.compile(r"\s*" + r"\s+".join(parts) + (r"" if prefix else r"\s*$"))


def check_output(command: str, shown: list[str], output: str) -> None:
    lines = output.splitlines()
    at = 0
    for want in shown:
        if want.strip() == "...":
            continue
        p = pattern(want)
        while at < len(lines) and not p.match(lines[at]):
            at += 1
        assert at < len(lines), f"README shows after `{command}`:\n  {want}\nbut the output was:\n{output}"
        at += 1


@pytest.fixture
def workdir(tmp_path, shakespeare_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "chargpt"
    script.write_text(f"#!{sys.executable}\n" + WRAPPER.format(src=str(REPO / "src")))
    script.chmod(0o755)
    home = tmp_path / "work"
    home.mkdir()
    (home / "my_corpus.txt").write_text(shakespeare_path.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1",
               CHARGPT_DATA=str(shakespeare_path.parent.parent), WANDB_DIR=str(home), WANDB_SILENT="true")
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        env.pop(key, None)
    return home, env


def run(command: str, cwd: Path, env: dict, shown: list[str]) -> str:
    first = shlex.split(command, comments=True)
    if first[:1] == ["cat"] and len(first) == 2 and not (cwd / first[1]).exists():
        (cwd / first[1]).write_text("".join(line + "\n" for line in shown))  # the file the example starts from
    p = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"`{command}` exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return (p.stdout + p.stderr).replace(str(cwd), NOTEBOOK_DIR)


CONSOLE = blocks("console")
SHELL = [b for b in blocks("bash") if all(line.startswith("chargpt ") for line in b.splitlines()
                                          if line.strip() and not line.startswith("#"))]


def test_the_readme_has_examples_to_check():
    assert len(CONSOLE) >= 5 and SHELL
    assert any("chargpt train --resume runs/latest" in b for b in CONSOLE + SHELL)


@pytest.mark.slow
@pytest.mark.parametrize("block", CONSOLE, ids=[f"console{i}" for i in range(len(CONSOLE))])
def test_console_examples_print_what_the_readme_shows(block, workdir, dataset_dir):
    home, env = workdir
    if not any(command.startswith(("chargpt prepare", "cat ", "WANDB")) for command, _ in examples(block)):
        shutil.copytree(dataset_dir, home / "data" / "shakespeare")  # what `chargpt prepare` makes, made once
    for command, shown in examples(block):
        if any(s in command for s in SKIP):
            continue
        output = run(command, home, env, shown)
        if os.environ.get("README_SHOW"):
            print(f"$ {command}\n{output}")
        check_output(command, shown, output)


@pytest.mark.slow
@pytest.mark.parametrize("block", SHELL, ids=[f"bash{i}" for i in range(len(SHELL))])
def test_shell_examples_run(block, workdir):
    home, env = workdir
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            run(line, home, env, [])


def test_the_line_patterns_take_any_number_and_keep_the_words():
    assert pattern("full-pass val loss 2.5944 nats/char (3.7430 bits/char) after 500 steps, 17.9 s").match(
        "full-pass val loss 2.6011 nats/char (3.7526 bits/char) after 60 steps, 1.2 s")
    assert not pattern("model: bigram, context 8").match("model: gpt, context 8")
    assert pattern("prepared data/x: 1,115 characters from ...").match("prepared data/x: 9 characters from /a/b.txt")
    check_output("c", ["a 1", "...", "c 3"], "a 7\nb\nc 9\n")
    with pytest.raises(AssertionError):
        check_output("c", ["c 3", "a 1"], "a 7\nb\nc 9\n")
