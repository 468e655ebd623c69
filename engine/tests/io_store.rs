//! Data I/O round trips on local files and memory://, and the model store's versioning and
//! atomic publish.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use bytes::Bytes;
use quiver_engine::{DataFormat, ModelDraft, QuiverError, QuiverSession};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");

fn sample() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..100)),
            Arc::new(Float64Array::from_iter_values(
                (0..100).map(|i| i as f64 * 0.5),
            )),
        ],
    )
    .unwrap()
}

async fn sum_x(session: &QuiverSession, location: &str) -> (i64, f64) {
    let df = session.read(location).await.unwrap();
    let batches = df
        .aggregate(
            vec![],
            vec![
                datafusion::functions_aggregate::expr_fn::count(datafusion::prelude::col("id")),
                datafusion::functions_aggregate::expr_fn::sum(datafusion::prelude::col("x")),
            ],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    (
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        batches[0].column(1).as_primitive::<Float64Type>().value(0),
    )
}

#[tokio::test]
async fn parquet_and_ipc_round_trip_on_disk_and_in_memory() {
    let s = QuiverSession::embedded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    for (location, format) in [
        (format!("{base}/a.parquet"), DataFormat::Parquet),
        (format!("file://{base}/b.arrow"), DataFormat::Arrow),
        ("memory:///t/c.parquet".to_string(), DataFormat::Parquet),
        ("memory:///t/d.arrow".to_string(), DataFormat::Arrow),
    ] {
        let df = s.from_batches(vec![sample()], 1).unwrap();
        let rows = match format {
            DataFormat::Parquet => s.write_parquet(df, &location).await.unwrap(),
            _ => s.write_ipc(df, &location).await.unwrap(),
        };
        assert_eq!(rows, 100, "{location}");
        assert_eq!(sum_x(&s, &location).await, (100, 2475.0), "{location}");
    }
}

#[tokio::test]
async fn csv_json_and_directories_are_read() {
    let s = QuiverSession::embedded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "id,x\n1,0.5\n2,1.5\n").unwrap();
    assert_eq!(sum_x(&s, csv.to_str().unwrap()).await, (2, 2.0));
    let json = dir.path().join("t.jsonl");
    std::fs::write(
        &json,
        "{\"id\": 1, \"x\": 0.25}\n{\"id\": 2, \"x\": 0.75}\n",
    )
    .unwrap();
    assert_eq!(sum_x(&s, json.to_str().unwrap()).await, (2, 1.0));
    // A directory of Parquet files (what Spark and DataFusion write).
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    for i in 0..3 {
        let df = s.from_batches(vec![sample()], 1).unwrap();
        s.write_parquet(
            df,
            parts.join(format!("part-{i}.parquet")).to_str().unwrap(),
        )
        .await
        .unwrap();
    }
    std::fs::write(parts.join("_SUCCESS"), "").unwrap();
    assert_eq!(
        sum_x(&s, parts.to_str().unwrap()).await,
        (300, 3.0 * 2475.0)
    );
}

#[tokio::test]
async fn shipped_digits_read_with_expected_shape() {
    let s = QuiverSession::embedded().unwrap();
    let df = s.read(DIGITS).await.unwrap();
    assert_eq!(df.schema().fields().len(), 65);
    assert_eq!(df.count().await.unwrap(), 1797);
}

fn draft(kind: &str, acc: f64) -> ModelDraft {
    ModelDraft {
        kind: kind.to_string(),
        format_version: 1,
        params: serde_json::json!({"reg_param": 0.1}),
        metrics: serde_json::json!({"accuracy": acc}),
        ..Default::default()
    }
}

async fn store_round_trip(location: &str) {
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at(location).unwrap();
    assert!(store.list().await.unwrap().is_empty());
    let m1 = store
        .save(
            "digits",
            draft("lr", 0.9),
            vec![Ok(("coef.arrow".to_string(), Bytes::from_static(b"v1")))],
        )
        .await
        .unwrap();
    assert_eq!(m1.version, 1);
    let m2 = store
        .save(
            "digits",
            draft("lr", 0.95),
            vec![Ok((
                "coef.arrow".to_string(),
                Bytes::from_static(b"v2-longer"),
            ))],
        )
        .await
        .unwrap();
    assert_eq!(m2.version, 2);
    store
        .save("other", draft("kmeans", 0.0), Vec::new())
        .await
        .unwrap();

    assert_eq!(store.versions("digits").await.unwrap(), vec![1, 2]);
    let latest = store.load("digits", None).await.unwrap();
    assert_eq!(latest.metadata, m2);
    assert_eq!(
        latest.part("coef.arrow").await.unwrap(),
        Bytes::from_static(b"v2-longer")
    );
    let first = store.load("digits", Some(1)).await.unwrap();
    assert_eq!(first.metadata.metrics["accuracy"], 0.9);
    assert_eq!(
        first.part("coef.arrow").await.unwrap(),
        Bytes::from_static(b"v1")
    );
    assert!(
        first
            .part("nope")
            .await
            .unwrap_err()
            .to_string()
            .contains("no part 'nope'")
    );

    let listed: Vec<(String, u64)> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.version))
        .collect();
    assert_eq!(
        listed,
        vec![("digits".to_string(), 2), ("other".to_string(), 1)]
    );

    store.delete("digits", Some(2)).await.unwrap();
    assert_eq!(store.versions("digits").await.unwrap(), vec![1]);
    assert_eq!(
        store.load("digits", None).await.unwrap().metadata.version,
        1
    );
    // Version numbers are never reused.
    let m3 = store
        .save("digits", draft("lr", 0.97), Vec::new())
        .await
        .unwrap();
    assert_eq!(m3.version, 3);
    store.delete("digits", None).await.unwrap();
    assert!(matches!(
        store.load("digits", None).await.unwrap_err(),
        QuiverError::ModelNotFound { .. }
    ));
    assert!(matches!(
        store.delete("digits", None).await.unwrap_err(),
        QuiverError::ModelNotFound { .. }
    ));
}

#[tokio::test]
async fn model_store_round_trip_in_memory() {
    store_round_trip("memory:///models/").await;
}

#[tokio::test]
async fn model_store_round_trip_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    store_round_trip(dir.path().join("models").to_str().unwrap()).await;
}

/// A save that fails half way publishes nothing and leaves the previous version readable.
#[tokio::test]
async fn failed_save_leaves_previous_version_readable() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    store
        .save(
            "m",
            draft("lr", 0.9),
            vec![Ok(("a".to_string(), Bytes::from_static(b"good")))],
        )
        .await
        .unwrap();
    let failing = vec![
        Ok(("a".to_string(), Bytes::from_static(b"new a"))),
        Ok(("b".to_string(), Bytes::from_static(b"new b"))),
        Err(QuiverError::Internal(
            "serialising part c failed".to_string(),
        )),
    ];
    let err = store
        .save("m", draft("lr", 0.99), failing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("serialising part c failed"));
    assert_eq!(store.versions("m").await.unwrap(), vec![1]);
    let loaded = store.load("m", None).await.unwrap();
    assert_eq!(loaded.metadata.version, 1);
    assert_eq!(loaded.part("a").await.unwrap(), Bytes::from_static(b"good"));
    // The failed attempt's parts were cleaned up and nothing was published for it.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains("v000002"))
        .collect();
    assert!(
        leftovers.iter().all(|p| !p.ends_with("metadata.json")),
        "{leftovers:?}"
    );
    assert!(
        leftovers
            .iter()
            .all(|p| !p.ends_with("/a") && !p.ends_with("/b")),
        "{leftovers:?}"
    );
    // The next successful save does not reuse the failed attempt's number.
    let next = store
        .save("m", draft("lr", 0.98), Vec::new())
        .await
        .unwrap();
    assert!(next.version >= 2);
    assert_eq!(
        store.load("m", None).await.unwrap().metadata.version,
        next.version
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().to_string());
        }
    }
    out
}

#[tokio::test]
async fn invalid_model_names_are_rejected() {
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at("memory:///m/").unwrap();
    let err = store
        .save("../escape", draft("lr", 0.0), Vec::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid model name '../escape'"),
        "{err}"
    );
}

/// Writers racing on one name each get their own version, with their own parts; of writers
/// that create a new model, exactly one succeeds.
async fn concurrent_saves(location: &str) {
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at(location).unwrap();
    let saves = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let bytes = Bytes::from(format!("writer {i}").into_bytes());
            let m = store
                .save(
                    "m",
                    draft("lr", i as f64),
                    vec![Ok(("w".to_string(), bytes))],
                )
                .await
                .unwrap();
            (i, m.version)
        })
    });
    let mut versions = Vec::new();
    for (i, v) in futures::future::join_all(saves)
        .await
        .into_iter()
        .map(Result::unwrap)
    {
        let loaded = store.load("m", Some(v)).await.unwrap();
        assert_eq!(loaded.metadata.metrics["accuracy"], i as f64);
        assert_eq!(
            loaded.part("w").await.unwrap(),
            Bytes::from(format!("writer {i}").into_bytes())
        );
        versions.push(v);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());

    let creates = (0..6).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .save_new("fresh", draft("lr", i as f64), Vec::new())
                .await
                .unwrap()
        })
    });
    let created = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .filter(|r| matches!(r, quiver_engine::SaveNew::Saved(_)))
        .count();
    assert_eq!(created, 1);
    assert_eq!(store.versions("fresh").await.unwrap(), vec![1]);
    // DROP keeps the numbers taken: the model created again continues after them.
    store.delete("fresh", None).await.unwrap();
    let again = store
        .save_new("fresh", draft("lr", 1.0), Vec::new())
        .await
        .unwrap();
    let quiver_engine::SaveNew::Saved(m) = again else {
        panic!("a dropped model can be created again: {again:?}");
    };
    assert_eq!(m.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_in_memory() {
    concurrent_saves("memory:///concurrent/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_saves(dir.path().join("models").to_str().unwrap()).await;
}

/// A version directory without a claim (a writer on a local filesystem between creating the
/// directory and its claim file, or leftovers of an older format) is contended for, not taken
/// as dead: `CREATE MODEL` gets the highest such number, a lower one stays taken.
#[tokio::test]
async fn unclaimed_version_directories_are_contended_for() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for v in ["v000001", "v000002"] {
        let d = models.join("m").join(v);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("_claim#1"), b"staging").unwrap();
    }
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at(models.to_str().unwrap()).unwrap();
    let saved = store
        .save_new("m", draft("lr", 1.0), Vec::new())
        .await
        .unwrap();
    let quiver_engine::SaveNew::Saved(m) = saved else {
        panic!("an unclaimed directory does not block a new model: {saved:?}");
    };
    assert_eq!(m.version, 2);
    assert_eq!(store.versions("m").await.unwrap(), vec![2]);
    assert!(models.join("m/v000001/_deleted").exists());
    let again = store
        .save_new("m", draft("lr", 2.0), Vec::new())
        .await
        .unwrap();
    assert!(
        matches!(&again, quiver_engine::SaveNew::Exists(why) if why.contains("version 2 is published")),
        "{again:?}"
    );
    assert_eq!(
        store
            .save("m", draft("lr", 3.0), Vec::new())
            .await
            .unwrap()
            .version,
        3
    );
}

/// A part replaced by other bytes is refused on read (size or checksum); a model whose
/// metadata is truncated is listed with its error and does not hide the healthy ones.
#[tokio::test]
async fn tampered_parts_and_corrupt_metadata_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    for (name, text) in [("a", "first"), ("b", "other"), ("c", "third")] {
        store
            .save(
                name,
                draft("lr", 0.5),
                vec![Ok(("w".to_string(), Bytes::from(text.as_bytes().to_vec())))],
            )
            .await
            .unwrap();
    }
    let part = |name: &str| dir.path().join(name).join("v000001/parts/w");
    // Same size, other bytes: the checksum catches it.
    std::fs::copy(part("b"), part("a")).unwrap();
    let err = store
        .load("a", None)
        .await
        .unwrap()
        .part("w")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match its checksum"), "{err}");
    std::fs::write(part("a"), b"longer bytes").unwrap();
    let err = store
        .load("a", None)
        .await
        .unwrap()
        .part("w")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 12 bytes; the metadata records 5"),
        "{err}"
    );
    // Truncated metadata of one model.
    let meta = dir.path().join("b").join("v000001/metadata.json");
    let text = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    let entries = store.list_entries().await.unwrap();
    let names: Vec<(&str, bool)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.model.is_ok()))
        .collect();
    assert_eq!(names, vec![("a", true), ("b", false), ("c", true)]);
    let why = entries[1].model.as_ref().unwrap_err();
    assert!(why.contains("corrupt model 'b' version 1"), "{why}");
    assert_eq!(store.list().await.unwrap().len(), 2);
}

/// Rows handed to work in this process by a `process://` URL read like a file while the table
/// lives; afterwards (or in another process) the URL is a named error.
#[tokio::test]
async fn process_tables_are_read_in_this_process_only_while_they_live() {
    let s = QuiverSession::embedded().unwrap();
    let table = quiver_engine::io::ProcessTable::new(vec![sample()]).unwrap();
    assert!(table.url().starts_with(quiver_engine::io::PROCESS_SCHEME));
    let want = sum_x(&s, table.url()).await;
    assert_eq!(want.0, sample().num_rows() as i64);
    let url = table.url().to_string();
    drop(table);
    let err = s.read(&url).await.unwrap_err().to_string();
    assert!(
        err.contains(&url) && err.contains("another process"),
        "{err}"
    );
    assert!(quiver_engine::io::ProcessTable::new(Vec::new()).is_err());
}

#[tokio::test]
async fn persisted_rows_outlive_their_file_and_keep_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let location = dir
        .path()
        .join("kept.parquet")
        .to_string_lossy()
        .to_string();
    s.write_parquet(s.from_batches(vec![sample()], 1).unwrap(), &location)
        .await
        .unwrap();
    let ds = quiver_engine::Dataset::new(s.read(&location).await.unwrap())
        .with_features(["x"])
        .unwrap()
        .with_label("id")
        .unwrap();
    let kept = ds.persist(&s).await.unwrap();
    // The rows are in memory now: the file can go.
    std::fs::remove_file(&location).unwrap();
    assert_eq!(kept.features(), ds.features());
    assert_eq!(kept.label(), Some("id"));
    let batches = kept.dataframe().clone().collect().await.unwrap();
    let x: f64 = batches
        .iter()
        .flat_map(|b| b.column(1).as_primitive::<Float64Type>().values().to_vec())
        .sum();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    assert_eq!(x, (0..100).map(|i| i as f64 * 0.5).sum::<f64>());
}

/// A Parquet file whose column chunks are read from a memory map (`quiver.io.mmap`, the
/// default) gives the rows that reading it with system calls gives (two files, each well over
/// the mapping threshold); and the two sessions really read differently.
#[tokio::test]
async fn parquet_read_from_memory_maps_equals_read_with_system_calls() {
    use quiver_engine::QuiverConfig;
    use quiver_engine::local_files::MIN_MAPPED_BYTES;

    let rows = 200_000i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| ((i * 7919) % 100_003) as f64 * 0.25),
            )),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let location = format!("{}/rows/", dir.path().to_str().unwrap());
    let writer = QuiverSession::embedded().unwrap();
    for part in 0..2 {
        let df = writer.from_batches(vec![batch.clone()], 1).unwrap();
        let file = format!("{location}part-{part}.parquet");
        writer.write_parquet(df, &file).await.unwrap();
        let len = std::fs::metadata(dir.path().join(format!("rows/part-{part}.parquet")))
            .unwrap()
            .len();
        assert!(
            len > 2 * MIN_MAPPED_BYTES,
            "{file}: {len} bytes is too small to be mapped"
        );
    }

    let mapped = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
    let plain = QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.io.mmap", "false")])
            .unwrap(),
    )
    .unwrap();
    let file_url = url::Url::parse("file://").unwrap();
    let store_of = |s: &QuiverSession| {
        s.context()
            .runtime_env()
            .object_store_registry
            .get_store(&file_url)
            .unwrap()
            .to_string()
    };
    assert!(
        store_of(&mapped).starts_with("MappedLocalFiles"),
        "{}",
        store_of(&mapped)
    );
    assert!(!store_of(&plain).contains("Mapped"), "{}", store_of(&plain));

    let expected: f64 = (0..rows)
        .map(|i| ((i * 7919) % 100_003) as f64 * 0.25)
        .sum();
    let (n, sum) = sum_x(&mapped, &location).await;
    assert_eq!(n, 2 * rows);
    assert!(
        (sum - 2.0 * expected).abs() <= 1e-9 * expected,
        "{sum} vs {}",
        2.0 * expected
    );
    assert_eq!(
        sum_x(&mapped, &location).await,
        sum_x(&plain, &location).await
    );
}
