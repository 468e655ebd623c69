"""The 20-iteration logistic fit on 10M rows in Parquet: Quiver on a local cluster of executors
beside Spark MLlib local[2] on the same files, in one invocation.

    cargo build --release --bin quiver
    pip install pyarrow numpy pyspark          # pyspark needs a Java 17 runtime
    python3 scripts/bench_cluster_spark.py [--quiver target/release/quiver] [--rows 10000000]
        [--features 20] [--files 8] [--executors 2] [--runs 2] [--no-auth] [--skip-spark]

The rows are `scripts/bench_sql.py`'s (standard-normal f0 … f{d-1}, a 0/1 `label` logistic in a
fixed linear score), in `files` Parquet files. Quiver: `quiver cluster up --executors N` (with its
auth token unless `--no-auth`), then one `quiver sql --cluster … -e` command per run, timed whole
(process start, CREATE EXTERNAL TABLE, CREATE MODEL logistic_reg with l2_reg 0.01, at most 20
iterations and no tolerance stop, the model saved). The first run reads the Parquet on the
executors; a later run finds the prepared partitions in the executors' cache (same files, same
query), so both are reported. The same statement embedded (no cluster) is timed beside it.
Spark: a local[2] session reading the same files, VectorAssembler, LogisticRegression(maxIter
20, regParam 0.01, tol 0), timed from the read to the fitted model; then the same fit on the
assembled rows cached and counted beforehand (Spark's persist), timed alone. Both optimisers
still stop before 20 iterations once they can make no progress: the iterations each ran are
printed.
"""

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sql import local_cluster, make_files  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="runs of each Quiver statement")
    ap.add_argument("--threads", type=int, default=2, help="Spark local[threads]")
    ap.add_argument("--no-auth", action="store_true",
                    help="start the cluster without a token (the scheduler pushes tasks)")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--data", default=None,
                    help="a directory to keep the Parquet files in between invocations")
    a = ap.parse_args()

    work = tempfile.mkdtemp()
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    data = a.data or os.path.join(work, "rows")
    if not (os.path.isdir(data) and len(os.listdir(data)) == a.files):
        os.makedirs(data, exist_ok=True)
        t = time.perf_counter()
        make_files(data, a.rows, a.features, a.files)
        print(f"wrote {a.rows} rows in {a.files} files in {time.perf_counter() - t:.1f} s",
              flush=True)
    data = os.path.abspath(data)

    cluster = local_cluster(a.quiver, a.executors, work, [os.path.dirname(data), work],
                            a.no_auth)

    cols = ", ".join(f"f{j}" for j in range(a.features))
    sql = (f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{data}/'; "
           f"CREATE OR REPLACE MODEL lr OPTIONS (model_type = 'logistic_reg', "
           f"input_label_cols = ['label'], l2_reg = 0.01, max_iterations = 20, "
           f"min_rel_progress = 0, data_split_method = 'no_split') AS SELECT {cols}, label FROM t")
    models = os.path.join(work, "models")

    def quiver(extra):
        args = [a.quiver, "--models", models, "sql", *extra, "-e", sql]
        t = time.perf_counter()
        run = subprocess.run(args, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"quiver sql failed:\n{run.stdout}\n{run.stderr}")
        return time.perf_counter() - t, run.stdout

    rows = []
    first, out = quiver(cluster)
    iterations = next((line.split()[5] for line in out.splitlines()
                       if line.strip().startswith("lr ")), "?")
    later = [quiver(cluster)[0] for _ in range(max(a.runs - 1, 0))]
    embedded = [quiver([])[0] for _ in range(max(a.runs, 1))]
    where = f"{a.executors} executors, {'no token (push)' if a.no_auth else 'token (executors poll)'}"
    rows.append((f"quiver, cluster of {where}, first run (reads the Parquet)", first))
    if later:
        rows.append((f"quiver, cluster of {where}, executor cache warm", statistics.median(later)))
    rows.append(("quiver, embedded (one process)", statistics.median(embedded)))

    spark_read = spark_cached = None
    if not a.skip_spark:
        spark_read, spark_cached, spark_iters = spark(data, a.features, a.threads)
        rows.append((f"Spark local[{a.threads}]: read + assemble + fit ({spark_iters} it.)",
                     spark_read))
        rows.append((f"Spark local[{a.threads}]: fit on a cached, counted DataFrame",
                     spark_cached))

    print(f"\n{a.rows} rows × {a.features} features in {a.files} Parquet files; logistic "
          f"regression, l2 0.01, 20 iterations (Quiver ran {iterations}); seconds, whole "
          f"command for Quiver")
    for name, s in rows:
        print(f"  {name:66} {s:8.2f}")
    if spark_read:
        print(f"  Spark (read + fit) / Quiver cluster first run: {spark_read / first:.1f}×")
        if later:
            print(f"  Spark cached fit / Quiver cluster, cache warm: "
                  f"{spark_cached / statistics.median(later):.1f}×")


def spark(data, features, threads):
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master(f"local[{threads}]")
               .config("spark.driver.memory", "8g")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", str(threads))
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    assembler = VectorAssembler(inputCols=[f"f{j}" for j in range(features)],
                                outputCol="features")
    lr = LogisticRegression(maxIter=20, regParam=0.01, tol=0.0, featuresCol="features",
                            labelCol="label")
    t = time.perf_counter()
    model = lr.fit(assembler.transform(session.read.parquet(data)))
    read = time.perf_counter() - t
    iters = model.summary.totalIterations
    cached = assembler.transform(session.read.parquet(data)).select("features", "label").cache()
    cached.count()
    t = time.perf_counter()
    lr.fit(cached)
    fit = time.perf_counter() - t
    session.stop()
    return read, fit, iters


if __name__ == "__main__":
    main()
