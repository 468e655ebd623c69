//! Reads a Parquet file and prints the feature summary of its numeric columns.
//!
//! ```text
//! cargo run --example feature_summary                  # the shipped digits data
//! cargo run --example feature_summary -- FILE [LABEL]  # any Parquet file (or directory)
//! ```

use quiver_driver::output::print_table;
use quiver_driver::{Dataset, Runner};

#[tokio::main]
async fn main() -> quiver_driver::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .or_else(quiver_driver::shipped_digits)
        .expect("give a Parquet file: cargo run --example feature_summary -- FILE");
    let label = args.next().or_else(|| Some("label".to_string()));

    let session = quiver_driver::session()?;
    let df = session.read(&path).await?;
    let mut ds = Dataset::new(df);
    if let Some(l) = label.filter(|l| ds.columns().contains(l)) {
        ds = ds.with_label(&l)?;
    }
    // Every numeric column except the label is a feature.
    let ds = ds.with_numeric_features_except(&[])?;
    let summary = session.summarize(&ds, Runner::Embedded).await?;

    println!("{path}: {} rows, {} features", summary.count, summary.dim());
    let table = summary.to_record_batch(&ds.feature_names()?)?;
    print_table(&mut std::io::stdout(), &[table])?;
    Ok(())
}
