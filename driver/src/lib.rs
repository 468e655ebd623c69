//! # quiver-driver
//!
//! The `quiver` command and the facade Rust driver programs use. [`session`] returns an
//! embedded [`QuiverSession`] with every Quiver function installed; the command's subcommands
//! live in [`commands`] as library functions so that they can be tested.
//!
//! ```no_run
//! # async fn f() -> quiver_driver::Result<()> {
//! let session = quiver_driver::session()?;
//! let df = session.read("data/digits.parquet").await?;
//! let ds = quiver_driver::Dataset::new(df).with_label("label")?.with_numeric_features_except(&[])?;
//! let summary = session.summarize(&ds, quiver_driver::Runner::Local).await?;
//! println!("{:?}", summary.mean);
//! # Ok(()) }
//! ```

pub mod commands;
pub mod output;

pub use quiver_engine as engine;
pub use quiver_engine::{
    DataFormat, Dataset, FeatureSummary, QuiverConfig, QuiverError, QuiverSession, Result, Runner,
    Summarizer,
};
pub use quiver_mllib as mllib;

/// An embedded session with the default configuration and every Quiver function.
pub fn session() -> Result<QuiverSession> {
    session_with(QuiverConfig::default())
}

/// An embedded session with `config` and every Quiver function.
pub fn session_with(config: QuiverConfig) -> Result<QuiverSession> {
    quiver_executor::install()?;
    QuiverSession::embedded_with(config)
}

/// A session on the cluster at `url` (`df://host:port`) with `config` and every Quiver function.
pub async fn remote_session_with(url: &str, config: QuiverConfig) -> Result<QuiverSession> {
    quiver_executor::install()?;
    QuiverSession::remote_with(url, config).await
}

/// Where the shipped digits data lives: `data/digits.parquet` under the working directory, else
/// in the source tree this binary was built from.
pub fn shipped_digits() -> Option<String> {
    let candidates = [
        std::path::PathBuf::from("data/digits.parquet"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.parquet"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().to_string())
}
