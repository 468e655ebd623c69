//! Function registries that the upper crates fill: scalar, aggregate and table functions, and
//! fan-out task runners. Every Quiver session registers the whole process-wide registry.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use datafusion::catalog::TableFunctionImpl;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

use crate::error::{QuiverError, Result};
use crate::fanout::{TaskRegistry, TaskRunner};
use crate::functions::{engine_aggregate_functions, engine_scalar_functions};

/// A set of functions and task runners, with names unique across all of them.
#[derive(Debug, Clone, Default)]
pub struct FunctionRegistry {
    scalar: Vec<ScalarUDF>,
    aggregate: Vec<AggregateUDF>,
    table: Vec<(String, Arc<dyn TableFunctionImpl>)>,
    tasks: TaskRegistry,
    names: BTreeSet<String>,
}

impl FunctionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the engine's own functions.
    pub fn with_engine_functions() -> Self {
        let mut r = Self::new();
        // The engine's names are distinct by construction; a clash is a bug caught by tests.
        for f in engine_scalar_functions() {
            let _ = r.add_scalar(f);
        }
        for f in engine_aggregate_functions() {
            let _ = r.add_aggregate(f);
        }
        r
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(QuiverError::InvalidParam {
                param: "function name".to_string(),
                reason: format!("a function named '{name}' is already registered"),
            });
        }
        Ok(())
    }

    pub fn add_scalar(&mut self, f: ScalarUDF) -> Result<()> {
        self.claim(f.name())?;
        for alias in f.aliases() {
            self.claim(alias)?;
        }
        self.scalar.push(f);
        Ok(())
    }

    pub fn add_aggregate(&mut self, f: AggregateUDF) -> Result<()> {
        self.claim(f.name())?;
        for alias in f.aliases() {
            self.claim(alias)?;
        }
        self.aggregate.push(f);
        Ok(())
    }

    pub fn add_table(&mut self, name: &str, f: Arc<dyn TableFunctionImpl>) -> Result<()> {
        self.claim(name)?;
        self.table.push((name.to_string(), f));
        Ok(())
    }

    pub fn add_task(&mut self, runner: Arc<dyn TaskRunner>) -> Result<()> {
        self.tasks.register(runner)
    }

    /// Every registered function name (aliases included), sorted.
    pub fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }

    pub fn tasks(&self) -> &TaskRegistry {
        &self.tasks
    }

    /// Registers every function in `ctx`.
    pub fn register_into(&self, ctx: &SessionContext) {
        for f in &self.scalar {
            ctx.register_udf(f.clone());
        }
        for f in &self.aggregate {
            ctx.register_udaf(f.clone());
        }
        for (name, f) in &self.table {
            ctx.register_udtf(name, Arc::clone(f));
        }
    }

    /// Adds everything from `other`; a name both define is an error.
    pub fn extend(&mut self, other: FunctionRegistry) -> Result<()> {
        for f in other.scalar {
            self.add_scalar(f)?;
        }
        for f in other.aggregate {
            self.add_aggregate(f)?;
        }
        for (n, f) in other.table {
            self.add_table(&n, f)?;
        }
        for kind in other.tasks.kinds() {
            if self.tasks.kinds().contains(&kind) {
                return Err(QuiverError::InvalidParam {
                    param: "task kind".to_string(),
                    reason: format!("a task runner of kind '{kind}' is already registered"),
                });
            }
        }
        let mut merged = self.tasks.clone();
        merged.merge_from(&other.tasks)?;
        self.tasks = merged;
        Ok(())
    }
}

static GLOBAL: LazyLock<RwLock<FunctionRegistry>> =
    LazyLock::new(|| RwLock::new(FunctionRegistry::with_engine_functions()));

/// Lets an upper crate add its functions to the process-wide registry that every new session
/// registers. Returns the error of `fill` (e.g. a duplicate name) and leaves the registry as it
/// was in that case.
pub fn install(fill: impl FnOnce(&mut FunctionRegistry) -> Result<()>) -> Result<()> {
    let mut guard = GLOBAL
        .write()
        .map_err(|_| QuiverError::internal("function registry lock poisoned"))?;
    let mut next = guard.clone();
    fill(&mut next)?;
    *guard = next;
    Ok(())
}

/// A snapshot of the process-wide registry.
pub fn global() -> FunctionRegistry {
    GLOBAL
        .read()
        .map(|g| g.clone())
        .unwrap_or_else(|_| FunctionRegistry::with_engine_functions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::AssembleUdf;

    #[test]
    fn engine_functions_have_unique_names() {
        let r = FunctionRegistry::with_engine_functions();
        let names = r.names();
        for n in ["vector_assemble", "vector_from_list", "vector_summary"] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
        // Engine functions never take the names of statistics run through StatisticUdaf.
        assert!(!names.contains(&"feature_summary".to_string()));
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut r = FunctionRegistry::with_engine_functions();
        let err = r
            .add_scalar(ScalarUDF::from(AssembleUdf::new()))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("'vector_assemble' is already registered"),
            "{err}"
        );
    }

    #[test]
    fn failed_install_changes_nothing() {
        let before = global().names();
        let err = install(|r| {
            r.add_table("some_new_fn", Arc::new(NoTable))?;
            r.add_scalar(ScalarUDF::from(AssembleUdf::new()))
        });
        assert!(err.is_err());
        assert_eq!(global().names(), before);
    }

    #[derive(Debug)]
    struct NoTable;
    impl TableFunctionImpl for NoTable {}
}
