"""Times what a user runs for naive Bayes and PCA — the whole `quiver sql` CREATE MODEL
statement on Parquet files, process start included — beside scikit-learn on the same rows
(its Parquet load timed separately, then its fit), in one invocation, and prints the ratios.

    cargo build --release --bin quiver
    pip install scikit-learn pyarrow numpy
    python3 scripts/bench_sql_nb_pca.py [--rows 1000000] [--features 20] [--repeat 3]

Data: `rows` × `features` non-negative counts (Poisson, class-dependent rates) and a label
with 4 classes, written once as 8 Parquet files (seed 7). Cases: multinomial naive Bayes
(MultinomialNB(alpha=1)), Gaussian naive Bayes (GaussianNB), PCA with k = 5 (PCA(5,
svd_solver="full")). Quiver runs with data_split_method = 'no_split' (no evaluation split;
its statement still evaluates the model on the training rows afterwards). Best of `repeat`.
"""

import argparse
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def best(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quiver", default="target/release/quiver")
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, a.rows)
    rates = rng.uniform(0.5, 5.0, (4, a.features))
    X = rng.poisson(rates[y]).astype(np.float64)
    work = pathlib.Path(tempfile.mkdtemp())
    data = work / "data"
    data.mkdir()
    cols = {f"f{j}": X[:, j] for j in range(a.features)}
    cols["label"] = y.astype(np.int64)
    table = pa.table(cols)
    for i, chunk in enumerate(np.array_split(np.arange(a.rows), 8)):
        pq.write_table(table.take(chunk), data / f"part-{i}.parquet")
    feats = ", ".join(f"f{j}" for j in range(a.features))

    def quiver(options, select):
        sql = (
            f"CREATE OR REPLACE MODEL m OPTIONS ({options}, data_split_method = 'no_split') "
            f"AS SELECT {select} FROM '{data}/'"
        )
        subprocess.run(
            [a.quiver, "sql", "--models", str(work / "models"), "-e", sql],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def load():
        t = pq.read_table(data)
        return np.column_stack([t[f"f{j}"].to_numpy() for j in range(a.features)]), t[
            "label"
        ].to_numpy()

    from sklearn.decomposition import PCA
    from sklearn.naive_bayes import GaussianNB, MultinomialNB

    t_load = best(load, a.repeat)
    Xl, yl = load()
    cases = [
        (
            "naive Bayes, multinomial",
            lambda: quiver("model_type = 'naive_bayes', input_label_cols = ['label']", "*"),
            lambda: MultinomialNB(alpha=1.0).fit(Xl, yl),
        ),
        (
            "naive Bayes, Gaussian",
            lambda: quiver(
                "model_type = 'naive_bayes', naive_bayes_type = 'gaussian', input_label_cols = ['label']",
                "*",
            ),
            lambda: GaussianNB().fit(Xl, yl),
        ),
        (
            "PCA, k = 5",
            lambda: quiver("model_type = 'pca', num_principal_components = 5", feats),
            lambda: PCA(5, svd_solver="full").fit(Xl),
        ),
    ]
    print(f"{a.rows} rows x {a.features} features, 8 Parquet files; best of {a.repeat}")
    print(f"scikit-learn Parquet load: {t_load:.3f} s")
    print("case | quiver sql (whole statement) | sklearn fit | sklearn load+fit | ratio quiver/(load+fit)")
    for name, q, s in cases:
        tq, ts = best(q, a.repeat), best(s, a.repeat)
        print(f"{name} | {tq:.3f} s | {ts:.3f} s | {ts + t_load:.3f} s | {tq / (ts + t_load):.2f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
