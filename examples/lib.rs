//! Runnable Rust driver programs, one topic each: `cargo run --example <name>`.
//!
//! - `feature_summary`: read a Parquet file and print its feature summary.
//! - `scaling_pipeline`: assemble, standardise and rescale the digits with a pipeline; save it,
//!   load it back and apply it.
