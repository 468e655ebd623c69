"""Prints scikit-learn's k-means inertia on the shipped digits (k = 10, best of 10 k-means++
inits), the reference for Quiver's KMeans test (see mllib/tests/kmeans.rs).
Run: pip install scikit-learn pyarrow numpy && python3 scripts/kmeans_reference.py
"""

import pathlib

import numpy as np
import pyarrow.parquet as pq
from sklearn.cluster import KMeans

root = pathlib.Path(__file__).resolve().parent.parent / "data"
t = pq.read_table(root / "digits.parquet")
X = np.column_stack([t.column(f"pixel_{j}").to_numpy().astype(np.float64) for j in range(64)])
best = KMeans(n_clusters=10, n_init=10, random_state=0).fit(X)
print(f"sklearn {__import__('sklearn').__version__} best-of-10 inertia: {best.inertia_:.6f}")

# ClusteringEvaluator reference (mllib/tests/evaluation.rs): the silhouette of the digits
# grouped by their true label, with squared Euclidean distance (Spark's default metric), and
# the within-cluster sum of squares about the group means.
from sklearn.metrics import silhouette_score  # noqa: E402

y = t.column("label").to_numpy()
print(f"silhouette (sqeuclidean, true labels): {silhouette_score(X, y, metric='sqeuclidean'):.12f}")
within = sum(((X[y == c] - X[y == c].mean(0)) ** 2).sum() for c in np.unique(y))
print(f"within-cluster sum of squares (true labels): {within:.6f}")
