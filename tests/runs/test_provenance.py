"""Provenance: what a run records about the code, libraries and machine that made it."""
import platform
import subprocess
import sys

import torch

from chargpt import __version__
from chargpt.runs.provenance import PACKAGE_DIR, device_name, git_commit, provenance


def test_provenance_names_version_commit_libraries_device_and_command():
    found = provenance("cpu", ["chargpt", "train", "--preset", "bigram", "--name", "two words"])
    assert found["chargpt_version"] == __version__
    assert found["torch_version"] == torch.__version__ and found["python_version"] == platform.python_version()
    assert found["device_name"] == device_name("cpu") and found["device_name"]
    assert found["command"] == "chargpt train --preset bigram --name 'two words'"  # pastes back into a shell
    head = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout
        assert found["git_commit"] == head.stdout.strip() and isinstance(found["git_dirty"], bool)
    else:
        assert found["git_commit"] is None and found["git_dirty"] is None


def test_a_directory_outside_any_checkout_has_no_commit(tmp_path):
    assert git_commit(tmp_path) == (None, None)


def test_the_command_defaults_to_this_process_arguments(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/chargpt", "train", "--wandb"])
    assert provenance("cpu")["command"] == "chargpt train --wandb"
