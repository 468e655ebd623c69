"""CREATE MODEL … TRANSFORM (…) and ml_predict on an analyst's table, beside scikit-learn doing
the same feature engineering, fit and prediction, in one invocation.

    cargo build --release --bin quiver
    pip install scikit-learn pyarrow numpy
    python3 scripts/bench_transform.py [--quiver target/release/quiver] [--rows 1000000] [--threads 2]

The table is scripts/bench_preprocess.py's (8 numeric columns with nulls, 3 string columns,
a boolean, a 'yes' / 'no' label). Timed:
  - Quiver: the whole `quiver sql` command (process start, CREATE EXTERNAL TABLE, CREATE MODEL
    with a TRANSFORM of standard scaling, median imputation, 10 quantile buckets, min-max
    scaling, one-hot and label encoding, a degree-2 polynomial expansion and a feature cross,
    then logistic_reg with 20 iterations, no split; then the accuracy of ml_predict over every
    row of the table, which applies the stored TRANSFORM to the raw columns);
  - scikit-learn: reading the same file (pyarrow), the ColumnTransformer that does the same
    (StandardScaler and SimpleImputer, SimpleImputer(median), KBinsDiscretizer(10,
    'quantile') one-hot, MinMaxScaler, OneHotEncoder(min_frequency=5), OrdinalEncoder,
    PolynomialFeatures(2), the crossed strings one-hot), LogisticRegression(max_iter=20), then
    predict on every row.
Both report training accuracy; the ratio is scikit-learn's time over Quiver's.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_preprocess import make_table, timed  # noqa: E402

TRANSFORM = """
  ml_standard_scaler(x0) OVER () AS x0,
  ml_imputer(x1, 'median') OVER () AS x1,
  ml_quantile_bucketize(x2, 10) OVER () AS x2q,
  ml_min_max_scaler(x3) OVER () AS x3,
  ml_one_hot_encoder(city) OVER () AS city,
  ml_label_encoder(item) OVER () AS item,
  ml_polynomial_expand(STRUCT(x4, x5), 2) AS p,
  ml_feature_cross(STRUCT(city, shop)) AS cs,
  x6, x7, member, label"""
INPUTS = "x0, x1, x2, x3, x4, x5, x6, x7, city, shop, item, member"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default="target/release/quiver")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (
        KBinsDiscretizer, MinMaxScaler, OneHotEncoder, OrdinalEncoder, PolynomialFeatures,
        StandardScaler,
    )

    work = tempfile.mkdtemp()
    path = os.path.join(work, "analyst.parquet")
    make_table(path, a.rows)
    sql = (
        f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{path}'; "
        f"CREATE MODEL m TRANSFORM ({TRANSFORM}) "
        "OPTIONS (model_type = 'logistic_reg', input_label_cols = ['label'], "
        "data_split_method = 'no_split', max_iterations = 20) AS SELECT * FROM t; "
        f"SELECT avg(CASE WHEN ml_predict('m', {INPUTS}) = label THEN 1.0 ELSE 0.0 END) "
        "AS predict_accuracy FROM t"
    )
    run, quiver_s = timed(lambda: subprocess.run(
        [a.quiver, "--models", os.path.join(work, "models"), "--config",
         f"quiver.compute_threads={a.threads}", "sql", "-e", sql],
        capture_output=True, text=True, check=True,
    ))
    accuracy = float(run.stdout.split('"accuracy":', 1)[1].split(",", 1)[0])
    # The last table's single value (the line before "(1 row)").
    predicted = float(run.stdout.strip().splitlines()[-2].split()[-1])

    def sklearn_fit():
        t = pq.read_table(path)

        def num(c):
            return t[c].to_numpy(zero_copy_only=False).astype(float)

        def text(c):
            return np.array(t[c].fill_null("<null>").to_pylist(), dtype=object)

        cols = {c: num(c) for c in [f"x{j}" for j in range(8)] + ["member"]}
        for c in ("city", "shop", "item"):
            cols[c] = text(c)
        cols["cs"] = np.char.add(np.char.add(cols["city"].astype(str), "_"),
                                 cols["shop"].astype(str)).astype(object)
        names = list(cols)
        x = np.column_stack([cols[c] for c in names])
        at = {c: i for i, c in enumerate(names)}
        mean = SimpleImputer(strategy="mean")
        pre = ColumnTransformer([
            ("z", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), [at["x0"]]),
            ("median", SimpleImputer(strategy="median"), [at["x1"]]),
            ("q", make_pipeline(SimpleImputer(strategy="median"),
                                KBinsDiscretizer(10, strategy="quantile", encode="onehot",
                                                 quantile_method="linear")), [at["x2"]]),
            ("mm", make_pipeline(SimpleImputer(strategy="mean"), MinMaxScaler()), [at["x3"]]),
            ("poly", make_pipeline(SimpleImputer(strategy="mean"), PolynomialFeatures(2)),
             [at["x4"], at["x5"]]),
            ("plain", mean, [at["x6"], at["x7"], at["member"]]),
            ("onehot", OneHotEncoder(min_frequency=5, handle_unknown="ignore"),
             [at["city"], at["cs"]]),
            ("label", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
             [at["item"]]),
        ])
        y = np.array(t["label"].to_pylist())
        model = make_pipeline(pre, StandardScaler(with_mean=False),
                              LogisticRegression(C=np.inf, max_iter=20))
        model.fit(x, y)
        return float(np.mean(model.predict(x) == y))

    sk_accuracy, sk_s = timed(sklearn_fit)
    print(f"rows {a.rows}, threads {a.threads}")
    print(f"quiver sql CREATE MODEL TRANSFORM + ml_predict (whole command) {quiver_s:8.2f} s"
          f"   accuracy {accuracy:.4f} (ml_predict {predicted:.4f})")
    print(f"scikit-learn Parquet read + pipeline fit + predict             {sk_s:8.2f} s"
          f"   accuracy {sk_accuracy:.4f}")
    print(f"scikit-learn / quiver                                          {sk_s / quiver_s:8.2f}x")


if __name__ == "__main__":
    main()
