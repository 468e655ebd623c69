//! The cluster fan-out's watchdog, on an in-process cluster (`QuiverSession::standalone`): a
//! job whose task stalls is abandoned after `quiver.cluster.job_timeout_secs` and its task run
//! once more; a task that stalls twice is recorded as lost, and the fan-out still returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quiver_engine::fanout::{TaskOutcome, TaskRunner, TaskStatus};
use quiver_engine::{QuiverConfig, QuiverSession, Result, Runner, Task};

/// `{"stall": "once"}` stalls the first time it runs in this process, `"always"` every time.
#[derive(Debug, Default)]
struct Stall {
    stalled_once: AtomicBool,
}

impl TaskRunner for Stall {
    fn kind(&self) -> &str {
        "test.stall"
    }

    fn run(&self, params: &str) -> Result<TaskOutcome> {
        let always = params.contains("always");
        if always || !self.stalled_once.swap(true, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_secs(5));
        }
        Ok(TaskOutcome {
            loss: Some(1.0),
            metrics: serde_json::Value::Null,
        })
    }
}

async fn session() -> QuiverSession {
    QuiverSession::standalone_with(
        QuiverConfig::default()
            .with_pairs([
                ("quiver.cluster.job_timeout_secs", "2"),
                ("quiver.target_partitions", "2"),
            ])
            .unwrap(),
    )
    .await
    .unwrap()
}

fn stall(mode: &str) -> Vec<Task> {
    vec![Task {
        id: 0,
        kind: "test.stall".into(),
        params: format!(r#"{{"stall": "{mode}"}}"#),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fan_out_job_is_retried_and_a_twice_stalled_task_is_lost() {
    quiver_executor::install().unwrap();
    quiver_engine::registry::install(|r| r.add_task(Arc::new(Stall::default()))).unwrap();

    let s = session().await;
    let res = s
        .fan_out(&stall("once"), 1, Runner::Embedded, |_| {})
        .await
        .unwrap();
    assert_eq!(res[0].status, TaskStatus::Ok, "{res:?}");
    assert_eq!(res[0].loss, Some(1.0));

    let s = session().await;
    let res = s
        .fan_out(&stall("always"), 1, Runner::Embedded, |_| {})
        .await
        .unwrap();
    assert_eq!(res[0].status, TaskStatus::Failed, "{res:?}");
    let msg = res[0].message.as_deref().unwrap();
    assert!(
        msg.starts_with("lost: its cluster job did not finish within 2 s, twice"),
        "{msg}"
    );
}
