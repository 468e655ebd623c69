"""Writes data/naive_bayes_reference.json and data/pca_reference.json: scikit-learn's naive
Bayes and numpy's SVD on the shipped data, the references for Quiver's NaiveBayes and PCA tests
(mllib/tests/naive_bayes.rs, mllib/tests/pca.rs) and SQL logic tests.

Naive Bayes, fitted on all rows, class probabilities and joint log-likelihoods of every 10th
row (rows 0, 10, 20, ...):
- "multinomial": MultinomialNB(alpha=1.0) on digits (64 pixel counts 0-16, label 0-9);
- "multinomial_alpha_0_5": MultinomialNB(alpha=0.5) on digits;
- "complement": ComplementNB(alpha=1.0) on digits;
- "bernoulli": BernoulliNB(alpha=1.0, binarize=0.0) on digits, i.e. on the presence flags
  pixel > 0 (Quiver's Bernoulli model takes 0/1 values, so its tests binarise first);
- "gaussian": GaussianNB(var_smoothing=1e-9) on breast cancer (30 features, label 0/1).

PCA: the SVD of the centred data, U S Vt = X - mean; components = Vt[:k] with scikit-learn's
sign rule (the largest-magnitude entry of each component positive), explained variance
S^2 / (n - 1), ratio S^2 / sum(S^2), and the projection (X - mean) Vt[:k]^T of every 10th row:
- "digits_k10": digits, k = 10; "breast_cancer_k3": breast cancer, k = 3;
- "digits_ratio_0_8": the k that keeps > 80% of the variance on digits (scikit-learn's rule).

Run: pip install scikit-learn pyarrow numpy && python3 scripts/make_naive_bayes_pca_reference.py
"""

import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import sklearn
from sklearn.naive_bayes import BernoulliNB, ComplementNB, GaussianNB, MultinomialNB

root = pathlib.Path(__file__).resolve().parent.parent / "data"


def load(name, label):
    t = pq.read_table(root / name)
    cols = [c for c in t.column_names if c != label]
    x = np.column_stack([t[c].to_numpy().astype(np.float64) for c in cols])
    y = t[label].to_numpy().astype(np.int64)
    return cols, x, y


_, digits_x, digits_y = load("digits.parquet", "label")
bc_cols, bc_x, bc_y = load("breast_cancer.parquet", "label")
rows = list(range(0, len(digits_x), 10))
bc_rows = list(range(0, len(bc_x), 10))


def nb(model, x, y, rows):
    model.fit(x, y)
    return {
        "rows": rows,
        "probability": model.predict_proba(x[rows]).tolist(),
        "joint_log_likelihood": model.predict_joint_log_proba(x[rows]).tolist(),
        "prediction": model.predict(x[rows]).astype(float).tolist(),
        "accuracy": float(model.score(x, y)),
    }


naive_bayes = {
    "source": f"scikit-learn {sklearn.__version__}, numpy {np.__version__}",
    "multinomial": nb(MultinomialNB(alpha=1.0), digits_x, digits_y, rows),
    "multinomial_alpha_0_5": nb(MultinomialNB(alpha=0.5), digits_x, digits_y, rows),
    "complement": nb(ComplementNB(alpha=1.0), digits_x, digits_y, rows),
    "bernoulli": nb(BernoulliNB(alpha=1.0, binarize=0.0), digits_x, digits_y, rows),
    "gaussian": nb(GaussianNB(var_smoothing=1e-9), bc_x, bc_y, bc_rows),
}
(root / "naive_bayes_reference.json").write_text(json.dumps(naive_bayes) + "\n")


def pca(x, k=None, ratio=None, rows=()):
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (len(x) - 1)
    ratios = s**2 / np.sum(s**2)
    if k is None:
        k = int(np.searchsorted(np.cumsum(ratios), ratio, side="right") + 1)
    comps = vt[:k].copy()
    for c in comps:
        if c[np.argmax(np.abs(c))] < 0:
            c *= -1
    return {
        "k": k,
        "components": comps.tolist(),
        "explained_variance": var[:k].tolist(),
        "explained_variance_ratio": ratios[:k].tolist(),
        "total_variance": float(np.sum(var)),
        "rows": list(rows),
        "projection": ((x[list(rows)] - mean) @ comps.T).tolist(),
    }


pca_ref = {
    "source": f"numpy {np.__version__}",
    "digits_k10": pca(digits_x, k=10, rows=rows),
    "breast_cancer_k3": pca(bc_x, k=3, rows=bc_rows),
    "digits_ratio_0_8": pca(digits_x, ratio=0.8, rows=rows[:5]),
}
(root / "pca_reference.json").write_text(json.dumps(pca_ref) + "\n")
print("wrote", root / "naive_bayes_reference.json", root / "pca_reference.json")
