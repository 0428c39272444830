"""`make bench`: run every benchmark and print one table (figure, value, target, machine).

    python benchmarks/run_all.py [--only NAME ...] [--skip-long]

`--skip-long` leaves out the time-budgeted quality runs: bench_quality (3 x 150, 300, 600 s and 3 x 150 s in
float32, about an hour), bench_budget (the budget table: W, then 3 seeds of W, 3W and W/5, about 25 minutes
where W is 100 s) and bench_sweep (two 16-trial sweeps and a 24-trial one at B = W, about 75 minutes).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import commit, machine, print_table  # noqa: E402

BENCHES = ["bench_prepare", "bench_train", "bench_eval", "bench_sampling", "bench_batchstep", "bench_serve",
           "bench_quality", "bench_budget", "bench_sweep"]
LONG = {"bench_quality", "bench_budget", "bench_sweep"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="run only these (e.g. bench_train)")
    ap.add_argument("--skip-long", action="store_true", help="skip the time-budgeted quality runs")
    args = ap.parse_args()
    names = args.only or [b for b in BENCHES if not (args.skip_long and b in LONG)]
    rows = []
    for name in names:
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(name)
        for row in module.main():
            rows.append({"figure": row["figure"], "value": row["value"], "target": row.get("target", "")})
        print(f"  {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"\nchargpt benchmarks, {datetime.date.today()}, commit {commit()}")
    print(f"machine: {machine()}")
    print_table(rows)


if __name__ == "__main__":
    main()
