"""The CLI end to end: real processes where a process is what is tested (a run, its command line), in-process
(`run_main`) for usage errors and for commands that only read a run."""
import argparse
import json
import re
import shutil

import pytest

from chargpt.runs.rundir import RunDir
from conftest import TINY_GPT, one_error_line, run_cli, run_main, subcommands


def test_prepare_train_sample_eval_end_to_end(shakespeare_path, tmp_path):
    p = run_cli("prepare", "--input", shakespeare_path, "--out", "data/ts", cwd=tmp_path, check=True)
    assert "vocabulary 65" in p.stdout and "1,003,854" in p.stdout
    again = run_cli("prepare", "--input", shakespeare_path, "--out", "data/ts", cwd=tmp_path, check=True)
    assert "nothing changed" in again.stdout

    p = run_cli("train", "--data", "data/ts", "--name", "r1", *TINY_GPT, cwd=tmp_path, check=True)
    assert "parameters" in p.stdout and "model: gpt" in p.stdout
    assert "block_size=16" in p.stdout  # the resolved config is printed
    assert "--- sample ---" in p.stdout
    summary = json.loads((tmp_path / "runs/r1/summary.json").read_text())
    assert summary["steps"] == 20 and summary["val_loss_full"] < 4.2
    assert (tmp_path / "runs/latest/ckpt.pt").resolve() == (tmp_path / "runs/r1/ckpt.pt").resolve()

    # the commands that only read the run, in-process
    s = run_main("sample", "--ckpt", "runs/r1", "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3",
                 cwd=tmp_path, check=True)
    assert s.stdout.startswith("ROMEO:") and len(s.stdout.rstrip("\n")) == 46
    s2 = run_main("sample", "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3", cwd=tmp_path, check=True)
    assert s2.stdout == s.stdout  # runs/latest by default; same seed, same text
    many = run_main("sample", "--num-samples", "3", "--max-new-tokens", "10", cwd=tmp_path, check=True)
    assert many.stdout.count("--- sample") == 3

    e = run_main("eval", "--ckpt", "runs/r1", "--json", cwd=tmp_path, check=True)
    result = json.loads(e.stdout)
    assert result["split"] == "val" and result["tokens"] == 111539
    assert abs(result["loss"] - summary["val_loss_full"]) < 1e-6
    assert abs(result["bpc"] - result["loss"] / 0.6931471805599453) < 1e-9
    t = run_main("eval", "--ckpt", "runs/r1/ckpt.pt", "--split", "train", cwd=tmp_path, check=True)
    assert "train loss" in t.stdout and "bits/char" in t.stdout


@pytest.mark.parametrize("command", ["prepare", "train", "sample", "eval"])
def test_help_lists_options_with_defaults(command):
    p = run_main(command, "--help", check=True)
    assert "--help" in p.stdout and "default" in p.stdout


def test_train_help_lists_every_config_field():
    from dataclasses import fields

    from chargpt.config import TrainConfig
    from chargpt.model.gpt import ModelConfig

    text = run_main("train", "--help", check=True).stdout
    for f in [*fields(ModelConfig), *fields(TrainConfig)]:
        if f.name != "vocab_size":
            assert "--" + f.name.replace("_", "-") in text, f.name


@pytest.mark.parametrize("args, code, needle", [
    (["--lr", "0"], 2, "--lr"),
    (["--lr", "-1e-3"], 2, "--lr"),
    (["--batch-size", "0"], 2, "--batch-size"),
    (["--preset", "nope"], 2, "preset"),
    (["--model", "transformer-xl"], 2, "model"),
    (["--n-embd", "30", "--n-head", "4"], 2, "divisible"),
    (["--max-steps", "-5"], 2, "--max-steps"),
    (["--time-budget", "soon"], 2, "duration"),
    (["--device", "tpu"], 2, "--device"),
])
def test_invalid_train_values_give_one_line_and_exit_2(dataset_dir, tmp_path, args, code, needle):
    p = run_main("train", "--data", dataset_dir, *args, cwd=tmp_path)
    line = one_error_line(p)
    assert p.returncode == code and needle in line
    assert not (tmp_path / "runs").exists()


def test_bad_corpora_give_one_line(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 50)
    (tmp_path / "tiny.txt").write_text("to be or not to be, that is the question\n")
    assert "does not exist" in one_error_line(run_main("prepare", "--input", "missing.txt", cwd=tmp_path))
    assert "empty" in one_error_line(run_main("prepare", "--input", "empty.txt", cwd=tmp_path))
    assert "UTF-8" in one_error_line(run_main("prepare", "--input", "latin1.txt", cwd=tmp_path))
    run_main("prepare", "--input", "tiny.txt", "--out", "tiny", cwd=tmp_path, check=True)
    line = one_error_line(run_main("train", "--data", "tiny", "--preset", "bigram", "--block-size", "64", cwd=tmp_path))
    assert "fewer than one block" in line


def test_prompt_outside_the_vocabulary_is_one_line(tiny_run):
    line = one_error_line(run_main("sample", "--ckpt", tiny_run, "--prompt", "Hello ~ world"))
    assert "'~' at position 6" in line
    line = one_error_line(run_main("sample", "--ckpt", tiny_run, "--max-new-tokens", "-1"))
    assert "--max-new-tokens" in line


def test_a_prompts_file_of_more_prompts_than_num_samples_takes_is_one_line_before_any_model_loads(tmp_path):
    (tmp_path / "many.txt").write_text("\n" * (10 ** 6 + 1))
    (tmp_path / "enough.txt").write_text("\n" * 10 ** 6)
    line = one_error_line(run_main("sample", "--ckpt", "runs/none", "--prompts-file", "many.txt", cwd=tmp_path))
    assert line == ("error: the number of prompts in --prompts-file many.txt (sampled together, as --num-samples) "
                    "must be in [1, 10^6], got 1000001")
    same = one_error_line(run_main("sample", "--num-samples", 10 ** 6 + 1))
    assert same == "error: --num-samples must be in [1, 10^6], got 1000001"
    line = one_error_line(run_main("sample", "--ckpt", "runs/none", "--prompts-file", "enough.txt", cwd=tmp_path))
    assert line.startswith("error: no run 'runs/none'")  # a million prompts pass, on to the checkpoint


def test_a_prompt_file_over_4_mib_is_one_line_before_any_model_loads_and_one_of_4_mib_samples_as_before(
        tiny_run, tmp_path):
    limit = 4 << 20  # as --help says
    text = "ROMEO: But soft, what light through yonder window breaks?\n"
    whole = (text * (limit // len(text) + 1))[:limit]
    (tmp_path / "big.txt").write_text(whole + "a")
    (tmp_path / "limit.txt").write_text(whole)
    for flag in ("--prompt-file", "--prompts-file"):
        line = one_error_line(run_main("sample", "--ckpt", "runs/none", flag, "big.txt", cwd=tmp_path))
        assert line == (f"error: {flag} big.txt is over 4,194,304 bytes, more than a prompt file may hold (the UTF-8 "
                        f"of 1,048,576 characters, the longest context a model can have); shorten it")
    r = run_main("sample", "--ckpt", tiny_run, "--prompt-file", "limit.txt", "--max-new-tokens", 5, "--device", "cpu",
                 cwd=tmp_path, check=True)
    assert r.stdout.startswith(whole) and len(r.stdout) == len(whole) + 6 and r.stdout.endswith("\n")
    assert "at most 4 MiB" in " ".join(run_main("sample", "--help").stdout.split())


BIGRAM_SHORT = ["--preset", "bigram", "--max-steps", "20", "--eval-interval", "10", "--eval-iters", "2",
                "--sample-tokens", "20"]


@pytest.mark.slow
def test_readme_sequence_train_resume_latest_twice_then_sample_latest(dataset_dir, tmp_path):
    first = run_cli("train", "--data", dataset_dir, *BIGRAM_SHORT, cwd=tmp_path, check=True)
    header = first.stdout.splitlines()[:4]
    assert header[0].startswith("training runs/train-bigram-baseline-") and "from preset 'bigram'" in header[0]
    assert header[1] == "changed from the preset: max_steps=20, eval_interval=10, eval_iters=2, sample_tokens=20"
    assert header[2].startswith("model: bigram, context 8, 4,225 parameters")
    assert header[3].startswith("run: 20 steps, batch 256 tokens per step")
    assert "n_layer" not in first.stdout and all(len(line) < 120 for line in header)

    run_cli("train", "--resume", "runs/latest", "--max-steps", "30", cwd=tmp_path, check=True)
    (name,) = [p.name for p in (tmp_path / "runs").iterdir() if p.name not in ("latest", ".latest")]
    assert (tmp_path / "runs/latest").readlink().name == name
    metrics = (tmp_path / "runs" / name / "metrics.jsonl").read_text()
    again = run_cli("train", "--resume", "runs/latest", cwd=tmp_path, check=True)  # a finished run
    assert again.stdout.startswith(f"runs/{name} is finished: it reached step 30 of --max-steps 30")
    assert (tmp_path / "runs" / name / "metrics.jsonl").read_text() == metrics  # no second record of step 30
    assert (tmp_path / "runs/latest").readlink().name == name
    sample = run_main("sample", "--ckpt", "runs/latest", "--max-new-tokens", "10", cwd=tmp_path, check=True)
    assert len(sample.stdout) == 11


@pytest.mark.slow
def test_max_steps_given_on_resume_or_fine_tune_of_a_budget_run_counts_steps(dataset_dir, tmp_path):
    base = ["--data", dataset_dir, "--runs-dir", tmp_path, *TINY_GPT, "--sample-tokens", "0"]
    run_cli("train", *base, "--time-budget", "1", "--name", "b", check=True)  # both given: the budget wins
    steps = json.loads((tmp_path / "b/summary.json").read_text())["steps"]
    resumed = run_cli("train", "--resume", tmp_path / "b", "--max-steps", steps + 7, check=True)
    assert "time_budget=none" in resumed.stdout.splitlines()[1]  # said, in the line of what changed, as a flag takes it
    assert json.loads((tmp_path / "b/summary.json").read_text())["steps"] == steps + 7
    tuned = run_cli("train", "--init-from", tmp_path / "b", "--data", dataset_dir, "--runs-dir", tmp_path,
                    "--name", "ft", "--max-steps", 5, check=True)
    assert "run: 5 steps" in tuned.stdout
    assert json.loads((tmp_path / "ft/summary.json").read_text())["steps"] == 5


def test_print_config_writes_only_json_on_stdout(tmp_path):
    p = run_main("train", "--print-config", cwd=tmp_path, check=True)
    assert json.loads(p.stdout)["preset"] in ("cpu", "lecture")
    assert p.stderr == ""


def test_make_train_prints_one_sample():
    import subprocess

    from conftest import REPO

    dry = subprocess.run(["make", "-n", "train", "STAMP=/dev/null"], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    assert "chargpt train" in dry and "chargpt sample" not in dry  # training prints its own sample


@pytest.mark.slow
def test_fine_tune_from_a_run_on_other_text_records_its_origin_and_best_pt_is_usable(tiny_run, tmp_path):
    import pydoc_data.topics

    (tmp_path / "docs.txt").write_text("\n".join(pydoc_data.topics.topics.values())[:60_000], encoding="utf-8")
    run_cli("prepare", "--input", "docs.txt", "--out", "data/docs", cwd=tmp_path, check=True)
    shutil.copytree(tiny_run, tmp_path / "runs" / "base")  # TINY_GPT, 20 steps on tiny Shakespeare
    RunDir(tmp_path / "runs" / "base").mark_latest()
    p = run_cli("train", "--init-from", "runs/latest", "--data", "data/docs", "--name", "ft", "--max-steps", "10",
                cwd=tmp_path, check=True)
    assert p.stdout.startswith("fine-tuning runs/ft from runs/base/ckpt.pt (step 20) on data/docs")
    config = json.loads((tmp_path / "runs/ft/config.json").read_text())
    summary = json.loads((tmp_path / "runs/ft/summary.json").read_text())
    base = json.loads((tmp_path / "runs/base/summary.json").read_text())
    assert config["init_from"] == summary["init_from"]
    assert summary["init_from"]["ckpt"] == "runs/base/ckpt.pt" and summary["init_from"]["step"] == 20
    assert summary["init_from"]["dataset_hash"] == base["dataset_hash"] != summary["dataset_hash"]
    assert summary["init_from"]["new_chars"] > 0 and summary["init_from"]["shared_chars"] > 50
    assert config["model"]["n_embd"] == 32 and config["model"]["vocab_size"] > 65
    prov = summary["provenance"]
    assert prov["command"].startswith("chargpt train --init-from runs/latest") and prov["torch_version"]

    refused = run_main("train", "--init-from", "runs/base", "--data", "data/docs", "--n-embd", "64", cwd=tmp_path)
    assert refused.returncode == 2 and "drop n_embd=64" in refused.stderr

    for command in (["sample", "--max-new-tokens", "5"], ["eval"], ["attention", "--prompt", "to be", "--out", "a.png"]):
        r = run_main(*command, "--ckpt", "runs/base/best.pt", "--threads", "1", cwd=tmp_path, check=True)
        assert r.stdout
    (tmp_path / "prompt.txt").write_text("ROMEO:\nBut soft\n", encoding="utf-8")
    r = run_main("sample", "--ckpt", "runs/base", "--prompt-file", "prompt.txt", "--max-new-tokens", "5", cwd=tmp_path,
                 check=True)
    assert r.stdout.startswith("ROMEO:\nBut soft") and len(r.stdout) == len("ROMEO:\nBut soft") + 6
    r = run_main("attention", "--ckpt", "runs/latest", "--prompt-file", "prompt.txt", "--out", "b.png", cwd=tmp_path,
                 check=True)
    assert r.stdout == "wrote b.png: 1 layer x 2 heads over 15 characters\n"
    both = run_main("sample", "--prompt", "x", "--prompt-file", "prompt.txt", cwd=tmp_path)
    assert both.returncode == 2 and "pass one" in both.stderr


def test_train_help_shows_each_option_once_with_its_description_and_one_default():
    text = " ".join(run_main("train", "--help", check=True).stdout.split())
    assert text.count("--n-layer INT") == 2  # usage line and option list
    assert "transformer blocks (default: 3)" in text  # the cpu preset's value, once
    assert "--mlp {relu,relu2,gelu}" in text
    assert "(default: None)" not in text


def test_abbreviated_flags_are_refused():
    line = one_error_line(run_main("train", "--dataset", "shakespeare", "--print-config"))
    assert "--dataset" in line


def test_config_file_then_flags_resolve_and_print_config_exits(tmp_path):
    (tmp_path / "small.toml").write_text('preset = "bigram"\nmax_steps = 7\n[train]\nlr = 0.05\n')
    p = run_main("train", "--config", "small.toml", "--lr", "0.02", "--print-config", cwd=tmp_path, check=True)
    printed = json.loads(p.stdout)
    assert printed["preset"] == "bigram" and printed["model"]["model"] == "bigram"
    assert printed["train"]["max_steps"] == 7 and printed["train"]["lr"] == 0.02
    (tmp_path / "printed.json").write_text(p.stdout)  # what --print-config shows reads back as the same config
    again = run_main("train", "--config", "printed.json", "--print-config", cwd=tmp_path, check=True)
    assert json.loads(again.stdout) == printed
    assert not (tmp_path / "runs").exists()
    (tmp_path / "bad.json").write_text('{"lrr": 1}')
    line = one_error_line(run_main("train", "--config", "bad.json", "--print-config", cwd=tmp_path))
    assert "unknown config field 'lrr'" in line


def test_prepare_over_a_dataset_of_other_text_is_one_line_and_replace_replaces_it(tmp_path):
    (tmp_path / "mine.txt").write_text("abcdefghij" * 10)
    (tmp_path / "other.txt").write_text("klmnopqrst" * 10)
    run_main("prepare", "--input", "mine.txt", "--out", "data/ds", cwd=tmp_path, check=True)
    line = one_error_line(run_main("prepare", "--input", "other.txt", "--out", "data/ds", cwd=tmp_path))
    assert "holds another dataset, 'mine' (100 characters from mine.txt" in line and "--replace" in line
    assert json.loads((tmp_path / "data/ds/meta.json").read_text())["name"] == "mine"
    p = run_main("prepare", "--input", "other.txt", "--out", "data/ds", "--replace", cwd=tmp_path, check=True)
    assert p.stdout.startswith("prepared data/ds") and "(int64)" in p.stdout


# ------------------------------------------------ options and exit codes declared once (issue 21, items 6 and 9)
def test_help_and_usage_errors_answer_without_importing_torch_in_under_half_a_second_of_cpu():
    import os
    import resource
    import subprocess
    import sys

    for argv, code in ((["--help"], 0), (["train", "--help"], 0), (["train", "--max-step", "3"], 2),
                       (["sample", "--threads", "-1"], 2), (["attention", "--scale", "sqrt"], 2)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "chargpt", *argv], capture_output=True,
                           text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
        assert p.returncode == code, p.stderr[-2000:]
        assert not {"torch", "numpy", "matplotlib", "tqdm", "wandb"} & imported, argv
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        assert cpu < 0.5, (argv, cpu)


def test_an_option_shared_by_several_commands_is_the_same_option_in_each():
    seen: dict[str, dict] = {}
    for name, parser in subcommands().items():
        for a in parser._actions:
            for opt in a.option_strings:
                seen.setdefault(opt, {})[name] = a

    def kind(a):
        return getattr(a.type, "__name__", a.type), tuple(a.choices or ()), a.nargs

    def described(a):  # train's config flags show the cpu preset's value in the help text itself
        return kind(a), a.metavar, re.sub(r" \(default: [^)]*\)$", "", a.help or "")

    for opt, by_command in seen.items():  # one kind of value everywhere (--out: each command's own output file)
        assert len({kind(a) for a in by_command.values()}) == 1, (opt, sorted(by_command))
    same_meaning = ["--device", "--threads", "--eval-tokens", "--runs-dir", "--prompt-file", "--wandb", "--wandb-mode",
                    "--wandb-project", "--wandb-entity"]
    for opt in same_meaning:
        assert len({described(a) for a in seen[opt].values()}) == 1, (opt, sorted(seen[opt]))
    assert set(seen["--threads"]) == {"train", "sample", "eval", "attention"}
    assert set(seen["--eval-tokens"]) == {"train", "eval"}
    assert set(seen["--runs-dir"]) == {"train", "runs", "serve", "sweep"}
    # the old names of --runs-dir (still taken for a release, with a notice): where they were, and in no --help
    assert set(seen["--out-dir"]) == {"train", "runs"} and set(seen["--runs"]) == {"serve"}
    assert all(a.dest == "runs_dir" and a.help == argparse.SUPPRESS for opt in ("--out-dir", "--runs")
               for a in seen[opt].values())


def test_every_command_has_a_description_and_no_option_shows_an_empty_default(capsys):
    from chargpt.cli import main

    for name in subcommands():
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        description = out.split("\n\n")[1]
        assert not description.startswith("options:") and description.strip().endswith("."), name
        assert "(default: )" not in out and "(default: None)" not in out, name


@pytest.mark.parametrize("argv, suggestion", [
    (["train", "--max-step", "3"], "did you mean --max-steps?"),
    (["sample", "--temprature", "0.5"], "did you mean --temperature?"),
    (["eval", "--eval-token=all"], "did you mean --eval-tokens?"),
    (["serve", "--run-dir", "runs"], "did you mean --runs-dir?"),
])
def test_a_mistyped_option_is_answered_with_the_option_it_resembles(capsys, argv, suggestion):
    from chargpt.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"chargpt {argv[0]}: unrecognized arguments" in err and suggestion in err


@pytest.mark.parametrize("argv, suggestion", [
    (["sampel"], "(did you mean sample?)"), (["trian", "--max-steps", "3"], "(did you mean train?)"),
    (["train", "--dtype", "flaot32"], "(did you mean float32?)"), (["sweeps", "x"], "(did you mean sweep?)"),
])
def test_a_mistyped_command_or_choice_is_answered_with_the_one_it_resembles(capsys, argv, suggestion):
    from chargpt.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" in err and suggestion in err
    assert main(["xyzzy"]) == 2 and "did you mean" not in capsys.readouterr().err  # nothing like it: no guess


def test_bad_input_exits_2_whatever_kind_of_input_it_is(tmp_path, monkeypatch, capsys):
    from chargpt.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for argv in (["sample", "--ckpt", "no-such-run"], ["eval", "--ckpt", "bad.pt"], ["train", "--data", "nowhere"],
                 ["sample", "--prompt-file", "missing.txt"], ["sample", "--threads", "-1"],
                 ["eval", "--device", "tpu"], ["prepare", "--input", "missing.txt"], ["runs", "--plot", "nope"],
                 ["attention", "--window", "-1", "--prompt", "x"], ["train", "--nope"]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.startswith("error: "), argv
    assert not any(tmp_path.iterdir()) or sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_resuming_a_finished_run_says_so_in_one_line_and_how_to_extend_it(dataset_dir, tmp_path):
    run_cli("train", "--preset", "bigram", "--data", dataset_dir, "--max-steps", "20", "--eval-interval", "10",
            "--eval-iters", "2", "--name", "done", cwd=tmp_path, check=True)
    files = {p.name: p.read_bytes() for p in (tmp_path / "runs/done").iterdir() if p.name != ".lock"}
    p = run_cli("train", "--resume", "runs/done", cwd=tmp_path, check=True)
    assert p.stdout == ("runs/done is finished: it reached step 20 of --max-steps 20, and its final evaluation is done; "
                        "to train it further, resume with a larger --max-steps: chargpt train --resume runs/done "
                        "--max-steps 40\n") and p.stderr == ""
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "runs/done").iterdir()
                     if p.name != ".lock"}  # nothing evaluated again (the lock records who last opened the run)
    more = run_cli("train", "--resume", "runs/done", "--max-steps", "40", cwd=tmp_path, check=True)
    assert "resuming runs/done at step 20" in more.stdout and "full-pass val loss" in more.stdout


def test_resuming_a_run_finished_by_its_time_budget_says_so_and_changes_nothing(dataset_dir, tmp_path):
    """A budget is wall clock: the seconds trained never reach it, so a finished budget run was trained again."""
    run_main("train", "--preset", "bigram", "--data", dataset_dir, "--time-budget", "3", "--eval-iters", "2",
             "--name", "timed", cwd=tmp_path, check=True)
    files = {p.name: p.read_bytes() for p in (tmp_path / "runs/timed").iterdir() if p.name != ".lock"}
    p = run_main("train", "--resume", "runs/timed", cwd=tmp_path, check=True)
    assert re.fullmatch(r"runs/timed is finished: it used \S+ of its --time-budget 3\.0s, and its final evaluation is "
                        r"done; to train it further, resume with a larger --time-budget: chargpt train --resume "
                        r"runs/timed --time-budget (\d+)s\n", p.stdout), p.stdout
    assert p.stderr == ""
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "runs/timed").iterdir() if p.name != ".lock"}
    larger = re.search(r"--time-budget (\d+)s$", p.stdout.strip()).group(1)
    assert 3 < int(larger) < 30  # as long again to train as the run used, besides a start-up and the final pass
    more = run_main("train", "--resume", "runs/timed", "--time-budget", larger, cwd=tmp_path, check=True)
    assert "resuming runs/timed at step" in more.stdout and "full-pass val loss" in more.stdout


def test_a_closed_stdout_never_stops_training_silently(dataset_dir, tmp_path):
    """`chargpt train ... | head -2`: the reader goes away after two lines; the run trains to its end."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "train", "--preset", "bigram", "--data", str(dataset_dir),
                             "--max-steps", "3000", "--eval-interval", "1000", "--eval-iters", "2", "--name", "piped"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    head = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and head[0].startswith("training runs/piped")
    assert "stdout was closed" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "runs/piped/summary.json").read_text())
    assert summary["steps"] == 3000 and (tmp_path / "runs/piped/ckpt.pt").is_file()


def test_a_fine_tune_that_fails_before_training_leaves_no_run_directory_behind(dataset_dir, tiny_run, tmp_path):
    import torch

    from chargpt.runs import checkpoint

    state = checkpoint.load(tiny_run)  # TINY_GPT, 20 steps on tiny Shakespeare
    key = next(k for k, v in state["model"].items() if v.dim() == 2 and "token_embedding" not in k and "lm_head" not in k)
    state["model"][key] = torch.zeros(state["model"][key].shape[0], state["model"][key].shape[1] + 1)
    state["checksum"] = checkpoint.digest(state)
    torch.save(state, tmp_path / "odd.pt")
    p = run_cli("train", "--init-from", "odd.pt", "--data", dataset_dir, "--name", "ft", "--max-steps", "2", cwd=tmp_path)
    assert p.returncode == 2 and "its config does not match its tensors" in p.stderr, p.stderr
    assert not (tmp_path / "runs/ft").exists()


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def reader_workspace(tiny_run, tmp_path):
    """Two copies of the tiny run (runs/R, runs/b), a prompt file and a tiny dataset (ds): the inputs of the
    commands that write a file the user names."""
    for name in ("R", "b"):
        shutil.copytree(tiny_run, tmp_path / "runs" / name)
    (tmp_path / "p.txt").write_text("ROMEO:\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    run_main("prepare", "--input", "t.txt", "--out", "ds", cwd=tmp_path, check=True)
    return tmp_path


ATTENTION = ["attention", "--device", "cpu", "--threads", "1"]


@pytest.mark.parametrize("argv", [
    [*ATTENTION, "--ckpt", "runs/R/ckpt.pt", "--prompt", "to be", "--out", "runs/R/ckpt.pt"],
    [*ATTENTION, "--ckpt", "runs/R", "--prompt-file", "p.txt", "--out", "p.txt"],
    [*ATTENTION, "--ckpt", "runs/R", "--prompt-file", "p.txt", "--out", "./runs/../p.txt"],
    ["runs", "--plot", "b", "--out", "runs/R/best.pt"],
    ["runs", "--plot", "b", "--out", "runs/b/metrics.jsonl"],
    [*ATTENTION, "--ckpt", "runs/R", "--prompt", "to be", "--out", "ds/train.pt"],
    ["runs", "--plot", "b", "--out", "ds/val.pt"],
    [*ATTENTION, "--ckpt", "runs/R", "--prompt", "to be", "--out", "no/such/dir/a.png"],
], ids=["attention-over-its-ckpt", "attention-over-its-prompt-file", "attention-over-prompt-file-by-dot-dot",
        "runs-plot-into-a-run", "runs-plot-over-its-input", "attention-into-a-dataset", "runs-plot-into-a-dataset",
        "attention-into-a-missing-directory"])
def test_an_output_that_is_an_input_or_a_file_of_a_run_or_dataset_is_refused_in_one_line_and_nothing_changes(
        reader_workspace, argv):
    before = _files(reader_workspace)
    p = run_main(*argv, cwd=reader_workspace)
    assert p.returncode == 2 and p.stdout == ""
    assert one_error_line(p).startswith("error: --out ")
    assert _files(reader_workspace) == before and not (reader_workspace / "no").exists()


def test_an_output_linked_to_an_input_is_that_input(reader_workspace):
    """A hard link or a symlink to the checkpoint read is the checkpoint: refused, and both left as they were."""
    ws = reader_workspace
    (ws / "hard.pt").hardlink_to(ws / "runs/R/ckpt.pt")
    (ws / "soft.pt").symlink_to(ws / "runs/R/ckpt.pt")
    before = _files(ws)
    for out in ("hard.pt", "soft.pt"):
        p = run_main(*ATTENTION, "--ckpt", "hard.pt", "--prompt", "to be", "--out", out, cwd=ws)
        assert p.returncode == 2 and "an input of this command" in one_error_line(p)
    assert _files(ws) == before
    fine = run_main(*ATTENTION, "--ckpt", "hard.pt", "--prompt", "to be", "--out", "att.png", cwd=ws, check=True)
    assert fine.stdout.startswith("wrote att.png")
