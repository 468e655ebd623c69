//! Helpers the algorithm tests share: a session on a given runner, and reference numbers from
//! the JSON files under data/ that the scripts in scripts/ write.

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

/// Entry `key` of the reference file `data/{file}`.
pub fn reference(file: &str, key: &str) -> Value {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r[key].clone()
}
