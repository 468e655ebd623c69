//! An in-process cluster (a scheduler and one executor as tasks of this process) behind
//! `QuiverSession::standalone()`, for quick tests of the cluster path.

use std::time::{Duration, Instant};

use quiver_engine::cluster::{self, SchedulerAddress};
use quiver_engine::config::QuiverConfig;
use quiver_engine::{QuiverError, Result};

use crate::scheduler::{SchedulerOptions, run_scheduler};
use crate::worker::{ExecutorOptions, run_executor};

/// A free loopback port (bound, then released: another process could take it in between).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` different free loopback ports: all bound at once, then released (another process
/// could take one in between). Ports taken one [`free_port`] call after another may repeat —
/// the system can hand out a port again as soon as it is released — and two executors given
/// the same port leave one of them dead.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>();
    held.and_then(|ls| ls.iter().map(|l| Ok(l.local_addr()?.port())).collect())
        .map_err(|source| QuiverError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

/// Waits until `host:port` accepts connections, up to `timeout`.
pub async fn wait_for_port(host: &str, port: u16, timeout: Duration) -> Result<()> {
    let address = SchedulerAddress {
        host: host.to_string(),
        port,
    };
    let start = Instant::now();
    loop {
        match address.check_reachable(Duration::from_millis(500)).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts a scheduler and one executor on free loopback ports as tasks of the current tokio
/// runtime; returns once both listen.
pub async fn launch(config: QuiverConfig) -> Result<SchedulerAddress> {
    let port = free_port()?;
    let scheduler = SchedulerOptions {
        port,
        s3: config.s3.clone(),
        ..SchedulerOptions::default()
    };
    tokio::spawn(async move {
        if let Err(e) = run_scheduler(scheduler).await {
            log::error!("in-process scheduler stopped: {e}");
        }
    });
    wait_for_port("127.0.0.1", port, Duration::from_secs(20)).await?;
    let ports = free_ports(2)?;
    let executor = ExecutorOptions {
        scheduler: format!("df://127.0.0.1:{port}"),
        port: ports[0],
        grpc_port: ports[1],
        concurrent_tasks: config.target_partitions.max(1),
        s3: config.s3.clone(),
        memory_limit: config.memory_limit,
        device: config.device_policy(),
        ..ExecutorOptions::default()
    };
    let flight = executor.port;
    tokio::spawn(async move {
        if let Err(e) = run_executor(executor).await {
            log::error!("in-process executor stopped: {e}");
        }
    });
    wait_for_port("127.0.0.1", flight, Duration::from_secs(20)).await?;
    let _ = cluster::DEFAULT_SCHEDULER_PORT;
    Ok(SchedulerAddress {
        host: "127.0.0.1".to_string(),
        port,
    })
}
