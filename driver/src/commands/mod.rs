//! The `quiver` subcommands as library functions: each writes its report to `out`.

pub mod bench;
pub mod bench_device;
pub mod bench_trees;
pub mod cluster;
pub mod models;
pub mod quickstart;
pub mod sql;
pub mod tune;
