//! The `quiver` command: a thin layer of flag parsing over `quiver_driver`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quiver_driver::commands::{
    bench, bench_device, bench_trees, cluster, models, quickstart, sql, tune,
};
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

    /// The cluster's auth token file (same as `--config quiver.cluster.auth_token_file=…`;
    /// else $QUIVER_AUTH_TOKEN). `quiver cluster up` writes one into its directory.
    #[arg(long, value_name = "FILE", global = true)]
    auth_token_file: Option<std::path::PathBuf>,

    /// The cluster's CA certificate: connect with TLS and verify the cluster against it (same
    /// as `--config quiver.cluster.tls_ca_file=…`). `quiver cluster up --tls` writes one.
    #[arg(long, value_name = "FILE", global = true)]
    tls_ca_file: Option<std::path::PathBuf>,

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
        /// Run the trials on a Ballista cluster (df://host:port); overrides the spec's
        /// `[search] cluster`.
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
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
    /// Start, inspect and stop a local cluster (a scheduler and executors on loopback).
    Cluster {
        #[command(subcommand)]
        action: Box<ClusterAction>,
    },
    /// List the configuration keys with their defaults.
    Config,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Start a scheduler and N executors as background processes; returns once all are ready.
    Up {
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Directory for the state file and the logs.
        #[arg(long, default_value = "quiver-cluster")]
        dir: std::path::PathBuf,
        /// The scheduler's port (executors take free ports).
        #[arg(long, default_value_t = 50050)]
        port: u16,
        /// Tasks each executor runs at once (default: the number of cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Memory each executor's tasks may reserve together, e.g. 8GB (default: unlimited).
        #[arg(long, value_parser = memory_size)]
        memory_limit: Option<String>,
        /// Memory each executor keeps prepared partitions of iterative fits in, e.g. 4GB; 0
        /// keeps none (default: a quarter of the host's memory per executor).
        #[arg(long, value_parser = memory_size)]
        cache_memory: Option<String>,
        /// Where each executor's batch scoring runs: auto, cpu, cuda or cuda:N (passed to
        /// every executor as --device).
        #[arg(long, value_parser = quiver_engine::device::DeviceChoice::parse)]
        device: Option<quiver_engine::device::DeviceChoice>,
        /// Seconds to wait for every process to be ready.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Start without an auth token: anyone who reaches the ports can use the cluster
        /// (a trusted network only).
        #[arg(long)]
        no_auth: bool,
        /// A local directory the cluster may read for remote sessions (repeatable; default:
        /// the current directory). Other local paths are refused.
        #[arg(long = "data-root", value_name = "DIR")]
        data_roots: Vec<std::path::PathBuf>,
        /// Let remote sessions write through the cluster (COPY … TO, INSERT INTO).
        #[arg(long)]
        allow_writes: bool,
        /// Encrypt every connection: a fresh CA and certificate for localhost go into --dir
        /// (clients then give --tls-ca-file DIR/tls-ca.pem).
        #[arg(long)]
        tls: bool,
    },
    /// Whether each process of the cluster started from --dir is running and listening.
    Status {
        #[arg(long, default_value = "quiver-cluster")]
        dir: std::path::PathBuf,
    },
    /// Stop the cluster started from --dir (SIGTERM, then SIGKILL after 5 s).
    Down {
        #[arg(long, default_value = "quiver-cluster")]
        dir: std::path::PathBuf,
    },
    /// Run a scheduler in the foreground (the flags of quiver-scheduler).
    #[command(hide = true)]
    Scheduler(quiver_executor::cli::SchedulerArgs),
    /// Run an executor in the foreground (the flags of quiver-executor).
    #[command(hide = true)]
    Executor(quiver_executor::cli::ExecutorArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCase {
    /// Search overhead per trial, TPE proposal time, a 64-trial logistic-regression search.
    Search {
        /// Trials of the trivial objective.
        #[arg(long, default_value_t = 1000)]
        trials: usize,
    },
    /// Logistic-regression iterations embedded vs a local cluster of 1 and 2 executors.
    Cluster {
        /// Row counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        rows: Vec<usize>,
        #[arg(long, default_value_t = 20)]
        features: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Trials of the trivial search fanned out to the 2-executor cluster (0: none).
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// Start the local clusters without an auth token, as `quiver cluster up --no-auth`:
        /// the scheduler pushes tasks instead of executors polling for them.
        #[arg(long)]
        no_auth: bool,
    },
    /// Batch prediction from memory on the CPU against a CUDA device, and the per-batch
    /// crossover (the device side only where one is usable).
    Device {
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        /// Rows per batch handed to a model's predict function.
        #[arg(long, default_value_t = 1_048_576)]
        batch_rows: usize,
        /// k of the k-means model.
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The device to measure: cuda or cuda:N.
        #[arg(long, default_value = "cuda", value_parser = quiver_engine::device::DeviceChoice::parse)]
        device: quiver_engine::device::DeviceChoice,
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
    /// Boosted trees and a random forest on the rows of `bench algorithms` (binary label), with
    /// a batch predict, against the feature summary over the same data.
    Trees {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 20)]
        features: usize,
        /// Boosting rounds.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Depth of the boosted trees.
        #[arg(long, default_value_t = 5)]
        depth: usize,
        #[arg(long, default_value_t = 32)]
        bins: usize,
        /// Trees of the random forest.
        #[arg(long, default_value_t = 20)]
        trees: usize,
        #[arg(long, default_value_t = 8)]
        forest_depth: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the rows to this Parquet file (LightGBM and XGBoost on the same rows:
        /// scripts/bench_trees.py).
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
    if let Some(f) = &cli.auth_token_file {
        config.set("quiver.cluster.auth_token_file", &f.to_string_lossy())?;
    }
    if let Some(f) = &cli.tls_ca_file {
        config.set("quiver.cluster.tls_ca_file", &f.to_string_lossy())?;
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
    if let Command::Cluster { action } = cli.command {
        return run_cluster(*action, &mut out).await;
    }
    let cluster_url = match &cli.command {
        Command::Sql {
            cluster: Some(url), ..
        } => Some(url.clone()),
        Command::Tune { spec, cluster } => match cluster {
            Some(url) => Some(url.clone()),
            None => tune::spec_cluster(spec)?,
        },
        _ => None,
    };
    let session = match cluster_url {
        Some(url) => quiver_driver::remote_session_with(&url, config).await?,
        None => quiver_driver::session_with(config)?,
    };
    match cli.command {
        Command::Quickstart { data } => {
            quickstart::quickstart(&session, data.as_deref(), &mut out).await?;
        }
        Command::Sql { execute, file, .. } => {
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
        Command::Tune { spec, .. } => {
            tune::tune(&session, &spec, &mut out).await?;
        }
        Command::Bench { case } => match case {
            BenchCase::Search { trials } => bench::search(&session, trials, &mut out).await?,
            BenchCase::Cluster {
                rows,
                features,
                iters,
                seed,
                trials,
                no_auth,
            } => {
                let opts = bench::ClusterBench {
                    rows,
                    features,
                    iters,
                    seed,
                    trials,
                    auth: !no_auth,
                };
                bench::cluster(&session, &opts, &mut out).await?;
            }
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
            BenchCase::Device {
                rows,
                features,
                batch_rows,
                k,
                seed,
                device,
            } => {
                let opts = bench_device::DeviceBench {
                    rows,
                    features,
                    batch_rows,
                    k,
                    seed,
                    device,
                };
                bench_device::device(&session, &opts, &mut out).await?;
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
            BenchCase::Trees {
                rows,
                features,
                rounds,
                depth,
                bins,
                trees,
                forest_depth,
                seed,
                export,
            } => {
                let opts = bench_trees::TreesBench {
                    rows,
                    features,
                    rounds,
                    depth,
                    bins,
                    trees,
                    forest_depth,
                    seed,
                    export,
                };
                bench_trees::trees(&session, &opts, &mut out).await?;
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
        Command::Config | Command::Cluster { .. } => {}
    }
    Ok(())
}

async fn run_cluster(action: ClusterAction, out: &mut impl Write) -> Result<()> {
    match action {
        ClusterAction::Up {
            executors,
            dir,
            port,
            concurrent_tasks,
            memory_limit,
            cache_memory,
            device,
            timeout,
            no_auth,
            data_roots,
            allow_writes,
            tls,
        } => {
            let data_roots = if data_roots.is_empty() {
                vec![
                    std::env::current_dir().map_err(|source| quiver_driver::QuiverError::Io {
                        path: ".".into(),
                        source,
                    })?,
                ]
            } else {
                data_roots
            };
            let opts = cluster::UpOptions {
                dir,
                executors,
                port,
                concurrent_tasks,
                memory_limit,
                cache_memory,
                device,
                auth: !no_auth,
                data_roots,
                allow_writes,
                tls,
                ready_timeout: std::time::Duration::from_secs(timeout),
            };
            // Readiness waits block: off the async runtime, reporting into a buffer (this
            // thread holds stdout).
            let report = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::new();
                cluster::up(&opts, &mut buf).map(|_| buf)
            })
            .await
            .map_err(|e| quiver_driver::QuiverError::internal(e.to_string()))??;
            out.write_all(&report).ok();
        }
        ClusterAction::Status { dir } => {
            cluster::status(&dir, out)?;
        }
        ClusterAction::Down { dir } => cluster::down(&dir, out)?,
        ClusterAction::Scheduler(args) => {
            quiver_executor::cli::init_logging();
            quiver_executor::run_scheduler(args.try_into()?).await?;
        }
        ClusterAction::Executor(args) => {
            quiver_executor::cli::init_logging();
            quiver_executor::run_executor(args.try_into()?).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    quiver_executor::cli::run_main(async_main())
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--memory-limit`: a size such as 8GB, checked here so a typo fails before any process starts.
fn memory_size(text: &str) -> std::result::Result<String, String> {
    quiver_driver::engine::config::parse_bytes(text)?;
    Ok(text.to_string())
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
