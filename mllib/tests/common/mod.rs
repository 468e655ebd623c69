//! Helpers the algorithm tests share: a session on a given runner, a shipped file's rows as
//! numbers, and reference numbers from the JSON files under data/ that the scripts in scripts/
//! write. (Each test crate uses some of them.)
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::{QuiverConfig, QuiverSession};
use serde_json::Value;

/// An embedded session whose statistics run on `runner` (`local` or `embedded`).
pub fn session(runner: &str) -> QuiverSession {
    QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.runner", runner)])
            .unwrap(),
    )
    .unwrap()
}

/// The shipped digits (1797 rows): the 64 pixels as features, `label` the label.
pub async fn digits(s: &QuiverSession) -> quiver_engine::Dataset {
    quiver_engine::Dataset::new(s.read(&data_path("digits.parquet")).await.unwrap())
        .with_label("label")
        .unwrap()
        .with_numeric_features_except(&[])
        .unwrap()
}

/// The path of the shipped file `data/{file}`.
pub fn data_path(file: &str) -> String {
    format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Entry `key` of the reference file `data/{file}`.
pub fn reference(file: &str, key: &str) -> Value {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r[key].clone()
}

/// The shipped file `data/{file}` as one batch of Float64 columns, the column `label` renamed
/// `y`.
pub async fn float_rows(s: &QuiverSession, file: &str, label: &str) -> RecordBatch {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let batches = s.read(&path).await.unwrap().collect().await.unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in all.schema().fields().iter().zip(all.columns()) {
        let name = if f.name() == label { "y" } else { f.name() };
        fields.push(Field::new(name, DataType::Float64, false));
        cols.push(arrow::compute::cast(c, &DataType::Float64).unwrap());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}
