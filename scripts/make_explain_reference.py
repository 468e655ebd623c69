"""Writes data/explain_reference.json: what ml_explain_predict and ml_global_explain must give
for a linear regression on data/patients.csv, computed with numpy / scikit-learn independently
of Quiver.

The model: `linear_reg` on the training rows (id % 5 <> 0) of age, sex, bmi, bp, s5, bmi_band,
high_s6 -> target, with automatic preprocessing under category_encoding_method =
'dummy_encoding': numbers and booleans (0/1) with nulls replaced by the training mean; strings
one column per sorted category but the first, plus a `<column>_<other>` column when the
training rows had nulls (those rows and unseen values go there). Unregularised least squares,
so the coefficients are unique and equal scikit-learn's LinearRegression.

An attribution is `coef_j * (x_j - mean_j)` with the training means of the encoded features;
the baseline is the prediction at the mean. Recorded: the top 3 attributions (by absolute
value) of the held-out rows id 0, 5 and 10 with the baseline and prediction, the mean
absolute attribution per feature over the training rows (ml_global_explain), and the absolute
standardised coefficient |coef_j| * std_j (sample standard deviation; ml_feature_importance).
Run: pip install scikit-learn numpy && python3 scripts/make_explain_reference.py
"""

import csv
import json
import pathlib

import numpy as np
from sklearn.linear_model import LinearRegression

root = pathlib.Path(__file__).resolve().parent.parent / "data"
rows = list(csv.DictReader(open(root / "patients.csv")))
train = [r for r in rows if int(r["id"]) % 5 != 0]

NUMBERS = ["age", "bmi", "bp", "s5"]
STRINGS = ["sex", "bmi_band"]


def number(r, c):
    v = r[c]
    if v == "":
        return None
    if c == "high_s6":
        return 1.0 if v == "true" else 0.0
    return float(v)


# Feature layout as the query lists the columns: age, sex, bmi, bp, s5, bmi_band, high_s6.
layout = []
for c in ["age", "sex", "bmi", "bp", "s5", "bmi_band", "high_s6"]:
    if c in STRINGS:
        cats = sorted({r[c] for r in train if r[c] != ""})
        other = any(r[c] == "" for r in train)
        layout.append((c, "string", cats, other))
    else:
        vals = [number(r, c) for r in train if number(r, c) is not None]
        layout.append((c, "number", float(np.mean(vals)), None))

names = []
for c, kind, info, other in layout:
    if kind == "number":
        names.append(c)
    else:
        names += [f"{c}_{k}" for k in info[1:]]
        if other:
            names.append(f"{c}_<other>")


def encode(r):
    out = []
    for c, kind, info, other in layout:
        if kind == "number":
            v = number(r, c)
            out.append(info if v is None else v)
        else:
            cats = info
            known = r[c] in cats
            out += [1.0 if r[c] == k else 0.0 for k in cats[1:]]
            if other:
                out.append(0.0 if known else 1.0)
    return out


X = np.array([encode(r) for r in train])
y = np.array([float(r["target"]) for r in train])
m = LinearRegression().fit(X, y)
mean = X.mean(axis=0)
baseline = float(m.intercept_ + m.coef_ @ mean)


def explain(x):
    phi = m.coef_ * (np.array(x) - mean)
    order = sorted(range(len(phi)), key=lambda j: (-abs(phi[j]), j))[:3]
    return {
        "prediction": float(m.predict(np.array([x]))[0]),
        "baseline": baseline,
        "top": [[names[j], float(phi[j])] for j in order],
    }


reference = {
    "features": names,
    "rows": {r["id"]: explain(encode(r)) for r in rows if r["id"] in ("0", "5", "10")},
    "global": sorted(
        [[n, float(v)] for n, v in zip(names, np.abs(m.coef_ * (X - mean)).mean(axis=0))],
        key=lambda p: -p[1],
    ),
    "importance": sorted(
        [[n, float(v)] for n, v in zip(names, np.abs(m.coef_) * X.std(axis=0, ddof=1))],
        key=lambda p: -p[1],
    ),
}
(root / "explain_reference.json").write_text(json.dumps(reference, indent=2) + "\n")
print(json.dumps(reference, indent=2))
