//! Trees against scikit-learn's random forests and LightGBM's boosted trees
//! (scripts/make_tree_reference.py → data/tree_reference.json) on the shipped data with the
//! same split, depth, rounds, learning rate and bins; the same trees on every runner; the
//! store; feature importance; bad input named.

mod common;
use common::{float_rows, reference, session};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::{Dataset, QuiverSession};
use quiver_mllib::{
    DecisionTreeClassifier, DecisionTreeRegressor, Estimator, GBTClassifier, GBTRegressor, Model,
    RandomForestClassifier, RandomForestRegressor, Transformer, load, load_dyn, save,
};

/// A shipped file as Float64 columns (the label renamed `y`), split into (train, test): every
/// fifth row, from row 0, is a test row.
async fn split(s: &QuiverSession, file: &str, label: &str) -> (Dataset, Dataset) {
    let b = float_rows(s, file, label).await;
    let test: BooleanArray = (0..b.num_rows()).map(|i| Some(i % 5 == 0)).collect();
    let train = arrow::compute::not(&test).unwrap();
    let part = |mask: &BooleanArray| {
        let rows = arrow::compute::filter_record_batch(&b, mask).unwrap();
        Dataset::new(s.from_batches(vec![rows], 2).unwrap())
            .with_label("y")
            .unwrap()
            .with_numeric_features_except(&["y"])
            .unwrap()
    };
    (part(&train), part(&test))
}

/// The prediction column and the label of the scored rows.
async fn predictions(model: &(impl Transformer + ?Sized), data: &Dataset) -> (Vec<f64>, Vec<f64>) {
    let batches = model
        .transform(data)
        .unwrap()
        .dataframe()
        .clone()
        .select_columns(&["prediction", "y"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut p = Vec::new();
    let mut y = Vec::new();
    for b in batches {
        let col = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        p.extend(col(0));
        y.extend(col(1));
    }
    (p, y)
}

fn accuracy(p: &[f64], y: &[f64]) -> f64 {
    p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

fn rmse(p: &[f64], y: &[f64]) -> f64 {
    (p.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / y.len() as f64).sqrt()
}

fn want(data: &str, key: &str) -> f64 {
    reference("tree_reference.json", data)[key]
        .as_f64()
        .unwrap()
}

/// Test accuracy within `slack` of the reference's (the test sets have 114 and 360 rows: one
/// row is 0.9 and 0.3 points).
fn assert_accuracy(ours: f64, data: &str, key: &str, slack: f64) {
    let theirs = want(data, key);
    eprintln!("{data}: {key} {theirs:.4}, Quiver {ours:.4}");
    assert!(
        ours >= theirs - slack,
        "{data}: accuracy {ours} vs {key} {theirs}"
    );
}

#[tokio::test]
async fn classifiers_match_scikit_learn_and_lightgbm() {
    let s = session("local");
    let (train, test) = split(&s, "breast_cancer.parquet", "label").await;
    let rf = RandomForestClassifier::new()
        .num_trees(50)
        .max_depth(8)
        .fit(&s, &train)
        .await
        .unwrap();
    let (p, y) = predictions(&rf, &test).await;
    assert_accuracy(
        accuracy(&p, &y),
        "breast_cancer",
        "random_forest_accuracy",
        0.03,
    );
    let gbt = GBTClassifier::new()
        .max_iter(50)
        .max_depth(4)
        .fit(&s, &train)
        .await
        .unwrap();
    let (p, y) = predictions(&gbt, &test).await;
    assert_accuracy(accuracy(&p, &y), "breast_cancer", "lightgbm_accuracy", 0.03);
    // The training loss falls round after round.
    let h = &gbt.summary().objective_history;
    assert_eq!(h.len(), 51);
    assert!(h.windows(2).all(|w| w[1] <= w[0] + 1e-12), "{h:?}");
    let imp = gbt.feature_importances();
    assert!((imp.iter().sum::<f64>() - 1.0).abs() < 1e-12);

    let (train, test) = split(&s, "digits.parquet", "label").await;
    let rf = RandomForestClassifier::new()
        .num_trees(50)
        .max_depth(8)
        .fit(&s, &train)
        .await
        .unwrap();
    let (p, y) = predictions(&rf, &test).await;
    assert_accuracy(accuracy(&p, &y), "digits", "random_forest_accuracy", 0.02);
    // Softmax boosting: one tree per class per round.
    let gbt = GBTClassifier::new()
        .max_iter(50)
        .max_depth(4)
        .fit(&s, &train)
        .await
        .unwrap();
    assert_eq!(gbt.trees().len(), 500);
    let (p, y) = predictions(&gbt, &test).await;
    assert_accuracy(accuracy(&p, &y), "digits", "lightgbm_accuracy", 0.02);
}

#[tokio::test]
async fn regressors_match_scikit_learn_and_lightgbm() {
    let s = session("local");
    let (train, test) = split(&s, "diabetes.parquet", "target").await;
    let rf = RandomForestRegressor::new()
        .num_trees(50)
        .max_depth(8)
        .fit(&s, &train)
        .await
        .unwrap();
    let (p, y) = predictions(&rf, &test).await;
    let (ours, theirs) = (rmse(&p, &y), want("diabetes", "random_forest_rmse"));
    eprintln!("diabetes: random forest rmse {theirs:.3}, Quiver {ours:.3}");
    assert!(ours <= theirs * 1.05, "{ours} vs {theirs}");
    let gbt = GBTRegressor::new()
        .max_iter(50)
        .max_depth(4)
        .fit(&s, &train)
        .await
        .unwrap();
    let (p, y) = predictions(&gbt, &test).await;
    let (ours, theirs) = (rmse(&p, &y), want("diabetes", "lightgbm_rmse"));
    eprintln!("diabetes: LightGBM rmse {theirs:.3}, Quiver {ours:.3}");
    assert!(ours <= theirs * 1.05, "{ours} vs {theirs}");
    // A single tree of depth 2: three splits, and its leaves are the means of their rows.
    let dt = DecisionTreeRegressor::new()
        .max_depth(2)
        .fit(&s, &train)
        .await
        .unwrap();
    let t = &dt.trees()[0];
    assert_eq!(t.depth(), 2);
    assert_eq!(t.n_nodes(), 7);
}

/// The local runner and the embedded one read the rows in the same order; the bins come from
/// an order-independent sample and the histograms merge in block order, so the trees are
/// identical — also with a different number of threads.
#[tokio::test]
async fn every_runner_grows_the_same_trees() {
    let mut forests = Vec::new();
    let mut boosted = Vec::new();
    for (runner, threads) in [("local", "2"), ("embedded", "2"), ("local", "1")] {
        let s = QuiverSession::embedded_with(
            quiver_engine::QuiverConfig::default()
                .with_pairs([
                    ("quiver.runner", runner),
                    ("quiver.compute_threads", threads),
                ])
                .unwrap(),
        )
        .unwrap();
        let (train, _) = split(&s, "digits.parquet", "label").await;
        let rf = RandomForestClassifier::new()
            .num_trees(8)
            .fit(&s, &train)
            .await
            .unwrap();
        forests.push(rf.trees().to_vec());
        let gbt = GBTClassifier::new()
            .max_iter(5)
            .subsampling_rate(0.8)
            .colsample_bynode(0.5)
            .fit(&s, &train)
            .await
            .unwrap();
        boosted.push(gbt.trees().to_vec());
    }
    assert!(forests.windows(2).all(|w| w[0] == w[1]));
    assert!(boosted.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn tree_models_round_trip_through_the_store() {
    let s = session("local");
    let (train, test) = split(&s, "breast_cancer.parquet", "label").await;
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    let gbt = GBTClassifier::new()
        .max_iter(10)
        .early_stop(true)
        .fit(&s, &train)
        .await
        .unwrap();
    assert!(!gbt.summary().validation_history.is_empty());
    save(&store, "gbt", &gbt).await.unwrap();
    let back: quiver_mllib::GBTClassificationModel = load(&store, "gbt", None).await.unwrap();
    assert_eq!(back, gbt);
    let dt = DecisionTreeClassifier::new()
        .max_depth(3)
        .fit(&s, &train)
        .await
        .unwrap();
    save(&store, "dt", &dt).await.unwrap();
    let (_, dyn_model) = load_dyn(&store, "dt", None).await.unwrap();
    let (a, _) = predictions(&dt, &test).await;
    let (b, _) = predictions(dyn_model.as_ref(), &test).await;
    assert_eq!(a, b);
    let (_, parts) = dt.to_parts().unwrap();
    assert_eq!(parts.len(), 2);
}

/// The error of a fit that must fail (without printing the model when it does not).
fn error<T>(r: quiver_mllib::Result<T>) -> String {
    match r {
        Ok(_) => panic!("the fit succeeded"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_input_is_named() {
    let s = session("local");
    let (train, _) = split(&s, "diabetes.parquet", "target").await;
    // A regression target (disease progression, 25 to 346) is not a class index.
    let err = error(RandomForestClassifier::new().fit(&s, &train).await);
    assert!(err.contains("'y'") && err.contains("class index"), "{err}");
    let err = error(GBTRegressor::new().max_bins(257).fit(&s, &train).await);
    assert!(err.contains("'max_bins'"), "{err}");
    let err = error(
        DecisionTreeRegressor::new()
            .max_depth(40)
            .fit(&s, &train)
            .await,
    );
    assert!(err.contains("'max_depth'"), "{err}");
}

/// Missing features (nulls and NaN) are routed by a learned default direction, in the fit and
/// in prediction; a model that needs every value still refuses them, naming column and row.
#[tokio::test]
async fn missing_values_are_learned_not_refused() {
    let s = session("local");
    let n = 1000;
    // x0 is missing in every fourth row (null or NaN); y is 1 where x0 is missing or ≥ 0.7.
    let x0: Float64Array = (0..n)
        .map(|i| match i % 8 {
            0 => None,
            4 => Some(f64::NAN),
            _ => Some((i % 10) as f64 / 10.0),
        })
        .collect();
    let x1: Float64Array = (0..n).map(|i| Some(((i * 37) % 101) as f64)).collect();
    let y: Float64Array = (0..n)
        .map(|i| {
            let missing = i % 4 == 0;
            Some(if missing || i % 10 >= 7 { 1.0 } else { 0.0 })
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x0", DataType::Float64, true),
        Field::new("x1", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![Arc::new(x0) as ArrayRef, Arc::new(x1), Arc::new(y)],
    )
    .unwrap();
    let data = Dataset::new(s.from_batches(vec![b], 2).unwrap())
        .with_label("y")
        .unwrap()
        .with_features(["x0", "x1"])
        .unwrap();
    let dt = DecisionTreeClassifier::new()
        .max_depth(2)
        .fit(&s, &data)
        .await
        .unwrap();
    let (p, y) = predictions(&dt, &data).await;
    assert_eq!(accuracy(&p, &y), 1.0);
    assert_eq!(dt.predict_row(&[f64::NAN, 3.0]), vec![0.0, 1.0]);
    let gbt = GBTClassifier::new()
        .max_iter(5)
        .fit(&s, &data)
        .await
        .unwrap();
    let (p, y) = predictions(&gbt, &data).await;
    assert_eq!(accuracy(&p, &y), 1.0);
    let err = error(quiver_mllib::LogisticRegression::new().fit(&s, &data).await);
    assert!(err.contains("'x0'") && err.contains("row 0"), "{err}");
}

/// Rows marked reusable (as a search's splits are) are read and binned once per process: a
/// second fit takes the kept codes and grows the same trees as a fit that reads the rows; other
/// bins are kept apart, and rows derived from reusable ones are not reusable.
#[tokio::test]
async fn reusable_rows_are_binned_once_and_grow_the_same_trees() {
    let s = session("local");
    let (train, _) = split(&s, "digits.parquet", "label").await;
    let key = format!("trees test {}", std::process::id());
    let reusable = train.clone().reusable(key.clone());
    let gbt = GBTClassifier::new().max_iter(4).subsampling_rate(0.8);
    let fresh = gbt.fit(&s, &train).await.unwrap();
    let (entries, _) = quiver_engine::reuse::usage();
    let first = gbt.fit(&s, &reusable).await.unwrap();
    let (after_first, bytes) = quiver_engine::reuse::usage();
    assert!(after_first > entries, "nothing kept");
    assert!(bytes > 0);
    let second = gbt.fit(&s, &reusable).await.unwrap();
    assert_eq!(quiver_engine::reuse::usage().0, after_first);
    assert_eq!(fresh.trees(), first.trees());
    assert_eq!(first.trees(), second.trees());
    // Other bins: another entry, other trees.
    let coarse = gbt.clone().max_bins(4).fit(&s, &reusable).await.unwrap();
    assert!(quiver_engine::reuse::usage().0 > after_first);
    assert_ne!(coarse.trees(), first.trees());
    // Filtered rows are other rows.
    let fewer = reusable
        .with_dataframe(
            reusable
                .dataframe()
                .clone()
                .filter(datafusion::prelude::col("y").lt(datafusion::prelude::lit(5.0)))
                .unwrap(),
        )
        .unwrap();
    assert!(fewer.reuse_key("any").is_none());
    assert!(reusable.reuse_key("any").unwrap().contains(&key));
}
