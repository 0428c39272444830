"""Run directories: opening one by a link (`runs/latest`) and marking the newest run."""
import os

from chargpt.rundir import RunDir


def test_resuming_through_runs_latest_keeps_latest_pointing_at_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.mark_latest()
    assert os.readlink("runs/latest") == "r1"
    for _ in range(2):  # the README resumes `runs/latest` twice in a row
        opened = RunDir.open("runs/latest")
        assert opened.path.name == "r1" and str(opened.path) == os.path.join("runs", "r1")
        opened.mark_latest()
        assert os.readlink("runs/latest") == "r1"
    assert RunDir.open("runs/latest/ckpt.pt").path.name == "r1"


def test_a_run_outside_the_working_directory_is_opened_by_its_real_path(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "runs", "r2")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.mark_latest()
    monkeypatch.chdir("/")
    assert RunDir.open(tmp_path / "runs/latest").path == (tmp_path / "runs/r2").resolve().relative_to("/")
