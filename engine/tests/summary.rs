//! Feature summary: against independently computed values, and local vs embedded runners
//! across partitionings and batch sizes.

use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::{Dataset, FeatureSummary, QuiverConfig, QuiverSession, Runner, Summarizer};
use serde_json::Value;

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");
const DIGITS_REF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/digits_summary_reference.json"
);

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    a == b || (a - b).abs() <= tol * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

fn assert_vec_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            rel_close(*g, *w, tol),
            "{name}[{j}]: got {g:e}, want {w:e} (tol {tol:e})"
        );
    }
}

fn assert_summaries_close(a: &FeatureSummary, b: &FeatureSummary, tol: f64) {
    assert_eq!(a.count, b.count);
    assert_eq!(a.num_nonzeros, b.num_nonzeros);
    assert_vec_close("mean", &a.mean, &b.mean, tol);
    assert_vec_close("variance", &a.variance, &b.variance, tol);
    assert_vec_close("min", &a.min, &b.min, 0.0);
    assert_vec_close("max", &a.max, &b.max, 0.0);
    assert_vec_close("norm_l1", &a.norm_l1, &b.norm_l1, tol);
    assert_vec_close("norm_l2", &a.norm_l2, &b.norm_l2, tol);
}

async fn digits(session: &QuiverSession) -> Dataset {
    let df = session.read(DIGITS).await.unwrap();
    Dataset::new(df)
        .with_label("label")
        .unwrap()
        .with_numeric_features_except(&[])
        .unwrap()
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DIGITS_REF).unwrap()).unwrap()
}

fn ref_vec(r: &Value, key: &str) -> Vec<f64> {
    r[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Expected values come from numpy (scripts/make_digits.py, data/digits_summary_reference.json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_summary_matches_numpy_on_both_runners() {
    let session = QuiverSession::embedded().unwrap();
    let ds = digits(&session).await;
    assert_eq!(ds.feature_dim().unwrap(), 64);
    let r = reference();
    for runner in [Runner::Local, Runner::Embedded] {
        let s = session.summarize(&ds, runner).await.unwrap();
        assert_eq!(s.count, r["count"].as_u64().unwrap(), "{runner:?}");
        assert_eq!(s.weight_sum, 1797.0);
        assert_vec_close("mean", &s.mean, &ref_vec(&r, "mean"), 1e-12);
        assert_vec_close("variance", &s.variance, &ref_vec(&r, "variance"), 1e-12);
        assert_vec_close("min", &s.min, &ref_vec(&r, "min"), 0.0);
        assert_vec_close("max", &s.max, &ref_vec(&r, "max"), 0.0);
        assert_vec_close("norm_l1", &s.norm_l1, &ref_vec(&r, "norm_l1"), 1e-12);
        assert_vec_close("norm_l2", &s.norm_l2, &ref_vec(&r, "norm_l2"), 1e-12);
        let nnz: Vec<u64> = r["num_nonzeros"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(s.num_nonzeros, nnz, "{runner:?}");
        for j in 0..64 {
            assert!(rel_close(s.sum[j], s.mean[j] * 1797.0, 1e-12));
            assert!(rel_close(s.std[j] * s.std[j], s.variance[j], 1e-12) || s.variance[j] == 0.0);
        }
    }
}

/// Closed forms: x = 1..n has mean (n+1)/2 and sample variance n(n+1)/12; a second feature
/// 1e9 + x checks that a large offset does not destroy the variance (no E[x²] − E[x]²).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_form_sequence() {
    let n = 100_001usize;
    let x: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    let shifted: Vec<f64> = x.iter().map(|v| 1e9 + v).collect();
    let negated: Vec<f64> = x.iter().map(|v| -v).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("shifted", DataType::Float64, false),
        Field::new("negated", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(x)),
            Arc::new(Float64Array::from(shifted)),
            Arc::new(Float64Array::from(negated)),
        ],
    )
    .unwrap();
    let session = QuiverSession::embedded().unwrap();
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(7777)
        .map(|s| batch.slice(s, 7777.min(n - s)))
        .collect();
    let ds = Dataset::new(session.from_batches(batches, 3).unwrap())
        .with_features(["x", "shifted", "negated"])
        .unwrap();
    let nf = n as f64;
    for runner in [Runner::Local, Runner::Embedded] {
        let s = session.summarize(&ds, runner).await.unwrap();
        assert_eq!(s.count, n as u64);
        assert!(
            rel_close(s.mean[0], (nf + 1.0) / 2.0, 1e-14),
            "{}",
            s.mean[0]
        );
        assert!(rel_close(s.mean[1], 1e9 + (nf + 1.0) / 2.0, 1e-14));
        assert!(rel_close(s.mean[2], -(nf + 1.0) / 2.0, 1e-14));
        let var = nf * (nf + 1.0) / 12.0;
        for j in 0..3 {
            assert!(
                rel_close(s.variance[j], var, 1e-10),
                "{runner:?} var[{j}] = {}",
                s.variance[j]
            );
        }
        assert_eq!((s.min[0], s.max[0]), (1.0, nf));
        assert_eq!((s.min[2], s.max[2]), (-nf, -1.0));
        assert!(rel_close(s.norm_l1[0], nf * (nf + 1.0) / 2.0, 1e-14));
        assert!(rel_close(s.norm_l1[2], nf * (nf + 1.0) / 2.0, 1e-14));
        let sum_sq = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 6.0;
        assert!(rel_close(s.norm_l2[0], sum_sq.sqrt(), 1e-14));
        assert_eq!(s.num_nonzeros, vec![n as u64; 3]);
    }
}

fn rebatch(batches: &[RecordBatch], size: usize) -> Vec<RecordBatch> {
    let all = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
    (0..all.num_rows())
        .step_by(size)
        .map(|s| all.slice(s, size.min(all.num_rows() - s)))
        .collect()
}

/// The embedded runner at 1, 2, 3 and 8 partitions and batch sizes 1, 2, 3 and 8192 (so that
/// partial states are merged many times) agrees with the local runner to 1e-12 relative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_embedded_agree_across_partitions_and_batch_sizes() {
    let session = QuiverSession::embedded().unwrap();
    let ds = digits(&session).await;
    let local = session.summarize(&ds, Runner::Local).await.unwrap();
    let batches = ds.dataframe().clone().collect().await.unwrap();
    for partitions in [1, 2, 3, 8] {
        for batch_size in [1, 2, 3, 8192] {
            let config = QuiverConfig::default()
                .with_target_partitions(partitions)
                .with_batch_size(batch_size);
            let s2 = QuiverSession::embedded_with(config).unwrap();
            let df = s2
                .from_batches(rebatch(&batches, batch_size), partitions)
                .unwrap();
            let ds2 = Dataset::new(df)
                .with_label("label")
                .unwrap()
                .with_numeric_features_except(&[])
                .unwrap();
            let embedded = s2.summarize(&ds2, Runner::Embedded).await.unwrap();
            assert_summaries_close(&embedded, &local, 1e-12);
            // And the local runner over the same chunking.
            let local2 = s2.summarize(&ds2, Runner::Local).await.unwrap();
            assert_summaries_close(&local2, &local, 1e-12);
        }
    }
}

/// The local runner merges in row order: two runs give bit-identical results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runner_is_reproducible() {
    let session = QuiverSession::embedded().unwrap();
    let ds = digits(&session).await;
    let frame = ds.cache_local().await.unwrap();
    let stat = Summarizer::new(64);
    let a = session.aggregate_local(&frame, &stat).unwrap();
    let b = session.aggregate_local(&frame, &stat).unwrap();
    assert_eq!(a, b);
}

/// Weighted summary against a direct two-pass computation written out in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_summary_matches_direct_formula() {
    let n = 5000usize;
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * 37) % 101) as f64 * 0.5 - 10.0)
        .collect();
    let w: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64 * 0.25).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("w", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(x.clone())),
            Arc::new(Float64Array::from(w.clone())),
        ],
    )
    .unwrap();
    let session = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(session.from_batches(rebatch(&[batch], 999), 2).unwrap())
        .with_features(["x"])
        .unwrap()
        .with_weight("w")
        .unwrap();
    let ws: f64 = w.iter().sum();
    let wsq: f64 = w.iter().map(|v| v * v).sum();
    let mean = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / ws;
    let m2: f64 = x
        .iter()
        .zip(&w)
        .map(|(a, b)| b * (a - mean) * (a - mean))
        .sum();
    let var = m2 / (ws - wsq / ws);
    let kept = w.iter().filter(|v| **v != 0.0).count() as u64;
    let stat = Summarizer::new(1).weighted(true);
    let frame = ds.cache_local().await.unwrap();
    let local = session.aggregate_local(&frame, &stat).unwrap();
    let embedded = session.aggregate(&ds, Arc::new(stat)).await.unwrap();
    for s in [&local, &embedded] {
        assert_eq!(s.count, kept);
        assert!(rel_close(s.weight_sum, ws, 1e-13));
        assert!(rel_close(s.mean[0], mean, 1e-12), "{} vs {mean}", s.mean[0]);
        assert!(
            rel_close(s.variance[0], var, 1e-12),
            "{} vs {var}",
            s.variance[0]
        );
    }
}
