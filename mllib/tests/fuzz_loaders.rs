//! Property tests of everything that reads bytes a user (or a broken disk) controls: stored
//! models of every kind with their metadata and parts damaged, search spaces from arbitrary
//! JSON, trial logs of arbitrary bytes. Whatever the input: an error or a working value, never
//! a panic (and a model that loads also predicts without one).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use proptest::prelude::*;
use quiver_engine::{Dataset, FeatureBatch, ModelMetadata, QuiverSession};
use quiver_mllib::catalog::{self, ALGORITHMS};
use quiver_mllib::tuning::{Point, Space};
use quiver_mllib::{DynModel, RowPredictor};
use serde_json::{Value, json};

/// A small numeric dataset every algorithm fits: four features in [0, 1), a 0/1 label.
fn dataset(s: &QuiverSession) -> Dataset {
    let n = 160;
    let mut cols: Vec<Vec<f64>> = (0..5).map(|_| Vec::with_capacity(n)).collect();
    let mut x: u64 = 7;
    for _ in 0..n {
        for c in cols.iter_mut().take(4) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.push((x >> 11) as f64 / (1u64 << 53) as f64);
        }
        let label = if cols[0].last().unwrap() + cols[1].last().unwrap() > 1.0 {
            1.0
        } else {
            0.0
        };
        cols[4].push(label);
    }
    let names = ["f0", "f1", "f2", "f3", "label"];
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Float64, false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema,
        cols.into_iter()
            .map(|c| Arc::new(Float64Array::from(c)) as _)
            .collect(),
    )
    .unwrap();
    Dataset::new(s.from_batches(vec![batch], 1).unwrap())
        .with_features(["f0", "f1", "f2", "f3"])
        .unwrap()
        .with_label("label")
        .unwrap()
}

/// (kind, stored metadata, parts) of one fitted model of every algorithm that fits here.
fn stored_models() -> Vec<(ModelMetadata, BTreeMap<String, Bytes>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = QuiverSession::embedded().unwrap();
        let data = dataset(&s);
        let mut out = Vec::new();
        for a in ALGORITHMS {
            let mut p = Point::new();
            let estimator = (a.build)(&p).or_else(|_| {
                p.insert("k".to_string(), json!(2));
                (a.build)(&p)
            });
            let Ok(estimator) = estimator else { continue };
            let Ok(model) = estimator.fit_dyn(&s, &data).await else {
                continue;
            };
            let (draft, parts) = model.dyn_parts().unwrap();
            let meta = ModelMetadata {
                name: a.name.to_string(),
                version: 1,
                kind: model.kind().to_string(),
                format_version: model.format_version(),
                params: draft.params,
                features: draft.features,
                label: draft.label,
                metrics: draft.metrics,
                training_summary: draft.training_summary,
                created_at: String::new(),
                parts: parts
                    .iter()
                    .map(|(n, b)| (n.clone(), b.len() as u64))
                    .collect(),
                quiver_version: String::new(),
                checksums: BTreeMap::new(),
            };
            out.push((meta, parts.into_iter().collect()));
        }
        assert!(out.len() >= 8, "only {} algorithms fitted", out.len());
        out
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::MAX), any::<i64>()]
            .prop_map(|i| json!(i)),
        prop_oneof![Just(u64::MAX), Just(1u64 << 40)].prop_map(|u| json!(u)),
        prop_oneof![Just(0.0f64), Just(-1e300), Just(1e300), -1e6f64..1e6].prop_map(|f| json!(f)),
        "[a-z_]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every value's path in `v` (object keys and array indices).
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(k.clone());
                paths(x, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(i.to_string());
                paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], with: Value) {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).expect("a listed key"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("an index")],
            _ => unreachable!("paths end at leaves"),
        };
    }
    *cur = with;
}

/// A model that loaded is used: composed row by row and applied to a batch.
fn use_model(model: &Arc<dyn DynModel>) {
    let Ok(rows) = RowPredictor::from_stages("fuzz", std::slice::from_ref(model)) else {
        return;
    };
    let dim = rows.prediction.input_dim();
    if dim == 0 || dim > 4096 {
        return;
    }
    let values = vec![0.25; dim * 3];
    if let Ok(batch) = FeatureBatch::new(&values, dim) {
        let _ = rows.prediction.apply(&batch);
        if let Some(p) = &rows.probability {
            let _ = p.apply(&batch);
        }
    }
}

/// 384 cases from a fixed seed (CI stays reproducible); `PROPTEST_CASES` and
/// `PROPTEST_RNG_SEED` explore further.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var("PROPTEST_CASES").is_err() {
        c.cases = 384;
    }
    if std::env::var("PROPTEST_RNG_SEED").is_err() {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(0x005e_ed0f_d15c);
    }
    c.failure_persistence = None;
    c
}

proptest! {
    #![proptest_config(config())]

    /// A stored model with one value of its params or training summary replaced by anything
    /// loads with an error, or loads and predicts; never a panic.
    #[test]
    fn damaged_metadata_never_panics(
        which in any::<prop::sample::Index>(),
        field in 0usize..2,
        at in any::<prop::sample::Index>(),
        with in json_value(),
    ) {
        static MODELS: std::sync::OnceLock<Vec<(ModelMetadata, BTreeMap<String, Bytes>)>> =
            std::sync::OnceLock::new();
        let models = MODELS.get_or_init(stored_models);
        let (meta, parts) = &models[which.index(models.len())];
        let mut meta = meta.clone();
        let target = if field == 0 { &mut meta.params } else { &mut meta.training_summary };
        let mut all = Vec::new();
        paths(target, &mut Vec::new(), &mut all);
        let path = all[at.index(all.len())].clone();
        replace_at(target, &path, with);
        if let Ok(model) = catalog::load_stage(&meta, parts) {
            use_model(&model);
        }
    }

    /// A stored model with a part truncated or a byte changed: an error or a working model.
    #[test]
    fn damaged_parts_never_panic(
        which in any::<prop::sample::Index>(),
        part in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        truncate in any::<bool>(),
    ) {
        static MODELS: std::sync::OnceLock<Vec<(ModelMetadata, BTreeMap<String, Bytes>)>> =
            std::sync::OnceLock::new();
        let models = MODELS.get_or_init(stored_models);
        let (meta, parts) = &models[which.index(models.len())];
        let mut parts = parts.clone();
        if let Some(name) = parts.keys().nth(part.index(parts.len().max(1))).cloned() {
            let mut bytes = parts[&name].to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                if truncate {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
            }
            parts.insert(name, Bytes::from(bytes));
        }
        if let Ok(model) = catalog::load_stage(meta, &parts) {
            use_model(&model);
        }
    }

    /// Search spaces from arbitrary JSON: an error, or a space that samples and sizes its
    /// grid (and builds it when small).
    #[test]
    fn arbitrary_search_spaces_never_panic(spec in json_value(), seed in any::<u64>()) {
        if let Ok(space) = Space::from_json(&spec) {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
            let _ = space.sample(&mut rng);
            if space.grid_size(4).is_some_and(|n| n <= 10_000) {
                let _ = space.grid(4);
            }
        }
    }

    /// Trial logs of arbitrary bytes (and of valid lines cut anywhere) read as trials or as an
    /// error naming the line.
    #[test]
    fn arbitrary_trial_logs_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..200) {
        let valid = "{\"id\":0,\"params\":{\"x\":1.0},\"loss\":0.5,\"status\":\"ok\"}\n{\"id\":1,\"params\":{\"x\":2.0},\"loss\":0.4,\"status\":\"ok\"}\n";
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = QuiverSession::embedded().unwrap();
            for (i, content) in [bytes.clone(), valid.as_bytes()[..cut.min(valid.len())].to_vec()].into_iter().enumerate() {
                let path = format!("memory:///logs/fuzz{i}.jsonl");
                let loc = quiver_engine::io::resolve(s.context(), &s.config().s3, &path).unwrap();
                loc.store.put(&loc.path, content.into()).await.unwrap();
                let _ = quiver_mllib::tuning::read_log(&s, &path).await;
            }
        });
    }
}
