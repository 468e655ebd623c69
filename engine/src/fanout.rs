//! The fan-out primitive: N independent tasks described by rows of a table (id, kind, params
//! as JSON), run in parallel partitions, one result row per task, delivered as they finish.
//! Locally on the compute pool ([`fan_out_local`]); embedded as a DataFusion query of a
//! volatile scalar function over a partitioned task table ([`fan_out_embedded`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

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
}

impl TaskStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "ok" => Ok(TaskStatus::Ok),
            "failed" => Ok(TaskStatus::Failed),
            "cancelled" => Ok(TaskStatus::Cancelled),
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

    /// Runs one task here: errors and panics become a failed result, never a failed fan-out.
    pub fn execute(&self, id: u64, kind: &str, params: &str) -> TaskResult {
        let started_ms = now_ms();
        let outcome = match self.get(kind) {
            Ok(runner) => match catch_unwind(AssertUnwindSafe(|| runner.run(params))) {
                Ok(r) => r,
                Err(panic) => Err(QuiverError::TaskFailed {
                    task: format!("{kind} #{id}"),
                    reason: format!("panicked: {}", panic_message(&panic)),
                }),
            },
            Err(e) => Err(e),
        };
        let finished_ms = now_ms();
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
            .expect("the blocking task's thread panicked")
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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

static WORKER_ID: OnceLock<String> = OnceLock::new();

/// Sets the name this process reports as `worker` (executors set their executor id). First
/// call wins.
pub fn set_worker_id(id: impl Into<String>) {
    let _ = WORKER_ID.set(id.into());
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

/// Runs `tasks` on `pool`, `parallelism` at a time at most (the pool's size bounds it too),
/// calling `on_result` on the caller's thread as each finishes. Returns all results by id.
pub fn fan_out_local(
    tasks: &[Task],
    registry: &TaskRegistry,
    pool: &ThreadPool,
    parallelism: usize,
    mut on_result: impl FnMut(&TaskResult),
) -> Result<Vec<TaskResult>> {
    let (tx, rx) = std::sync::mpsc::channel::<TaskResult>();
    let parallelism = parallelism.max(1);
    let queue = Arc::new(std::sync::Mutex::new(
        tasks
            .iter()
            .cloned()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let mut results = Vec::with_capacity(tasks.len());
    pool.in_place_scope(|scope| {
        for _ in 0..parallelism.min(tasks.len()) {
            let tx = tx.clone();
            let queue = Arc::clone(&queue);
            scope.spawn(move |_| {
                loop {
                    let next = match queue.lock() {
                        Ok(mut q) => q.pop_front(),
                        Err(_) => None,
                    };
                    let Some(task) = next else { break };
                    let result = registry.execute(task.id, &task.kind, &task.params);
                    if tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for result in rx.iter() {
            on_result(&result);
            results.push(result);
        }
    });
    results.sort_by_key(|r| r.id);
    Ok(results)
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
    signature: Signature,
}

impl RunTaskUdf {
    pub fn new(registry: Arc<TaskRegistry>) -> Self {
        RunTaskUdf {
            registry,
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
                    self.registry
                        .execute(ids.value(i), kinds.value(i), params.value(i))
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
        self.registry.kinds() == other.registry.kinds()
    }
}

impl Eq for RunTaskUdf {}

impl Hash for RunTaskUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.registry.kinds().hash(state);
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

/// Lets `quiver_run_task` run on cluster executors: it travels by name and runs with the task
/// runners of the process it lands in (every quiver-executor registers all of them).
pub(crate) fn run_task_codec() -> crate::registry::ScalarCodec {
    crate::registry::ScalarCodec {
        encode: Arc::new(|udf: &ScalarUDF| {
            udf.inner()
                .downcast_ref::<RunTaskUdf>()
                .map(|u| crate::registry::json_params("quiver_run_task", &u.registry.kinds()))
        }),
        decode: Arc::new(|bytes: &[u8]| {
            let wanted: Vec<String> = crate::registry::from_json_params("quiver_run_task", bytes)?;
            let here = crate::registry::global().tasks().clone();
            if let Some(missing) = wanted.iter().find(|k| !here.kinds().contains(k)) {
                return Err(QuiverError::Cluster(format!(
                    "this process has no task runner of kind '{missing}' (a different Quiver \
                     version on the client and the executors?)"
                )));
            }
            Ok(ScalarUDF::from(RunTaskUdf::new(Arc::new(here))))
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

/// Runs `tasks` as one DataFusion query over the task table with `parallelism` partitions,
/// calling `on_result` as each task's row arrives. Returns all results by id.
pub async fn fan_out_embedded(
    ctx: &SessionContext,
    tasks: &[Task],
    registry: Arc<TaskRegistry>,
    parallelism: usize,
    mut on_result: impl FnMut(&TaskResult),
) -> Result<Vec<TaskResult>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let parallelism = parallelism.max(1).min(tasks.len());
    // A context of exactly `parallelism` partitions: no repartitioning spreads the tasks wider.
    let mut config = ctx.copied_config();
    config.options_mut().execution.target_partitions = parallelism;
    config.options_mut().execution.coalesce_batches = false;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_config(config)
        .build();
    let ctx = SessionContext::new_with_state(state);
    let udf = ScalarUDF::from(RunTaskUdf::new(registry));
    let df = ctx
        .read_table(Arc::new(task_table(tasks, parallelism)?))?
        .select(vec![
            udf.call(vec![col("id"), col("kind"), col("params")])
                .alias("result"),
        ])?;
    let mut stream = df.execute_stream().await?;
    let mut results = Vec::with_capacity(tasks.len());
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
    results.sort_by_key(|r| r.id);
    Ok(results)
}
