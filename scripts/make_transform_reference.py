"""Writes data/transform_reference.json: what the TRANSFORM functions of CREATE MODEL must
compute on data/patients.csv (every row is a training row: data_split_method = 'no_split'),
with numpy alone, independently of Quiver. tests/slt/transform.slt checks ml_transform's
output against these numbers.

- ml_standard_scaler(age): (age - mean) / std with the sample standard deviation (ddof = 1),
  over the non-null ages; nulls stay null.
- ml_min_max_scaler(bmi): (bmi - min) / (max - min).
- ml_quantile_bucketize(bp, 4): splits at numpy's linear quantiles 0.25, 0.5, 0.75 of the
  non-null values; 'bin_1' below the first split ... 'bin_4' from the last on.
- ml_bucketize(s5, [4, 5]): 'bin_1' for s5 < 4, 'bin_2' for 4 <= s5 < 5, 'bin_3' otherwise.
- ml_one_hot_encoder(bmi_band) and ml_label_encoder(sex): the categories seen at least 5
  times (BigQuery ML's default frequency_threshold), sorted; label codes count from 1.
- ml_imputer(bp, 'median'), ml_imputer(bmi_band, 'most_frequent'): the fill values.
- ml_polynomial_expand(STRUCT(bmi, s5), 2): the mean of bmi * s5.
- ml_feature_cross(STRUCT(sex, bmi_band)): the number of distinct non-null crosses.

Run: pip install numpy && python3 scripts/make_transform_reference.py
"""

import collections
import csv
import json
import pathlib

import numpy as np

root = pathlib.Path(__file__).resolve().parent.parent / "data"
rows = list(csv.DictReader(open(root / "patients.csv")))


def numbers(c):
    return np.array([float(r[c]) for r in rows if r[c] != ""])


age = numbers("age")
bmi = numbers("bmi")
bp = numbers("bp")
s5 = numbers("s5")

splits = [float(np.quantile(bp, q)) for q in (0.25, 0.5, 0.75)]
bp_bins = collections.Counter()
for r in rows:
    if r["bp"] == "":
        bp_bins["null"] += 1
    else:
        bp_bins["bin_%d" % (1 + sum(float(r["bp"]) >= s for s in splits))] += 1
s5_bins = collections.Counter(
    "bin_%d" % (1 + (v >= 4) + (v >= 5)) for v in s5
)


def kept(c, threshold=5):
    counts = collections.Counter(r[c] for r in rows if r[c] != "")
    return {k: n for k, n in sorted(counts.items()) if n >= threshold}


bands = kept("bmi_band")
sexes = kept("sex")
band_counts = collections.Counter(r["bmi_band"] for r in rows if r["bmi_band"] != "")
most_frequent_band = sorted(band_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
z = (age - age.mean()) / age.std(ddof=1)
crosses = {
    (r["sex"], r["bmi_band"]) for r in rows if r["sex"] != "" and r["bmi_band"] != ""
}
both = [(float(r["bmi"]), float(r["s5"])) for r in rows if r["bmi"] != "" and r["s5"] != ""]

reference = {
    "rows": len(rows),
    "age": {
        "mean": float(age.mean()),
        "std": float(age.std(ddof=1)),
        "null_count": len(rows) - len(age),
        "z_min": float(z.min()),
        "z_max": float(z.max()),
    },
    "bmi": {"min": float(bmi.min()), "max": float(bmi.max())},
    "bp": {
        "quantile_splits": splits,
        "bucket_counts": dict(sorted(bp_bins.items())),
        "median": float(np.median(bp)),
        "mean_after_median_imputation": float(
            (bp.sum() + np.median(bp) * (len(rows) - len(bp))) / len(rows)
        ),
    },
    "s5": {"bucket_counts": dict(sorted(s5_bins.items()))},
    "bmi_band": {
        "one_hot_categories": bands,
        "most_frequent": most_frequent_band,
    },
    "sex": {"label_codes": {k: i + 1 for i, k in enumerate(sexes)}},
    "poly_bmi_s5_mean": float(np.mean([a * b for a, b in both])),
    "distinct_crosses": len(crosses),
}
out = root / "transform_reference.json"
out.write_text(json.dumps(reference, indent=2) + "\n")
print(json.dumps(reference, indent=2))
