//! KMeans: recovers well-separated blobs; digits inertia against scikit-learn's best of 10
//! (scripts/kmeans_reference.py); the same model on both runners and any partitioning;
//! persistence; bad parameters.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    Estimator, KMeans, KMeansAlgorithm, KMeansInit, KMeansModel, MllibError, Transformer, load,
    save,
};

mod common;

/// scikit-learn 1.9.1, KMeans(n_clusters=10, n_init=10, random_state=0) on the shipped digits.
const SKLEARN_BEST_OF_10_INERTIA: f64 = 1_165_188.890449;

fn session(runner: &str, partitions: usize) -> QuiverSession {
    let c = QuiverConfig::default()
        .with_pairs([("quiver.runner", runner)])
        .unwrap()
        .with_target_partitions(partitions)
        .with_batch_size(256);
    QuiverSession::embedded_with(c).unwrap()
}

/// Three blobs of 200 points around (0, 0), (10, 10) and (-10, 10), deterministic jitter.
fn blobs(s: &QuiverSession, partitions: usize) -> Dataset {
    blobs_of(s, partitions, 600)
}

/// [`blobs`] with `n` points (a multiple of 300).
fn blobs_of(s: &QuiverSession, partitions: usize, n: usize) -> Dataset {
    let centres = [(0.0, 0.0), (10.0, 10.0), (-10.0, 10.0)];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (cx, cy) = centres[i % 3];
        x.push(cx + ((i * 37) % 100) as f64 / 100.0 - 0.495);
        y.push(cy + ((i * 91) % 100) as f64 / 100.0 - 0.495);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(x)),
            Arc::new(Float64Array::from(y)),
        ],
    )
    .unwrap();
    let parts: Vec<RecordBatch> = (0..n).step_by(100).map(|o| b.slice(o, 100)).collect();
    Dataset::new(s.from_batches(parts, partitions).unwrap())
        .with_features(["x", "y"])
        .unwrap()
}

/// The model's centres sorted by x, each checked within 0.05 of its blob's.
fn blob_centres(m: &KMeansModel, what: &str) -> Vec<(f64, f64)> {
    let mut found: Vec<(f64, f64)> = m.centers().iter().map(|c| (c[0], c[1])).collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    for ((fx, fy), (wx, wy)) in found.iter().zip([(-10.0, 10.0), (0.0, 0.0), (10.0, 10.0)]) {
        assert!(
            (fx - wx).abs() < 0.05 && (fy - wy).abs() < 0.05,
            "{what}: {found:?}"
        );
    }
    found
}

/// On 60 000 rows the k-means|| candidates are weighed on a sample of the rows (not all):
/// the blobs are still found, with the same model on both runners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_candidate_weights_still_find_the_blobs() {
    let mut models = Vec::new();
    for runner in ["embedded", "local"] {
        let s = session(runner, 3);
        let m = KMeans::new()
            .k(3)
            .fit(&s, &blobs_of(&s, 3, 60_000))
            .await
            .unwrap();
        let found = blob_centres(&m, "60 000 rows");
        assert!(m.summary().cluster_sizes.iter().all(|n| *n == 20_000));
        models.push(found);
    }
    for (a, b) in models[0].iter().zip(&models[1]) {
        assert!(
            (a.0 - b.0).abs() <= 1e-9 && (a.1 - b.1).abs() <= 1e-9,
            "{models:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_blob_centres_with_both_inits() {
    let s = session("embedded", 2);
    let ds = blobs(&s, 2);
    for init in [KMeansInit::KMeansParallel, KMeansInit::Random] {
        let m = KMeans::new()
            .k(3)
            .init_mode(init)
            .fit(&s, &ds)
            .await
            .unwrap();
        blob_centres(&m, &format!("{init:?}"));
        assert_eq!(m.summary().cluster_sizes.iter().sum::<u64>(), 600);
        assert!(
            m.summary().cluster_sizes.iter().all(|n| *n == 200),
            "{:?}",
            m.summary().cluster_sizes
        );
        // Predictions: the points of one blob share a cluster, and blobs get different ones.
        let out = m
            .transform(&ds)
            .unwrap()
            .dataframe()
            .clone()
            .select_columns(&["x", "y", "prediction"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut blob_cluster: [Option<i32>; 3] = [None; 3];
        for b in &out {
            let (x, y) = (
                b.column(0).as_primitive::<Float64Type>(),
                b.column(1).as_primitive::<Float64Type>(),
            );
            let p = b.column(2).as_primitive::<Int32Type>();
            for r in 0..b.num_rows() {
                let blob = if y.value(r) < 5.0 {
                    0
                } else if x.value(r) > 0.0 {
                    1
                } else {
                    2
                };
                let c = *blob_cluster[blob].get_or_insert(p.value(r));
                assert_eq!(c, p.value(r), "{init:?}: blob {blob}");
            }
        }
        let mut ids: Vec<i32> = blob_cluster.iter().map(|c| c.unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_inertia_within_two_percent_of_sklearn_and_runners_agree() {
    let mut models: Vec<KMeansModel> = Vec::new();
    for (runner, partitions) in [
        ("local", 1),
        ("embedded", 1),
        ("embedded", 3),
        ("embedded", 8),
    ] {
        let s = session(runner, partitions);
        let ds = common::digits(&s).await;
        let m = KMeans::new().k(10).seed(7).fit(&s, &ds).await.unwrap();
        let inertia = m.summary().inertia;
        assert!(
            inertia <= 1.02 * SKLEARN_BEST_OF_10_INERTIA,
            "{runner}/{partitions}: inertia {inertia}"
        );
        let h = &m.summary().objective_history;
        assert!(
            h.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-12)),
            "Lloyd never increases the cost: {h:?}"
        );
        models.push(m);
    }
    for m in &models[1..] {
        for (a, b) in m.centers().iter().zip(models[0].centers()) {
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "runners disagree");
            }
        }
    }
    let s = session("embedded", 2);
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    save(&store, "digits_kmeans", &models[0]).await.unwrap();
    let back: KMeansModel = load(&store, "digits_kmeans", None).await.unwrap();
    assert_eq!(back, models[0]);
}

/// Hamerly's bounds give Lloyd's model: on the local runner (the same batches, merged in the
/// same order) to the bit, centres, costs and sizes; embedded (the bounds run on the kept
/// copy's own batches, Lloyd's passes through DataFusion's partitions) up to the order of the
/// partial sums. The bounds settle most rows of the shipped digits after the first passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hamerly_bounds_give_lloyds_model() {
    for (runner, partitions) in [("local", 1), ("embedded", 3)] {
        let s = session(runner, partitions);
        let ds = common::digits(&s).await;
        let lloyd = KMeans::new().k(10).seed(7).fit(&s, &ds).await.unwrap();
        let hamerly = KMeans::new()
            .k(10)
            .seed(7)
            .algorithm(KMeansAlgorithm::Hamerly)
            .fit(&s, &ds)
            .await
            .unwrap();
        let (a, b) = (lloyd.summary(), hamerly.summary());
        assert_eq!(a.settled_share, None);
        let settled = b.settled_share.expect("the bounds were kept");
        assert!(settled > 0.5, "{runner}: {settled}");
        assert_eq!(a.iterations, b.iterations);
        assert_eq!(a.cluster_sizes, b.cluster_sizes, "{runner}");
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1.0);
        for (p, q) in lloyd.centers().iter().zip(hamerly.centers()) {
            for (x, y) in p.iter().zip(q.iter()) {
                if runner == "local" {
                    assert_eq!(x.to_bits(), y.to_bits(), "{runner}");
                } else {
                    assert!(close(*x, *y), "{runner}: {x} {y}");
                }
            }
        }
        for (x, y) in a.objective_history.iter().zip(&b.objective_history) {
            assert!(runner != "local" || x.to_bits() == y.to_bits(), "{x} {y}");
            assert!(close(*x, *y), "{runner}: {x} {y}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_k_is_named() {
    let s = session("embedded", 2);
    let ds = blobs(&s, 1);
    let err = KMeans::new().k(0).fit(&s, &ds).await.unwrap_err();
    assert!(matches!(err, MllibError::InvalidK { .. }));
    assert_eq!(
        err.to_string(),
        "invalid parameter 'k' = 0: k must be at least 1"
    );
    let err = KMeans::new().k(601).fit(&s, &ds).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid parameter 'k' = 601: k exceeds the 600 rows of the data"
    );
}

/// A stored k-means model whose metadata says dim = 0 (or k = 0) is refused as corrupt on
/// load instead of dividing by zero when it predicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_dimensions_are_refused_on_load() {
    let s = session("embedded", 2);
    let ds = blobs(&s, 1);
    let m = KMeans::new().k(3).seed(1).fit(&s, &ds).await.unwrap();
    let (draft, parts) = quiver_mllib::Model::to_parts(&m).unwrap();
    let parts: std::collections::BTreeMap<String, bytes::Bytes> = parts.into_iter().collect();
    for (k, dim) in [(3, 0), (0, 2)] {
        let mut params = draft.params.clone();
        params[1] = serde_json::json!(dim);
        params[0]["k"] = serde_json::json!(k);
        let meta = quiver_engine::ModelMetadata {
            name: "km".to_string(),
            version: 1,
            kind: "kmeans".to_string(),
            format_version: 1,
            params,
            features: Vec::new(),
            label: None,
            metrics: serde_json::Value::Null,
            training_summary: draft.training_summary.clone(),
            created_at: String::new(),
            parts: Vec::new(),
            quiver_version: String::new(),
            checksums: Default::default(),
        };
        let err = <KMeansModel as quiver_mllib::Model>::from_parts(&meta, &parts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be at least 1"), "k {k} dim {dim}: {err}");
    }
}
