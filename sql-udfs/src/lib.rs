//! # quiver-sql-udfs
//!
//! Quiver's SQL surface: ML functions (`ml_predict` …), table functions and the ML statements
//! (`CREATE MODEL`, `DROP MODEL`, `SHOW MODELS` …) on DataFusion's SQL dialect.
//!
//! Entry point: [`register`] adds this crate's functions to a [`FunctionRegistry`]. Today every
//! Quiver session already has the engine's `vector_assemble`; the ML functions arrive with the
//! models they apply.

pub mod error;

pub use error::{Result, SqlError};

use quiver_engine::FunctionRegistry;

/// Adds the SQL functions of this crate (and of MLlib, which it builds on) to `registry`.
pub fn register(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    quiver_mllib::register(registry)
}
