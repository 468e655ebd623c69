"""Times scikit-learn and Spark MLlib (local mode) on the rows `quiver bench algorithms` uses,
for a side-by-side comparison with Quiver's numbers on the same machine.

    cargo run --release --bin quiver -- bench algorithms --export /tmp/algos.parquet
    pip install scikit-learn pyarrow numpy pandas pyspark   # pyspark needs a Java 17 runtime
    python3 scripts/bench_compare.py /tmp/algos.parquet [--cores 2] [--iters 20] [--skip-spark]

The same work as the Quiver cases: LinearRegression (exact least squares), LogisticRegression
(no regularisation, `iters` iterations, tol 0), KMeans (k = 10, one k-means++ / k-means||
init, `iters` Lloyd passes, tol 0) and a batch predict of every row with each model. Data is
loaded and cached before any timer starts (Spark: a cached, counted DataFrame of vectors).
scikit-learn gets n_jobs = cores where it takes one, and its BLAS/OpenMP pools are limited to
`cores` threads; Spark runs as local[cores].
"""

import argparse
import os
import time


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, (time.perf_counter() - t) * 1e3


def load(path):
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    feats = t.column("features").combine_chunks()
    d = feats.type.list_size
    X = np.asarray(feats.flatten()).reshape(-1, d)
    return X, t.column("label").to_numpy(), t.column("class").to_numpy()


def sklearn_cases(X, y, c, cores, iters, k):
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LinearRegression, LogisticRegression

    warnings.simplefilter("ignore", ConvergenceWarning)
    rows = []
    m, ms = timed(lambda: LinearRegression(n_jobs=cores).fit(X, y))
    rows.append(("linreg fit", ms, f"r2 {m.score(X[:100000], y[:100000]):.4f}"))
    m, ms = timed(lambda: LogisticRegression(C=1e12, max_iter=iters, tol=0.0).fit(X, c))
    rows.append(("logreg fit", ms, f"{m.n_iter_[0]} iterations"))
    _, pms = timed(lambda: m.predict(X))
    rows.append(("logreg predict", pms, ""))
    km, ms = timed(
        lambda: KMeans(n_clusters=k, n_init=1, max_iter=iters, tol=0.0, random_state=0).fit(X)
    )
    rows.append(("kmeans fit", ms, f"{km.n_iter_} Lloyd passes"))
    _, pms = timed(lambda: km.predict(X))
    rows.append(("kmeans predict", pms, ""))
    return rows


def spark_cases(path, cores, iters, k):
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.driver.memory", "8g")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(path).select(
        array_to_vector("features").alias("features"), "label", "class"
    )
    df = df.repartition(cores).cache()
    df.count()
    rows = []
    lr = LinearRegression(solver="normal", regParam=0.0, standardization=False)
    m, ms = timed(lambda: lr.fit(df))
    rows.append(("linreg fit", ms, f"r2 {m.summary.r2:.4f}"))
    log = LogisticRegression(labelCol="class", maxIter=iters, tol=0.0, regParam=0.0)
    m, ms = timed(lambda: log.fit(df))
    rows.append(("logreg fit", ms, f"{m.summary.totalIterations} iterations"))
    _, pms = timed(lambda: m.transform(df).select("prediction").groupBy().sum().collect())
    rows.append(("logreg predict", pms, ""))
    km = KMeans(k=k, maxIter=iters, tol=0.0, seed=1)
    m, ms = timed(lambda: km.fit(df))
    rows.append(("kmeans fit", ms, f"{m.summary.numIter} Lloyd passes"))
    _, pms = timed(lambda: m.transform(df).select("prediction").groupBy().sum().collect())
    rows.append(("kmeans predict", pms, ""))
    spark.stop()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parquet")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--skip-sklearn", action="store_true")
    a = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.cores)
    X, y, c = load(a.parquet)
    print(f"{X.shape[0]} rows x {X.shape[1]} features from {a.parquet}, {a.cores} cores")
    results = []
    if not a.skip_sklearn:
        results += [("scikit-learn",) + r for r in sklearn_cases(X, y, c, a.cores, a.iters, a.k)]
    if not a.skip_spark:
        results += [("spark-local",) + r for r in spark_cases(a.parquet, a.cores, a.iters, a.k)]
    for system, case, ms, note in results:
        print(f"  {system:<14} {case:<16} {ms:>10.1f} ms   {note}")


if __name__ == "__main__":
    main()
