//! `QuiverSession`: a DataFusion session with every Quiver function registered, Quiver's
//! configuration, the compute pool of the local runner, and the data and model stores.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::catalog::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext, cast, col};
use object_store::memory::InMemory;
use rayon::ThreadPool;
use url::Url;

use crate::aggregate::{Statistic, quoted_name, run_embedded, run_local};
use crate::cluster::{self, SchedulerAddress};
use crate::config::QuiverConfig;
use crate::dataset::{Dataset, LocalFrame};
use crate::error::{QuiverError, Result};
use crate::fanout::{
    self, FanOutOptions, Task, TaskRegistry, TaskResult, fan_out_embedded, fan_out_local,
};
use crate::io::{self, DataFormat};
use crate::registry::{self, FunctionRegistry};
use crate::store::ModelStore;
use crate::summary::{FeatureSummary, Summarizer};

/// Where a statistic or a fan-out runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runner {
    /// Cached batches on the compute pool: no query planning.
    Local,
    /// A DataFusion query in this process (on a cluster session, on the cluster).
    #[default]
    Embedded,
}

impl Runner {
    /// The session's default runner (`quiver.runner`).
    pub fn from_config(config: &QuiverConfig) -> Runner {
        if config.local_runner {
            Runner::Local
        } else {
            Runner::Embedded
        }
    }
}

fn log_retry(name: &str, limit: std::time::Duration) {
    log::warn!(
        "cluster job {name} did not finish within {} s; running it again",
        limit.as_secs()
    );
}

fn compute_pool(config: &QuiverConfig) -> Result<Arc<ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(config.compute_threads)
        .thread_name(|i| format!("quiver-compute-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| QuiverError::internal(format!("cannot start the compute pool: {e}")))
}

/// A dataset made ready for repeated statistics on one runner ([`QuiverSession::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    session: QuiverSession,
    dim: usize,
    input: PreparedInput,
    /// The embedded input's rows as a frame over the same buffers, when this process holds
    /// them ([`Prepared::resident`]).
    resident: Option<Arc<LocalFrame>>,
}

#[derive(Debug, Clone)]
enum PreparedInput {
    Local(Arc<LocalFrame>),
    Embedded(Box<Dataset>),
}

impl Prepared {
    /// Features per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn runner(&self) -> Runner {
        match self.input {
            PreparedInput::Local(_) => Runner::Local,
            PreparedInput::Embedded(_) => Runner::Embedded,
        }
    }

    /// The same rows on the local runner, over the same buffers, when this process holds
    /// them all in memory (the local runner's input, or the embedded in-memory copy that
    /// [`QuiverSession::prepare_iterative`] makes): statistics may then keep state of their
    /// own per batch between passes, as the batches stay where they are while the returned
    /// value lives. `None` when the rows are read on every pass or held on a cluster.
    pub fn resident(&self) -> Option<Prepared> {
        let frame = match &self.input {
            PreparedInput::Local(frame) => Arc::clone(frame),
            PreparedInput::Embedded(_) => Arc::clone(self.resident.as_ref()?),
        };
        Some(Prepared {
            session: self.session.clone(),
            dim: self.dim,
            input: PreparedInput::Local(frame),
            resident: None,
        })
    }

    /// Runs one statistic over the prepared data.
    pub async fn aggregate<S: Statistic>(&self, stat: Arc<S>) -> Result<S::Output> {
        match &self.input {
            PreparedInput::Local(frame) => self.session.aggregate_local(frame, stat.as_ref()),
            PreparedInput::Embedded(ds) => self.session.aggregate(ds, stat).await,
        }
    }
}

/// Where a session's queries run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// DataFusion in this process.
    Embedded,
    /// A Ballista cluster of quiver-scheduler / quiver-executor processes.
    Cluster(SchedulerAddress),
}

/// A Quiver session. Cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct QuiverSession {
    ctx: SessionContext,
    config: QuiverConfig,
    pool: Arc<ThreadPool>,
    functions: Arc<FunctionRegistry>,
    backend: Backend,
}

impl std::fmt::Debug for QuiverSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuiverSession")
            .field("config", &self.config)
            .field("functions", &self.functions.names())
            .field("backend", &self.backend)
            .finish()
    }
}

impl QuiverSession {
    /// An in-process DataFusion session with the default configuration and every function of
    /// the process-wide registry.
    pub fn embedded() -> Result<Self> {
        Self::embedded_with(QuiverConfig::default())
    }

    /// An in-process session with `config`.
    pub fn embedded_with(config: QuiverConfig) -> Result<Self> {
        Self::embedded_with_functions(config, registry::global())
    }

    /// An in-process session with `config` and exactly the functions of `functions`.
    pub fn embedded_with_functions(
        config: QuiverConfig,
        functions: FunctionRegistry,
    ) -> Result<Self> {
        let session_config = SessionConfig::new()
            .with_target_partitions(config.target_partitions)
            .with_batch_size(config.batch_size)
            .with_information_schema(true);
        let mut builder =
            crate::cluster::with_memory_limit(RuntimeEnvBuilder::new(), config.memory_limit);
        // Inside a cluster process (trials on an executor) the process's access policy holds.
        if !crate::cluster::access::process_access().is_unrestricted() {
            builder = builder.with_object_store_registry(Arc::new(
                crate::cluster::QuiverObjectStores::new(config.s3.clone()),
            ));
        }
        // An explicit `quiver.device = cuda` that this machine cannot honour fails here, naming
        // what is missing (`auto` resolves at first use and falls back to the CPU).
        if matches!(config.device, crate::device::DeviceChoice::Cuda(_)) {
            crate::device::resolve(config.device)?;
        }
        crate::device::set_policy(config.device_policy());
        let runtime = builder.build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(crate::cluster::cache::QuiverQueryPlanner))
            .with_physical_optimizer_rule(Arc::new(crate::aggregate::PartialsToClient))
            .build();
        let ctx = SessionContext::new_with_state(state).enable_url_table();
        let memory_url =
            Url::parse("memory://").map_err(|e| QuiverError::internal(e.to_string()))?;
        ctx.register_object_store(&memory_url, Arc::new(InMemory::new()));
        let file_url = Url::parse("file://").map_err(|e| QuiverError::internal(e.to_string()))?;
        let local_files: Arc<dyn object_store::ObjectStore> = if config.mmap_local_files {
            Arc::new(crate::local_files::MappedLocalFiles::new())
        } else {
            Arc::new(object_store::local::LocalFileSystem::new())
        };
        ctx.register_object_store(&file_url, local_files);
        functions.register_into(&ctx);
        Ok(QuiverSession {
            ctx,
            pool: compute_pool(&config)?,
            config,
            functions: Arc::new(functions),
            backend: Backend::Embedded,
        })
    }

    /// A session on the Ballista cluster whose scheduler is at `url` (`df://host:port`), with
    /// the default configuration and every function of the process-wide registry. Fails at once
    /// (within a few seconds) when the URL is malformed or the scheduler does not answer.
    pub async fn remote(url: &str) -> Result<Self> {
        Self::remote_with(url, QuiverConfig::default()).await
    }

    /// A cluster session with `config`.
    pub async fn remote_with(url: &str, config: QuiverConfig) -> Result<Self> {
        let address = SchedulerAddress::parse(url)?;
        let functions = Arc::new(registry::global());
        let ctx = cluster::remote_context(&address, &config, &functions).await?;
        Ok(QuiverSession {
            ctx,
            pool: compute_pool(&config)?,
            config,
            functions,
            backend: Backend::Cluster(address),
        })
    }

    /// A cluster session on a scheduler and one executor started inside this process (quick
    /// tests of the cluster path; needs `quiver_executor::install()`).
    pub async fn standalone() -> Result<Self> {
        Self::standalone_with(QuiverConfig::default()).await
    }

    /// [`QuiverSession::standalone`] with `config`.
    pub async fn standalone_with(config: QuiverConfig) -> Result<Self> {
        let launch = cluster::standalone_launcher()?;
        let address = launch(config.clone()).await?;
        Self::remote_with(&address.url(), config).await
    }

    /// Where this session's queries run.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// True on a Ballista cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// This session's configuration, compute pool and functions over another DataFusion
    /// context (e.g. the state a table provider is scanned with).
    pub fn with_context(&self, ctx: SessionContext) -> Self {
        QuiverSession {
            ctx,
            config: self.config.clone(),
            pool: Arc::clone(&self.pool),
            functions: Arc::clone(&self.functions),
            backend: self.backend.clone(),
        }
    }

    /// The DataFusion context (for SQL and DataFrames).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn config(&self) -> &QuiverConfig {
        &self.config
    }

    /// The runner fits and evaluators use (`quiver.runner`).
    pub fn runner(&self) -> Runner {
        Runner::from_config(&self.config)
    }

    /// The pool the local runner and local fan-out compute on.
    pub fn compute_pool(&self) -> &ThreadPool {
        &self.pool
    }

    pub fn functions(&self) -> &FunctionRegistry {
        &self.functions
    }

    /// Runs a SQL statement (DataFusion's dialect, Quiver's functions registered).
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        Ok(self.ctx.sql(sql).await?)
    }

    /// Reads a file or a directory of files; the format comes from the extension.
    pub async fn read(&self, location: &str) -> Result<DataFrame> {
        io::read(&self.ctx, &self.config.s3, location, None).await
    }

    /// Reads with an explicit format.
    pub async fn read_as(&self, location: &str, format: DataFormat) -> Result<DataFrame> {
        io::read(&self.ctx, &self.config.s3, location, Some(format)).await
    }

    /// Writes `df` to one Parquet file, published atomically. Returns the rows written.
    pub async fn write_parquet(&self, df: DataFrame, location: &str) -> Result<u64> {
        io::write(
            &self.ctx,
            &self.config.s3,
            df,
            location,
            DataFormat::Parquet,
        )
        .await
    }

    /// Writes `df` to one Arrow IPC file, published atomically. Returns the rows written.
    pub async fn write_ipc(&self, df: DataFrame, location: &str) -> Result<u64> {
        io::write(&self.ctx, &self.config.s3, df, location, DataFormat::Arrow).await
    }

    /// An in-memory DataFrame over `batches`, dealt round-robin into `partitions` partitions.
    pub fn from_batches(&self, batches: Vec<RecordBatch>, partitions: usize) -> Result<DataFrame> {
        let schema =
            batches
                .first()
                .map(|b| b.schema())
                .ok_or_else(|| QuiverError::EmptyDataset {
                    context: "an in-memory table".to_string(),
                })?;
        let partitions = partitions.max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        let per = batches.len().div_ceil(partitions);
        for (i, b) in batches.into_iter().enumerate() {
            // Contiguous runs keep the natural row order partition by partition.
            parts[i / per.max(1)].push(b);
        }
        parts.retain(|p| !p.is_empty());
        Ok(self
            .ctx
            .read_table(Arc::new(MemTable::try_new(schema, parts)?))?)
    }

    /// The model store at `quiver.model_store`.
    pub fn model_store(&self) -> Result<ModelStore> {
        self.model_store_at(&self.config.model_store)
    }

    /// A model store at `location`.
    pub fn model_store_at(&self, location: &str) -> Result<ModelStore> {
        let loc = io::resolve(&self.ctx, &self.config.s3, location)?;
        Ok(ModelStore::new(loc, location))
    }

    /// Runs a statistic over a cached frame on the compute pool (inside a fan-out task, on
    /// the task's own pool).
    pub fn aggregate_local<S: Statistic>(&self, frame: &LocalFrame, stat: &S) -> Result<S::Output> {
        fanout::check_deadline()?;
        match fanout::task_pool() {
            Some(pool) => run_local(frame, stat, &pool),
            None => run_local(frame, stat, &self.pool),
        }
    }

    /// Runs `f` on the compute threads of this task (a trial's `threads_per_trial`) or, outside
    /// a task, of the session: where in-memory kernels that use rayon belong.
    pub fn run_compute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match fanout::task_pool() {
            Some(pool) => pool.install(f),
            None => self.pool.install(f),
        }
    }

    /// Runs a statistic as a DataFusion aggregate query over `dataset`. On a cluster a job
    /// that outlives `quiver.cluster.job_timeout_secs` (an executor lost mid-job can leave a
    /// Ballista job waiting forever) is abandoned and run once more on the executors left;
    /// a second timeout is an error.
    pub async fn aggregate<S: Statistic>(
        &self,
        dataset: &Dataset,
        stat: Arc<S>,
    ) -> Result<S::Output> {
        fanout::check_deadline()?;
        if !self.is_cluster() {
            return run_embedded(dataset, stat).await;
        }
        let limit = self.config.cluster_job_timeout;
        for _attempt in 0..2 {
            match tokio::time::timeout(limit, run_embedded(dataset, Arc::clone(&stat))).await {
                Ok(result) => return result,
                Err(_) => log_retry(stat.name(), limit),
            }
        }
        Err(QuiverError::Cluster(format!(
            "{} did not finish within {} s, twice (quiver.cluster.job_timeout_secs): an \
             executor was probably lost and the scheduler could not rerun its tasks; see the \
             scheduler's log",
            stat.name(),
            limit.as_secs()
        )))
    }

    /// The feature summary of `dataset` (unweighted), on the given runner.
    pub async fn summarize(&self, dataset: &Dataset, runner: Runner) -> Result<FeatureSummary> {
        let prepared = self.prepare(dataset, runner).await?;
        prepared
            .aggregate(Arc::new(Summarizer::new(prepared.dim())))
            .await
    }

    /// Prepares `dataset` for repeated statistics on `runner` (what an iterative fit does once):
    /// the local runner caches the assembled features now; the embedded one keeps the plan.
    pub async fn prepare(&self, dataset: &Dataset, runner: Runner) -> Result<Prepared> {
        let input = match runner {
            Runner::Local => PreparedInput::Local(Arc::new(dataset.cache_local().await?)),
            Runner::Embedded => PreparedInput::Embedded(Box::new(dataset.clone())),
        };
        Ok(Prepared {
            session: self.clone(),
            dim: dataset.feature_dim()?,
            input,
            resident: None,
        })
    }

    /// Like [`QuiverSession::prepare`], for algorithms that pass over the data many times: the
    /// assembled features (and label, weight) are kept in memory with the same partitioning
    /// (Spark's `persist()` before an iterative fit), so each pass scans memory instead of
    /// recomputing the whole plan. Embedded, this process collects them into an in-memory
    /// table; on a cluster each executor keeps the partitions it prepares
    /// ([`crate::cluster::cache`]) and later passes are sent back to it.
    pub async fn prepare_iterative(&self, dataset: &Dataset, runner: Runner) -> Result<Prepared> {
        if runner == Runner::Local {
            return self.prepare(dataset, runner).await;
        }
        let mut exprs = vec![dataset.features_expr()?.alias("features")];
        if let Some(l) = dataset.label() {
            exprs.push(cast(col(quoted_name(l)), DataType::Float64).alias("label"));
        }
        if let Some(w) = dataset.weight() {
            exprs.push(cast(col(quoted_name(w)), DataType::Float64).alias("weight"));
        }
        let df = dataset.dataframe().clone().select(exprs)?;
        let mut resident = None;
        let kept = if self.is_cluster() {
            match self.cache_on_executors(&df).await {
                Some(kept) => kept,
                // Not fingerprintable: the executors read the data on every pass.
                None => return self.prepare(dataset, runner).await,
            }
        } else {
            match self.collect_in_memory(df).await {
                Ok((kept, parts)) => {
                    resident = LocalFrame::over_batches(
                        &parts,
                        dataset.label().map(|_| "label"),
                        dataset.weight().map(|_| "weight"),
                    )
                    .map(Arc::new);
                    kept
                }
                Err(
                    QuiverError::InvalidValueInBatch { .. }
                    | QuiverError::VectorLengthInBatch { .. },
                ) => {
                    return Err(dataset.locate_invalid().await?.unwrap_or_else(|| {
                        QuiverError::internal("a bad value was reported but could not be located")
                    }));
                }
                Err(e) => return Err(e),
            }
        };
        let mut cached = Dataset::new(kept).with_features(["features"])?;
        if dataset.label().is_some() {
            cached = cached.with_label("label")?;
        }
        if dataset.weight().is_some() {
            cached = cached.with_weight("weight")?;
        }
        Ok(Prepared {
            session: self.clone(),
            dim: dataset.feature_dim()?,
            input: PreparedInput::Embedded(Box::new(cached)),
            resident,
        })
    }

    /// `df`'s rows collected into an in-memory table of this process, partitions kept.
    async fn in_memory(&self, df: DataFrame) -> Result<DataFrame> {
        Ok(self.collect_in_memory(df).await?.0)
    }

    /// [`QuiverSession::in_memory`], with the collected partitions the table holds.
    async fn collect_in_memory(&self, df: DataFrame) -> Result<(DataFrame, Vec<Vec<RecordBatch>>)> {
        let schema = Arc::new(df.schema().as_arrow().clone());
        let parts = df.collect_partitioned().await?;
        let table = MemTable::try_new(schema, parts.clone())?;
        Ok((self.ctx.read_table(Arc::new(table))?, parts))
    }

    /// Spark's `persist()`: `df`'s rows kept in memory for the queries and fits that follow —
    /// embedded, in this process (an in-memory table with the same partitioning, computed
    /// now); on a cluster, by each executor for the partitions it computes, from the first
    /// query over the result on ([`QuiverSession::cache_on_executors`]). On a cluster where
    /// that cannot be done (`quiver.cluster.cache` off, or data that cannot be fingerprinted)
    /// `df` itself, with a warning that says why. Executors drop kept partitions least
    /// recently used first when their `--cache-memory` is full; embedded, the rows live as
    /// long as the returned frame.
    pub async fn persist(&self, df: &DataFrame) -> Result<DataFrame> {
        if !self.is_cluster() {
            return self.in_memory(df.clone()).await;
        }
        match self.cache_on_executors(df).await {
            Some(kept) => Ok(kept),
            None => {
                log::warn!(
                    "persist: the rows are read again by every query: {}",
                    if self.config.cluster_cache {
                        "the plan reads an in-memory table or files this process cannot list"
                    } else {
                        "quiver.cluster.cache is off"
                    }
                );
                Ok(df.clone())
            }
        }
    }

    /// Frees what [`QuiverSession::persist`] kept of `persisted` (the frame it returned) —
    /// Spark's `unpersist`: on a cluster every executor drops the partitions it keeps of it
    /// (a task to each: rounds of short tasks over every slot until each executor
    /// [`QuiverSession::workers`] lists has answered; one not reached in four rounds is
    /// named in the log and its partitions go as its cache needs room). Returns the
    /// partitions dropped. Embedded, the rows live in the frame itself and go with it: 0.
    pub async fn unpersist(&self, persisted: &DataFrame) -> Result<usize> {
        let Some(fingerprint) = cluster::cache::persisted_fingerprint(persisted.logical_plan())
        else {
            return Ok(0);
        };
        if !self.is_cluster() {
            return Ok(cluster::cache::forget(fingerprint).0);
        }
        let workers = self.workers().await?;
        let slots: usize = workers.iter().map(|w| w.slots.max(1)).sum();
        let params = serde_json::json!({ "fingerprint": fingerprint, "ms": 20 }).to_string();
        let mut reached: Vec<String> = Vec::new();
        let mut dropped = 0;
        for _ in 0..4 {
            let results = self
                .spread(
                    cluster::cache::UNPERSIST,
                    &params,
                    (2 * slots).clamp(4, 256),
                )
                .await?;
            for r in &results {
                let Ok(m) = serde_json::from_str::<serde_json::Value>(&r.metrics) else {
                    continue;
                };
                dropped += m["partitions"].as_u64().unwrap_or(0) as usize;
                if let Some(w) = m["worker"]["worker"].as_str()
                    && !reached.iter().any(|x| x == w)
                {
                    reached.push(w.to_string());
                }
            }
            if workers.iter().all(|w| reached.contains(&w.worker)) {
                return Ok(dropped);
            }
        }
        let missing: Vec<&str> = workers
            .iter()
            .filter(|w| !reached.contains(&w.worker))
            .map(|w| w.worker.as_str())
            .collect();
        log::warn!(
            "unpersist: executors {} took none of the tasks; what they keep goes as their cache needs room",
            missing.join(", ")
        );
        Ok(dropped)
    }

    /// `n` tasks of `kind` with the same `params`, all at once, on this session's task runners
    /// (on a cluster: spread over the executors' free slots) — how the probe and unpersist
    /// reach every executor.
    async fn spread(&self, kind: &str, params: &str, n: usize) -> Result<Vec<TaskResult>> {
        let tasks: Vec<Task> = (0..n as u64)
            .map(|id| Task {
                id,
                kind: kind.to_string(),
                params: params.to_string(),
            })
            .collect();
        let registry = Arc::new(self.functions.tasks().clone());
        self.fan_out_with(
            &tasks,
            registry,
            FanOutOptions::new(n),
            Runner::Embedded,
            |_| {},
        )
        .await
    }

    /// On a cluster with `quiver.cluster.cache` on: `df` under a cache node, so each executor
    /// keeps the partitions it computes and later queries over the result read them from its
    /// memory ([`crate::cluster::cache`]). `None` embedded, with the cache off, or when the
    /// plan reads something that cannot be fingerprinted (an in-memory table, files this
    /// process cannot list).
    pub async fn cache_on_executors(&self, df: &DataFrame) -> Option<DataFrame> {
        if !self.is_cluster() || !self.config.cluster_cache {
            return None;
        }
        let state = self.ctx.state();
        let plan = df.logical_plan().clone();
        let fingerprint = cluster::cache::fingerprint(&plan, &state).await?;
        Some(DataFrame::new(
            state,
            cluster::cache::CacheNode::plan(fingerprint, plan),
        ))
    }

    /// Runs `tasks` with the session's task runners, `options` (a parallelism, or
    /// [`FanOutOptions`]) bounding them, calling `on_result` as each finishes. Results come
    /// back ordered by task id.
    pub async fn fan_out(
        &self,
        tasks: &[Task],
        options: impl Into<FanOutOptions>,
        runner: Runner,
        on_result: impl FnMut(&TaskResult),
    ) -> Result<Vec<TaskResult>> {
        let registry = Arc::new(self.functions.tasks().clone());
        self.fan_out_with(tasks, registry, options.into(), runner, on_result)
            .await
    }

    /// The processes that run this session's tasks, with their task slots and cores: this
    /// process when embedded; on a cluster the executors, learnt by a probe job of short tasks
    /// spread over every free slot (remembered for 30 s per scheduler). An executor busy with
    /// other jobs throughout the probe may be missed.
    pub async fn workers(&self) -> Result<Vec<fanout::WorkerInfo>> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        use std::time::{Duration, Instant};
        type Seen = HashMap<String, (Instant, Vec<fanout::WorkerInfo>)>;
        static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
        let Backend::Cluster(address) = &self.backend else {
            return Ok(vec![fanout::WorkerInfo::here()]);
        };
        let url = address.url();
        let seen = SEEN.get_or_init(Default::default);
        if let Some((at, workers)) = seen.lock().ok().and_then(|s| s.get(&url).cloned())
            && at.elapsed() < Duration::from_secs(30)
        {
            return Ok(workers);
        }
        // Each task waits a little, so that an executor busy elsewhere (a pulling one asks for
        // more work at most every 50 ms while it runs tasks) still gets some before the others
        // have run them all; idle executors all get tasks as the job starts (a push scheduler
        // fills every free slot, a pulling executor's poll is held for new work).
        let results = self.spread(fanout::PROBE, r#"{"ms": 5}"#, 16).await?;
        let mut workers: Vec<fanout::WorkerInfo> = Vec::new();
        for r in &results {
            if let Ok(w) = serde_json::from_str::<fanout::WorkerInfo>(&r.metrics)
                && !workers.iter().any(|x| x.worker == w.worker)
            {
                workers.push(w);
            }
        }
        if workers.is_empty() {
            let why = results
                .iter()
                .find_map(|r| r.message.clone())
                .unwrap_or_else(|| "no task ran".to_string());
            return Err(QuiverError::Cluster(format!(
                "cannot learn the executors of {url}: {why}"
            )));
        }
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        if let Ok(mut s) = seen.lock() {
            s.insert(url, (Instant::now(), workers.clone()));
        }
        Ok(workers)
    }

    /// [`QuiverSession::fan_out`] with the task runners of `registry`. On a cluster a job that
    /// outlives `quiver.cluster.job_timeout_secs` (an executor lost mid-job can leave a
    /// Ballista job waiting forever) is abandoned and its unfinished tasks run once more; tasks
    /// still missing after a second timeout are reported failed, and the fan-out goes on.
    pub async fn fan_out_with(
        &self,
        tasks: &[Task],
        registry: Arc<TaskRegistry>,
        options: FanOutOptions,
        runner: Runner,
        mut on_result: impl FnMut(&TaskResult),
    ) -> Result<Vec<TaskResult>> {
        match runner {
            Runner::Local => fan_out_local(tasks, registry, options, on_result),
            Runner::Embedded if !self.is_cluster() => {
                fan_out_embedded(&self.ctx, tasks, registry, options, on_result).await
            }
            Runner::Embedded => {
                // Tasks on the executors reach this process's pruning board over the network.
                let mut options = options;
                if let (Some(key), Backend::Cluster(scheduler)) = (options.pruning, &self.backend)
                    && let Some(secret) = fanout::board_secret(key)
                {
                    options.board = Some(crate::board::address_for(
                        key,
                        secret,
                        &scheduler.host,
                        scheduler.port,
                    )?);
                }
                let limit = self.config.cluster_job_timeout;
                let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX / 2);
                let mut results = Vec::with_capacity(tasks.len());
                let mut pending = tasks.to_vec();
                for attempt in 0..2 {
                    let watchdog = fanout::now_ms().saturating_add(limit_ms);
                    let until = options.deadline_ms.map_or(watchdog, |d| d.min(watchdog));
                    let done = fanout::stream_tasks(
                        &self.ctx,
                        &pending,
                        Arc::clone(&registry),
                        options,
                        Some(until),
                        &mut results,
                        &mut on_result,
                    )
                    .await?;
                    let have: HashSet<u64> = results.iter().map(|r| r.id).collect();
                    pending.retain(|t| !have.contains(&t.id));
                    if done || pending.is_empty() || until < watchdog {
                        break;
                    }
                    if attempt == 0 {
                        log_retry("fan-out", limit);
                        continue;
                    }
                    for t in &pending {
                        let r = fanout::lost(t.id, limit);
                        on_result(&r);
                        results.push(r);
                    }
                    pending.clear();
                }
                // What is still missing was cut off by the deadline.
                Ok(fanout::complete(
                    tasks,
                    results,
                    options.deadline_ms,
                    &mut on_result,
                ))
            }
        }
    }
}
