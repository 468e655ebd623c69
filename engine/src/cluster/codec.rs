//! Quiver's Ballista extension codecs: Ballista's own codecs for plans, plus the parameter
//! payloads of Quiver's stateful functions (statistics, model maps, `ml_predict`).

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

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
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DFResult<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DFResult<Arc<dyn TableProvider>> {
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DFResult<()> {
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
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

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
}
