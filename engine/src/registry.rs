//! Function registries that the upper crates fill: scalar, aggregate and table functions, and
//! fan-out task runners. Every Quiver session registers the whole process-wide registry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, RwLock};

use datafusion::catalog::TableFunctionImpl;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

use crate::error::{QuiverError, Result};
use crate::fanout::{TaskRegistry, TaskRunner};
use crate::functions::{engine_aggregate_functions, engine_scalar_functions};
use crate::map::{BatchFunction, MapUdf};
use crate::{Statistic, StatisticUdaf};

/// Turns an encoded parameter payload back into a function (on a scheduler or an executor).
pub type ScalarDecoder = Arc<dyn Fn(&[u8]) -> Result<ScalarUDF> + Send + Sync>;
/// Reads the parameter payload of a function instance; `None` when the instance is not the
/// type this entry was registered for.
pub type ScalarEncoder = Arc<dyn Fn(&ScalarUDF) -> Option<Result<Vec<u8>>> + Send + Sync>;
pub type AggregateDecoder = Arc<dyn Fn(&[u8]) -> Result<AggregateUDF> + Send + Sync>;
pub type AggregateEncoder = Arc<dyn Fn(&AggregateUDF) -> Option<Result<Vec<u8>>> + Send + Sync>;

/// A value rebuilt from the bytes of its `params()` (what crosses process boundaries).
pub trait FromParams: Sized {
    fn from_params(bytes: &[u8]) -> Result<Self>;
}

/// Implements [`FromParams`] for types whose parameters are their JSON form
/// (`impl_json_params!(MyStat => "my statistic", Other => "…")`).
#[macro_export]
macro_rules! impl_json_params {
    ($($ty:ty => $what:expr),* $(,)?) => {
        $(
            impl $crate::registry::FromParams for $ty {
                fn from_params(bytes: &[u8]) -> $crate::Result<Self> {
                    $crate::registry::from_json_params($what, bytes)
                }
            }
        )*
    };
}

/// Parameters as JSON (exact for `f64` with serde_json's `float_roundtrip`).
pub fn json_params<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| QuiverError::Json {
        context: format!("the parameters of {what}"),
        source,
    })
}

/// The inverse of [`json_params`].
pub fn from_json_params<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| QuiverError::Json {
        context: format!("the parameters of {what}"),
        source,
    })
}

/// How a stateful function crosses to another process: its payload out, the function back.
#[derive(Clone)]
pub struct ScalarCodec {
    pub encode: ScalarEncoder,
    pub decode: ScalarDecoder,
}

#[derive(Clone)]
pub struct AggregateCodec {
    pub encode: AggregateEncoder,
    pub decode: AggregateDecoder,
}

impl std::fmt::Debug for ScalarCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScalarCodec")
    }
}

impl std::fmt::Debug for AggregateCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AggregateCodec")
    }
}

/// A set of functions and task runners, with names unique across all of them.
#[derive(Debug, Clone, Default)]
pub struct FunctionRegistry {
    scalar: Vec<ScalarUDF>,
    aggregate: Vec<AggregateUDF>,
    table: Vec<(String, Arc<dyn TableFunctionImpl>)>,
    tasks: TaskRegistry,
    names: BTreeSet<String>,
    scalar_codecs: BTreeMap<String, ScalarCodec>,
    aggregate_codecs: BTreeMap<String, AggregateCodec>,
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
        let _ = r.add_statistic::<crate::summary::Summarizer>();
        let _ = r.add_scalar_codec("quiver_run_task", crate::fanout::run_task_codec());
        let _ = r.add_task(Arc::new(crate::fanout::SphereTask));
        let _ = r.add_task(Arc::new(crate::fanout::ProbeTask));
        let _ = r.add_task(Arc::new(crate::cluster::cache::UnpersistTask));
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

    /// Makes the statistic `S` (aggregate function `name`) able to run on a cluster: its
    /// parameters travel in the plan and are rebuilt with [`FromParams`] where it runs.
    pub fn add_statistic<S: Statistic + FromParams>(&mut self) -> Result<()> {
        let name = S::NAME;
        let encode: AggregateEncoder = Arc::new(|udaf: &AggregateUDF| {
            udaf.inner()
                .downcast_ref::<StatisticUdaf<S>>()
                .map(|u| Ok(u.params().to_vec()))
        });
        let decode: AggregateDecoder = Arc::new(|bytes: &[u8]| {
            let stat = S::from_params(bytes)?;
            Ok(AggregateUDF::from(StatisticUdaf::new(Arc::new(stat))?))
        });
        self.add_aggregate_codec(name, AggregateCodec { encode, decode })
    }

    /// Makes the batch function `F` (map function `name`) able to run on a cluster.
    pub fn add_batch_function<F: BatchFunction + FromParams>(&mut self, name: &str) -> Result<()> {
        let encode: ScalarEncoder = Arc::new(|udf: &ScalarUDF| {
            let map = udf.inner().downcast_ref::<MapUdf>()?;
            let func: &dyn std::any::Any = map.function().as_ref();
            func.downcast_ref::<F>().map(|_| Ok(map.params().to_vec()))
        });
        let decode: ScalarDecoder = Arc::new(|bytes: &[u8]| {
            let f: Arc<dyn BatchFunction> = Arc::new(F::from_params(bytes)?);
            Ok(MapUdf::new(f)?.into_udf())
        });
        self.add_scalar_codec(name, ScalarCodec { encode, decode })
    }

    pub fn add_scalar_codec(&mut self, name: &str, codec: ScalarCodec) -> Result<()> {
        if self.scalar_codecs.insert(name.to_string(), codec).is_some() {
            return Err(duplicate_codec(name));
        }
        Ok(())
    }

    pub fn add_aggregate_codec(&mut self, name: &str, codec: AggregateCodec) -> Result<()> {
        if self
            .aggregate_codecs
            .insert(name.to_string(), codec)
            .is_some()
        {
            return Err(duplicate_codec(name));
        }
        Ok(())
    }

    /// Names of the scalar functions that travel with parameters.
    pub fn scalar_codec_names(&self) -> Vec<String> {
        self.scalar_codecs.keys().cloned().collect()
    }

    /// Names of the aggregates (statistics) that travel with parameters.
    pub fn aggregate_codec_names(&self) -> Vec<String> {
        self.aggregate_codecs.keys().cloned().collect()
    }

    pub fn scalar_codec(&self, name: &str) -> Option<&ScalarCodec> {
        self.scalar_codecs.get(name)
    }

    pub fn aggregate_codec(&self, name: &str) -> Option<&AggregateCodec> {
        self.aggregate_codecs.get(name)
    }

    /// The registered scalar function called `name` (stateless functions travel by name).
    pub fn scalar(&self, name: &str) -> Option<&ScalarUDF> {
        self.scalar
            .iter()
            .find(|f| f.name() == name || f.aliases().iter().any(|a| a == name))
    }

    pub fn aggregate(&self, name: &str) -> Option<&AggregateUDF> {
        self.aggregate
            .iter()
            .find(|f| f.name() == name || f.aliases().iter().any(|a| a == name))
    }

    pub fn table_functions(&self) -> &[(String, Arc<dyn TableFunctionImpl>)] {
        &self.table
    }

    pub fn scalar_functions(&self) -> &[ScalarUDF] {
        &self.scalar
    }

    pub fn aggregate_functions(&self) -> &[AggregateUDF] {
        &self.aggregate
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
        for (n, c) in other.scalar_codecs {
            self.add_scalar_codec(&n, c)?;
        }
        for (n, c) in other.aggregate_codecs {
            self.add_aggregate_codec(&n, c)?;
        }
        Ok(())
    }
}

fn duplicate_codec(name: &str) -> QuiverError {
    QuiverError::InvalidParam {
        param: "function codec".to_string(),
        reason: format!("a codec for '{name}' is already registered"),
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
