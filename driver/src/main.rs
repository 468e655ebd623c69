//! The `quiver` command: a thin layer of flag parsing over `quiver_driver`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quiver_driver::commands::{bench, models, quickstart, sql, tune};
use quiver_driver::{QuiverConfig, Result};

/// Quiver: a distributed dataframe ML engine on Arrow, DataFusion and Ballista.
#[derive(Debug, Parser)]
#[command(name = "quiver", version)]
struct Cli {
    /// Set a configuration key, e.g. `--config quiver.target_partitions=4` (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", global = true)]
    config: Vec<String>,

    /// Model store URL or path (same as `--config quiver.model_store=…`).
    #[arg(long, value_name = "URL", global = true)]
    models: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end tour on the shipped digits data (embedded, nothing to start).
    Quickstart {
        /// Data to use instead of the shipped digits (any format Quiver reads).
        #[arg(long, value_name = "PATH|URL")]
        data: Option<String>,
    },
    /// Run SQL (with CREATE MODEL, ml_predict and the other ML statements and functions) and
    /// print the results; with neither -e nor -f, an interactive prompt.
    Sql {
        /// SQL text to run (several statements separated by `;`).
        #[arg(
            short = 'e',
            long = "execute",
            value_name = "SQL",
            conflicts_with = "file"
        )]
        execute: Option<String>,
        /// File of SQL statements to run.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        /// Run on a Ballista cluster (df://host:port).
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
    },
    /// Hyperparameter search of an MLlib estimator described in a TOML file.
    Tune {
        /// The search spec (data, model, search, space).
        spec: std::path::PathBuf,
    },
    /// Benchmarks on seeded synthetic data (build with --release for meaningful numbers).
    Bench {
        #[command(subcommand)]
        case: BenchCase,
    },
    /// List, show and drop models in the model store.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// List the configuration keys with their defaults.
    Config,
}

#[derive(Debug, Subcommand)]
enum BenchCase {
    /// Search overhead per trial, TPE proposal time, a 64-trial logistic-regression search.
    Search {
        /// Trials of the trivial objective.
        #[arg(long, default_value_t = 1000)]
        trials: usize,
    },
    /// ml_predict over Parquet against a scan of the same columns; single-row latency.
    Predict {
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Directory for the generated Parquet file (a temporary one by default).
        #[arg(long)]
        dir: Option<String>,
    },
    /// The feature summary: local runner, embedded (memory and Parquet), against a plain sum.
    Summary {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        /// Timed runs per case; the median is reported.
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Skip the Parquet-on-disk cases.
        #[arg(long)]
        no_parquet: bool,
    },
    /// LinearRegression, LogisticRegression and KMeans fits and batch predicts on the local and
    /// the embedded runner, against the feature summary over the same data.
    Algorithms {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Iterations of LogisticRegression and Lloyd passes of KMeans (all run).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the generated data to this Parquet file (columns features, label, class),
        /// e.g. to time scikit-learn or Spark on the same rows (scripts/bench_compare.py).
        #[arg(long)]
        export: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// Latest version of every model.
    List,
    /// Metadata of a model (latest version unless --version).
    Show {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a model version, or all its versions.
    Drop {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
}

fn config(cli: &Cli) -> Result<QuiverConfig> {
    let mut config = QuiverConfig::default();
    for pair in &cli.config {
        let (k, v) =
            pair.split_once('=')
                .ok_or_else(|| quiver_driver::QuiverError::InvalidConfigValue {
                    key: pair.clone(),
                    value: String::new(),
                    reason: "expected KEY=VALUE".to_string(),
                })?;
        config.set(k.trim(), v.trim())?;
    }
    if let Some(m) = &cli.models {
        config.set("quiver.model_store", m)?;
    }
    Ok(config)
}

async fn run(cli: Cli) -> Result<()> {
    let config = config(&cli)?;
    let mut out = std::io::stdout().lock();
    if let Command::Config = cli.command {
        for k in quiver_driver::engine::CONFIG_KEYS {
            writeln!(out, "{:<30} default {:<40} {}", k.key, k.default, k.doc).ok();
        }
        return Ok(());
    }
    let session = quiver_driver::session_with(config)?;
    match cli.command {
        Command::Quickstart { data } => {
            quickstart::quickstart(&session, data.as_deref(), &mut out).await?;
        }
        Command::Sql {
            execute,
            file,
            cluster,
        } => {
            if let Some(url) = cluster {
                return Err(quiver_driver::QuiverError::InvalidParam {
                    param: "--cluster".to_string(),
                    reason: format!(
                        "cannot run on {url}: cluster sessions arrive with the Ballista integration; run without --cluster (embedded)"
                    ),
                });
            }
            let text = match (execute, file) {
                (Some(sql), _) => sql,
                (None, Some(path)) => std::fs::read_to_string(&path).map_err(|source| {
                    quiver_driver::QuiverError::Io {
                        path: path.clone(),
                        source,
                    }
                })?,
                (None, None) => return sql::shell(&session).await,
            };
            sql::run_sql(&session, &text, &mut out).await?;
        }
        Command::Tune { spec } => {
            tune::tune(&session, &spec, &mut out).await?;
        }
        Command::Bench { case } => match case {
            BenchCase::Search { trials } => bench::search(&session, trials, &mut out).await?,
            BenchCase::Predict {
                rows,
                features,
                iters,
                seed,
                dir,
            } => {
                let opts = bench::PredictBench {
                    rows,
                    features,
                    iters,
                    seed,
                    dir,
                };
                bench::predict(&session, &opts, &mut out).await?;
            }
            BenchCase::Summary {
                rows,
                features,
                iters,
                seed,
                no_parquet,
            } => {
                let opts = bench::SummaryBench {
                    rows,
                    features,
                    iters,
                    seed,
                    parquet: !no_parquet,
                };
                bench::summary(&session, &opts, &mut out).await?;
            }
            BenchCase::Algorithms {
                rows,
                features,
                k,
                iters,
                seed,
                export,
            } => {
                let opts = bench::AlgorithmsBench {
                    rows,
                    features,
                    k,
                    iters,
                    seed,
                    export,
                };
                bench::algorithms(&session, &opts, &mut out).await?;
            }
        },
        Command::Models { action } => match action {
            ModelsAction::List => models::list(&session, &mut out).await?,
            ModelsAction::Show { name, version } => {
                models::show(&session, &name, version, &mut out).await?
            }
            ModelsAction::Drop { name, version } => {
                models::drop(&session, &name, version, &mut out).await?
            }
        },
        Command::Config => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
