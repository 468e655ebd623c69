//! `CACHE TABLE name [AS query]` and `UNCACHE TABLE [IF EXISTS] name` (Spark SQL's statements):
//! a table's rows kept in memory for the statements that follow ([`QuiverSession::persist`]) —
//! embedded, collected into this process now; on a cluster, kept by each executor for the
//! partitions it computes from the next scan on. `UNCACHE TABLE` puts the table back as it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{ObjectName, Query, Statement as SQLStatement};
use quiver_engine::QuiverSession;

use crate::create::message_batch;
use crate::error::{Result, SqlError};

/// A table-cache statement, recognised among the SQL ones.
pub(crate) enum TableCache {
    Cache {
        name: ObjectName,
        query: Option<Box<Query>>,
    },
    Uncache {
        name: ObjectName,
        if_exists: bool,
    },
}

impl TableCache {
    /// `statement` as a table-cache statement, if it is one.
    pub(crate) fn of(statement: &DFStatement) -> Option<Result<TableCache>> {
        let DFStatement::Statement(s) = statement else {
            return None;
        };
        match s.as_ref() {
            SQLStatement::Cache {
                table_flag,
                table_name,
                options,
                query,
                ..
            } => Some(if table_flag.is_some() || !options.is_empty() {
                Err(SqlError::Invalid(format!(
                    "CACHE TABLE {table_name}: write CACHE TABLE name or CACHE TABLE name AS \
                     query (storage flags and OPTIONS are not supported)"
                )))
            } else {
                Ok(TableCache::Cache {
                    name: table_name.clone(),
                    query: query.clone(),
                })
            }),
            SQLStatement::UNCache {
                table_name,
                if_exists,
            } => Some(Ok(TableCache::Uncache {
                name: table_name.clone(),
                if_exists: *if_exists,
            })),
            _ => None,
        }
    }
}

/// The tables a SQL session has cached, with what each was before.
#[derive(Default)]
pub(crate) struct CachedTables(Mutex<HashMap<String, Option<Arc<dyn TableProvider>>>>);

impl std::fmt::Debug for CachedTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .0
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_tuple("CachedTables").field(&names).finish()
    }
}

impl CachedTables {
    /// Runs `statement`; `plan` plans a query of the session (models pinned).
    pub(crate) async fn execute<F, Fut>(
        &self,
        session: &QuiverSession,
        statement: TableCache,
        plan: F,
    ) -> Result<Vec<RecordBatch>>
    where
        F: FnOnce(DFStatement) -> Fut,
        Fut: std::future::Future<Output = Result<datafusion::dataframe::DataFrame>>,
    {
        let ctx = session.context();
        match statement {
            TableCache::Cache { name, query } => {
                let table = TableReference::from(name.to_string());
                let before = ctx.table_provider(table.clone()).await.ok();
                let df = match query {
                    Some(q) => {
                        plan(DFStatement::Statement(Box::new(SQLStatement::Query(q)))).await?
                    }
                    None => {
                        if before.is_none() {
                            return Err(SqlError::Invalid(format!(
                                "CACHE TABLE {name}: no table named '{name}'"
                            )));
                        }
                        ctx.table(table.clone()).await?
                    }
                };
                let (kept, how) = if session.is_cluster() {
                    let kept = session.cache_on_executors(&df).await.ok_or_else(|| {
                        SqlError::Invalid(format!(
                            "CACHE TABLE {name}: its rows cannot be kept on the executors: \
                             quiver.cluster.cache is off, or the table reads an in-memory table \
                             or files this process cannot list"
                        ))
                    })?;
                    (
                        kept,
                        "each executor keeps the partitions it reads from the next scan on",
                    )
                } else {
                    (session.persist(&df).await?, "its rows are in memory")
                };
                ctx.deregister_table(table.clone())?;
                ctx.register_table(table, kept.into_view())?;
                let mut cached = self.0.lock().map_err(|_| poisoned())?;
                // Caching a cached table again keeps what it was at first.
                cached.entry(name.to_string()).or_insert(before);
                Ok(vec![message_batch(&format!(
                    "cached table '{name}': {how}"
                ))])
            }
            TableCache::Uncache { name, if_exists } => {
                let table = TableReference::from(name.to_string());
                let before = self
                    .0
                    .lock()
                    .map_err(|_| poisoned())?
                    .remove(&name.to_string());
                match before {
                    Some(before) => {
                        // On a cluster the executors drop what they keep of it.
                        let kept = ctx.table_provider(table.clone()).await.ok().and_then(|p| {
                            p.downcast_ref::<datafusion::catalog::view::ViewTable>()
                                .map(|v| v.logical_plan().clone())
                        });
                        let mut dropped = Ok(0);
                        if let Some(plan) = kept {
                            let df = datafusion::dataframe::DataFrame::new(ctx.state(), plan);
                            dropped = session.unpersist(&df).await;
                        }
                        // The table is put back whatever the executors said: those not reached
                        // drop the rows as their caches need room.
                        ctx.deregister_table(table.clone())?;
                        if let Some(provider) = before {
                            ctx.register_table(table, provider)?;
                        }
                        Ok(vec![message_batch(&match dropped {
                            Ok(n) if session.is_cluster() => format!(
                                "uncached table '{name}': the executors dropped {n} kept partitions"
                            ),
                            Ok(_) => format!("uncached table '{name}'"),
                            Err(e) => format!(
                                "uncached table '{name}'; the executors could not be told to drop its rows ({e}): they go as their caches need room"
                            ),
                        })])
                    }
                    None if if_exists || ctx.table_exist(table)? => Ok(vec![message_batch(
                        &format!("table '{name}' was not cached; nothing done"),
                    )]),
                    None => Err(SqlError::Invalid(format!(
                        "UNCACHE TABLE {name}: no table named '{name}'"
                    ))),
                }
            }
        }
    }
}

fn poisoned() -> SqlError {
    SqlError::Invalid("the session's table cache is unusable after a panic".to_string())
}
