"""Writes data/diabetes.parquet and data/diabetes_reference.json (independent least-squares solutions).

Source: the diabetes data of Efron, Hastie, Johnstone and Tibshirani (2004), "Least Angle
Regression", as shipped by scikit-learn (`sklearn.datasets.load_diabetes(scaled=False)`):
442 patients, 10 baseline variables, a disease-progression target.
Run: pip install scikit-learn pyarrow numpy && python3 scripts/make_diabetes.py

The reference solves each objective below with numpy.linalg.lstsq on an explicitly built
(augmented) system, independently of Quiver's normal-equation code:
  minimise 1/(2 W) sum_i w_i (y_i - b - x_i . beta)^2 + (lambda / 2) sum_j (s_j beta_j)^2
with s_j = 1 (standardization off) or s_j = the weighted population standard deviation of
feature j (standardization on).

The elastic-net references (keys "elastic_net_*") come from scikit-learn's ElasticNet
(coordinate descent, tol = 1e-14), whose objective
  1/(2 n) sum_i (y_i - b - x_i . beta)^2 + alpha * l1_ratio * sum_j |beta_j|
                                         + alpha * (1 - l1_ratio) / 2 * sum_j beta_j^2
is Quiver's with reg_param = alpha, elastic_net_param = l1_ratio and standardization off; the
standardised variant fits on (x - mean) / population std and maps the coefficients back.
"""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_diabetes

root = pathlib.Path(__file__).resolve().parent.parent / "data"
d = load_diabetes(scaled=False)
X = d.data.astype(np.float64)
y = d.target.astype(np.float64)
names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
n, p = X.shape
assert (n, p) == (442, 10)
cols = {name: pa.array(X[:, j]) for j, name in enumerate(names)}
cols["target"] = pa.array(y)
pq.write_table(pa.table(cols), root / "diabetes.parquet", compression="zstd")

weights = 1.0 + (np.arange(n) % 4)  # the tests use the same pattern: 1 + row % 4


def solve(w, lam, standardize):
    W = w.sum()
    mu = (w[:, None] * X).sum(0) / W
    sd = np.sqrt((w[:, None] * (X - mu) ** 2).sum(0) / W)
    s = sd if standardize else np.ones(p)
    # Rows sqrt(w_i / W) * [1, x_i] ~ sqrt(w_i / W) * y_i, plus p penalty rows sqrt(lam) * s_j * e_j.
    A = np.hstack([np.ones((n, 1)), X]) * np.sqrt(w / W)[:, None]
    t = y * np.sqrt(w / W)
    if lam > 0:
        P = np.hstack([np.zeros((p, 1)), np.diag(np.sqrt(lam) * s)])
        A = np.vstack([A, P])
        t = np.concatenate([t, np.zeros(p)])
    sol, *_ = np.linalg.lstsq(A, t, rcond=None)
    return {"intercept": float(sol[0]), "coefficients": sol[1:].tolist()}


def elastic_net(alpha, l1_ratio, standardize):
    from sklearn.linear_model import ElasticNet

    mu, sd = X.mean(0), (X.std(0) if standardize else np.ones(p))
    m = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-14, max_iter=1_000_000)
    m.fit((X - mu) / sd, y)
    beta = m.coef_ / sd
    return {
        "reg_param": alpha,
        "elastic_net_param": l1_ratio,
        "standardization": standardize,
        "intercept": float(m.intercept_ - (beta * mu).sum()),
        "coefficients": beta.tolist(),
    }


ref = {
    "source": "numpy %s lstsq on augmented systems; scikit-learn %s ElasticNet (scripts/make_diabetes.py)"
    % (np.__version__, __import__("sklearn").__version__),
    "features": names,
    "ols": solve(np.ones(n), 0.0, False),
    "ols_weighted": solve(weights, 0.0, False),
    "ridge_0.1": solve(np.ones(n), 0.1, False),
    "ridge_0.1_standardized": solve(np.ones(n), 0.1, True),
    "elastic_net_5_0.5": elastic_net(5.0, 0.5, False),
    "lasso_0.5_standardized": elastic_net(0.5, 1.0, True),
}
(root / "diabetes_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print(json.dumps(ref["ols"]))
