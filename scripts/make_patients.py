"""Writes data/patients.csv and data/patients_reference.json: an analyst's table made from the
shipped diabetes data (data/diabetes.parquet), with string, boolean, date and null-bearing
columns and a string label, for automatic preprocessing in CREATE MODEL.

Columns (one row per patient of the diabetes data, in its order):
  id           row number (0-based)
  age          integer years; null on every 13th row
  sex          'group_1' / 'group_2' (the data's 1/2 coding; the source does not say which is which)
  bmi, s5      as in the source
  bp           as in the source; null on every 17th row
  bmi_band     'under' (< 18.5), 'normal' (< 25), 'over' (< 30), 'obese'; null on every 19th row
  high_s6      whether s6 is above its median (boolean); null on every 23rd row
  visit_date   2020-01-01 plus id days (a date column)
  progression  'high' when target > 140.5 (the median), else 'low': the classification label
  target       the regression target, as in the source

The reference, computed with scikit-learn 1.9 / numpy independently of Quiver, on the training
rows (id % 5 <> 0) and held-out rows (id % 5 = 0):
  - per feature column: rows, nulls, mean (numbers, booleans as 0/1), distinct categories;
  - the held-out accuracy of scikit-learn's pipeline that does what automatic preprocessing
    does: mean imputation, one-hot strings (with a column for nulls), booleans as 0/1,
    standardisation, then unregularised logistic regression.
Run: pip install scikit-learn pyarrow numpy && python3 scripts/make_patients.py
"""

import csv
import datetime
import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

root = pathlib.Path(__file__).resolve().parent.parent / "data"
src = pq.read_table(root / "diabetes.parquet").to_pydict()
n = len(src["target"])
s6_median = float(np.median(src["s6"]))


def band(b):
    if b < 18.5:
        return "under"
    if b < 25:
        return "normal"
    if b < 30:
        return "over"
    return "obese"


rows = []
for i in range(n):
    rows.append(
        {
            "id": i,
            "age": None if i % 13 == 12 else int(src["age"][i]),
            "sex": "group_1" if src["sex"][i] == 1.0 else "group_2",
            "bmi": src["bmi"][i],
            "bp": None if i % 17 == 16 else src["bp"][i],
            "s5": src["s5"][i],
            "bmi_band": None if i % 19 == 18 else band(src["bmi"][i]),
            "high_s6": None if i % 23 == 22 else src["s6"][i] > s6_median,
            "visit_date": (datetime.date(2020, 1, 1) + datetime.timedelta(days=i)).isoformat(),
            "progression": "high" if src["target"][i] > 140.5 else "low",
            "target": src["target"][i],
        }
    )

columns = list(rows[0].keys())
with open(root / "patients.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(columns)
    for r in rows:
        w.writerow(
            ["" if r[c] is None else ("true" if r[c] is True else "false" if r[c] is False else r[c]) for c in columns]
        )

train = [r for r in rows if r["id"] % 5 != 0]
held = [r for r in rows if r["id"] % 5 == 0]
numeric = ["age", "bmi", "bp", "s5", "high_s6"]
strings = ["sex", "bmi_band"]


def stats(col):
    values = [r[col] for r in train]
    present = [v for v in values if v is not None]
    out = {"rows": len(values), "nulls": len(values) - len(present)}
    if col in strings:
        out["categories"] = len(set(present))
    else:
        out["mean"] = float(np.mean([float(v) for v in present]))
    return out


def matrix(part):
    x = np.array(
        [[np.nan if r[c] is None else float(r[c]) for c in numeric] for r in part], dtype=float
    )
    s = np.array([["<null>" if r[c] is None else r[c] for c in strings] for r in part], dtype=object)
    y = np.array([r["progression"] for r in part])
    return x, s, y


xt, st, yt = matrix(train)
xh, sh, yh = matrix(held)
features = ColumnTransformer(
    [
        ("num", SimpleImputer(strategy="mean"), list(range(len(numeric)))),
        ("cat", OneHotEncoder(handle_unknown="ignore"), list(range(len(numeric), len(numeric) + len(strings)))),
    ]
)
model = make_pipeline(features, StandardScaler(), LogisticRegression(C=1e12, max_iter=10000))
model.fit(np.concatenate([xt, st], axis=1), yt)
accuracy = float(np.mean(model.predict(np.concatenate([xh, sh], axis=1)) == yh))

reference = {
    "train_rows": len(train),
    "held_out_rows": len(held),
    "columns": {c: stats(c) for c in numeric + strings},
    "sklearn_logistic_held_out_accuracy": accuracy,
}
(root / "patients_reference.json").write_text(json.dumps(reference, indent=2) + "\n")
print(json.dumps(reference, indent=2))
