//! # quiver-executor
//!
//! What a Quiver worker process is made of: every Quiver function and fan-out task runner
//! registered. [`install`] fills the engine's process-wide registry from every crate (once per
//! process); sessions created afterwards (`QuiverSession::embedded()`) carry them all. The
//! Ballista scheduler and executor binaries build on this crate.

use std::sync::OnceLock;

use quiver_engine::{FunctionRegistry, QuiverError, Result, registry};

static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Adds every crate's functions to `registry`.
pub fn register_all(registry: &mut FunctionRegistry) -> Result<()> {
    quiver_sql_udfs::register(registry)
}

/// Installs every Quiver function into the process-wide registry. Idempotent; the first
/// call's outcome is returned to every caller.
pub fn install() -> Result<()> {
    INSTALLED
        .get_or_init(|| registry::install(register_all).map_err(|e| e.to_string()))
        .clone()
        .map_err(QuiverError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_names_are_unique() {
        install().unwrap();
        install().unwrap();
        let names = registry::global().names();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names, dedup);
        assert!(names.contains(&"vector_assemble".to_string()));
    }
}
