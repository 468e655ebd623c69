//! The engine's SQL functions: `vector_assemble`, `vector_from_list`, `vector_summary`.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, UInt64Type};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession, Runner, SPLIT_DRAW};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");

fn list_f64(col: &dyn Array) -> Vec<f64> {
    let l = col.as_list::<i32>();
    l.value(0).as_primitive::<Float64Type>().values().to_vec()
}

/// `vector_summary` in SQL equals the Dataset API's summary, at batch sizes 1, 2, 3 and 8192
/// over 3 partitions (so partial states are merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_summary_in_sql_matches_the_dataset_summary() {
    let base = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(base.read(DIGITS).await.unwrap())
        .with_features(["pixel_2", "pixel_10", "label"])
        .unwrap();
    let want = base.summarize(&ds, Runner::Local).await.unwrap();
    for batch_size in [1, 2, 3, 8192] {
        let s = QuiverSession::embedded_with(
            QuiverConfig::default()
                .with_batch_size(batch_size)
                .with_target_partitions(3),
        )
        .unwrap();
        let df = s.read(DIGITS).await.unwrap();
        s.context().register_table("d", df.into_view()).unwrap();
        let rows = s
            .sql("SELECT vector_summary(vector_assemble(pixel_2, pixel_10, label)) AS s FROM d")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let st = rows[0].column(0).as_struct();
        assert_eq!(st.column(0).as_primitive::<UInt64Type>().value(0), 1797);
        let close = |got: Vec<f64>, want: &[f64], what: &str| {
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "{what} at batch {batch_size}: {g} vs {w}"
                );
            }
        };
        close(
            list_f64(st.column_by_name("mean").unwrap()),
            &want.mean,
            "mean",
        );
        close(
            list_f64(st.column_by_name("variance").unwrap()),
            &want.variance,
            "variance",
        );
        close(
            list_f64(st.column_by_name("max").unwrap()),
            &want.max,
            "max",
        );
        close(
            list_f64(st.column_by_name("norm_l2").unwrap()),
            &want.norm_l2,
            "norm_l2",
        );
    }
}

#[tokio::test]
async fn vector_summary_of_no_rows_is_null_and_needs_a_vector() {
    let s = QuiverSession::embedded().unwrap();
    let df = s.read(DIGITS).await.unwrap();
    s.context().register_table("d", df.into_view()).unwrap();
    let rows = s
        .sql("SELECT vector_summary(vector_assemble(pixel_1)) AS s FROM d WHERE label > 100")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(rows[0].column(0).is_null(0));
    let err = s
        .sql("SELECT vector_summary(pixel_1) FROM d")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vector_summary") && err.contains("vector_assemble"),
        "{err}"
    );
}

#[tokio::test]
async fn vector_assemble_in_sql_names_bad_columns() {
    let s = QuiverSession::embedded().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "a,b,name\n1,,x\n2,3.5,y\n").unwrap();
    s.context()
        .register_table(
            "t",
            s.read(csv.to_str().unwrap()).await.unwrap().into_view(),
        )
        .unwrap();
    let err = s
        .sql("SELECT vector_assemble(a, b) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    let err = quiver_engine::QuiverError::from(err).to_string();
    assert_eq!(err, "null in column 'b' (row 0 of a batch)");
    let err = s
        .sql("SELECT vector_assemble(a, name) FROM t")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("argument 2 of vector_assemble") && err.contains("Utf8"),
        "{err}"
    );
}

/// `random_split` is a deterministic function of the row values and the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_split_is_deterministic_and_proportional() {
    let mut fingerprints = Vec::new();
    for partitions in [1, 3] {
        let s = QuiverSession::embedded_with(
            QuiverConfig::default()
                .with_target_partitions(partitions)
                .with_batch_size(100),
        )
        .unwrap();
        let batches = s.read(DIGITS).await.unwrap().collect().await.unwrap();
        let ds = Dataset::new(s.from_batches(batches, partitions).unwrap());
        let parts = ds.random_split(&[0.8, 0.2], 7).unwrap();
        let (a, b) = (
            parts[0].count().await.unwrap(),
            parts[1].count().await.unwrap(),
        );
        assert_eq!(a + b, 1797);
        assert!((b as f64 / 1797.0 - 0.2).abs() < 0.03, "{b}");
        let sum = |d: Dataset| async move {
            let r = d
                .dataframe()
                .clone()
                .aggregate(
                    vec![],
                    vec![datafusion::functions_aggregate::expr_fn::sum(
                        datafusion::prelude::col("pixel_20"),
                    )],
                )
                .unwrap()
                .collect()
                .await
                .unwrap();
            arrow::compute::cast(r[0].column(0), &arrow::datatypes::DataType::Int64)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        };
        fingerprints.push((a, sum(parts[1].clone()).await));
        let other = ds.random_split(&[0.8, 0.2], 8).unwrap();
        assert_ne!(
            sum(other[1].clone()).await,
            fingerprints.last().unwrap().1,
            "another seed, another split"
        );
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "same rows whatever the partitioning"
    );
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.read(DIGITS).await.unwrap());
    assert!(ds.random_split(&[0.0, -1.0], 1).is_err());
}

/// `random_split_collect` keeps the rows the lazy `random_split` selects, part by part and
/// partition by partition in the same order; it gives up (None) past its memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_split_keeps_the_lazy_splits_rows() {
    let ds = digits_in_three_partitions().await;
    let columns = ds.columns();
    let weights = [0.6, 0.3, 0.1];
    let lazy = ds.random_split_on(&columns, &weights, 11).unwrap();
    let kept = ds
        .random_split_collect(&columns, &weights, 11, usize::MAX)
        .await
        .unwrap()
        .expect("no limit");
    assert_eq!(kept.len(), 3);
    for (part, partitions) in lazy.iter().zip(&kept) {
        let want = part
            .dataframe()
            .clone()
            .collect_partitioned()
            .await
            .unwrap();
        assert_eq!(
            partitions.len(),
            want.len(),
            "one list of batches per partition"
        );
        for (got, want) in partitions.iter().zip(&want) {
            let got = arrow::compute::concat_batches(&ds_schema(&ds), got).unwrap();
            let want = arrow::compute::concat_batches(&ds_schema(&ds), want).unwrap();
            assert_eq!(got, want);
        }
    }
    let rows: usize = kept.iter().flatten().flatten().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1797);
    assert!(
        ds.random_split_collect(&columns, &weights, 11, 10_000)
            .await
            .unwrap()
            .is_none(),
        "1797 rows of 65 columns exceed 10 kB"
    );
    let err = ds
        .random_split_collect(&columns, &[1.0, f64::NAN], 11, usize::MAX)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights"), "{err}");
}

/// Rows that carry their draw (`with_split_draw`) split on it into the same parts as a split
/// that hashes the rows, lazily and collected, and the parts do not carry the draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_draws_split_as_hashing_the_rows_does() {
    let ds = digits_in_three_partitions().await;
    let columns = ds.columns();
    let weights = [0.7, 0.3];
    let drawn = ds.with_split_draw(&columns, 5).unwrap();
    assert!(drawn.columns().iter().any(|c| c == SPLIT_DRAW));
    let on_draw = [SPLIT_DRAW.to_string()];
    let rows = |parts: Vec<Vec<RecordBatch>>| {
        let all: Vec<RecordBatch> = parts.into_iter().flatten().collect();
        arrow::compute::concat_batches(&ds_schema(&ds), &all).unwrap()
    };
    let hashed = ds
        .random_split_collect(&columns, &weights, 5, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    let kept = drawn
        .random_split_collect(&on_draw, &weights, 999, usize::MAX)
        .await
        .unwrap()
        .unwrap();
    let lazy_hashed = ds.random_split_on(&columns, &weights, 5).unwrap();
    let lazy_kept = drawn.random_split_on(&on_draw, &weights, 999).unwrap();
    for (((h, k), lh), lk) in hashed.into_iter().zip(kept).zip(lazy_hashed).zip(lazy_kept) {
        let want = rows(h);
        assert!(want.num_rows() > 300);
        assert_eq!(rows(k), want, "collected on the kept draw");
        assert_eq!(lk.columns(), ds.columns(), "a part does not carry the draw");
        let lazy = lk.dataframe().clone().collect_partitioned().await.unwrap();
        assert_eq!(rows(lazy), want, "lazy on the kept draw");
        let lazy = lh.dataframe().clone().collect_partitioned().await.unwrap();
        assert_eq!(rows(lazy), want, "lazy, hashing");
    }
}

/// The digits in memory, in three partitions of batches of 100 rows.
async fn digits_in_three_partitions() -> Dataset {
    let s = QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_target_partitions(3)
            .with_batch_size(100),
    )
    .unwrap();
    let batches = s.read(DIGITS).await.unwrap().collect().await.unwrap();
    Dataset::new(s.from_batches(batches, 3).unwrap())
}

fn ds_schema(ds: &Dataset) -> std::sync::Arc<arrow::datatypes::Schema> {
    std::sync::Arc::new(ds.dataframe().schema().as_arrow().clone())
}
