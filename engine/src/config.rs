//! Quiver's configuration: typed, namespaced `quiver.*` keys with documented defaults.

use std::fmt;

use crate::error::{QuiverError, Result};

/// One documented configuration key.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    pub key: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every key Quiver understands, with its default and meaning (the README's table is made
/// from this list).
pub const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "quiver.target_partitions",
        default: "number of cores",
        doc: "Partitions DataFusion plans for (parallelism of the embedded runner).",
    },
    ConfigKey {
        key: "quiver.compute_threads",
        default: "number of cores",
        doc: "Threads of the compute pool the local runner and the fan-out use.",
    },
    ConfigKey {
        key: "quiver.batch_size",
        default: "8192",
        doc: "Rows per Arrow record batch when reading data and when caching it locally.",
    },
    ConfigKey {
        key: "quiver.runner",
        default: "embedded",
        doc: "Where fits run their statistics: embedded (DataFusion queries) or local (cached batches on the compute pool).",
    },
    ConfigKey {
        key: "quiver.device",
        default: "auto",
        doc: "Where batch work may run: auto (a CUDA device when this machine has a usable one, else the CPU, saying why once in the log), cpu, or cuda / cuda:N (an error naming what is missing when the device cannot be used).",
    },
    ConfigKey {
        key: "quiver.device.min_rows",
        default: "131072",
        doc: "Under quiver.device = auto, the rows a batch needs before it goes to the device (smaller batches and single rows stay on the CPU, where latency is lower). An explicit cuda sends every batch. Raise quiver.batch_size to at least this for batch scoring on a device.",
    },
    ConfigKey {
        key: "quiver.device.precision",
        default: "f64",
        doc: "What batches travel to the device in: f64 (the CPU's results up to the order of sums) or f32 (opt-in: half the transfer, about 7 significant digits).",
    },
    ConfigKey {
        key: "quiver.model_store",
        default: "./quiver-models/",
        doc: "URL or path of the model store (file://, plain path, memory://, s3://).",
    },
    ConfigKey {
        key: "quiver.cluster.job_timeout_secs",
        default: "300",
        doc: "On a cluster: a statistic's job that has not finished after this long is abandoned and run once more (a lost executor can leave a Ballista job waiting forever); a second timeout is an error.",
    },
    ConfigKey {
        key: "quiver.cluster.cache",
        default: "true",
        doc: "On a cluster: iterative fits and CREATE MODEL keep their prepared partitions in the executors' memory (bounded by `quiver-executor --cache-memory`) and the scheduler sends later passes to the executor holding each partition; false reads the data again on every pass.",
    },
    ConfigKey {
        key: "quiver.cluster.auth_token_file",
        default: "$QUIVER_AUTH_TOKEN",
        doc: "A file holding the cluster's auth token (readable by its owner only): every call to the scheduler and executors carries it. `quiver cluster up` writes one into its directory.",
    },
    ConfigKey {
        key: "quiver.cluster.tls_ca_file",
        default: "(plain connections)",
        doc: "The cluster's CA certificate (PEM): connections to the scheduler and executors use TLS and verify their certificates. `quiver cluster up --tls` writes one into its directory.",
    },
    ConfigKey {
        key: "quiver.memory_limit",
        default: "unlimited",
        doc: "Memory the DataFusion operators of a query may reserve (e.g. 4GB, 512MB, or unlimited); sorts and joins spill beyond it, other operators fail with an error naming this key.",
    },
    ConfigKey {
        key: "quiver.training_cache",
        default: "2GB",
        doc: "Embedded: CREATE MODEL keeps its training query's result in memory up to this size, so the query runs once and every later pass (counts, preprocessing statistics, fit passes, evaluation) reads memory; larger results are read again per pass. 0 turns it off.",
    },
    ConfigKey {
        key: "quiver.io.mmap",
        default: "true",
        doc: "Large reads of local files (a Parquet scan's column chunks) are memory maps of the page cache instead of copies into fresh buffers. A file truncated in place while a query reads it then stops the process; false reads with system calls.",
    },
    ConfigKey {
        key: "quiver.s3.endpoint",
        default: "$AWS_ENDPOINT_URL or AWS",
        doc: "Endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000.",
    },
    ConfigKey {
        key: "quiver.s3.region",
        default: "$AWS_REGION or us-east-1",
        doc: "S3 region.",
    },
    ConfigKey {
        key: "quiver.s3.access_key_id",
        default: "$AWS_ACCESS_KEY_ID",
        doc: "S3 access key id.",
    },
    ConfigKey {
        key: "quiver.s3.secret_access_key",
        default: "$AWS_SECRET_ACCESS_KEY",
        doc: "S3 secret access key.",
    },
    ConfigKey {
        key: "quiver.s3.allow_http",
        default: "false (true when the endpoint is http://)",
        doc: "Allow plain-HTTP endpoints (local S3-compatible servers).",
    },
];

/// Settings for an S3-compatible object store. Unset fields fall back to the usual `AWS_*`
/// environment variables.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// The S3 settings this process was started with (an executor's or scheduler's
/// `--s3-endpoint`/`--s3-region`), the default of every configuration made in it: the sessions
/// that load models and trial data inside an executor use them, not only its query runtime.
static PROCESS_S3: std::sync::RwLock<Option<S3Config>> = std::sync::RwLock::new(None);

/// Sets this process's S3 settings (see [`process_s3`]).
pub fn set_process_s3(s3: S3Config) {
    *PROCESS_S3.write().unwrap_or_else(|e| e.into_inner()) = Some(s3);
}

/// This process's S3 settings: those given at start-up, or none (the `AWS_*` variables).
pub fn process_s3() -> S3Config {
    PROCESS_S3
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Typed Quiver configuration. Build with [`QuiverConfig::default`] and adjust with
/// [`QuiverConfig::set`] (string keys, validated) or the typed setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuiverConfig {
    /// Defaults to the number of cores.
    pub target_partitions: usize,
    /// Defaults to the number of cores.
    pub compute_threads: usize,
    /// Defaults to `8192`.
    pub batch_size: usize,
    /// Defaults to `./quiver-models/`.
    pub model_store: String,
    /// `quiver.runner = local`; defaults to `false` (embedded).
    pub local_runner: bool,
    /// `quiver.cluster.job_timeout_secs`; defaults to 300 s.
    pub cluster_job_timeout: std::time::Duration,
    /// `quiver.cluster.cache`; defaults to `true`.
    pub cluster_cache: bool,
    /// `quiver.memory_limit` in bytes; `None` (the default) is unlimited.
    pub memory_limit: Option<usize>,
    /// `quiver.training_cache` in bytes (0: off); defaults to 2 GiB.
    pub training_cache: usize,
    pub s3: S3Config,
    /// The cluster's auth token (`quiver.cluster.auth_token_file`); when unset a cluster
    /// client reads `QUIVER_AUTH_TOKEN`.
    pub auth_token: Option<crate::cluster::auth::AuthToken>,
    /// The cluster's CA certificate (`quiver.cluster.tls_ca_file`): connect with TLS and
    /// verify the scheduler and executors against it.
    pub tls: Option<crate::cluster::tls::ClientTls>,
    /// `quiver.device`; defaults to `auto`.
    pub device: crate::device::DeviceChoice,
    /// `quiver.device.min_rows`; defaults to [`crate::device::DEFAULT_MIN_ROWS`].
    pub device_min_rows: usize,
    /// `quiver.device.precision`; defaults to f64.
    pub device_precision: crate::device::Precision,
    /// `quiver.io.mmap`: local files' large reads are memory maps; defaults to `true`.
    pub mmap_local_files: bool,
}

/// A byte size as people write it: `1048576`, `512MB`, `4GB`, `1.5GiB`, `64k`; `unlimited`
/// (or `none`, `0`) is `None`.
pub fn parse_bytes(text: &str) -> std::result::Result<Option<usize>, String> {
    let t = text.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "unlimited" | "none" | "0") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512MB or 4GB"))?;
    let scale: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}'; use B, KB, MB, GB or TB"
            ));
        }
    };
    let bytes = n * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("'{text}' is not a usable size"));
    }
    Ok(Some(bytes as usize))
}

/// Number of cores available to this process (at least 1).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The memory this process may use, in bytes: the host's (`MemTotal` of `/proc/meminfo`), or
/// the container's limit where a cgroup sets a smaller one (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), read once; `None` where neither can be read.
pub fn usable_memory() -> Option<usize> {
    static TOTAL: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let limits = [
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
        .map(|f| std::fs::read_to_string(f).ok());
        memory_within(meminfo.as_deref(), &limits)
    })
}

/// [`usable_memory`] from the text of `/proc/meminfo` and of the cgroup limit files (v2 first):
/// the first limit that is a number (v2 writes `max` when there is none; v1 a huge number),
/// or the host's total, whichever is smaller.
fn memory_within(meminfo: Option<&str>, limits: &[Option<String>]) -> Option<usize> {
    let host = meminfo.and_then(|info| {
        let kib = info
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<usize>()
            .ok()?;
        Some(kib.saturating_mul(1024))
    });
    let limit = limits
        .iter()
        .find_map(|l| l.as_deref()?.trim().parse::<usize>().ok());
    match (host, limit) {
        (Some(h), Some(l)) => Some(h.min(l)),
        (h, l) => h.or(l),
    }
}

impl Default for QuiverConfig {
    fn default() -> Self {
        let cores = available_cores();
        QuiverConfig {
            target_partitions: cores,
            compute_threads: cores,
            batch_size: 8192,
            model_store: "./quiver-models/".to_string(),
            local_runner: false,
            cluster_job_timeout: std::time::Duration::from_secs(300),
            cluster_cache: true,
            memory_limit: None,
            training_cache: 2 << 30,
            s3: process_s3(),
            auth_token: None,
            tls: None,
            device: crate::device::DeviceChoice::Auto,
            device_min_rows: crate::device::DEFAULT_MIN_ROWS,
            device_precision: crate::device::Precision::F64,
            mmap_local_files: true,
        }
    }
}

impl QuiverConfig {
    /// How this configuration's batch work uses a device.
    pub fn device_policy(&self) -> crate::device::DevicePolicy {
        crate::device::DevicePolicy {
            choice: self.device,
            min_rows: self.device_min_rows,
            precision: self.device_precision,
        }
    }

    /// Sets one `quiver.*` key from its string form. Unknown keys and bad values are errors
    /// that name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |reason: &str| QuiverError::InvalidConfigValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let positive = || -> Result<usize> {
            match value.trim().parse::<usize>() {
                Ok(0) | Err(_) => Err(bad("expected a positive integer")),
                Ok(n) => Ok(n),
            }
        };
        let boolean = || -> Result<bool> {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(bad("expected true or false")),
            }
        };
        match key {
            "quiver.target_partitions" => self.target_partitions = positive()?,
            "quiver.compute_threads" => self.compute_threads = positive()?,
            "quiver.batch_size" => self.batch_size = positive()?,
            "quiver.model_store" => {
                if value.trim().is_empty() {
                    return Err(bad("expected a URL or a path"));
                }
                self.model_store = value.trim().to_string()
            }
            "quiver.runner" => {
                self.local_runner = match value.trim().to_ascii_lowercase().as_str() {
                    "local" => true,
                    "embedded" => false,
                    _ => return Err(bad("expected local or embedded")),
                }
            }
            "quiver.cluster.job_timeout_secs" => {
                self.cluster_job_timeout = std::time::Duration::from_secs(positive()? as u64)
            }
            "quiver.cluster.cache" => self.cluster_cache = boolean()?,
            "quiver.cluster.auth_token_file" => {
                self.auth_token = Some(
                    crate::cluster::auth::AuthToken::from_file(std::path::Path::new(value.trim()))
                        .map_err(|e| bad(&e.to_string()))?,
                )
            }
            "quiver.cluster.tls_ca_file" => {
                self.tls = Some(
                    crate::cluster::tls::ClientTls::from_ca_file(std::path::Path::new(
                        value.trim(),
                    ))
                    .map_err(|e| bad(&e.to_string()))?,
                )
            }
            "quiver.device" => {
                self.device = crate::device::DeviceChoice::parse(value).map_err(|r| bad(&r))?
            }
            "quiver.device.min_rows" => self.device_min_rows = positive()?,
            "quiver.device.precision" => {
                self.device_precision =
                    crate::device::Precision::parse(value).map_err(|r| bad(&r))?
            }
            "quiver.memory_limit" => self.memory_limit = parse_bytes(value).map_err(|r| bad(&r))?,
            "quiver.training_cache" => {
                self.training_cache = parse_bytes(value).map_err(|r| bad(&r))?.unwrap_or(0)
            }
            "quiver.io.mmap" => self.mmap_local_files = boolean()?,
            "quiver.s3.endpoint" => self.s3.endpoint = Some(value.to_string()),
            "quiver.s3.region" => self.s3.region = Some(value.to_string()),
            "quiver.s3.access_key_id" => self.s3.access_key_id = Some(value.to_string()),
            "quiver.s3.secret_access_key" => self.s3.secret_access_key = Some(value.to_string()),
            "quiver.s3.allow_http" => self.s3.allow_http = Some(boolean()?),
            _ => {
                return Err(QuiverError::UnknownConfigKey {
                    key: key.to_string(),
                    known: CONFIG_KEYS
                        .iter()
                        .map(|k| k.key)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }

    /// Applies `key=value` pairs in order; the first bad one is the error.
    pub fn with_pairs<'a>(
        mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        for (k, v) in pairs {
            self.set(k, v)?;
        }
        Ok(self)
    }

    /// Defaults to the number of cores.
    pub fn with_target_partitions(mut self, n: usize) -> Self {
        self.target_partitions = n.max(1);
        self
    }

    /// Defaults to the number of cores.
    pub fn with_compute_threads(mut self, n: usize) -> Self {
        self.compute_threads = n.max(1);
        self
    }

    /// Defaults to `8192`.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Defaults to `./quiver-models/`.
    pub fn with_model_store(mut self, url: impl Into<String>) -> Self {
        self.model_store = url.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_limit_below_the_host_memory_is_what_may_be_used() {
        let info = "MemTotal:       16384 kB\nMemFree:         1024 kB\n";
        let host = 16384 * 1024;
        let some = |s: &str| Some(s.to_string());
        // No cgroup files: the host's.
        assert_eq!(memory_within(Some(info), &[None, None]), Some(host));
        // cgroup v2 without a limit writes `max`; v1 without one a huge number.
        assert_eq!(
            memory_within(Some(info), &[some("max\n"), None]),
            Some(host)
        );
        assert_eq!(
            memory_within(Some(info), &[None, some("9223372036854771712\n")]),
            Some(host)
        );
        // A limit below the host's memory, v2 or v1.
        assert_eq!(
            memory_within(Some(info), &[some("1048576\n"), None]),
            Some(1 << 20)
        );
        assert_eq!(
            memory_within(Some(info), &[None, some("2097152\n")]),
            Some(2 << 20)
        );
        // v2 is read first; a limit alone where /proc/meminfo cannot be read.
        assert_eq!(
            memory_within(Some(info), &[some("1048576"), some("2097152")]),
            Some(1 << 20)
        );
        assert_eq!(memory_within(None, &[some("4096"), None]), Some(4096));
        assert_eq!(memory_within(Some("garbage"), &[None, None]), None);
    }

    #[test]
    fn memory_sizes_parse_as_people_write_them() {
        assert_eq!(parse_bytes("1048576").unwrap(), Some(1 << 20));
        assert_eq!(parse_bytes("512MB").unwrap(), Some(512 << 20));
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), Some(3 << 29));
        assert_eq!(parse_bytes("64k").unwrap(), Some(64 << 10));
        assert_eq!(parse_bytes("unlimited").unwrap(), None);
        assert!(parse_bytes("8XB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1e400").is_err());
        let c = QuiverConfig::default()
            .with_pairs([("quiver.memory_limit", "2GB")])
            .unwrap();
        assert_eq!(c.memory_limit, Some(2 << 30));
    }

    #[test]
    fn defaults_follow_the_machine() {
        let c = QuiverConfig::default();
        assert_eq!(c.target_partitions, available_cores());
        assert_eq!(c.compute_threads, available_cores());
        assert_eq!(c.batch_size, 8192);
        assert_eq!(c.model_store, "./quiver-models/");
    }

    #[test]
    fn set_parses_and_validates() {
        let c = QuiverConfig::default()
            .with_pairs([
                ("quiver.target_partitions", "3"),
                ("quiver.batch_size", "100"),
                ("quiver.s3.allow_http", "yes"),
            ])
            .unwrap();
        assert_eq!(c.target_partitions, 3);
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.s3.allow_http, Some(true));

        let err = QuiverConfig::default()
            .set("quiver.batch_size", "0")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("quiver.batch_size") && msg.contains("positive"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = QuiverConfig::default()
            .set("quiver.batchsize", "10")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown configuration key 'quiver.batchsize'"),
            "{msg}"
        );
        assert!(msg.contains("quiver.batch_size"), "{msg}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut c = QuiverConfig::default();
        c.set("quiver.s3.secret_access_key", "hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
