//! The Quiver scheduler: Ballista's scheduler planning with every Quiver function and codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use quiver_engine::cluster::access::{self, Access};
use quiver_engine::cluster::auth::AuthToken;
use quiver_engine::cluster::tls::ServerTls;
use quiver_engine::cluster::{self, QuiverLogicalCodec, QuiverPhysicalCodec, cache};
use quiver_engine::config::S3Config;
use quiver_engine::{QuiverError, Result, registry};

use crate::auth::WorkBell;
use crate::locality::{CacheLocality, DEFAULT_LOCALITY_WAIT};

/// Settings of a scheduler process (`quiver-scheduler --help` documents each flag).
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address the gRPC service binds to. Defaults to `127.0.0.1`.
    pub bind_host: String,
    /// Defaults to `50050`.
    pub port: u16,
    /// Host name executors and clients use to reach this scheduler. Defaults to `localhost`.
    pub external_host: String,
    /// An executor silent for this long is declared lost and its tasks rerun elsewhere.
    /// Defaults to 15 s (must exceed the executors' heartbeat interval).
    pub executor_timeout: Duration,
    /// Attempts per task before a job fails. Defaults to `4`.
    pub task_max_failures: usize,
    /// S3 settings for planning over `s3://` data (unset fields: the `AWS_*` variables).
    pub s3: S3Config,
    /// The cluster's auth token: every call must carry it, and executors pull their tasks
    /// (see [`crate::auth`]). `None`: no check (a trusted network only).
    pub auth_token: Option<AuthToken>,
    /// This scheduler's certificate and key: its gRPC service speaks TLS (executors then
    /// pull their tasks, as with a token).
    pub tls: Option<ServerTls>,
    /// What remote sessions may read and write through this process's object stores.
    /// Unrestricted by default (an in-process cluster); the command-line processes default to
    /// no local paths and no writes (see [`quiver_engine::cluster::access`]).
    pub access: Access,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            bind_host: "127.0.0.1".to_string(),
            port: cluster::DEFAULT_SCHEDULER_PORT,
            external_host: "localhost".to_string(),
            executor_timeout: Duration::from_secs(15),
            task_max_failures: 4,
            s3: S3Config::default(),
            auth_token: None,
            tls: None,
            access: Access::default(),
        }
    }
}

impl SchedulerOptions {
    fn check(&self) -> Result<SocketAddr> {
        if self.executor_timeout < Duration::from_secs(2) {
            return Err(QuiverError::InvalidParam {
                param: "executor_timeout".to_string(),
                reason: "must be at least 2 s (and longer than the executors' heartbeat)"
                    .to_string(),
            });
        }
        if self.task_max_failures == 0 {
            return Err(QuiverError::InvalidParam {
                param: "task_max_failures".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        format!("{}:{}", self.bind_host, self.port)
            .parse()
            .map_err(|e| QuiverError::InvalidParam {
                param: "bind_host".to_string(),
                reason: format!(
                    "'{}:{}' is not a socket address: {e}",
                    self.bind_host, self.port
                ),
            })
    }
}

/// Ballista's scheduler configuration with Quiver's session, codecs, liveness settings and
/// task placement (`locality`: attach it to the cluster built from this configuration);
/// `bell` is rung whenever the scheduler has new tasks (it wakes executors' held polls).
pub fn scheduler_config(
    opts: &SchedulerOptions,
    locality: Arc<CacheLocality>,
    bell: &WorkBell,
) -> Result<SchedulerConfig> {
    crate::install()?;
    let functions = Arc::new(registry::global());
    let builder_functions = Arc::clone(&functions);
    let s3 = opts.s3.clone();
    let writes = opts.access.writes();
    let session_builder = Arc::new(move |config: SessionConfig| {
        let state = ballista_core::utils::default_session_builder(config)?;
        let mut state = SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(cluster::runtime_env(&s3).map_err(QuiverError::into_datafusion)?)
            // Plans Quiver's cache nodes (prepared partitions kept on executors).
            .with_query_planner(Arc::new(cache::QuiverQueryPlanner))
            // A statistic's pass is one stage: its partial states go straight to the client.
            .with_physical_optimizer_rule(Arc::new(quiver_engine::aggregate::PartialsToClient))
            .build();
        cluster::add_functions(&mut state, &builder_functions)
            .map_err(QuiverError::into_datafusion)?;
        if !writes {
            state.add_analyzer_rule(Arc::new(access::RefuseWrites));
        }
        Ok(state)
    });
    let timeout = opts.executor_timeout.as_secs().max(2);
    Ok(SchedulerConfig {
        bind_host: opts.bind_host.clone(),
        bind_port: opts.port,
        external_host: opts.external_host.clone(),
        // Executors of a cluster with a token run no gRPC server (it cannot be guarded): they
        // pull their tasks.
        scheduling_policy: if opts.auth_token.is_some() || opts.tls.is_some() {
            TaskSchedulingPolicy::PullStaged
        } else {
            TaskSchedulingPolicy::PushStaged
        },
        task_distribution: TaskDistributionPolicy::Custom(locality),
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: timeout,
        task_max_failures: opts.task_max_failures,
        override_session_builder: Some(session_builder),
        override_logical_codec: Some(Arc::new(QuiverLogicalCodec::new(Arc::clone(&functions)))),
        override_physical_codec: Some(Arc::new(QuiverPhysicalCodec::new(functions))),
        on_work_available: Some(bell.callback()),
        ..SchedulerConfig::default()
    })
}

/// Runs a scheduler until the process ends (or the returned future is dropped).
pub async fn run_scheduler(opts: SchedulerOptions) -> Result<()> {
    let addr = opts.check()?;
    if !opts.access.is_unrestricted() {
        access::set_process_access(opts.access.clone());
    }
    log::info!(
        "remote sessions: {}; {}",
        opts.access,
        match (&opts.auth_token, &opts.tls) {
            (Some(_), Some(_)) => "TLS; every call must carry the cluster's auth token",
            (Some(_), None) => "every call must carry the cluster's auth token (no TLS)",
            (None, Some(_)) => "TLS, no auth token: anyone who reaches this port can use it",
            (None, None) => "no auth token: anyone who reaches this port can use the cluster",
        }
    );
    let locality = Arc::new(CacheLocality::new(DEFAULT_LOCALITY_WAIT));
    let bell = WorkBell::new();
    let config = scheduler_config(&opts, Arc::clone(&locality), &bell)?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| QuiverError::Cluster(format!("cannot set up the scheduler: {e}")))?;
    locality.attach(cluster.cluster_state());
    // Always Quiver's own server, also without a token or TLS: Ballista 55's `start_server`
    // serves through axum on a plain listener, whose sockets keep Nagle's algorithm on. The
    // job status the scheduler streams to a client then waits for the client's delayed ACK
    // of the response headers (~40 ms on Linux): that was most of the ~45 ms "per-job floor"
    // of a push cluster.
    config
        .validate()
        .map_err(|e| QuiverError::Cluster(format!("scheduler configuration: {e}")))?;
    let config = Arc::new(config);
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::clone(&config))
            .await
            .map_err(|e| QuiverError::Cluster(format!("cannot set up the scheduler: {e}")))?;
    crate::auth::serve_scheduler(
        scheduler,
        &config,
        addr,
        opts.auth_token.clone(),
        opts.tls.clone(),
        bell,
    )
    .await
}
