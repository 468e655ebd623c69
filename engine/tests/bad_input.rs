//! Bad input gets a clear error naming the column, row, option or file.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use bytes::Bytes;
use quiver_engine::dataset::LocalFrame;
use quiver_engine::vector::vector_array;
use quiver_engine::{Dataset, ModelDraft, QuiverConfig, QuiverError, QuiverSession, Runner};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");

fn session() -> QuiverSession {
    QuiverSession::embedded().unwrap()
}

#[tokio::test]
async fn missing_file_names_the_file() {
    let err = session()
        .read("/no/such/dir/data.parquet")
        .await
        .unwrap_err();
    assert!(matches!(err, QuiverError::FileNotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), "file not found: /no/such/dir/data.parquet");
}

#[tokio::test]
async fn corrupt_parquet_names_file_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.parquet");
    std::fs::write(&path, b"this is not a parquet file at all, just some bytes").unwrap();
    let err = session().read(path.to_str().unwrap()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QuiverError::UnreadableFile { .. }), "{err:?}");
    assert!(
        msg.contains("broken.parquet") && msg.contains("as parquet"),
        "{msg}"
    );
}

#[tokio::test]
async fn unknown_extension_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.xlsx");
    std::fs::write(&path, b"x").unwrap();
    let msg = session()
        .read(path.to_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unsupported data format 'xlsx'") && msg.contains("data.xlsx"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_column_lists_the_available_ones() {
    let s = session();
    let ds = Dataset::new(s.read(DIGITS).await.unwrap());
    let err = ds
        .clone()
        .with_features(["pixel_0", "pixel_99"])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("column 'pixel_99' not found; available columns: pixel_0, pixel_1"),
        "{msg}"
    );
    let err = ds.with_label("target").unwrap_err().to_string();
    assert!(
        err.contains("column 'target' not found") && err.contains("label"),
        "{err}"
    );
}

fn csv_session_file(contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("people.csv");
    std::fs::write(&path, contents).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

#[tokio::test]
async fn non_numeric_feature_column_names_column_and_type() {
    let (_d, path) = csv_session_file("age,name,income\n31,ann,10.5\n45,bob,20.0\n");
    let s = session();
    let ds = Dataset::new(s.read(&path).await.unwrap());
    let msg = ds.with_features(["age", "name"]).unwrap_err().to_string();
    assert!(msg.contains("feature column 'name' has type Utf8"), "{msg}");
}

#[tokio::test]
async fn null_in_features_names_column_and_first_bad_row() {
    // Row 3 (0-based) has an empty income.
    let (_d, path) = csv_session_file("age,income\n31,10.5\n45,20.0\n50,1.0\n28,\n33,\n");
    let s = session();
    let ds = Dataset::new(s.read(&path).await.unwrap())
        .with_features(["age", "income"])
        .unwrap();
    for runner in [Runner::Local, Runner::Embedded] {
        let err = s.summarize(&ds, runner).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "null in column 'income' at row 3",
            "{runner:?}: {err:?}"
        );
    }
}

fn nan_batches() -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int32, false),
        Field::new("b", DataType::Float64, false),
    ]));
    let mut b: Vec<f64> = (0..1000).map(f64::from).collect();
    b[777] = f64::NAN;
    b[901] = f64::NAN;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from_iter_values(0..1000)),
            Arc::new(Float64Array::from(b)),
        ],
    )
    .unwrap();
    (0..1000)
        .step_by(100)
        .map(|s| batch.slice(s, 100))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_in_features_names_column_and_first_bad_row() {
    let s = session();
    for partitions in [1, 3] {
        let ds = Dataset::new(s.from_batches(nan_batches(), partitions).unwrap())
            .with_features(["a", "b"])
            .unwrap();
        for runner in [Runner::Local, Runner::Embedded] {
            let err = s.summarize(&ds, runner).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "NaN in column 'b' at row 777",
                "{runner:?}"
            );
        }
        // Already assembled into a vector column: the element is named too.
        let assembled = ds.clone().assemble("features").unwrap();
        let err = s.summarize(&assembled, Runner::Embedded).await.unwrap_err();
        assert!(err.to_string().contains("row 777"), "{err}");
    }
}

/// An infinity is refused as NaN is (no model learns from it; it used to be stored as JSON
/// null in training summaries), also where NaN means missing (trees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinities_in_features_and_labels_are_named() {
    let s = session();
    let mut batches = nan_batches();
    let fix = |b: &RecordBatch, at: usize, v: f64| {
        let mut col: Vec<f64> = b.column(1).as_primitive::<Float64Type>().values().to_vec();
        col.iter_mut().for_each(|x| {
            if x.is_nan() {
                *x = 0.0
            }
        });
        col[at] = v;
        RecordBatch::try_new(
            b.schema(),
            vec![Arc::clone(b.column(0)), Arc::new(Float64Array::from(col))],
        )
        .unwrap()
    };
    batches = batches.iter().map(|b| fix(b, 0, 1.0)).collect();
    batches[5] = fix(&batches[5], 42, f64::INFINITY);
    let df = s.from_batches(batches, 2).unwrap();
    let ds = Dataset::new(df.clone()).with_features(["a", "b"]).unwrap();
    for runner in [Runner::Local, Runner::Embedded] {
        let err = s.summarize(&ds, runner).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "infinite value in column 'b' at row 542",
            "{runner:?}"
        );
        let keep = ds.clone().keep_missing();
        let err = s.summarize(&keep, runner).await.unwrap_err();
        assert!(err.to_string().contains("infinite value"), "{err}");
    }
}

/// A query over `quiver.memory_limit` fails with an error naming the key (a hash join cannot
/// spill); a sort under the same limit spills and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_enforced_and_named() {
    let config = QuiverConfig::default()
        .with_pairs([("quiver.memory_limit", "8MB")])
        .unwrap();
    let s = QuiverSession::embedded_with(config).unwrap();
    let join = s
        .context()
        .sql("SELECT count(*) FROM generate_series(1, 2000000) a JOIN generate_series(1, 2000000) b ON a.value = b.value")
        .await
        .unwrap();
    let err = QuiverError::from(join.collect().await.unwrap_err()).to_string();
    assert!(err.contains("quiver.memory_limit"), "{err}");
    let sort = s
        .context()
        .sql("SELECT count(*) FROM (SELECT value FROM generate_series(1, 3000000) ORDER BY value DESC)")
        .await
        .unwrap();
    assert_eq!(sort.collect().await.unwrap()[0].num_rows(), 1);
}

#[tokio::test]
async fn empty_dataset_is_an_error() {
    let s = session();
    let df = s
        .read(DIGITS)
        .await
        .unwrap()
        .filter(datafusion::prelude::lit(false))
        .unwrap();
    let ds = Dataset::new(df)
        .with_features(["pixel_1", "pixel_2"])
        .unwrap();
    for runner in [Runner::Local, Runner::Embedded] {
        let err = s.summarize(&ds, runner).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "dataset is empty: the feature summary needs at least one row",
            "{runner:?}"
        );
    }
}

#[test]
fn inconsistent_vector_lengths_name_the_row() {
    let a = vector_array(vec![1.0; 6], 3).unwrap();
    let b = vector_array(vec![1.0; 8], 4).unwrap();
    let err = LocalFrame::from_vectors(vec![a, b], None, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "inconsistent vector lengths in column 'features': row 2 has 4 elements, expected 3"
    );
}

#[test]
fn unknown_config_key_is_named() {
    let err = QuiverConfig::default()
        .with_pairs([("quiver.target_partition", "4")])
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unknown configuration key 'quiver.target_partition'")
    );
}

#[tokio::test]
async fn model_not_found_and_version_not_found() {
    let s = session();
    let store = s.model_store_at("memory:///models/").unwrap();
    let err = store.load("nope", None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "model 'nope' not found in model store memory:///models/"
    );
    store
        .save(
            "m",
            ModelDraft {
                kind: "k".into(),
                ..Default::default()
            },
            Vec::new(),
        )
        .await
        .unwrap();
    let err = store.load("m", Some(4)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "model 'm' has no version 4 in model store memory:///models/; versions: 1"
    );
}

#[tokio::test]
async fn corrupt_model_metadata_names_model_version_and_file() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    let parts = vec![Ok(("weights.bin".to_string(), Bytes::from_static(b"1234")))];
    store
        .save(
            "m",
            ModelDraft {
                kind: "k".into(),
                ..Default::default()
            },
            parts,
        )
        .await
        .unwrap();
    let meta = dir.path().join("m/v000001/metadata.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    let err = store.load("m", None).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, QuiverError::CorruptModel { .. }), "{err:?}");
    assert!(
        msg.starts_with("corrupt model 'm' version 1 (")
            // The file's real path, once (not the store's root twice).
            && msg.contains(&format!("({}):", meta.display()))
            && msg.contains("invalid metadata JSON"),
        "{msg}"
    );
}

#[tokio::test]
async fn writing_an_unsupported_format_is_an_error_and_writes_nothing() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.csv");
    let df = s.read(DIGITS).await.unwrap();
    let err = quiver_engine::io::write(
        s.context(),
        &s.config().s3,
        df,
        path.to_str().unwrap(),
        quiver_engine::DataFormat::Csv,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("unsupported data format"), "{err}");
    assert!(!path.exists());
}

#[tokio::test]
async fn failed_query_leaves_no_output_file() {
    let s = session();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.parquet");
    // A string column that cannot be cast: the query fails while running.
    let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["1", "x"]))]).unwrap();
    let df = s
        .from_batches(vec![batch], 1)
        .unwrap()
        .select(vec![datafusion::prelude::cast(
            datafusion::prelude::col("s"),
            DataType::Int32,
        )])
        .unwrap();
    assert!(
        s.write_parquet(df.clone(), path.to_str().unwrap())
            .await
            .is_err()
    );
    assert!(!path.exists(), "a failed write must not leave a file");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing, not even a temporary file, is left: {left:?}"
    );
    // Over an existing file: the old content survives a failed write.
    let good = s
        .from_batches(
            vec![
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
                    vec![Arc::new(Int32Array::from(vec![7, 8, 9]))],
                )
                .unwrap(),
            ],
            1,
        )
        .unwrap();
    assert_eq!(
        s.write_parquet(good, path.to_str().unwrap()).await.unwrap(),
        3
    );
    assert!(s.write_parquet(df, path.to_str().unwrap()).await.is_err());
    assert_eq!(
        s.read(path.to_str().unwrap())
            .await
            .unwrap()
            .count()
            .await
            .unwrap(),
        3
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_config_values_name_key_and_value() {
    let err = QuiverConfig::default()
        .with_pairs([("quiver.s3.allow_http", "maybe")])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value 'maybe' for configuration key 'quiver.s3.allow_http': expected true or false"
    );
}

/// Vectors stored as JSON arrays (variable-length lists): a row of another length is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_list_vector_lengths_name_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        "{\"v\": [1, 2, 3], \"y\": 0}\n{\"v\": [3, 4, 5], \"y\": 1}\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.jsonl");
    let mut text = String::new();
    for i in 0..6 {
        if i == 4 {
            text.push_str("{\"v\": [1.0, 2.0, 3.0, 4.0], \"y\": 1}\n");
        } else {
            text.push_str(&format!("{{\"v\": [{i}.0, 1.0, 2.0], \"y\": 0}}\n"));
        }
    }
    std::fs::write(&bad, text).unwrap();
    let s = session();

    let ds = Dataset::new(s.read(good.to_str().unwrap()).await.unwrap())
        .with_vector_feature("v", 3)
        .unwrap();
    for runner in [Runner::Local, Runner::Embedded] {
        let summary = s.summarize(&ds, runner).await.unwrap();
        assert_eq!(summary.mean, vec![2.0, 3.0, 4.0], "{runner:?}");
    }

    let ds = Dataset::new(s.read(bad.to_str().unwrap()).await.unwrap())
        .with_vector_feature("v", 3)
        .unwrap();
    for runner in [Runner::Local, Runner::Embedded] {
        let err = s.summarize(&ds, runner).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "inconsistent vector lengths in column 'v': row 4 has 4 elements, expected 3",
            "{runner:?}"
        );
    }

    // The same function in SQL; the length must be a positive literal.
    let path = good.to_str().unwrap();
    let rows = s
        .sql(&format!("SELECT vector_from_list(v, 3) AS x FROM '{path}'"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(rows[0].num_rows(), 2);
    let err = s
        .sql(&format!("SELECT vector_from_list(v, 0) FROM '{path}'"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a positive integer literal"),
        "{err}"
    );
    // A list of strings is not a feature vector.
    let strings = dir.path().join("s.jsonl");
    std::fs::write(&strings, "{\"v\": [\"a\"]}\n").unwrap();
    let err = Dataset::new(s.read(strings.to_str().unwrap()).await.unwrap())
        .with_vector_feature("v", 1)
        .unwrap_err();
    assert!(
        err.to_string().contains("feature column 'v' has type List"),
        "{err}"
    );
}
