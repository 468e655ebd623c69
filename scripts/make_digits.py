"""Writes data/digits.parquet and the independent summary reference data/digits_summary_reference.json.

Source: the UCI "Optical Recognition of Handwritten Digits" test set as shipped by
scikit-learn (`sklearn.datasets.load_digits`, 1797 images of 8x8 pixels, values 0..16).
Run: pip install scikit-learn pyarrow numpy && python3 scripts/make_digits.py
"""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

root = pathlib.Path(__file__).resolve().parent.parent / "data"
digits = load_digits()
X = digits.data.astype(np.uint8)  # pixel intensities 0..16
y = digits.target.astype(np.int32)
assert X.shape == (1797, 64)

columns = {f"pixel_{j}": pa.array(X[:, j], type=pa.uint8()) for j in range(64)}
columns["label"] = pa.array(y, type=pa.int32())
pq.write_table(pa.table(columns), root / "digits.parquet", row_group_size=512, compression="zstd")

# Reference statistics from numpy (float64, two-pass), per pixel column.
Xf = X.astype(np.float64)
ref = {
    "source": "numpy %s over sklearn.datasets.load_digits (scripts/make_digits.py)" % np.__version__,
    "count": int(Xf.shape[0]),
    "mean": Xf.mean(axis=0).tolist(),
    "variance": Xf.var(axis=0, ddof=1).tolist(),
    "min": Xf.min(axis=0).tolist(),
    "max": Xf.max(axis=0).tolist(),
    "norm_l1": np.abs(Xf).sum(axis=0).tolist(),
    "norm_l2": np.sqrt((Xf * Xf).sum(axis=0)).tolist(),
    "num_nonzeros": (Xf != 0).sum(axis=0).astype(int).tolist(),
    "label_counts": np.bincount(y).tolist(),
}
(root / "digits_summary_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print("wrote", root / "digits.parquet")
