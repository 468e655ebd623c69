//! Command-line flags of the scheduler and executor processes (the thin binaries and
//! `quiver cluster up` share them), converted to the library options with `From`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quiver_engine::QuiverError;
use quiver_engine::cluster::access::Access;
use quiver_engine::cluster::auth::AuthToken;
use quiver_engine::cluster::tls::{ClientTls, ServerTls};
use quiver_engine::config::{S3Config, available_cores};

use crate::{ExecutorOptions, SchedulerOptions};

/// Quiver's cluster scheduler (Apache DataFusion Ballista with Quiver's functions).
///
/// S3 data and model stores use the --s3-* flags, then the usual AWS_* variables.
#[derive(Debug, Clone, Parser)]
#[command(name = "quiver-scheduler", version)]
pub struct SchedulerArgs {
    /// Address the gRPC service binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// gRPC port clients and executors connect to.
    #[arg(long, default_value_t = 50050)]
    pub port: u16,
    /// Host name executors and clients use to reach this scheduler.
    #[arg(long, default_value = "localhost")]
    pub external_host: String,
    /// Seconds without a heartbeat after which an executor is lost and its tasks rerun.
    #[arg(long, default_value_t = 15)]
    pub executor_timeout_secs: u64,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 4)]
    pub task_max_failures: usize,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long)]
    pub s3_region: Option<String>,
    /// A local directory remote sessions may read (repeatable). Without one no local path
    /// is readable (object stores such as S3 are).
    #[arg(long = "data-root", value_name = "DIR")]
    pub data_roots: Vec<PathBuf>,
    /// Let remote sessions read any local path this process can.
    #[arg(long, conflicts_with = "data_roots")]
    pub allow_any_local_path: bool,
    /// Let remote sessions write (COPY … TO, INSERT INTO an external table) through this
    /// process's object stores and local file system.
    #[arg(long)]
    pub allow_writes: bool,
    /// This process's TLS certificate (PEM; with --tls-key): its service speaks TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 600).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A file holding the cluster's auth token (mode 600); else $QUIVER_AUTH_TOKEN. With a
    /// token every call must carry it, and executors pull their tasks.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl TryFrom<SchedulerArgs> for SchedulerOptions {
    type Error = QuiverError;

    fn try_from(a: SchedulerArgs) -> Result<Self, QuiverError> {
        Ok(SchedulerOptions {
            auth_token: AuthToken::from_file_or_env(a.auth_token_file.as_deref())?,
            tls: server_tls(a.tls_cert.as_deref(), a.tls_key.as_deref())?,
            access: access(&a.data_roots, a.allow_any_local_path, a.allow_writes)?,
            bind_host: a.bind_host,
            port: a.port,
            external_host: a.external_host,
            executor_timeout: Duration::from_secs(a.executor_timeout_secs),
            task_max_failures: a.task_max_failures,
            s3: S3Config {
                endpoint: a.s3_endpoint,
                region: a.s3_region,
                ..S3Config::default()
            },
        })
    }
}

/// Quiver's cluster executor (Apache DataFusion Ballista with Quiver's functions).
///
/// S3 data and model stores use the --s3-* flags, then the usual AWS_* variables.
#[derive(Debug, Clone, Parser)]
#[command(name = "quiver-executor", version)]
pub struct ExecutorArgs {
    /// The scheduler to register with.
    #[arg(long, default_value = "df://localhost:50050")]
    pub scheduler: String,
    /// Address the services bind to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Host name the scheduler and other executors use to reach this one.
    #[arg(long, default_value = "localhost")]
    pub external_host: String,
    /// Arrow Flight port (shuffle data and query results).
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    pub grpc_port: u16,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    pub concurrent_tasks: Option<usize>,
    /// Directory for shuffle files (default: a fresh temporary directory, removed when the
    /// executor stops).
    #[arg(long)]
    pub work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 3)]
    pub heartbeat_secs: u64,
    /// Executor id (default: random).
    #[arg(long)]
    pub executor_id: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Memory this executor's tasks may reserve together, e.g. 8GB, split across its task
    /// slots (default: 70% of the host's memory, or of its container's limit); sorts spill
    /// beyond it, operators that cannot fail.
    #[arg(long, value_parser = memory_size)]
    pub memory_limit: Option<usize>,
    /// Memory for the prepared partitions iterative fits keep between their passes (Spark's
    /// persisted data), e.g. 4GB; the least recently used are dropped beyond it; 0 keeps
    /// none (default: a quarter of the host's memory).
    #[arg(long, value_parser = cache_size)]
    pub cache_memory: Option<usize>,
    /// Where batch scoring runs: auto (a CUDA device when this machine has a usable one),
    /// cpu, or cuda / cuda:N (the executor refuses to start when it cannot be used).
    #[arg(long, default_value = "auto", value_parser = quiver_engine::device::DeviceChoice::parse)]
    pub device: quiver_engine::device::DeviceChoice,
    /// Under --device auto, the rows a batch needs before it goes to the device.
    #[arg(long, default_value_t = quiver_engine::device::DEFAULT_MIN_ROWS)]
    pub device_min_rows: usize,
    /// What batches travel to the device in: f64, or f32 (opt-in, about 7 digits).
    #[arg(long, default_value = "f64", value_parser = quiver_engine::device::Precision::parse)]
    pub device_precision: quiver_engine::device::Precision,
    /// Start without Quiver's functions and codecs (a plain Ballista executor), to see what a
    /// version mismatch looks like. Never useful in production.
    #[arg(long, hide = true)]
    pub bare: bool,
    /// A local directory remote sessions may read (repeatable). Without one no local path
    /// is readable (object stores such as S3 are).
    #[arg(long = "data-root", value_name = "DIR")]
    pub data_roots: Vec<PathBuf>,
    /// Let remote sessions read any local path this process can.
    #[arg(long, conflicts_with = "data_roots")]
    pub allow_any_local_path: bool,
    /// Let remote sessions write (COPY … TO, INSERT INTO an external table) through this
    /// process's object stores and local file system.
    #[arg(long)]
    pub allow_writes: bool,
    /// This process's TLS certificate (PEM; with --tls-key): its service speaks TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 600).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): this executor connects with TLS and verifies the
    /// scheduler and other executors against it.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A file holding the cluster's auth token (mode 600); else $QUIVER_AUTH_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl TryFrom<ExecutorArgs> for ExecutorOptions {
    type Error = QuiverError;

    fn try_from(a: ExecutorArgs) -> Result<Self, QuiverError> {
        Ok(ExecutorOptions {
            auth_token: AuthToken::from_file_or_env(a.auth_token_file.as_deref())?,
            tls: server_tls(a.tls_cert.as_deref(), a.tls_key.as_deref())?,
            tls_ca: a
                .tls_ca
                .as_deref()
                .map(ClientTls::from_ca_file)
                .transpose()?,
            access: access(&a.data_roots, a.allow_any_local_path, a.allow_writes)?,
            scheduler: a.scheduler,
            bind_host: a.bind_host,
            external_host: a.external_host,
            port: a.port,
            grpc_port: a.grpc_port,
            concurrent_tasks: a.concurrent_tasks.unwrap_or_else(available_cores),
            work_dir: a.work_dir,
            heartbeat: Duration::from_secs(a.heartbeat_secs),
            executor_id: a.executor_id,
            s3: S3Config {
                endpoint: a.s3_endpoint,
                region: a.s3_region,
                ..S3Config::default()
            },
            memory_limit: a.memory_limit,
            cache_memory: a.cache_memory,
            device: quiver_engine::device::DevicePolicy {
                choice: a.device,
                min_rows: a.device_min_rows.max(1),
                precision: a.device_precision,
            },
            bare: a.bare,
        })
    }
}

/// The identity `--tls-cert` and `--tls-key` name (clap requires both or neither).
fn server_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<ServerTls>, QuiverError> {
    match (cert, key) {
        (Some(c), Some(k)) => ServerTls::from_files(c, k).map(Some),
        _ => Ok(None),
    }
}

/// The policy the process's flags describe.
fn access(roots: &[PathBuf], any_local_path: bool, writes: bool) -> Result<Access, QuiverError> {
    if any_local_path {
        Ok(Access::any_local_path(writes))
    } else {
        Access::restricted(roots, writes)
    }
}

/// `--memory-limit`'s value: a size such as 8GB (`unlimited` is the default).
fn memory_size(text: &str) -> Result<usize, String> {
    quiver_engine::config::parse_bytes(text)?
        .ok_or_else(|| "give a size such as 8GB, or leave the option out".to_string())
}

/// `--cache-memory`'s value: a size such as 4GB, or 0 for none.
fn cache_size(text: &str) -> Result<usize, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    quiver_engine::config::parse_bytes(text)?
        .ok_or_else(|| "give a size such as 4GB, or 0 to keep nothing".to_string())
}

/// A binary's `main`: the allocator's settings first, before any thread starts
/// ([`quiver_engine::allocator::tune`]), then `body` on a multi-threaded runtime. A runtime
/// that cannot start ends the process with an error.
pub fn run_main<T>(body: impl std::future::Future<Output = T>) -> T {
    quiver_engine::allocator::tune();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(body),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise, stamped to the millisecond: a
/// job's tasks come and go within milliseconds, and the scheduler's and executors' logs side by
/// side are how a job's time is read.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
}
