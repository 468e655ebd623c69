//! Printing: tables from record batches, and progress bars that stay quiet off a terminal.

use std::io::Write;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Result;

/// Writes `batches` as a text table, floats with up to 6 significant decimals.
pub fn print_table(out: &mut dyn Write, batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        writeln!(out, "(no rows)").ok();
        return Ok(());
    };
    let mut printer = TablePrinter::new(&first.schema());
    for batch in batches {
        printer.push(out, batch)?;
    }
    printer.finish(out);
    Ok(())
}

/// Rows held before they are printed: a result is printed in groups of this many rows, so
/// printing never holds more than one group however large the result is.
const PRINT_GROUP: usize = 1000;

/// A text table printed as its rows arrive: the header, then groups of up to
/// [`PRINT_GROUP`] rows aligned to the widest value seen so far (the header is repeated when
/// a group widens a column), then the row count.
pub struct TablePrinter {
    headers: Vec<String>,
    widths: Vec<usize>,
    pending: Vec<Vec<String>>,
    rows: usize,
    /// Whether the header has been printed with the current widths.
    header_printed: bool,
}

impl TablePrinter {
    pub fn new(schema: &arrow::datatypes::Schema) -> Self {
        let headers: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        TablePrinter {
            widths: headers.iter().map(|h| h.chars().count()).collect(),
            headers,
            pending: Vec::new(),
            rows: 0,
            header_printed: false,
        }
    }

    /// Adds a batch's rows, printing a group when enough are held.
    pub fn push(&mut self, out: &mut dyn Write, batch: &RecordBatch) -> Result<()> {
        let options = FormatOptions::default().with_null("NULL");
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            self.pending.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| match c.data_type() {
                        arrow::datatypes::DataType::Float64
                        | arrow::datatypes::DataType::Float32
                            if c.is_valid(r) =>
                        {
                            short_float(f.value(r).to_string())
                        }
                        _ => f.value(r).to_string(),
                    })
                    .collect(),
            );
            if self.pending.len() >= PRINT_GROUP {
                self.flush(out);
            }
        }
        Ok(())
    }

    /// Prints the held rows.
    fn flush(&mut self, out: &mut dyn Write) {
        for row in &self.pending {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                let n = cell.chars().count();
                if n > *w {
                    *w = n;
                    self.header_printed = false;
                }
            }
        }
        let widths = &self.widths;
        let line = |out: &mut dyn Write, cells: &[String]| {
            let text: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            writeln!(out, "  {}", text.join("  ")).ok();
        };
        if !self.header_printed {
            line(out, &self.headers);
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            line(out, &rule);
            self.header_printed = true;
        }
        for r in &self.pending {
            line(out, r);
        }
        self.rows += self.pending.len();
        self.pending.clear();
        out.flush().ok();
    }

    /// After an error: prints what is held and how many rows came before it (nothing when
    /// none did).
    pub fn abort(mut self, out: &mut dyn Write) {
        if self.rows + self.pending.len() == 0 {
            return;
        }
        self.flush(out);
        writeln!(out, "  ({} rows before the error)", self.rows).ok();
    }

    /// Prints what is held and the row count.
    pub fn finish(mut self, out: &mut dyn Write) {
        self.flush(out);
        writeln!(
            out,
            "  ({} row{})",
            self.rows,
            if self.rows == 1 { "" } else { "s" }
        )
        .ok();
    }
}

fn short_float(s: String) -> String {
    match s.parse::<f64>() {
        Ok(v) if v != 0.0 && (v.abs() >= 1e7 || v.abs() < 1e-4) => format!("{v:.4e}"),
        Ok(v) => {
            let t = format!("{v:.6}");
            let t = t.trim_end_matches('0').trim_end_matches('.');
            t.to_string()
        }
        Err(_) => s,
    }
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_results_print_in_groups_with_one_count() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let n = 2 * PRINT_GROUP + 5;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(10_000..10_000 + n as i64)),
                // The last group widens column `s`: its header is printed again.
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| if i + 1 == n { "wide value" } else { "x" }),
                )),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        print_table(&mut out, &[batch]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines()
                .filter(|l| l.trim_start().starts_with("id"))
                .count(),
            2
        );
        assert!(
            text.ends_with(&format!("  ({n} rows)\n")),
            "{}",
            &text[text.len() - 40..]
        );
        assert_eq!(text.lines().count(), n + 2 * 2 + 1);
    }

    #[test]
    fn floats_are_shortened() {
        assert_eq!(short_float("0.30000000000000004".into()), "0.3");
        assert_eq!(short_float("12.5".into()), "12.5");
        assert_eq!(short_float("0.00001234".into()), "1.2340e-5");
        assert_eq!(short_float("0".into()), "0");
    }
}
