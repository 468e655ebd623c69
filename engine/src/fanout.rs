//! The fan-out primitive: N independent tasks described by rows of a table (id, kind, params
//! as JSON), run in parallel partitions, one result row per task, delivered as they finish.
//! Locally on threads of this process ([`fan_out_local`]); embedded or on a cluster as a
//! DataFusion query of a volatile scalar function over a partitioned task table
//! ([`fan_out_embedded`]).
//!
//! Every task runs inside its own rayon pool of [`FanOutOptions::threads_per_task`] threads:
//! the engine's compute work of a task (statistics on the local runner, the user's own
//! `par_iter`s) stays on that pool, so `parallelism × threads_per_task` bounds the cores a
//! fan-out uses. A deadline travels with the tasks: a task not started by then is not run, a
//! running one stops at its next statistic pass, and the caller stops waiting: what did not
//! finish in time is reported as [`TaskStatus::Cancelled`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, UInt64Type};
use datafusion::catalog::MemTable;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{SessionContext, col};
use futures::StreamExt;
use rayon::ThreadPool;
use serde::{Deserialize, Serialize};

use crate::board::BoardAddress;
use crate::error::{QuiverError, Result};

/// One task: a row of the task table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    /// Which registered [`TaskRunner`] runs it.
    pub kind: String,
    /// The runner's parameters, as JSON.
    pub params: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Ok,
    Failed,
    Cancelled,
    /// Stopped by the search's pruner at one of its reports; its loss is the last value it
    /// reported.
    Pruned,
}

impl TaskStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Pruned => "pruned",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "ok" => Ok(TaskStatus::Ok),
            "failed" => Ok(TaskStatus::Failed),
            "cancelled" => Ok(TaskStatus::Cancelled),
            "pruned" => Ok(TaskStatus::Pruned),
            other => Err(QuiverError::internal(format!(
                "unknown task status '{other}'"
            ))),
        }
    }
}

/// What a successful task returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskOutcome {
    pub loss: Option<f64>,
    /// Any metrics, as a JSON value.
    pub metrics: serde_json::Value,
}

/// The result row of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: u64,
    pub status: TaskStatus,
    pub loss: Option<f64>,
    /// Metrics as JSON text.
    pub metrics: String,
    /// The error of a failed task.
    pub message: Option<String>,
    /// Which process ran it.
    pub worker: String,
    /// Milliseconds since the Unix epoch.
    pub started_ms: i64,
    pub finished_ms: i64,
}

/// How a fan-out runs its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOutOptions {
    /// Tasks running at once, at most.
    pub parallelism: usize,
    /// Threads of each task's own compute pool.
    pub threads_per_task: usize,
    /// Milliseconds since the Unix epoch after which no task starts and running ones stop.
    pub deadline_ms: Option<i64>,
    /// Each task's own time limit in milliseconds, from its start: a task running past it is
    /// stopped and reported failed ("timed out"), and the fan-out goes on.
    pub task_timeout_ms: Option<i64>,
    /// The key of a pruning board registered in this process ([`PruningRegistration`]):
    /// tasks that run here report to it (see [`report`]).
    pub pruning: Option<u64>,
    /// Where tasks in other processes (cluster executors) reach that board: set by the cluster
    /// fan-out.
    pub board: Option<BoardAddress>,
}

impl FanOutOptions {
    /// `parallelism` tasks at a time, one thread each, no deadline.
    pub fn new(parallelism: usize) -> Self {
        FanOutOptions {
            parallelism: parallelism.max(1),
            threads_per_task: 1,
            deadline_ms: None,
            task_timeout_ms: None,
            pruning: None,
            board: None,
        }
    }

    /// Tasks report to the pruning board registered under `key` (see [`PruningRegistration`]).
    pub fn pruning(mut self, key: Option<u64>) -> Self {
        self.pruning = key;
        self
    }

    pub fn threads_per_task(mut self, threads: usize) -> Self {
        self.threads_per_task = threads.max(1);
        self
    }

    /// Stop at `deadline_ms` (milliseconds since the Unix epoch).
    pub fn deadline_ms(mut self, deadline_ms: Option<i64>) -> Self {
        self.deadline_ms = deadline_ms;
        self
    }

    /// Stop `after` from now.
    pub fn timeout(self, after: std::time::Duration) -> Self {
        self.deadline_ms(Some(deadline_after(after)))
    }

    /// Give each task at most `limit` from its start (see [`FanOutOptions::task_timeout_ms`]).
    pub fn task_timeout(mut self, limit: Option<std::time::Duration>) -> Self {
        self.task_timeout_ms = limit.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        self
    }

    fn limits(&self) -> TaskLimits {
        TaskLimits {
            threads: self.threads_per_task.max(1),
            deadline_ms: self.deadline_ms,
            timeout_ms: self.task_timeout_ms,
            pruning: self.pruning,
            board: self.board,
        }
    }
}

impl From<usize> for FanOutOptions {
    fn from(parallelism: usize) -> Self {
        FanOutOptions::new(parallelism)
    }
}

/// What each task of a fan-out runs under, wherever it runs (travels to executors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskLimits {
    pub threads: usize,
    pub deadline_ms: Option<i64>,
    /// The task's own time limit from its start, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<i64>,
    /// The pruning board the task reports to, when it runs in the process that holds it.
    #[serde(default)]
    pub pruning: Option<u64>,
    /// Where the task reaches that board from another process.
    #[serde(default)]
    pub board: Option<BoardAddress>,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            threads: 1,
            deadline_ms: None,
            timeout_ms: None,
            pruning: None,
            board: None,
        }
    }
}

impl TaskLimits {
    /// When a task started at `started_ms` must stop: the fan-out's deadline or its own time
    /// limit, whichever comes first; `true` when it is its own limit.
    fn stop_at(&self, started_ms: i64) -> Option<(i64, bool)> {
        let own = self.timeout_ms.map(|t| started_ms.saturating_add(t));
        match (self.deadline_ms, own) {
            (Some(d), Some(o)) if o < d => Some((o, true)),
            (Some(d), _) => Some((d, false)),
            (None, Some(o)) => Some((o, true)),
            (None, None) => None,
        }
    }
}

/// The result of a task stopped by its own time limit.
fn timed_out(id: u64, started_ms: i64, limit_ms: i64, note: &str) -> TaskResult {
    TaskResult {
        id,
        status: TaskStatus::Failed,
        loss: None,
        metrics: "null".to_string(),
        message: Some(format!(
            "timed out: ran {:.1} s, past its time limit of {:.1} s{note}",
            (now_ms() - started_ms) as f64 / 1000.0,
            limit_ms as f64 / 1000.0
        )),
        worker: worker_id(),
        started_ms,
        finished_ms: now_ms(),
    }
}

thread_local! {
    /// When the task running on this thread must stop, and whether that is its own time limit
    /// (else the fan-out's deadline).
    static TASK_DEADLINE: Cell<Option<(i64, bool)>> = const { Cell::new(None) };
    /// The compute pool of the task running on this thread.
    static TASK_POOL: RefCell<Option<Arc<ThreadPool>>> = const { RefCell::new(None) };
}

/// An error when the task running on this thread has passed its deadline; called by the
/// engine before every statistic pass, so iterative fits inside a task stop promptly.
pub fn check_deadline() -> Result<()> {
    match TASK_DEADLINE.get() {
        Some((d, own)) if now_ms() >= d => Err(QuiverError::Cancelled {
            reason: if own {
                "the task ran past its own time limit".to_string()
            } else {
                "the task's deadline passed (the search's timeout)".to_string()
            },
        }),
        _ => Ok(()),
    }
}

/// The compute pool of the task running on this thread, if any: the engine runs the task's
/// local statistics there instead of on the session's pool.
pub fn task_pool() -> Option<Arc<ThreadPool>> {
    TASK_POOL.with(|p| p.borrow().clone())
}

/// Idle task pools by size, reused across tasks and fan-outs.
fn idle_pools() -> &'static Mutex<HashMap<usize, Vec<Arc<ThreadPool>>>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Vec<Arc<ThreadPool>>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A task pool of `threads` threads, returned to the idle set when dropped.
struct PoolLease {
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
}

impl PoolLease {
    fn take(threads: usize) -> Result<PoolLease> {
        let idle = idle_pools()
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(&threads).and_then(Vec::pop));
        let pool = match idle {
            Some(p) => p,
            None => Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("quiver-task-{i}"))
                    .build()
                    .map_err(|e| {
                        QuiverError::internal(format!("cannot start a task's thread pool: {e}"))
                    })?,
            ),
        };
        Ok(PoolLease {
            threads,
            pool: Some(pool),
        })
    }

    fn pool(&self) -> &Arc<ThreadPool> {
        self.pool.as_ref().expect("held until dropped")
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        if let (Some(pool), Ok(mut idle)) = (self.pool.take(), idle_pools().lock()) {
            idle.entry(self.threads).or_default().push(pool);
        }
    }
}

/// The result of a task that did not finish before `deadline_ms`.
fn cancelled(id: u64, started_ms: Option<i64>, deadline_ms: Option<i64>) -> TaskResult {
    let now = now_ms();
    let when = deadline_ms.map_or(String::new(), |d| {
        format!(" ({:.1} s ago)", (now - d).max(0) as f64 / 1000.0)
    });
    TaskResult {
        id,
        status: TaskStatus::Cancelled,
        loss: None,
        metrics: "null".to_string(),
        message: Some(match started_ms {
            Some(_) => format!("stopped: the deadline passed while it ran{when}"),
            None => format!("not started: the deadline passed{when}"),
        }),
        worker: String::new(),
        started_ms: started_ms.unwrap_or(now),
        finished_ms: now,
    }
}

/// Judges trials from the values they report while they run (a search's pruner): see
/// [`report`].
pub trait Pruning: Send + Sync + Debug {
    /// Whether a report of `trial` at `step` would be judged: a trial computes its value (a
    /// pass over its held-out rows) only when it is.
    fn due(&self, trial: u64, step: u64) -> bool;
    /// Records `value` of `trial` at `step`; true when the trial should stop now.
    fn report(&self, trial: u64, step: u64, value: f64) -> bool;
}

/// A registered board and the secret that lets other processes reach it.
type Registered = (Arc<dyn Pruning>, [u64; 2]);

/// The pruning boards of this process's running fan-outs, by key.
fn boards() -> &'static Mutex<HashMap<u64, Registered>> {
    static BOARDS: OnceLock<Mutex<HashMap<u64, Registered>>> = OnceLock::new();
    BOARDS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The board registered under `key`.
fn board(key: u64) -> Option<Arc<dyn Pruning>> {
    boards().lock().ok()?.get(&key).map(|(b, _)| Arc::clone(b))
}

/// The board registered under `key`, if `secret` is its secret (compared in constant time).
pub(crate) fn board_with_secret(key: u64, secret: [u64; 2]) -> Option<Arc<dyn Pruning>> {
    let boards = boards().lock().ok()?;
    let (board, own) = boards.get(&key)?;
    let differ = (own[0] ^ secret[0]) | (own[1] ^ secret[1]);
    (differ == 0).then(|| Arc::clone(board))
}

/// The secret of the board registered under `key`.
pub(crate) fn board_secret(key: u64) -> Option<[u64; 2]> {
    boards().lock().ok()?.get(&key).map(|(_, s)| *s)
}

/// A pruning board registered in this process for as long as this lives: its key goes into
/// [`FanOutOptions::pruning`], and tasks run in this process report to it.
#[derive(Debug)]
pub struct PruningRegistration {
    key: u64,
    secret: [u64; 2],
}

impl PruningRegistration {
    pub fn new(board: Arc<dyn Pruning>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ^ (u64::from(std::process::id()) << 40);
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        if let Ok(mut boards) = boards().lock() {
            boards.insert(key, (board, [a, b]));
        }
        PruningRegistration {
            key,
            secret: [a, b],
        }
    }

    pub fn key(&self) -> u64 {
        self.key
    }

    /// Where tasks in other processes reach this board: served on the address this process
    /// reaches `host:port` (a scheduler) from (see [`crate::board`]).
    pub fn address(&self, host: &str, port: u16) -> Result<BoardAddress> {
        crate::board::address_for(self.key, self.secret, host, port)
    }
}

impl Drop for PruningRegistration {
    fn drop(&mut self) {
        if let Ok(mut b) = boards().lock() {
            b.remove(&self.key);
        }
    }
}

/// Where the task running on this thread reports: its id and its fan-out's board.
#[derive(Debug, Clone)]
pub struct Reporter {
    task: u64,
    board: Option<Arc<dyn Pruning>>,
    log: Arc<Mutex<ReportLog>>,
}

/// What a task reported, and whether it was pruned (at which step, with which value).
#[derive(Debug, Default)]
struct ReportLog {
    values: Vec<(u64, f64)>,
    pruned: Option<(u64, f64)>,
}

impl Reporter {
    fn new(task: u64, board: Option<Arc<dyn Pruning>>) -> Self {
        Reporter {
            task,
            board,
            log: Arc::default(),
        }
    }

    /// Whether a value at `step` would be judged (false when nothing judges this task).
    pub fn due(&self, step: u64) -> bool {
        self.board.as_ref().is_some_and(|b| b.due(self.task, step))
    }

    /// Reports the task's `value` (a loss: lower is better) at `step`. An error
    /// ([`QuiverError::Pruned`]) when the task should stop: return it (or any error) and the
    /// task is recorded as pruned, with this value as its loss.
    pub fn report(&self, step: u64, value: f64) -> Result<()> {
        let prune = self
            .board
            .as_ref()
            .is_some_and(|b| b.report(self.task, step, value));
        if let Ok(mut log) = self.log.lock() {
            log.values.push((step, value));
            if prune {
                log.pruned = Some((step, value));
            }
        }
        if prune {
            return Err(QuiverError::Pruned { step, value });
        }
        Ok(())
    }

    /// The values reported, and the pruning decision if there was one.
    fn take(&self) -> ReportLog {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

thread_local! {
    /// The reporter of the task running on this thread.
    static TASK_REPORTER: RefCell<Option<Reporter>> = const { RefCell::new(None) };
}

/// The reporter of the task running on this thread (`None` outside a task): capture it before
/// handing work to other threads.
pub fn reporter() -> Option<Reporter> {
    TASK_REPORTER.with(|r| r.borrow().clone())
}

/// Reports the running task's `value` at `step` (see [`Reporter::report`]); a no-op outside a
/// task. For a closure objective: `quiver_engine::fanout::report(epoch, loss)?`.
pub fn report(step: u64, value: f64) -> Result<()> {
    match reporter() {
        Some(r) => r.report(step, value),
        None => Ok(()),
    }
}

/// Runs tasks of one kind. Registered by name so that any process (an executor included) can
/// run a task from its row alone.
pub trait TaskRunner: Send + Sync + Debug + 'static {
    fn kind(&self) -> &str;
    fn run(&self, params: &str) -> Result<TaskOutcome>;
}

/// `quiver.sphere`: loss = Σ x² over the numeric values of a JSON object of parameters. A
/// trivial objective every process knows, for measuring fan-out overhead and for tests.
#[derive(Debug)]
pub struct SphereTask;

impl TaskRunner for SphereTask {
    fn kind(&self) -> &str {
        "quiver.sphere"
    }

    fn run(&self, params: &str) -> Result<TaskOutcome> {
        let v: serde_json::Value =
            serde_json::from_str(params).map_err(|source| QuiverError::Json {
                context: "quiver.sphere parameters".to_string(),
                source,
            })?;
        let loss = v
            .as_object()
            .map(|o| o.values().filter_map(|x| x.as_f64()).map(|x| x * x).sum())
            .unwrap_or(0.0);
        Ok(TaskOutcome {
            loss: Some(loss),
            metrics: serde_json::Value::Null,
        })
    }
}

/// The task kinds a process can run.
#[derive(Debug, Clone, Default)]
pub struct TaskRegistry {
    runners: BTreeMap<String, Arc<dyn TaskRunner>>,
}

impl TaskRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a runner; a second runner of the same kind is an error.
    pub fn register(&mut self, runner: Arc<dyn TaskRunner>) -> Result<()> {
        let kind = runner.kind().to_string();
        if self.runners.contains_key(&kind) {
            return Err(QuiverError::InvalidParam {
                param: "task kind".to_string(),
                reason: format!("a task runner of kind '{kind}' is already registered"),
            });
        }
        self.runners.insert(kind, runner);
        Ok(())
    }

    /// Adds every runner of `other`; a kind both have is an error.
    pub fn merge_from(&mut self, other: &TaskRegistry) -> Result<()> {
        for r in other.runners.values() {
            self.register(Arc::clone(r))?;
        }
        Ok(())
    }

    pub fn kinds(&self) -> Vec<String> {
        self.runners.keys().cloned().collect()
    }

    fn get(&self, kind: &str) -> Result<&Arc<dyn TaskRunner>> {
        self.runners
            .get(kind)
            .ok_or_else(|| QuiverError::UnknownTaskKind {
                kind: kind.to_string(),
                known: self.kinds().join(", "),
            })
    }

    /// Runs one task here, on its own pool of `limits.threads` threads: errors and panics
    /// become a failed result, never a failed fan-out; a task past its deadline is cancelled.
    pub fn execute(&self, id: u64, kind: &str, params: &str, limits: TaskLimits) -> TaskResult {
        match PoolLease::take(limits.threads) {
            Ok(lease) => self.execute_on(lease.pool(), id, kind, params, limits),
            Err(e) => self.result(id, Err(e), now_ms(), limits),
        }
    }

    /// [`TaskRegistry::execute`] on `pool` (inline when called from one of its threads).
    fn execute_on(
        &self,
        pool: &Arc<ThreadPool>,
        id: u64,
        kind: &str,
        params: &str,
        limits: TaskLimits,
    ) -> TaskResult {
        if limits.deadline_ms.is_some_and(|d| now_ms() >= d) {
            return TaskResult {
                worker: worker_id(),
                ..cancelled(id, None, limits.deadline_ms)
            };
        }
        let started_ms = now_ms();
        // The board of this process, or the one of the process that sent the task.
        let board = limits.pruning.and_then(board).or_else(|| {
            limits
                .board
                .map(|a| Arc::new(crate::board::RemoteBoard::new(a)) as Arc<dyn Pruning>)
        });
        let reporter = Reporter::new(id, board);
        let run = |runner: &Arc<dyn TaskRunner>| {
            pool.install(|| {
                TASK_DEADLINE.set(limits.stop_at(started_ms));
                TASK_POOL.with(|p| *p.borrow_mut() = Some(Arc::clone(pool)));
                TASK_REPORTER.with(|r| *r.borrow_mut() = Some(reporter.clone()));
                let r = catch_unwind(AssertUnwindSafe(|| runner.run(params)));
                TASK_DEADLINE.set(None);
                TASK_POOL.with(|p| *p.borrow_mut() = None);
                TASK_REPORTER.with(|r| *r.borrow_mut() = None);
                r.unwrap_or_else(|panic| {
                    Err(QuiverError::TaskFailed {
                        task: format!("{kind} #{id}"),
                        reason: format!("panicked: {}", panic_message(&panic)),
                    })
                })
            })
        };
        let outcome = self.get(kind).and_then(run);
        let ReportLog {
            values: reports,
            pruned,
        } = reporter.take();
        let mut result = self.result(id, outcome, started_ms, limits);
        match pruned {
            // However the task ended after its pruning (the error passed on, or another one on
            // the way out), it was pruned.
            Some((step, value)) if result.status == TaskStatus::Failed => {
                result.status = TaskStatus::Pruned;
                result.loss = Some(value);
                result.message = Some(format!("pruned at step {step}"));
            }
            _ => {}
        }
        if !reports.is_empty() {
            result.metrics = with_reports(&result.metrics, &reports);
        }
        result
    }

    /// The result row of task `id` from its outcome.
    fn result(
        &self,
        id: u64,
        outcome: Result<TaskOutcome>,
        started_ms: i64,
        limits: TaskLimits,
    ) -> TaskResult {
        let finished_ms = now_ms();
        // A task that failed after its deadline was stopped by it (or by what it cut short).
        // One that ended past its own time limit timed out, whatever it returned: every runner
        // holds a task to its limit alike (the local one stops waiting for it there).
        match limits.stop_at(started_ms) {
            Some((at, false)) if outcome.is_err() && finished_ms >= at => {
                return TaskResult {
                    worker: worker_id(),
                    ..cancelled(id, Some(started_ms), limits.deadline_ms)
                };
            }
            Some((at, true)) if finished_ms >= at => {
                let limit = limits.timeout_ms.unwrap_or_default();
                return timed_out(id, started_ms, limit, "");
            }
            _ => {}
        }
        match outcome {
            Ok(o) => TaskResult {
                id,
                status: TaskStatus::Ok,
                loss: o.loss,
                metrics: o.metrics.to_string(),
                message: None,
                worker: worker_id(),
                started_ms,
                finished_ms,
            },
            Err(e) => TaskResult {
                id,
                status: TaskStatus::Failed,
                loss: None,
                metrics: "null".to_string(),
                message: Some(e.to_string()),
                worker: worker_id(),
                started_ms,
                finished_ms,
            },
        }
    }
}

/// The key under which a task's reported values travel in its result's metrics.
pub const INTERMEDIATE_VALUES: &str = "intermediate_values";

/// `metrics` (JSON text) with the task's reports added as `[[step, value], …]`.
fn with_reports(metrics: &str, reports: &[(u64, f64)]) -> String {
    let mut m = match serde_json::from_str::<serde_json::Value>(metrics) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let values: Vec<serde_json::Value> = reports
        .iter()
        .map(|(s, v)| serde_json::json!([s, if v.is_finite() { Some(*v) } else { None }]))
        .collect();
    m.insert(INTERMEDIATE_VALUES.to_string(), values.into());
    serde_json::Value::Object(m).to_string()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f` to completion from synchronous code: on a multi-threaded runtime the current worker
/// steps aside for it; on a thread with no runtime (the compute pool) a runtime kept per thread
/// runs it; inside a current-thread runtime a short-lived thread with its own runtime does.
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};
    thread_local! {
        static RUNTIME: Option<Runtime> = Builder::new_current_thread().enable_all().build().ok();
    }
    let own_thread = |f: F| {
        std::thread::scope(|s| {
            s.spawn(|| {
                Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime")
                    .block_on(f)
            })
            .join()
            // The original payload, so the task's error names what panicked.
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    };
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        Ok(_) => own_thread(f),
        Err(_) => {
            let mut f = Some(f);
            let done =
                RUNTIME.with(|rt| rt.as_ref().map(|rt| rt.block_on(f.take().expect("once"))));
            match done {
                Some(out) => out,
                None => own_thread(f.take().expect("not yet run")),
            }
        }
    }
}

/// The deadline `after` from now, in milliseconds since the Unix epoch.
pub fn deadline_after(after: std::time::Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

static WORKER_ID: OnceLock<String> = OnceLock::new();

/// Sets the name this process reports as `worker` (executors set their executor id). First
/// call wins.
pub fn set_worker_id(id: impl Into<String>) {
    let _ = WORKER_ID.set(id.into());
}

static TASK_SLOTS: OnceLock<usize> = OnceLock::new();

/// Sets how many tasks this process runs at once (an executor's task slots). First call wins.
pub fn set_task_slots(slots: usize) {
    let _ = TASK_SLOTS.set(slots.max(1));
}

/// How many tasks this process runs at once: set by [`set_task_slots`], else its cores.
pub fn task_slots() -> usize {
    TASK_SLOTS
        .get()
        .copied()
        .unwrap_or_else(crate::config::available_cores)
}

/// What a process that runs tasks has: its name, task slots and cores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker: String,
    pub slots: usize,
    pub cores: usize,
}

impl WorkerInfo {
    /// This process.
    pub fn here() -> Self {
        WorkerInfo {
            worker: worker_id(),
            slots: task_slots(),
            cores: crate::config::available_cores(),
        }
    }
}

/// `quiver.probe`: waits `{"ms": n}` milliseconds (at most 200) and returns its process's
/// [`WorkerInfo`] as metrics: how a client learns a cluster's executors through ordinary jobs.
#[derive(Debug)]
pub struct ProbeTask;

/// The kind of [`ProbeTask`].
pub const PROBE: &str = "quiver.probe";

impl TaskRunner for ProbeTask {
    fn kind(&self) -> &str {
        PROBE
    }

    fn run(&self, params: &str) -> Result<TaskOutcome> {
        let ms = serde_json::from_str::<serde_json::Value>(params)
            .ok()
            .and_then(|v| v.get("ms")?.as_u64())
            .unwrap_or(0)
            .min(200);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let metrics =
            serde_json::to_value(WorkerInfo::here()).map_err(|source| QuiverError::Json {
                context: "worker information".to_string(),
                source,
            })?;
        Ok(TaskOutcome {
            loss: None,
            metrics,
        })
    }
}

/// The name of this process in task results: set by [`set_worker_id`], else `host:pid`.
pub fn worker_id() -> String {
    WORKER_ID
        .get_or_init(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
            format!("{host}:{}", std::process::id())
        })
        .clone()
}

/// Runs `tasks` on task pools of this process, `options.parallelism` at a time, calling
/// `on_result` on the caller's thread as each finishes. Returns all results by id. At the
/// deadline the caller stops waiting: tasks not back by then are reported cancelled (a running
/// one stops at its next statistic pass; a plain closure runs on to its end, unobserved).
pub fn fan_out_local(
    tasks: &[Task],
    registry: Arc<TaskRegistry>,
    options: FanOutOptions,
    mut on_result: impl FnMut(&TaskResult),
) -> Result<Vec<TaskResult>> {
    let (tx, rx) = std::sync::mpsc::channel::<TaskResult>();
    let limits = options.limits();
    let queue = Arc::new(Mutex::new(tasks.iter().cloned().collect::<VecDeque<_>>()));
    // id → start time of the tasks running now.
    let running = Arc::new(Mutex::new(HashMap::<u64, i64>::new()));
    // Each worker loops on a task pool of its own (reused across fan-outs: no thread is
    // started per call), so its tasks run there inline.
    let spawn_worker = |tx: std::sync::mpsc::Sender<TaskResult>| -> Result<()> {
        let (queue, registry) = (Arc::clone(&queue), Arc::clone(&registry));
        let running = Arc::clone(&running);
        let lease = PoolLease::take(limits.threads)?;
        let pool = Arc::clone(lease.pool());
        let spawner = Arc::clone(&pool);
        spawner.spawn(move || {
            let _lease = lease;
            loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(task) = next else { break };
                // Past the deadline nothing starts: the caller reports what is left as not
                // started (a task marked running here would read as stopped while it ran).
                let now = now_ms();
                if limits.deadline_ms.is_some_and(|d| now >= d) {
                    break;
                }
                if let Ok(mut r) = running.lock() {
                    r.insert(task.id, now);
                }
                let result = registry.execute_on(&pool, task.id, &task.kind, &task.params, limits);
                if let Ok(mut r) = running.lock() {
                    r.remove(&task.id);
                }
                if tx.send(result).is_err() {
                    break;
                }
            }
        });
        Ok(())
    };
    for _ in 0..options.parallelism.max(1).min(tasks.len()) {
        spawn_worker(tx.clone())?;
    }
    // With task time limits a worker stuck in a task given up on is replaced, so the sender is
    // kept for that; otherwise it goes now, so the channel closes when the workers are done.
    let spare_tx = limits.timeout_ms.map(|_| tx.clone());
    drop(tx);
    let mut results: Vec<TaskResult> = Vec::with_capacity(tasks.len());
    // Tasks given up on (past their own time limit): a late result of theirs is dropped.
    let mut abandoned = HashSet::new();
    loop {
        if results.len() == tasks.len() {
            break;
        }
        // Wake at the deadline, or when the first running task passes its own time limit:
        // a task that does not stop by itself (a closure that never reaches a statistic pass)
        // is reported timed out and not waited for (its thread runs on, unobserved).
        let overdue = |now: i64| {
            let running = running.lock().map(|r| r.clone()).unwrap_or_default();
            running
                .into_iter()
                .filter(|(id, _)| !abandoned.contains(id))
                .filter_map(|(id, start)| {
                    limits
                        .timeout_ms
                        .map(|t| (id, start, start.saturating_add(t)))
                })
                .min_by_key(|&(_, _, at)| at)
                .map(|(id, start, at)| (id, start, at, at <= now))
        };
        let now = now_ms();
        if let Some((id, start, _, true)) = overdue(now) {
            abandoned.insert(id);
            let limit = limits.timeout_ms.unwrap_or_default();
            let r = timed_out(
                id,
                start,
                limit,
                " (it did not stop by itself: its thread runs on, unobserved)",
            );
            on_result(&r);
            results.push(r);
            // The stuck worker's place goes to a new one while tasks wait in the queue.
            let waiting = queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
            if let (true, Some(tx)) = (waiting, &spare_tx) {
                spawn_worker(tx.clone())?;
            }
            continue;
        }
        let wake = [
            options.deadline_ms,
            overdue(now).map(|(_, _, at, _)| at),
            // A task may start at any moment: look again at least every 100 ms.
            limits.timeout_ms.map(|_| now + 100),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = match wake {
            Some(at) => {
                let wait = std::time::Duration::from_millis((at - now).max(0) as u64);
                match rx.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                        if options.deadline_ms.is_none_or(|d| now_ms() < d) =>
                    {
                        continue;
                    }
                    other => other,
                }
            }
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(r) if abandoned.contains(&r.id) => {}
            Ok(r) => {
                on_result(&r);
                results.push(r);
            }
            Err(_) => break,
        }
    }
    if results.len() < tasks.len() {
        // The deadline: nothing more is taken from the queue; what is missing is cancelled.
        if let Ok(mut q) = queue.lock() {
            q.clear();
        }
        let running = running.lock().map(|r| r.clone()).unwrap_or_default();
        finish_missing(
            tasks,
            &mut results,
            &running,
            options.deadline_ms,
            &mut on_result,
        );
    }
    results.sort_by_key(|r| r.id);
    Ok(results)
}

/// The result of a task whose cluster job stalled twice (its executor lost, most likely).
pub(crate) fn lost(id: u64, limit: std::time::Duration) -> TaskResult {
    let now = now_ms();
    TaskResult {
        id,
        status: TaskStatus::Failed,
        loss: None,
        metrics: "null".to_string(),
        message: Some(format!(
            "lost: its cluster job did not finish within {} s, twice \
             (quiver.cluster.job_timeout_secs); an executor was probably lost",
            limit.as_secs()
        )),
        worker: String::new(),
        started_ms: now,
        finished_ms: now,
    }
}

/// Adds a cancelled result for every task of `tasks` with none in `results` (`running`: the
/// start times of those known to have started).
fn finish_missing(
    tasks: &[Task],
    results: &mut Vec<TaskResult>,
    running: &HashMap<u64, i64>,
    deadline_ms: Option<i64>,
    on_result: &mut impl FnMut(&TaskResult),
) {
    let have: HashSet<u64> = results.iter().map(|r| r.id).collect();
    for t in tasks.iter().filter(|t| !have.contains(&t.id)) {
        let r = cancelled(t.id, running.get(&t.id).copied(), deadline_ms);
        on_result(&r);
        results.push(r);
    }
}

/// The struct type `quiver_run_task` returns.
fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("loss", DataType::Float64, true),
        Field::new("metrics", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, true),
        Field::new("worker", DataType::Utf8, false),
        Field::new("started_ms", DataType::Int64, false),
        Field::new("finished_ms", DataType::Int64, false),
    ])
}

/// `quiver_run_task(id, kind, params)`: runs one task per row with the registered runners and
/// returns its result as a struct. Volatile, so it is never folded or cached.
#[derive(Debug)]
pub struct RunTaskUdf {
    registry: Arc<TaskRegistry>,
    limits: TaskLimits,
    signature: Signature,
}

impl RunTaskUdf {
    pub fn new(registry: Arc<TaskRegistry>, limits: TaskLimits) -> Self {
        RunTaskUdf {
            registry,
            limits,
            signature: Signature::any(3, Volatility::Volatile),
        }
    }

    fn invoke(&self, args: ScalarFunctionArgs) -> Result<ArrayRef> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let ids = arrow::compute::cast(&arrays[0], &DataType::UInt64)?;
        let ids = ids.as_primitive::<UInt64Type>();
        let kinds = arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
        let kinds = kinds.as_string::<i32>();
        let params = arrow::compute::cast(&arrays[2], &DataType::Utf8)?;
        let params = params.as_string::<i32>();
        let run = || -> Vec<TaskResult> {
            (0..ids.len())
                .map(|i| {
                    self.registry.execute(
                        ids.value(i),
                        kinds.value(i),
                        params.value(i),
                        self.limits,
                    )
                })
                .collect()
        };
        // Trials are CPU work on an async worker: let the runtime move its other tasks away.
        let results = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        Ok(Arc::new(results_to_struct(&results)?))
    }
}

fn results_to_struct(results: &[TaskResult]) -> Result<StructArray> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(results.iter().map(|r| r.id))),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.status.as_str()),
        )),
        Arc::new(Float64Array::from_iter(results.iter().map(|r| r.loss))),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.metrics.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            results.iter().map(|r| r.message.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| r.worker.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            results.iter().map(|r| r.started_ms),
        )),
        Arc::new(Int64Array::from_iter_values(
            results.iter().map(|r| r.finished_ms),
        )),
    ];
    Ok(StructArray::try_new(result_fields(), cols, None)?)
}

fn struct_to_results(array: &StructArray) -> Result<Vec<TaskResult>> {
    let get = |i: usize| array.column(i);
    let ids = get(0).as_primitive::<UInt64Type>();
    let status = get(1).as_string::<i32>();
    let loss = get(2).as_primitive::<arrow::datatypes::Float64Type>();
    let metrics = get(3).as_string::<i32>();
    let message = get(4).as_string::<i32>();
    let worker = get(5).as_string::<i32>();
    let started = get(6).as_primitive::<Int64Type>();
    let finished = get(7).as_primitive::<Int64Type>();
    (0..array.len())
        .map(|i| {
            Ok(TaskResult {
                id: ids.value(i),
                status: TaskStatus::parse(status.value(i))?,
                loss: loss.is_valid(i).then(|| loss.value(i)),
                metrics: metrics.value(i).to_string(),
                message: message.is_valid(i).then(|| message.value(i).to_string()),
                worker: worker.value(i).to_string(),
                started_ms: started.value(i),
                finished_ms: finished.value(i),
            })
        })
        .collect()
}

impl PartialEq for RunTaskUdf {
    fn eq(&self, other: &Self) -> bool {
        self.registry.kinds() == other.registry.kinds() && self.limits == other.limits
    }
}

impl Eq for RunTaskUdf {}

impl Hash for RunTaskUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.registry.kinds().hash(state);
        self.limits.hash(state);
    }
}

impl ScalarUDFImpl for RunTaskUdf {
    fn name(&self) -> &str {
        "quiver_run_task"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Struct(result_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        self.invoke(args)
            .map(ColumnarValue::Array)
            .map_err(QuiverError::into_datafusion)
    }
}

/// Lets `quiver_run_task` run on cluster executors: it travels with the task kinds it needs and
/// its limits, and runs with the task runners of the process it lands in (every
/// quiver-executor registers all of them).
pub(crate) fn run_task_codec() -> crate::registry::ScalarCodec {
    crate::registry::ScalarCodec {
        encode: Arc::new(|udf: &ScalarUDF| {
            udf.inner().downcast_ref::<RunTaskUdf>().map(|u| {
                crate::registry::json_params("quiver_run_task", &(u.registry.kinds(), u.limits))
            })
        }),
        decode: Arc::new(|bytes: &[u8]| {
            let (_, limits): (Vec<String>, TaskLimits) =
                crate::registry::from_json_params("quiver_run_task", bytes)?;
            // A kind this process lacks is not an error here: the scheduler plans the query
            // without running it, and on an executor each of its tasks fails naming the kind
            // and how to register it.
            let here = crate::registry::global().tasks().clone();
            Ok(ScalarUDF::from(RunTaskUdf::new(Arc::new(here), limits)))
        }),
    }
}

/// The task table: one row per task, `parallelism` partitions, one batch per task so each
/// result streams out as soon as its task ends.
pub fn task_table(tasks: &[Task], parallelism: usize) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, false),
    ]));
    let parallelism = parallelism.max(1).min(tasks.len().max(1));
    let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); parallelism];
    for (i, t) in tasks.iter().enumerate() {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(UInt64Array::from(vec![t.id])),
                Arc::new(StringArray::from(vec![t.kind.as_str()])),
                Arc::new(StringArray::from(vec![t.params.as_str()])),
            ],
        )?;
        partitions[i % parallelism].push(batch);
    }
    Ok(MemTable::try_new(schema, partitions)?)
}

/// Runs `tasks` as one DataFusion query over the task table with `options.parallelism`
/// partitions, calling `on_result` as each task's row arrives. Returns all results by id; at
/// the deadline the query is dropped and what is missing is reported cancelled.
pub async fn fan_out_embedded(
    ctx: &SessionContext,
    tasks: &[Task],
    registry: Arc<TaskRegistry>,
    options: FanOutOptions,
    mut on_result: impl FnMut(&TaskResult),
) -> Result<Vec<TaskResult>> {
    let mut results = Vec::with_capacity(tasks.len());
    stream_tasks(
        ctx,
        tasks,
        registry,
        options,
        options.deadline_ms,
        &mut results,
        &mut on_result,
    )
    .await?;
    Ok(complete(
        tasks,
        results,
        options.deadline_ms,
        &mut on_result,
    ))
}

/// `results` with a cancelled result for each task of `tasks` still missing (cut off by the
/// deadline), by id.
pub(crate) fn complete(
    tasks: &[Task],
    mut results: Vec<TaskResult>,
    deadline_ms: Option<i64>,
    on_result: &mut impl FnMut(&TaskResult),
) -> Vec<TaskResult> {
    finish_missing(tasks, &mut results, &HashMap::new(), deadline_ms, on_result);
    results.sort_by_key(|r| r.id);
    results
}

/// Runs `tasks` as one query, appending each result to `results` as it arrives, until all
/// are back (`true`) or `wait_until_ms` passes (`false`: the query is dropped).
pub(crate) async fn stream_tasks(
    ctx: &SessionContext,
    tasks: &[Task],
    registry: Arc<TaskRegistry>,
    options: FanOutOptions,
    wait_until_ms: Option<i64>,
    results: &mut Vec<TaskResult>,
    on_result: &mut impl FnMut(&TaskResult),
) -> Result<bool> {
    if tasks.is_empty() {
        return Ok(true);
    }
    let parallelism = options.parallelism.max(1).min(tasks.len());
    // A context of exactly `parallelism` partitions: no repartitioning spreads the tasks wider.
    let mut config = ctx.copied_config();
    config.options_mut().execution.target_partitions = parallelism;
    config.options_mut().execution.coalesce_batches = false;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_config(config)
        .build();
    let ctx = SessionContext::new_with_state(state);
    let udf = ScalarUDF::from(RunTaskUdf::new(registry, options.limits()));
    let df = ctx
        .read_table(Arc::new(task_table(tasks, parallelism)?))?
        .select(vec![
            udf.call(vec![col("id"), col("kind"), col("params")])
                .alias("result"),
        ])?;
    let run = async {
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let column = batch.column(0);
            let array = column
                .as_struct_opt()
                .ok_or_else(|| QuiverError::internal("task results are not a struct"))?;
            for r in struct_to_results(array)? {
                on_result(&r);
                results.push(r);
            }
        }
        Ok::<(), QuiverError>(())
    };
    match wait_until_ms {
        None => run.await.map(|()| true),
        Some(until) => {
            let wait = std::time::Duration::from_millis((until - now_ms()).max(0) as u64);
            match tokio::time::timeout(wait, run).await {
                Ok(r) => r.map(|()| true),
                Err(_) => Ok(false),
            }
        }
    }
}
