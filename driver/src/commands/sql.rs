//! `quiver sql`: run SQL (with Quiver's ML statements and functions) from a string, a file or
//! an interactive prompt, and print the results as tables.

use std::io::Write;

use quiver_sql_udfs::SqlSession;

use crate::output::{TablePrinter, print_table};
use crate::{QuiverError, QuiverSession, Result};

/// Runs every statement of `sql` in order, printing each result as a table. Stops at the
/// first error, which names the statement's position.
pub async fn run_sql(session: &QuiverSession, sql: &str, out: &mut dyn Write) -> Result<()> {
    let sql_session = SqlSession::new(session.clone())?;
    run_script(&sql_session, sql, out).await
}

/// [`run_sql`] on an existing SQL session (its loaded models are kept). Each statement's
/// result is printed as soon as it is done, so a later statement's error loses nothing of the
/// earlier ones.
pub async fn run_script(session: &SqlSession, sql: &str, out: &mut dyn Write) -> Result<()> {
    use futures::StreamExt;
    use quiver_sql_udfs::StatementOutput;
    let statements = quiver_sql_udfs::statement::parse_script(sql)?;
    let n = statements.len();
    let numbered = |i: usize, e: QuiverError| -> QuiverError {
        if n > 1 {
            quiver_sql_udfs::error::SqlError::Invalid(format!("statement {} of {n}: {e}", i + 1))
                .into()
        } else {
            e
        }
    };
    for (i, statement) in statements.into_iter().enumerate() {
        let output = session
            .execute_statement_streaming(statement)
            .await
            .map_err(|e| numbered(i, e.into()))?;
        match output {
            StatementOutput::Batches(batches) => {
                if batches.iter().any(|b| b.num_columns() > 0) {
                    print_table(out, &batches)?;
                    out.flush().ok();
                }
            }
            // A query's rows are printed as they come, a group at a time: a large result is
            // never held whole, and rows printed before an error stay printed.
            StatementOutput::Stream(mut stream) => {
                let schema = stream.schema();
                if schema.fields().is_empty() {
                    while let Some(batch) = stream.next().await {
                        batch.map_err(|e| numbered(i, e.into()))?;
                    }
                    continue;
                }
                let mut printer = TablePrinter::new(&schema);
                while let Some(batch) = stream.next().await {
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            printer.abort(out);
                            return Err(numbered(i, e.into()));
                        }
                    };
                    printer.push(out, &batch)?;
                }
                printer.finish(out);
            }
        }
    }
    Ok(())
}

/// Whether `buffer` holds at least one complete statement: it ends (outside quotes and
/// comments) with a semicolon.
pub fn statement_complete(buffer: &str) -> bool {
    let (mut quote, mut line_comment, mut block_comment) = (None::<char>, false, false);
    let mut last_significant = None;
    let chars: Vec<char> = buffer.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if line_comment {
            line_comment = c != '\n';
        } else if block_comment {
            if c == '*' && next == Some('/') {
                block_comment = false;
                i += 1;
            }
        } else if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            last_significant = Some(c);
        } else if c == '-' && next == Some('-') {
            line_comment = true;
        } else if c == '/' && next == Some('*') {
            block_comment = true;
            i += 1;
        } else if c == '\'' || c == '"' {
            quote = Some(c);
            last_significant = Some(c);
        } else if !c.is_whitespace() {
            last_significant = Some(c);
        }
        i += 1;
    }
    quote.is_none() && !block_comment && last_significant == Some(';')
}

/// The interactive prompt: multi-line statements end with `;`, history is kept in
/// `~/.quiver_history`, errors print and the prompt stays. `\q` or Ctrl-D quits.
pub async fn shell(session: &QuiverSession) -> Result<()> {
    use rustyline::error::ReadlineError;
    let sql_session = SqlSession::new(session.clone())?;
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| QuiverError::internal(format!("cannot start the prompt: {e}")))?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".quiver_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "quiver sql — statements end with ';', \\q quits. Models: {}",
        sql_session.catalog().store().url()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "quiver> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
                    break;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !statement_complete(&buffer) {
                    continue;
                }
                let _ = editor.add_history_entry(buffer.trim());
                let mut out = std::io::stdout().lock();
                if let Err(e) = run_script(&sql_session, &buffer, &mut out).await {
                    eprintln!("error: {e}");
                }
                buffer.clear();
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(QuiverError::internal(format!("prompt: {e}"))),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::statement_complete;

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes_and_comments() {
        assert!(statement_complete("SELECT 1;"));
        assert!(statement_complete("SELECT 1;  \n"));
        assert!(!statement_complete("SELECT ';'"));
        assert!(!statement_complete("SELECT 1 -- done;"));
        assert!(statement_complete("SELECT 1; -- comment\n"));
        assert!(!statement_complete("SELECT /* ; */ 1"));
        assert!(statement_complete(
            "CREATE MODEL m OPTIONS (model_type = 'kmeans')\nAS SELECT 1;"
        ));
    }
}
