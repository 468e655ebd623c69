//! Quiver's Ballista extension codecs: Ballista's own codecs for plans, plus the parameter
//! payloads of Quiver's stateful functions (statistics, model maps, `ml_predict`).

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use super::cache::{CacheNode, CachedPartitionsExec};
use crate::error::QuiverError;
use crate::registry::FunctionRegistry;

/// Marks a payload written by this codec (and its format version).
const MAGIC: &[u8] = b"QVR1";

fn cluster_error(msg: String) -> DataFusionError {
    QuiverError::Cluster(msg).into_datafusion()
}

/// The payload of a stateful scalar function, or nothing for a function that travels by name.
fn encode_scalar(functions: &FunctionRegistry, udf: &ScalarUDF, buf: &mut Vec<u8>) -> DFResult<()> {
    if let Some(codec) = functions.scalar_codec(udf.name())
        && let Some(params) = (codec.encode)(udf)
    {
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&params.map_err(QuiverError::into_datafusion)?);
    }
    Ok(())
}

fn encode_aggregate(
    functions: &FunctionRegistry,
    udaf: &AggregateUDF,
    buf: &mut Vec<u8>,
) -> DFResult<()> {
    if let Some(codec) = functions.aggregate_codec(udaf.name())
        && let Some(params) = (codec.encode)(udaf)
    {
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&params.map_err(QuiverError::into_datafusion)?);
    }
    Ok(())
}

/// The parameter bytes after the marker; a payload without it was not written by Quiver.
/// A function's parameters framed as the codecs send them (what a plan carries): for tools
/// and tests that build plan payloads by hand.
pub fn framed_payload(params: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(params);
    out
}

fn payload<'a>(name: &str, buf: &'a [u8]) -> DFResult<&'a [u8]> {
    buf.strip_prefix(MAGIC).ok_or_else(|| {
        cluster_error(format!(
            "function '{name}' arrived with parameters this process cannot read \
             (a different Quiver version on the client, scheduler and executors?)"
        ))
    })
}

fn decode_scalar(functions: &FunctionRegistry, name: &str, buf: &[u8]) -> DFResult<Arc<ScalarUDF>> {
    if buf.is_empty() {
        if let Some(f) = functions.scalar(name) {
            return Ok(Arc::new(f.clone()));
        }
        if functions.scalar_codec(name).is_some() {
            return Err(cluster_error(format!(
                "function '{name}' arrived without its parameters; it cannot run without them"
            )));
        }
        return Err(unknown_function(name));
    }
    let codec = functions
        .scalar_codec(name)
        .ok_or_else(|| unknown_function(name))?;
    (codec.decode)(payload(name, buf)?)
        .map(Arc::new)
        .map_err(QuiverError::into_datafusion)
}

fn decode_aggregate(
    functions: &FunctionRegistry,
    name: &str,
    buf: &[u8],
) -> DFResult<Arc<AggregateUDF>> {
    if buf.is_empty() {
        if let Some(f) = functions.aggregate(name) {
            return Ok(Arc::new(f.clone()));
        }
        if functions.aggregate_codec(name).is_some() {
            return Err(cluster_error(format!(
                "aggregate '{name}' arrived without its parameters; it cannot run without them"
            )));
        }
        return Err(unknown_function(name));
    }
    let codec = functions
        .aggregate_codec(name)
        .ok_or_else(|| unknown_function(name))?;
    (codec.decode)(payload(name, buf)?)
        .map(Arc::new)
        .map_err(QuiverError::into_datafusion)
}

fn unknown_function(name: &str) -> DataFusionError {
    cluster_error(format!(
        "function '{name}' is not known to this process: start the scheduler and executors \
         with quiver-scheduler / quiver-executor of the same Quiver version as the client"
    ))
}

/// Marks an in-memory table shipped inside the plan (Arrow IPC per partition).
const MEMORY_TABLE: &[u8] = b"QVRMEM1";

/// Marks a [`CacheNode`] / [`CachedPartitionsExec`]; its fingerprint follows.
const CACHE_NODE: &[u8] = b"QVRCACHE1";

fn utf8(bytes: &[u8]) -> DFResult<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| cluster_error("a cache node's fingerprint is not text".to_string()))
}

/// In-memory tables up to this size travel inside the plan (gRPC messages are 16 MiB).
const MAX_MEMORY_TABLE_BYTES: usize = 8 << 20;

/// Small in-process tables (a table function's result, a table of trials) travel inside the
/// plan, so the cluster can scan them.
fn encode_memory_table(
    table_ref: &TableReference,
    mem: &MemTable,
    buf: &mut Vec<u8>,
) -> DFResult<()> {
    let start = buf.len();
    buf.extend_from_slice(MEMORY_TABLE);
    buf.extend_from_slice(&(mem.batches.len() as u64).to_le_bytes());
    for partition in &mem.batches {
        let batches = partition.try_read().map_err(|_| {
            cluster_error(format!(
                "table '{table_ref}' is being written while it is sent"
            ))
        })?;
        let mut ipc = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut ipc, &mem.schema())?;
            for b in batches.iter() {
                w.write(b)?;
            }
            w.finish()?;
        }
        buf.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        buf.extend_from_slice(&ipc);
        if buf.len() - start > MAX_MEMORY_TABLE_BYTES {
            return Err(cluster_error(format!(
                "table '{table_ref}' lives in this process and is larger than {} MiB, too large \
                 to send inside a query plan: write it to Parquet on a store the executors can \
                 read, then read it from there",
                MAX_MEMORY_TABLE_BYTES >> 20
            )));
        }
    }
    Ok(())
}

fn decode_memory_table(mut buf: &[u8], schema: SchemaRef) -> DFResult<Arc<dyn TableProvider>> {
    let take_u64 = |buf: &mut &[u8]| -> DFResult<u64> {
        let (head, rest) = buf
            .split_at_checked(8)
            .ok_or_else(|| cluster_error("a truncated in-memory table".to_string()))?;
        *buf = rest;
        Ok(u64::from_le_bytes(head.try_into().unwrap_or([0; 8])))
    };
    let n = take_u64(&mut buf)?;
    // Every partition takes at least its 8-byte length: a count the payload cannot hold is a
    // damaged plan, refused before anything is allocated for it.
    if n > (buf.len() / 8) as u64 {
        return Err(cluster_error(format!(
            "an in-memory table claims {n} partitions in {} bytes",
            buf.len()
        )));
    }
    let mut partitions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = take_u64(&mut buf)?;
        let (ipc, rest) = usize::try_from(len)
            .ok()
            .and_then(|len| buf.split_at_checked(len))
            .ok_or_else(|| cluster_error("a truncated in-memory table".to_string()))?;
        buf = rest;
        // The IPC reader panics on some damaged schemas: an error, not a crashed process.
        let read =
            std::panic::catch_unwind(|| -> DFResult<Vec<datafusion::arrow::array::RecordBatch>> {
                let reader = StreamReader::try_new(ipc, None)?;
                Ok(reader.collect::<Result<Vec<_>, _>>()?)
            });
        partitions.push(read.unwrap_or_else(|_| {
            Err(cluster_error(
                "an in-memory table's Arrow data is damaged".to_string(),
            ))
        })?);
    }
    Ok(Arc::new(MemTable::try_new(schema, partitions)?))
}

/// The function methods both codecs share (the two traits declare them alike).
macro_rules! function_payload_methods {
    () => {
        fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<ScalarUDF>> {
            decode_scalar(&self.functions, name, buf)
        }

        fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DFResult<()> {
            encode_scalar(&self.functions, node, buf)
        }

        fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DFResult<Arc<AggregateUDF>> {
            decode_aggregate(&self.functions, name, buf)
        }

        fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DFResult<()> {
            encode_aggregate(&self.functions, node, buf)
        }
    };
}

/// Logical plans: Ballista's codec, plus Quiver's function payloads.
#[derive(Debug)]
pub struct QuiverLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
    functions: Arc<FunctionRegistry>,
}

impl QuiverLogicalCodec {
    pub fn new(functions: Arc<FunctionRegistry>) -> Self {
        QuiverLogicalCodec {
            inner: BallistaLogicalExtensionCodec::default(),
            functions,
        }
    }
}

impl LogicalExtensionCodec for QuiverLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DFResult<Extension> {
        if let Some(fingerprint) = buf.strip_prefix(CACHE_NODE) {
            let [input] = inputs else {
                return Err(cluster_error(
                    "a cache node arrived without its input".into(),
                ));
            };
            return Ok(Extension {
                node: Arc::new(CacheNode::new(utf8(fingerprint)?, input.clone())),
            });
        }
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DFResult<()> {
        if let Some(cache) = node.node.as_any().downcast_ref::<CacheNode>() {
            buf.extend_from_slice(CACHE_NODE);
            buf.extend_from_slice(cache.fingerprint().as_bytes());
            return Ok(());
        }
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn TableProvider>> {
        match buf.strip_prefix(MEMORY_TABLE) {
            Some(rest) => decode_memory_table(rest, schema),
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DFResult<()> {
        if let Some(mem) = node.downcast_ref::<MemTable>() {
            return encode_memory_table(table_ref, mem, buf);
        }
        self.inner
            .try_encode_table_provider(table_ref, node, buf)
            .map_err(|_| {
                cluster_error(format!(
                    "table '{table_ref}' lives in this process (an in-memory or custom table) \
                     and cannot be sent to the cluster: write it to Parquet on a store the \
                     executors can read, then read it from there"
                ))
            })
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DFResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    function_payload_methods!();
}

/// Physical plans (scheduler to executors): Ballista's codec, plus Quiver's function payloads.
#[derive(Debug)]
pub struct QuiverPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
    functions: Arc<FunctionRegistry>,
}

impl QuiverPhysicalCodec {
    pub fn new(functions: Arc<FunctionRegistry>) -> Self {
        QuiverPhysicalCodec {
            inner: BallistaPhysicalExtensionCodec::default(),
            functions,
        }
    }
}

impl PhysicalExtensionCodec for QuiverPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if let Some(fingerprint) = buf.strip_prefix(CACHE_NODE) {
            let [input] = inputs else {
                return Err(cluster_error(
                    "a cache node arrived without its input".into(),
                ));
            };
            return Ok(Arc::new(CachedPartitionsExec::new(
                utf8(fingerprint)?,
                Arc::clone(input),
            )));
        }
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<()> {
        if let Some(cache) = node.downcast_ref::<CachedPartitionsExec>() {
            buf.extend_from_slice(CACHE_NODE);
            buf.extend_from_slice(cache.fingerprint().as_bytes());
            return Ok(());
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    function_payload_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StatisticUdaf;
    use crate::summary::Summarizer;
    use datafusion::arrow::array::{Float64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn codec() -> QuiverLogicalCodec {
        QuiverLogicalCodec::new(Arc::new(FunctionRegistry::with_engine_functions()))
    }

    #[test]
    fn a_statistic_travels_with_its_parameters_and_never_without() {
        let c = codec();
        let udaf = AggregateUDF::from(StatisticUdaf::new(Arc::new(Summarizer::new(3))).unwrap());
        let mut buf = Vec::new();
        c.try_encode_udaf(&udaf, &mut buf).unwrap();
        assert!(buf.starts_with(MAGIC));
        let back = c.try_decode_udaf("feature_summary", &buf).unwrap();
        assert_eq!(back.as_ref(), &udaf);
        // Without its state (a plan from a process without the codec) or with foreign bytes:
        // an error, never a default instance.
        let e = c.try_decode_udaf("feature_summary", &[]).unwrap_err();
        assert!(e.to_string().contains("without its parameters"), "{e}");
        let e = c.try_decode_udaf("feature_summary", b"junk").unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        let e = c.try_decode_udf("no_such_function", &[]).unwrap_err();
        assert!(e.to_string().contains("not known to this process"), "{e}");
        // Stateless functions travel by name.
        let assemble = FunctionRegistry::with_engine_functions()
            .scalar("vector_assemble")
            .cloned()
            .unwrap();
        let mut buf = Vec::new();
        c.try_encode_udf(&assemble, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            c.try_decode_udf("vector_assemble", &buf).unwrap().name(),
            "vector_assemble"
        );
    }

    #[test]
    fn in_memory_tables_travel_inside_the_plan() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let batch = |v: Vec<f64>| {
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Float64Array::from(v))])
                .unwrap()
        };
        let table = MemTable::try_new(
            Arc::clone(&schema),
            vec![
                vec![batch(vec![1.0, 2.0])],
                vec![batch(vec![3.0]), batch(vec![4.0])],
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let name = TableReference::bare("t");
        codec()
            .try_encode_table_provider(&name, Arc::new(table), &mut buf)
            .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let back = codec()
            .try_decode_table_provider(&buf, &name, Arc::clone(&schema), &ctx.task_ctx())
            .unwrap();
        let mem = back.downcast_ref::<MemTable>().unwrap();
        assert_eq!(mem.batches.len(), 2);
        let rows: Vec<usize> = mem
            .batches
            .iter()
            .map(|p| p.try_read().unwrap().iter().map(|b| b.num_rows()).sum())
            .collect();
        assert_eq!(rows, [2, 2]);
    }
}
