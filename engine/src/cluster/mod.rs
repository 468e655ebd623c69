//! The cluster backend: Ballista sessions with every Quiver function and Quiver's codecs, the
//! object stores all processes share, and the checks that turn an unreachable or misconfigured
//! cluster into a clear error instead of a hang.

pub mod access;
pub mod auth;
pub mod cache;
mod codec;
pub mod tls;

pub use codec::{QuiverLogicalCodec, QuiverPhysicalCodec, framed_payload};

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::future::BoxFuture;
use object_store::ObjectStore;
use url::Url;

use crate::config::{QuiverConfig, S3Config};
use crate::error::{QuiverError, Result};
use crate::registry::FunctionRegistry;

/// The port a `df://host` URL without one means (Ballista's default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// How long to wait for a scheduler to accept a connection before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `df://host:port` scheduler address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerAddress {
    pub host: String,
    pub port: u16,
}

impl SchedulerAddress {
    /// Parses `df://host[:port]`; any other scheme is an error that says what to write.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: String| QuiverError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| {
            bad(format!(
                "{e}; a cluster URL looks like df://host:port (e.g. df://localhost:50050)"
            ))
        })?;
        if parsed.scheme() != "df" {
            return Err(bad(format!(
                "the scheme is '{}', a cluster URL looks like df://host:port",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("the URL names no host; write df://host:port".to_string()))?;
        Ok(SchedulerAddress {
            host: host.to_string(),
            port: parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT),
        })
    }

    pub fn url(&self) -> String {
        format!("df://{}:{}", self.host, self.port)
    }

    /// Resolves the address (the first one the host name gives).
    pub fn socket_addr(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| {
                QuiverError::Cluster(format!(
                    "cannot resolve scheduler host '{}': {e}",
                    self.host
                ))
            })?
            .next()
            .ok_or_else(|| {
                QuiverError::Cluster(format!("scheduler host '{}' has no address", self.host))
            })
    }

    /// Succeeds once a TCP connection to the scheduler opens within `timeout`.
    pub async fn check_reachable(&self, timeout: Duration) -> Result<()> {
        let addr = self.socket_addr()?;
        let unreachable = |why: String| {
            QuiverError::Cluster(format!(
                "the scheduler at {} is unreachable: {why} (is quiver-scheduler running? \
                 `quiver cluster up` starts a local cluster)",
                self.url()
            ))
        };
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {} s",
                timeout.as_secs_f64()
            ))),
        }
    }
}

/// Object stores for every process of a cluster: the local file system, and S3-compatible
/// buckets built on first use from the process's S3 settings (then the `AWS_*` variables),
/// each under the process's [`access::Access`] policy.
#[derive(Debug)]
pub struct QuiverObjectStores {
    inner: DefaultObjectStoreRegistry,
    s3: S3Config,
}

impl QuiverObjectStores {
    /// Local files' large reads are memory maps here ([`crate::local_files`]).
    pub fn new(s3: S3Config) -> Self {
        let inner = DefaultObjectStoreRegistry::new();
        if let Ok(file) = Url::parse("file://") {
            inner.register_store(&file, Arc::new(crate::local_files::MappedLocalFiles::new()));
        }
        QuiverObjectStores { inner, s3 }
    }
}

impl ObjectStoreRegistry for QuiverObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let store = match self.inner.get_store(url) {
            Ok(store) => store,
            Err(_) if url.scheme() == "s3" => {
                let store =
                    crate::io::build_s3(&self.s3, url).map_err(QuiverError::into_datafusion)?;
                self.inner.register_store(url, Arc::clone(&store));
                store
            }
            Err(e) => return Err(e),
        };
        // A scheduler's or executor's policy for remote sessions (none elsewhere).
        Ok(access::process_access().guard(store, url.scheme() == "file"))
    }
}

/// A runtime whose object stores are [`QuiverObjectStores`].
pub fn runtime_env(s3: &S3Config) -> Result<Arc<RuntimeEnv>> {
    runtime_env_limited(s3, None)
}

/// [`runtime_env`] whose queries may reserve at most `memory_limit` bytes
/// (`quiver.memory_limit`; spilling operators spill, the others fail naming the key).
pub fn runtime_env_limited(s3: &S3Config, memory_limit: Option<usize>) -> Result<Arc<RuntimeEnv>> {
    Ok(with_memory_limit(RuntimeEnvBuilder::new(), memory_limit)
        .with_object_store_registry(Arc::new(QuiverObjectStores::new(s3.clone())))
        .build_arc()?)
}

/// `b` with a fair pool of `limit` bytes (none: unlimited) for the operators of a process
/// (spilling operators get their share), reporting the largest consumers when it is
/// exhausted.
pub fn with_memory_limit(b: RuntimeEnvBuilder, limit: Option<usize>) -> RuntimeEnvBuilder {
    use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
    match limit {
        None => b,
        Some(bytes) => b.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(bytes),
            std::num::NonZeroUsize::new(3).expect("3 is not zero"),
        ))),
    }
}

/// Session settings every cluster process shares: Ballista's, Quiver's partitioning and batch
/// size, and Quiver's codecs over `functions`.
pub fn session_config(config: &QuiverConfig, functions: &Arc<FunctionRegistry>) -> SessionConfig {
    with_security(
        SessionConfig::new_with_ballista(),
        config.auth_token.as_ref(),
        config.tls.as_ref(),
    )
    // Ballista 55's adaptive planner can lose track of a stage when an executor dies in
    // the middle of a job (the job then waits forever); the static planner reruns the
    // lost tasks.
    .set_bool("ballista.planner.adaptive.enabled", false)
    .with_target_partitions(config.target_partitions)
    .with_batch_size(config.batch_size)
    .with_information_schema(true)
    .with_ballista_logical_extension_codec(Arc::new(QuiverLogicalCodec::new(Arc::clone(functions))))
    .with_ballista_physical_extension_codec(Arc::new(QuiverPhysicalCodec::new(Arc::clone(
        functions,
    ))))
}

/// `config` whose gRPC clients (to the scheduler, and Flight fetches from executors) carry
/// `token` and connect with `tls`.
pub fn with_security(
    config: SessionConfig,
    token: Option<&auth::AuthToken>,
    tls: Option<&tls::ClientTls>,
) -> SessionConfig {
    let config = if tls.is_some() {
        config.set_bool("ballista.client.use_tls", true)
    } else {
        config
    };
    match tls::endpoint_override(token, tls) {
        Some(f) => config.with_ballista_override_create_grpc_client_endpoint(f),
        None => config,
    }
}

/// A full DataFusion session state (every built-in function) plus Quiver's functions, over
/// `session_config` and `runtime`: what the scheduler plans with and executors look functions
/// up in.
pub fn session_state(
    session_config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    functions: &FunctionRegistry,
) -> Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_config(session_config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    add_functions(&mut state, functions)?;
    Ok(state)
}

/// Registers every function of `functions` in `state`.
pub fn add_functions(state: &mut SessionState, functions: &FunctionRegistry) -> Result<()> {
    use datafusion::execution::FunctionRegistry as _;
    for f in functions.scalar_functions() {
        state.register_udf(Arc::new(f.clone()))?;
    }
    for f in functions.aggregate_functions() {
        state.register_udaf(Arc::new(f.clone()))?;
    }
    for (name, f) in functions.table_functions() {
        state.register_udtf(name, Arc::clone(f));
    }
    Ok(())
}

/// A client context for the cluster at `address`: Ballista's planner sends every query to the
/// scheduler. Checks first that the scheduler answers.
pub async fn remote_context(
    address: &SchedulerAddress,
    config: &QuiverConfig,
    functions: &Arc<FunctionRegistry>,
) -> Result<SessionContext> {
    address.check_reachable(CONNECT_TIMEOUT).await?;
    let mut config = config.clone();
    if config.auth_token.is_none() {
        config.auth_token = auth::AuthToken::from_file_or_env(None)?;
    }
    let config = &config;
    let state = session_state(
        session_config(config, functions),
        runtime_env_limited(&config.s3, config.memory_limit)?,
        functions,
    )?;
    let ctx = SessionContext::remote_with_state(&address.url(), state)
        .await?
        .enable_url_table();
    // Ballista replaces the client's function list when it upgrades the state: add ours back.
    functions.register_into(&ctx);
    Ok(ctx)
}

/// Starts a scheduler and executors inside this process and returns the scheduler's address.
pub type StandaloneLauncher =
    Arc<dyn Fn(QuiverConfig) -> BoxFuture<'static, Result<SchedulerAddress>> + Send + Sync>;

static LAUNCHER: OnceLock<StandaloneLauncher> = OnceLock::new();

/// Installs what [`crate::QuiverSession::standalone`] starts (the executor crate does this:
/// the engine does not link Ballista's scheduler and executor). The first one installed stays.
pub fn set_standalone_launcher(launcher: StandaloneLauncher) {
    let _ = LAUNCHER.set(launcher);
}

pub(crate) fn standalone_launcher() -> Result<StandaloneLauncher> {
    LAUNCHER.get().cloned().ok_or_else(|| {
        QuiverError::Cluster(
            "an in-process cluster needs the quiver-executor crate: call \
             quiver_executor::install() before QuiverSession::standalone()"
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scheduler_urls() {
        let a = SchedulerAddress::parse("df://localhost:50123").unwrap();
        assert_eq!(
            a,
            SchedulerAddress {
                host: "localhost".into(),
                port: 50123
            }
        );
        assert_eq!(SchedulerAddress::parse("df://h").unwrap().port, 50050);
        let e = SchedulerAddress::parse("http://localhost:50050").unwrap_err();
        assert!(e.to_string().contains("the scheme is 'http'"), "{e}");
        let e = SchedulerAddress::parse("localhost:50050").unwrap_err();
        assert!(e.to_string().contains("df://host:port"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_scheduler_is_a_clear_error() {
        // A port nobody listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = SchedulerAddress::parse(&format!("df://127.0.0.1:{port}")).unwrap();
        let e = a.check_reachable(Duration::from_secs(2)).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("unreachable") && msg.contains(&port.to_string()),
            "{msg}"
        );
    }
}
