//! LinearRegression on the diabetes data against numpy's least-squares solutions
//! (scripts/make_diabetes.py → data/diabetes_reference.json), on both runners and several
//! partitionings; predictions, persistence and bad input.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    Estimator, LinearRegression, LinearRegressionModel, MllibError, Transformer, load, save,
};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/diabetes.parquet");
const REF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/diabetes_reference.json"
);

fn reference(key: &str) -> (Vec<f64>, f64) {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(REF).unwrap()).unwrap();
    let c = r[key]["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    (c, r[key]["intercept"].as_f64().unwrap())
}

fn session(runner: &str, partitions: usize) -> QuiverSession {
    let config = QuiverConfig::default()
        .with_pairs([("quiver.runner", runner)])
        .unwrap()
        .with_target_partitions(partitions)
        .with_batch_size(100);
    QuiverSession::embedded_with(config).unwrap()
}

/// The diabetes data split into 4 partitions, with the weight column `w = 1 + row % 4`.
async fn diabetes(s: &QuiverSession) -> Dataset {
    let batches = s.read(DATA).await.unwrap().collect().await.unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let w: Vec<f64> = (0..all.num_rows()).map(|i| 1.0 + (i % 4) as f64).collect();
    let mut fields: Vec<Field> = all
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("w", DataType::Float64, false));
    let mut cols = all.columns().to_vec();
    cols.push(Arc::new(Float64Array::from(w)));
    let with_w = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let parts: Vec<RecordBatch> = (0..442)
        .step_by(111)
        .map(|o| with_w.slice(o, 111.min(442 - o)))
        .collect();
    Dataset::new(s.from_batches(parts, 4).unwrap())
        .with_label("target")
        .unwrap()
        .with_weight("w")
        .unwrap()
        .with_features([
            "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6",
        ])
        .unwrap()
}

fn assert_close(got: &LinearRegressionModel, want: &(Vec<f64>, f64), tol: f64, what: &str) {
    for (j, (g, w)) in got.coefficients().iter().zip(&want.0).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: coefficient {j}: {g} vs {w}"
        );
    }
    assert!(
        (got.intercept() - want.1).abs() <= tol * want.1.abs().max(1.0),
        "{what}: intercept {} vs {}",
        got.intercept(),
        want.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_numpy_least_squares_on_both_runners_and_partitionings() {
    let cases = [
        ("ols", LinearRegression::new()),
        ("ols_weighted", LinearRegression::new().weighted(true)),
        (
            "ridge_0.1",
            LinearRegression::new()
                .reg_param(0.1)
                .standardization(false),
        ),
        (
            "ridge_0.1_standardized",
            LinearRegression::new().reg_param(0.1),
        ),
    ];
    for (key, est) in &cases {
        let want = reference(key);
        let mut fits = Vec::new();
        for (runner, partitions) in [
            ("local", 1),
            ("embedded", 1),
            ("embedded", 3),
            ("embedded", 8),
        ] {
            let s = session(runner, partitions);
            let m = est.fit(&s, &diabetes(&s).await).await.unwrap();
            assert_close(&m, &want, 1e-10, &format!("{key} {runner}/{partitions}"));
            fits.push(m);
        }
        for m in &fits[1..] {
            assert_close(
                m,
                &(fits[0].coefficients().to_vec(), fits[0].intercept()),
                1e-9,
                "runners agree",
            );
        }
        let summary = fits[0].summary();
        assert_eq!(summary.iterations, 1);
        assert_eq!(summary.rows, 442);
        assert!(
            summary.r2 > 0.4 && summary.r2 < 0.6,
            "{key}: r2 {}",
            summary.r2
        );
    }
}

/// The elastic net (OWL-QN on the co-moments' quadratic form) against scikit-learn's
/// coordinate-descent `ElasticNet` (scripts/make_diabetes.py); the L1 part zeroes the same
/// coefficients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_net_matches_sklearn() {
    for key in ["elastic_net_5_0.5", "lasso_0.5_standardized"] {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(REF).unwrap()).unwrap();
        let r = &r[key];
        let est = LinearRegression::new()
            .reg_param(r["reg_param"].as_f64().unwrap())
            .elastic_net_param(r["elastic_net_param"].as_f64().unwrap())
            .standardization(r["standardization"].as_bool().unwrap());
        let want = reference(key);
        for (runner, partitions) in [("local", 1), ("embedded", 3)] {
            let s = session(runner, partitions);
            let m = est.fit(&s, &diabetes(&s).await).await.unwrap();
            assert_close(&m, &want, 1e-10, &format!("{key} {runner}/{partitions}"));
            for (j, (g, w)) in m.coefficients().iter().zip(&want.0).enumerate() {
                assert_eq!(
                    *g == 0.0,
                    *w == 0.0,
                    "{key}: coefficient {j} zero in one only: {g} vs {w}"
                );
            }
            let summary = m.summary();
            assert!(summary.iterations > 1, "{key}: {summary:?}");
            assert!(
                summary
                    .objective_history
                    .windows(2)
                    .all(|w| w[1] <= w[0] + 1e-12),
                "{key}: {summary:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_match_the_coefficients_and_survive_save_and_load() {
    let s = session("embedded", 2);
    let ds = diabetes(&s).await;
    let model = LinearRegression::new().fit(&s, &ds).await.unwrap();
    let out = model.transform(&ds).unwrap();
    let batches = out
        .dataframe()
        .clone()
        .select_columns(&[
            "age",
            "sex",
            "bmi",
            "bp",
            "s1",
            "s2",
            "s3",
            "s4",
            "s5",
            "s6",
            "target",
            "prediction",
        ])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut sse = 0.0;
    let mut n = 0;
    for b in &batches {
        for r in 0..b.num_rows() {
            let x: Vec<f64> = (0..10)
                .map(|j| b.column(j).as_primitive::<Float64Type>().value(r))
                .collect();
            let want = x
                .iter()
                .zip(model.coefficients())
                .map(|(a, c)| a * c)
                .sum::<f64>()
                + model.intercept();
            let got = b.column(11).as_primitive::<Float64Type>().value(r);
            assert!((got - want).abs() < 1e-9 * want.abs().max(1.0));
            sse += (b.column(10).as_primitive::<Float64Type>().value(r) - got).powi(2);
            n += 1;
        }
    }
    assert_eq!(n, 442);
    assert!(((sse / 442.0).sqrt() - model.summary().rmse).abs() < 1e-9 * model.summary().rmse);

    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    let meta = save(&store, "diabetes_lr", &model).await.unwrap();
    assert_eq!(meta.label.as_deref(), Some("target"));
    assert!(meta.metrics["r2"].as_f64().unwrap() > 0.5);
    let back: LinearRegressionModel = load(&store, "diabetes_lr", None).await.unwrap();
    assert_eq!(back, model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_data_are_named() {
    let s = session("embedded", 2);
    let ds = diabetes(&s).await;
    let err = LinearRegression::new()
        .reg_param(-1.0)
        .fit(&s, &ds)
        .await
        .unwrap_err();
    assert!(matches!(err, MllibError::NegativeRegParam(_)));
    assert_eq!(
        err.to_string(),
        "invalid parameter 'reg_param': -1 is negative (or not finite); it must be >= 0"
    );
    let err = LinearRegression::new()
        .elastic_net_param(1.5)
        .fit(&s, &ds)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid parameter 'elastic_net_param': 1.5 is outside [0, 1]"
    );
    let unlabeled = Dataset::new(ds.dataframe().clone())
        .with_features(["age", "bmi"])
        .unwrap();
    let err = LinearRegression::new()
        .fit(&s, &unlabeled)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a label column"), "{err}");
    // Two identical features: without regularisation the least-norm solution (their weight
    // split evenly, as scikit-learn's lstsq gives), with it the ridge solution.
    let df = ds
        .dataframe()
        .clone()
        .with_column("bmi_copy", datafusion::prelude::col("bmi"))
        .unwrap();
    let twins = Dataset::new(df)
        .with_label("target")
        .unwrap()
        .with_features(["bmi", "bmi_copy", "bp"])
        .unwrap();
    let m = LinearRegression::new().fit(&s, &twins).await.unwrap();
    let single = LinearRegression::new()
        .fit(
            &s,
            &ds.clone()
                .with_label("target")
                .unwrap()
                .with_features(["bmi", "bp"])
                .unwrap(),
        )
        .await
        .unwrap();
    let c = m.coefficients();
    assert!(
        (c[0] - c[1]).abs() < 1e-6 * c[0].abs()
            && (c[0] + c[1] - single.coefficients()[0]).abs() < 1e-6 * c[0].abs()
            && (c[2] - single.coefficients()[1]).abs() < 1e-6 * c[2].abs(),
        "{c:?} vs {:?}",
        single.coefficients()
    );
    assert!((m.intercept() - single.intercept()).abs() < 1e-6 * single.intercept().abs());
    let convergence = &m.summary().convergence;
    assert!(
        convergence.contains("collinear") && convergence.contains("bmi"),
        "{convergence}"
    );
    let m = LinearRegression::new()
        .reg_param(0.01)
        .fit(&s, &twins)
        .await
        .unwrap();
    assert!(
        (m.coefficients()[0] - m.coefficients()[1]).abs() < 1e-9,
        "{:?}",
        m.coefficients()
    );
    // A NaN label is named.
    let df = ds
        .dataframe()
        .clone()
        .with_column(
            "target",
            datafusion::prelude::when(
                datafusion::prelude::col("age").eq(datafusion::prelude::lit(59.0)),
                datafusion::prelude::lit(f64::NAN),
            )
            .otherwise(datafusion::prelude::col("target"))
            .unwrap(),
        )
        .unwrap();
    let nan_label = Dataset::new(df)
        .with_label("target")
        .unwrap()
        .with_features(["age", "bmi"])
        .unwrap();
    let err = LinearRegression::new()
        .fit(&s, &nan_label)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("NaN in column 'target' at row 0"),
        "{err}"
    );
}
