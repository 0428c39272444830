"""The benchmarks' own set-up stays valid as chargpt's checks tighten (figures are not tested: they are timings)."""
from __future__ import annotations

import sys

from conftest import REPO, run_main

sys.path.insert(0, str(REPO / "benchmarks"))


def test_bench_serve_run_is_a_checkpoint_chargpt_samples_from(tmp_path):
    from bench_serve import make_run

    run = make_run(tmp_path)
    p = run_main("sample", "--ckpt", run, "--prompt", "ROMEO:", "--max-new-tokens", 20, "--seed", 1, check=True)
    assert p.stdout.startswith("ROMEO:") and len(p.stdout.rstrip("\n")) >= 20


def test_every_benchmark_script_imports_what_it_runs():
    # a benchmark is run by hand, rarely: a name it imports that moved or was renamed must fail here, not there
    import importlib

    for script in sorted((REPO / "benchmarks").glob("*.py")):
        importlib.import_module(script.stem)
