//! Runnable Rust driver programs, one topic each: `cargo run --example <name>`.
//!
//! - `feature_summary`: read a Parquet file and print its feature summary.
