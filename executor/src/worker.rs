//! The Quiver executor: Ballista's executor with every Quiver function and codec, Quiver's
//! object stores, and liveness settings that let a lost executor be noticed in seconds.

use std::sync::Arc;
use std::time::Duration;

use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use quiver_engine::cluster::access::{self, Access};
use quiver_engine::cluster::auth::AuthToken;
use quiver_engine::cluster::tls::{ClientTls, ServerTls};
use quiver_engine::cluster::{
    self, QuiverLogicalCodec, QuiverObjectStores, QuiverPhysicalCodec, SchedulerAddress,
};
use quiver_engine::config::{QuiverConfig, S3Config, available_cores};
use quiver_engine::{QuiverError, Result, registry};

/// Settings of an executor process (`quiver-executor --help` documents each flag).
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `df://host:port`. Defaults to `df://localhost:50050`.
    pub scheduler: String,
    /// Defaults to `127.0.0.1`.
    pub bind_host: String,
    /// Host name the scheduler and other executors use to reach this one. Defaults to
    /// `localhost`.
    pub external_host: String,
    /// Arrow Flight port (shuffle data and results). Defaults to `50051`.
    pub port: u16,
    /// gRPC port (tasks from the scheduler). Defaults to `50052`.
    pub grpc_port: u16,
    /// Tasks run at once. Defaults to the number of cores.
    pub concurrent_tasks: usize,
    /// Shuffle files go here; defaults to a fresh temporary directory ([`run_executor`]
    /// removes it when the executor stops; [`executor_config`] keeps it).
    pub work_dir: Option<String>,
    /// Defaults to 3 s.
    pub heartbeat: Duration,
    /// Defaults to a random id.
    pub executor_id: Option<String>,
    /// S3 settings for `s3://` data and model stores (unset fields: the `AWS_*` variables).
    pub s3: S3Config,
    /// Memory the tasks of this executor may reserve together (bytes; `None`: 70% of the
    /// host's memory, or of its container's limit; `Some(0)`: unlimited).
    pub memory_limit: Option<usize>,
    /// Bytes of prepared partitions this process keeps for iterative fits
    /// ([`quiver_engine::cluster::cache`]; `0`: none). `None`: a quarter of the host's memory, or
    /// of its container's limit.
    pub cache_memory: Option<usize>,
    /// How this executor's batch work uses a CUDA device (`--device`; the device is the
    /// executor's: a client's `quiver.device` does not travel with its tasks).
    pub device: quiver_engine::device::DevicePolicy,
    /// Start a plain Ballista executor without Quiver's functions and codecs (only to see
    /// what a version mismatch looks like; never useful in production).
    pub bare: bool,
    /// The cluster's auth token: carried by every call this executor makes, required of
    /// every call to its Flight service; the executor then pulls its tasks (no gRPC server).
    pub auth_token: Option<AuthToken>,
    /// This executor's certificate and key: its Flight service speaks TLS.
    pub tls: Option<ServerTls>,
    /// The cluster's CA: this executor's connections use TLS and verify against it.
    pub tls_ca: Option<ClientTls>,
    /// What remote sessions may read and write through this process's object stores.
    /// Unrestricted by default (an in-process cluster); the command-line processes default to
    /// no local paths and no writes (see [`quiver_engine::cluster::access`]).
    pub access: Access,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            scheduler: format!("df://localhost:{}", cluster::DEFAULT_SCHEDULER_PORT),
            bind_host: "127.0.0.1".to_string(),
            external_host: "localhost".to_string(),
            port: 50051,
            grpc_port: 50052,
            concurrent_tasks: available_cores(),
            work_dir: None,
            heartbeat: Duration::from_secs(3),
            executor_id: None,
            s3: S3Config::default(),
            memory_limit: None,
            cache_memory: None,
            device: quiver_engine::device::DevicePolicy::default(),
            bare: false,
            auth_token: None,
            tls: None,
            tls_ca: None,
            access: Access::default(),
        }
    }
}

/// Ballista's executor configuration with Quiver's functions, codecs and object stores.
pub fn executor_config(opts: &ExecutorOptions) -> Result<ExecutorProcessConfig> {
    let scheduler = SchedulerAddress::parse(&opts.scheduler)?;
    if opts.concurrent_tasks == 0 {
        return Err(QuiverError::InvalidParam {
            param: "concurrent_tasks".to_string(),
            reason: "must be at least 1".to_string(),
        });
    }
    if opts.port == opts.grpc_port {
        return Err(QuiverError::InvalidParam {
            param: "grpc_port".to_string(),
            reason: format!("must differ from the Flight port ({})", opts.port),
        });
    }
    let work_dir = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|source| QuiverError::Io {
                path: d.into(),
                source,
            })?;
            d.clone()
        }
        None => temporary_work_dir()?.keep().to_string_lossy().into_owned(),
    };
    let mut config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.external_host.clone()),
        port: opts.port,
        grpc_port: opts.grpc_port,
        scheduler_host: scheduler.host.clone(),
        scheduler_port: scheduler.port,
        scheduler_connect_timeout_seconds: cluster::CONNECT_TIMEOUT.as_secs() as u16,
        vcores: opts.concurrent_tasks,
        work_dir: Some(work_dir.clone()),
        executor_heartbeat_interval_seconds: opts.heartbeat.as_secs().max(1),
        // Ballista sizes each task's pool from this budget (split across the task slots);
        // unset, it takes 70% of the host's memory.
        memory_pool_size: opts.memory_limit.map(|b| b as u64),
        ..ExecutorProcessConfig::default()
    };
    if let Some(id) = &opts.executor_id {
        config.executor_id = id.clone();
    }
    if opts.tls.is_some() != opts.tls_ca.is_some() {
        return Err(QuiverError::InvalidParam {
            param: "--tls-ca".to_string(),
            reason: "an executor with TLS needs its certificate and key (--tls-cert, --tls-key) \
                     and the cluster's CA (--tls-ca): it serves Flight and connects to the \
                     scheduler and the other executors"
                .to_string(),
        });
    }
    if opts.auth_token.is_some() || opts.tls.is_some() {
        // The executor's own gRPC server could not be guarded: tasks are pulled.
        config.task_scheduling_policy = TaskSchedulingPolicy::PullStaged;
        // Calls to the scheduler and Flight fetches from other executors carry the token and
        // use TLS (the tasks' fetches take both from their session configuration).
        config.override_create_grpc_client_endpoint =
            cluster::tls::endpoint_override(opts.auth_token.as_ref(), opts.tls_ca.as_ref());
        let (task_token, task_tls) = (opts.auth_token.clone(), opts.tls_ca.clone());
        config.override_config_producer = Some(Arc::new(move || {
            cluster::with_security(
                ballista_core::utils::default_config_producer(),
                task_token.as_ref(),
                task_tls.as_ref(),
            )
        }));
        config.override_arrow_flight_service = Some(crate::auth::flight_service(
            opts.auth_token.clone(),
            opts.tls.clone(),
            config.grpc_max_decoding_message_size as usize,
        ));
    }
    if opts.bare {
        return Ok(config);
    }
    crate::install()?;
    let functions = Arc::new(registry::global());
    let quiver = QuiverConfig {
        s3: opts.s3.clone(),
        auth_token: opts.auth_token.clone(),
        tls: opts.tls_ca.clone(),
        ..QuiverConfig::default()
    };
    let state = cluster::session_state(
        cluster::session_config(&quiver, &functions),
        cluster::runtime_env(&opts.s3)?,
        &functions,
    )?;
    let s3 = opts.s3.clone();
    // Ballista wraps what this produces with the task's memory pool (`memory_pool_size`).
    let runtime: RuntimeProducer = Arc::new(move |_: &SessionConfig| {
        Ok(Arc::new(
            RuntimeEnvBuilder::new()
                .with_temp_file_path(work_dir.clone())
                .with_object_store_registry(Arc::new(QuiverObjectStores::new(s3.clone())))
                .build()?,
        ))
    });
    config.override_function_registry = Some(Arc::new(BallistaFunctionRegistry::from(&state)));
    config.override_runtime_producer = Some(runtime);
    config.override_logical_codec = Some(Arc::new(QuiverLogicalCodec::new(Arc::clone(&functions))));
    config.override_physical_codec = Some(Arc::new(QuiverPhysicalCodec::new(functions)));
    Ok(config)
}

/// A fresh `quiver-executor-*` directory under the system's temporary directory, removed when
/// the handle is dropped (unless kept).
fn temporary_work_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("quiver-executor-")
        .tempdir()
        .map_err(|source| QuiverError::Io {
            path: std::env::temp_dir(),
            source,
        })
}

/// Runs an executor until the process ends. Fails at once when the scheduler is unreachable.
/// Without a `work_dir`, the executor's shuffle files go to a fresh temporary directory that
/// is removed when the executor stops (or, in process, when its task is dropped).
pub async fn run_executor(mut opts: ExecutorOptions) -> Result<()> {
    let scheduler = SchedulerAddress::parse(&opts.scheduler)?;
    scheduler.check_reachable(cluster::CONNECT_TIMEOUT).await?;
    let _work_dir = match opts.work_dir {
        Some(_) => None,
        None => {
            let dir = temporary_work_dir()?;
            opts.work_dir = Some(dir.path().to_string_lossy().into_owned());
            Some(dir)
        }
    };
    let config = executor_config(&opts)?;
    quiver_engine::fanout::set_worker_id(config.executor_id.clone());
    quiver_engine::fanout::set_task_slots(opts.concurrent_tasks);
    // Models and trial data this executor loads use its S3 settings too, and its policy.
    quiver_engine::config::set_process_s3(opts.s3.clone());
    if !opts.access.is_unrestricted() {
        access::set_process_access(opts.access.clone());
    }
    log::info!("remote sessions: {}", opts.access);
    if let Some(bytes) = opts.cache_memory {
        cluster::cache::set_budget(bytes);
    }
    log::info!(
        "keeps up to {} MiB of prepared partitions for iterative fits (--cache-memory)",
        cluster::cache::budget() >> 20
    );
    // `--device cuda` that this machine cannot honour stops the executor here, naming what is
    // missing; `auto` says once (in the log) why it runs on the CPU.
    let placement = quiver_engine::device::resolve(opts.device.choice)?;
    quiver_engine::device::set_policy(opts.device);
    log::info!(
        "batch work: {placement:?} (--device {})",
        opts.device.choice
    );
    let pulls = matches!(
        config.task_scheduling_policy,
        TaskSchedulingPolicy::PullStaged
    ) && config.override_arrow_flight_service.is_some();
    let config = Arc::new(config);
    let ran = if pulls {
        crate::pull::run(config).await
    } else {
        start_executor_process(config).await
    };
    ran.map_err(|e| QuiverError::Cluster(format!("executor: {e}")))
}
