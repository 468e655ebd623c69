//! An executor of a guarded cluster (auth token or TLS): it pulls its tasks from the
//! scheduler, and reports each finished task at once.
//!
//! Ballista's own process start (`start_executor_process`) runs its poll loop without a
//! wake-up, so a finished task waits for the loop's next poll: up to its 50 ms idle sleep
//! when the executor still has free slots, on every stage of every job. The loop takes a
//! wake-up (`poll_now_notify`) when it is started directly, which is what this module does:
//! the process is put together from Ballista's public parts as Ballista's own start does for
//! pull scheduling (the executor, its runtimes, the scheduler connection, the Flight
//! service, the graceful stop), and the loop is woken
//!
//! - when a task's stage executor is dropped — after the task's status is in the loop's
//!   channel (see [`Waking`]);
//! - every [`IDLE_WAKE`], as Ballista's idle interval does, so that an idle executor is
//!   always waiting in a poll (the guarded scheduler holds an idle executor's poll until
//!   there is work, see [`crate::auth`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::RuntimeProducer;
use ballista_core::client::BallistaClient;
use ballista_core::client_pool::{BallistaClientPool, PooledClient};
use ballista_core::error::BallistaError;
use ballista_core::extension::{BallistaConfigGrpcEndpoint, SessionConfigExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::executor_status::Status as ExecutorState;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    ExecutorStatus, ExecutorStoppedParams, HeartBeatParams, ShuffleWritePartition, TaskColumnStats,
};
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor::{Executor, TasksDrainedFuture};
use ballista_executor::executor_process::{ExecutorProcessConfig, structure_executor_metadata};
use ballista_executor::health::ExecutorHealth;
use ballista_executor::metrics::LoggingMetricsCollector;
use ballista_executor::runtime_cache::{DefaultSessionRuntimeCache, MemoryPoolPolicy};
use ballista_executor::shutdown::ShutdownNotifier;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::sync::Notify;
use tonic::transport::Channel;

/// How often an idle loop is woken to poll again (Ballista's idle interval). An idle
/// executor's poll is held by the scheduler until there is work, so this sets how soon a
/// loop with running tasks and free slots asks for more, not how soon idle ones hear of it.
pub const IDLE_WAKE: Duration = Duration::from_millis(50);

/// The share of the host's memory the tasks may reserve together when no limit is given
/// (Ballista's default).
const DEFAULT_POOL_FRACTION: f64 = 0.7;

/// How long an idle Flight client to another executor is kept for reuse.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

/// Runs a pulling executor until the process is stopped (SIGTERM, Ctrl-C) or one of its
/// services ends. `opt` is [`crate::executor_config`]'s, which for a guarded cluster always
/// names its Flight service.
pub async fn run(opt: Arc<ExecutorProcessConfig>) -> Result<(), BallistaError> {
    opt.validate()?;
    let address: SocketAddr = format!("{}:{}", opt.bind_host, opt.port)
        .parse()
        .map_err(|e: std::net::AddrParseError| BallistaError::Configuration(e.to_string()))?;
    let work_dir = opt
        .work_dir
        .clone()
        .ok_or_else(|| BallistaError::Configuration("the executor needs a work dir".into()))?;
    let flight = opt.override_arrow_flight_service.clone().ok_or_else(|| {
        BallistaError::Configuration("a pulling executor needs its guarded Flight service".into())
    })?;
    let vcores = opt.vcores.max(1);
    let metadata = structure_executor_metadata(&opt, vcores as u32);
    let config_producer = opt
        .override_config_producer
        .clone()
        .unwrap_or_else(|| Arc::new(ballista_core::utils::default_config_producer));
    let base_runtime: RuntimeProducer = match opt.override_runtime_producer.clone() {
        Some(p) => p,
        None => {
            let dir = work_dir.clone();
            Arc::new(move |_: &SessionConfig| {
                RuntimeEnvBuilder::new()
                    .with_temp_file_path(dir.clone())
                    .build_arc()
            })
        }
    };
    let pool = pool_policy(opt.memory_pool_size, vcores)?;
    let runtime: RuntimeProducer = {
        let (base, pool) = (Arc::clone(&base_runtime), Arc::clone(&pool));
        Arc::new(move |config: &SessionConfig| pool(base(config)?, config, 1))
    };
    let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
        opt.override_logical_codec.clone().unwrap_or_else(|| {
            Arc::new(ballista_core::serde::BallistaLogicalExtensionCodec::default())
        }),
        opt.override_physical_codec.clone().unwrap_or_else(|| {
            Arc::new(ballista_core::serde::BallistaPhysicalExtensionCodec::default())
        }),
    );
    let wake = Arc::new(Notify::new());
    let engine = Arc::new(WakingEngine {
        inner: opt.override_execution_engine.clone().unwrap_or_else(|| {
            Arc::new(DefaultExecutionEngine::with_client_pool(Arc::new(
                FlightClients::default(),
            )))
        }),
        wake: Arc::clone(&wake),
    });
    let executor = Arc::new(
        Executor::new(
            metadata.clone(),
            &work_dir,
            runtime,
            config_producer,
            opt.override_function_registry
                .clone()
                .unwrap_or_else(|| Arc::new(BallistaFunctionRegistry::default())),
            Arc::new(LoggingMetricsCollector::default()),
            vcores,
            engine,
        )
        .with_session_runtime_cache(Some(Arc::new(DefaultSessionRuntimeCache::new(
            base_runtime,
            pool,
            opt.session_runtime_cache_capacity,
        )))),
    );

    let mut scheduler = SchedulerGrpcClient::new(connect(&opt, &executor).await?)
        .max_encoding_message_size(opt.grpc_max_encoding_message_size as usize)
        .max_decoding_message_size(opt.grpc_max_decoding_message_size as usize);
    log::info!(
        "executor {} pulls its tasks from {}:{} ({vcores} slots, work dir {work_dir})",
        opt.executor_id,
        opt.scheduler_host,
        opt.scheduler_port
    );

    let ticker = {
        let wake = Arc::clone(&wake);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(IDLE_WAKE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                wake.notify_one();
            }
        })
    };
    let shutdown = ShutdownNotifier::new();
    let mut poll = tokio::spawn(ballista_executor::execution_loop::poll_loop(
        scheduler.clone(),
        Arc::clone(&executor),
        codec,
        Some(wake),
        None,
        ExecutorHealth::new(),
    ));
    let mut flight = flight(
        work_dir,
        address,
        shutdown.subscribe_for_shutdown(),
        opt.grpc_server_config.clone(),
    );

    // A service that ends by itself (the Flight port taken, the loop's semaphore closed) is a
    // failure of the process; a signal is a stop.
    let (reason, flight_ended, failed) = tokio::select! {
        r = &mut poll => (format!("the poll loop ended: {}", ended(r)), false, true),
        r = &mut flight => (format!("the Flight service ended: {}", ended(r)), true, true),
        _ = tokio::signal::ctrl_c() => ("executor received ctrl-c".to_string(), false, false),
        _ = ballista_executor::terminate::sig_term() => {
            ("executor received SIGTERM".to_string(), false, false)
        }
    };
    log::info!("{reason}: stopping");
    ticker.abort();
    // Fenced first, so that the scheduler sends it nothing more; then stopped.
    let fenced = HeartBeatParams {
        executor_id: opt.executor_id.clone(),
        metrics: vec![],
        status: Some(ExecutorStatus {
            status: Some(ExecutorState::Terminating(String::new())),
        }),
        metadata: Some(metadata),
    };
    if let Err(e) = scheduler.heart_beat_from_executor(fenced).await {
        log::warn!("could not tell the scheduler this executor is stopping: {e}");
    }
    let stopped = ExecutorStoppedParams {
        executor_id: opt.executor_id.clone(),
        reason: reason.clone(),
    };
    if let Err(e) = scheduler.executor_stopped(stopped).await {
        log::warn!("could not tell the scheduler this executor stopped: {e}");
    }
    TasksDrainedFuture(executor).await;
    poll.abort();
    let ShutdownNotifier {
        notify_shutdown,
        mut shutdown_complete_rx,
        shutdown_complete_tx,
    } = shutdown;
    let _ = notify_shutdown.send(());
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
    if !flight_ended {
        let _ = flight.await;
    }
    log::info!("executor stopped");
    if failed {
        return Err(BallistaError::General(reason));
    }
    Ok(())
}

fn ended<T: fmt::Debug>(r: Result<T, tokio::task::JoinError>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.to_string(),
    }
}

/// The scheduler's channel, retried until `scheduler_connect_timeout_seconds` have passed.
async fn connect(
    opt: &ExecutorProcessConfig,
    executor: &Executor,
) -> Result<Channel, BallistaError> {
    let url = format!("http://{}:{}", opt.scheduler_host, opt.scheduler_port);
    let grpc = GrpcClientConfig::from(&executor.produce_config().ballista_config());
    let deadline =
        Instant::now() + Duration::from_secs(opt.scheduler_connect_timeout_seconds.into());
    loop {
        let attempt = async {
            let mut endpoint = create_grpc_client_endpoint(url.clone(), Some(&grpc))?;
            if let Some(customise) = &opt.override_create_grpc_client_endpoint {
                endpoint =
                    customise(endpoint).map_err(|e| BallistaError::General(e.to_string()))?;
            }
            endpoint.connect().await.map_err(BallistaError::TonicError)
        };
        match attempt.await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() >= deadline => {
                return Err(BallistaError::GrpcConnectionError(format!(
                    "could not connect to the scheduler at {url}: {e}"
                )));
            }
            Err(e) => {
                log::warn!("connecting to the scheduler at {url}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Each task's memory pool: the executor's budget split across its slots, a task's share
/// scaled by the slots it claims (as Ballista's own start does). `None`: 70% of the memory this
/// process may use ([`quiver_engine::config::usable_memory`]); `Some(0)`: unbounded.
fn pool_policy(limit: Option<u64>, vcores: usize) -> Result<MemoryPoolPolicy, BallistaError> {
    let total = match limit {
        Some(0) => None,
        Some(bytes) => Some(bytes as usize),
        None => {
            let usable = quiver_engine::config::usable_memory();
            if usable.is_none() {
                log::warn!("host memory unknown: tasks' memory is not bounded (--memory-limit)");
            }
            usable.map(|m| (m as f64 * DEFAULT_POOL_FRACTION) as usize)
        }
    };
    let Some(total) = total else {
        return Ok(Arc::new(|base, _, _| Ok(base)));
    };
    let per_slot = total / vcores.max(1);
    if per_slot == 0 {
        return Err(BallistaError::Configuration(format!(
            "the memory limit ({total} bytes) is smaller than the task slots ({vcores})"
        )));
    }
    Ok(Arc::new(
        move |base: Arc<RuntimeEnv>, _: &SessionConfig, slots: u32| {
            let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(
                per_slot.saturating_mul(slots.max(1) as usize),
            ));
            RuntimeEnvBuilder::from_runtime_env(&base)
                .with_memory_pool(pool)
                .build_arc()
        },
    ))
}

/// Ballista's execution engine whose stage executors wake the poll loop when they are
/// dropped.
struct WakingEngine {
    inner: Arc<dyn ExecutionEngine>,
    wake: Arc<Notify>,
}

impl ExecutionEngine for WakingEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn QueryStageExecutor>> {
        let stage = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(Waking {
            stage,
            wake: Arc::clone(&self.wake),
        }))
    }
}

/// A task's stage executor that wakes the poll loop when it is dropped. Ballista's loop runs
/// a task in one future that ends by sending the task's status and releasing its slot; the
/// last handle on the stage executor goes with that future, so the wake-up comes after the
/// status is there to be reported. A wake-up that finds nothing new costs one poll.
struct Waking {
    stage: Arc<dyn QueryStageExecutor>,
    wake: Arc<Notify>,
}

impl Drop for Waking {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl fmt::Debug for Waking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.stage, f)
    }
}

impl fmt::Display for Waking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.stage, f)
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for Waking {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<Vec<ShuffleWritePartition>> {
        self.stage.execute_query_stage(task_id, context).await
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.stage.collect_plan_metrics()
    }

    fn collect_runtime_stats_reports(
        &self,
    ) -> Vec<ballista_core::serde::protobuf::RuntimeStatsReport> {
        self.stage.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(
        &self,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::WindowStateReport>> {
        self.stage.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.stage.collect_column_stats()
    }
}

type ClientKey = (String, u16, GrpcClientConfig);
/// Idle clients per executor and settings, each with the time it was returned.
type IdleClients = HashMap<ClientKey, Vec<(BallistaClient, Instant)>>;

/// Flight clients to other executors (shuffle reads), kept for reuse for [`CLIENT_IDLE`]:
/// a shuffle read does not open a connection (and a TLS handshake) per fetch.
#[derive(Default, Clone)]
struct FlightClients {
    idle: Arc<Mutex<IdleClients>>,
}

impl fmt::Debug for FlightClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlightClients")
    }
}

impl FlightClients {
    /// A kept client for `key`, after dropping those idle too long.
    fn take(&self, key: &ClientKey) -> Option<BallistaClient> {
        let mut idle = self.idle.lock().ok()?;
        evict(&mut idle);
        idle.get_mut(key)?.pop().map(|(c, _)| c)
    }
}

#[async_trait::async_trait]
impl BallistaClientPool for FlightClients {
    async fn acquire(
        &self,
        host: &str,
        port: u16,
        config: &GrpcClientConfig,
        customize_endpoint: Option<Arc<BallistaConfigGrpcEndpoint>>,
    ) -> ballista_core::error::Result<PooledClient> {
        let key = (host.to_string(), port, config.clone());
        let client = match self.take(&key) {
            Some(c) => c,
            None => {
                BallistaClient::try_new(
                    host,
                    port,
                    config.max_message_size,
                    config.use_tls,
                    customize_endpoint,
                    config.io_retries_times,
                    config.io_retry_wait_time_ms,
                    config.initial_connection_window_size,
                    config.initial_stream_window_size,
                )
                .await?
            }
        };
        let idle = Arc::clone(&self.idle);
        Ok(PooledClient::new(
            client,
            Box::new(move |c| {
                if let Ok(mut idle) = idle.lock() {
                    idle.entry(key).or_default().push((c, Instant::now()));
                }
            }),
        ))
    }

    async fn evict_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            evict(&mut idle);
        }
    }
}

fn evict(idle: &mut IdleClients) {
    let now = Instant::now();
    idle.retain(|_, kept| {
        kept.retain(|(_, since)| now.duration_since(*since) < CLIENT_IDLE);
        !kept.is_empty()
    });
}
