//! LogisticRegression against scikit-learn (scripts/make_logreg_reference.py →
//! data/logreg_reference.json): the same split, scaling and objective; binomial on the
//! breast-cancer data, multinomial on digits.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    Estimator, LogisticRegression, LogisticRegressionModel, MllibError,
    MulticlassClassificationEvaluator, Pipeline, PipelineModel, StandardScaler, Transformer,
    VectorAssembler, load, save,
};
use serde_json::Value;

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/logreg_reference.json");

fn reference(key: &str) -> Value {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(REF).unwrap()).unwrap();
    r[key].clone()
}

/// Train (row % 5 != 0) and test (row % 5 == 0) datasets, label cast to Float64.
async fn split(s: &QuiverSession, file: &str, label: &str) -> (Dataset, Dataset) {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let batches = s.read(&path).await.unwrap().collect().await.unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let n = all.num_rows();
    let mut fields: Vec<Field> = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in all.schema().fields().iter().zip(all.columns()) {
        if f.name() == label {
            fields.push(Field::new("y", DataType::Float64, false));
            cols.push(arrow::compute::cast(c, &DataType::Float64).unwrap());
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let is_test = BooleanArray::from((0..n).map(|i| i % 5 == 0).collect::<Vec<_>>());
    let test = arrow::compute::filter_record_batch(&b, &is_test).unwrap();
    let train =
        arrow::compute::filter_record_batch(&b, &arrow::compute::not(&is_test).unwrap()).unwrap();
    let ds = |batch: RecordBatch| {
        Dataset::new(s.from_batches(vec![batch], 1).unwrap())
            .with_label("y")
            .unwrap()
    };
    (ds(train), ds(test))
}

async fn check_against_sklearn(
    file: &str,
    label: &str,
    features: Vec<String>,
    key: &str,
    runner: &str,
) -> PipelineModel {
    let s = QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.runner", runner)])
            .unwrap(),
    )
    .unwrap();
    let (train, test) = split(&s, file, label).await;
    let r = reference(key);
    let n_train = r["n_train"].as_f64().unwrap();
    let pipeline = Pipeline::new()
        .transformer(VectorAssembler::new(&features))
        .estimator(StandardScaler::new().with_mean(true))
        .estimator(
            LogisticRegression::new()
                .reg_param(1.0 / n_train) // sklearn's C = 1
                .standardization(false)
                .max_iter(2000)
                .tol(1e-14),
        );
    let model = pipeline.fit(&s, &train).await.unwrap();
    let eval = MulticlassClassificationEvaluator::new();
    let train_acc = eval
        .evaluate(&s, &model.transform(&train).unwrap())
        .await
        .unwrap()
        .accuracy;
    let test_acc = eval
        .evaluate(&s, &model.transform(&test).unwrap())
        .await
        .unwrap()
        .accuracy;
    let want_test = r["test_accuracy"].as_f64().unwrap();
    let want_train = r["train_accuracy"].as_f64().unwrap();
    assert!(
        (test_acc - want_test).abs() <= 0.01,
        "{key}/{runner}: test accuracy {test_acc} vs sklearn {want_test}"
    );
    assert!(
        (train_acc - want_train).abs() <= 0.01,
        "{key}/{runner}: train accuracy {train_acc} vs {want_train}"
    );
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binomial_matches_sklearn_on_breast_cancer() {
    let features: Vec<String> = (0..30).map(|j| format!("f{j}")).collect();
    for runner in ["local", "embedded"] {
        let model = check_against_sklearn(
            "breast_cancer.parquet",
            "label",
            features.clone(),
            "breast_cancer",
            runner,
        )
        .await;
        // Coefficients: fit the last stage alone on the scaled training data and compare.
        let s = QuiverSession::embedded().unwrap();
        let (train, _) = split(&s, "breast_cancer.parquet", "label").await;
        let scaled = Pipeline::new()
            .transformer(VectorAssembler::new(&features))
            .estimator(StandardScaler::new().with_mean(true))
            .fit(&s, &train)
            .await
            .unwrap()
            .transform(&train)
            .unwrap();
        let r = reference("breast_cancer");
        let lr = LogisticRegression::new()
            .reg_param(1.0 / r["n_train"].as_f64().unwrap())
            .standardization(false)
            .max_iter(2000)
            .tol(1e-14)
            .fit(&s, &scaled)
            .await
            .unwrap();
        let want: Vec<f64> = r["coefficients"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (j, (g, w)) in lr.coefficients()[0].iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "coefficient {j}: {g} vs {w}"
            );
        }
        let icpt = r["intercepts"][0].as_f64().unwrap();
        assert!((lr.intercepts()[0] - icpt).abs() <= 1e-4 * icpt.abs().max(1.0));
        assert!(lr.summary().converged, "{:?}", lr.summary());
        // Probabilities: a well-separated problem ranks almost perfectly.
        let scored = lr.transform(&scaled).unwrap();
        let auc = quiver_mllib::BinaryClassificationEvaluator::new()
            .evaluate(&s, &scored)
            .await
            .unwrap();
        assert!(auc.area_under_roc > 0.99 && auc.log_loss < 0.1, "{auc:?}");
        assert_eq!(model.stages().len(), 3);
    }
}

/// Elastic net and pure L1 (OWL-QN) against scikit-learn's saga solver on the scaled
/// breast-cancer training data: the same coefficients (1e-4) and the same zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_net_matches_sklearn_saga_on_breast_cancer() {
    let features: Vec<String> = (0..30).map(|j| format!("f{j}")).collect();
    for runner in ["local", "embedded"] {
        let s = QuiverSession::embedded_with(
            QuiverConfig::default()
                .with_pairs([("quiver.runner", runner)])
                .unwrap(),
        )
        .unwrap();
        let (train, _) = split(&s, "breast_cancer.parquet", "label").await;
        let scaled = Pipeline::new()
            .transformer(VectorAssembler::new(&features))
            .estimator(StandardScaler::new().with_mean(true))
            .fit(&s, &train)
            .await
            .unwrap()
            .transform(&train)
            .unwrap();
        for key in ["breast_cancer_elastic_net", "breast_cancer_l1"] {
            let r = reference(key);
            let lambda = 1.0 / (r["C"].as_f64().unwrap() * r["n_train"].as_f64().unwrap());
            let lr = LogisticRegression::new()
                .reg_param(lambda)
                .elastic_net_param(r["l1_ratio"].as_f64().unwrap())
                .standardization(false)
                .max_iter(5000)
                .tol(1e-15)
                .fit(&s, &scaled)
                .await
                .unwrap();
            let want: Vec<f64> = r["coefficients"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = lr.coefficients()[0];
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{key}/{runner}: coefficient {j}: {g} vs {w}"
                );
                assert_eq!(
                    *g == 0.0,
                    *w == 0.0,
                    "{key}/{runner}: coefficient {j} is zero in one fit only: {g} vs {w}; {:?}",
                    lr.summary()
                );
            }
            let icpt = r["intercepts"][0].as_f64().unwrap();
            assert!(
                (lr.intercepts()[0] - icpt).abs() <= 1e-4 * icpt.abs().max(1.0),
                "{key}/{runner}: intercept {} vs {icpt}",
                lr.intercepts()[0]
            );
            let history = &lr.summary().objective_history;
            assert!(history.windows(2).all(|w| w[1] <= w[0]), "{history:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multinomial_matches_sklearn_accuracy_on_digits_and_persists() {
    let features: Vec<String> = (0..64).map(|j| format!("pixel_{j}")).collect();
    let model =
        check_against_sklearn("digits.parquet", "label", features, "digits", "embedded").await;
    let s = QuiverSession::embedded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    save(&store, "digits_lr", &model).await.unwrap();
    let back: PipelineModel = load(&store, "digits_lr", None).await.unwrap();
    let (_, test) = split(&s, "digits.parquet", "label").await;
    let eval = MulticlassClassificationEvaluator::new();
    let a = eval
        .evaluate(&s, &model.transform(&test).unwrap())
        .await
        .unwrap();
    let b = eval
        .evaluate(&s, &back.transform(&test).unwrap())
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.confusion.len(), 10);
    // The model alone round-trips too.
    let (train, _) = split(&s, "digits.parquet", "label").await;
    let lr = LogisticRegression::new()
        .max_iter(5)
        .fit(&s, &train.with_numeric_features_except(&["y"]).unwrap())
        .await
        .unwrap();
    save(&store, "digits_lr_alone", &lr).await.unwrap();
    let back: LogisticRegressionModel = load(&store, "digits_lr_alone", None).await.unwrap();
    assert_eq!(back, lr);
    assert_eq!(back.num_classes(), 10);
    assert_eq!(back.summary().iterations, 5);
}

/// The three output columns agree: probability = softmax(raw) (sigmoid of the margin for
/// binomial, whose raw prediction is [−m, m]) and prediction = argmax; renamed columns are used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_prediction_probability_and_prediction_agree() {
    let s = QuiverSession::embedded().unwrap();
    let (train, _) = split(&s, "digits.parquet", "label").await;
    let train = train.with_numeric_features_except(&["y"]).unwrap();
    let binary = Dataset::new(
        train
            .dataframe()
            .clone()
            .filter(datafusion::prelude::col("y").lt(datafusion::prelude::lit(2.0)))
            .unwrap(),
    )
    .with_numeric_features_except(&["y"])
    .unwrap()
    .with_label("y")
    .unwrap();
    for (data, classes) in [(train, 10), (binary, 2)] {
        let model = LogisticRegression::new()
            .max_iter(10)
            .raw_prediction_col("margins")
            .probability_col("p")
            .fit(&s, &data)
            .await
            .unwrap();
        let out = model.transform(&data).unwrap().dataframe().clone();
        let batches = out
            .select_columns(&["margins", "p", "prediction"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = 0;
        for b in &batches {
            let (raw, _) = quiver_engine::vector::vector_values(b.column(0), "margins").unwrap();
            let (prob, _) = quiver_engine::vector::vector_values(b.column(1), "p").unwrap();
            let pred = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
            for r in 0..b.num_rows() {
                let m = &raw[r * classes..(r + 1) * classes];
                let p = &prob[r * classes..(r + 1) * classes];
                if classes == 2 {
                    assert_eq!(m[0], -m[1]);
                }
                let max = m.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = m.iter().map(|v| (v - max).exp()).sum();
                for k in 0..classes {
                    // Binomial: sigmoid(m) = softmax([−m/2, m/2]) ≠ softmax([−m, m]).
                    let want = if classes == 2 {
                        1.0 / (1.0 + (-(m[k] - m[1 - k]) / 2.0).exp())
                    } else {
                        (m[k] - max).exp() / z
                    };
                    assert!((p[k] - want).abs() < 1e-12, "row {r}: {p:?} vs raw {m:?}");
                }
                let argmax = (0..classes).max_by(|a, b| m[*a].total_cmp(&m[*b])).unwrap();
                assert_eq!(pred.value(r), argmax as f64, "row {r}: {m:?}");
                rows += 1;
            }
        }
        assert!(rows > 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_labels_and_params_are_named() {
    let s = QuiverSession::embedded().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let mk = |y: Vec<f64>| {
        let n = y.len();
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Float64Array::from(
                    (0..n).map(|i| i as f64).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(y)),
            ],
        )
        .unwrap();
        Dataset::new(s.from_batches(vec![b], 1).unwrap())
            .with_features(["x"])
            .unwrap()
            .with_label("y")
            .unwrap()
    };
    let err = LogisticRegression::new()
        .fit(&s, &mk(vec![0.0, 0.5, 1.0]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("value 0.5") && err.to_string().contains("not a class index"),
        "{err}"
    );
    let err = LogisticRegression::new()
        .fit(&s, &mk(vec![1.0, 1.0, 1.0]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("classification needs at least two"),
        "{err}"
    );
    let err = LogisticRegression::new()
        .reg_param(-0.1)
        .fit(&s, &mk(vec![0.0, 1.0]))
        .await
        .unwrap_err();
    assert!(matches!(err, MllibError::NegativeRegParam(_)));
    let err = LogisticRegression::new()
        .elastic_net_param(2.0)
        .check()
        .unwrap_err();
    assert!(matches!(err, MllibError::ElasticNetOutOfRange(_)));
    let err = LogisticRegression::new()
        .probability_col("prediction")
        .check()
        .unwrap_err();
    assert!(err.to_string().contains("distinct names"), "{err}");
    // More features at predict than at fit.
    let m = LogisticRegression::new()
        .fit(&s, &mk(vec![0.0, 1.0, 0.0, 1.0]))
        .await
        .unwrap();
    let wider = mk(vec![0.0, 1.0]).with_features(["x", "y"]).unwrap();
    let err = m
        .transform(&wider)
        .unwrap()
        .dataframe()
        .clone()
        .collect()
        .await
        .unwrap_err();
    assert_eq!(
        quiver_engine::QuiverError::from(err).to_string(),
        "logistic_regression_raw_prediction expects 1 features per row, got 2"
    );
}

/// A local-runner session and breast cancer's training rows with every column but the label
/// `y` as features (and those features' names).
async fn local_breast_cancer() -> (QuiverSession, Dataset, Vec<String>) {
    let s = QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.runner", "local")])
            .unwrap(),
    )
    .unwrap();
    let (train, _) = split(&s, "breast_cancer.parquet", "label").await;
    let features: Vec<String> = train.columns().into_iter().filter(|c| c != "y").collect();
    let train = train.with_features(&features).unwrap();
    (s, train, features)
}

/// Rows marked reusable (a search's kept split) summarise their classes and features once per
/// process: fits after the first, with other hyperparameters, equal fits that summarise again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusable_rows_share_the_set_up_pass() {
    let (s, train, _) = local_breast_cancer().await;
    let reusable = train
        .clone()
        .reusable(format!("set-up test {}", std::process::id()));
    for reg in [0.1, 0.01, 0.001] {
        let lr = LogisticRegression::new().reg_param(reg).max_iter(50);
        let kept = lr.fit(&s, &reusable).await.unwrap();
        let fresh = lr.fit(&s, &train).await.unwrap();
        assert_eq!(kept.coefficients(), fresh.coefficients(), "reg {reg}");
        assert_eq!(kept.intercepts(), fresh.intercepts(), "reg {reg}");
    }
}

/// Rows that come with their features' moments (as `CREATE MODEL`'s one read gives them) fit
/// without summarising the features: with the true moments the same model as a fit that
/// summarises (to rounding: the moments are summed in another order), through an assembled
/// vector too; the moments are what the fit standardises by (other moments, another model);
/// a weighted fit ignores them, and other features drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_feature_moments_replace_the_summary() {
    let (s, train, features) = local_breast_cancer().await;
    let summary = s.summarize(&train, s.runner()).await.unwrap();
    let moments = |scale: f64| {
        quiver_engine::FeatureMoments::new(
            summary.count,
            summary.mean.clone(),
            summary.std.iter().map(|v| v * scale).collect(),
        )
    };
    let known = train.clone().with_feature_moments(moments(1.0));
    assert!(known.feature_moments().is_some());
    let assembled = known.clone().assemble("v").unwrap();
    let carried = assembled
        .feature_moments()
        .expect("assembling keeps the values");
    assert_eq!((&carried.mean, &carried.std), (&summary.mean, &summary.std));
    assert!(
        known
            .clone()
            .with_features(&features[..3])
            .unwrap()
            .feature_moments()
            .is_none()
    );
    let lr = LogisticRegression::new().reg_param(0.01).max_iter(100);
    let fresh = lr.fit(&s, &train).await.unwrap();
    let close = |a: &[f64], b: &[f64], tol: f64| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * y.abs().max(1.0))
    };
    for data in [&known, &assembled] {
        let m = lr.fit(&s, data).await.unwrap();
        assert!(close(
            &m.coefficients().concat(),
            &fresh.coefficients().concat(),
            1e-7
        ));
        assert!(close(m.intercepts(), fresh.intercepts(), 1e-7));
        assert_eq!(m.summary().feature_std, summary.std);
    }
    let other = lr
        .fit(&s, &train.clone().with_feature_moments(moments(3.0)))
        .await
        .unwrap();
    assert!(!close(
        &other.coefficients().concat(),
        &fresh.coefficients().concat(),
        1e-3
    ));
    // Weighted: the moments are unweighted, so the fit summarises.
    let weighted = train
        .dataframe()
        .clone()
        .with_column("w", datafusion::prelude::lit(2.0))
        .unwrap();
    let weighted = train
        .with_dataframe(weighted)
        .unwrap()
        .with_weight("w")
        .unwrap();
    let lr = lr.weighted(true);
    let want = lr.fit(&s, &weighted).await.unwrap();
    let got = lr
        .fit(&s, &weighted.with_feature_moments(moments(3.0)))
        .await
        .unwrap();
    assert_eq!(got.coefficients(), want.coefficients());
}
