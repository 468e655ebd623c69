"""Writes data/breast_cancer.parquet and data/logreg_reference.json: scikit-learn's
LogisticRegression on the shipped breast-cancer and digits data, the reference for Quiver's
LogisticRegression tests (mllib/tests/logistic_regression.rs).

Breast cancer: the Wisconsin Diagnostic Breast Cancer data (W. Wolberg, W. Street,
O. Mangasarian, UCI Machine Learning Repository, 1995, CC BY 4.0), 569 x 30, as shipped by
scikit-learn (`load_breast_cancer`); label 1 = benign.

Protocol (the tests repeat it): rows with index % 5 == 0 are the test set, the rest train;
features are standardised with the training mean and *sample* standard deviation (ddof = 1,
as Quiver's StandardScaler); LogisticRegression(C = 1, lbfgs, tol = 1e-12, max_iter = 100000),
multinomial for digits. sklearn minimises sum_i loss_i + ||w||^2 / (2C), i.e. Quiver's
mean loss + (lambda / 2)||w||^2 with lambda = 1 / (C n_train), standardization off.
Elastic net ("breast_cancer_elastic_net", "breast_cancer_l1"): the same split and scaling,
LogisticRegression(C, l1_ratio, solver = "saga", tol = 1e-12), whose objective
sum_i loss_i + (1 / C) (l1_ratio ||w||_1 + (1 - l1_ratio) / 2 ||w||^2) is Quiver's with
reg_param = 1 / (C n_train), elastic_net_param = l1_ratio, standardization off.
Run: pip install scikit-learn pyarrow numpy && python3 scripts/make_logreg_reference.py
"""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

root = pathlib.Path(__file__).resolve().parent.parent / "data"
bc = load_breast_cancer()
names = [f"f{j}" for j in range(30)]
cols = {n: pa.array(bc.data[:, j].astype(np.float64)) for j, n in enumerate(names)}
cols["label"] = pa.array(bc.target.astype(np.int32))
pq.write_table(pa.table(cols), root / "breast_cancer.parquet", compression="zstd")

t = pq.read_table(root / "digits.parquet")
digits_X = np.column_stack([t.column(f"pixel_{j}").to_numpy().astype(np.float64) for j in range(64)])
digits_y = t.column("label").to_numpy()


def split_scale(X, y):
    n = len(y)
    test = np.arange(n) % 5 == 0
    Xtr, ytr, Xte, yte = X[~test], y[~test], X[test], y[test]
    mu = Xtr.mean(0)
    sd = Xtr.std(0, ddof=1)
    sd[sd == 0] = 1.0
    return (Xtr - mu) / sd, ytr, (Xte - mu) / sd, yte


def fit_elastic_net(X, y, C, l1_ratio):
    Ztr, ytr, Zte, yte = split_scale(X, y)
    m = LogisticRegression(C=C, l1_ratio=l1_ratio, solver="saga", tol=1e-12, max_iter=10_000_000)
    m.fit(Ztr, ytr)
    return {
        "n_train": len(ytr),
        "C": C,
        "l1_ratio": l1_ratio,
        "train_accuracy": float(m.score(Ztr, ytr)),
        "test_accuracy": float(m.score(Zte, yte)),
        "coefficients": m.coef_.tolist(),
        "intercepts": m.intercept_.tolist(),
    }


def fit(X, y):
    n = len(y)
    test = np.arange(n) % 5 == 0
    Xtr, ytr, Xte, yte = X[~test], y[~test], X[test], y[test]
    mu = Xtr.mean(0)
    sd = Xtr.std(0, ddof=1)
    sd[sd == 0] = 1.0  # constant features: Quiver's scaler maps them to 0, as does (x - mu) / 1
    Ztr, Zte = (Xtr - mu) / sd, (Xte - mu) / sd
    m = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(Ztr, ytr)
    return {
        "n_train": int((~test).sum()),
        "train_accuracy": float(m.score(Ztr, ytr)),
        "test_accuracy": float(m.score(Zte, yte)),
        "coefficients": m.coef_.tolist(),
        "intercepts": m.intercept_.tolist(),
    }


ref = {
    "source": "scikit-learn %s (scripts/make_logreg_reference.py)" % __import__("sklearn").__version__,
    "breast_cancer": fit(bc.data.astype(np.float64), bc.target),
    "digits": fit(digits_X, digits_y),
    "breast_cancer_elastic_net": fit_elastic_net(bc.data.astype(np.float64), bc.target, 0.1, 0.5),
    "breast_cancer_l1": fit_elastic_net(bc.data.astype(np.float64), bc.target, 0.05, 1.0),
}
(root / "logreg_reference.json").write_text(json.dumps(ref) + "\n")
print({k: (v["train_accuracy"], v["test_accuracy"]) for k, v in ref.items() if k != "source"})
