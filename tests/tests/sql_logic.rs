//! The SQL logic tests: every `tests/slt/*.slt` file runs against an embedded session with a
//! fresh model store (`__DATA__` in a file stands for the shipped data directory).

use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use quiver_sql_udfs::{SqlError, SqlSession};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct QuiverDb {
    session: SqlSession,
}

/// Floats print with at most 6 decimals (trailing zeros dropped), so that files do not depend
/// on the last bits of a fit.
fn cell(array: &dyn Array, formatter: &ArrayFormatter, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".to_string();
    }
    match array.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let v: f64 = formatter.value(row).to_string().parse().unwrap_or(f64::NAN);
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" {
                "0".to_string()
            } else {
                s.to_string()
            }
        }
        _ => formatter.value(row).to_string(),
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() {
        DefaultColumnType::FloatingPoint
    } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

fn rows_of(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let Some(first) = batches.first().filter(|b| b.num_columns() > 0) else {
        return DBOutput::StatementComplete(0);
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| cell(c.as_ref(), f, r))
                    .collect(),
            );
        }
    }
    DBOutput::Rows { types, rows }
}

#[async_trait]
impl AsyncDB for QuiverDb {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let mut results = self.session.execute(sql).await?;
        Ok(match results.pop() {
            Some(r) => rows_of(&r.batches),
            None => DBOutput::StatementComplete(0),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "quiver-embedded"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        // QUIVER_SLT=name runs only the files whose name contains it (while developing).
        .filter(|p| {
            std::env::var("QUIVER_SLT")
                .map_or(true, |only| p.to_string_lossy().contains(only.as_str()))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

/// Runs every file with a fresh model store on sessions from `session`, with `label` set
/// (records can say `onlyif embedded` / `skipif cluster`).
async fn run_all(label: &str, new_session: impl AsyncFn() -> quiver_driver::QuiverSession) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let data = data.canonicalize().unwrap();
    let mut failures = Vec::new();
    for file in slt_files() {
        let store_dir = tempfile::tempdir().unwrap();
        let session = new_session().await;
        let store = session
            .model_store_at(store_dir.path().to_str().unwrap())
            .unwrap();
        let sql_session = SqlSession::with_store(session, store).unwrap();
        let script = std::fs::read_to_string(&file)
            .unwrap()
            .replace("__DATA__", data.to_str().unwrap());
        let mut runner = sqllogictest::Runner::new(move || {
            let session = sql_session.clone();
            async move { Ok::<_, SqlError>(QuiverDb { session }) }
        });
        runner.add_label(label);
        if let Err(e) = runner
            .run_script_with_name_async(&script, file.display().to_string())
            .await
        {
            failures.push(format!("{}:\n{}", file.display(), e.display(false)));
        }
    }
    assert!(failures.is_empty(), "{label}: {}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests_embedded() {
    run_all("embedded", async || quiver_driver::session().unwrap()).await;
}

/// The same files on Ballista: a scheduler and an executor inside this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests_on_a_cluster() {
    quiver_driver::session().unwrap();
    let cluster = quiver_driver::QuiverSession::standalone().await.unwrap();
    let quiver_driver::engine::Backend::Cluster(address) = cluster.backend().clone() else {
        panic!("a standalone session is a cluster session");
    };
    let url = address.url();
    run_all("cluster", async || {
        quiver_driver::QuiverSession::remote(&url).await.unwrap()
    })
    .await;
}
