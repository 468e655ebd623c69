//! Evaluators: regression metrics against a direct computation and the fit's own summary;
//! multiclass metrics against a worked example; a classifier's one-pass evaluation against its
//! output columns'; both runners.

mod common;
use common::{float_rows, session};

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    ClusteringEvaluator, Estimator, GBTClassifier, KMeans, LinearRegression, LogisticRegression,
    MulticlassClassificationEvaluator, NaiveBayes, NaiveBayesType, Pipeline,
    RandomForestClassifier, RegressionEvaluator, Task, Transformer, VectorAssembler,
};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");
const DIABETES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/diabetes.parquet");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_metrics_match_a_direct_computation() {
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = Dataset::new(s.read(DIABETES).await.unwrap())
            .with_label("target")
            .unwrap()
            .with_features(["bmi", "bp", "s5"])
            .unwrap();
        let model = LinearRegression::new().fit(&s, &ds).await.unwrap();
        let scored = model.transform(&ds).unwrap();
        let m = RegressionEvaluator::new()
            .evaluate(&s, &scored)
            .await
            .unwrap();
        assert_eq!(m.count, 442);
        assert!(
            (m.rmse - model.summary().rmse).abs() < 1e-9 * m.rmse,
            "{runner}"
        );
        assert!((m.r2 - model.summary().r2).abs() < 1e-9, "{runner}");
        // MAE, written out.
        let rows = scored
            .dataframe()
            .clone()
            .select_columns(&["target", "prediction"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let (mut sae, mut n) = (0.0, 0.0);
        for b in &rows {
            let (t, p) = (
                b.column(0).as_primitive::<Float64Type>(),
                b.column(1).as_primitive::<Float64Type>(),
            );
            for r in 0..b.num_rows() {
                sae += (t.value(r) - p.value(r)).abs();
                n += 1.0;
            }
        }
        assert!((m.mae - sae / n).abs() < 1e-9 * m.mae, "{runner}");
        assert!((m.mse - m.rmse * m.rmse).abs() < 1e-9 * m.mse);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiclass_metrics_match_a_worked_example() {
    // labels 0 0 1 1 2 2, predictions 0 1 1 1 2 0.
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Float64, false),
        Field::new("prediction", DataType::Float64, false),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0])),
            Arc::new(Float64Array::from(vec![0.0, 1.0, 1.0, 1.0, 2.0, 0.0])),
        ],
    )
    .unwrap();
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = Dataset::new(
            s.from_batches(vec![b.slice(0, 3), b.slice(3, 3)], 2)
                .unwrap(),
        )
        .with_label("label")
        .unwrap();
        let m = MulticlassClassificationEvaluator::new()
            .evaluate(&s, &ds)
            .await
            .unwrap();
        assert_eq!(m.classes, vec![0.0, 1.0, 2.0]);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-15);
        // Per class precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3; equal shares.
        assert!(
            (m.weighted_precision - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-15,
            "{runner}"
        );
        assert!((m.weighted_recall - 2.0 / 3.0).abs() < 1e-15);
        assert!((m.f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
    }
}

#[tokio::test]
async fn evaluation_needs_a_label_and_clean_predictions() {
    let s = session("embedded");
    let ds = Dataset::new(s.read(DIABETES).await.unwrap());
    let err = RegressionEvaluator::new()
        .prediction_col("bmi")
        .evaluate(&s, &ds)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a label column"), "{err}");
    let labelled = ds.with_label("target").unwrap();
    let err = RegressionEvaluator::new()
        .prediction_col("nope")
        .evaluate(&s, &labelled)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("column 'nope' not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_metrics_match_a_worked_example() {
    use quiver_mllib::BinaryClassificationEvaluator;
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Float64, false),
        Field::new("probability", DataType::Float64, false),
    ]));
    let mk = |s: &QuiverSession, labels: Vec<f64>, scores: Vec<f64>| {
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Float64Array::from(labels)),
                Arc::new(Float64Array::from(scores)),
            ],
        )
        .unwrap();
        let n = b.num_rows();
        Dataset::new(
            s.from_batches(vec![b.slice(0, n / 2), b.slice(n / 2, n - n / 2)], 2)
                .unwrap(),
        )
        .with_label("label")
        .unwrap()
    };
    for runner in ["local", "embedded"] {
        let s = session(runner);
        // Sorted by score: 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0): ROC area 0.75 (as sklearn's
        // roc_auc_score); PR trapezoid from (0, 1): 0.5 + (1/2 + 2/3)/2 · 1/2 = 0.791666…
        let ds = mk(&s, vec![0.0, 0.0, 1.0, 1.0], vec![0.1, 0.4, 0.35, 0.8]);
        let m = BinaryClassificationEvaluator::new()
            .evaluate(&s, &ds)
            .await
            .unwrap();
        assert_eq!(m.count, 4);
        assert!((m.area_under_roc - 0.75).abs() < 1e-15, "{runner}: {m:?}");
        assert!(
            (m.area_under_pr - (0.5 + (0.5 + 2.0 / 3.0) / 4.0)).abs() < 1e-15,
            "{runner}: {m:?}"
        );
        let ll = -((0.9f64).ln() + (0.6f64).ln() + (0.35f64).ln() + (0.8f64).ln()) / 4.0;
        assert!((m.log_loss - ll).abs() < 1e-15);
        // All scores tied: no better than chance.
        let tied = mk(&s, vec![0.0, 1.0, 0.0, 1.0], vec![0.5; 4]);
        assert!(
            (BinaryClassificationEvaluator::new()
                .evaluate(&s, &tied)
                .await
                .unwrap()
                .area_under_roc
                - 0.5)
                .abs()
                < 1e-15
        );
        let err = BinaryClassificationEvaluator::new()
            .evaluate(&s, &mk(&s, vec![0.0, 2.0], vec![0.1, 0.2]))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("value 2") && err.to_string().contains("not 0 or 1"),
            "{err}"
        );
    }
}

/// The silhouette (squared Euclidean) of the digits grouped by their true label, against
/// scikit-learn's `silhouette_score(X, y, metric = "sqeuclidean")` = 0.261453064839 and the
/// within-group sum of squares 1250760.117435 (scripts/kmeans_reference.py), on both runners
/// and several partitionings; then a k-means model's own inertia.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_metrics_match_sklearn_silhouette() {
    for (runner, partitions) in [("local", 1), ("embedded", 1), ("embedded", 3), ("local", 8)] {
        let s = QuiverSession::embedded_with(
            QuiverConfig::default()
                .with_pairs([
                    ("quiver.runner", runner),
                    ("quiver.target_partitions", &partitions.to_string()),
                ])
                .unwrap(),
        )
        .unwrap();
        let digits = Dataset::new(s.read(DIGITS).await.unwrap())
            .with_numeric_features_except(&["label"])
            .unwrap();
        let m = ClusteringEvaluator::new()
            .prediction_col("label")
            .evaluate(&s, &digits)
            .await
            .unwrap();
        assert_eq!(m.count, 1797);
        assert_eq!(m.cluster_sizes.len(), 10);
        assert!(
            (m.silhouette - 0.261453064839).abs() < 1e-9,
            "{runner}/{partitions}: {m:?}"
        );
        assert!(
            (m.within_ss - 1250760.117435).abs() < 1e-6 * 1250760.0,
            "{runner}/{partitions}: {m:?}"
        );
    }
    let s = session("embedded");
    let digits = Dataset::new(s.read(DIGITS).await.unwrap())
        .with_numeric_features_except(&["label"])
        .unwrap();
    let model = KMeans::new()
        .k(10)
        .seed(3)
        .max_iter(100)
        .fit(&s, &digits)
        .await
        .unwrap();
    let m = ClusteringEvaluator::new()
        .evaluate(&s, &model.transform(&digits).unwrap())
        .await
        .unwrap();
    // Converged: the centres are (within tol) the cluster means, so the inertia is the
    // within-cluster SS, which no other centres can beat for the same assignment.
    let inertia = model.summary().inertia;
    assert!(
        (m.within_ss - inertia).abs() < 1e-6 * inertia && m.within_ss <= inertia * (1.0 + 1e-12),
        "{m:?} vs {inertia} ({:?})",
        model.summary().convergence
    );
    assert!(m.silhouette > 0.1 && m.silhouette < 1.0, "{m:?}");
}

#[tokio::test]
async fn clustering_evaluation_names_bad_cluster_columns() {
    let s = QuiverSession::embedded().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("c", DataType::Float64, false),
    ]));
    let mk = |c: Vec<f64>| {
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
                Arc::new(Float64Array::from(c)),
            ],
        )
        .unwrap();
        Dataset::new(s.from_batches(vec![b], 1).unwrap())
            .with_features(["x"])
            .unwrap()
    };
    let eval = ClusteringEvaluator::new().prediction_col("c");
    let err = eval
        .evaluate(&s, &mk(vec![0.0, 0.0, 0.0]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("at least two non-empty clusters"),
        "{err}"
    );
    let err = eval
        .evaluate(&s, &mk(vec![0.0, 1.5, 0.0]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("value 1.5") && err.to_string().contains("'c'"),
        "{err}"
    );
    let err = ClusteringEvaluator::new()
        .evaluate(&s, &mk(vec![0.0, 1.0, 0.0]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("prediction"), "{err}");
    // A cluster of one row scores 0; the others are exact: x = 1, 2 in cluster 0, 3 alone.
    let m = eval.evaluate(&s, &mk(vec![0.0, 0.0, 1.0])).await.unwrap();
    // Row 1: a = 1, b = 4 → 0.75; row 2: a = 1, b = 1 → 0; row 3: alone → 0.
    assert!((m.silhouette - 0.75 / 3.0).abs() < 1e-12, "{m:?}");
    assert_eq!(m.cluster_sizes, vec![2, 1]);
    assert!((m.within_ss - 0.5).abs() < 1e-12);
}

/// A shipped file as Float64 columns, the label `y` and every other column assembled into one
/// `features` vector (what `CREATE MODEL`'s preprocessing makes), in `partitions` partitions.
async fn vector_rows(s: &QuiverSession, file: &str, label: &str, partitions: usize) -> Dataset {
    let b = float_rows(s, file, label).await;
    Dataset::new(s.from_batches(vec![b], partitions).unwrap())
        .with_label("y")
        .unwrap()
        .with_numeric_features_except(&["y"])
        .unwrap()
}

/// The metrics a classifier computes in one pass (scoring and counting each row) against those
/// of its output columns, which the one pass replaces.
async fn assert_one_pass_equals_output_columns(
    s: &QuiverSession,
    model: &dyn Transformer,
    data: &Dataset,
    what: &str,
) -> serde_json::Value {
    assert!(
        model.evaluate_classifier(s, data).is_some(),
        "{what}: no one-pass evaluation"
    );
    let one_pass = Task::Classification
        .evaluate_model(s, model, data)
        .await
        .unwrap();
    let columns = Task::Classification
        .evaluate(s, &model.transform(data).unwrap())
        .await
        .unwrap();
    let (a, b) = (one_pass.as_object().unwrap(), columns.as_object().unwrap());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (k, v) in a {
        let (x, y) = (v.as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-12 * y.abs().max(1.0),
            "{what}: {k} {x} in one pass, {y} from the output columns"
        );
    }
    one_pass
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_evaluated_in_one_pass_equal_their_output_columns() {
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let binary = vector_rows(&s, "breast_cancer.parquet", "label", 3).await;
        let binary = binary.assemble("features").unwrap();
        let digits = vector_rows(&s, "digits.parquet", "label", 2).await;
        let digits = digits.assemble("features").unwrap();
        let what = |m: &str| format!("{m} ({runner})");

        let lr = LogisticRegression::new()
            .max_iter(30)
            .fit(&s, &binary)
            .await
            .unwrap();
        let m = assert_one_pass_equals_output_columns(&s, &lr, &binary, &what("binomial")).await;
        assert!(m["area_under_roc"].as_f64().unwrap() > 0.9, "{m}");
        assert!(m["log_loss"].as_f64().unwrap() > 0.0, "{m}");
        let multinomial = LogisticRegression::new()
            .max_iter(10)
            .fit(&s, &digits)
            .await
            .unwrap();
        let m =
            assert_one_pass_equals_output_columns(&s, &multinomial, &digits, &what("multinomial"))
                .await;
        // Ten classes: no binary metrics.
        assert!(m.get("area_under_roc").is_none(), "{m}");
        assert!(m["accuracy"].as_f64().unwrap() > 0.8, "{m}");
        let nb = NaiveBayes::new()
            .model_type(NaiveBayesType::Gaussian)
            .fit(&s, &binary)
            .await
            .unwrap();
        assert_one_pass_equals_output_columns(&s, &nb, &binary, &what("naive Bayes")).await;
        let forest = RandomForestClassifier::new()
            .num_trees(5)
            .max_depth(4)
            .fit(&s, &digits)
            .await
            .unwrap();
        assert_one_pass_equals_output_columns(&s, &forest, &digits, &what("forest")).await;
        let gbt = GBTClassifier::new()
            .max_iter(5)
            .max_depth(3)
            .fit(&s, &binary)
            .await
            .unwrap();
        assert_one_pass_equals_output_columns(&s, &gbt, &binary, &what("boosted trees")).await;

        // A pipeline whose last stage is a classifier: that stage, on what the stages before
        // it make of the rows (here an assembler).
        let raw = vector_rows(&s, "breast_cancer.parquet", "label", 3).await;
        let names = raw.features().to_vec();
        let pipeline = Pipeline::new()
            .transformer(VectorAssembler::new(&names).output_col("v"))
            .estimator(LogisticRegression::new().max_iter(30))
            .fit(&s, &raw)
            .await
            .unwrap();
        assert_one_pass_equals_output_columns(&s, &pipeline, &raw, &what("pipeline")).await;

        // A classifier that assembles its feature columns itself is evaluated on its output
        // columns, as before.
        let direct = LogisticRegression::new()
            .max_iter(30)
            .fit(&s, &raw)
            .await
            .unwrap();
        assert!(direct.evaluate_classifier(&s, &raw).is_none());
        let m = Task::Classification
            .evaluate_model(&s, &direct, &raw)
            .await
            .unwrap();
        assert!(m["area_under_roc"].as_f64().unwrap() > 0.9, "{m}");
    }
}
