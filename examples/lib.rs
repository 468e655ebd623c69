//! Runnable Rust driver programs, one topic each: `cargo run --example <name>`.
//!
//! - `feature_summary`: read a Parquet file and print its feature summary.
//! - `scaling_pipeline`: assemble, standardise and rescale the digits with a pipeline; save it,
//!   load it back and apply it.
//! - `custom_objective` (a binary: `cargo run -p quiver-examples --bin custom_objective --
//!   search`): a search of a model of the program's own (k-nearest neighbours) whose trials run
//!   on a cluster's executors; the program is also its own executor and scheduler.
