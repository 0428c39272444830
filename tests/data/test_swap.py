"""A dataset is replaced whole: a signal at any moment of `chargpt prepare --replace` (a real process), a second
prepare at the same time, or a prepare killed outright leaves the old dataset or the new one, never a mix, and
nothing beside it; files in the directory that are not the dataset's stay where they are.

The moments are exact: strace, attached to the real process, sends the signal (or holds the process) as its N-th
rename begins. A signal that can be caught is acted on once that rename is done, just after the N-th file of the new
dataset took its place (in the old code, `val.pt` over the old one, then `train.pt`); SIGKILL ends it before."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargpt.data import swap
from chargpt.data.dataset import FILES, load_dataset, prepare
from chargpt.data.swap import DirectoryWriter
from chargpt.errors import DataError
from conftest import one_error_line, run_main

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace (Debian's package) lands a signal at an exact "
                                                         "system call of the real process")
RENAMES = "rename,renameat,renameat2"
# The real `chargpt` command, which waits for a line on stdin once its modules are loaded, so that a tracer attached
# then sees only the command's own system calls (and no .pyc is written: PYTHONDONTWRITEBYTECODE).
READY = ("import sys\nfrom chargpt.cli import main\nimport chargpt.data.corpus, chargpt.data.dataset, "
         "chargpt.runtime.envfile\nprint('ready', flush=True)\nsys.stdin.readline()\nsys.exit(main())\n")
# How the command ends on each signal: its exit codes and a word of its one line.
ENDS = {signal.SIGINT: ((130,), "interrupted"), signal.SIGTERM: ((143,), "terminated"),
        signal.SIGHUP: ((129, 143), "hung up|terminated")}


@pytest.fixture
def old_and_new(tmp_path):
    """A dataset `ds` prepared from one text, with a file of the user's beside its own, and another text to
    replace it with; their content hashes."""
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("the old corpus, with its own characters. " * 200)
    new.write_text("A NEW CORPUS: OTHER LETTERS, OTHER SIZES!\n" * 3000)
    old_hash = prepare(old, tmp_path / "ds").meta["content_hash"]
    new_hash = prepare(new, tmp_path / "reference").meta["content_hash"]
    shutil.rmtree(tmp_path / "reference")
    (tmp_path / "ds" / "input.txt").write_text("the user's own file")
    return tmp_path / "ds", new, old_hash, new_hash


def whole(ds: Path, *hashes: str) -> str:
    """The content hash of the dataset in `ds`, asserting that it loads and is one of `hashes`, that the user's file
    is still there, and that nothing a writer makes is left beside it or in it."""
    found = load_dataset(ds).content_hash
    assert found in hashes
    assert (ds / "input.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in ds.iterdir()) == sorted([*FILES, "input.txt"])
    assert sorted(p.name for p in ds.parent.iterdir()) == ["ds", "new.txt", "old.txt"]
    return found


def traced_chargpt(*args, inject: str, cwd: Path) -> subprocess.Popen:
    """`chargpt ARGS` as a real process, with strace attached once its modules are loaded: `inject` (strace's
    `-e inject=`) acts at one exact system call, e.g. sends a signal as the second rename begins."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, "-c", READY, *map(str, args)], cwd=cwd, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        raise AssertionError(proc.communicate())
    tracer = subprocess.Popen([STRACE, "-qq", "-o", os.devnull, "-p", str(proc.pid), "-e", f"trace={RENAMES}",
                               "-e", f"inject={inject}"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _traced(proc.pid):
        if tracer.poll() is not None:
            proc.kill()
            pytest.skip(f"strace cannot attach here: {tracer.stderr.read().strip()}")
        assert time.monotonic() < deadline, "strace never attached"
        time.sleep(0.01)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.tracer = tracer
    return proc


def _traced(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("TracerPid:")) != 0


def finish(proc: subprocess.Popen) -> str:
    """Wait for a traced process and its tracer; its stderr."""
    _, err = proc.communicate(timeout=300)
    proc.tracer.wait(timeout=60)
    return err


# --------------------------------------------------------------------------- a signal at an exact moment
@needs_strace
@pytest.mark.slow
@pytest.mark.parametrize("sig, nth", [(signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGHUP, 1)],
                         ids=["SIGTERM-1", "SIGINT-2", "SIGHUP-1"])
def test_a_signal_as_a_file_of_the_new_dataset_takes_its_place_keeps_the_old_one_whole(old_and_new, sig, nth):
    """The old code renamed `val.pt`, then `train.pt`, then `meta.json` over the old ones: a signal after the first
    left new and old files mixed, a dataset that loaded as neither; SIGHUP also left a `.train.pt.*.tmp`."""
    ds, new, old_hash, new_hash = old_and_new
    proc = traced_chargpt("prepare", "--input", new, "--out", ds, "--replace",
                          inject=f"rename:signal={sig.name}:when={nth}", cwd=ds.parent)
    err = finish(proc)
    codes, word = ENDS[sig]
    assert proc.returncode in codes, err
    assert re.search(word, one_error_line(subprocess.CompletedProcess([], proc.returncode, "", err)))
    assert whole(ds, old_hash, new_hash) == old_hash


@needs_strace
@pytest.mark.slow
def test_a_signal_as_the_new_dataset_takes_its_place_finishes_the_swap_first(old_and_new):
    ds, new, old_hash, new_hash = old_and_new
    proc = traced_chargpt("prepare", "--input", new, "--out", ds, "--replace",
                          inject="renameat2:signal=SIGTERM:when=1", cwd=ds.parent)
    err = finish(proc)
    assert proc.returncode == 143 and "terminated" in err, err
    assert whole(ds, old_hash, new_hash) == new_hash


@needs_strace
@pytest.mark.slow
def test_kill_9_as_a_file_of_the_new_dataset_takes_its_place_keeps_the_old_one_and_the_next_prepare_tidies_up(
        old_and_new):
    ds, new, old_hash, new_hash = old_and_new
    proc = traced_chargpt("prepare", "--input", new, "--out", ds, "--replace",
                          inject="rename:signal=SIGKILL:when=2", cwd=ds.parent)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert load_dataset(ds).content_hash == old_hash  # what a killed writer left beside it is not read
    assert prepare(new, ds, replace=True).changed
    assert whole(ds, new_hash) == new_hash


@pytest.mark.slow
def test_kill_9_at_random_moments_of_prepare_replace_always_leaves_the_old_or_the_new_dataset(old_and_new):
    """A real process replacing the dataset over and over (one text, then the other), killed at a random moment."""
    ds, new, old_hash, new_hash = old_and_new
    old = ds.parent / "old.txt"
    loop = ("import sys\nfrom chargpt.cli import main\n"
            "for i in range(10 ** 6):\n"
            f"    main(['prepare', '--input', sys.argv[1 + i % 2], '--out', {str(ds)!r}, '--replace'])\n"
            "    print('replaced', flush=True)\n")
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", loop, str(new), str(old)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            while proc.stdout.readline() not in ("replaced\n", ""):  # one replacement done: all is loaded
                pass
            time.sleep(rng.uniform(0.0, 0.5))  # a few replacements take that long
        finally:
            proc.kill()
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert load_dataset(ds).content_hash in (old_hash, new_hash)
    prepare(old, ds, replace=True)  # tidies what the killed writers left
    assert whole(ds, old_hash) == old_hash


# ----------------------------------------------------------------------------- one writer at a time
@needs_strace
@pytest.mark.slow
def test_a_second_prepare_while_one_is_writing_is_refused_and_the_first_one_lands_whole(old_and_new):
    """The first prepare is held by strace as it renames its second file; the old code let a second prepare write
    all three files meanwhile, then the first one's last two: a dataset mixed of two."""
    ds, new, old_hash, new_hash = old_and_new
    third = ds.parent / "third.txt"
    third.write_text("yet another text, 1234567890. " * 500)
    started = time.time_ns()
    proc = traced_chargpt("prepare", "--input", new, "--out", ds, "--replace",
                          inject="rename:delay_enter=4000000:when=2", cwd=ds.parent)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_mtime_ns >= started for p in ds.parent.glob("**/val.pt")):  # it renamed its first
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    with pytest.raises(DataError, match=r"is being written by another process \(`chargpt prepare`\); wait"):
        prepare(third, ds, replace=True)
    err = finish(proc)
    assert proc.returncode == 0, err
    third.unlink()
    assert whole(ds, old_hash, new_hash) == new_hash


def test_a_prepare_while_the_directory_is_being_written_is_one_line_and_changes_nothing(old_and_new):
    ds, new, old_hash, _ = old_and_new
    with DirectoryWriter(ds, FILES):  # as another process holds it: each holder has a lock of its own
        p = run_main("prepare", "--input", new, "--out", ds, "--replace", cwd=ds.parent)
    assert p.returncode == 2 and "is being written by another process" in one_error_line(p)
    assert whole(ds, old_hash) == old_hash


# ------------------------------------------------------------------------------ what is not the dataset's
def test_files_and_folders_of_the_user_in_the_dataset_directory_stay_in_place(old_and_new):
    ds, new, old_hash, new_hash = old_and_new
    inode = (ds / "input.txt").stat().st_ino
    (ds / "notes").mkdir()
    (ds / "notes" / "a.txt").write_text("mine")
    prepare(new, ds, replace=True)
    assert (ds / "input.txt").stat().st_ino == inode and (ds / "notes" / "a.txt").read_text() == "mine"
    (ds / "notes" / "a.txt").unlink()
    (ds / "notes").rmdir()
    assert whole(ds, new_hash) == new_hash


def test_a_symlinked_dataset_directory_is_replaced_where_it_lies(old_and_new, tmp_path):
    ds, new, old_hash, new_hash = old_and_new
    link = tmp_path / "elsewhere"
    link.symlink_to(ds)
    prepare(new, link, replace=True)
    assert link.is_symlink() and load_dataset(link).content_hash == new_hash
    link.unlink()
    assert whole(ds, new_hash) == new_hash


def test_where_directories_cannot_be_exchanged_two_renames_replace_it_and_a_load_undoes_a_half_swap(
        old_and_new, monkeypatch):
    """The portable swap (no renameat2 RENAME_EXCHANGE): the old directory waits beside the target under a
    recognisable name; a writer killed between the two renames leaves it there, and the next load puts it back."""
    ds, new, old_hash, new_hash = old_and_new
    monkeypatch.setattr(swap, "exchange", lambda a, b: False)  # as on a system without it
    prepare(new, ds, replace=True)
    assert whole(ds, new_hash) == new_hash
    half = ds.parent / ".ds.abcd1234.replaced"  # what a writer killed after the first rename leaves
    ds.rename(half)
    assert load_dataset(ds).content_hash == new_hash
    assert not half.exists()


def test_the_directory_of_a_first_prepare_that_fails_is_not_left_behind(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"abc\x00def" * 100)
    for name in ("empty.txt", "binary.txt"):
        with pytest.raises(DataError):
            prepare(tmp_path / name, tmp_path / "ds")
        assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.txt", "empty.txt"]


def _read_only_parent(parent: Path) -> bool:
    """Make `parent` refuse new entries (chmod, or for root `chattr +i`); whether that worked."""
    os.chmod(parent, 0o555)
    try:
        (parent / ".probe").mkdir()
    except OSError:
        return True
    (parent / ".probe").rmdir()
    os.chmod(parent, 0o755)
    return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(parent)],
                                                                  capture_output=True).returncode == 0


def test_in_a_read_only_parent_a_new_dataset_is_written_in_place_and_a_replacement_is_one_line(tmp_path):
    parent = tmp_path / "locked"
    (parent / "ds").mkdir(parents=True)
    corpus = tmp_path / "a.txt"
    corpus.write_text("some text to prepare. " * 50)
    if not _read_only_parent(parent):
        pytest.skip("no way to make a directory read-only here (neither chmod nor chattr +i)")
    try:
        first = prepare(corpus, parent / "ds")
        assert load_dataset(parent / "ds").content_hash == first.meta["content_hash"]
        corpus.write_text("other text, other letters! " * 50)
        with pytest.raises(DataError, match=r"cannot replace .*ds: the new dataset is built beside it"):
            prepare(corpus, parent / "ds", replace=True)
        assert load_dataset(parent / "ds").content_hash == first.meta["content_hash"]
    finally:
        subprocess.run(["chattr", "-i", str(parent)], capture_output=True)
        os.chmod(parent, 0o755)
