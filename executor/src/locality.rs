//! Where the scheduler runs each task: a task over partitions that executors keep in memory
//! ([`quiver_engine::cluster::cache`]) goes to the executor that keeps them; every other task
//! is placed round robin, as Ballista's `RoundRobin` policy does.
//!
//! Which executor keeps partition `p` of a cached dataset is decided without asking anyone:
//! rendezvous hashing of (fingerprint, `p`) over the executors alive now. The first pass puts
//! each partition on its home executor, which computes and keeps it; later passes go there
//! again. When an executor is lost, only its partitions get new homes (where they are read
//! again); the others stay where they are cached. A partition whose home has no free task slot
//! waits for one — up to the locality wait (Spark's `spark.locality.wait`), counted from the
//! moment its stage became runnable; after that it runs on any free slot, reading its data.
//!
//! This is Ballista's `TaskDistributionPolicy::Custom` plug-in: Ballista still schedules,
//! retries and tracks every task; this only chooses executors.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ballista_core::JobId;
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::{RangeShuffleReaderExec, ShuffleReaderExec};
use ballista_core::serde::protobuf::{AvailableVcores, executor_status, job_status};
use ballista_core::serde::scheduler::TaskKey;
use ballista_scheduler::cluster::{BoundTask, ClusterState, DistributionPolicy};
use ballista_scheduler::state::execution_graph::{TaskDescription, create_task_info};
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use quiver_engine::cluster::cache::CachedPartitionsExec;

/// How long a cached partition waits for a slot on its home executor.
pub const DEFAULT_LOCALITY_WAIT: Duration = Duration::from_secs(3);

/// The distribution policy of Quiver's scheduler (see the module documentation).
pub struct CacheLocality {
    cluster: OnceLock<Arc<dyn ClusterState>>,
    wait: Duration,
    /// Where the next round-robin placement starts.
    next: AtomicUsize,
}

impl std::fmt::Debug for CacheLocality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLocality")
            .field("attached", &self.cluster.get().is_some())
            .field("wait", &self.wait)
            .finish()
    }
}

impl CacheLocality {
    pub fn new(wait: Duration) -> Self {
        CacheLocality {
            cluster: OnceLock::new(),
            wait,
            next: AtomicUsize::new(0),
        }
    }

    /// Gives the policy the scheduler's view of its executors (which exist once the policy's
    /// configuration has built the cluster). Until then every task is placed round robin.
    pub fn attach(&self, cluster: Arc<dyn ClusterState>) {
        let _ = self.cluster.set(cluster);
    }

    /// The executors alive now, sorted.
    fn alive(&self) -> Vec<String> {
        let Some(cluster) = self.cluster.get() else {
            return Vec::new();
        };
        let now = (now_ms() / 1000) as u64;
        let mut ids: Vec<String> = cluster
            .executor_heartbeats()
            .into_iter()
            .filter(|(_, h)| {
                let status = h.status.as_ref().and_then(|s| s.status.as_ref());
                counts_as_alive(status, h.timestamp, now)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }
}

/// How recent (in seconds) a pulling executor's last poll must be for it to count as alive:
/// Ballista's poll loop polls at least every 5 s even while every slot is busy, and the
/// scheduler stamps polls in whole seconds.
const POLL_FRESH_SECS: u64 = 7;

/// Whether an executor whose last heartbeat said `status` at `at` (seconds) takes tasks at
/// `now`. A pulling executor's heartbeat is its poll, which Ballista records with no status at
/// all (only a pushed heartbeat says `Active`): no status is alive, as Ballista's own scheduler
/// counts it under pull scheduling — without this, clusters with a token (whose executors
/// pull) placed every task round robin, and each executor read and kept every partition it
/// happened to get. Such an executor counts only while it polls: one that died stops being a
/// home (whose partitions would wait the locality wait each stage) within seconds, not when the
/// scheduler expires it (the executor timeout).
fn counts_as_alive(status: Option<&executor_status::Status>, at: u64, now: u64) -> bool {
    match status {
        Some(executor_status::Status::Active(_)) => true,
        None => at.saturating_add(POLL_FRESH_SECS) >= now,
        Some(_) => false,
    }
}

/// Which of `executors` keeps each of the `partitions` partitions of the cached dataset
/// `fingerprint` (indices into `executors`; empty without executors). Rendezvous hashing with
/// bounded loads: partition `p` goes to the executor ranking highest for (fingerprint, `p`)
/// among those holding fewer than ⌈partitions / executors⌉ so far — balanced, stable while the
/// executors stay the same, and when one is lost most other partitions keep their home.
pub fn homes(fingerprint: &str, partitions: usize, executors: &[String]) -> Vec<usize> {
    let n = executors.len();
    if n == 0 {
        return Vec::new();
    }
    let cap = partitions.div_ceil(n);
    let mut load = vec![0usize; n];
    (0..partitions)
        .map(|p| {
            let score = |i: usize| {
                let mut h = DefaultHasher::new();
                (fingerprint, p, executors[i].as_str()).hash(&mut h);
                h.finish()
            };
            let home = (0..n)
                .filter(|&i| load[i] < cap)
                .max_by_key(|&i| score(i))
                .unwrap_or(0);
            load[home] += 1;
            home
        })
        .collect()
}

/// The fingerprint of the cache node a stage reads, when the stage's partitions are the
/// node's partitions one for one (every node between the stage's root and the cache node
/// keeps the partitioning).
pub fn cached_fingerprint(plan: &Arc<dyn ExecutionPlan>, partitions: usize) -> Option<String> {
    let mut node = plan;
    loop {
        if let Some(cache) = node.downcast_ref::<CachedPartitionsExec>() {
            return (node.output_partitioning().partition_count() == partitions)
                .then(|| cache.fingerprint().to_string());
        }
        if node.downcast_ref::<ShuffleReaderExec>().is_some()
            || node.downcast_ref::<RangeShuffleReaderExec>().is_some()
        {
            return None;
        }
        match node.children().as_slice() {
            [child] if child.output_partitioning().partition_count() == partitions => node = child,
            _ => return None,
        }
    }
}

/// Whether every partition of a stage must go into one task: its plan narrows to a single
/// partition below the root before any stage boundary (Ballista binds such stages whole).
fn collapses(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn walk(node: &Arc<dyn ExecutionPlan>) -> bool {
        if node.downcast_ref::<ShuffleReaderExec>().is_some()
            || node.downcast_ref::<RangeShuffleReaderExec>().is_some()
        {
            return false;
        }
        if node.output_partitioning().partition_count() == 1 {
            return true;
        }
        match node.children().as_slice() {
            [child] => walk(child),
            _ => false,
        }
    }
    match plan.children().as_slice() {
        [child] => walk(child),
        _ => false,
    }
}

/// The stage's cap on partitions per task (`ballista.scheduler.max_partitions_per_task`).
fn partitions_per_task(stage: &RunningStage) -> usize {
    stage
        .session_config
        .options()
        .extensions
        .get::<BallistaConfig>()
        .map(|c| c.max_partitions_per_task())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX)
}

/// One task of `stage` over `partitions` on `budget`'s executor, taking `vcores` of it.
fn bind(
    stage: &mut RunningStage,
    session_id: &str,
    job_id: &JobId,
    budget: &mut AvailableVcores,
    partitions: Vec<usize>,
    vcores: u32,
) -> BoundTask {
    let task_id = stage.task_infos.len();
    let task_attempt = partitions
        .iter()
        .map(|p| stage.task_failure_numbers[*p])
        .max()
        .unwrap_or(0);
    let mut info = create_task_info(budget.executor_id.clone(), task_id);
    info.global_input_partition_ids = partitions.clone();
    info.vcores_consumed = vcores;
    stage.task_infos.push(info);
    budget.vcores -= vcores;
    (
        budget.executor_id.clone(),
        TaskDescription {
            session_id: session_id.to_string(),
            key: TaskKey {
                job_id: job_id.clone(),
                stage_id: stage.stage_id,
                task_id,
            },
            stage_attempt_num: stage.stage_attempt_num,
            task_attempt,
            global_input_partition_ids: partitions,
            vcores_consumed: vcores,
            plan: Arc::clone(&stage.plan),
            session_config: Arc::clone(&stage.session_config),
        },
    )
}

/// Binds the stage's pending partitions whose home executor has free slots there; the rest
/// stay pending, in their order.
fn bind_at_home(
    stage: &mut RunningStage,
    session_id: &str,
    job_id: &JobId,
    fingerprint: &str,
    alive: &[String],
    budgets: &mut [&mut AvailableVcores],
    bound: &mut Vec<BoundTask>,
) {
    let cap = partitions_per_task(stage);
    let homes = homes(fingerprint, stage.partitions, alive);
    let pending = stage.pending.next_slice(usize::MAX);
    let mut by_budget: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut waiting = Vec::new();
    for p in pending {
        let at = homes
            .get(p)
            .and_then(|&h| budgets.iter().position(|b| b.executor_id == alive[h]));
        match at {
            Some(i) => by_budget.entry(i).or_default().push(p),
            None => waiting.push(p),
        }
    }
    let mut order: Vec<_> = by_budget.into_iter().collect();
    order.sort_by_key(|(i, _)| *i);
    for (i, parts) in order {
        let budget = &mut *budgets[i];
        let mut rest = parts.as_slice();
        while !rest.is_empty() && budget.vcores > 0 {
            let take = rest.len().min(budget.vcores as usize).min(cap);
            let (now, later) = rest.split_at(take);
            bound.push(bind(
                stage,
                session_id,
                job_id,
                budget,
                now.to_vec(),
                take as u32,
            ));
            rest = later;
        }
        waiting.extend_from_slice(rest);
    }
    waiting.sort_unstable();
    stage.pending.reschedule(waiting);
}

/// Binds the stage's pending partitions round robin over the executors with free slots.
fn bind_round_robin(
    stage: &mut RunningStage,
    session_id: &str,
    job_id: &JobId,
    budgets: &mut [&mut AvailableVcores],
    next: &mut usize,
    bound: &mut Vec<BoundTask>,
) {
    let collapse = collapses(&stage.plan);
    let cap = partitions_per_task(stage);
    let n = budgets.len();
    loop {
        let Some(i) = (0..n)
            .map(|k| (*next + k) % n)
            .find(|&i| budgets[i].vcores > 0)
        else {
            return;
        };
        let max = if collapse {
            usize::MAX
        } else {
            (budgets[i].vcores as usize).min(cap)
        };
        let parts = stage.pending.next_slice(max);
        if parts.is_empty() {
            return;
        }
        let vcores = if collapse { 1 } else { parts.len() as u32 };
        bound.push(bind(
            stage,
            session_id,
            job_id,
            &mut *budgets[i],
            parts,
            vcores,
        ));
        *next = (i + 1) % n;
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl DistributionPolicy for CacheLocality {
    async fn bind_tasks(
        &self,
        mut budgets: Vec<&mut AvailableVcores>,
        running_jobs: Arc<HashMap<JobId, JobInfoCache>>,
    ) -> datafusion::error::Result<Vec<BoundTask>> {
        let mut bound = Vec::new();
        if budgets.iter().all(|b| b.vcores == 0) {
            return Ok(bound);
        }
        budgets.sort_by(|a, b| {
            b.vcores
                .cmp(&a.vcores)
                .then(a.executor_id.cmp(&b.executor_id))
        });
        let alive = self.alive();
        let mut next = self.next.load(Ordering::Relaxed) % budgets.len();
        for (job_id, job) in running_jobs.iter() {
            if !matches!(job.status, Some(job_status::Status::Running(_))) {
                continue;
            }
            let mut graph = job.execution_graph.write().await;
            let session_id = graph.session_id().to_string();
            let mut seen = Vec::new();
            while let Some(stage) = graph.fetch_running_stage(&seen) {
                seen.push(stage.stage_id);
                let waited = now_ms().saturating_sub(stage.stage_running_time);
                let local = cached_fingerprint(&stage.plan, stage.partitions)
                    .filter(|_| !alive.is_empty() && waited < self.wait.as_millis());
                match local {
                    Some(fp) => bind_at_home(
                        stage,
                        &session_id,
                        job_id,
                        &fp,
                        &alive,
                        &mut budgets,
                        &mut bound,
                    ),
                    None => bind_round_robin(
                        stage,
                        &session_id,
                        job_id,
                        &mut budgets,
                        &mut next,
                        &mut bound,
                    ),
                }
                if budgets.iter().all(|b| b.vcores == 0) {
                    self.next.store(next, Ordering::Relaxed);
                    return Ok(bound);
                }
            }
        }
        self.next.store(next, Ordering::Relaxed);
        Ok(bound)
    }

    fn name(&self) -> &str {
        "quiver-cache-locality"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushing_executors_say_they_are_alive_and_pulling_ones_while_they_poll() {
        use executor_status::Status;
        let now = 1_000_000;
        let active = Status::Active(String::new());
        assert!(counts_as_alive(Some(&active), now - 60, now));
        assert!(counts_as_alive(None, now, now));
        assert!(
            counts_as_alive(None, now - 6, now),
            "a busy executor polls every 5 s"
        );
        assert!(!counts_as_alive(None, now - 30, now), "it stopped polling");
        for gone in [
            Status::Dead(String::new()),
            Status::Terminating(String::new()),
        ] {
            assert!(!counts_as_alive(Some(&gone), now, now));
        }
    }

    #[test]
    fn partitions_spread_evenly_and_mostly_stay_when_an_executor_is_lost() {
        let three: Vec<String> = ["exec-a", "exec-b", "exec-c"].map(String::from).to_vec();
        let two: Vec<String> = ["exec-a", "exec-c"].map(String::from).to_vec();
        for partitions in [1, 2, 4, 8, 300] {
            let before = homes("fp", partitions, &three);
            assert_eq!(before.len(), partitions);
            // Balanced: no executor holds more than its share, rounded up.
            for e in 0..3 {
                let n = before.iter().filter(|&&h| h == e).count();
                assert!(n <= partitions.div_ceil(3), "{partitions}: {e} holds {n}");
            }
            // Stable: the same question, the same answer.
            assert_eq!(homes("fp", partitions, &three), before);
        }
        let before = homes("fp", 300, &three);
        let after = homes("fp", 300, &two);
        let survivors: Vec<usize> = (0..300).filter(|&p| before[p] != 1).collect();
        let stayed = survivors
            .iter()
            .filter(|&&p| three[before[p]] == two[after[p]])
            .count();
        assert!(
            stayed * 10 >= survivors.len() * 8,
            "only {stayed} of {} partitions on the surviving executors kept their home",
            survivors.len()
        );
        // Another dataset spreads differently.
        assert_ne!(homes("other", 300, &three), before);
        assert!(homes("fp", 4, &[]).is_empty());
    }
}
