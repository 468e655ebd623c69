"""What an analyst runs: whole `quiver sql` statements on Parquet files beside scikit-learn on the
same files, in one invocation.

    cargo build --release --bin quiver
    pip install scikit-learn pyarrow numpy
    python3 scripts/bench_sql.py [--quiver target/release/quiver] [--rows 1000000]
        [--features 20] [--files 8] [--runs 3] [--threads 2] [--baseline OLD_QUIVER]
        [--cluster N [--no-auth] [--baseline-no-cache]] [--baseline-config KEY=VALUE ...]

The rows: `features` standard-normal columns f0 … f{d-1}, a 0/1 `label` (logistic in a fixed
linear score) and a numeric `target` (that score plus noise), in `files` Parquet files. Each
Quiver case is one `quiver sql -e` command (process start, CREATE EXTERNAL TABLE, the statement,
the model saved), timed whole; each scikit-learn case is its fit on rows already in memory, and
the Parquet read into NumPy is timed on its own. Statements:
  - logistic_reg, l2_reg 0.01, 20 iterations, no split  ~ LogisticRegression(C=1/(n·0.01)), lbfgs;
  - linear_reg, no split                                 ~ LinearRegression;
  - kmeans, 10 clusters, 20 iterations                   ~ KMeans(n_init=1, max_iter=20);
  - predict every row from Parquet (ml_predict, count)  ~ predict_proba on the loaded rows;
  - an 8-point grid over l2_reg with 20% held out (AUC) ~ 8 fits + roc_auc_score on a split.
Reported: the median of `runs` runs of each, and the ratio scikit-learn fit / Quiver statement.
Embedded, each statement is also set against what it cannot go below: the engine's work on data
already in memory (`quiver bench algorithms` on as many rows and features and as many
iterations as the statement's model ran: the fit, or the batch predict, or 8 fits for the grid;
k-means and the grid on the 80% they train on) plus one
scan of the files (`SELECT sum(f0 + … ) …` as a whole `quiver sql` command, process start
included): the `stmt / (engine + scan)` column (the goal is ≤ 1.5).
With `--baseline`, another `quiver` binary (an earlier build) runs the same statements in the
same invocation, interleaved, for a before/after column. With `--cluster N` every statement runs
on a local cluster of N executors the script starts (`quiver cluster up`, with a token unless
`--no-auth`) and stops; `--baseline-no-cache` then times the same binary with
`quiver.cluster.cache=false` beside it (the executors read the Parquet on every pass).
`--baseline-config KEY=VALUE` (repeatable) times the same binary with those settings beside it,
e.g. `quiver.io.mmap=false` (local Parquet read with system calls instead of memory maps).
"""

import argparse
import atexit
import os
import statistics
import subprocess
import tempfile
import time


def make_files(directory, rows, features, files):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    w = rng.normal(size=features) / np.sqrt(features)
    per = -(-rows // files)
    for i in range(files):
        n = min(per, rows - i * per)
        X = rng.normal(size=(n, features))
        score = X @ w
        label = (rng.random(n) < 1 / (1 + np.exp(-2 * score))).astype(np.float64)
        target = score + 0.1 * rng.normal(size=n)
        cols = {f"f{j}": X[:, j] for j in range(features)}
        cols["label"] = label
        cols["target"] = target
        pq.write_table(pa.table(cols), os.path.join(directory, f"part-{i}.parquet"))


def local_cluster(quiver, executors, work, data_roots, no_auth):
    """Starts `quiver cluster up` with `executors` executors in `work` (stopped when this script
    exits); returns the `quiver sql` arguments that reach it."""
    cluster_dir = os.path.join(work, "cluster")
    port = 50000 + os.getpid() % 10000
    up = [quiver, "cluster", "up", "--executors", str(executors), "--dir", cluster_dir,
          "--port", str(port)]
    for root in data_roots:
        up += ["--data-root", root]
    if no_auth:
        up.append("--no-auth")
    subprocess.run(up, check=True, capture_output=True)
    atexit.register(lambda: subprocess.run(
        [quiver, "cluster", "down", "--dir", cluster_dir], capture_output=True))
    args = ["--cluster", f"df://127.0.0.1:{port}"]
    if not no_auth:
        args += ["--auth-token-file", os.path.join(cluster_dir, "auth-token")]
    return args


def load(directory, features):
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(directory)
    X = np.column_stack([t.column(f"f{j}").to_numpy() for j in range(features)])
    return X, t.column("label").to_numpy(), t.column("target").to_numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    ap.add_argument("--baseline", default=None, help="an earlier quiver binary to time beside")
    ap.add_argument("--cluster", type=int, default=0, metavar="N",
                    help="run every statement on a local cluster of N executors that this "
                    "script starts (`quiver cluster up`, with its auth token) and stops")
    ap.add_argument("--no-auth", action="store_true",
                    help="with --cluster: start it without a token (the scheduler pushes tasks)")
    ap.add_argument("--baseline-no-cache", action="store_true",
                    help="with --cluster: the baseline is the same binary with "
                    "quiver.cluster.cache=false (the executors read the data on every pass)")
    ap.add_argument("--baseline-config", action="append", default=[], metavar="KEY=VALUE",
                    help="the baseline is the same binary with this setting (repeatable)")
    a = ap.parse_args()
    if a.baseline_no_cache:
        a.baseline_config.append("quiver.cluster.cache=false")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)

    work = tempfile.mkdtemp()
    data = os.path.join(work, "rows")
    os.mkdir(data)
    make_files(data, a.rows, a.features, a.files)
    cols = ", ".join(f"f{j}" for j in range(a.features))
    table = f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{data}/'; "
    n = a.rows
    statements = {
        "logistic regression": f"CREATE OR REPLACE MODEL lr OPTIONS (model_type = 'logistic_reg', "
        f"input_label_cols = ['label'], l2_reg = 0.01, max_iterations = 20, "
        f"data_split_method = 'no_split') AS SELECT {cols}, label FROM t",
        "linear regression": f"CREATE OR REPLACE MODEL lin OPTIONS (model_type = 'linear_reg', "
        f"input_label_cols = ['target'], data_split_method = 'no_split') "
        f"AS SELECT {cols}, target FROM t",
        "k-means k=10": f"CREATE OR REPLACE MODEL km OPTIONS (model_type = 'kmeans', "
        f"num_clusters = 10, max_iterations = 20) AS SELECT {cols} FROM t",
        "predict every row": f"SELECT count(*), sum(ml_predict('lr', {cols})) FROM t",
        "8-point grid, held-out AUC": f"CREATE OR REPLACE MODEL grid OPTIONS (model_type = "
        f"'logistic_reg', input_label_cols = ['label'], max_iterations = 20, num_trials = 8, "
        f"hparam_tuning_algorithm = 'grid', l2_reg = HPARAM_CANDIDATES([0.0001, 0.0003, 0.001, "
        f"0.003, 0.01, 0.03, 0.1, 0.3]), data_split_method = 'random', "
        f"data_split_eval_fraction = 0.2) AS SELECT {cols}, label FROM t",
    }
    models = os.path.join(work, "models")
    cluster_args = local_cluster(a.quiver, a.cluster, work, [work], a.no_auth) if a.cluster else []
    if a.baseline_config:
        a.baseline = a.quiver

    def quiver(sql, binary=None, output=False):
        args = [binary or a.quiver, "--models", models, "--config",
                f"quiver.compute_threads={a.threads}"]
        if binary and a.baseline_config:
            for setting in a.baseline_config:
                args += ["--config", setting]
        args += ["sql", *cluster_args, "-e", table + sql]
        t = time.perf_counter()
        run = subprocess.run(args, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"quiver sql failed:\n{run.stdout}\n{run.stderr}")
        return run.stdout if output else time.perf_counter() - t

    import warnings

    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import roc_auc_score

    warnings.simplefilter("ignore", ConvergenceWarning)
    t = time.perf_counter()
    X, y, target = load(data, a.features)
    read_s = time.perf_counter() - t

    def grid():
        rng = np.random.default_rng(0)
        hold = rng.random(len(y)) < 0.2
        for l2 in [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]:
            m = LogisticRegression(C=1 / (l2 * (~hold).sum()), max_iter=20)
            m.fit(X[~hold], y[~hold])
            roc_auc_score(y[hold], m.decision_function(X[hold]))

    lr = LogisticRegression(C=1 / (0.01 * n), max_iter=20).fit(X, y)
    sklearn = {
        "logistic regression": lambda: LogisticRegression(C=1 / (0.01 * n), max_iter=20).fit(X, y),
        "linear regression": lambda: LinearRegression().fit(X, target),
        "k-means k=10": lambda: KMeans(n_clusters=10, n_init=1, max_iter=20, tol=0.0,
                                       random_state=0).fit(X),
        "predict every row": lambda: lr.predict_proba(X),
        "8-point grid, held-out AUC": grid,
    }
    # The predict case reads the model the first case stores.
    quiver(statements["logistic regression"])

    where = (f"on a local cluster of {a.cluster} executors "
             f"({'no token: tasks pushed' if a.no_auth else 'with a token: executors poll'})"
             if a.cluster else "embedded")
    print(f"{a.rows} rows × {a.features} features in {a.files} Parquet files, {a.threads} "
          f"threads, median of {a.runs}, {where}; scikit-learn's Parquet read: {read_s:.2f} s")
    label = ("no cache s" if a.baseline_no_cache
             else "other cfg s" if a.baseline_config else "baseline s")
    base = f" {label:>11}" if a.baseline else ""
    reference = {} if a.cluster else engine_reference(a, quiver, cols, statements)
    if reference:
        print(f"one scan of the files (whole command): {reference.pop('scan'):.2f} s")
    ref_head = f" {'engine + scan s':>16} {'stmt / (engine + scan)':>23}" if reference else ""
    print(f"{'case':28}{base} {'quiver sql s':>13} {'sklearn fit s':>14} {'sklearn / quiver':>17}"
          f"{ref_head}")
    for name, sql in statements.items():
        if a.only and a.only not in name:
            continue
        q, s, b = [], [], []
        for _ in range(a.runs):
            if a.baseline:
                b.append(quiver(sql, a.baseline))
            q.append(quiver(sql))
            t = time.perf_counter()
            sklearn[name]()
            s.append(time.perf_counter() - t)
        qm, sm = statistics.median(q), statistics.median(s)
        before = f" {statistics.median(b):11.2f}" if b else ""
        ref = (f" {reference[name]:16.2f} {qm / reference[name]:22.2f}×"
               if name in reference else "")
        print(f"{name:28}{before} {qm:13.2f} {sm:14.2f} {sm / qm:16.1f}×{ref}", flush=True)


def engine_reference(a, quiver, cols, statements):
    """Per case: the engine's own work on data in memory (`quiver bench algorithms`, embedded
    rows, as many iterations as the statement's model ran) plus one scan of the files; and the
    scan alone under 'scan'."""
    import subprocess as sp

    total = " + ".join(c.strip() for c in cols.split(","))
    scan = statistics.median(quiver(f"SELECT sum({total}), sum(label) FROM t")
                             for _ in range(a.runs))

    def iterations(case, model):
        # The `iterations` column of the model's row in the statement's output.
        for line in quiver(statements[case], output=True).splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[0] == model and parts[5].isdigit():
                return int(parts[5])
        raise SystemExit(f"no iterations in the output of {case!r}")

    def algorithms(rows, iters):
        out = sp.run([a.quiver, "--config", f"quiver.compute_threads={a.threads}", "bench",
                      "algorithms", "--rows", str(rows), "--features", str(a.features),
                      "--iters", str(iters)], capture_output=True, text=True, check=True).stdout
        ms = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].endswith("-embedded"):
                ms[parts[0].rsplit("-", 3)[0]] = float(parts[1]) / 1e3
        return ms

    n, train = a.rows, int(a.rows * 0.8)
    logistic = algorithms(n, iterations("logistic regression", "lr"))
    kmeans = algorithms(train, iterations("k-means k=10", "km"))
    # Each trial of the grid taken to run as many iterations as the model it keeps.
    grid = algorithms(train, iterations("8-point grid, held-out AUC", "grid"))
    return {
        "scan": scan,
        "logistic regression": logistic["logreg"] + scan,
        "linear regression": logistic["linreg"] + scan,
        "k-means k=10": kmeans["kmeans-k10"] + scan,
        "predict every row": logistic["predict-logreg"] + scan,
        "8-point grid, held-out AUC": 8 * grid["logreg"] + scan,
    }

if __name__ == "__main__":
    main()
