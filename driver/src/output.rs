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
    let schema = first.schema();
    let headers: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut rows: Vec<Vec<String>> = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            rows.push(
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
        }
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        writeln!(out, "  {}", text.join("  ")).ok();
    };
    line(out, &headers);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(out, &rule);
    for r in &rows {
        line(out, r);
    }
    writeln!(
        out,
        "  ({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    )
    .ok();
    Ok(())
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
    fn floats_are_shortened() {
        assert_eq!(short_float("0.30000000000000004".into()), "0.3");
        assert_eq!(short_float("12.5".into()), "12.5");
        assert_eq!(short_float("0.00001234".into()), "1.2340e-5");
        assert_eq!(short_float("0".into()), "0");
    }
}
