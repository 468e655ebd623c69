//! # quiver-sql-udfs
//!
//! Quiver's SQL surface on DataFusion's dialect: the ML statements (`CREATE MODEL`, `DROP
//! MODEL`, `SHOW MODELS`, `DESCRIBE MODEL`), the prediction functions (`ml_predict`,
//! `ml_predict_proba`) and the model table functions (`ml_training_info`, `ml_weights`,
//! `ml_feature_info`, `ml_evaluate`, `ml_trial_info`).
//!
//! Entry points: [`SqlSession`] runs scripts mixing ML statements and ordinary SQL over a
//! [`QuiverSession`] and its model store; [`register`] adds this crate's session-independent
//! functions to a [`FunctionRegistry`].

mod cache_table;
pub mod create;
pub mod error;
mod explain;
pub mod hparam;
pub mod models;
pub mod predict;
pub mod statement;
pub mod table_fns;
pub mod transform;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::{FunctionRegistry, ModelStore, QuiverError, QuiverSession};
use serde_json::Value;

pub use error::{Result, SqlError};
pub use models::{LoadedModel, ModelCatalog};
pub use statement::{MlStatement, Statement, parse_script};

/// What a statement gives ([`SqlSession::execute_statement_streaming`]).
pub enum StatementOutput {
    /// An ML statement's result (small).
    Batches(Vec<RecordBatch>),
    /// A query's rows as they are computed.
    Stream(datafusion::physical_plan::SendableRecordBatchStream),
}

use crate::create::{create_model, message_batch};

/// Adds the SQL functions of this crate that need no session (and those of MLlib, which it
/// builds on) to `registry`. The model functions are per session: see [`SqlSession`].
pub fn register(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    quiver_mllib::register(registry)?;
    predict::register_codecs(registry)
}

/// A session that understands Quiver's ML statements and functions, over a model store.
#[derive(Debug, Clone)]
pub struct SqlSession {
    session: QuiverSession,
    catalog: Arc<ModelCatalog>,
    /// Tables cached by `CACHE TABLE`, with what each was before.
    cached: Arc<cache_table::CachedTables>,
}

/// What one statement returned.
#[derive(Debug, Clone)]
pub struct StatementResult {
    pub batches: Vec<RecordBatch>,
}

impl SqlSession {
    /// Over the session's configured model store (`quiver.model_store`).
    pub fn new(session: QuiverSession) -> Result<Self> {
        let store = session.model_store()?;
        Self::with_store(session, store)
    }

    /// Over `store`. Registers `ml_predict`, `ml_predict_proba` and the model table functions
    /// in the session's context.
    pub fn with_store(session: QuiverSession, store: ModelStore) -> Result<Self> {
        let catalog = ModelCatalog::new(store);
        let ctx = session.context();
        for f in predict::predict_functions(&catalog) {
            ctx.register_udf(f);
        }
        for (name, f) in table_fns::table_functions(&session, &catalog) {
            ctx.register_udtf(&name, f);
        }
        Ok(SqlSession {
            session,
            catalog,
            cached: Arc::default(),
        })
    }

    pub fn session(&self) -> &QuiverSession {
        &self.session
    }

    pub fn catalog(&self) -> &Arc<ModelCatalog> {
        &self.catalog
    }

    /// Runs every statement of `sql` in order; stops at the first error, which names the
    /// statement when the script has several.
    pub async fn execute(&self, sql: &str) -> Result<Vec<StatementResult>> {
        let statements = parse_script(sql)?;
        let n = statements.len();
        let mut out = Vec::with_capacity(n);
        for (i, s) in statements.into_iter().enumerate() {
            match self.execute_statement(s).await {
                Ok(batches) => out.push(StatementResult { batches }),
                Err(e) if n > 1 => {
                    return Err(SqlError::Invalid(format!(
                        "statement {} of {n}: {e}",
                        i + 1
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Runs one parsed statement, a query's rows as a stream (they are not collected): what
    /// a client printing large results uses.
    pub async fn execute_statement_streaming(
        &self,
        statement: Statement,
    ) -> Result<StatementOutput> {
        match statement {
            Statement::Sql(s) if cache_table::TableCache::of(&s).is_none() => Ok(
                StatementOutput::Stream(self.plan_sql(*s).await?.execute_stream().await?),
            ),
            other => Ok(StatementOutput::Batches(
                self.execute_statement(other).await?,
            )),
        }
    }

    /// A SQL statement planned, with every unpinned model name pinned.
    async fn plan_sql(
        &self,
        statement: datafusion::sql::parser::Statement,
    ) -> Result<datafusion::dataframe::DataFrame> {
        let ctx = self.session.context();
        let mut plan = ctx.state().statement_to_plan(statement).await?;
        // Each model name is resolved once per query, embedded as on a cluster: a version
        // published while the query runs does not mix in.
        plan = predict::pin_model_versions(plan, &self.catalog).await?;
        Ok(ctx.execute_logical_plan(plan).await?)
    }

    /// Runs one parsed statement.
    pub async fn execute_statement(&self, statement: Statement) -> Result<Vec<RecordBatch>> {
        match statement {
            Statement::Sql(s) => match cache_table::TableCache::of(&s) {
                Some(statement) => {
                    self.cached
                        .execute(&self.session, statement?, |q| self.plan_sql(q))
                        .await
                }
                None => Ok(self.plan_sql(*s).await?.collect().await?),
            },
            Statement::Ml(MlStatement::CreateModel(c)) => {
                Ok(vec![create_model(&self.session, &self.catalog, &c).await?])
            }
            Statement::Ml(MlStatement::DropModel { name, if_exists }) => {
                let store = self.catalog.store();
                let versions = store.versions(&name).await?;
                if versions.is_empty() && if_exists {
                    return Ok(vec![message_batch(&format!(
                        "model '{name}' does not exist; nothing done"
                    ))]);
                }
                store.delete(&name, None).await?;
                self.catalog.forget(&name);
                Ok(vec![message_batch(&format!(
                    "dropped model '{name}' ({} version{})",
                    versions.len(),
                    if versions.len() == 1 { "" } else { "s" }
                ))])
            }
            Statement::Ml(MlStatement::ShowModels) => Ok(vec![self.show_models().await?]),
            Statement::Ml(MlStatement::DescribeModel { name }) => {
                Ok(vec![self.describe_model(&name).await?])
            }
        }
    }

    /// Every model's latest version; a model whose metadata cannot be read is listed with
    /// its error in `status` instead of hiding the others.
    async fn show_models(&self) -> Result<RecordBatch> {
        let entries = self.catalog.store().list_entries().await?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("version", DataType::Int64, true),
            Field::new("kind", DataType::Utf8, true),
            Field::new("model_type", DataType::Utf8, true),
            Field::new("features", DataType::Int64, true),
            Field::new("label", DataType::Utf8, true),
            Field::new("created_at", DataType::Utf8, true),
            Field::new("status", DataType::Utf8, false),
        ]));
        let ok = |e: &quiver_engine::ListedModel| e.model.as_ref().ok().cloned();
        let models: Vec<Option<quiver_engine::ModelMetadata>> = entries.iter().map(ok).collect();
        let col = |f: &dyn Fn(&quiver_engine::ModelMetadata) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(
                models
                    .iter()
                    .map(|m| m.as_ref().and_then(f))
                    .collect::<Vec<_>>(),
            ))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                models
                    .iter()
                    .map(|m| m.as_ref().map(|m| m.version as i64))
                    .collect::<Vec<_>>(),
            )),
            col(&|m| Some(m.kind.clone())),
            col(&|m| {
                m.training_summary["model_type"]
                    .as_str()
                    .map(str::to_string)
            }),
            Arc::new(Int64Array::from(
                models
                    .iter()
                    .map(|m| m.as_ref().map(|m| m.features.len() as i64))
                    .collect::<Vec<_>>(),
            )),
            col(&|m| m.label.clone()),
            col(&|m| Some(m.created_at.clone())),
            Arc::new(StringArray::from(
                entries
                    .iter()
                    .map(|e| match &e.model {
                        Ok(_) => "ok".to_string(),
                        Err(why) => format!("unreadable: {why}"),
                    })
                    .collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(schema, cols).map_err(QuiverError::from)?)
    }

    async fn describe_model(&self, reference: &str) -> Result<RecordBatch> {
        let model = self.catalog.resolve(reference).await?;
        let m = &model.metadata;
        let versions = self.catalog.store().versions(&m.name).await?;
        let ts = &m.training_summary;
        let text = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        let mut rows: Vec<(&str, Option<String>)> = vec![
            ("name", Some(m.name.clone())),
            ("version", Some(m.version.to_string())),
            (
                "versions",
                Some(
                    versions
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ),
            ("kind", Some(m.kind.clone())),
            ("model_type", text(&ts["model_type"])),
            (
                "features",
                Some(
                    m.features
                        .iter()
                        .map(|f| format!("{} {}", f.name, f.data_type))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ),
            ("label", m.label.clone()),
            // A string or boolean label's classes, in the order of ml_predict_proba's vector.
            (
                "classes",
                ts["classes"].as_array().map(|c| {
                    c.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            ),
            // The TRANSFORM clause as written (its fitted SQL is in the training summary).
            (
                "transform",
                ts["transform"]["clause"].as_str().map(str::to_string),
            ),
            ("options", text(&ts["options"])),
            ("metrics", text(&m.metrics)),
            ("rows_train", text(&ts["rows_train"])),
            ("rows_eval", text(&ts["rows_eval"])),
            ("query", text(&ts["query"])),
            ("created_at", Some(m.created_at.clone())),
        ];
        // Classes and the TRANSFORM clause only where the model has them.
        rows.retain(|(k, v)| !matches!(*k, "classes" | "transform") || v.is_some());
        let schema = Arc::new(Schema::new(vec![
            Field::new("property", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(schema, cols).map_err(QuiverError::from)?)
    }
}
