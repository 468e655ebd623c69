//! `quiver sql`: run SQL statements with Quiver's functions registered and print the results.

use std::io::Write;

use datafusion::sql::parser::DFParser;

use crate::output::print_table;
use crate::{QuiverError, QuiverSession, Result};

/// Runs every statement of `sql` in order, printing each result as a table. Stops at the
/// first error, which names the statement's position.
pub async fn run_sql(session: &QuiverSession, sql: &str, out: &mut dyn Write) -> Result<()> {
    let statements = DFParser::parse_sql(sql).map_err(QuiverError::DataFusion)?;
    let n = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let state = session.context().state();
        let run = async {
            let plan = state.statement_to_plan(statement).await?;
            let df = session.context().execute_logical_plan(plan).await?;
            df.collect().await
        };
        let batches = run.await.map_err(|e| match QuiverError::from(e) {
            QuiverError::DataFusion(df) if n > 1 => {
                QuiverError::DataFusion(df.context(format!("statement {} of {n}", i + 1)))
            }
            other => other,
        })?;
        if batches.iter().any(|b| b.num_columns() > 0) {
            print_table(out, &batches)?;
        }
    }
    Ok(())
}
