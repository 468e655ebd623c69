"""Reference numbers for Quiver's trees (mllib/tests/trees.rs): scikit-learn's random
forests and LightGBM's boosted trees on the shipped data, with the same split Quiver's test
uses (every fifth row, starting at row 0, is a test row) and the same depth, rounds, learning
rate and bins. Writes data/tree_reference.json.

    pip install scikit-learn lightgbm pyarrow
    python3 scripts/make_tree_reference.py
"""

import json
import os

import lightgbm
import numpy as np
import pyarrow.parquet as pq
import sklearn
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")

# The settings the Rust test uses.
FOREST = dict(trees=50, depth=8)
BOOST = dict(rounds=50, depth=4, learning_rate=0.1, bins=32, l2=1.0, min_child_weight=1.0)


def load(name, label):
    t = pq.read_table(os.path.join(DATA, name))
    cols = [c for c in t.column_names if c != label]
    y = t.column(label).to_numpy().astype(float)
    x = np.column_stack([t.column(c).to_numpy().astype(float) for c in cols])
    test = np.arange(len(y)) % 5 == 0
    return x[~test], y[~test], x[test], y[test]


def lgb(objective, **extra):
    return lightgbm.LGBMModel(
        objective=objective,
        n_estimators=BOOST["rounds"],
        learning_rate=BOOST["learning_rate"],
        max_depth=BOOST["depth"],
        num_leaves=2 ** BOOST["depth"],
        max_bin=BOOST["bins"],
        reg_lambda=BOOST["l2"],
        min_child_weight=BOOST["min_child_weight"],
        min_child_samples=1,
        min_split_gain=0.0,
        subsample=1.0,
        colsample_bytree=1.0,
        n_jobs=1,
        verbose=-1,
        deterministic=True,
        **extra,
    )


def main():
    out = {
        "scikit_learn": sklearn.__version__,
        "lightgbm": lightgbm.__version__,
        "split": "test rows are those whose index is a multiple of 5",
        "forest": FOREST,
        "boost": BOOST,
    }
    for name, file, label, task in [
        ("breast_cancer", "breast_cancer.parquet", "label", "binary"),
        ("digits", "digits.parquet", "label", "multiclass"),
        ("diabetes", "diabetes.parquet", "target", "regression"),
    ]:
        xtr, ytr, xte, yte = load(file, label)
        r = {"train_rows": len(ytr), "test_rows": len(yte)}
        if task == "regression":
            rf = RandomForestRegressor(
                n_estimators=FOREST["trees"], max_depth=FOREST["depth"], max_features=1 / 3,
                random_state=0, n_jobs=1,
            ).fit(xtr, ytr)
            r["random_forest_rmse"] = float(np.sqrt(mean_squared_error(yte, rf.predict(xte))))
            b = lgb("regression").fit(xtr, ytr)
            r["lightgbm_rmse"] = float(np.sqrt(mean_squared_error(yte, b.predict(xte))))
        else:
            rf = RandomForestClassifier(
                n_estimators=FOREST["trees"], max_depth=FOREST["depth"], max_features="sqrt",
                random_state=0, n_jobs=1,
            ).fit(xtr, ytr)
            r["random_forest_accuracy"] = float(accuracy_score(yte, rf.predict(xte)))
            if task == "binary":
                b = lgb("binary").fit(xtr, ytr)
                p = b.predict(xte)
                r["lightgbm_accuracy"] = float(accuracy_score(yte, p > 0.5))
                r["lightgbm_auc"] = float(roc_auc_score(yte, p))
            else:
                b = lgb("multiclass", num_class=10).fit(xtr, ytr)
                r["lightgbm_accuracy"] = float(accuracy_score(yte, b.predict(xte).argmax(axis=1)))
        out[name] = r
        print(name, r)
    with open(os.path.join(DATA, "tree_reference.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
