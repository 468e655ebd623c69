//! Pipelines: stages fitted in order, applied in order, persisted as one model.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use quiver_engine::{Dataset, QuiverConfig, QuiverSession, Runner};
use quiver_mllib::{
    Estimator, MinMaxScaler, MllibError, Pipeline, PipelineModel, StandardScaler,
    StandardScalerModel, Transformer, VectorAssembler, load, save,
};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");

async fn rows(ds: &Dataset, col: &str) -> Vec<f64> {
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

fn pipeline() -> Pipeline {
    let pixels: Vec<String> = (0..64).map(|i| format!("pixel_{i}")).collect();
    Pipeline::new()
        .transformer(VectorAssembler::new(&pixels))
        .estimator(StandardScaler::new().with_mean(true).output_col("std"))
        .estimator(MinMaxScaler::new().output_col("unit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_fits_in_order_and_round_trips_through_the_store() {
    let mut outputs = Vec::new();
    for runner in ["local", "embedded"] {
        let s = QuiverSession::embedded_with(
            QuiverConfig::default()
                .with_pairs([("quiver.runner", runner)])
                .unwrap(),
        )
        .unwrap();
        let raw = Dataset::new(s.read(DIGITS).await.unwrap())
            .with_label("label")
            .unwrap();
        let model = pipeline().fit(&s, &raw).await.unwrap();
        assert_eq!(model.stages().len(), 3);
        let out = model.transform(&raw).unwrap();
        assert_eq!(out.features(), &["unit".to_string()]);
        assert_eq!(out.label(), Some("label"));
        // The min-max stage was fitted on standardised data, so every output lies in [0, 1]
        // and each non-constant feature reaches both ends.
        let summary = s.summarize(&out, Runner::Embedded).await.unwrap();
        for j in 0..64 {
            assert!(summary.min[j] >= 0.0 && summary.max[j] <= 1.0);
            if summary.variance[j] > 0.0 {
                assert!(
                    summary.min[j].abs() < 1e-12 && (summary.max[j] - 1.0).abs() < 1e-12,
                    "feature {j}"
                );
            }
        }
        let values = rows(&out, "unit").await;

        let dir = tempfile::tempdir().unwrap();
        let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
        let meta = save(&store, "digits_pipeline", &model).await.unwrap();
        assert_eq!(meta.kind, "pipeline");
        assert_eq!(
            meta.parts.len(),
            2,
            "one stats part per fitted scaler: {:?}",
            meta.parts
        );
        let back: PipelineModel = load(&store, "digits_pipeline", None).await.unwrap();
        assert_eq!(
            rows(&back.transform(&raw).unwrap(), "unit").await,
            values,
            "{runner}"
        );
        // A pipeline is not a scaler.
        let err = load::<StandardScalerModel>(&store, "digits_pipeline", None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "model 'digits_pipeline' is a pipeline, not a standard_scaler"
        );
        // A stage of a kind this build does not know.
        let path = dir.path().join("digits_pipeline/v000001/metadata.json");
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "\"kind\": \"min_max_scaler\"",
            "\"kind\": \"mystery\"",
            1,
        );
        std::fs::write(&path, text).unwrap();
        let err = load::<PipelineModel>(&store, "digits_pipeline", None)
            .await
            .unwrap_err();
        assert!(matches!(err, MllibError::UnknownModelKind { .. }), "{err}");
        assert!(err.to_string().contains("'mystery'"), "{err}");
        outputs.push(values);
    }
    assert_eq!(outputs[0].len(), outputs[1].len());
    for (a, b) in outputs[0].iter().zip(&outputs[1]) {
        assert!(
            (a - b).abs() <= 1e-12,
            "local and embedded fits differ: {a} vs {b}"
        );
    }
}

#[tokio::test]
async fn empty_pipelines_and_bad_stages_are_rejected_before_reading_data() {
    let s = QuiverSession::embedded().unwrap();
    let raw = Dataset::new(s.read(DIGITS).await.unwrap());
    let err = Pipeline::new().fit(&s, &raw).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid parameter 'stages': a pipeline needs at least one stage"
    );
    let err = Pipeline::new()
        .transformer(VectorAssembler::new(["pixel_0", "nope"]))
        .fit(&s, &raw)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("column 'nope' not found"),
        "{err}"
    );
    let empty: [&str; 0] = [];
    let err = VectorAssembler::new(empty).transform(&raw).unwrap_err();
    assert!(
        err.to_string().contains("at least one input column"),
        "{err}"
    );
}
