//! `quiver cluster up|status|down`: a local cluster (one scheduler, N executors on loopback) as
//! background processes, with a state file, logs, readiness checks and clean shutdown.
//!
//! The processes are this same `quiver` binary (`quiver cluster scheduler|executor`, the flags
//! of `quiver-scheduler` / `quiver-executor`), so client and cluster never differ in version.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quiver_engine::{QuiverError, Result};
use serde::{Deserialize, Serialize};

/// What `quiver cluster up` starts.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the state file and the logs go.
    pub dir: PathBuf,
    pub executors: usize,
    /// The scheduler's port; executors take free ports.
    pub port: u16,
    /// Tasks each executor runs at once.
    pub concurrent_tasks: Option<usize>,
    /// Memory each executor's tasks may reserve together (`--memory-limit`, e.g. `8GB`).
    pub memory_limit: Option<String>,
    /// Memory each executor keeps prepared partitions in (`--cache-memory`, e.g. `4GB`).
    pub cache_memory: Option<String>,
    /// Where each executor's batch scoring runs (`--device`).
    pub device: Option<quiver_engine::device::DeviceChoice>,
    /// How long to wait for every process to be ready.
    pub ready_timeout: Duration,
    /// Generate an auth token (`auth-token` in the directory) that every call must carry.
    pub auth: bool,
    /// Local directories remote sessions may read (`--data-root`).
    pub data_roots: Vec<PathBuf>,
    /// Let remote sessions write through the cluster (`--allow-writes`).
    pub allow_writes: bool,
    /// Encrypt every connection with a fresh CA and certificate (`--tls`).
    pub tls: bool,
}

/// One started process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

/// The state file (`cluster.json` in the cluster directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub url: String,
    /// The file holding the cluster's auth token (none: the cluster checks nothing).
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// The CA certificate clients verify the cluster with (none: plain connections).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    pub scheduler: ProcessInfo,
    pub executors: Vec<ProcessInfo>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> QuiverError + '_ {
    move |source| QuiverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the state file of the cluster in `dir`.
pub fn read_state(dir: &Path) -> Result<ClusterState> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            QuiverError::Cluster(format!(
                "no cluster was started from {} (no {}); run `quiver cluster up`",
                dir.display(),
                path.display()
            ))
        } else {
            io_err(&path)(e)
        }
    })?;
    serde_json::from_str(&text).map_err(|source| QuiverError::Json {
        context: path.display().to_string(),
        source,
    })
}

/// True while the process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn spawn(args: &[String], log: &Path) -> Result<u32> {
    let exe = std::env::current_exe().map_err(io_err(Path::new("quiver")))?;
    let file = File::create(log).map_err(io_err(log))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    #[cfg(unix)]
    {
        // Its own process group: a Ctrl-C in this terminal does not stop the cluster.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(io_err(log))?;
    Ok(child.id())
}

/// Waits until `check` holds, failing early when `pid` dies.
fn wait_ready(
    what: &str,
    info: &ProcessInfo,
    timeout: Duration,
    check: impl Fn() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if !alive(info.pid) {
            return Err(QuiverError::Cluster(format!(
                "{what} exited during start-up; last lines of {}:\n{}",
                info.log.display(),
                log_tail(&info.log)
            )));
        }
        if start.elapsed() > timeout {
            return Err(QuiverError::Cluster(format!(
                "{what} was not ready within {} s; last lines of {}:\n{}",
                timeout.as_secs(),
                info.log.display(),
                log_tail(&info.log)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts the cluster and writes its state file; stops what it started if any part fails.
pub fn up(opts: &UpOptions, out: &mut impl Write) -> Result<ClusterState> {
    if opts.executors == 0 {
        return Err(QuiverError::InvalidParam {
            param: "--executors".to_string(),
            reason: "must be at least 1".to_string(),
        });
    }
    if let Ok(state) = read_state(&opts.dir) {
        let running: Vec<String> = std::iter::once(&state.scheduler)
            .chain(&state.executors)
            .filter(|p| alive(p.pid))
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        if !running.is_empty() {
            return Err(QuiverError::Cluster(format!(
                "a cluster from {} is already running: {}; `quiver cluster down` stops it",
                opts.dir.display(),
                running.join(", ")
            )));
        }
    }
    if !port_free(opts.port) {
        return Err(QuiverError::Cluster(format!(
            "port {} is in use (another scheduler?); choose one with --port",
            opts.port
        )));
    }
    std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    // A fresh token per start, readable by this user only; the processes read it from the
    // file (never from their command lines, which other users can see).
    let auth_token_file = if opts.auth {
        let path = opts.dir.join("auth-token");
        quiver_engine::cluster::auth::AuthToken::generate().write_file(&path)?;
        Some(path)
    } else {
        None
    };
    // What every process gets: the token file, the data roots, writes.
    let mut auth_args: Vec<String> = match &auth_token_file {
        Some(p) => vec!["--auth-token-file".into(), p.to_string_lossy().into_owned()],
        None => Vec::new(),
    };
    for root in &opts.data_roots {
        let absolute = std::fs::canonicalize(root).map_err(io_err(root))?;
        auth_args.extend([
            "--data-root".into(),
            absolute.to_string_lossy().into_owned(),
        ]);
    }
    if opts.allow_writes {
        auth_args.push("--allow-writes".into());
    }
    let tls_files = if opts.tls {
        Some(quiver_engine::cluster::tls::generate(
            &opts.dir,
            &["localhost", "127.0.0.1"],
        )?)
    } else {
        None
    };
    let path_arg = |p: &Path| p.to_string_lossy().into_owned();
    if let Some(t) = &tls_files {
        auth_args.extend([
            "--tls-cert".into(),
            path_arg(&t.cert),
            "--tls-key".into(),
            path_arg(&t.key),
        ]);
    }
    // Executors also connect (to the scheduler and each other): they verify with the CA.
    let executor_tls_args: Vec<String> = match &tls_files {
        Some(t) => vec!["--tls-ca".into(), path_arg(&t.ca)],
        None => Vec::new(),
    };
    let log = opts.dir.join("scheduler.log");
    let mut args: Vec<String> = vec![
        "cluster".into(),
        "scheduler".into(),
        "--port".into(),
        opts.port.to_string(),
    ];
    args.extend(auth_args.iter().cloned());
    let pid = spawn(&args, &log)?;
    let mut state = ClusterState {
        url: format!("df://127.0.0.1:{}", opts.port),
        auth_token_file: auth_token_file.clone(),
        tls_ca_file: tls_files.as_ref().map(|t| t.ca.clone()),
        scheduler: ProcessInfo {
            name: "scheduler".to_string(),
            pid,
            port: opts.port,
            log,
        },
        executors: Vec::new(),
    };
    let started = (|| -> Result<()> {
        let port = opts.port;
        wait_ready(
            "the scheduler",
            &state.scheduler,
            opts.ready_timeout,
            || listening(port),
        )?;
        // Every executor's two ports at once, so that no two of them are the same.
        let ports = quiver_executor::standalone::free_ports(2 * opts.executors)?;
        for (i, pair) in (1..=opts.executors).zip(ports.chunks_exact(2)) {
            let name = format!("exec-{i}");
            let (flight, grpc) = (pair[0], pair[1]);
            let log = opts.dir.join(format!("{name}.log"));
            let mut args: Vec<String> = vec![
                "cluster".into(),
                "executor".into(),
                "--scheduler".into(),
                state.url.clone(),
                "--port".into(),
                flight.to_string(),
                "--grpc-port".into(),
                grpc.to_string(),
                "--executor-id".into(),
                name.clone(),
                "--work-dir".into(),
                opts.dir.join(&name).to_string_lossy().into_owned(),
            ];
            if let Some(n) = opts.concurrent_tasks {
                args.extend(["--concurrent-tasks".into(), n.to_string()]);
            }
            if let Some(m) = &opts.memory_limit {
                args.extend(["--memory-limit".into(), m.clone()]);
            }
            if let Some(m) = &opts.cache_memory {
                args.extend(["--cache-memory".into(), m.clone()]);
            }
            if let Some(d) = opts.device {
                args.extend(["--device".into(), d.to_string()]);
            }
            args.extend(auth_args.iter().cloned());
            args.extend(executor_tls_args.iter().cloned());
            let pid = spawn(&args, &log)?;
            state.executors.push(ProcessInfo {
                name,
                pid,
                port: flight,
                log,
            });
        }
        for e in &state.executors {
            let scheduler_log = state.scheduler.log.clone();
            let quoted = format!("\"{}\"", e.name);
            wait_ready(
                &format!("executor {}", e.name),
                e,
                opts.ready_timeout,
                || {
                    listening(e.port)
                        && std::fs::read_to_string(&scheduler_log)
                            .is_ok_and(|l| l.contains(&quoted))
                },
            )?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        stop_all(&state, Duration::from_secs(5));
        return Err(e);
    }
    let path = state_path(&opts.dir);
    let json = serde_json::to_string_pretty(&state).map_err(|source| QuiverError::Json {
        context: path.display().to_string(),
        source,
    })?;
    std::fs::write(&path, json).map_err(io_err(&path))?;
    writeln!(
        out,
        "cluster up: scheduler at {} (pid {}), {} executor{} registered",
        state.url,
        state.scheduler.pid,
        state.executors.len(),
        if state.executors.len() == 1 { "" } else { "s" }
    )
    .ok();
    for e in &state.executors {
        writeln!(
            out,
            "  {:<8} pid {:<8} flight port {}",
            e.name, e.pid, e.port
        )
        .ok();
    }
    writeln!(
        out,
        "remote sessions read local files under {}{}",
        if opts.data_roots.is_empty() {
            "no directory".to_string()
        } else {
            opts.data_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if opts.allow_writes {
            " and may write"
        } else {
            " and write nothing (--data-root, --allow-writes)"
        }
    )
    .ok();
    if let Some(ca) = &state.tls_ca_file {
        writeln!(
            out,
            "every connection uses TLS: clients verify the cluster with --tls-ca-file {}",
            ca.display()
        )
        .ok();
    }
    match &state.auth_token_file {
        Some(token) => writeln!(
            out,
            "every call must carry the auth token in {0} (clients: --auth-token-file {0}, or QUIVER_AUTH_TOKEN)\n\
             logs and state in {1}; try: quiver --auth-token-file {0} sql --cluster {2} -e 'SELECT 1'",
            token.display(),
            opts.dir.display(),
            state.url
        ),
        None => writeln!(
            out,
            "no auth token (--no-auth): anyone who reaches these ports can use the cluster\n\
             logs and state in {}; try: quiver sql --cluster {} -e 'SELECT 1'",
            opts.dir.display(),
            state.url
        ),
    }
    .ok();
    Ok(state)
}

/// Prints each process's state; an error when any is down.
pub fn status(dir: &Path, out: &mut impl Write) -> Result<ClusterState> {
    let state = read_state(dir)?;
    writeln!(out, "cluster {} (from {})", state.url, dir.display()).ok();
    let mut down = Vec::new();
    for p in std::iter::once(&state.scheduler).chain(&state.executors) {
        let (is_alive, is_listening) = (alive(p.pid), listening(p.port));
        let what = match (is_alive, is_listening) {
            (true, true) => "running",
            (true, false) => "not listening",
            (false, _) => "dead",
        };
        writeln!(
            out,
            "  {:<10} pid {:<8} port {:<6} {what}",
            p.name, p.pid, p.port
        )
        .ok();
        if what != "running" {
            down.push(format!("{} ({what}; log {})", p.name, p.log.display()));
        }
    }
    if !down.is_empty() {
        return Err(QuiverError::Cluster(format!(
            "not every process is up: {}",
            down.join(", ")
        )));
    }
    Ok(state)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops executors, then the scheduler: SIGTERM, then SIGKILL after `grace`.
fn stop_all(state: &ClusterState, grace: Duration) -> Vec<String> {
    let procs: Vec<&ProcessInfo> = state
        .executors
        .iter()
        .chain(std::iter::once(&state.scheduler))
        .collect();
    for p in &procs {
        if alive(p.pid) {
            signal(p.pid, "-TERM");
        }
    }
    let start = Instant::now();
    while procs.iter().any(|p| alive(p.pid)) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for p in &procs {
        if alive(p.pid) {
            signal(p.pid, "-KILL");
            killed.push(p.name.clone());
        }
    }
    killed
}

/// Stops the cluster started from `dir` and removes its state file (logs stay).
pub fn down(dir: &Path, out: &mut impl Write) -> Result<()> {
    let state = read_state(dir)?;
    let killed = stop_all(&state, Duration::from_secs(5));
    let path = state_path(dir);
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    writeln!(
        out,
        "cluster {} stopped ({} processes{})",
        state.url,
        1 + state.executors.len(),
        if killed.is_empty() {
            String::new()
        } else {
            format!("; killed after 5 s: {}", killed.join(", "))
        }
    )
    .ok();
    Ok(())
}
