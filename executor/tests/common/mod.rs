//! A real local cluster for tests: a `quiver-scheduler` and `quiver-executor` processes on free
//! loopback ports, logs in a temporary directory, killed when dropped.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            panic!(
                "{what} did not listen on {port}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directories the test processes may read for remote sessions: the test's own
/// directory and the shipped data.
fn data_roots(dir: &Path) -> Vec<String> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");
    vec![
        "--data-root".to_string(),
        dir.to_string_lossy().into_owned(),
        "--data-root".to_string(),
        data.to_string(),
    ]
}

pub struct Executor {
    pub id: String,
    pub child: Child,
    pub log: PathBuf,
    /// Its Arrow Flight port.
    pub flight_port: u16,
}

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    scheduler: Child,
    pub scheduler_log: PathBuf,
    pub executors: Vec<Executor>,
}

impl LocalCluster {
    /// A scheduler and `n` executors (ids `exec-1` …), registered and ready.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, false, &[])
    }

    /// `bare`: the executors are plain Ballista executors (no Quiver functions).
    pub fn start_with(n: usize, bare: bool, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(n, bare, env, env, &[])
    }

    /// The scheduler with `env`; `n` executors with `executor_env` and `executor_args` added
    /// to their command lines.
    pub fn start_with_args(
        n: usize,
        bare: bool,
        env: &[(&str, &str)],
        executor_env: &[(&str, &str)],
        executor_args: &[&str],
    ) -> Self {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            n,
            bare,
            env,
            executor_env,
            &[],
            executor_args,
        )
    }

    /// [`LocalCluster::start_with_args`] in `dir` (files the processes need may already be
    /// there), with `scheduler_args` added to the scheduler's command line.
    pub fn start_in(
        dir: tempfile::TempDir,
        n: usize,
        bare: bool,
        env: &[(&str, &str)],
        executor_env: &[(&str, &str)],
        scheduler_args: &[&str],
        executor_args: &[&str],
    ) -> Self {
        let port = free_port();
        let scheduler_log = dir.path().join("scheduler.log");
        let scheduler = Command::new(env!("CARGO_BIN_EXE_quiver-scheduler"))
            .args(["--port", &port.to_string(), "--executor-timeout-secs", "4"])
            .args(data_roots(dir.path()))
            .args(scheduler_args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&scheduler_log).unwrap())
            .spawn()
            .unwrap();
        wait_port(port, "the scheduler", &scheduler_log);
        let mut cluster = LocalCluster {
            dir,
            port,
            scheduler,
            scheduler_log,
            executors: Vec::new(),
        };
        for i in 1..=n {
            cluster.add_executor_with(&format!("exec-{i}"), bare, executor_env, executor_args);
        }
        cluster.wait_registered(n);
        cluster
    }

    pub fn add_executor_with(&mut self, id: &str, bare: bool, env: &[(&str, &str)], args: &[&str]) {
        let log = self.dir.path().join(format!("{id}.log"));
        let work_dir = self.dir.path().join(id);
        let (mut cmd, flight) = self.executor_command(id, bare, Some(&work_dir));
        let child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_port(flight, id, &log);
        self.executors.push(Executor {
            id: id.to_string(),
            child,
            log,
            flight_port: flight,
        });
    }

    /// An executor's command line for this cluster (one task slot, 1 s heartbeats, the
    /// cluster's data roots unless `bare`), and its Flight port.
    pub fn executor_command(
        &self,
        id: &str,
        bare: bool,
        work_dir: Option<&std::path::Path>,
    ) -> (Command, u16) {
        // Both at once: ports taken one after another may repeat.
        let ports = quiver_executor::standalone::free_ports(2).unwrap();
        let (flight, grpc) = (ports[0], ports[1]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver-executor"));
        cmd.args([
            "--scheduler",
            &self.url(),
            "--port",
            &flight.to_string(),
            "--grpc-port",
            &grpc.to_string(),
            "--executor-id",
            id,
            "--concurrent-tasks",
            "1",
            "--heartbeat-secs",
            "1",
        ]);
        if let Some(dir) = work_dir {
            cmd.arg("--work-dir").arg(dir);
        }
        if bare {
            cmd.arg("--bare");
        } else {
            cmd.args(data_roots(self.dir.path()));
        }
        (cmd, flight)
    }

    /// Waits until the scheduler has seen `n` executors register.
    pub fn wait_registered(&self, n: usize) {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.scheduler_log).unwrap_or_default();
            let seen = self
                .executors
                .iter()
                .filter(|e| log.contains(&format!("\"{}\"", e.id)))
                .count();
            if seen >= n {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("only {seen} of {n} executors registered; scheduler log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    /// Kills executor `i` (SIGKILL: no goodbye to the scheduler).
    pub fn kill_executor(&mut self, i: usize) {
        let e = &mut self.executors[i];
        e.child.kill().unwrap();
        e.child.wait().unwrap();
    }

    pub fn executor_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.executors[i].log).unwrap_or_default()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for e in &mut self.executors {
            let _ = e.child.kill();
            let _ = e.child.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}

/// Deterministic synthetic rows: five features, a 0/1 class that depends on them through a
/// logistic model, and a noisy linear target. Written as `files` Parquet files of `rows_per_file`.
pub fn write_synthetic(dir: &Path, files: usize, rows_per_file: usize) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let schema = Arc::new(Schema::new(
        (0..5)
            .map(|j| Field::new(format!("f{j}"), DataType::Float64, false))
            .chain([
                Field::new("class", DataType::Float64, false),
                Field::new("target", DataType::Float64, false),
            ])
            .collect::<Vec<_>>(),
    ));
    for file in 0..files {
        let mut cols: Vec<Vec<f64>> = (0..7).map(|_| Vec::with_capacity(rows_per_file)).collect();
        for _ in 0..rows_per_file {
            let x: Vec<f64> = (0..5)
                .map(|j| (uniform() - 0.5) * (j as f64 + 1.0) + j as f64)
                .collect();
            let margin = 1.5 * x[0] - 0.8 * x[1] + 0.3 * x[2] - 0.5 * x[3] + 0.2 * x[4] - 0.4;
            let class = if uniform() < 1.0 / (1.0 + (-margin).exp()) {
                1.0
            } else {
                0.0
            };
            let target = 2.0 * x[0] - x[1] + 0.5 * x[4] + 3.0 + (uniform() - 0.5) * 0.1;
            for j in 0..5 {
                cols[j].push(x[j]);
            }
            cols[5].push(class);
            cols[6].push(target);
        }
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| Arc::new(Float64Array::from(c)) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).unwrap();
        let path = dir.join(format!("part-{file}.parquet"));
        let mut w = parquet::arrow::ArrowWriter::try_new(
            File::create(&path).unwrap(),
            schema.clone(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    format!("{}/", dir.to_string_lossy())
}
