"""The one guarded reader (`fsutil.open_regular`): regular files only, a size cap, no symlink out of a run
directory, never a wait on a FIFO. Real FIFOs, devices and symlinks; real `chargpt` processes for the doors."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargpt.fsutil import (DATASET_MARKERS, RUN_MARKERS, ReadRefused, open_lock, read_bytes, read_json,
                            read_json_object, read_text)
from conftest import run_main


def chargpt(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """A real process, bounded in time: a read that waited on a FIFO would show as a timeout here."""
    return subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_a_fifo_or_a_device_is_refused_at_once_and_never_waited_on(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(ReadRefused, match=r"a FIFO \(named pipe\), not a regular file"):
        read_bytes(tmp_path / "fifo")
    with pytest.raises(ReadRefused, match="a device, not a regular file"):
        read_bytes(tmp_path / "zero")
    with pytest.raises(ReadRefused, match="a directory, not a regular file"):
        read_bytes(tmp_path)


def test_a_symlink_is_followed_only_to_a_file_inside_the_run_it_is_read_from(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    (run / "own.json").write_text('{"own": 1}')
    (run / "summary.json").symlink_to(tmp_path / "secret.json")
    (run / "inside.json").symlink_to("own.json")
    with pytest.raises(ReadRefused, match="a symbolic link to .*secret.json, outside its run directory"):
        read_json(run / "summary.json", within=run)
    assert read_json(run / "inside.json", within=run) == {"own": 1}
    assert read_json(run / "summary.json") == {"secret": 1}  # a file the user names is theirs, wherever it is
    (tmp_path / "runs" / "latest").symlink_to("r")  # the run reached through chargpt's own link
    assert read_json(tmp_path / "runs" / "latest" / "inside.json", within=tmp_path / "runs" / "latest") == {"own": 1}
    view = tmp_path / "runs" / ".latest" / "r"  # `latest` as chargpt makes it now: links to the run's files
    view.mkdir(parents=True)
    (view / "own.json").symlink_to("../../r/own.json")
    (view / "summary.json").symlink_to("../../../secret.json")
    (tmp_path / "runs" / "latest").unlink()
    (tmp_path / "runs" / "latest").symlink_to(".latest/r")
    latest = tmp_path / "runs" / "latest"
    assert read_json(latest / "own.json", within=latest) == {"own": 1}
    with pytest.raises(ReadRefused, match="outside its run directory"):
        read_json(latest / "summary.json", within=latest)


def test_a_file_over_the_cap_is_refused_without_reading_it_into_memory(tmp_path):
    big = tmp_path / "summary.json"
    with open(big, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GB that take no space
    with pytest.raises(ReadRefused, match="over 67,108,864 bytes"):
        read_json(big)
    with open(big, "r+b") as f:
        f.truncate(1000)
    assert read_bytes(big) == bytes(1000)


def test_a_json_record_reads_as_its_object_or_as_nothing(tmp_path):
    (tmp_path / "object.json").write_text('{"steps": 3}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "torn.json").write_text('{"steps": ')
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    assert read_json_object(tmp_path / "object.json") == {"steps": 3}
    for name in ("list.json", "torn.json", "latin1.json", "fifo.json", "zero.json", "missing.json"):
        assert read_json_object(tmp_path / name) == {}, name


def test_text_reads_as_python_reads_a_text_file_and_a_fifo_is_refused(tmp_path):
    (tmp_path / "crlf.txt").write_bytes("caf\u00e9\r\nline\rend\n".encode("utf-8"))
    assert read_text(tmp_path / "crlf.txt") == (tmp_path / "crlf.txt").read_text(encoding="utf-8") == "caf\u00e9\nline\nend\n"
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UnicodeDecodeError):
        read_text(tmp_path / "latin1.txt")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(ReadRefused, match="FIFO"):
        read_text(tmp_path / "fifo.txt")


def test_a_lock_file_is_created_and_never_reached_through_a_symlink(tmp_path):
    fd = open_lock(tmp_path / ".lock")
    os.close(fd)
    assert (tmp_path / ".lock").is_file()
    (tmp_path / "elsewhere").write_text("not chargpt's")
    (tmp_path / "linked.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        open_lock(tmp_path / "linked.lock")


def test_a_fifo_as_prompt_file_stops_in_one_line_without_waiting(tmp_path, tiny_run):
    os.mkfifo(tmp_path / "prompt.txt")
    p = chargpt("sample", "--ckpt", tiny_run, "--prompt-file", "prompt.txt", "--max-new-tokens", 5, "--device", "cpu",
                cwd=tmp_path, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "FIFO" in lines[0] and "--prompt-file" in lines[0], p.stderr


def test_train_with_a_fifo_or_device_as_config_file_stops_in_one_line(tmp_path):
    os.mkfifo(tmp_path / "cfg.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, what in (("cfg.json", "FIFO"), ("zero.json", "a device")):
        p = run_main("train", "--config", name, "--print-config", cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and what in lines[0], p.stderr


def test_runs_names_a_record_that_leads_out_of_its_run_and_never_reads_it(tmp_path, tiny_run):
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, run)  # TINY_GPT, 20 steps on tiny Shakespeare
    shutil.copytree(run, tmp_path / "runs" / "fifo")
    (tmp_path / "secret.json").write_text('{"model": "SECRET", "steps": 123456}')
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to(tmp_path / "secret.json")
    fifo = tmp_path / "runs" / "fifo"
    (fifo / "summary.json").unlink()
    os.mkfifo(fifo / "summary.json")
    (fifo / "metrics.jsonl").unlink()
    (fifo / "metrics.jsonl").symlink_to("/dev/zero")
    listed = chargpt("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "damaged: summary.json is a symbolic link to" in rows["r"] and "outside its run directory" in rows["r"]
    assert "SECRET" not in listed.stdout and "123456" not in listed.stdout
    assert "damaged: summary.json is a FIFO" in rows["fifo"]
    resumed = chargpt("train", "--resume", "runs/r", "--max-steps", 30, cwd=tmp_path)
    assert resumed.returncode != 0 and "outside its run directory" in resumed.stderr
    sampled = chargpt("sample", "--ckpt", "runs/fifo", "--max-new-tokens", 5, "--device", "cpu", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr  # the checkpoint itself is fine
    (fifo / "ckpt.pt").unlink()
    (fifo / "ckpt.pt").symlink_to(run / "ckpt.pt")  # another run's model
    sampled = chargpt("sample", "--ckpt", "runs/fifo", "--max-new-tokens", 5, "--device", "cpu", cwd=tmp_path)
    assert sampled.returncode != 0 and "outside its run directory" in sampled.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------- the guard itself
SRC = Path(__file__).resolve().parents[1] / "src" / "chargpt"

# Files read outside fsutil, each named by the module that reads it and the path it reads: the kernel's own
# (/proc, /sys), which no user can swap for a FIFO or a link, and chargpt's own static files.
NOT_A_USERS_FILE = {
    ("runtime/resources.py", "/proc/meminfo"),
    ("runtime/resources.py", "/sys/fs/cgroup/memory.max"),
    ("runtime/resources.py", "/sys/fs/cgroup/memory.current"),
    ("runtime/resources.py", "/proc/stat"),
    ("training/budget.py", "/proc/cpuinfo"),
    ("training/budget.py", "/proc/self/stat"),
    ("training/budget.py", "/proc/uptime"),
    ("runs/provenance.py", "/proc/cpuinfo"),
    ("serve/app.py", "chargpt.serve"),  # importlib.resources: the page's own files, inside the package
}
OPENERS = {"io", "os", "codecs", "gzip", "bz2", "lzma", "tarfile", "zipfile", "shelve", "PIL.Image"}
LOADERS = {"json": {"load"}, "pickle": {"load"}, "marshal": {"load"}, "tomllib": {"load"}, "yaml": {"load"},
           "torch": {"load"}, "numpy": {"load", "fromfile", "memmap", "loadtxt", "genfromtxt"}, "mmap": {"mmap"},
           "shutil": {"copy", "copy2", "copyfile", "copyfileobj"}}


def _reads_by_mode(call: ast.Call, mode_at: int) -> bool:
    """Whether an open(...)-like call reads: any mode but a literal write-only one ("w", "ab", "x", ...)."""
    mode = call.args[mode_at] if len(call.args) > mode_at else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return True
    return not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and not set("r+") & set(mode.value))


def _is_read(call: ast.Call, modules: dict[str, str]) -> bool:
    """Whether `call` opens or reads a file (builtin open, io/os/codecs.open, Path.open, .read_text/.read_bytes,
    json/torch/numpy/pickle/tomllib load, ...). `modules`: the module each imported name stands for."""
    func = call.func
    if isinstance(func, ast.Name):
        if func.id == "open":
            return _reads_by_mode(call, 1)
        module, _, name = modules.get(func.id, "").rpartition(".")
        return name in LOADERS.get(module, ())
    if not isinstance(func, ast.Attribute):
        return False
    owner = modules.get(func.value.id, func.value.id) if isinstance(func.value, ast.Name) else None
    if func.attr in ("read_text", "read_bytes"):
        return owner != "chargpt.fsutil"
    if func.attr == "fdopen" and owner == "os":
        return _reads_by_mode(call, 1)
    if func.attr == "open" and owner == "os":  # a read unless write-only (os.O_WRONLY)
        return not any(isinstance(n, ast.Attribute) and n.attr == "O_WRONLY" for n in ast.walk(call))
    if func.attr == "open" and owner in OPENERS:
        return _reads_by_mode(call, 1)
    if func.attr == "open":  # Path.open(mode="r", ...): no argument, or a mode, unlike RunDir.open(path)
        first = call.args[0] if call.args else None
        looks_like_mode = first is None or (isinstance(first, ast.Constant) and isinstance(first.value, str))
        return (looks_like_mode or any(k.arg in ("mode", "encoding") for k in call.keywords)) and _reads_by_mode(call, 0)
    return func.attr in LOADERS.get(owner, ())


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """What each imported name stands for: `np` -> numpy, `load` -> torch.load, `fsutil` -> chargpt.fsutil."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                          for a in node.names})
        elif isinstance(node, ast.ImportFrom):  # a relative import is one of chargpt's own modules
            module = ".".join(filter(None, ("chargpt" if node.level else "", node.module)))
            names.update({a.asname or a.name: f"{module}.{a.name}" for a in node.names})
    return names


def file_reads(source: str, module: str) -> list[str]:
    """`line: call` for every call in `source` that opens or reads a file, those in NOT_A_USERS_FILE aside."""
    tree = ast.parse(source)
    modules = _imported_names(tree)
    found = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        if not _is_read(call, modules):
            continue
        named = {n.value for n in ast.walk(call) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        if not any((module, path) in NOT_A_USERS_FILE for path in named):
            found.append(f"{module}:{call.lineno}: {ast.unparse(call)[:80]}")
    return found


def test_no_module_but_fsutil_opens_a_file_a_user_can_touch():
    modules = {str(p.relative_to(SRC)): p for p in sorted(SRC.rglob("*.py")) if p.name != "fsutil.py"}
    assert len(modules) > 30
    reads = [r for name, path in modules.items() for r in file_reads(path.read_text(), name)]
    assert not reads, "read these through chargpt.fsutil (open_regular, read_bytes, read_json, ...):\n" + "\n".join(reads)


@pytest.mark.parametrize("line", [
    "open(p)", "open(p, 'rb')", "open(p, mode='r+')", "open(p, m)", "io.open(p)", "os.open(p, os.O_RDONLY)",
    "os.open(p, os.O_RDWR | os.O_CREAT)", "Path(p).open()", "p.open('rb')", "p.read_text()", "p.read_bytes()",
    "json.load(f)", "torch.load(p)", "np.load(p)", "np.fromfile(p)", "tomllib.load(f)", "pickle.load(f)",
    "load(p)", "Image.open(p)"])
def test_the_guard_sees_every_way_to_read_a_file(line):
    header = ("import io, os, json, pickle, tomllib\nimport numpy as np\nimport torch\nfrom pathlib import Path\n"
              "from torch import load\nfrom PIL import Image\n")
    assert len(file_reads(header + line, "x.py")) == 1


@pytest.mark.parametrize("line", [
    "open(p, 'wb')", "open(p, 'a', encoding='utf-8')", "os.open(os.devnull, os.O_WRONLY)", "RunDir.open(path)",
    "json.loads(text)", "checkpoint.load(path)", "read_bytes(p)", "fsutil.read_text(p)",
    "Path('/proc/meminfo').read_text()"])
def test_the_guard_passes_writes_our_own_loads_fsutil_and_the_kernels_files(line):
    header = "import os, json\nfrom pathlib import Path\nfrom chargpt import fsutil\nfrom chargpt.fsutil import read_bytes\n"
    assert file_reads(header + line, "runtime/resources.py") == []


# ------------------------------------------------------------------------------------------ outputs
def test_the_markers_of_runs_and_datasets_are_names_those_modules_give_their_files():
    from chargpt.data import dataset
    from chargpt.runs import rundir

    assert {m for names in RUN_MARKERS for m in names} <= {rundir.METRICS, rundir.CKPT, rundir.BEST, rundir.EMA,
                                                           rundir.LOCK, rundir.CONFIG}
    assert {m for names in DATASET_MARKERS for m in names} <= set(dataset.FILES)


def test_an_output_is_refused_in_one_line_on_an_input_in_a_run_or_dataset_or_a_missing_directory(tmp_path):
    from chargpt.errors import OutputError
    from chargpt.fsutil import claim_output

    run, data = tmp_path / "runs" / "r", tmp_path / "data"
    (run / "tensorboard").mkdir(parents=True)
    data.mkdir()
    (run / "ckpt.pt").write_bytes(b"weights")
    (data / "train.pt").write_bytes(b"tokens")
    (tmp_path / "p.txt").write_text("prompt")
    refused = {
        "an input of this command": (tmp_path / "p.txt", (tmp_path / "p.txt",)),
        "inside the run directory": (run / "tensorboard" / "x.png", ()),
        "inside the dataset directory": (data / "val.pt", ()),
        "does not exist": (tmp_path / "nonexistent" / "dir" / "x.png", ()),
        "not a directory": (tmp_path / "p.txt" / "x.png", ()),
        "control character": (tmp_path / "a\nb.png", ()),  # a name no listing shows as it is
        "has a control character": (tmp_path / "tab\there.png", ()),
    }
    for words, (out, inputs) in refused.items():
        with pytest.raises(OutputError, match=words) as e:
            claim_output(out, inputs)
        assert "\n" not in str(e.value) and "choose" in str(e.value)
    assert not (tmp_path / "nonexistent").exists()
    assert (run / "ckpt.pt").read_bytes() == b"weights" and (tmp_path / "p.txt").read_text() == "prompt"
    assert claim_output(tmp_path / "runs" / "compare.png", (run,)).path == tmp_path / "runs" / "compare.png"


def test_the_views_latest_leads_to_are_chargpts_and_no_output_goes_inside_them(tmp_path):
    """`<runs>/.latest` holds the views of runs that `latest` leads to (links to a run's files): a figure or a
    dataset written there made `train` leave `latest` as it was ("a directory that chargpt did not make")."""
    from chargpt.errors import OutputError
    from chargpt.fsutil import claim_output
    from chargpt.runs.rundir import RunDir

    run = RunDir.create(tmp_path / "runs", "r")
    try:
        run.write_config({"preset": "cpu"})
        run.log_metrics({"step": 0, "train_loss": 4.2})
        assert run.mark_latest() is None
    finally:
        run.unlock()
    runs = tmp_path / "runs"
    figures = (runs / ".latest" / "x.png", runs / "latest" / "x.png")  # `attention --out`, `runs --plot --out`
    datasets = (runs / ".latest" / "sub", runs / "latest", runs / "r" / "sub")  # `prepare --out`
    for out, directory in [(f, False) for f in figures] + [(d, True) for d in datasets]:
        with pytest.raises(OutputError, match="inside the (latest run's views|run directory)") as e:
            claim_output(out, directory=True) if directory else claim_output(out)
        assert "\n" not in str(e.value) and "choose" in str(e.value)
    assert sorted(p.name for p in (runs / ".latest").iterdir()) == ["r"]
    assert claim_output(runs / "compare.png").path == runs / "compare.png"
    assert claim_output(tmp_path / "new" / "deep" / "ds", directory=True).path == tmp_path / "new" / "deep" / "ds"


RELATIONS = ("same path", "symlink", "hard link", "dot segments", "symlinked directory", "in a run or a dataset",
             "in an input directory", "fresh")
MARKERS = list(RUN_MARKERS + DATASET_MARKERS)
NAMES = st.text(alphabet="abxyz019_-.", min_size=1, max_size=10).filter(
    lambda s: not s.startswith(".") and all(s not in names for names in MARKERS))


@settings(max_examples=60, deadline=None)
@given(relation=st.sampled_from(RELATIONS), name=NAMES, markers=st.sampled_from(MARKERS),
       depth=st.integers(0, 2), as_marker=st.booleans())
def test_an_output_that_is_or_lies_in_what_a_command_reads_is_refused_and_a_fresh_path_is_not(
        relation, name, markers, depth, as_marker):
    from chargpt.errors import OutputError
    from chargpt.fsutil import claim_output

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "in" / "sub").mkdir(parents=True)
        source = base / "in" / name
        source.write_bytes(b"input")
        inputs = (source,)
        owned = base / "owned"
        (owned / "a" / "b").mkdir(parents=True)
        for marker in markers:
            (owned / marker).write_bytes(b"chargpt's")
        below = owned.joinpath(*["a", "b"][:depth])
        if relation == "same path":
            out = source
        elif relation == "symlink":
            out = base / f"link-{name}"
            out.symlink_to(source)
        elif relation == "hard link":
            out = base / f"hard-{name}"
            os.link(source, out)
        elif relation == "dot segments":
            out = f"{base}/in/./sub/../{name}"  # a string: pathlib would drop the "." segment
        elif relation == "symlinked directory":
            (base / "alias").symlink_to(below)
            out, inputs = base / "alias" / (markers[0] if as_marker else name), ()
        elif relation == "in a run or a dataset":
            out, inputs = below / (markers[0] if as_marker else name), ()
        elif relation == "in an input directory":
            out, inputs = base / "in" / "sub" / name, (base / "in",)
        else:
            out = base / "sub-fresh" / name
            out.parent.mkdir()
            assert claim_output(out, inputs).path == out
            return
        with pytest.raises(OutputError) as e:
            claim_output(out, inputs)
        assert "\n" not in str(e.value)
        assert source.read_bytes() == b"input" and all((owned / m).read_bytes() == b"chargpt's" for m in markers)


def _png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


PNG = b"\x89PNG\r\n\x1a\n"
IHDR = _png_chunk(b"IHDR", bytes(13))
MARK = b"Software\x00chargpt"


@settings(max_examples=60, deadline=None)
@given(content=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: PNG + b),  # any other PNG
    st.binary(max_size=64).map(lambda b: PNG + b + b"tEXt" + MARK),  # the mark's bytes, not its chunk
    st.builds(lambda before, crc: PNG + IHDR + before + _png_chunk(b"tEXt", MARK, crc),  # the chunk, damaged
              st.binary(max_size=32), st.integers(0, 2**32 - 1).filter(lambda c: c != zlib.crc32(b"tEXt" + MARK))),
    st.builds(lambda text: PNG + IHDR + _png_chunk(b"tEXt", text) + _png_chunk(b"IDAT", b""),  # another's text
              st.binary(max_size=40).filter(lambda t: t != MARK)),
    st.builds(lambda text: PNG + IHDR + _png_chunk(b"IDAT", b"") + _png_chunk(b"tEXt", text),  # past the image
              st.just(MARK))))
def test_an_existing_file_is_replaced_only_when_it_is_a_figure_chargpt_drew(content):
    """An --out over a file of the user's (a checkpoint copied out of its run, notes, a PNG of theirs, a file that
    merely holds the mark's bytes) is refused in one line and the file left as it was."""
    from chargpt.errors import OutputError
    from chargpt.fsutil import claim_output

    with tempfile.TemporaryDirectory() as tmp:
        theirs = Path(tmp) / "theirs.pt"
        theirs.write_bytes(content)
        with pytest.raises(OutputError, match="a file chargpt did not write") as e:
            claim_output(theirs)
        assert "\n" not in str(e.value) and theirs.read_bytes() == content


def test_a_figure_chargpt_drew_is_replaced_by_the_next_one(tmp_path):
    """What `save_figure` (a user-named --out) and `png_bytes` (a run's and a sweep's own plots) write is
    recognised as chargpt's, and drawn anew atomically over it; matplotlib's own PNG is not chargpt's."""
    import matplotlib.pyplot as plt

    from chargpt.errors import OutputError
    from chargpt.fsutil import claim_output, save_figure
    from chargpt.runs.plotting import png_bytes

    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs.png"
    fig = plt.figure()
    try:
        fig.savefig(theirs, format="png")
        (tmp_path / "bytes.png").write_bytes(png_bytes(fig))
        assert claim_output(tmp_path / "bytes.png").path == tmp_path / "bytes.png"
        save_figure(fig, ours)
        first = ours.stat().st_ino
        fig.gca().plot([0, 1])
        assert save_figure(fig, ours) == ours and ours.stat().st_ino != first
    finally:
        plt.close(fig)
    with pytest.raises(OutputError, match="a file chargpt did not write"):
        claim_output(theirs)


def test_attention_and_a_runs_plot_never_write_over_a_users_file(tmp_path, tiny_run):
    """`chargpt attention --out` and `chargpt runs --plot --out` over a checkpoint copied out of its run: one line,
    exit 2, the checkpoint as it was; over the figure the same command drew before: replaced."""
    copy = tmp_path / "myckpt.pt"
    shutil.copyfile(tiny_run / "ckpt.pt", copy)
    before = copy.read_bytes()
    commands = [("attention", "--ckpt", tiny_run, "--prompt", "ROMEO: "),
                ("runs", "--runs-dir", tiny_run.parent, "--plot", tiny_run.name)]
    for command in commands:
        p = run_main(*command, "--out", copy, cwd=tmp_path)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
        assert "a file chargpt did not write" in p.stderr and "Traceback" not in p.stderr
        assert copy.read_bytes() == before
        for _ in range(2):  # a fresh path, then the same path again: its own figure, replaced
            p = run_main(*command, "--out", tmp_path / f"{command[0]}.png", cwd=tmp_path)
            assert p.returncode == 0, p.stderr


def test_outside_fsutil_a_figure_is_saved_only_into_memory():
    """Every PNG written to a file goes through `fsutil.save_figure`, which claims it: no other door can skip it."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "fsutil.py":
            continue
        tree = ast.parse(path.read_text())
        buffers = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and "BytesIO" in ast.unparse(n.value)
                   for t in n.targets if isinstance(t, ast.Name)}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "savefig":
                first = call.args[0] if call.args else None
                if not (isinstance(first, ast.Name) and first.id in buffers):
                    found.append(f"{path.relative_to(SRC)}:{call.lineno}: {ast.unparse(call)}")
    assert not found, "write figures with chargpt.fsutil.save_figure:\n" + "\n".join(found)
