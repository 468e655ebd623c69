"""Per-row explanations of boosted trees: `ml_explain_predict` (TreeSHAP) beside XGBoost's
`pred_contribs` (its TreeSHAP) on the same table, in one invocation.

    cargo build --release --bin quiver
    pip install xgboost pyarrow numpy
    python3 scripts/bench_explain.py [--quiver target/release/quiver] [--rows 200000] [--threads 2]

It writes a seeded table as Parquet (10 numeric features, a 0/1 label from a nonlinear model of
them), trains boosted trees of the same shape in both (50 rounds, depth 6, 32 bins, no split),
and times:
  - Quiver: the whole `quiver sql` command that explains every row (process start, CREATE
    EXTERNAL TABLE, SELECT … FROM ml_explain_predict('m', 't', 3) aggregated);
  - the same command with `ml_predict` only (what explaining adds over predicting);
  - XGBoost: reading the same file (pyarrow) and `predict(pred_contribs=True)` on it.
Both check that every row's attributions sum to its margin minus the baseline.
"""

import argparse
import os
import subprocess
import tempfile
import time


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def make_table(path, rows, seed=11):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10))
    margin = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] - np.abs(x[:, 4])
    y = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    cols = {f"x{j}": x[:, j] for j in range(10)}
    cols["label"] = y
    pq.write_table(pa.table(cols), path, row_group_size=131072)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import xgboost as xgb

    work = tempfile.mkdtemp()
    path = os.path.join(work, "rows.parquet")
    make_table(path, a.rows)
    models = os.path.join(work, "models")
    features = ", ".join(f"x{j}" for j in range(10))

    def quiver(sql):
        return subprocess.run(
            [a.quiver, "--models", models, "--config",
             f"quiver.compute_threads={a.threads}", "sql", "-e",
             f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{path}'; {sql}"],
            capture_output=True, text=True, check=True,
        ).stdout

    quiver(
        "CREATE MODEL m OPTIONS (model_type = 'boosted_tree_classifier', "
        "input_label_cols = ['label'], data_split_method = 'no_split', max_iterations = 50, "
        "max_tree_depth = 6, max_bins = 32, early_stop = FALSE, learn_rate = 0.3) "
        f"AS SELECT {features}, label FROM t"
    )
    explained, explain_s = timed(lambda: quiver(
        "SELECT count(*) AS n, max(approximation_error) AS worst "
        "FROM ml_explain_predict('m', 't', 3)"
    ))
    _, predict_s = timed(lambda: quiver(
        f"SELECT count(*), sum(CAST(ml_predict('m', {features}) AS DOUBLE)) FROM t"
    ))

    t = pq.read_table(path)
    x = np.column_stack([t[f"x{j}"].to_numpy() for j in range(10)])
    y = t["label"].to_numpy()
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.3, "max_bin": 32,
         "tree_method": "hist", "nthread": a.threads},
        xgb.DMatrix(x, label=y), num_boost_round=50,
    )

    def xgb_explain():
        t = pq.read_table(path)
        x = np.column_stack([t[f"x{j}"].to_numpy() for j in range(10)])
        d = xgb.DMatrix(x, nthread=a.threads)
        contribs = booster.predict(d, pred_contribs=True)
        margin = booster.predict(d, output_margin=True)
        return float(np.max(np.abs(contribs.sum(axis=1) - margin)))

    xgb_error, xgb_s = timed(xgb_explain)
    print(f"rows {a.rows}, threads {a.threads}, 50 trees of depth 6")
    print(explained.strip())
    print(f"quiver sql ml_explain_predict (whole command)  {explain_s:8.2f} s")
    print(f"quiver sql ml_predict only (whole command)     {predict_s:8.2f} s")
    print(f"xgboost read + pred_contribs                   {xgb_s:8.2f} s   worst sum error {xgb_error:.2e}")
    print(f"xgboost / quiver explain                       {xgb_s / explain_s:8.2f}x")


if __name__ == "__main__":
    main()
