"""Quiver's boosted trees and random forest beside LightGBM and XGBoost (`hist`) on the same
rows and threads, in one invocation: runs `quiver bench trees --export`, then fits LightGBM
and XGBoost on the exported rows (data already in memory: their fit only) and prints every
time with its ratio to LightGBM's.

    cargo build --release --bin quiver
    pip install lightgbm xgboost pyarrow numpy
    python3 scripts/bench_trees.py [--quiver target/release/quiver] [--rows 1000000] [--threads 2]

It also times what an analyst runs: the whole `quiver sql` statement that creates a boosted
model from the exported Parquet file (process start, scan, binning, fit, evaluation, store),
beside LightGBM reading the same file and fitting.

The settings are the same on every side: boosting 20 rounds, depth 5, 32 bins, learning rate
0.1, L2 1, least hessian per child 1, at least one row per leaf; the forest 20 trees of depth 8
on bootstrap samples with sqrt(d) features per node. AUCs are on the training rows.
"""

import argparse
import os
import subprocess
import tempfile
import time


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import lightgbm as lgb
    import numpy as np
    import pyarrow.parquet as pq
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    path = os.path.join(tempfile.mkdtemp(), "trees.parquet")
    run = subprocess.run(
        [a.quiver, "--config", f"quiver.compute_threads={a.threads}", "bench", "trees",
         "--rows", str(a.rows), "--export", path],
        capture_output=True, text=True, check=True,
    )
    print(run.stdout, end="")
    quiver = {}
    for line in run.stdout.splitlines():
        line = line.strip()
        for key in ("gbt fit", "gbt predict", "forest fit", "summary pass"):
            if line.startswith(key):
                rest = line[len(key):]
                quiver[key] = float((rest.split(")", 1)[1] if "(" in rest else rest).split()[0])

    t = pq.read_table(path)
    feats = t.column("features").combine_chunks()
    d = feats.type.list_size
    X = np.asarray(feats.flatten()).reshape(-1, d)
    y = t.column("class").to_numpy()

    rows = []
    params = dict(objective="binary", learning_rate=0.1, num_leaves=32, max_depth=5, max_bin=32,
                  lambda_l2=1.0, min_sum_hessian_in_leaf=1.0, min_data_in_leaf=1,
                  num_threads=a.threads, verbose=-1)
    ds = lgb.Dataset(X, y, params={"max_bin": 32, "verbose": -1})
    m, ms = timed(lambda: lgb.train(params, ds, num_boost_round=20))
    rows.append(("lightgbm gbdt fit", ms, roc_auc_score(y, m.predict(X))))
    _, pms = timed(lambda: m.predict(X, num_threads=a.threads))
    rows.append(("lightgbm predict", pms, None))
    rf = dict(params, boosting="rf", num_leaves=256, max_depth=8, bagging_fraction=0.632,
              bagging_freq=1, feature_fraction_bynode=0.25)
    ds = lgb.Dataset(X, y, params={"max_bin": 32, "verbose": -1})
    m, ms = timed(lambda: lgb.train(rf, ds, num_boost_round=20))
    rows.append(("lightgbm rf fit", ms, roc_auc_score(y, m.predict(X))))

    dm = xgb.DMatrix(X, label=y, nthread=a.threads)
    xp = dict(objective="binary:logistic", tree_method="hist", max_depth=5, max_bin=32, eta=0.1,
              reg_lambda=1.0, min_child_weight=1.0, nthread=a.threads)
    m, ms = timed(lambda: xgb.train(xp, dm, num_boost_round=20))
    rows.append(("xgboost hist fit", ms, roc_auc_score(y, m.predict(dm))))
    xr = dict(xp, max_depth=8, eta=1.0, subsample=0.632, colsample_bynode=0.25,
              num_parallel_tree=20)
    m, ms = timed(lambda: xgb.train(xr, dm, num_boost_round=1))
    rows.append(("xgboost rf fit", ms, roc_auc_score(y, m.predict(dm))))

    # The whole SQL statement against LightGBM's Parquet load + fit, same file and threads.
    store = tempfile.mkdtemp()
    # CREATE MODEL trains on numeric columns: the vector's elements as columns.
    cols = ", ".join(f"vector_element(features, {j + 1}) AS f{j}" for j in range(d))
    sql = (
        f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{path}'; "
        "CREATE MODEL m OPTIONS (model_type = 'boosted_tree_classifier', "
        "input_label_cols = ['class'], data_split_method = 'no_split', max_iterations = 20, "
        "max_tree_depth = 5, learn_rate = 0.1, max_bins = 32, early_stop = FALSE) "
        f"AS SELECT {cols}, class FROM t"
    )
    _, sql_ms = timed(lambda: subprocess.run(
        [a.quiver, "--config", f"quiver.compute_threads={a.threads}", "--models", store,
         "sql", "-e", sql], capture_output=True, text=True, check=True))

    def lgb_from_file():
        t = pq.read_table(path)
        f = t.column("features").combine_chunks()
        X = np.asarray(f.flatten()).reshape(-1, f.type.list_size)
        return lgb.train(params, lgb.Dataset(X, t.column("class").to_numpy(),
                                             params={"max_bin": 32, "verbose": -1}),
                         num_boost_round=20)
    _, lgb_file_ms = timed(lgb_from_file)
    print(f"\nwhole statement from Parquet, {a.threads} threads")
    print(f"  quiver sql CREATE MODEL (boosted)   {sql_ms:>10.1f} ms  {sql_ms / lgb_file_ms:.2f}x")
    print(f"  LightGBM Parquet load + fit          {lgb_file_ms:>10.1f} ms  1.00x")

    print(f"\nsame rows, {a.threads} threads (LightGBM/XGBoost: fit only, data in memory)")
    lgb_fit = rows[0][1]
    lgb_rf = rows[2][1]
    print(f"  {'case':<24} {'ms':>10} {'x LightGBM':>11}  AUC")
    for name, ms, auc in rows:
        base = lgb_rf if "rf" in name else rows[1][1] if "predict" in name else lgb_fit
        print(f"  {name:<24} {ms:>10.1f} {ms / base:>10.2f}x  {'' if auc is None else f'{auc:.4f}'}")
    for key, base in (("gbt fit", lgb_fit), ("forest fit", lgb_rf), ("gbt predict", rows[1][1])):
        if key in quiver:
            print(f"  {'quiver ' + key:<24} {quiver[key]:>10.1f} {quiver[key] / base:>10.2f}x")


if __name__ == "__main__":
    main()
