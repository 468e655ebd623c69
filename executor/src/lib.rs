//! # quiver-executor
//!
//! What a Quiver worker process is made of: every Quiver function and fan-out task runner
//! registered. [`install`] fills the engine's process-wide registry from every crate (once per
//! process); sessions created afterwards (`QuiverSession::embedded()`, `::remote(…)`) carry
//! them all.
//!
//! The cluster processes are libraries here and thin binaries in `src/bin`:
//! [`run_scheduler`] ([`SchedulerOptions`]) is Ballista's scheduler and [`run_executor`]
//! ([`ExecutorOptions`]) Ballista's executor, both with every Quiver function, Quiver's
//! extension codecs and Quiver's object stores; [`standalone::launch`] runs both inside this
//! process (what `QuiverSession::standalone()` uses once [`install`] has run).

pub mod auth;
pub mod cli;
pub mod locality;
pub mod pull;
pub mod scheduler;
pub mod standalone;
pub mod worker;

pub use scheduler::{SchedulerOptions, run_scheduler, scheduler_config};
pub use worker::{ExecutorOptions, executor_config, run_executor};

use std::sync::{Arc, OnceLock};

use quiver_engine::{FunctionRegistry, QuiverError, Result, registry};

static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Adds every crate's functions to `registry`.
pub fn register_all(registry: &mut FunctionRegistry) -> Result<()> {
    quiver_sql_udfs::register(registry)
}

/// Installs every Quiver function into the process-wide registry. Idempotent; the first
/// call's outcome is returned to every caller.
pub fn install() -> Result<()> {
    install_with(|_| Ok(()))
}

/// [`install`], adding a program's own functions and task runners (`registry.add_task(…)`):
/// how a Rust program runs its own objective on a cluster. The program registers the same
/// runners in every role it plays — driver, executors (run [`run_executor`] from it) and,
/// if it runs one, the scheduler — so every process can run a trial of that kind (see
/// `examples/custom_objective.rs`). Call it before any session is made and before
/// [`install`]: the first call decides what the process holds; a later call with different
/// additions is an error.
pub fn install_with(extra: impl FnOnce(&mut FunctionRegistry) -> Result<()>) -> Result<()> {
    let mut extra = Some(extra);
    let outcome = INSTALLED
        .get_or_init(|| {
            quiver_engine::cluster::set_standalone_launcher(Arc::new(|config| {
                Box::pin(standalone::launch(config))
            }));
            let extra = extra.take().expect("first call");
            registry::install(|r| {
                register_all(r)?;
                extra(r)
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(QuiverError::Internal);
    outcome?;
    if let Some(extra) = extra {
        // Installed before: only a call with nothing to add is harmless.
        let mut probe = FunctionRegistry::new();
        extra(&mut probe)?;
        if !probe.names().is_empty() || !probe.tasks().kinds().is_empty() {
            return Err(QuiverError::Internal(
                "quiver_executor::install_with was called after the functions were installed \
                 (by install() or a session): call it first, at the start of main"
                    .to_string(),
            ));
        }
    }
    Ok(())
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
