//! Per-row attributions of a stored model's predictions, for `ml_explain_predict` (a row's
//! prediction with its top features and the baseline) and `ml_global_explain` (the mean
//! absolute attribution of each feature over a set of rows). The rows go through the model's
//! own preprocessing and vector stages, so the attributions are of the features the
//! predictor sees (`color_red`, `age`), named as `ml_weights` names them.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use futures::StreamExt;
use quiver_engine::vector::{Missing, assemble_with, vector_values};
use quiver_engine::{FeatureBatch, QuiverSession};
use quiver_mllib::RowPredictor;
use quiver_mllib::catalog::{self, Attribution};
use quiver_mllib::explain::{Explained, Explainer, explain_rows, top_features};

use crate::error::{Result, SqlError};
use crate::models::LoadedModel;

/// A stored model ready to explain rows.
#[derive(Debug)]
pub(crate) struct Attributor<'a> {
    function: &'static str,
    model: String,
    rows: &'a RowPredictor,
    explainer: Arc<dyn Explainer>,
    /// The input columns, in the model's order.
    inputs: Vec<String>,
    /// The names of the predictor's features.
    pub features: Vec<String>,
}

/// A batch's attributions: per row the explained output and `dim` attributions.
pub(crate) struct Attributions {
    pub dim: usize,
    pub phi: Vec<f64>,
    pub explained: Vec<Explained>,
    /// The encoded (or assembled) rows, what the model's prediction functions take.
    pub encoded: Vec<f64>,
    pub encoded_dim: usize,
}

impl<'a> Attributor<'a> {
    /// `model`'s explainer, or an error naming the model kinds that have one.
    pub fn new(
        function: &'static str,
        model: &str,
        kind: &str,
        rows: &'a RowPredictor,
        fallback_inputs: Vec<String>,
        feature_names: Vec<String>,
    ) -> Result<Self> {
        let Some(explainer) = rows.explainer.clone() else {
            let attributed = catalog::ALGORITHMS
                .iter()
                .any(|a| a.name == kind && a.attribution != Attribution::None);
            let why = if attributed {
                "was stored without the training statistics attributions need; train it again"
                    .to_string()
            } else {
                format!(
                    "is a {kind} model, which has no feature attributions (models that have them: {})",
                    catalog::model_types_where(|a| a.attribution != Attribution::None)
                )
            };
            return Err(SqlError::Invalid(format!(
                "{function}: model '{model}' {why}"
            )));
        };
        let inputs = rows.inputs.clone().unwrap_or(fallback_inputs);
        let features = (0..explainer.dim())
            .map(|j| {
                feature_names
                    .get(j)
                    .filter(|_| feature_names.len() == explainer.dim())
                    .cloned()
                    .unwrap_or_else(|| format!("feature {j}"))
            })
            .collect();
        Ok(Attributor {
            function,
            model: model.to_string(),
            rows,
            explainer,
            inputs,
            features,
        })
    }

    /// Checks that `batch` has the model's input columns (before any row is read).
    pub fn check_columns(&self, names: &[String], source: &str) -> Result<()> {
        for c in &self.inputs {
            if !names.contains(c) {
                return Err(SqlError::Invalid(format!(
                    "{}: {source} lacks the column '{c}' of model '{}' (it has {})",
                    self.function,
                    self.model,
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The model's input arrays of `batch`, in order.
    fn arrays(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.inputs
            .iter()
            .map(|c| {
                batch.column_by_name(c).cloned().ok_or_else(|| {
                    SqlError::Invalid(format!(
                        "{}: the rows lack the column '{c}' of model '{}'",
                        self.function, self.model
                    ))
                })
            })
            .collect()
    }

    /// The attributions of every row of `batch`, computed on `session`'s compute threads.
    pub fn explain(&self, session: &QuiverSession, batch: &RecordBatch) -> Result<Attributions> {
        let n = batch.num_rows();
        let arrays = self.arrays(batch)?;
        let (encoded, encoded_dim) = match &self.rows.encoder {
            Some(e) => (e.encode(&arrays, n)?, e.dim()),
            None => {
                let names: Vec<&str> = self.inputs.iter().map(String::as_str).collect();
                let assembled;
                let (values, dim) = match arrays.as_slice() {
                    [one] if matches!(one.data_type(), DataType::FixedSizeList(_, _)) => {
                        vector_values(one.as_ref(), names[0])?
                    }
                    _ => {
                        let cols: Vec<(&str, &ArrayRef)> =
                            names.iter().copied().zip(arrays.iter()).collect();
                        assembled = assemble_with(&cols, Missing::Keep)?;
                        vector_values(&assembled, "features")?
                    }
                };
                (values.to_vec(), dim)
            }
        };
        let (x, dim) = self.rows.predictor_inputs(&encoded, encoded_dim)?;
        if dim != self.explainer.dim() {
            return Err(SqlError::Invalid(format!(
                "{}: model '{}' explains {} features, its stages give {dim}",
                self.function,
                self.model,
                self.explainer.dim()
            )));
        }
        let (phi, explained) =
            session.run_compute(|| explain_rows(self.explainer.as_ref(), &x, dim));
        Ok(Attributions {
            dim,
            phi,
            explained,
            encoded,
            encoded_dim,
        })
    }

    /// The model's prediction (and, for classifiers, the probability of the predicted class)
    /// for the encoded rows of a batch.
    pub fn predict(&self, a: &Attributions) -> Result<(ArrayRef, Option<ArrayRef>)> {
        let batch = FeatureBatch::new(&a.encoded, a.encoded_dim)?;
        let prediction = self.rows.prediction.apply(&batch)?;
        let probability = match &self.rows.probability {
            Some(p) => {
                let probs = p.apply(&batch)?;
                let (values, k) = vector_values(probs.as_ref(), p.name())?;
                let best: Float64Array = values
                    .chunks_exact(k.max(1))
                    .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                    .map(Some)
                    .collect();
                Some(Arc::new(best) as ArrayRef)
            }
            None => None,
        };
        Ok((prediction, probability))
    }

    /// The type of the prediction column.
    pub fn prediction_type(&self) -> DataType {
        self.rows.prediction.return_type()
    }

    pub fn has_probability(&self) -> bool {
        self.rows.probability.is_some()
    }
}

/// The fields of a `top_feature_attributions` entry.
fn attribution_fields() -> Fields {
    Fields::from(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("attribution", DataType::Float64, false),
    ])
}

/// The type of `top_feature_attributions`: a list of (feature, attribution).
pub(crate) fn attributions_type() -> DataType {
    DataType::List(attribution_item())
}

/// The list item of `top_feature_attributions`.
fn attribution_item() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        DataType::Struct(attribution_fields()),
        true,
    ))
}

/// Per row, its `top_k` attributions by absolute value as a list of (feature, attribution).
pub(crate) fn top_attributions(a: &Attributions, features: &[String], top_k: usize) -> ArrayRef {
    let (mut names, mut values, mut offsets) = (Vec::new(), Vec::new(), vec![0usize]);
    for row in a.phi.chunks_exact(a.dim.max(1)) {
        for j in top_features(row, top_k) {
            names.push(features[j].as_str());
            values.push(row[j]);
        }
        offsets.push(names.len());
    }
    let entries = StructArray::new(
        attribution_fields(),
        vec![
            Arc::new(StringArray::from(names)) as ArrayRef,
            Arc::new(Float64Array::from(values)) as ArrayRef,
        ],
        None,
    );
    Arc::new(ListArray::new(
        attribution_item(),
        OffsetBuffer::from_lengths(offsets.windows(2).map(|w| w[1] - w[0])),
        Arc::new(entries),
        None,
    ))
}

/// Mean absolute attribution per feature, accumulated over batches.
#[derive(Debug, Clone)]
pub(crate) struct GlobalAttribution {
    pub sums: Vec<f64>,
    pub rows: u64,
}

impl GlobalAttribution {
    pub fn new(dim: usize) -> Self {
        GlobalAttribution {
            sums: vec![0.0; dim],
            rows: 0,
        }
    }

    pub fn add(&mut self, a: &Attributions) {
        for row in a.phi.chunks_exact(a.dim.max(1)) {
            for (s, p) in self.sums.iter_mut().zip(row) {
                *s += p.abs();
            }
            self.rows += 1;
        }
    }

    /// (feature index, mean absolute attribution), largest first.
    pub fn ranked(&self) -> Vec<(usize, f64)> {
        let n = self.rows.max(1) as f64;
        let mut out: Vec<(usize, f64)> = self.sums.iter().map(|s| s / n).enumerate().collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Over every row of a stream of batches.
    pub async fn over(
        session: &QuiverSession,
        attributor: &Attributor<'_>,
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    ) -> Result<Self> {
        let mut total = GlobalAttribution::new(attributor.features.len());
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                total.add(&attributor.explain(session, &batch)?);
            }
        }
        Ok(total)
    }
}

/// The explainable model behind `model`, for a table function.
pub(crate) fn attributor<'a>(
    function: &'static str,
    model: &'a LoadedModel,
    feature_names: Vec<String>,
) -> Result<Attributor<'a>> {
    let rows = model.rows()?;
    let (kind, _) = catalog::final_stage(&model.metadata);
    let fallback = model
        .metadata
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    Attributor::new(
        function,
        &model.label(),
        kind,
        rows,
        fallback,
        feature_names,
    )
}

/// The explained values of a batch as columns: prediction value, baseline, approximation
/// error (how far the attributions' sum is from the value minus the baseline).
pub(crate) fn value_columns(a: &Attributions) -> [ArrayRef; 3] {
    let value = Float64Array::from_iter_values(a.explained.iter().map(|e| e.value));
    let baseline = Float64Array::from_iter_values(a.explained.iter().map(|e| e.baseline));
    let error = Float64Array::from_iter_values(
        a.phi
            .chunks_exact(a.dim.max(1))
            .zip(&a.explained)
            .map(|(row, e)| (row.iter().sum::<f64>() - (e.value - e.baseline)).abs()),
    );
    [Arc::new(baseline), Arc::new(value), Arc::new(error)]
}
