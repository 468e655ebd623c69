//! Prepared partitions kept in executor memory between the passes of an iterative fit
//! (Spark's `persist()`).
//!
//! An iterative fit on a cluster wraps its prepared input (the assembled features, label and
//! weight) in a [`CacheNode`] named by a [`fingerprint`] of the plan and of the files it reads.
//! The scheduler plans the node as a [`CachedPartitionsExec`]: the first task over partition
//! `p` runs the plan below it (reads and decodes the files, assembles the features) and keeps
//! the batches in this process; later tasks over the same fingerprint and partition — the next
//! passes of the fit, later fits, trials and folds over the same data — read them from memory.
//! The scheduler's distribution policy sends those tasks back to the executor that holds the
//! partition (`quiver_executor::locality`); a task that lands elsewhere (the executor is gone,
//! or busy past the locality wait) reads the files again and fills that executor's cache.
//!
//! Ballista 55's own `BallistaCacheNode` is a logical placeholder (a fresh id per use, no
//! physical plan), so Quiver plans its own node.
//!
//! The cache holds at most [`budget`] bytes per process (`quiver-executor --cache-memory`,
//! default a quarter of the host's memory), the least recently used partitions dropped first;
//! a partition larger than the whole budget passes through uncached.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::source_as_provider;
use datafusion::error::Result as DFResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt as _;
use sha2::{Digest, Sha256};

use crate::reuse::Lru;

/// Kept partitions by `fingerprint/partition identity`.
fn kept() -> &'static Mutex<Lru<Arc<[RecordBatch]>>> {
    static KEPT: OnceLock<Mutex<Lru<Arc<[RecordBatch]>>>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

/// 0: not set (the default applies).
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// A quarter of the memory this process may use (the host's, or its container's limit; 4 GiB
/// where neither can be read).
fn default_budget() -> usize {
    crate::config::usable_memory().unwrap_or(16 << 30) / 4
}

/// The most bytes this process keeps.
pub fn budget() -> usize {
    match BUDGET.load(Ordering::Relaxed) {
        0 => default_budget(),
        b => b,
    }
}

/// Sets the most bytes this process keeps (`0`: caching off), dropping the least recently
/// used partitions beyond it now.
pub fn set_budget(bytes: usize) {
    // 0 means "unset" in BUDGET; store 1 for "off" (nothing fits in one byte).
    BUDGET.store(bytes.max(1), Ordering::Relaxed);
    if let Ok(mut k) = kept().lock() {
        k.shrink_to(bytes);
    }
}

fn lookup(key: &str) -> Option<Arc<[RecordBatch]>> {
    kept().lock().ok()?.get(key)
}

fn keep(key: &str, batches: Vec<RecordBatch>, bytes: usize) {
    let limit = budget();
    if bytes > limit {
        return;
    }
    if let Ok(mut k) = kept().lock() {
        k.put(key.to_string(), batches.into(), bytes, limit);
    }
}

/// Drops every partition this process keeps of the dataset `fingerprint`: how many, and
/// their bytes.
pub fn forget(fingerprint: &str) -> (usize, usize) {
    let prefix = format!("{fingerprint}/");
    kept()
        .lock()
        .map(|mut k| k.remove_where(|key| key.starts_with(&prefix)))
        .unwrap_or((0, 0))
}

/// The fingerprint of a plan persisted on the executors ([`CacheNode::plan`] at its root).
pub fn persisted_fingerprint(plan: &LogicalPlan) -> Option<&str> {
    match plan {
        LogicalPlan::Extension(Extension { node }) => node
            .as_any()
            .downcast_ref::<CacheNode>()
            .map(CacheNode::fingerprint),
        _ => None,
    }
}

/// A task that drops one persisted dataset's partitions in the process that runs it
/// (`QuiverSession::unpersist` sends one to every executor). Params: `{"fingerprint": …}`;
/// metrics: this process's [`crate::fanout::WorkerInfo`] and what it dropped.
#[derive(Debug)]
pub struct UnpersistTask;

/// The kind of [`UnpersistTask`].
pub const UNPERSIST: &str = "quiver.unpersist";

impl crate::fanout::TaskRunner for UnpersistTask {
    fn kind(&self) -> &str {
        UNPERSIST
    }

    fn run(&self, params: &str) -> crate::Result<crate::fanout::TaskOutcome> {
        let p: serde_json::Value =
            serde_json::from_str(params).map_err(|source| crate::QuiverError::Json {
                context: "unpersist task parameters".to_string(),
                source,
            })?;
        let fingerprint = p["fingerprint"]
            .as_str()
            .ok_or_else(|| crate::QuiverError::internal("unpersist task without a fingerprint"))?;
        // Wait a little, as the probe does, so that every executor gets some of the tasks.
        let ms = p["ms"].as_u64().unwrap_or(0).min(200);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let (partitions, bytes) = forget(fingerprint);
        if partitions > 0 {
            log::info!(
                "unpersist: dropped {partitions} partitions ({bytes} bytes) of {fingerprint}"
            );
        }
        Ok(crate::fanout::TaskOutcome {
            loss: None,
            metrics: serde_json::json!({
                "worker": crate::fanout::WorkerInfo::here(),
                "partitions": partitions,
                "bytes": bytes,
            }),
        })
    }
}

/// The identity of a prepared dataset: its plan (as text, with schemas), the files each
/// listing table in it reads (path, size, modification time: rewritten data is a new
/// fingerprint) and the settings that decide how the files split into partitions. `None` when
/// the plan reads something that cannot be fingerprinted (an in-memory table, a source the
/// client cannot list): such data is read on every pass, as without the cache.
pub async fn fingerprint(plan: &LogicalPlan, session: &dyn Session) -> Option<String> {
    let mut tables = Vec::new();
    let mut plain = true;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<ListingTable>().cloned())
            {
                Some(listing) => tables.push(listing),
                None => {
                    plain = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    if !plain {
        return None;
    }
    let mut hash = Sha256::new();
    hash.update(plan.display_indent_schema().to_string().as_bytes());
    let options = session.config_options();
    hash.update(
        format!(
            "|{}|{}|{}|{}|",
            options.execution.target_partitions,
            options.execution.batch_size,
            options.optimizer.repartition_file_scans,
            options.optimizer.repartition_file_min_size
        )
        .as_bytes(),
    );
    for table in tables {
        for url in table.table_paths() {
            // Straight from the store: DataFusion's listing caches could hold an old listing.
            let store = session.runtime_env().object_store(url).ok()?;
            let mut files: Vec<_> = if url.is_collection() {
                store
                    .list(Some(url.prefix()))
                    .map_ok(|m| (m.location.to_string(), m.size, m.last_modified, m.e_tag))
                    .try_collect()
                    .await
                    .ok()?
            } else {
                let m = store.head(url.prefix()).await.ok()?;
                vec![(m.location.to_string(), m.size, m.last_modified, m.e_tag)]
            };
            files.sort();
            hash.update(url.as_str().as_bytes());
            for (path, size, modified, tag) in files {
                hash.update(
                    format!("|{path}|{size}|{modified}|{}", tag.unwrap_or_default()).as_bytes(),
                );
            }
        }
    }
    let digest = hash.finalize();
    Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// The logical node: "keep this input's partitions in executor memory under `fingerprint`".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CacheNode {
    fingerprint: String,
    input: LogicalPlan,
}

impl CacheNode {
    pub fn new(fingerprint: String, input: LogicalPlan) -> Self {
        CacheNode { fingerprint, input }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `input` under a cache node, as a plan.
    pub fn plan(fingerprint: String, input: LogicalPlan) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(CacheNode::new(fingerprint, input)),
        })
    }
}

impl UserDefinedLogicalNodeCore for CacheNode {
    fn name(&self) -> &str {
        "QuiverCache"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &datafusion::common::DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "QuiverCache: fingerprint={}", self.fingerprint)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        let [input] = <[LogicalPlan; 1]>::try_from(inputs).map_err(|_| {
            datafusion::error::DataFusionError::Plan("QuiverCache takes one input".to_string())
        })?;
        Ok(CacheNode {
            fingerprint: self.fingerprint.clone(),
            input,
        })
    }
}

/// The physical node: partition `p` comes from this process's cache when it holds it, else
/// from the input (and is kept for next time).
#[derive(Debug, Clone)]
pub struct CachedPartitionsExec {
    fingerprint: String,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl CachedPartitionsExec {
    pub fn new(fingerprint: String, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(PlanProperties::clone(input.properties()));
        CachedPartitionsExec {
            fingerprint,
            input,
            properties,
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for CachedPartitionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedPartitionsExec: fingerprint={}", self.fingerprint)
    }
}

impl ExecutionPlan for CachedPartitionsExec {
    fn name(&self) -> &str {
        "CachedPartitionsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // Repartitioning below would change what partition `p` holds.
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "CachedPartitionsExec takes one input, got {}",
                children.len()
            )));
        }
        let input = children.swap_remove(0);
        Ok(Arc::new(match options.children_properties {
            ChildrenPropertiesMode::Keep => CachedPartitionsExec {
                input,
                ..CachedPartitionsExec::clone(&self)
            },
            ChildrenPropertiesMode::Recompute => {
                CachedPartitionsExec::new(self.fingerprint.clone(), input)
            }
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let schema = self.schema();
        // The scheduler renumbers a task's partitions from 0 (it restricts the plan to them):
        // a partition is known by what it reads, never by its index.
        let Some(part) = partition_identity(&self.input, partition) else {
            return self.input.execute(partition, context);
        };
        let key = format!("{}/{part}", self.fingerprint);
        if let Some(batches) = lookup(&key) {
            let batches: Vec<DFResult<RecordBatch>> = batches.iter().cloned().map(Ok).collect();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(batches),
            )));
        }
        Ok(Box::pin(Filling {
            key,
            partition,
            schema,
            input: self.input.execute(partition, context)?,
            kept: Some(Vec::new()),
            bytes: 0,
            limit: budget(),
        }))
    }
}

/// What partition `partition` of `plan` reads, when the plan is a chain of one-input nodes
/// that keep the partitioning down to a file scan: its files and byte ranges. `None` for
/// anything else (such partitions are not cached).
fn partition_identity(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Option<String> {
    use std::fmt::Write;
    let count = plan.output_partitioning().partition_count();
    let mut node = plan;
    loop {
        if let Some(scan) = node.downcast_ref::<DataSourceExec>() {
            let source: &dyn std::any::Any = scan.data_source().as_ref();
            let config = source.downcast_ref::<FileScanConfig>()?;
            let mut id = String::new();
            for f in config.file_groups.get(partition)?.files() {
                let _ = write!(id, "{}", f.object_meta.location);
                if let Some(r) = &f.range {
                    let _ = write!(id, "[{}..{}]", r.start, r.end);
                }
                id.push(';');
            }
            return Some(id);
        }
        match node.children().as_slice() {
            [child] if child.output_partitioning().partition_count() == count => node = child,
            _ => return None,
        }
    }
}

/// Passes the input's batches on and keeps them; on a clean end, puts them in the cache.
struct Filling {
    key: String,
    partition: usize,
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    /// `None` once the partition turned out larger than the budget, or failed.
    kept: Option<Vec<RecordBatch>>,
    bytes: usize,
    limit: usize,
}

impl Stream for Filling {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = this.input.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(batch))) => {
                this.bytes += batch.get_array_memory_size();
                if this.bytes > this.limit {
                    this.kept = None;
                } else if let Some(kept) = &mut this.kept {
                    kept.push(batch.clone());
                }
            }
            Poll::Ready(Some(Err(_))) => this.kept = None,
            Poll::Ready(None) => {
                if let Some(kept) = this.kept.take() {
                    let rows: usize = kept.iter().map(|b| b.num_rows()).sum();
                    log::info!(
                        "kept partition {} ({}): {rows} rows, {:.1} MiB",
                        this.partition,
                        this.key,
                        this.bytes as f64 / (1u64 << 20) as f64
                    );
                    keep(&this.key, kept, this.bytes);
                }
            }
            Poll::Pending => {}
        }
        next
    }
}

impl RecordBatchStream for Filling {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// Plans [`CacheNode`]s as [`CachedPartitionsExec`]s; with `pass_through`, as their input
/// (a cluster client reading data in its own process keeps nothing: the executors do).
#[derive(Debug, Default)]
pub struct CachePlanner {
    pub pass_through: bool,
}

#[async_trait]
impl ExtensionPlanner for CachePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(cache) = node.as_any().downcast_ref::<CacheNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(datafusion::error::DataFusionError::Internal(
                "QuiverCache takes one input".to_string(),
            ));
        };
        if self.pass_through {
            return Ok(Some(Arc::clone(input)));
        }
        Ok(Some(Arc::new(CachedPartitionsExec::new(
            cache.fingerprint.clone(),
            Arc::clone(input),
        ))))
    }
}

/// DataFusion's planner with Quiver's [`CachePlanner`]: the query planner of embedded sessions
/// and of the scheduler.
#[derive(Debug, Default)]
pub struct QuiverQueryPlanner;

#[async_trait]
impl QueryPlanner for QuiverQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(CachePlanner::default())])
            .create_physical_plan(logical_plan, session)
            .await
    }
}
