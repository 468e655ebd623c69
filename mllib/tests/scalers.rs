//! StandardScaler and MinMaxScaler: fitted values, transformed data, both runners, persistence,
//! parameter checks and load errors.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession, Runner};
use quiver_mllib::{
    Estimator, MinMaxScaler, MllibError, StandardScaler, StandardScalerModel, Transformer, load,
    save,
};

mod common;

fn session(runner: &str) -> QuiverSession {
    QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.runner", runner)])
            .unwrap(),
    )
    .unwrap()
}

/// Every value of the output vector column, row-major.
async fn output(ds: &Dataset, col: &str) -> Vec<f64> {
    let batches = ds
        .dataframe()
        .clone()
        .select_columns(&[col])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let l = b.column(0).as_fixed_size_list();
        out.extend_from_slice(
            &l.values().as_primitive::<Float64Type>().values()
                [..l.len() * l.value_length() as usize],
        );
    }
    out
}

/// A small table with a closed form: x = 1..=5 (mean 3, sample std √2.5) and a constant column.
fn small(s: &QuiverSession) -> Dataset {
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("c", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0])),
            Arc::new(Float64Array::from(vec![7.0; 5])),
        ],
    )
    .unwrap();
    Dataset::new(s.from_batches(vec![batch], 1).unwrap())
        .with_features(["x", "c"])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_scaler_matches_the_closed_form() {
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = small(&s);
        let model = StandardScaler::new()
            .with_mean(true)
            .fit(&s, &ds)
            .await
            .unwrap();
        assert_eq!(model.mean(), &[3.0, 7.0]);
        assert!((model.std()[0] - 2.5f64.sqrt()).abs() < 1e-15);
        let out = model.transform(&ds).unwrap();
        assert_eq!(out.features(), &["scaled_features".to_string()]);
        let v = output(&out, "scaled_features").await;
        let sd = 2.5f64.sqrt();
        let want: Vec<f64> = [1.0, 2.0, 3.0, 4.0, 5.0]
            .iter()
            .flat_map(|x| [(x - 3.0) / sd, 0.0])
            .collect();
        for (g, w) in v.iter().zip(&want) {
            assert!((g - w).abs() < 1e-15, "{runner}: {v:?}");
        }
        // Spark's default: no centring.
        let scaled_only = StandardScaler::new()
            .fit(&s, &ds)
            .await
            .unwrap()
            .transform(&ds)
            .unwrap();
        let v = output(&scaled_only, "scaled_features").await;
        assert!((v[0] - 1.0 / sd).abs() < 1e-15);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standardised_digits_have_zero_mean_and_unit_std_on_both_runners() {
    let mut fitted: Vec<StandardScalerModel> = Vec::new();
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = common::digits(&s).await;
        let model = StandardScaler::new()
            .with_mean(true)
            .fit(&s, &ds)
            .await
            .unwrap();
        let scaled = model.transform(&ds).unwrap();
        let summary = s.summarize(&scaled, Runner::Embedded).await.unwrap();
        for j in 0..64 {
            assert!(
                summary.mean[j].abs() < 1e-12,
                "{runner} mean[{j}] = {}",
                summary.mean[j]
            );
            let want = if model.std()[j] > 0.0 { 1.0 } else { 0.0 };
            assert!(
                (summary.std[j] - want).abs() < 1e-12,
                "{runner} std[{j}] = {}",
                summary.std[j]
            );
        }
        fitted.push(model);
    }
    for j in 0..64 {
        let (a, b) = (&fitted[0], &fitted[1]);
        assert!((a.mean()[j] - b.mean()[j]).abs() <= 1e-12 * a.mean()[j].abs().max(1.0));
        assert!((a.std()[j] - b.std()[j]).abs() <= 1e-12 * a.std()[j].abs().max(1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_max_scaler_maps_to_the_range_and_constants_to_the_middle() {
    let s = session("embedded");
    let ds = small(&s);
    let model = MinMaxScaler::new()
        .min(-1.0)
        .max(1.0)
        .output_col("mm")
        .fit(&s, &ds)
        .await
        .unwrap();
    assert_eq!(
        (model.original_min(), model.original_max()),
        (&[1.0, 7.0][..], &[5.0, 7.0][..])
    );
    let v = output(&model.transform(&ds).unwrap(), "mm").await;
    assert_eq!(v, vec![-1.0, 0.0, -0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_models_reload_and_transform_identically() {
    let s = session("embedded");
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    let ds = common::digits(&s).await;
    let model = StandardScaler::new()
        .with_mean(true)
        .fit(&s, &ds)
        .await
        .unwrap();
    let meta = save(&store, "digits_scaler", &model).await.unwrap();
    assert_eq!(
        (meta.kind.as_str(), meta.format_version, meta.features.len()),
        ("standard_scaler", 1, 64)
    );
    let back: StandardScalerModel = load(&store, "digits_scaler", None).await.unwrap();
    assert_eq!(back, model);
    assert_eq!(
        output(&model.transform(&ds).unwrap(), "scaled_features").await,
        output(&back.transform(&ds).unwrap(), "scaled_features").await
    );

    let mm = MinMaxScaler::new().fit(&s, &ds).await.unwrap();
    save(&store, "digits_minmax", &mm).await.unwrap();
    let back: quiver_mllib::MinMaxScalerModel = load(&store, "digits_minmax", None).await.unwrap();
    assert_eq!(back, mm);

    // Another kind, and a newer format, are refused with clear errors.
    let err = load::<StandardScalerModel>(&store, "digits_minmax", None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "model 'digits_minmax' is a min_max_scaler, not a standard_scaler"
    );
    let meta_path = dir.path().join("digits_scaler/v000001/metadata.json");
    let text = std::fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 99");
    std::fs::write(&meta_path, text).unwrap();
    let err = load::<StandardScalerModel>(&store, "digits_scaler", None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "model 'digits_scaler' (standard_scaler) has format version 99; this build reads up to 1"
    );
}

#[tokio::test]
async fn parameters_are_checked_before_any_data_is_read() {
    let s = session("embedded");
    // A dataset whose reading fails ('oops' is no number): the check must come first.
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(arrow::array::StringArray::from(vec!["oops"]))],
    )
    .unwrap();
    let df = s
        .from_batches(vec![batch], 1)
        .unwrap()
        .select(vec![
            datafusion::prelude::cast(datafusion::prelude::col("s"), DataType::Float64).alias("f"),
        ])
        .unwrap();
    let ds = Dataset::new(df).with_features(["f"]).unwrap();
    assert!(
        StandardScaler::new().fit(&s, &ds).await.is_err(),
        "reading this dataset fails"
    );
    let err = MinMaxScaler::new()
        .min(1.0)
        .max(1.0)
        .fit(&s, &ds)
        .await
        .unwrap_err();
    assert!(matches!(err, MllibError::MinNotBelowMax { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid parameters: min (1) must be below max (1)"
    );
    assert!(MinMaxScaler::new().min(f64::NAN).check().is_err());
    let err = StandardScaler::new()
        .output_col(" ")
        .fit(&s, &ds)
        .await
        .unwrap_err();
    assert!(matches!(err, MllibError::EmptyOutputColumn), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_or_more_features_at_transform_than_at_fit_is_an_error() {
    let s = session("embedded");
    let ds = small(&s);
    let model = StandardScaler::new().fit(&s, &ds).await.unwrap();
    let narrower = Dataset::new(ds.dataframe().clone())
        .with_features(["x"])
        .unwrap();
    let out = model.transform(&narrower).unwrap();
    let err = out.dataframe().clone().collect().await.unwrap_err();
    let err = quiver_engine::QuiverError::from(err);
    assert_eq!(
        err.to_string(),
        "standard_scaler expects 2 features per row, got 1"
    );
}
