//! Pruning boards reached across processes: a task on a cluster executor reports to the board
//! of the fan-out that sent it, which lives in the client process.
//!
//! The client serves the boards it holds on one TCP port per address it advertises, started the
//! first time a fan-out with a pruner goes to a cluster. The protocol is one JSON object per line
//! each way: a request names the board (its key and the secret that came with the task: other
//! clients and strangers cannot read or feed it), the trial, the step, and the value for a
//! report; the answer says whether the step is due, or whether the trial must stop. Only trial
//! ids, steps and losses travel, in the clear.
//!
//! A task that cannot reach its board goes on unjudged (it says so once in the executor's log):
//! the board is an optimisation, and its reports still come back with the task's result.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{QuiverError, Result};
use crate::fanout::Pruning;

/// Where a task in another process reaches its fan-out's pruning board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoardAddress {
    /// The client's board server.
    pub addr: SocketAddr,
    /// The board's key in the client's registry.
    pub key: u64,
    /// The board's secret: only tasks the fan-out sent know it.
    pub secret: [u64; 2],
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    key: u64,
    secret: [u64; 2],
    trial: u64,
    step: u64,
    /// A report (else a question whether `step` is due).
    #[serde(default)]
    report: bool,
    /// The reported value; one JSON cannot carry (NaN, ±∞) travels as `null`.
    #[serde(default)]
    value: Option<f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    #[serde(default)]
    yes: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Environment variable naming the host or IP address executors reach this process on (for
/// pruning boards), when the one it reaches the scheduler from is not it (NAT, several
/// interfaces).
pub const DRIVER_HOST_ENV: &str = "QUIVER_DRIVER_HOST";

/// The address of the board registered under `key` (with `secret`), served on the address this
/// process reaches `scheduler_host:scheduler_port` from (or [`DRIVER_HOST_ENV`]).
pub fn address_for(
    key: u64,
    secret: [u64; 2],
    scheduler_host: &str,
    scheduler_port: u16,
) -> Result<BoardAddress> {
    let ip = advertised_ip(scheduler_host, scheduler_port)?;
    Ok(BoardAddress {
        addr: serve(ip)?,
        key,
        secret,
    })
}

/// The IP address executors reach this process on: [`DRIVER_HOST_ENV`] when set, loopback for a
/// scheduler on loopback, else the local address of the route to the scheduler.
fn advertised_ip(scheduler_host: &str, scheduler_port: u16) -> Result<IpAddr> {
    // Resolved once per scheduler and process: every fan-out with a pruner asks.
    type Known = HashMap<(String, u16, Option<String>), IpAddr>;
    static KNOWN: OnceLock<Mutex<Known>> = OnceLock::new();
    let key = (
        scheduler_host.to_string(),
        scheduler_port,
        std::env::var(DRIVER_HOST_ENV).ok(),
    );
    let known = KNOWN.get_or_init(Default::default);
    if let Some(ip) = known.lock().ok().and_then(|k| k.get(&key).copied()) {
        return Ok(ip);
    }
    let ip = resolve_advertised_ip(scheduler_host, scheduler_port)?;
    if let Ok(mut k) = known.lock() {
        k.insert(key, ip);
    }
    Ok(ip)
}

/// [`advertised_ip`], resolving names and routes.
fn resolve_advertised_ip(scheduler_host: &str, scheduler_port: u16) -> Result<IpAddr> {
    let unresolved = |host: &str, e: String| QuiverError::Cluster(format!("{host}: {e}"));
    if let Ok(host) = std::env::var(DRIVER_HOST_ENV)
        && !host.is_empty()
    {
        return (host.as_str(), 0)
            .to_socket_addrs()
            .map_err(|e| unresolved(&format!("{DRIVER_HOST_ENV}={host}"), e.to_string()))?
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| unresolved(&format!("{DRIVER_HOST_ENV}={host}"), "no address".into()));
    }
    let scheduler = (scheduler_host, scheduler_port)
        .to_socket_addrs()
        .map_err(|e| unresolved(scheduler_host, e.to_string()))?
        .next()
        .ok_or_else(|| unresolved(scheduler_host, "no address".into()))?;
    if scheduler.ip().is_loopback() {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    // The route's local end: connecting a UDP socket sends nothing.
    let any: SocketAddr = if scheduler.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).map_err(|e| unresolved(scheduler_host, e.to_string()))?;
    socket
        .connect(scheduler)
        .map_err(|e| unresolved(scheduler_host, e.to_string()))?;
    Ok(socket
        .local_addr()
        .map_err(|e| unresolved(scheduler_host, e.to_string()))?
        .ip())
}

/// Connections the board server answers at once, at most.
const MAX_CONNECTIONS: usize = 256;

/// Connections open now.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// The board server on `ip`, started on first use (one per address, for the process's life).
fn serve(ip: IpAddr) -> Result<SocketAddr> {
    static SERVERS: OnceLock<Mutex<HashMap<IpAddr, SocketAddr>>> = OnceLock::new();
    let mut servers = SERVERS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| QuiverError::internal("the board servers' lock is poisoned"))?;
    if let Some(addr) = servers.get(&ip) {
        return Ok(*addr);
    }
    let listener = TcpListener::bind((ip, 0)).map_err(|e| {
        QuiverError::Cluster(format!(
            "cannot serve pruning boards on {ip} (set {DRIVER_HOST_ENV} to an address executors reach this process on): {e}"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| QuiverError::Cluster(format!("pruning board server: {e}")))?;
    std::thread::Builder::new()
        .name("quiver-boards".to_string())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One thread per connection (one per running trial), a bounded number: a
                // stranger opening connections cannot exhaust this process's threads.
                if OPEN.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    log::warn!(
                        "pruning board server: {MAX_CONNECTIONS} connections open; refusing one"
                    );
                    continue;
                }
                OPEN.fetch_add(1, Ordering::Relaxed);
                let spawned = std::thread::Builder::new()
                    .name("quiver-board".to_string())
                    .spawn(move || {
                        answer_connection(stream);
                        OPEN.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    OPEN.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| QuiverError::internal(format!("cannot start the board server: {e}")))?;
    log::info!("pruning boards served on {addr}");
    servers.insert(ip, addr);
    Ok(addr)
}

/// Answers one connection's requests until it closes or idles for ten minutes.
fn answer_connection(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(r) => answer(&r),
            Err(e) => Answer {
                error: Some(format!("not a board request: {e}")),
                ..Answer::default()
            },
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".to_string());
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(r: &Request) -> Answer {
    let Some(board) = crate::fanout::board_with_secret(r.key, r.secret) else {
        return Answer {
            error: Some(format!(
                "no pruning board {} here (its search has ended?)",
                r.key
            )),
            ..Answer::default()
        };
    };
    let yes = if r.report {
        board.report(r.trial, r.step, r.value.unwrap_or(f64::NAN))
    } else {
        board.due(r.trial, r.step)
    };
    Answer { yes, error: None }
}

/// A board in another process, reached over TCP ([`BoardAddress`]).
#[derive(Debug)]
pub(crate) struct RemoteBoard {
    address: BoardAddress,
    /// The open connection (one per task), and whether the board proved unreachable.
    conn: Mutex<(Option<BufReader<TcpStream>>, bool)>,
}

impl RemoteBoard {
    pub(crate) fn new(address: BoardAddress) -> Self {
        RemoteBoard {
            address,
            conn: Mutex::new((None, false)),
        }
    }

    /// The board's answer to a request: `None` when it cannot be reached (said once per task).
    fn ask(&self, trial: u64, step: u64, report: Option<f64>) -> Option<bool> {
        let request = Request {
            key: self.address.key,
            secret: self.address.secret,
            trial,
            step,
            report: report.is_some(),
            value: report.filter(|v| v.is_finite()),
        };
        let mut line = serde_json::to_string(&request).ok()?;
        line.push('\n');
        let mut conn = self.conn.lock().ok()?;
        if conn.1 {
            return None;
        }
        let mut last_error = String::new();
        // Once more on a fresh connection: an idle one may have been closed.
        for _ in 0..2 {
            match self.exchange(&mut conn.0, &line) {
                Ok(answer) => match answer.error {
                    None => return Some(answer.yes),
                    Some(e) => {
                        last_error = e;
                        break;
                    }
                },
                Err(e) => {
                    conn.0 = None;
                    last_error = e.to_string();
                }
            }
        }
        conn.1 = true;
        log::warn!(
            "trial {trial}: the pruning board at {} cannot be reached ({last_error}); the trial goes on unjudged",
            self.address.addr
        );
        None
    }

    fn exchange(
        &self,
        conn: &mut Option<BufReader<TcpStream>>,
        line: &str,
    ) -> std::io::Result<Answer> {
        if conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.address.addr, Duration::from_secs(3))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            *conn = Some(BufReader::new(stream));
        }
        let reader = conn.as_mut().expect("connected above");
        reader.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the board server closed the connection",
            ));
        }
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    }
}

impl Pruning for RemoteBoard {
    fn due(&self, trial: u64, step: u64) -> bool {
        self.ask(trial, step, None).unwrap_or(false)
    }

    fn report(&self, trial: u64, step: u64, value: f64) -> bool {
        self.ask(trial, step, Some(value)).unwrap_or(false)
    }
}
