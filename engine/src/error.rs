//! The engine's error type: one semantic variant per thing a user can get wrong.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// Result alias used throughout `quiver-engine`.
pub type Result<T, E = QuiverError> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. Each variant carries the names a user needs to
/// fix the input: the column, the row, the option, the file.
#[derive(thiserror::Error)]
pub enum QuiverError {
    #[error("file not found: {path}")]
    FileNotFound { path: String },

    #[error("cannot read {path} as {format}: {reason}")]
    UnreadableFile {
        path: String,
        format: String,
        reason: String,
    },

    #[error(
        "unsupported data format '{format}' for {path} (expected one of: parquet, csv, arrow, json)"
    )]
    UnsupportedFormat { path: String, format: String },

    #[error("invalid URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("column '{column}' not found; available columns: {available}")]
    ColumnNotFound { column: String, available: String },

    #[error(
        "feature column '{column}' has type {data_type}, expected a numeric (integer or float) type or a vector of Float64"
    )]
    NonNumericColumn { column: String, data_type: String },

    #[error("{kind} in column '{column}' at row {row}{detail}")]
    InvalidValue {
        /// "null" or "NaN"
        kind: &'static str,
        column: String,
        /// Zero-based row number in the dataset's natural order.
        row: u64,
        /// Extra location information, e.g. the vector element.
        detail: String,
    },

    /// A null or NaN was found by a kernel that does not know global row numbers; the runner
    /// that catches it turns it into [`QuiverError::InvalidValue`] by locating the first bad row.
    #[error("{kind} in column '{column}' (row {row_in_batch} of a batch)")]
    InvalidValueInBatch {
        kind: &'static str,
        column: String,
        row_in_batch: usize,
    },

    /// A vector of the wrong length found by a kernel that does not know global row numbers;
    /// becomes [`QuiverError::InconsistentVectorLength`] once the row is known.
    #[error(
        "inconsistent vector lengths in column '{column}': row {row_in_batch} of a batch has {found} elements, expected {expected}"
    )]
    VectorLengthInBatch {
        column: String,
        row_in_batch: usize,
        expected: usize,
        found: usize,
    },

    #[error("dataset is empty: {context} needs at least one row")]
    EmptyDataset { context: String },

    #[error(
        "inconsistent vector lengths in column '{column}': row {row} has {found} elements, expected {expected}"
    )]
    InconsistentVectorLength {
        column: String,
        row: u64,
        expected: usize,
        found: usize,
    },

    #[error("{function} expects {expected} features per row, got {found}")]
    FeatureCountMismatch {
        function: String,
        expected: usize,
        found: usize,
    },

    #[error("unknown configuration key '{key}'; known keys: {known}")]
    UnknownConfigKey { key: String, known: String },

    #[error("invalid value '{value}' for configuration key '{key}': {reason}")]
    InvalidConfigValue {
        key: String,
        value: String,
        reason: String,
    },

    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam { param: String, reason: String },

    #[error("model '{name}' not found in model store {store}")]
    ModelNotFound { name: String, store: String },

    #[error(
        "model '{name}' has no version {version} in model store {store}; versions: {available}"
    )]
    ModelVersionNotFound {
        name: String,
        version: u64,
        store: String,
        available: String,
    },

    #[error("invalid model name '{name}': {reason}")]
    InvalidModelName { name: String, reason: String },

    #[error("corrupt model '{name}' version {version} ({path}): {reason}")]
    CorruptModel {
        name: String,
        version: u64,
        path: String,
        reason: String,
    },

    #[error("task '{task}' failed: {reason}")]
    TaskFailed { task: String, reason: String },

    /// A task stopped (or never started) because its deadline passed.
    #[error("cancelled: {reason}")]
    Cancelled { reason: String },

    /// A trial stopped by its search's pruner at a report (see `fanout::report`).
    #[error("pruned at step {step} (value {value})")]
    Pruned { step: u64, value: f64 },

    #[error(
        "unknown task kind '{kind}' in this process (registered: {known}); a task runner of your \
         own must be registered in every process that runs trials: build a program that calls \
         quiver_executor::install_with(|r| r.add_task(Arc::new(YourRunner))) and run it as the \
         executors too (see examples/custom_objective.rs)"
    )]
    UnknownTaskKind { kind: String, known: String },

    #[error("object store error on {path}: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("{0}")]
    DataFusion(DataFusionError),

    #[error("serialisation error in {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("internal error: {0}")]
    Internal(String),

    /// A cluster could not be reached or did not do what was asked; the message names the
    /// scheduler, executor or function involved.
    #[error("cluster error: {0}")]
    Cluster(String),

    /// A query reserved more memory than `quiver.memory_limit` allows.
    #[error("{0}")]
    MemoryLimit(String),

    /// An error of an upper layer (MLlib, the SQL statements and functions), already worded.
    #[error("{0}")]
    Worded(String),
}

impl QuiverError {
    /// Wraps this error for crossing into DataFusion (inside a UDF or an accumulator).
    pub fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }

    /// An internal error: a broken invariant, not a user mistake.
    pub fn internal(msg: impl Into<String>) -> Self {
        QuiverError::Internal(msg.into())
    }
}

/// Unwraps a DataFusion error back into the Quiver error it carries, if any: errors raised
/// inside Quiver's functions cross DataFusion as `External` and come back out as themselves.
impl From<DataFusionError> for QuiverError {
    fn from(err: DataFusionError) -> Self {
        match find_quiver_error(err) {
            Ok(q) => q,
            Err(df) => cluster_hint(df),
        }
    }
}

/// Ballista reports an executor that cannot decode a task only as this text (the cause is in
/// that executor's log); say what it usually means.
const TASK_REJECTED: &str = "task could not be prepared or was rejected by executor";

fn cluster_hint(df: DataFusionError) -> QuiverError {
    let text = df.to_string();
    if let Some(e) = bad_value_from_text(&text) {
        return e;
    }
    if text.contains("Resources exhausted") || text.contains("Not enough memory") {
        return QuiverError::MemoryLimit(format!(
            "the query needs more memory than quiver.memory_limit (on a cluster: the \
             executors' --memory-limit) allows; raise it, or read less at once: {text}"
        ));
    }
    // A guarded cluster's refusal (see `cluster::auth`): its own message, without the gRPC
    // status dump around it.
    for code in ["Unauthenticated", "PermissionDenied"] {
        let marker = format!("code: {code}, message: \"");
        if let Some(start) = text.find(&marker) {
            let rest = &text[start + marker.len()..];
            let message = rest.split("\", metadata").next().unwrap_or(rest);
            return QuiverError::Cluster(message.to_string());
        }
    }
    // Plain text sent to a TLS port ends one of these ways.
    let transport_cut = text.contains("transport error")
        && ["broken pipe", "connection reset", "connection closed"]
            .iter()
            .any(|m| text.to_ascii_lowercase().contains(m));
    if (text.contains("operation was canceled") && text.contains("connection closed"))
        || text.contains("FRAME_SIZE_ERROR")
        || transport_cut
    {
        return QuiverError::Cluster(format!(
            "{text}: the cluster closed the connection; if it uses TLS, give its CA \
             certificate (--tls-ca-file, quiver.cluster.tls_ca_file)"
        ));
    }
    if text.contains(TASK_REJECTED) {
        QuiverError::Cluster(format!(
            "{text}: an executor could not run the plan's tasks; usually it is not a \
             quiver-executor of the same Quiver version as this client (its log names the \
             function it does not know)"
        ))
    } else {
        QuiverError::DataFusion(df)
    }
}

/// An executor's "NaN in column 'x' (row 3 of a batch)" reaches a cluster client as text: read
/// it back into [`QuiverError::InvalidValueInBatch`] so the runner locates the dataset row, as
/// it does for the typed error embedded.
fn bad_value_from_text(text: &str) -> Option<QuiverError> {
    for kind in ["NaN", "null", "infinite value"] {
        let marker = format!("{kind} in column '");
        let Some(at) = text.find(&marker) else {
            continue;
        };
        let rest = &text[at + marker.len()..];
        let (column, rest) = rest.split_once("' (row ")?;
        let (row, _) = rest.split_once(" of a batch)")?;
        return Some(QuiverError::InvalidValueInBatch {
            kind,
            column: column.to_string(),
            row_in_batch: row.parse().ok()?,
        });
    }
    None
}

fn find_quiver_error(err: DataFusionError) -> std::result::Result<QuiverError, DataFusionError> {
    match err {
        DataFusionError::External(boxed) => match boxed.downcast::<QuiverError>() {
            Ok(q) => Ok(*q),
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(df) => find_quiver_error(*df),
                Err(other) => Err(DataFusionError::External(other)),
            },
        },
        DataFusionError::Context(ctx, inner) => match find_quiver_error(*inner) {
            Ok(q) => Ok(q),
            Err(df) => Err(DataFusionError::Context(ctx, Box::new(df))),
        },
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(df) => find_quiver_error(df),
            Err(shared) => Err(DataFusionError::Shared(shared)),
        },
        DataFusionError::ArrowError(arrow_err, ctx) => match *arrow_err {
            arrow::error::ArrowError::ExternalError(boxed) => {
                match boxed.downcast::<DataFusionError>() {
                    Ok(df) => find_quiver_error(*df),
                    Err(boxed) => match boxed.downcast::<QuiverError>() {
                        Ok(q) => Ok(*q),
                        Err(boxed) => Err(DataFusionError::ArrowError(
                            Box::new(arrow::error::ArrowError::ExternalError(boxed)),
                            ctx,
                        )),
                    },
                }
            }
            other => Err(DataFusionError::ArrowError(Box::new(other), ctx)),
        },
        other => Err(other),
    }
}

impl From<QuiverError> for DataFusionError {
    fn from(err: QuiverError) -> Self {
        err.into_datafusion()
    }
}

/// Debug shows the message: errors raised on a cluster executor reach the client as the
/// `Debug` text of the error chain, and there the message is what a user needs.
impl std::fmt::Debug for QuiverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_reported_as_text_is_read_back() {
        let text = "External error: Execution error: NaN in column 'f2' (row 7 of a batch)";
        match bad_value_from_text(text) {
            Some(QuiverError::InvalidValueInBatch {
                kind,
                column,
                row_in_batch,
            }) => assert_eq!((kind, column.as_str(), row_in_batch), ("NaN", "f2", 7)),
            other => panic!("{other:?}"),
        }
        let null = bad_value_from_text("null in column 'a b' (row 0 of a batch)");
        assert!(matches!(
            null,
            Some(QuiverError::InvalidValueInBatch { kind: "null", .. })
        ));
        assert!(bad_value_from_text("NaN in column 'x' at row 3").is_none());
        assert!(bad_value_from_text("something else").is_none());
    }
}
