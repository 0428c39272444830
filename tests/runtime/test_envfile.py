"""The working directory's `.env`, read as python-dotenv (the notebook's `%dotenv`) reads it; variables already in
the environment win. The end-to-end cases (a `.env` steering real wandb runs) are in track/test_tracker.py."""
import os

import pytest

from chargpt.runtime.envfile import load_env_file

NAMES = ("CHARGPT_T_MODE", "CHARGPT_T_PROJECT", "CHARGPT_T_QUOTED", "CHARGPT_T_REF", "CHARGPT_T_WORD")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Whatever a test's .env sets is undone afterwards (monkeypatch restores what it has seen)."""
    for name in NAMES:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


def test_a_dotenv_file_sets_variables_says_which_file_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("CHARGPT_T_MODE=offline\nexport CHARGPT_T_PROJECT=somewhere\n"
                                   "# a comment\nCHARGPT_T_QUOTED=\"two words\"\nCHARGPT_T_REF=${CHARGPT_T_MODE}-x\n")
    monkeypatch.setenv("CHARGPT_T_PROJECT", "mine")
    said = []
    assert load_env_file(tmp_path, say=said.append) == tmp_path / ".env"
    assert os.environ["CHARGPT_T_MODE"] == "offline"
    assert os.environ["CHARGPT_T_PROJECT"] == "mine"
    assert os.environ["CHARGPT_T_QUOTED"] == "two words"
    assert os.environ["CHARGPT_T_REF"] == "offline-x"
    assert said == [f"read {tmp_path / '.env'}: CHARGPT_T_MODE, CHARGPT_T_QUOTED, CHARGPT_T_REF; "
                    f"already set, so kept: CHARGPT_T_PROJECT"]
    assert load_env_file(tmp_path, say=said.append) == tmp_path / ".env" and len(said) == 1  # once per process


def test_only_rank_0_says_which_file_it_read_and_every_rank_reads_it(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("CHARGPT_T_MODE=offline\n")
    monkeypatch.setenv("RANK", "1")
    said = []
    assert load_env_file(tmp_path, say=said.append) == tmp_path / ".env"
    assert os.environ["CHARGPT_T_MODE"] == "offline" and said == []


def test_no_dotenv_file_reads_nothing_and_says_nothing(tmp_path):
    said = []
    assert load_env_file(tmp_path, say=said.append) is None and said == []
    (tmp_path / ".env").mkdir()  # not a file
    assert load_env_file(tmp_path, say=said.append) is None and said == []


def test_a_malformed_dotenv_file_is_one_warning_and_its_good_lines_are_read(tmp_path, capsys):
    (tmp_path / ".env").write_bytes(b"CHARGPT_T_MODE=offline\n\x00\xff\xfe\x80binary\nCHARGPT_T_WORD\n"
                                    b"CHARGPT_T_PROJECT=ok\n")
    said = []
    load_env_file(tmp_path, say=said.append)
    assert os.environ["CHARGPT_T_MODE"] == "offline" and os.environ["CHARGPT_T_PROJECT"] == "ok"
    assert "CHARGPT_T_WORD" not in os.environ
    assert said == [f"read {tmp_path / '.env'}: CHARGPT_T_MODE, CHARGPT_T_PROJECT"]
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {tmp_path / '.env'} lines 2, 3 are not NAME=value text (binary bytes, or no '='); "
        f"skipped, the rest was read"]


def test_an_unreadable_dotenv_file_is_one_warning(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    env = tmp_path / ".env"
    env.write_text("CHARGPT_T_MODE=offline\n")
    env.chmod(0)
    assert load_env_file(tmp_path, say=print) is None
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"warning: {env} cannot be read (Permission denied); going on without it"]
    assert "CHARGPT_T_MODE" not in os.environ


def test_a_dotenv_file_of_a_megabyte_is_skipped_at_once_with_one_warning(tmp_path, capsys):
    (tmp_path / ".env").write_text("CHARGPT_T_WORD=" + "x" * 1_000_000 + "\n" + "CHARGPT_T_MODE=1\n" * 50_000)
    said = []
    assert load_env_file(tmp_path, say=said.append) is None and said == []
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot be read (over 16,384 bytes" in err[0] and "going on without it" in err[0], err
    assert "CHARGPT_T_WORD" not in os.environ
