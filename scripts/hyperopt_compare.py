"""Times hyperopt on the work `quiver bench search` measures, on the same machine:

1. 1000 trials of a trivial objective (per-trial overhead), with hyperopt's Trials and, with
   --spark, SparkTrials(parallelism = 2) on a local Spark;
2. a 64-trial TPE search of elastic-net logistic regression on data/breast_cancer.parquet
   (scikit-learn's saga solver, 75/25 split, held-out log loss), C = 1 / (reg_param · n_train)
   over reg_param in loguniform(1e-6, 100) and l1_ratio in uniform(0, 1).

    pip install hyperopt scikit-learn pyarrow numpy [pyspark pandas]
    python3 scripts/hyperopt_compare.py [--spark] [--trials 1000]
"""

import argparse
import math
import os
import time
import warnings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--spark", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import pyarrow.parquet as pq
    from hyperopt import STATUS_OK, Trials, fmin, hp, tpe
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", FutureWarning)
    space = {"x": hp.uniform("x", -5, 5), "y": hp.uniform("y", -5, 5)}

    def trivial(p):
        return p["x"] ** 2 + p["y"] ** 2

    def timed(trials, n, algo=tpe.suggest, fn=trivial, sp=space):
        t = time.perf_counter()
        fmin(fn, sp, algo=algo, max_evals=n, trials=trials, rstate=np.random.default_rng(1), show_progressbar=False)
        return (time.perf_counter() - t) * 1e3

    from hyperopt import rand

    ms = timed(Trials(), a.trials, algo=rand.suggest)
    print(f"  hyperopt Trials, trivial objective, random, {a.trials} trials: {ms:.1f} ms, {ms / a.trials:.3f} ms per trial")
    ms = timed(Trials(), a.trials)
    print(f"  hyperopt Trials, trivial objective, TPE, {a.trials} trials: {ms:.1f} ms, {ms / a.trials:.3f} ms per trial (includes TPE proposals)")

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
    t = pq.read_table(os.path.join(root, "breast_cancer.parquet"))
    X = np.column_stack([t.column(f"f{j}").to_numpy() for j in range(30)])
    y = t.column("label").to_numpy()
    rng = np.random.default_rng(7)
    test = rng.random(len(y)) < 0.25
    mu, sd = X[~test].mean(0), X[~test].std(0, ddof=1)
    Xtr, Xte, ytr, yte = (X[~test] - mu) / sd, (X[test] - mu) / sd, y[~test], y[test]
    lr_space = {"reg": hp.loguniform("reg", math.log(1e-6), math.log(100.0)), "l1": hp.uniform("l1", 0, 1)}

    def lr_objective(p):
        m = LogisticRegression(C=1.0 / (p["reg"] * len(ytr)), l1_ratio=p["l1"], solver="saga", max_iter=100)
        m.fit(Xtr, ytr)
        return {"loss": log_loss(yte, m.predict_proba(Xte)), "status": STATUS_OK}

    trials = Trials()
    ms = timed(trials, 64, fn=lr_objective, sp=lr_space)
    print(f"  hyperopt Trials, 64-trial TPE search, sklearn LogisticRegression (saga, elastic net): {ms:.1f} ms, best {min(trials.losses()):.5f}")
    if a.spark:
        from hyperopt import SparkTrials
        from pyspark.sql import SparkSession

        SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate().sparkContext.setLogLevel("ERROR")
        n = min(a.trials, 100)
        ms = timed(SparkTrials(parallelism=2), n)
        print(f"  hyperopt SparkTrials(parallelism=2), trivial objective, TPE, {n} trials: {ms:.1f} ms, {ms / n:.1f} ms per trial")
        trials = SparkTrials(parallelism=2)
        ms = timed(trials, 64, fn=lr_objective, sp=lr_space)
        print(f"  hyperopt SparkTrials(parallelism=2), 64-trial LR search: {ms:.1f} ms, best {min(trials.losses()):.5f}")


if __name__ == "__main__":
    main()
