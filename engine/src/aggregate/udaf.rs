//! The embedded runner: a statistic as a DataFusion `AggregateUDF` whose accumulator wraps it
//! (partial aggregate per partition, final merge), with its parameters in the UDF instance.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, cast, col};

use super::Statistic;
use crate::dataset::Dataset;
use crate::error::{QuiverError, Result};
use crate::vector::{FeatureBatch, numeric_values, vector_values};

/// A [`Statistic`] as a DataFusion aggregate function. Its arguments are the feature vector,
/// then the label and the weight when the statistic reads them; it returns the merged state
/// as bytes, which [`run_embedded`] decodes and finishes.
#[derive(Debug)]
pub struct StatisticUdaf<S: Statistic> {
    stat: Arc<S>,
    params: Vec<u8>,
    signature: Signature,
}

impl<S: Statistic> StatisticUdaf<S> {
    pub fn new(stat: Arc<S>) -> Result<Self> {
        let params = stat.params()?;
        let inputs = stat.inputs();
        let n_args = 1 + inputs.label as usize + inputs.weight as usize;
        Ok(StatisticUdaf {
            stat,
            params,
            signature: Signature::any(n_args, Volatility::Immutable),
        })
    }

    /// The statistic this function computes.
    pub fn statistic(&self) -> &Arc<S> {
        &self.stat
    }

    /// The statistic's parameters (its identity in plans and its codec payload).
    pub fn params(&self) -> &[u8] {
        &self.params
    }
}

impl<S: Statistic> PartialEq for StatisticUdaf<S> {
    fn eq(&self, other: &Self) -> bool {
        self.stat.name() == other.stat.name() && self.params == other.params
    }
}

impl<S: Statistic> Eq for StatisticUdaf<S> {}

impl<S: Statistic> Hash for StatisticUdaf<S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.stat.name().hash(state);
        self.params.hash(state);
    }
}

impl<S: Statistic> AggregateUDFImpl for StatisticUdaf<S> {
    fn name(&self) -> &str {
        self.stat.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DFResult<Box<dyn Accumulator>> {
        Ok(Box::new(StatisticAccumulator::new(Arc::clone(&self.stat))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DFResult<Vec<FieldRef>> {
        Ok(binary_state_field(args.name))
    }
}

/// The one partial-state field of a statistic's aggregate: its encoded state.
pub(crate) fn binary_state_field(name: &str) -> Vec<FieldRef> {
    vec![Arc::new(Field::new(
        format_state_name(name, "state"),
        DataType::Binary,
        true,
    ))]
}

/// An accumulator that runs a statistic: update on feature batches, merge encoded states.
#[derive(Debug)]
pub(crate) struct StatisticAccumulator<S: Statistic> {
    stat: Arc<S>,
    state: S::State,
}

impl<S: Statistic> StatisticAccumulator<S> {
    pub(crate) fn new(stat: Arc<S>) -> Self {
        StatisticAccumulator {
            state: stat.init(),
            stat,
        }
    }

    pub(crate) fn statistic(&self) -> &S {
        &self.stat
    }

    pub(crate) fn current_state(&self) -> &S::State {
        &self.state
    }

    pub(crate) fn update(&mut self, values: &[ArrayRef]) -> Result<()> {
        let inputs = self.stat.inputs();
        let features = values
            .first()
            .ok_or_else(|| QuiverError::internal("aggregate called without features"))?;
        if features.is_empty() {
            return Ok(());
        }
        let (vals, dim) = vector_values(features.as_ref(), "features")?;
        if dim != self.stat.dim() {
            return Err(QuiverError::InvalidParam {
                param: "features".to_string(),
                reason: format!(
                    "{} expects {} features per row, the data has {dim}",
                    self.stat.name(),
                    self.stat.dim()
                ),
            });
        }
        let mut next = 1;
        let label = if inputs.label {
            next += 1;
            Some(numeric_values(&values[next - 1], "label")?)
        } else {
            None
        };
        let weight = if inputs.weight {
            Some(numeric_values(&values[next], "weight")?)
        } else {
            None
        };
        let mut batch = FeatureBatch::new(vals, dim)?;
        batch.label = label.as_deref();
        batch.weight = weight.as_deref();
        self.stat.update(&mut self.state, &batch)
    }

    pub(crate) fn merge(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = states
            .first()
            .and_then(|a| a.as_binary_opt::<i32>())
            .ok_or_else(|| QuiverError::internal("statistic state is not binary"))?;
        for i in 0..states.len() {
            if states.is_valid(i) {
                let other = self.stat.decode_state(states.value(i))?;
                self.stat.merge(&mut self.state, &other)?;
            }
        }
        Ok(())
    }

    pub(crate) fn encoded(&self) -> ScalarValue {
        let mut out = Vec::new();
        self.stat.encode_state(&self.state, &mut out);
        ScalarValue::Binary(Some(out))
    }
}

impl<S: Statistic> Accumulator for StatisticAccumulator<S> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DFResult<()> {
        self.update(values).map_err(QuiverError::into_datafusion)
    }

    fn evaluate(&mut self) -> DFResult<ScalarValue> {
        Ok(self.encoded())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.stat.state_size(&self.state)
    }

    fn state(&mut self) -> DFResult<Vec<ScalarValue>> {
        Ok(vec![self.encoded()])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DFResult<()> {
        self.merge(states).map_err(QuiverError::into_datafusion)
    }
}

/// The argument expressions for a statistic over `dataset`: features, then label and weight
/// (cast to `Float64`) when the statistic reads them.
pub(crate) fn statistic_args(dataset: &Dataset, stat: &impl Statistic) -> Result<Vec<Expr>> {
    let inputs = stat.inputs();
    let mut args = vec![dataset.features_expr()?];
    if inputs.label {
        let label = dataset.label().ok_or_else(|| QuiverError::InvalidParam {
            param: "label".to_string(),
            reason: format!("{} needs a label column; the dataset has none", stat.name()),
        })?;
        args.push(cast(col(quoted_name(label)), DataType::Float64));
    }
    if inputs.weight {
        let weight = dataset.weight().ok_or_else(|| QuiverError::InvalidParam {
            param: "weight".to_string(),
            reason: format!(
                "{} needs a weight column; the dataset has none",
                stat.name()
            ),
        })?;
        args.push(cast(col(quoted_name(weight)), DataType::Float64));
    }
    Ok(args)
}

/// A column reference that keeps the name's case and punctuation.
pub fn quoted_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `stat` over `dataset` as one DataFusion aggregate query: a partial aggregate per
/// partition, then the final merge. A null or NaN met on the way is reported with its column
/// and its row in the dataset's natural order.
pub async fn run_embedded<S: Statistic>(dataset: &Dataset, stat: Arc<S>) -> Result<S::Output> {
    let dim = dataset.feature_dim()?;
    if dim != stat.dim() {
        return Err(QuiverError::InvalidParam {
            param: "features".to_string(),
            reason: format!(
                "{} expects {} features per row, the data has {dim}",
                stat.name(),
                stat.dim()
            ),
        });
    }
    let args = statistic_args(dataset, stat.as_ref())?;
    let udaf = AggregateUDF::from(StatisticUdaf::new(Arc::clone(&stat))?);
    let df = dataset
        .dataframe()
        .clone()
        .aggregate(vec![], vec![udaf.call(args).alias(super::STATE_COLUMN)])?;
    let batches = match df.collect().await.map_err(QuiverError::from) {
        Ok(b) => b,
        Err(
            e @ (QuiverError::InvalidValueInBatch { .. } | QuiverError::VectorLengthInBatch { .. }),
        ) => {
            // The dataset row; if the data cannot be read here, the batch's row at least.
            return Err(dataset.locate_invalid().await.ok().flatten().unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    // One row per partition (or one merged row): merged in the order of their bytes, so the
    // result does not depend on which partition finished first.
    let mut states: Vec<&[u8]> = Vec::new();
    for batch in &batches {
        let column = batch
            .column(0)
            .as_binary_opt::<i32>()
            .ok_or_else(|| QuiverError::internal("aggregate query returned a non-binary state"))?;
        states.extend(column.iter().flatten());
    }
    states.sort_unstable();
    let mut state = stat.init();
    for bytes in states {
        let other = stat.decode_state(bytes)?;
        stat.merge(&mut state, &other)?;
    }
    stat.finish(state)
}
