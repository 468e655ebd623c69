//! The custom-objective example with real processes: its own scheduler and two executors
//! (the example binary in each role), a search whose trials run on them, the same search
//! embedded, and an executor without the objective whose trials fail naming the kind and how
//! to register it.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_custom_objective");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes, killed when the test ends however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, log: &Path, ready: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if ready(&text) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} not ready; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_port(port: u16, what: &str, log: &Path) {
    wait_for(what, log, |_| {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A scheduler and executors of the example binary; returns the scheduler's URL.
fn cluster(dir: &Path, procs: &mut Processes, executors: &[(&str, bool)]) -> String {
    let port = free_port();
    let log = dir.join(format!("scheduler-{port}.log"));
    procs.0.push(
        Command::new(BIN)
            .args(["scheduler", "--port", &port.to_string()])
            .args(["--executor-timeout-secs", "4"])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(port, "the scheduler", &log);
    let url = format!("df://127.0.0.1:{port}");
    for (id, with_objective) in executors {
        // Both at once: ports taken one after another may repeat.
        let ports = quiver_executor::standalone::free_ports(2).unwrap();
        let (flight, grpc) = (ports[0], ports[1]);
        let elog = dir.join(format!("{id}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("executor");
        if !with_objective {
            cmd.arg("--without-objective");
        }
        cmd.args(["--scheduler", &url])
            .args(["--port", &flight.to_string()])
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--executor-id", id, "--concurrent-tasks", "2"])
            .args(["--heartbeat-secs", "1"])
            .args(["--work-dir", &dir.join(id).to_string_lossy()]);
        procs.0.push(
            cmd.stdout(Stdio::null())
                .stderr(File::create(&elog).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_port(flight, id, &elog);
    }
    for (id, _) in executors {
        wait_for("executor registration", &log, |t| {
            t.contains(&format!("\"{id}\""))
        });
    }
    url
}

fn search(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["search", "--trials", "12", "--parallel", "4", "--seed", "3"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{text}"))
}

#[test]
fn a_program_s_own_objective_runs_on_its_executors() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Processes(Vec::new());
    let url = cluster(dir.path(), &mut procs, &[("ex-1", true), ("ex-2", true)]);
    let on_cluster = search(&["--cluster", &url]);
    let trials = line(&on_cluster, "12 trials");
    assert!(
        trials.starts_with("12 trials (0 failed) on "),
        "{on_cluster}"
    );
    // Every trial ran on an executor, none in the driver.
    for worker in trials.rsplit(" on ").next().unwrap().split(", ") {
        assert!(["ex-1", "ex-2"].contains(&worker), "{on_cluster}");
    }
    // The same seed gives the same trials embedded: the same best trial.
    let embedded = search(&[]);
    assert_eq!(line(&on_cluster, "best:"), line(&embedded, "best:"));
    let best = line(&embedded, "best:");
    let loss: f64 = best.rsplit("loss ").next().unwrap().parse().unwrap();
    assert!(loss < 0.2, "{best}");

    // An executor without the objective: each trial fails, naming the kind and the way out.
    let bare = cluster(dir.path(), &mut procs, &[("ex-bare", false)]);
    let out = search(&["--cluster", &bare]);
    assert!(
        line(&out, "12 trials").starts_with("12 trials (12 failed)"),
        "{out}"
    );
    let failed = line(&out, "trial ");
    assert!(
        failed.contains("unknown task kind 'example.knn'") && failed.contains("install_with"),
        "{out}"
    );
}
