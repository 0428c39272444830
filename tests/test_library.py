"""chargpt from Python: prepare, train in-process, load, generate, score and plot, as a notebook does."""
import json
import string

import pytest
import torch
from matplotlib.figure import Figure

import chargpt
from chargpt.errors import ChargptError, CheckpointError, ConfigError, DataError
from chargpt.runs.rundir import read_metrics
from conftest import run_main

TINY = dict(n_layer=1, n_embd=16, n_head=2, block_size=8, batch_size=4, max_steps=6, eval_interval=3,
            eval_iters=1, sample_tokens=5, compile=False, device="cpu", threads=1, verbose=False)


def corpus(chars: str, n: int = 4000) -> str:
    g = torch.Generator().manual_seed(0)
    return "".join(chars[i] for i in torch.randint(0, len(chars), (n,), generator=g).tolist())


@pytest.mark.parametrize("chars", [string.printable[:95], string.ascii_lowercase + string.digits + " "],
                         ids=["95-chars", "37-chars"])
def test_train_takes_the_vocabulary_and_head_size_from_the_dataset(tmp_path, chars, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = chargpt.prepare(text=corpus(chars), out="data/mine")
    assert ds.tokenizer.vocab_size == len(set(chars))
    run = chargpt.train("cpu", ds, name="r", **TINY)
    assert run.model.lm_head.out_features == len(set(chars)) == run.config.model.vocab_size
    assert run.path.resolve() == tmp_path / "runs/r" and run.summary["steps"] == 6
    assert {"config.json", "metrics.jsonl", "ckpt.pt", "summary.json", "sample.txt"} <= {p.name for p in run.path.iterdir()}
    assert [r["step"] for r in run.metrics if "val_loss" in r] == [0, 3, 6]
    assert run.metrics == read_metrics(run.path)


def test_prepare_takes_a_path_or_text_and_train_any_config_field_as_a_keyword(tmp_path, monkeypatch,
                                                                               shakespeare_path):
    monkeypatch.chdir(tmp_path)
    ds = chargpt.prepare(shakespeare_path, "data/ts")
    assert ds.tokenizer.vocab_size == 65 and (tmp_path / "data/ts/train.pt").is_file()
    run = chargpt.train("bigram", ds, name="b", time_budget="1s", eval_iters=2, sample_tokens=0, verbose=False)
    assert run.summary["time_budget"] == 1.0 and json.loads((run.path / "config.json").read_text())["train"][
        "time_budget"] == 1.0
    with pytest.raises(ConfigError, match="n_layers"):
        chargpt.train("bigram", ds, n_layers=2)
    with pytest.raises(ConfigError, match="--lr"):
        chargpt.train("bigram", ds, lr=-1.0)


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    run = chargpt.train("cpu", dataset_dir, runs_dir=out, name="r", **(TINY | dict(max_steps=20, eval_interval=10)))
    return run


def test_load_generates_what_chargpt_sample_prints(trained):
    for where in (trained.path, trained.path / "ckpt.pt"):
        m = chargpt.load(where)
        text = m.generate("ROMEO:", max_new_tokens=30, temperature=0.8, top_k=10, seed=3)
        cli = run_main("sample", "--ckpt", where, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature",
                       "0.8", "--top-k", "10", "--seed", "3", "--device", "cpu", check=True).stdout
        assert text + "\n" == cli
        assert "".join(m.stream("ROMEO:", max_new_tokens=30, temperature=0.8, top_k=10, seed=3)) == text[6:]
    assert isinstance(m.model, torch.nn.Module) and m.tokenizer.vocab_size == 65 and m.config.model.n_layer == 1


def test_loss_scores_every_character_of_a_text_as_eval_does(trained, dataset_dir):
    m = chargpt.load(trained.path)
    from chargpt.data.dataset import load_dataset

    val = load_dataset(dataset_dir).val
    text = m.tokenizer.decode(val.tolist())
    assert abs(m.loss(text) - trained.summary["val_loss_full"]) < 1e-5
    with pytest.raises(ChargptError, match="vocabulary"):
        m.loss("caf\u00e9 au lait")


def test_plots_are_figures_and_are_saved_when_given_a_path(trained, tmp_path):
    fig = trained.plot(tmp_path / "loss.png")
    assert isinstance(fig, Figure) and (tmp_path / "loss.png").stat().st_size > 5_000
    assert isinstance(chargpt.compare([trained, trained.path]), Figure)
    att = chargpt.load(trained.path).attention("ROMEO:", tmp_path / "att.png")
    assert isinstance(att, Figure) and len(att.axes) == 1 * 2 + 1  # layers x heads, and the colour bar
    assert (tmp_path / "att.png").is_file()
    step = trained.summary["steps"]  # titled as `chargpt attention` titles it: the run, its step, its shape
    for figure in (att, trained.attention("ROMEO:")):  # loaded, and as train() handed it over
        assert figure._suptitle.get_text().startswith(f"{trained.path.name} (step {step}): attention, 1 layer x 2")


def test_load_artifact_without_wandb_access_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ChargptError, match="me/chargpt/nothing:latest"):
        chargpt.load_artifact("me/chargpt/nothing:latest")


def test_chargpt_train_is_the_function_and_no_module_of_that_name_shadows_it():
    import importlib.util

    from chargpt.training.loop import setup

    assert callable(chargpt.train) and chargpt.train.__module__ == "chargpt.library" and callable(setup)
    assert importlib.util.find_spec("chargpt.train") is None


def test_train_in_a_script_logs_lines_not_a_redrawn_bar(dataset_dir, tmp_path):
    import subprocess
    import sys

    code = (f"import chargpt; chargpt.train('cpu', {str(dataset_dir)!r}, runs_dir={str(tmp_path)!r}, name='s', "
            f"**{TINY | dict(verbose=True)!r})")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stdout + p.stderr  # a log, not a terminal: no carriage-return redraws
    assert "100% | step 6/6" in p.stdout


class ListTracker:
    """A user's own tracker: any object with the five methods of `chargpt.track.tracker.Tracker` will do."""

    def __init__(self):
        self.config, self.records, self.images, self.versions, self.summary = None, [], [], [], None

    def start(self, run, config, data):
        self.config = config

    def log(self, record, step):
        assert step == record["step"]
        self.records.append(record)

    def image(self, key, path, caption, step):
        self.images.append((key, path.stat().st_size, caption, step))

    def artifact(self, kind, files, aliases, metadata):
        self.versions.append((kind, sorted(files), aliases))

    def finish(self, summary):
        self.summary = summary


def test_a_tracker_object_receives_the_records_metrics_jsonl_holds_the_images_checkpoints_and_summary(
        dataset_dir, tmp_path):
    tracker = ListTracker()
    run = chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, name="t", tracker=tracker, log_interval=2, **TINY)
    assert tracker.records == run.metrics  # one record for both: same keys, same values, same order
    assert {"loss", "grad_norm", "tokens_seen", "train_seconds", "lr"} <= set(tracker.records[1])
    assert tracker.config["model"]["n_layer"] == 1 and tracker.config["dataset"]["dir"] == str(dataset_dir)
    assert [(key, step) for key, _, _, step in tracker.images] == [("loss_curve", 6), ("attention", 6)]
    assert all(size > 1000 for _, size, _, _ in tracker.images)
    assert "1 layer x 2 heads" in tracker.images[1][2]  # the label `chargpt attention` writes
    assert tracker.versions[-1] == ("model", ["ckpt.pt", "config.json", "summary.json"],
                                    ["latest", "step-6"] if len(tracker.versions) == 2 else ["latest", "best", "step-6"])
    assert tracker.summary == run.summary


def test_train_refuses_a_keyword_it_does_not_use_naming_those_it_takes(dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"unexpected keyword 'data_dir' \(did you mean data\?\); it takes "
                                          r"preset, data, resume, init_from, config, runs_dir, name, tracker"):
        chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, data_dir=str(dataset_dir), **TINY)
    with pytest.raises(ConfigError, match="'vocab_size'"):  # set from the dataset: a keyword would be ignored
        chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, vocab_size=10, **TINY)
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'; choose one of wandb, tensorboard"):
        chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, tracker="mlflow", **TINY)
    with pytest.raises(ConfigError, match="or an object with the methods start, log, image, artifact and finish"):
        chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, tracker=object(), **TINY)
    with pytest.raises(ConfigError, match="--preset names a new model"):
        chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, resume=tmp_path, **TINY)
    with pytest.raises(ConfigError, match="--init-from keeps the one of the run it starts from; drop --preset"):
        chargpt.train("bigram", dataset_dir, runs_dir=tmp_path, init_from=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []  # refused before any run directory was made


def test_train_reads_a_config_file_and_keywords_override_it_as_flags_do(dataset_dir, tmp_path):
    (tmp_path / "c.toml").write_text('preset = "bigram"\neval_iters = 1\n[train]\nmax_steps = 50\n')
    run = chargpt.train(data=dataset_dir, config=tmp_path / "c.toml", runs_dir=tmp_path, name="c", max_steps=4,
                        eval_interval=2, sample_tokens=0, device="cpu", verbose=False)
    assert run.summary["preset"] == "bigram" and run.config.model.model == "bigram"
    assert run.config.train.eval_iters == 1 and run.summary["steps"] == 4


def test_verbose_false_prints_nothing(dataset_dir, tmp_path, capfd):
    run = chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, name="q", **TINY)
    assert capfd.readouterr() == ("", "")
    assert run.summary["steps"] == 6


def curve(run_dir) -> list[tuple]:
    """The run's losses by step: what a resumed run must continue exactly."""
    return [(r["step"], r.get("loss"), r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run_dir)]


def test_resume_from_python_continues_the_same_loss_curve_as_the_cli(dataset_dir, tmp_path):
    from conftest import TINY_GPT

    steps = ["--max-steps", "8", "--eval-interval", "4", "--log-interval", "2", "--threads", "1", "--device", "cpu"]
    run_main("train", "--data", dataset_dir, *TINY_GPT, *steps, "--name", "c", cwd=tmp_path, check=True)
    run_main("train", "--resume", "runs/c", "--max-steps", "16", cwd=tmp_path, check=True)

    fields = dict(n_layer=1, n_embd=32, n_head=2, block_size=16, batch_size=4, eval_iters=2, sample_tokens=20,
                  compile=False, max_steps=8, eval_interval=4, log_interval=2, threads=1, device="cpu", verbose=False)
    chargpt.train("cpu", dataset_dir, runs_dir=tmp_path / "py", name="p", **fields)
    run = chargpt.train(resume=tmp_path / "py/p", max_steps=16, verbose=False)
    assert run.path == tmp_path / "py/p" and run.summary["steps"] == 16
    assert curve(run.path) == curve(tmp_path / "runs/c") and curve(run.path)[-1][0] == 16
    assert run.summary["val_loss_full"] == json.loads((tmp_path / "runs/c/summary.json").read_text())["val_loss_full"]


def test_init_from_in_python_fine_tunes_a_runs_weights_on_the_data_given(trained, dataset_dir, tmp_path):
    run = chargpt.train(init_from=trained.path, data=dataset_dir, runs_dir=tmp_path, name="ft", max_steps=6,
                        eval_interval=3, verbose=False)
    origin = json.loads((run.path / "config.json").read_text())["init_from"]
    assert origin["ckpt"] == str((trained.path / "ckpt.pt").resolve()) and origin["step"] == 20
    assert run.summary["init_from"]["step"] == 20 and run.config.model.n_embd == 16
    # it starts from the trained weights: its first estimate is the source's last (same batches, same weights)
    start = [r for r in run.metrics if "val_loss" in r][0]
    assert start["step"] == 0 and start["val_loss"] == [r for r in trained.metrics if "val_loss" in r][-1]["val_loss"]
    with pytest.raises(ConfigError, match="--init-from needs --data"):
        chargpt.train(init_from=trained.path, verbose=False)


def test_prepare_never_takes_a_mistyped_path_for_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("nonexistent_file.txt", "data/typo.txt", tmp_path / "missing.txt"):
        with pytest.raises(DataError, match=r"does not exist; pass a text file, a known corpus .* prepare\(text=\.\.\.\)"):
            chargpt.prepare(source)
    assert not (tmp_path / "data").exists()
    (tmp_path / "a.txt").write_text("hello there\n" * 50)
    assert chargpt.prepare("a.txt").tokenizer.vocab_size == chargpt.prepare(text="hello there\n" * 50).tokenizer.vocab_size
    with pytest.raises(DataError, match="pass one of them"):
        chargpt.prepare("a.txt", text="hello")
    with pytest.raises(DataError, match="pass one of them"):
        chargpt.prepare()


def test_a_damaged_summary_is_one_clear_error_and_the_run_still_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = chargpt.prepare(text=corpus(string.ascii_lowercase + " "), out="data/d")
    run = chargpt.train("cpu", ds, name="r", **TINY)
    for damage in (b'{"steps": 6', b"[1, 2]", b"\xff\xfe", b"[" * 100_000):
        (run.path / "summary.json").write_bytes(damage)
        with pytest.raises(CheckpointError, match="summary.json"):
            chargpt.load(run.path).summary
    assert chargpt.load(run.path).metrics == run.metrics


def test_compare_refuses_no_runs_or_a_path_that_is_no_run_instead_of_an_empty_figure(tmp_path):
    with pytest.raises(ConfigError, match="at least one run"):
        chargpt.compare([])
    with pytest.raises(CheckpointError, match="nope is not a run directory"):
        chargpt.compare([tmp_path / "nope"])


def test_fine_tuning_on_text_that_shares_no_character_with_the_run_says_so(trained, tmp_path, capfd):
    greek = chargpt.prepare(text=corpus("αβγδεζηθικλμν"), out=tmp_path / "greek")
    chargpt.train(init_from=trained.path, data=greek, runs_dir=tmp_path, name="ft", max_steps=2, eval_interval=2,
                  eval_iters=1, sample_tokens=0)
    err = capfd.readouterr().err
    assert "knows none of this dataset's 13 characters" in err and "starts fresh" in err, err


# ------------------------------------------------------------------- arguments by the rules of the flags
BAD_ARGUMENTS = {
    "generate-prompt-int": (lambda run, tmp: run.generate(5), "prompt must be a string, got 5"),
    "generate-more-prompts-than-sampled-together": (lambda run, tmp: run.generate(["a"] * (10 ** 6 + 1)),
                                                    "the number of prompts (sampled together) must be in [0, 10^6]"),
    "generate-prompt-bytes": (lambda run, tmp: run.generate(b"ab"), "prompt must be a string, got b'ab'"),
    "stream-prompt-int": (lambda run, tmp: run.stream(5), "prompt must be a string"),
    "loss-none": (lambda run, tmp: run.loss(None), "text must be a string, got None"),
    "attention-prompt-int": (lambda run, tmp: run.attention(5), "prompt must be a string"),
    "generate-max-new-tokens-1e400": (lambda run, tmp: run.generate("a", max_new_tokens=10 ** 400),
                                      "max_new_tokens must be in [0, 10^9], got an integer of 401 digits"),
    "generate-seed-1e5000": (lambda run, tmp: run.generate("a", seed=10 ** 5000), "seed must be in [0, 2^64)"),
    "generate-top-k-1e400": (lambda run, tmp: run.generate("a", top_k=-10 ** 400), "top_k must be in"),
    "train-device-int": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", device=5),
                         "device must be a string, got 5"),
    "train-device-none": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", device=None),
                          "device must be a string, got None"),
    "train-name-int": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", name=5), "name must be a string"),
    "train-name-newline": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", name="a\nb"),
                           "name must be a plain run name"),
    "plot-path-int": (lambda run, tmp: run.plot(5), "path must be a path (a string or a pathlib.Path), got 5"),
    "compare-path-int": (lambda run, tmp: chargpt.compare([run], path=5), "path must be a path"),
    "run-path-int": (lambda run, tmp: chargpt.Run(5), "path must be a path (a string or a pathlib.Path), got 5"),
    "artifact-name-int": (lambda run, tmp: chargpt.load_artifact(5), "name must be a string, got 5"),
    "train-runs-dir-int": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", runs_dir=5), "runs_dir must be a path"),
    "train-preset-list": (lambda run, tmp: chargpt.train(["cpu"], tmp / "nowhere"), "preset must be a string"),
    "train-n-layer-1e400": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", n_layer=10 ** 400),
                            "--n-layer must be in [1, 1024], got an integer of 401 digits"),
    "train-lr-1e400": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", lr=10 ** 400),
                       "--lr must be in (0, 100], got an integer of 401 digits"),
    "train-time-budget-1e308": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", time_budget=1e308),
                                "--time-budget must be in [0, 31536000]"),
    "train-time-budget-text": (lambda run, tmp: chargpt.train("cpu", tmp / "nowhere", time_budget="9" * 400 + "h"),
                               "--time-budget must be in [0, 31536000], got inf"),
    "prepare-val-fraction-text": (lambda run, tmp: chargpt.prepare(text="ab" * 50, out=tmp / "ds", val_fraction="0.1"),
                                  "--val-fraction must be a number, got '0.1'"),
    "prepare-val-fraction-1e400": (lambda run, tmp: chargpt.prepare(text="ab" * 50, out=tmp / "ds",
                                                                    val_fraction=10 ** 400),
                                   "--val-fraction must be in"),
    "prepare-source-int": (lambda run, tmp: chargpt.prepare(5, tmp / "ds"), "source must be a path"),
    "load-device-int": (lambda run, tmp: chargpt.load(run.path, device=5), "device must be a string"),
    "load-device-index-beyond-2-63": (lambda run, tmp: chargpt.load(run.path, device="cuda:99999999999999999999"),
                                      "device cuda:99999999999999999999: "),
    "load-device-index-beyond-2-31": (lambda run, tmp: chargpt.load(run.path, device="cuda:2147483648"),
                                      "device cuda:2147483648: "),
    "load-device-non-ascii-digit": (lambda run, tmp: chargpt.load(run.path, device="cuda:\u0663"),
                                    "device must be auto, cpu, mps, cuda or cuda:N, got 'cuda:\u0663'"),
    "load-path-none": (lambda run, tmp: chargpt.load(None),
                       "path must be a path (a string or a pathlib.Path), got None"),
    "load-dataset-none": (lambda run, tmp: chargpt.load_dataset(None),
                          "path must be a path (a string or a pathlib.Path), got None"),
    "load-a-file-of-the-run-that-is-no-checkpoint": (lambda run, tmp: chargpt.load(run.path / "metrics.jsonl"),
                                                     "metrics.jsonl': a file but not a chargpt checkpoint"),
    "prepare-text-lone-surrogate": (lambda run, tmp: chargpt.prepare(text="ab\ud800cd" * 100, out=tmp / "ds"),
                                    "text= holds a lone surrogate '\\ud800' at character 2"),
    **{f"{name}-unknown-keyword": (call, f"{name}() got an unexpected keyword 'foo'; it takes {takes}")
       for name, call, takes in (
        ("load", lambda run, tmp: chargpt.load(run.path, foo=1), "path, device"),
        ("Run.generate", lambda run, tmp: run.generate("a", foo=1), "prompt, max_new_tokens, temperature, top_k"),
        ("Run.stream", lambda run, tmp: run.stream("a", foo=1), "prompt, max_new_tokens, temperature, top_k, top_p"),
        ("Run.attention", lambda run, tmp: run.attention("a", foo=1), "prompt, path"),
        ("Run.loss", lambda run, tmp: run.loss("abc", foo=1), "text"),
        ("Run.plot", lambda run, tmp: run.plot(foo=1), "path"))},
    "generate-a-mistyped-keyword": (lambda run, tmp: run.generate("a", max_tokens=3),
                                    "unexpected keyword 'max_tokens' (did you mean max_new_tokens?)"),
    "compare-a-path": (lambda run, tmp: chargpt.compare(str(run.path)), "compare() takes a list of runs"),
}


@pytest.mark.parametrize("name", BAD_ARGUMENTS)
def test_an_argument_the_cli_would_refuse_is_a_chargpt_error_before_any_work(trained, tmp_path, name):
    call, message = BAD_ARGUMENTS[name]
    with pytest.raises(ChargptError) as e:
        call(trained, tmp_path)
    said = str(e.value)
    assert message in said and "\n" not in said and len(said) < 250, said
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_load_on_a_device_that_is_not_here_is_refused_at_load_as_the_cli_refuses_it(trained):
    """The library took device="cuda" and failed at the first generate with torch's AssertionError ("Torch not
    compiled with CUDA enabled"); it is checked by `--device`'s rules, at load."""
    with pytest.raises(ConfigError, match="^device cuda: CUDA is not available on this machine; use device cpu or "
                                          "auto$"):
        chargpt.load(trained.path, device="cuda")
    with pytest.raises(ConfigError, match="^device cuda: CUDA is not available"):
        chargpt.Run(trained.path, device="cuda")


def test_load_refuses_a_plain_file_that_is_no_run_nor_checkpoint_in_one_line(tmp_path, monkeypatch):
    """It returned Run('.') and failed only when the model was first used."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.txt").write_text("my notes\n")
    with pytest.raises(CheckpointError, match="^no run 'user.txt': a file but not a chargpt checkpoint"):
        chargpt.load("user.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["user.txt"]


def test_a_prompt_of_none_starts_from_a_newline_in_generate_and_stream_alike(trained):
    kw = dict(max_new_tokens=20, seed=3)
    assert trained.generate(None, **kw) == trained.generate("", **kw) == "".join(trained.stream(None, **kw))



# Parameters of the library that no flag of the same command has, and why (everything else is the flag's name).
LIBRARY_ONLY = {
    "prepare": {"source": "--input or --dataset: one argument takes a file or a corpus name",
                "name": "the CLI names a dataset after its file", "text": "text held in Python has no file"},
    "train": {"verbose": "the CLI's output is its terminal"},
    "sweep": {"name": "the positional NAME", "verbose": "the CLI's output is its terminal"},
    "runs": {"runs": "the positional RUN names of --plot", "path": "the positional file the figure goes to (--out)"},
}


@pytest.mark.parametrize("command, function", [("prepare", chargpt.prepare), ("train", chargpt.train),
                                               ("sweep", chargpt.sweep), ("runs", chargpt.compare)])
def test_every_option_of_the_library_has_the_name_of_the_clis_flag(command, function):
    import inspect

    from chargpt.cli import build_parser
    from chargpt.config import config_fields

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    flags = {s for a in commands[command]._actions for s in a.option_strings}
    for p in inspect.signature(function).parameters.values():
        if p.kind is p.VAR_KEYWORD or p.name in LIBRARY_ONLY[command]:
            continue
        assert "--" + p.name.replace("_", "-") in flags, f"{function.__name__}({p.name}=) has no --{p.name} flag"
    if command == "train":  # any config field is a keyword of train(), and a flag of `chargpt train`
        assert {"--" + f.name.replace("_", "-") for _, f in config_fields()} <= flags


def test_an_option_renamed_since_the_last_release_still_works_with_a_one_line_notice(tmp_path, dataset_dir):
    from chargpt.schema import RENAMED
    from conftest import run_cli

    # the CLI's old flags: `runs --out-dir`, `serve --runs` (refused here only for the --ckpt it is given with)
    listed = run_cli("runs", "--out-dir", tmp_path)
    assert listed.returncode == 0 and listed.stdout == f"no runs under {tmp_path}\n"
    assert listed.stderr == "note: --out-dir is now --runs-dir; the old name still works in this release and will " \
                            "be removed in the next\n"
    served = run_cli("serve", "--runs", tmp_path, "--ckpt", "x")
    assert served.returncode == 2 and "--runs is now --runs-dir" in served.stderr.splitlines()[0]
    assert "not allowed with argument --runs" in served.stderr
    # the library's old keywords: the same work, and a FutureWarning naming the new one
    with pytest.warns(FutureWarning, match="^out_dir is now runs_dir; the old name still works"):
        run = chargpt.train("cpu", dataset_dir, out_dir=tmp_path / "runs", name="old", **TINY)
    assert run.path == tmp_path / "runs" / "old"
    with pytest.warns(FutureWarning, match="^all_datasets is now all"):
        chargpt.compare([run], all_datasets=True)
    with pytest.warns(FutureWarning, match="^dtype is now token_dtype"):
        assert chargpt.prepare(text="abcab" * 100, out=tmp_path / "d", dtype="int32").train.dtype == torch.int32
    with pytest.raises(ConfigError, match="unexpected keyword 'datasets'"):
        chargpt.compare([run], datasets=True)
    assert set(RENAMED) == {"--out-dir", "--runs", "out_dir", "all_datasets", "dtype"}  # each tried above


def test_text_given_in_python_is_recorded_as_such_with_its_hash_not_as_a_deleted_file(tmp_path):
    import hashlib

    text = "to be or not to be " * 50
    ds = chargpt.prepare(text=text, out=tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert meta["source"] == f"text given in Python (prepare(text=...), sha256 {digest})"
    assert meta["source_sha256"] == digest and ds.meta["source"] == meta["source"]
