"""CREATE MODEL on an analyst's table (numbers with nulls, strings, booleans, a string label)
beside scikit-learn doing the same preprocessing and fit, in one invocation.

    cargo build --release --bin quiver
    pip install scikit-learn pyarrow numpy
    python3 scripts/bench_preprocess.py [--quiver target/release/quiver] [--rows 1000000] [--threads 2]

It writes a seeded table as Parquet (8 numeric columns, every 10th value null; 3 string
columns of 5, 20 and 100 categories, some null; 1 boolean; the label 'yes' / 'no' from a
logistic model of them) and times:
  - Quiver: the whole `quiver sql` command an analyst types (process start, CREATE EXTERNAL
    TABLE, CREATE MODEL … logistic_reg with automatic preprocessing, no split, 20 iterations,
    evaluation, store);
  - scikit-learn: reading the same file (pyarrow), then the pipeline that does what automatic
    preprocessing does (SimpleImputer(mean) on numbers and booleans, OneHotEncoder on strings
    with a null category, StandardScaler, LogisticRegression with 20 iterations, no penalty).
Both report training accuracy; the ratio is scikit-learn's time over Quiver's.
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


def make_table(path, rows, seed=7):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    cols = {}
    margin = np.zeros(rows)
    for j in range(8):
        x = rng.normal(size=rows)
        margin += (j - 3.5) * 0.2 * x
        mask = np.arange(rows) % 10 == j
        cols[f"x{j}"] = pa.array(x, mask=mask)
    for name, k in (("city", 5), ("shop", 20), ("item", 100)):
        codes = rng.integers(0, k, size=rows)
        effect = rng.normal(size=k) * 0.5
        margin += effect[codes]
        values = np.array([f"{name}_{c}" for c in range(k)], dtype=object)[codes]
        mask = rng.random(rows) < 0.02
        cols[name] = pa.array(values, type=pa.string(), mask=mask)
    flag = rng.random(rows) < 0.5
    margin += np.where(flag, 0.7, -0.7)
    cols["member"] = pa.array(flag, mask=rng.random(rows) < 0.05)
    y = rng.random(rows) < 1 / (1 + np.exp(-margin))
    cols["label"] = pa.array(np.where(y, "yes", "no"))
    pq.write_table(pa.table(cols), path, row_group_size=131072)
    return list(cols)


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
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    work = tempfile.mkdtemp()
    path = os.path.join(work, "analyst.parquet")
    make_table(path, a.rows)
    sql = (
        f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{path}'; "
        "CREATE MODEL m OPTIONS (model_type = 'logistic_reg', input_label_cols = ['label'], "
        "data_split_method = 'no_split', max_iterations = 20) AS SELECT * FROM t"
    )
    run, quiver_s = timed(lambda: subprocess.run(
        [a.quiver, "--models", os.path.join(work, "models"), "--config",
         f"quiver.compute_threads={a.threads}", "sql", "-e", sql],
        capture_output=True, text=True, check=True,
    ))
    accuracy = run.stdout.split('"accuracy":', 1)[1].split(",", 1)[0]

    def sklearn_fit():
        t = pq.read_table(path)
        numeric = [f"x{j}" for j in range(8)] + ["member"]
        strings = ["city", "shop", "item"]
        x_num = np.column_stack([
            t[c].to_numpy(zero_copy_only=False).astype(float) for c in numeric
        ])
        x_str = np.column_stack([
            np.array(t[c].fill_null("<null>").to_pylist(), dtype=object) for c in strings
        ])
        y = np.array(t["label"].to_pylist())
        x = np.concatenate([x_num, x_str], axis=1)
        pre = ColumnTransformer([
            ("num", SimpleImputer(strategy="mean"), list(range(len(numeric)))),
            ("cat", OneHotEncoder(handle_unknown="ignore"),
             list(range(len(numeric), len(numeric) + len(strings)))),
        ])
        model = make_pipeline(pre, StandardScaler(with_mean=False),
                              LogisticRegression(C=np.inf, max_iter=20))
        model.fit(x, y)
        return float(np.mean(model.predict(x) == y))

    sk_accuracy, sk_s = timed(sklearn_fit)
    print(f"rows {a.rows}, threads {a.threads}")
    print(f"quiver sql CREATE MODEL (whole command)   {quiver_s:8.2f} s   accuracy {float(accuracy):.4f}")
    print(f"scikit-learn Parquet read + pipeline fit  {sk_s:8.2f} s   accuracy {sk_accuracy:.4f}")
    print(f"scikit-learn / quiver                     {sk_s / quiver_s:8.2f}x")


if __name__ == "__main__":
    main()
