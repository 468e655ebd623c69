//! Your own objective on a cluster's executors: a model Quiver does not ship — a
//! distance-weighted k-nearest-neighbours regressor, written below — tuned by a search whose
//! trials run on the executors.
//!
//! A Rust closure exists only in the program that made it, so the objective is a
//! [`TaskRunner`] registered by name, and this one program plays every role (what SparkTrials
//! does by pickling the objective): it registers the runner with
//! `quiver_executor::install_with` and then runs as
//!
//! ```text
//! custom_objective scheduler --port 50050                       # or a stock quiver-scheduler
//! custom_objective executor --scheduler df://127.0.0.1:50050 --port 50051 --grpc-port 50052
//! custom_objective executor --scheduler df://127.0.0.1:50050 --port 50053 --grpc-port 50054
//! custom_objective search --cluster df://127.0.0.1:50050 --trials 24 --parallel 4
//! custom_objective search --trials 24 --parallel 2              # the same search, embedded
//! ```
//!
//! Executors that lack the runner (a stock `quiver-executor`) fail each trial with an error
//! that names the kind and says how to register it. The same seed gives the same trials on
//! every runner, so the embedded and the cluster search agree.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use quiver_driver::engine::fanout::{TaskOutcome, TaskRunner};
use quiver_driver::mllib::tuning::{Algo, Search, Space, Tpe, hp};
use quiver_driver::{QuiverConfig, QuiverError, Result, Runner};
use quiver_executor::cli::{ExecutorArgs, SchedulerArgs, init_logging};

/// The task kind of the objective: the name every process knows it by.
const KIND: &str = "example.knn";

/// Trains and scores the k-NN regressor with a trial's `k` and distance power `p` on
/// synthetic data (the same in every process): loss = held-out mean squared error.
#[derive(Debug)]
struct KnnObjective;

impl TaskRunner for KnnObjective {
    fn kind(&self) -> &str {
        KIND
    }

    fn run(&self, params: &str) -> Result<TaskOutcome> {
        let v: serde_json::Value =
            serde_json::from_str(params).map_err(|source| QuiverError::Json {
                context: format!("{KIND} parameters"),
                source,
            })?;
        let bad = |reason: String| QuiverError::InvalidParam {
            param: KIND.to_string(),
            reason,
        };
        let k = v["k"]
            .as_f64()
            .filter(|k| *k >= 1.0 && k.fract() == 0.0)
            .ok_or_else(|| bad(format!("k must be a whole number ≥ 1, got {}", v["k"])))?
            as usize;
        let power = v["p"]
            .as_f64()
            .filter(|p| p.is_finite() && *p >= 0.0)
            .ok_or_else(|| bad(format!("p must be a number ≥ 0, got {}", v["p"])))?;
        let (train, test) = data();
        let mse = test
            .iter()
            .map(|(x, y)| (Knn { k, power }.predict(&train, x) - y).powi(2))
            .sum::<f64>()
            / test.len() as f64;
        Ok(TaskOutcome {
            loss: Some(mse),
            metrics: serde_json::json!({ "mse": mse }),
        })
    }
}

/// Rows of (x₁, x₂) → y.
type Rows = Vec<([f64; 2], f64)>;

/// 600 training and 200 held-out rows of y = sin(3·x₁) + cos(2·x₂) + noise, from a fixed seed.
fn data() -> (Rows, Rows) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let rows: Rows = (0..800)
        .map(|_| {
            let x = [uniform() * 4.0 - 2.0, uniform() * 4.0 - 2.0];
            let noise = (uniform() - 0.5) * 0.6;
            (x, (3.0 * x[0]).sin() + (2.0 * x[1]).cos() + noise)
        })
        .collect();
    let (train, test) = rows.split_at(600);
    (train.to_vec(), test.to_vec())
}

/// k nearest neighbours, weighted by 1 / distance^power.
struct Knn {
    k: usize,
    power: f64,
}

impl Knn {
    fn predict(&self, train: &Rows, x: &[f64; 2]) -> f64 {
        let mut by_distance: Vec<(f64, f64)> = train
            .iter()
            .map(|(t, y)| (((t[0] - x[0]).powi(2) + (t[1] - x[1]).powi(2)).sqrt(), *y))
            .collect();
        let k = self.k.min(by_distance.len());
        by_distance.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        let (mut num, mut den) = (0.0, 0.0);
        for (d, y) in &by_distance[..k] {
            let w = 1.0 / (d.powf(self.power) + 1e-9);
            num += w * y;
            den += w;
        }
        num / den
    }
}

#[derive(Debug, Parser)]
#[command(about = "A search of an objective of this program's own, on a cluster or embedded")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scheduler (a stock quiver-scheduler works as well).
    Scheduler(SchedulerArgs),
    /// Run an executor that knows this program's objective.
    Executor {
        /// Leave the objective out (to see what an executor without it, such as a stock
        /// quiver-executor, reports).
        #[arg(long)]
        without_objective: bool,
        #[command(flatten)]
        args: ExecutorArgs,
    },
    /// Run the search and print its best trial.
    Search {
        /// The cluster's scheduler (df://host:port); embedded when absent.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, default_value_t = 24)]
        trials: usize,
        /// Trials at once.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

async fn search(cluster: Option<String>, trials: usize, parallel: usize, seed: u64) -> Result<()> {
    let config = QuiverConfig::default();
    let session = match &cluster {
        Some(url) => quiver_driver::remote_session_with(url, config).await?,
        None => quiver_driver::session_with(
            config.with_pairs([("quiver.compute_threads", parallel.to_string().as_str())])?,
        )?,
    };
    let space = Space::new(vec![hp::randint("k", 1, 40), hp::uniform("p", 0.0, 3.0)])?;
    let result = Search::task(space, KIND)
        .algo(Algo::Tpe(Tpe::default()))
        .max_evals(trials)
        .parallelism(parallel)
        .seed(seed)
        // Embedded: a DataFusion query per batch, one partition per trial (on a cluster, its
        // partitions run on the executors).
        .runner(Runner::Embedded)
        .run(&session)
        .await?;
    let mut workers: Vec<&str> = result.trials.iter().map(|t| t.worker.as_str()).collect();
    workers.sort();
    workers.dedup();
    let failed = result.trials.iter().filter(|t| t.message.is_some()).count();
    println!(
        "{} trials ({failed} failed) on {}",
        result.trials.len(),
        workers.join(", ")
    );
    if let Some(t) = result.trials.iter().find(|t| t.message.is_some()) {
        println!(
            "trial {} failed: {}",
            t.id,
            t.message.as_deref().unwrap_or("")
        );
    }
    match result.best {
        Some(best) => println!(
            "best: trial {} {} loss {:.6}",
            best.id,
            serde_json::to_string(&best.params).unwrap_or_default(),
            best.loss.unwrap_or(f64::NAN)
        ),
        None => println!("best: none"),
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    init_logging();
    let cli = Cli::parse();
    let run = async {
        // Every role registers the objective before anything else.
        let without = matches!(
            cli.command,
            Command::Executor {
                without_objective: true,
                ..
            }
        );
        if !without {
            quiver_executor::install_with(|r| r.add_task(Arc::new(KnnObjective)))?;
        }
        match cli.command {
            Command::Scheduler(args) => quiver_executor::run_scheduler(args.try_into()?).await,
            Command::Executor { args, .. } => quiver_executor::run_executor(args.try_into()?).await,
            Command::Search {
                cluster,
                trials,
                parallel,
                seed,
            } => search(cluster, trials, parallel, seed).await,
        }
    };
    if let Err(e) = run.await {
        eprintln!("custom_objective: {e}");
        std::process::exit(1);
    }
}
