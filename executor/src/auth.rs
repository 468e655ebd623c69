//! The servers of a cluster: the scheduler's gRPC service (every scheduler, with or without a
//! token, so that its sockets get `TCP_NODELAY`) and the executors' Arrow Flight service. With
//! an auth token both refuse every call that does not carry it (see
//! [`quiver_engine::cluster::auth`]). Ballista 55 has no hook to guard the executors' own gRPC
//! service (the scheduler pushes tasks through it), so a cluster with a token schedules by
//! pull: executors ask the scheduler for work and run no gRPC server at all.
//!
//! An idle executor's poll that finds no work is held here (a long poll, up to [`POLL_HOLD`])
//! until the scheduler has new tasks ([`WorkBell`], rung by Ballista's `on_work_available`),
//! and then asked again: without it an executor sleeps 50 ms between empty polls (Ballista's
//! idle interval), which every stage of a job waited out on a guarded cluster.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::scheduler_grpc_server::{SchedulerGrpc, SchedulerGrpcServer};
use ballista_core::serde::protobuf::{
    CancelJobParams, CancelJobResult, CleanJobDataParams, CleanJobDataResult,
    CreateUpdateSessionParams, CreateUpdateSessionResult, ExecuteQueryParams, ExecuteQueryResult,
    ExecutorStoppedParams, ExecutorStoppedResult, GetJobMetricsParams, GetJobMetricsResult,
    GetJobStatusParams, GetJobStatusResult, HeartBeatParams, HeartBeatResult, PollWorkParams,
    PollWorkResult, RegisterExecutorParams, RegisterExecutorResult, RemoveSessionParams,
    RemoveSessionResult, UpdateTaskStatusParams, UpdateTaskStatusResult,
};
use ballista_core::serde::scheduler::ExecutorSpecification;
use ballista_core::utils::GrpcServerConfig;
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::shutdown::Shutdown;
use ballista_scheduler::config::{OnWorkAvailableFn, SchedulerConfig};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use quiver_engine::cluster::auth::AuthToken;
use quiver_engine::cluster::tls::ServerTls;
use quiver_engine::{QuiverError, Result};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The longest an idle executor's empty poll is held for new work. Short: an executor's
/// poll is also its heartbeat, and a task that waited for its home executor (the locality
/// wait) becomes free for others without a bell.
pub const POLL_HOLD: Duration = Duration::from_millis(250);

/// Rung when the scheduler has tasks for executors (a job submitted, a stage made
/// runnable): wakes every held poll.
#[derive(Clone)]
pub struct WorkBell(Arc<watch::Sender<u64>>);

impl WorkBell {
    pub fn new() -> Self {
        WorkBell(Arc::new(watch::Sender::new(0)))
    }

    pub fn ring(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What the scheduler calls when it has new work (`SchedulerConfig::on_work_available`).
    pub fn callback(&self) -> OnWorkAvailableFn {
        let bell = self.clone();
        Arc::new(move |_| bell.ring())
    }

    /// A listener that hears every ring after this call.
    fn listen(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl Default for WorkBell {
    fn default() -> Self {
        WorkBell::new()
    }
}

/// The check every guarded server runs before a call: the token in the user agent (every
/// call passes when the cluster has no token).
pub fn check(
    token: Option<AuthToken>,
) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(token) = &token else {
            return Ok(request);
        };
        let agent = request.metadata().get("user-agent").map(|v| v.as_bytes());
        if token.admits(agent) {
            Ok(request)
        } else {
            log::warn!(
                "refused a call{}: no valid auth token",
                request
                    .remote_addr()
                    .map_or(String::new(), |a| format!(" from {a}"))
            );
            Err(Status::unauthenticated(AuthToken::refusal(agent)))
        }
    }
}

/// Ballista's scheduler service behind the guard: every call goes to `inner`, except that
/// queries must come as logical plans (physical and Substrait plans would bypass the checks
/// the scheduler's planner applies), and an executor's first poll is logged, as a push
/// scheduler logs a registration.
struct GuardedScheduler {
    inner: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    seen: Mutex<HashSet<String>>,
    bell: WorkBell,
    /// The longest an idle executor's empty poll is held ([`POLL_HOLD`]).
    hold: Duration,
}

type Answer<T> = std::result::Result<Response<T>, Status>;

impl GuardedScheduler {
    fn check_query(params: &ExecuteQueryParams) -> std::result::Result<(), Status> {
        match &params.query {
            Some(Query::LogicalPlan(_)) | None => Ok(()),
            Some(Query::PhysicalPlan(_)) => Err(Status::permission_denied(
                "this Quiver cluster accepts queries as logical plans only (a physical plan \
                 would bypass the scheduler's checks)",
            )),
            Some(Query::SubstraitPlan(_)) => Err(Status::permission_denied(
                "this Quiver cluster accepts queries as logical plans only (not Substrait)",
            )),
        }
    }
}

#[tonic::async_trait]
impl SchedulerGrpc for GuardedScheduler {
    type ExecuteQueryPushStream = <SchedulerServer<LogicalPlanNode, PhysicalPlanNode> as SchedulerGrpc>::ExecuteQueryPushStream;

    async fn poll_work(&self, request: Request<PollWorkParams>) -> Answer<PollWorkResult> {
        if let Some(id) = request.get_ref().metadata.as_ref().map(|m| m.id.clone())
            && self
                .seen
                .lock()
                .map(|mut s| s.insert(id.clone()))
                .unwrap_or(false)
        {
            log::info!("executor {id:?} is polling for tasks (registered)");
        }
        // Held only when the executor runs nothing: a running task's status reaches the
        // scheduler with the executor's next poll, which a held poll would delay. A re-poll
        // is a request without the connection's address, which the scheduler needs when the
        // executor did not say its host.
        let params = request.get_ref();
        let again = params.metadata.as_ref().and_then(|m| {
            let spec: ExecutorSpecification = m.specification.clone()?.into();
            (m.host.is_some() && params.num_free_vcores >= spec.vcores).then(|| PollWorkParams {
                metadata: Some(m.clone()),
                num_free_vcores: params.num_free_vcores,
                task_status: Vec::new(),
            })
        });
        let mut bell = self.bell.listen();
        let answer = self.inner.poll_work(request).await?;
        let Some(again) = again else {
            return Ok(answer);
        };
        let found = answer.get_ref();
        if !found.tasks.is_empty() || !found.jobs_to_clean.is_empty() {
            return Ok(answer);
        }
        match tokio::time::timeout(self.hold, bell.changed()).await {
            Ok(Ok(())) => self.inner.poll_work(Request::new(again)).await,
            _ => Ok(answer),
        }
    }

    async fn register_executor(
        &self,
        request: Request<RegisterExecutorParams>,
    ) -> Answer<RegisterExecutorResult> {
        self.inner.register_executor(request).await
    }

    async fn heart_beat_from_executor(
        &self,
        request: Request<HeartBeatParams>,
    ) -> Answer<HeartBeatResult> {
        self.inner.heart_beat_from_executor(request).await
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusParams>,
    ) -> Answer<UpdateTaskStatusResult> {
        self.inner.update_task_status(request).await
    }

    async fn create_update_session(
        &self,
        request: Request<CreateUpdateSessionParams>,
    ) -> Answer<CreateUpdateSessionResult> {
        self.inner.create_update_session(request).await
    }

    async fn remove_session(
        &self,
        request: Request<RemoveSessionParams>,
    ) -> Answer<RemoveSessionResult> {
        self.inner.remove_session(request).await
    }

    async fn execute_query_push(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Answer<Self::ExecuteQueryPushStream> {
        Self::check_query(request.get_ref())?;
        self.inner.execute_query_push(request).await
    }

    async fn execute_query(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Answer<ExecuteQueryResult> {
        Self::check_query(request.get_ref())?;
        self.inner.execute_query(request).await
    }

    async fn get_job_status(
        &self,
        request: Request<GetJobStatusParams>,
    ) -> Answer<GetJobStatusResult> {
        self.inner.get_job_status(request).await
    }

    async fn get_job_metrics(
        &self,
        request: Request<GetJobMetricsParams>,
    ) -> Answer<GetJobMetricsResult> {
        self.inner.get_job_metrics(request).await
    }

    async fn executor_stopped(
        &self,
        request: Request<ExecutorStoppedParams>,
    ) -> Answer<ExecutorStoppedResult> {
        self.inner.executor_stopped(request).await
    }

    async fn cancel_job(&self, request: Request<CancelJobParams>) -> Answer<CancelJobResult> {
        SchedulerGrpc::cancel_job(&self.inner, request).await
    }

    async fn clean_job_data(
        &self,
        request: Request<CleanJobDataParams>,
    ) -> Answer<CleanJobDataResult> {
        self.inner.clean_job_data(request).await
    }
}

/// Serves the scheduler's gRPC service on `addr`: every call checked against `token` (when
/// set), TLS with `tls` (when set), `TCP_NODELAY` on every connection (small responses go out
/// at once instead of waiting for the peer's delayed ACK). Ballista's REST and health routes
/// are not served.
pub async fn serve_scheduler(
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    config: &SchedulerConfig,
    addr: SocketAddr,
    token: Option<AuthToken>,
    tls: Option<ServerTls>,
    bell: WorkBell,
) -> Result<()> {
    let guarded = GuardedScheduler {
        inner: scheduler,
        seen: Mutex::new(HashSet::new()),
        bell,
        hold: POLL_HOLD,
    };
    let service = SchedulerGrpcServer::new(guarded)
        .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
        .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize);
    let failed =
        |e: tonic::transport::Error| QuiverError::Cluster(format!("scheduler on {addr}: {e}"));
    let mut server = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = &tls {
        server = server.tls_config(tls.config()).map_err(failed)?;
    }
    server
        .add_service(tonic::service::interceptor::InterceptedService::new(
            service,
            check(token),
        ))
        .serve(addr)
        .await
        .map_err(failed)
}

/// What serves an executor's Arrow Flight service (shuffle data and results): every call
/// checked against `token` (when set), TLS with `tls` (when set).
pub fn flight_service(
    token: Option<AuthToken>,
    tls: Option<ServerTls>,
    max_message_size: usize,
) -> Arc<ballista_executor::ArrowFlightServerProvider> {
    Arc::new(
        move |work_dir: String,
              addr: SocketAddr,
              mut shutdown: Shutdown,
              grpc: GrpcServerConfig| {
            let check = check(token.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                    .max_decoding_message_size(max_message_size)
                    .max_encoding_message_size(max_message_size);
                let mut server = ballista_core::utils::create_grpc_server(&grpc);
                if let Some(tls) = &tls {
                    server = server
                        .tls_config(tls.config())
                        .map_err(BallistaError::TonicError)?;
                }
                server
                    .add_service(tonic::service::interceptor::InterceptedService::new(
                        service, check,
                    ))
                    .serve_with_shutdown(addr, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::{CacheLocality, DEFAULT_LOCALITY_WAIT};
    use crate::scheduler::{SchedulerOptions, scheduler_config};
    use ballista_core::serde::protobuf::{ExecutorRegistration, PollWorkParams};
    use ballista_core::serde::scheduler::ExecutorOperatingSystemSpecification;
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::scheduler_process::create_scheduler;

    /// A guarded (pull) scheduler in this process whose polls are held up to `hold`.
    async fn scheduler(hold: Duration) -> GuardedScheduler {
        let opts = SchedulerOptions {
            auth_token: Some(AuthToken::generate()),
            ..SchedulerOptions::default()
        };
        let bell = WorkBell::new();
        let locality = Arc::new(CacheLocality::new(DEFAULT_LOCALITY_WAIT));
        let config = scheduler_config(&opts, Arc::clone(&locality), &bell).unwrap();
        let cluster = BallistaCluster::new_from_config(&config).await.unwrap();
        locality.attach(cluster.cluster_state());
        let inner = create_scheduler(cluster, Arc::new(config)).await.unwrap();
        GuardedScheduler {
            inner,
            seen: Mutex::new(HashSet::new()),
            bell,
            hold,
        }
    }

    /// A poll of an executor with `slots` task slots, `free` of them free.
    fn poll(free: u32, slots: u32) -> Request<PollWorkParams> {
        Request::new(PollWorkParams {
            metadata: Some(ExecutorRegistration {
                id: "exec-test".to_string(),
                host: Some("localhost".to_string()),
                port: 50051,
                grpc_port: 50052,
                specification: Some(ExecutorSpecification::default().with_vcores(slots).into()),
                os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
                ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
            }),
            num_free_vcores: free,
            task_status: Vec::new(),
        })
    }

    /// Far longer than any test waits: a poll that returns did not wait out its hold.
    const FOREVER: Duration = Duration::from_secs(3600);
    const PATIENCE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn an_idle_executors_empty_poll_is_held_until_the_bell_rings() {
        let s = scheduler(FOREVER).await;
        let bell = s.bell.clone();
        let held = s.poll_work(poll(2, 2));
        tokio::pin!(held);
        // Nothing to run: the poll does not come back by itself.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut held)
                .await
                .is_err()
        );
        bell.ring();
        let answer = tokio::time::timeout(PATIENCE, held)
            .await
            .expect("the bell ends the hold")
            .unwrap()
            .into_inner();
        assert!(answer.tasks.is_empty());
    }

    #[tokio::test]
    async fn a_poll_with_running_tasks_is_answered_at_once() {
        // One of two slots busy: the next poll carries that task's status, so it is not held.
        let s = scheduler(FOREVER).await;
        let answer = tokio::time::timeout(PATIENCE, s.poll_work(poll(1, 2)))
            .await
            .expect("not held")
            .unwrap()
            .into_inner();
        assert!(answer.tasks.is_empty());
    }

    #[test]
    fn a_listener_hears_the_rings_after_it_listens() {
        let bell = WorkBell::new();
        bell.ring();
        let ear = bell.listen();
        assert!(!ear.has_changed().unwrap());
        bell.callback()(
            ballista_scheduler::config::WorkAvailableReason::JobSubmitted { job_id: "j".into() },
        );
        assert!(ear.has_changed().unwrap());
    }
}
