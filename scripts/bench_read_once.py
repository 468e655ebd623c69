"""CREATE MODEL with its training query read once (`quiver.training_cache`, the default) against
the query re-run by every pass (`quiver.training_cache=0`), same binary, same invocation,
alternating runs.

    cargo build --release --bin quiver
    pip install pyarrow numpy
    python3 scripts/bench_read_once.py [--quiver target/release/quiver] [--rows 1000000] [--runs 3]

The table is scripts/bench_preprocess.py's (8 numeric columns with nulls, 3 string columns,
a boolean, a 'yes' / 'no' label), as Parquet. Statements (each the whole `quiver sql`
command, process start included):
  - logistic_reg, automatic preprocessing, 20 iterations, no split;
  - logistic_reg with the default 20% held-out split (evaluation on the held-out rows);
  - the TRANSFORM of scripts/bench_transform.py (six analytic functions) + logistic_reg.
Reported: the median time of each setting and the ratio off / on.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_preprocess import make_table  # noqa: E402
from bench_transform import TRANSFORM  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    work = tempfile.mkdtemp()
    path = os.path.join(work, "analyst.parquet")
    make_table(path, a.rows)
    table = f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{path}'; "
    options = "model_type = 'logistic_reg', input_label_cols = ['label'], max_iterations = 20"
    statements = {
        "logistic_reg, no split": table
        + f"CREATE OR REPLACE MODEL m OPTIONS ({options}, data_split_method = 'no_split') AS SELECT * FROM t",
        "logistic_reg, 20% held out": table
        + f"CREATE OR REPLACE MODEL m OPTIONS ({options}) AS SELECT * FROM t",
        "TRANSFORM + logistic_reg": table
        + f"CREATE OR REPLACE MODEL m TRANSFORM ({TRANSFORM}) OPTIONS ({options}, data_split_method = 'no_split') AS SELECT * FROM t",
    }

    def run(sql, cache):
        args = [a.quiver, "--models", os.path.join(work, "models"),
                "--config", f"quiver.compute_threads={a.threads}"]
        if not cache:
            args += ["--config", "quiver.training_cache=0"]
        t = time.perf_counter()
        subprocess.run(args + ["sql", "-e", sql], capture_output=True, text=True, check=True)
        return time.perf_counter() - t

    print(f"rows {a.rows}, threads {a.threads}, {a.runs} runs each (median)")
    print(f"{'statement':<28} {'read per pass':>14} {'read once':>10} {'ratio':>7}")
    for name, sql in statements.items():
        off, on = [], []
        for _ in range(a.runs):
            off.append(run(sql, False))
            on.append(run(sql, True))
        m_off, m_on = statistics.median(off), statistics.median(on)
        print(f"{name:<28} {m_off:>12.2f} s {m_on:>8.2f} s {m_off / m_on:>6.2f}x")


if __name__ == "__main__":
    main()
