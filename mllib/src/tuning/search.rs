//! `Search`: proposes points (random, grid or TPE), evaluates them in parallel batches with the
//! fan-out primitive (failures and panics become failed trials), keeps a trial log on the
//! object store and resumes from it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use quiver_engine::fanout::{
    FanOutOptions, INTERMEDIATE_VALUES, PruningRegistration, Task, TaskOutcome, TaskRegistry,
    TaskResult, TaskRunner, TaskStatus, deadline_after, fan_out_local,
};
use quiver_engine::{QuiverError, QuiverSession, Runner};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::objective::{
    DistributedTrainEval, TRAIN_EVAL, TRAIN_EVAL_DISTRIBUTED, TrainEval, train_eval_runner,
};
use super::prune::{PruneBoard, Pruner};
use super::space::{Dist, Point, Space};
use super::tpe::Tpe;
use crate::error::{MllibError, Result};

/// The most points a grid search enumerates.
pub const MAX_GRID_POINTS: usize = 1_000_000;

/// How points are proposed.
#[derive(Debug, Clone, PartialEq)]
pub enum Algo {
    Random,
    /// Every grid point (see [`Space::grid`]) in order, `points` values per continuous range.
    Grid {
        points: usize,
    },
    Tpe(Tpe),
    /// Exactly these points, in order (a parameter grid from [`super::ParamGridBuilder`], or
    /// hand-picked points): the search ends when all are evaluated.
    Points(Vec<Point>),
}

/// Where a trial of the built-in objective ([`Search::train_eval`]) trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrialPlacement {
    /// The trial's data is read into the memory of the process that runs it (an executor on a
    /// cluster) and the fit runs there alone: no job per pass, so small and mid-sized data
    /// trains fastest this way.
    Executor,
    /// The trial is a distributed fit driven from the search's process: every pass is a job of
    /// the search's session over the data where it lies (executors on a cluster), up to
    /// `parallelism` fits at once. For data one executor cannot hold.
    Distributed,
    /// `Distributed` on a cluster when the dataset's files hold more than
    /// [`AUTO_DISTRIBUTED_BYTES`], else `Executor`.
    #[default]
    Auto,
}

/// Above this many bytes of data files, [`TrialPlacement::Auto`] places a cluster search's
/// trials as distributed fits (a trial holds its data in memory several times over: read,
/// split, encoded).
pub const AUTO_DISTRIBUTED_BYTES: u64 = 1 << 30;

/// One evaluated point: a line of the trial log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: u64,
    pub params: Point,
    pub status: TaskStatus,
    pub loss: Option<f64>,
    pub metrics: Value,
    pub message: Option<String>,
    pub worker: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The values the trial reported while it ran, as `(step, value)` (a pruned trial's loss is
    /// its last one). Non-finite values are kept as ±f64::MAX (NaN as the worst).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intermediate: Vec<(u64, f64)>,
    /// The trial of an earlier run this one runs again (that one was cancelled or lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
}

impl Trial {
    /// Whether the trial never got to a result of its own: cancelled (the search's timeout)
    /// or lost with its executor. A resumed search runs such trials again instead of counting
    /// them.
    pub fn unfinished(&self) -> bool {
        self.status == TaskStatus::Cancelled
            || (self.status == TaskStatus::Failed
                && self
                    .message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("lost:")))
    }
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// The finished trial with the lowest loss (`None` when every trial failed; pruned trials
    /// never count).
    pub best: Option<Trial>,
    /// Every trial in id order (resumed ones included).
    pub trials: Vec<Trial>,
    /// Why the search stopped.
    pub stopped: String,
}

type Objective = dyn Fn(&Point) -> std::result::Result<f64, String> + Send + Sync;
type BatchCallback = dyn Fn(&[Trial]) + Send + Sync;

/// What a trial runs.
#[derive(Clone)]
enum ObjectiveKind {
    /// A Rust closure (local and embedded runs).
    Closure(Arc<Objective>),
    /// The built-in train-and-evaluate task; the trial's point goes into its `params`.
    TrainEval(Box<TrainEval>),
    /// A task runner registered in every Quiver process, by kind; the point is its params.
    Task(String),
}

/// A hyperparameter search over a [`Space`] with a Rust objective (loss to minimise).
#[derive(Clone)]
pub struct Search {
    space: Space,
    objective: ObjectiveKind,
    algo: Algo,
    max_evals: usize,
    parallelism: usize,
    threads_per_trial: Option<usize>,
    timeout: Option<Duration>,
    trial_timeout: Option<Duration>,
    max_failures: Option<usize>,
    pruner: Option<Pruner>,
    placement: TrialPlacement,
    loss_threshold: Option<f64>,
    no_progress: Option<usize>,
    seed: u64,
    trial_log: Option<String>,
    runner: Runner,
    asynchronous: bool,
    on_batch: Option<Arc<BatchCallback>>,
}

impl fmt::Debug for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Search")
            .field("space", &self.space)
            .field("algo", &self.algo)
            .field("max_evals", &self.max_evals)
            .field("parallelism", &self.parallelism)
            .field("pruner", &self.pruner)
            .field("seed", &self.seed)
            .finish()
    }
}

/// Stop when the best loss has not improved for `k` finished trials.
pub fn no_progress(k: usize) -> usize {
    k
}

/// The fan-out task that runs the objective: its parameters are the point as JSON.
struct ObjectiveRunner {
    kind: String,
    objective: Arc<Objective>,
}

impl fmt::Debug for ObjectiveRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)
    }
}

impl TaskRunner for ObjectiveRunner {
    fn kind(&self) -> &str {
        &self.kind
    }
    fn run(&self, params: &str) -> quiver_engine::Result<TaskOutcome> {
        let point: Point =
            serde_json::from_str(params).map_err(|e| json_err("trial parameters", e))?;
        match (self.objective)(&point) {
            Ok(loss) if loss.is_nan() => Err(QuiverError::TaskFailed {
                task: self.kind.clone(),
                reason: "the objective returned NaN".to_string(),
            }),
            Ok(loss) => Ok(TaskOutcome {
                loss: Some(loss),
                metrics: Value::Null,
            }),
            Err(reason) => Err(QuiverError::TaskFailed {
                task: self.kind.clone(),
                reason,
            }),
        }
    }
}

impl Search {
    pub fn new(
        space: Space,
        objective: impl Fn(&Point) -> std::result::Result<f64, String> + Send + Sync + 'static,
    ) -> Self {
        Self::with_objective(space, ObjectiveKind::Closure(Arc::new(objective)))
    }

    /// A search whose trials train and score an MLlib estimator (see [`TrainEval`]): it runs
    /// anywhere fan-out tasks run.
    pub fn train_eval(space: Space, spec: TrainEval) -> Self {
        Self::with_objective(space, ObjectiveKind::TrainEval(Box::new(spec)))
    }

    /// A search whose trials run the registered task runner `kind` (registered in every
    /// process, e.g. `quiver.sphere`) with the trial's point as its parameters: like
    /// [`Search::train_eval`], it runs anywhere fan-out tasks run, cluster executors included.
    pub fn task(space: Space, kind: impl Into<String>) -> Self {
        Self::with_objective(space, ObjectiveKind::Task(kind.into()))
    }

    fn with_objective(space: Space, objective: ObjectiveKind) -> Self {
        Search {
            space,
            objective,
            algo: Algo::Tpe(Tpe::default()),
            max_evals: 100,
            parallelism: 1,
            threads_per_trial: None,
            timeout: None,
            trial_timeout: None,
            max_failures: None,
            pruner: None,
            placement: TrialPlacement::Auto,
            loss_threshold: None,
            no_progress: None,
            seed: 0,
            trial_log: None,
            runner: Runner::Local,
            asynchronous: false,
            on_batch: None,
        }
    }
    /// Defaults to TPE.
    pub fn algo(mut self, a: Algo) -> Self {
        self.algo = a;
        self
    }
    /// Defaults to 100.
    pub fn max_evals(mut self, n: usize) -> Self {
        self.max_evals = n;
        self
    }
    /// Trials run at once. Defaults to 1.
    pub fn parallelism(mut self, p: usize) -> Self {
        self.parallelism = p;
        self
    }
    /// Threads each trial may use; `parallelism × threads_per_trial` may not exceed the
    /// session's compute threads. Defaults to the session's compute threads shared among the
    /// trials at once (at least 1; 1 for trials on a cluster's executors, which run as many
    /// trials as they have task slots).
    pub fn threads_per_trial(mut self, t: usize) -> Self {
        self.threads_per_trial = Some(t);
        self
    }

    /// The threads each trial gets: as set, else the default above.
    fn trial_threads(&self, session: &QuiverSession) -> usize {
        self.threads_per_trial.unwrap_or_else(|| {
            if self.on_executors(session) {
                1
            } else {
                (session.config().compute_threads / self.parallelism.max(1)).max(1)
            }
        })
    }

    /// Whether the trials run on a cluster's executors (not in this process).
    fn on_executors(&self, session: &QuiverSession) -> bool {
        session.is_cluster() && self.runner == Runner::Embedded
    }
    /// No new trial starts after this long, and running ones are cancelled (recorded as
    /// `cancelled`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Stop once a trial reaches this loss.
    /// Each trial's own time limit: a trial running past it stops at its next statistic pass
    /// (a closure that never reaches one is no longer waited for) and is recorded failed,
    /// "timed out"; the search goes on.
    pub fn trial_timeout(mut self, t: Duration) -> Self {
        self.trial_timeout = Some(t);
        self
    }

    /// Stop the search once `n` trials have failed (timed-out ones included; cancelled ones
    /// are not failures): a search whose objective is broken ends early instead of spending
    /// its whole budget. The trials so far are kept and logged.
    pub fn max_failures(mut self, n: usize) -> Self {
        self.max_failures = Some(n);
        self
    }

    /// Stops unpromising trials while they train (see [`super::prune`]): trials report
    /// intermediate values at steps (the built-in objective: iterations, Lloyd passes or
    /// boosting rounds, scored on its held-out rows; a closure: [`report`]) and are recorded
    /// `pruned` when the pruner stops them. The board that judges them lives in this process;
    /// trials on cluster executors reach it over TCP (see [`quiver_engine::board`]), as they
    /// report.
    pub fn pruner(mut self, p: Pruner) -> Self {
        self.pruner = Some(p);
        self
    }

    /// Where trials of the built-in objective train (see [`TrialPlacement`]); defaults to
    /// `Auto`.
    pub fn trial_placement(mut self, p: TrialPlacement) -> Self {
        self.placement = p;
        self
    }

    pub fn loss_threshold(mut self, l: f64) -> Self {
        self.loss_threshold = Some(l);
        self
    }
    /// Stop after this many finished trials without a better loss (see [`no_progress`]).
    pub fn early_stop(mut self, k: usize) -> Self {
        self.no_progress = Some(k);
        self
    }
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// A JSON-lines trial log (path or URL): a segment object beside it after every batch,
    /// rewritten whole at the end, resumed from (with its segments) if it exists.
    pub fn trial_log(mut self, location: impl Into<String>) -> Self {
        self.trial_log = Some(location.into());
        self
    }
    /// Where trials run: `Local` (threads of this process) or `Embedded` (a DataFusion query
    /// with one partition per concurrent trial: executors on a cluster). Defaults to `Local`.
    pub fn runner(mut self, r: Runner) -> Self {
        self.runner = r;
        self
    }

    /// Start a trial whenever one ends instead of running batches of `parallelism` (no slot
    /// waits for a batch's slowest trial; hyperopt's SparkTrials works this way). The trials
    /// then depend on the order trials end in, so the same seed no longer gives the same
    /// trials. Defaults to false.
    pub fn asynchronous(mut self, on: bool) -> Self {
        self.asynchronous = on;
        self
    }

    /// Called with every trial so far after each batch, or each trial when asynchronous
    /// (progress displays).
    pub fn on_batch(mut self, f: impl Fn(&[Trial]) + Send + Sync + 'static) -> Self {
        self.on_batch = Some(Arc::new(f));
        self
    }

    fn check(&self, session: &QuiverSession) -> Result<()> {
        self.space.check()?;
        let bad = |param: &str, reason: String| MllibError::InvalidParam {
            param: param.to_string(),
            reason,
        };
        if self.max_evals == 0 {
            return Err(bad(
                "max_evals",
                "at least one evaluation is needed".to_string(),
            ));
        }
        if self.trial_timeout.is_some_and(|t| t.is_zero()) {
            return Err(bad(
                "trial_timeout",
                "a trial's time limit must be positive".to_string(),
            ));
        }
        if self.max_failures == Some(0) {
            return Err(bad(
                "max_failures",
                "must be at least 1 (leave it unset to never stop on failures)".to_string(),
            ));
        }
        let trial_threads = self.trial_threads(session);
        if self.parallelism == 0 || trial_threads == 0 {
            return Err(bad(
                "parallelism",
                "parallelism and threads_per_trial must be ≥ 1".to_string(),
            ));
        }
        let cores = session.config().compute_threads;
        // On a cluster the executors run the trials (as many at once as they have task slots);
        // this process's cores bound only local and embedded runs.
        let on_executors = self.on_executors(session);
        let threads = self.parallelism.saturating_mul(trial_threads);
        if !on_executors && threads > cores {
            return Err(bad(
                "parallelism",
                format!(
                    "{} trials × {} threads each = {} threads, but the session has {cores} compute threads (quiver.compute_threads); lower parallelism or threads_per_trial",
                    self.parallelism, trial_threads, threads
                ),
            ));
        }
        if let Some(p) = &self.pruner {
            p.check()?;
        }
        if let Algo::Tpe(t) = &self.algo
            && !(t.gamma > 0.0 && t.gamma <= 1.0)
        {
            return Err(bad("gamma", format!("{} is not in (0, 1]", t.gamma)));
        }
        Ok(())
    }

    /// Trials on the executors: an executor runs as many trials at once as it has task slots
    /// (up to `parallelism`), each with `threads_per_trial` threads, and these must fit its
    /// cores (asked of the cluster), as trials here must fit this process's compute threads.
    /// More trials at once than the executors have slots wait for a free one.
    async fn check_executors(&self, session: &QuiverSession) -> Result<()> {
        let workers = match session.workers().await {
            Ok(w) => w,
            Err(e) => {
                log::warn!("threads_per_trial not checked against the executors: {e}");
                return Ok(());
            }
        };
        let threads = self.trial_threads(session).max(1);
        let over: Vec<String> = workers
            .iter()
            .filter(|w| w.slots.min(self.parallelism) * threads > w.cores)
            .map(|w| {
                format!(
                    "{} runs {} trial(s) at once (its task slots) × {threads} threads on {} cores",
                    w.worker,
                    w.slots.min(self.parallelism),
                    w.cores
                )
            })
            .collect();
        if !over.is_empty() {
            return Err(MllibError::InvalidParam {
                param: "threads_per_trial".to_string(),
                reason: format!(
                    "{} threads per trial oversubscribe the executors: {}; lower threads_per_trial or parallelism, or start executors with fewer task slots (--concurrent-tasks)",
                    threads,
                    over.join("; ")
                ),
            });
        }
        let slots: usize = workers.iter().map(|w| w.slots).sum();
        if self.parallelism > slots {
            log::info!(
                "{} trials at once asked, the executors have {slots} task slots: the others wait",
                self.parallelism
            );
        }
        Ok(())
    }

    /// Runs the search.
    pub async fn run(&self, session: &QuiverSession) -> Result<SearchResult> {
        self.check(session)?;
        let started = Instant::now();
        // Trials still running at the timeout are cancelled (recorded with that status).
        let deadline_ms = self.timeout.map(deadline_after);
        let header = match &self.trial_log {
            Some(_) => Some(self.log_header(session).await?),
            None => None,
        };
        let mut trials = match (&self.trial_log, &header) {
            (Some(log), Some(header)) => {
                let (written_by, trials) = read_log_and_header(session, log).await?;
                if let Some(written_by) = written_by {
                    header.check_resume(log, &written_by)?;
                }
                trials
            }
            _ => Vec::new(),
        };
        // The pruner's board, fed with what resumed trials reported, registered for the
        // trials of this process to report to.
        let board = self.pruner.clone().map(|p| {
            let p = match fixed_budget(&self.space) {
                Some(steps) => p.with_budget(steps),
                None => p,
            };
            Arc::new(PruneBoard::new(p))
        });
        if let Some(b) = &board {
            for t in &trials {
                b.replay(t.id, &t.intermediate, t.status == TaskStatus::Ok);
            }
        }
        let registration = board.as_ref().map(|b| {
            PruningRegistration::new(Arc::clone(b) as Arc<dyn quiver_engine::fanout::Pruning>)
        });
        let distributed = self.distributed(session).await?;
        if session.is_cluster() && self.runner == Runner::Embedded && !distributed {
            self.check_executors(session).await?;
        }
        // A distributed trial is driven from this process: its threads wait on the session's
        // jobs.
        let runner = if distributed {
            Runner::Local
        } else {
            self.runner
        };
        let mut registry = TaskRegistry::new();
        let kind = match &self.objective {
            ObjectiveKind::Closure(f) => {
                let kind = format!("quiver.search.objective.{}", self.seed);
                registry.register(Arc::new(ObjectiveRunner {
                    kind: kind.clone(),
                    objective: Arc::clone(f),
                }))?;
                kind
            }
            ObjectiveKind::TrainEval(_) if distributed => {
                registry.register(Arc::new(DistributedTrainEval::new(
                    session.clone(),
                    tokio::runtime::Handle::current(),
                )))?;
                TRAIN_EVAL_DISTRIBUTED.to_string()
            }
            ObjectiveKind::TrainEval(_) => {
                registry.register(train_eval_runner())?;
                TRAIN_EVAL.to_string()
            }
            ObjectiveKind::Task(kind) => {
                registry = session.functions().tasks().clone();
                if !registry.kinds().contains(kind) {
                    return Err(MllibError::InvalidParam {
                        param: "objective".to_string(),
                        reason: format!(
                            "no task runner of kind '{kind}' is registered; known: {}",
                            registry.kinds().join(", ")
                        ),
                    });
                }
                kind.clone()
            }
        };
        if session.is_cluster()
            && self.runner == Runner::Embedded
            && matches!(self.objective, ObjectiveKind::Closure(_))
        {
            return Err(MllibError::InvalidParam {
                param: "runner".to_string(),
                reason: "a Rust closure objective runs only in this process, not on cluster \
                         executors: use Runner::Local, or a registered task (Search::train_eval, \
                         Search::task)"
                    .to_string(),
            });
        }
        let registry = Arc::new(registry);
        let grid = match &self.algo {
            Algo::Grid { points } => {
                // Sized before it is built: a grid too large to enumerate is an error.
                match self.space.grid_size(*points) {
                    Some(n) if n <= MAX_GRID_POINTS => {}
                    n => {
                        return Err(MllibError::InvalidParam {
                            param: "grid_points".to_string(),
                            reason: format!(
                                "a grid of {} points per range makes {} points, more than the {MAX_GRID_POINTS} a grid search enumerates; lower grid_points or use random or tpe",
                                points,
                                n.map_or_else(|| "too many".to_string(), |n| n.to_string())
                            ),
                        });
                    }
                }
                Some(self.space.grid(*points))
            }
            Algo::Points(points) => Some(points.clone()),
            _ => None,
        };
        let limit = grid
            .as_ref()
            .map_or(self.max_evals, |g| g.len().min(self.max_evals));
        let mut stopped = format!("max_evals = {} reached", self.max_evals);
        if grid.as_ref().is_some_and(|g| g.len() <= self.max_evals) {
            stopped = "grid exhausted".to_string();
        }
        let run = Run {
            session,
            registry,
            kind,
            grid,
            limit,
            deadline_ms,
            started,
            header,
            first_id: next_id(&trials),
            board,
            pruning: registration.as_ref().map(PruningRegistration::key),
            runner,
            log: std::sync::Mutex::new(LogState::default()),
            retries: std::sync::Mutex::new(
                trials
                    .iter()
                    .filter(|t| t.unfinished())
                    .filter(|t| !trials.iter().any(|u| u.retry_of == Some(t.id)))
                    .map(|t| (t.id, t.params.clone()))
                    .collect(),
            ),
            discounted: trials.iter().filter(|t| t.unfinished()).count(),
        };
        let reason = if self.asynchronous {
            self.run_async(&run, &mut trials).await?
        } else {
            self.run_batches(&run, &mut trials).await?
        };
        if let Some(reason) = reason {
            stopped = reason;
        }
        // The whole log in one object again: what other tools read.
        if let Some(log) = &self.trial_log
            && run.log.lock().is_ok_and(|l| l.segments > 0)
        {
            write_log(session, log, run.header.as_ref(), &trials, &run.log, true).await?;
        }
        let best = trials
            .iter()
            .filter(|t| t.status == TaskStatus::Ok && t.loss.is_some())
            .min_by(|a, b| {
                a.loss
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.loss.unwrap_or(f64::INFINITY))
            })
            .cloned();
        Ok(SearchResult {
            best,
            trials,
            stopped,
        })
    }

    /// Batches of `parallelism` trials, each proposed from the trials before the batch: the
    /// same seed gives the same trials on every runner, and a resumed search continues exactly
    /// as an uninterrupted one would. Returns why it stopped early, if it did.
    async fn run_batches(&self, run: &Run<'_>, trials: &mut Vec<Trial>) -> Result<Option<String>> {
        loop {
            if let Some(reason) = self.stop_reason(trials, run) {
                return Ok(Some(reason));
            }
            if run.counted(trials) >= run.limit {
                return Ok(None);
            }
            let batch = self.parallelism.min(run.limit - run.counted(trials));
            let first_id = next_id(trials);
            // Proposals depend only on the seed and the trials so far: a resumed search
            // continues exactly as an uninterrupted one would.
            let mut rng = proposal_rng(self.seed, first_id);
            // The batch's proposals so far (none is running yet).
            let mut pending: Vec<(Option<u64>, Point)> = Vec::with_capacity(batch);
            let mut retry_of: Vec<Option<u64>> = Vec::with_capacity(batch);
            for _ in 0..batch {
                let (p, retry) = self.next_point(run, trials, &pending, &mut rng);
                pending.push((None, p));
                retry_of.push(retry);
            }
            let tasks: Vec<Task> = pending
                .iter()
                .enumerate()
                .map(|(i, (_, p))| self.trial_task(run, first_id + i as u64, p))
                .collect::<Result<_>>()?;
            let options = FanOutOptions::new(self.parallelism)
                .threads_per_task(self.trial_threads(run.session))
                .deadline_ms(run.deadline_ms)
                .task_timeout(self.trial_timeout)
                .pruning(run.pruning);
            let results = run
                .session
                .fan_out_with(
                    &tasks,
                    Arc::clone(&run.registry),
                    options,
                    run.runner,
                    |_| {},
                )
                .await?;
            for (((_, point), r), retry) in pending.into_iter().zip(results).zip(retry_of) {
                let mut t = run.trial(point, r);
                t.retry_of = retry;
                trials.push(t);
            }
            self.after_results(run, trials).await?;
        }
    }

    /// A new trial whenever one ends (no slot waits for the slowest trial of a batch): each
    /// proposal sees every finished trial, and the running ones as constant liars. Trials end
    /// in whatever order they take, so the trials depend on timing, not only on the seed.
    async fn run_async(&self, run: &Run<'_>, trials: &mut Vec<Trial>) -> Result<Option<String>> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut running: Vec<(u64, Point, Option<u64>)> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut id = next_id(trials);
        let mut stop: Option<String> = None;
        loop {
            while stop.is_none()
                && running.len() < self.parallelism
                && run.counted(trials) + running.len() < run.limit
            {
                if let Some(reason) = self.stop_reason(trials, run) {
                    stop = Some(reason);
                    break;
                }
                let pending: Vec<(Option<u64>, Point)> = running
                    .iter()
                    .map(|(t, p, _)| (Some(*t), p.clone()))
                    .collect();
                let mut rng = proposal_rng(self.seed, id);
                let (point, retry) = self.next_point(run, trials, &pending, &mut rng);
                let task = self.trial_task(run, id, &point)?;
                running.push((id, point, retry));
                let options = FanOutOptions::new(1)
                    .threads_per_task(self.trial_threads(run.session))
                    .deadline_ms(run.deadline_ms)
                    .task_timeout(self.trial_timeout)
                    .pruning(run.pruning);
                let registry = Arc::clone(&run.registry);
                let (session, runner) = (run.session.clone(), run.runner);
                // Each trial is its own tokio task: a trial computing inside a query blocks
                // the task that polls it, not the others.
                let handle = match runner {
                    // The local runner blocks its thread until the trial ends.
                    Runner::Local => tokio::task::spawn_blocking(move || {
                        fan_out_local(&[task], registry, options, |_| {})
                    }),
                    Runner::Embedded => tokio::spawn(async move {
                        session
                            .fan_out_with(&[task], registry, options, runner, |_| {})
                            .await
                    }),
                };
                in_flight.push(async move {
                    let results = handle.await.map_err(|e| {
                        QuiverError::internal(format!("a trial's task failed: {e}"))
                    })?;
                    Ok::<_, QuiverError>((id, results?))
                });
                id += 1;
            }
            let Some(done) = in_flight.next().await else {
                return Ok(stop);
            };
            let (done_id, mut results) = done?;
            let at = running
                .iter()
                .position(|(i, _, _)| *i == done_id)
                .expect("a running trial");
            let (_, point, retry) = running.remove(at);
            let r = results
                .pop()
                .ok_or_else(|| QuiverError::internal("a trial returned no result"))?;
            let pos = trials.partition_point(|t| t.id < done_id);
            let mut t = run.trial(point, r);
            t.retry_of = retry;
            trials.insert(pos, t);
            self.after_results(run, trials).await?;
            if stop.is_none() {
                stop = self.stop_reason(trials, run);
            }
        }
    }

    /// Whether this run's trials are distributed fits (see [`TrialPlacement`]).
    async fn distributed(&self, session: &QuiverSession) -> Result<bool> {
        let spec = match (&self.objective, self.placement) {
            (_, TrialPlacement::Executor) => return Ok(false),
            (ObjectiveKind::TrainEval(spec), _) => spec,
            (_, TrialPlacement::Distributed) => {
                return Err(MllibError::InvalidParam {
                    param: "trial_placement".to_string(),
                    reason: "only trials of the built-in objective (Search::train_eval) can be \
                             distributed fits"
                        .to_string(),
                });
            }
            (_, TrialPlacement::Auto) => return Ok(false),
        };
        Ok(match self.placement {
            TrialPlacement::Distributed => true,
            _ => {
                session.is_cluster()
                    && self.runner == Runner::Embedded
                    && super::objective::dataset_bytes(session, &spec.dataset).await
                        > AUTO_DISTRIBUTED_BYTES
            }
        })
    }

    /// The next point and the trial it runs again, if any: first the unfinished trials of
    /// earlier runs, then [`Search::propose`].
    fn next_point(
        &self,
        run: &Run<'_>,
        trials: &[Trial],
        pending: &[(Option<u64>, Point)],
        rng: &mut ChaCha8Rng,
    ) -> (Point, Option<u64>) {
        let retry = run.retries.lock().ok().and_then(|mut q| q.pop_front());
        match retry {
            Some((id, point)) => (point, Some(id)),
            None => (self.propose(run, trials, pending, rng), None),
        }
    }

    /// The next point: the first grid point no trial has covered (an unfinished one does not
    /// cover its point), or a draw from `rng` given the finished trials and the `pending`
    /// points (proposed, not finished, with the trial id of those running: TPE's constant liars,
    /// unless the pruner has estimated where a running one is heading).
    fn propose(
        &self,
        run: &Run<'_>,
        trials: &[Trial],
        pending: &[(Option<u64>, Point)],
        rng: &mut ChaCha8Rng,
    ) -> Point {
        if let Some(g) = &run.grid {
            // Points as many times as trials and pending proposals hold them (a list of
            // points may repeat one).
            let key = |p: &Point| serde_json::to_string(p).unwrap_or_default();
            let mut covered: std::collections::HashMap<String, usize> =
                std::collections::HashMap::new();
            for p in trials
                .iter()
                .filter(|t| !t.unfinished() || t.id >= run.first_id)
                .map(|t| &t.params)
                .chain(pending.iter().map(|(_, p)| p))
            {
                *covered.entry(key(p)).or_default() += 1;
            }
            for p in g {
                match covered.get_mut(&key(p)) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => return p.clone(),
                }
            }
            // Every grid point is covered: the limit stops the search before this.
            return g[g.len() - 1].clone();
        }
        match &self.algo {
            Algo::Tpe(tpe) => {
                let estimate = |id: u64| run.board.as_ref().and_then(|b| b.estimate(id));
                let mut finished: Vec<(Point, f64)> = trials
                    .iter()
                    .filter(|t| t.status == TaskStatus::Ok)
                    .filter_map(|t| t.loss.map(|l| (t.params.clone(), l)))
                    .collect();
                // A running trial the pruner has judged at a rung counts with where its curve is
                // heading; the others are constant liars.
                let mut liars: Vec<Point> = Vec::new();
                for (id, p) in pending {
                    match id.and_then(estimate) {
                        Some(loss) => finished.push((p.clone(), loss)),
                        None => liars.push(p.clone()),
                    }
                }
                // A pruned trial with the pruner's estimate of its final loss counts with that
                // loss; one without ranks below the finished ones, as Optuna ranks them.
                let mut pruned: Vec<(Point, u64, f64)> = Vec::new();
                for t in trials.iter().filter(|t| t.status == TaskStatus::Pruned) {
                    match estimate(t.id) {
                        Some(loss) => finished.push((t.params.clone(), loss)),
                        None => {
                            if let Some(&(step, value)) = t.intermediate.last() {
                                pruned.push((t.params.clone(), step, value));
                            }
                        }
                    }
                }
                tpe.propose_with_pruned(&self.space, &finished, &pruned, &liars, rng)
            }
            _ => self.space.sample(rng),
        }
    }

    /// The fan-out task of trial `id` at `point`.
    fn trial_task(&self, run: &Run<'_>, id: u64, point: &Point) -> Result<Task> {
        let params = match &self.objective {
            ObjectiveKind::Closure(_) | ObjectiveKind::Task(_) => serde_json::to_string(point),
            ObjectiveKind::TrainEval(spec) => {
                let mut spec = spec.as_ref().clone();
                spec.params.extend(point.clone());
                serde_json::to_string(&spec)
            }
        }
        .map_err(|e| json_err("trial parameters", e))?;
        Ok(Task {
            id,
            kind: run.kind.clone(),
            params,
        })
    }

    /// What this search writes as its trial log's first line: the space, seed, algorithm,
    /// objective and (for the built-in objective) the dataset's version.
    async fn log_header(&self, session: &QuiverSession) -> Result<LogHeader> {
        let algo = match &self.algo {
            Algo::Random => "random".to_string(),
            Algo::Grid { points } => format!("grid (grid_points = {points})"),
            Algo::Tpe(t) => format!(
                "tpe (n_startup_trials = {}, gamma = {}, n_ei_candidates = {})",
                t.n_startup_trials, t.gamma, t.n_ei_candidates
            ),
            Algo::Points(points) => format!(
                "points {}",
                serde_json::to_string(points).map_err(|e| json_err("search points", e))?
            ),
        };
        let (objective, dataset) = match &self.objective {
            ObjectiveKind::Closure(_) => (Value::from("a Rust closure"), None),
            ObjectiveKind::Task(kind) => (serde_json::json!({ "task": kind }), None),
            ObjectiveKind::TrainEval(spec) => (
                serde_json::to_value(spec.as_ref()).map_err(|e| json_err("objective", e))?,
                Some(DatasetVersion {
                    location: spec.dataset.clone(),
                    version: super::objective::version_of(session, &spec.dataset).await,
                }),
            ),
        };
        Ok(LogHeader {
            quiver_trial_log: 1,
            space: self.space.to_json(),
            seed: self.seed,
            algo,
            objective,
            dataset,
            pruner: self.pruner.as_ref().map(Pruner::describe),
        })
    }

    /// Log and report after new results.
    async fn after_results(&self, run: &Run<'_>, trials: &[Trial]) -> Result<()> {
        if let Some(log) = &self.trial_log {
            write_log(
                run.session,
                log,
                run.header.as_ref(),
                trials,
                &run.log,
                false,
            )
            .await?;
        }
        if let Some(f) = &self.on_batch {
            f(trials);
        }
        Ok(())
    }

    fn stop_reason(&self, trials: &[Trial], run: &Run<'_>) -> Option<String> {
        if let Some(t) = self.timeout
            && run.started.elapsed() >= t
        {
            return Some(format!(
                "timeout after {:.1} s",
                run.started.elapsed().as_secs_f64()
            ));
        }
        if let Some(n) = self.max_failures {
            // Failures of this run: a resumed search gets its own allowance.
            let failed: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.id >= run.first_id && t.status == TaskStatus::Failed)
                .collect();
            if let Some(last) = failed.last().filter(|_| failed.len() >= n) {
                return Some(format!(
                    "max_failures = {n} reached: {} trials failed; the last, trial {}: {}",
                    failed.len(),
                    last.id,
                    last.message.as_deref().unwrap_or("no message")
                ));
            }
        }
        let losses: Vec<f64> = trials
            .iter()
            .filter(|t| t.status == TaskStatus::Ok)
            .filter_map(|t| t.loss)
            .collect();
        let best = losses.iter().cloned().fold(f64::INFINITY, f64::min);
        if let Some(threshold) = self.loss_threshold
            && best <= threshold
        {
            return Some(format!("loss {best} reached the threshold {threshold}"));
        }
        if let Some(k) = self.no_progress
            && let Some(at) = losses.iter().position(|l| *l == best)
            && losses.len() - 1 - at >= k
        {
            return Some(format!("no progress in the last {k} finished trials"));
        }
        None
    }
}

/// What one run of a search shares between its steps.
struct Run<'a> {
    session: &'a QuiverSession,
    registry: Arc<TaskRegistry>,
    kind: String,
    grid: Option<Vec<Point>>,
    limit: usize,
    deadline_ms: Option<i64>,
    started: Instant,
    /// The trial log's first line, when there is a log.
    header: Option<LogHeader>,
    /// The id of this run's first trial (those before were resumed from the log).
    first_id: u64,
    /// The pruner's board, and its key in this process's registry.
    board: Option<Arc<PruneBoard>>,
    pruning: Option<u64>,
    /// What this run wrote of the trial log.
    log: std::sync::Mutex<LogState>,
    /// Where the trials run (local for distributed fits, whatever the search's runner).
    runner: Runner,
    /// Trials of earlier runs that were cancelled or lost, to run again first (id, point).
    retries: std::sync::Mutex<std::collections::VecDeque<(u64, Point)>>,
    /// How many resumed trials do not count towards the limit (cancelled or lost).
    discounted: usize,
}

impl Run<'_> {
    /// The trials that count towards the limit: all but the resumed unfinished ones.
    fn counted(&self, trials: &[Trial]) -> usize {
        trials.len().saturating_sub(self.discounted)
    }

    /// The trial of `params` from its task's result; a finished one joins the pruner's
    /// reference.
    fn trial(&self, params: Point, r: TaskResult) -> Trial {
        let t = trial(params, r);
        if let Some(b) = &self.board
            && t.status == TaskStatus::Ok
        {
            b.finish(t.id);
        }
        t
    }
}

/// The random stream of the proposals starting at trial `id`.
fn proposal_rng(seed: u64, id: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The id after the last trial's.
fn next_id(trials: &[Trial]) -> u64 {
    trials.last().map_or(0, |t| t.id + 1)
}

fn json_err(context: &str, source: serde_json::Error) -> QuiverError {
    QuiverError::Json {
        context: context.to_string(),
        source,
    }
}

fn trial(params: Point, r: TaskResult) -> Trial {
    let mut metrics: Value = serde_json::from_str(&r.metrics).unwrap_or(Value::Null);
    // The task's reports travel in its metrics; they become the trial's own field.
    let intermediate = match metrics
        .as_object_mut()
        .map(|m| m.remove(INTERMEDIATE_VALUES))
    {
        Some(Some(Value::Array(values))) => values
            .iter()
            .filter_map(|v| {
                let step = v.get(0)?.as_u64()?;
                let value = v.get(1).and_then(Value::as_f64).unwrap_or(f64::MAX);
                Some((step, value))
            })
            .collect(),
        _ => Vec::new(),
    };
    if metrics.as_object().is_some_and(|m| m.is_empty()) {
        metrics = Value::Null;
    }
    Trial {
        id: r.id,
        params,
        status: r.status,
        loss: r.loss.map(|l| {
            if l.is_nan() {
                f64::MAX
            } else {
                l.clamp(f64::MIN, f64::MAX)
            }
        }),
        metrics,
        message: r.message,
        worker: r.worker,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        intermediate,
        retry_of: None,
    }
}

/// Reports a closure objective's intermediate `loss` at `step` (an epoch, an iteration) to the
/// search's pruner. An error when the trial is pruned: return it (`report(step, loss)?`) and
/// the trial is recorded `pruned` with this loss. A no-op outside a search's trial.
pub fn report(step: u64, loss: f64) -> std::result::Result<(), String> {
    quiver_engine::fanout::report(step, loss).map_err(|e| e.to_string())
}

/// Whether the pruner would judge a report at `step` (so a costly validation loss is computed
/// only when it is).
pub fn report_due(step: u64) -> bool {
    quiver_engine::fanout::reporter().is_some_and(|r| r.due(step))
}

/// The first line of a trial log: the search that wrote it. A search resumes from a log only
/// when this matches (Optuna's study, hyperopt's Trials object), so trials of one search are
/// never continued by another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LogHeader {
    /// Marks the line as the header (trials have an `id`) with the format's version.
    quiver_trial_log: u32,
    space: Value,
    seed: u64,
    algo: String,
    objective: Value,
    #[serde(default)]
    dataset: Option<DatasetVersion>,
    /// The pruner, when the search has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pruner: Option<String>,
}

/// A dataset and the sizes and modification times of its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DatasetVersion {
    location: String,
    version: String,
}

impl LogHeader {
    /// An error naming every difference between this search and the one that wrote `log`.
    fn check_resume(&self, log: &str, written_by: &LogHeader) -> Result<()> {
        let mut diffs = Vec::new();
        if self.space != written_by.space {
            diffs.push(format!(
                "the search space (the log's: {}; this search's: {})",
                written_by.space, self.space
            ));
        }
        if self.seed != written_by.seed {
            diffs.push(format!(
                "the seed (the log's: {}; this search's: {})",
                written_by.seed, self.seed
            ));
        }
        if self.algo != written_by.algo {
            diffs.push(format!(
                "the algorithm (the log's: {}; this search's: {})",
                written_by.algo, self.algo
            ));
        }
        if self.objective != written_by.objective {
            diffs.push(format!(
                "the objective (the log's: {}; this search's: {})",
                written_by.objective, self.objective
            ));
        }
        if self.pruner != written_by.pruner {
            let show = |p: &Option<String>| p.clone().unwrap_or_else(|| "none".to_string());
            diffs.push(format!(
                "the pruner (the log's: {}; this search's: {})",
                show(&written_by.pruner),
                show(&self.pruner)
            ));
        }
        match (&self.dataset, &written_by.dataset) {
            (Some(now), Some(then)) if now.location != then.location => diffs.push(format!(
                "the dataset (the log's: {}; this search's: {})",
                then.location, now.location
            )),
            (Some(now), Some(then)) if now.version != then.version => diffs.push(format!(
                "the dataset '{}' changed since the log was written (its files' sizes or modification times differ)",
                now.location
            )),
            _ => {}
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(MllibError::InvalidParam {
            param: "trial_log".to_string(),
            reason: format!(
                "{log} was written by a different search, so it cannot be resumed: {}. Use another trial_log, or remove this one to start over",
                diffs.join("; ")
            ),
        })
    }
}

/// Reads a JSON-lines trial log; a missing log is an empty one. Trial ids must increase; a bad
/// line is an error naming the file and the line.
pub async fn read_log(session: &QuiverSession, location: &str) -> Result<Vec<Trial>> {
    Ok(read_log_and_header(session, location).await?.1)
}

/// [`read_log`] and the log's header line (none in a log written before headers, or empty).
async fn read_log_and_header(
    session: &QuiverSession,
    location: &str,
) -> Result<(Option<LogHeader>, Vec<Trial>)> {
    let loc = quiver_engine::io::resolve(session.context(), &session.config().s3, location)?;
    let bytes = match loc.store.get(&loc.path).await {
        Ok(r) => r.bytes().await.map_err(|e| QuiverError::ObjectStore {
            path: location.to_string(),
            source: e,
        })?,
        Err(object_store::Error::NotFound { .. }) => return Ok((None, Vec::new())),
        Err(e) => {
            return Err(QuiverError::ObjectStore {
                path: location.to_string(),
                source: e,
            }
            .into());
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut trials = Vec::new();
    let mut header = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if i == 0 && line.contains("\"quiver_trial_log\"") {
            let h: LogHeader =
                serde_json::from_str(line).map_err(|e| MllibError::InvalidParam {
                    param: "trial_log".to_string(),
                    reason: format!("{location} line 1 (the search's description): {e}"),
                })?;
            header = Some(h);
            continue;
        }
        let t: Trial = serde_json::from_str(line).map_err(|e| MllibError::InvalidParam {
            param: "trial_log".to_string(),
            reason: format!("{location} line {}: {e}", i + 1),
        })?;
        // Ids increase; an asynchronous search may leave gaps (trials running when it
        // stopped).
        if let Some(prev) = trials.last().map(|p: &Trial| p.id)
            && t.id <= prev
        {
            return Err(MllibError::InvalidParam {
                param: "trial_log".to_string(),
                reason: format!(
                    "{location} line {}: trial id {} after {prev} (ids must increase)",
                    i + 1,
                    t.id,
                ),
            });
        }
        trials.push(t);
    }
    // Trials written since the log was last rewritten whole: the segments beside it, in
    // order. A trial in both (a rewrite cut short before its segments were removed) is the
    // same trial; ids order the result.
    let segments = segments_of(session, location).await?;
    if segments.is_empty() {
        return Ok((header, trials));
    }
    let mut by_id: std::collections::BTreeMap<u64, Trial> =
        trials.into_iter().map(|t| (t.id, t)).collect();
    for (name, path) in segments {
        let bytes = loc
            .store
            .get(&path)
            .await
            .map_err(|e| QuiverError::ObjectStore {
                path: name.clone(),
                source: e,
            })?
            .bytes()
            .await
            .map_err(|e| QuiverError::ObjectStore {
                path: name.clone(),
                source: e,
            })?;
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let t: Trial = serde_json::from_str(line).map_err(|e| MllibError::InvalidParam {
                param: "trial_log".to_string(),
                reason: format!("{name} line {}: {e}", i + 1),
            })?;
            by_id.insert(t.id, t);
        }
    }
    Ok((header, by_id.into_values().collect()))
}

/// Where the segments of the log at `location` live: a folder beside it.
fn segment_folder(location: &str) -> String {
    format!("{location}.segments")
}

/// The segments of the log at `location`, in the order they were written: (name, path).
async fn segments_of(
    session: &QuiverSession,
    location: &str,
) -> Result<Vec<(String, object_store::path::Path)>> {
    use futures::TryStreamExt;
    let folder = segment_folder(location);
    let loc = quiver_engine::io::resolve(session.context(), &session.config().s3, &folder)?;
    let mut found: Vec<object_store::path::Path> = match loc
        .store
        .list(Some(&loc.path))
        .map_ok(|m| m.location)
        .try_collect()
        .await
    {
        Ok(v) => v,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => {
            return Err(QuiverError::ObjectStore {
                path: folder,
                source: e,
            }
            .into());
        }
    };
    found.sort();
    Ok(found
        .into_iter()
        .filter(|p| p.as_ref().ends_with(".jsonl"))
        .map(|p| {
            let name = format!("{folder}/{}", p.filename().unwrap_or_default());
            (name, p)
        })
        .collect())
}

/// What this run has written of its trial log. The log object holds the header and the trials
/// as of its last rewrite; trials finished since go to segment objects beside it
/// (`<log>.segments/<n>.jsonl`), each written whole in one put. The log is rewritten whole
/// (and the segments removed) at a run's first write, whenever the segments outgrow it, and
/// when the search ends: n trials cost O(n) bytes written instead of O(n²), and a reader
/// always sees whole lines (object stores replace an object atomically).
#[derive(Debug, Default)]
struct LogState {
    /// Ids of the trials written by this run (in the log or a segment).
    written: std::collections::HashSet<u64>,
    /// Bytes of the log object at its last rewrite; none yet in this run.
    base_bytes: Option<usize>,
    /// Bytes and number of segments written since.
    segment_bytes: usize,
    segments: u64,
}

fn trial_lines<'a>(trials: impl IntoIterator<Item = &'a Trial>) -> Result<String> {
    let mut text = String::new();
    for t in trials {
        text.push_str(&serde_json::to_string(t).map_err(|e| json_err("trial log", e))?);
        text.push('\n');
    }
    Ok(text)
}

async fn put(session: &QuiverSession, location: &str, text: String) -> Result<()> {
    let loc = quiver_engine::io::resolve(session.context(), &session.config().s3, location)?;
    loc.store
        .put(&loc.path, PutPayload::from(Bytes::from(text)))
        .await
        .map_err(|e| QuiverError::ObjectStore {
            path: location.to_string(),
            source: e,
        })?;
    Ok(())
}

/// Writes the trials not written yet: a segment, or the whole log when `whole` or when the
/// segments would outgrow it.
async fn write_log(
    session: &QuiverSession,
    location: &str,
    header: Option<&LogHeader>,
    trials: &[Trial],
    state: &std::sync::Mutex<LogState>,
    whole: bool,
) -> Result<()> {
    let (new, base_bytes, segment_bytes, next) = {
        let st = state
            .lock()
            .map_err(|_| QuiverError::internal("the trial log's state"))?;
        let new = trial_lines(trials.iter().filter(|t| !st.written.contains(&t.id)))?;
        (new, st.base_bytes, st.segment_bytes, st.segments + 1)
    };
    let rewrite = match base_bytes {
        None => true,
        Some(base) => whole || segment_bytes + new.len() > base.max(64 << 10),
    };
    if rewrite {
        let mut text = String::new();
        if let Some(h) = header {
            text.push_str(&serde_json::to_string(h).map_err(|e| json_err("trial log", e))?);
            text.push('\n');
        }
        text.push_str(&trial_lines(trials)?);
        let bytes = text.len();
        put(session, location, text).await?;
        // The segments are in the log now; one left behind (a failed delete) only repeats
        // trials the reader takes once.
        let folder = quiver_engine::io::resolve(
            session.context(),
            &session.config().s3,
            &segment_folder(location),
        )?;
        for (_, path) in segments_of(session, location).await? {
            let _ = folder.store.delete(&path).await;
        }
        let mut st = state
            .lock()
            .map_err(|_| QuiverError::internal("the trial log's state"))?;
        st.written = trials.iter().map(|t| t.id).collect();
        st.base_bytes = Some(bytes);
        st.segment_bytes = 0;
        st.segments = 0;
        return Ok(());
    }
    if new.is_empty() {
        return Ok(());
    }
    let bytes = new.len();
    put(
        session,
        &format!("{}/{next:08}.jsonl", segment_folder(location)),
        new,
    )
    .await?;
    let mut st = state
        .lock()
        .map_err(|_| QuiverError::internal("the trial log's state"))?;
    st.written.extend(trials.iter().map(|t| t.id));
    st.segment_bytes += bytes;
    st.segments = next;
    Ok(())
}

/// The `max_iter` (`max_iterations`) the space fixes to one value: every trial's budget, the
/// pruner's horizon from the first trial on.
fn fixed_budget(space: &Space) -> Option<u64> {
    space
        .params
        .iter()
        .find(|p| p.name == "max_iter" || p.name == "max_iterations")
        .and_then(|p| match &p.dist {
            Dist::Choice(options) if options.len() == 1 => options[0].value.as_u64(),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuning::hp;

    #[test]
    fn a_space_that_fixes_max_iter_gives_the_pruners_horizon() {
        let space = |max_iter: Vec<Value>| {
            Space::new(vec![
                hp::uniform("step_size", 0.01, 0.5),
                hp::choice("max_iter", max_iter),
            ])
            .unwrap()
        };
        assert_eq!(fixed_budget(&space(vec![81.into()])), Some(81));
        assert_eq!(fixed_budget(&space(vec![27.into(), 81.into()])), None);
        let no_budget = Space::new(vec![hp::uniform("x", 0.0, 1.0)]).unwrap();
        assert_eq!(fixed_budget(&no_budget), None);
    }
}
