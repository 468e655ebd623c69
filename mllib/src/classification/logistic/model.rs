//! The fitted logistic regression: coefficients applied as map functions (margins, class
//! probabilities, class), stored as Arrow vectors.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::vector::dot;
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, map_dataset};
use serde::{Deserialize, Serialize};

use super::LogisticSummary;
use super::params::LogisticRegression;
use crate::api::{Model, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// A fitted [`LogisticRegression`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegressionModel {
    pub(super) params: LogisticRegression,
    pub(super) dim: usize,
    pub(super) num_classes: usize,
    pub(super) multinomial: bool,
    /// vectors × dim, row-major.
    pub(super) coefficients: Vec<f64>,
    pub(super) intercepts: Vec<f64>,
    pub(super) summary: LogisticSummary,
}

impl LogisticRegressionModel {
    /// Coefficient vectors (one for binomial, one per class for multinomial).
    pub fn coefficients(&self) -> Vec<&[f64]> {
        self.coefficients.chunks_exact(self.dim).collect()
    }
    pub fn intercepts(&self) -> &[f64] {
        &self.intercepts
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn summary(&self) -> &LogisticSummary {
        &self.summary
    }
}

/// The fitted coefficients, as the map functions carry them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogisticPredict {
    dim: usize,
    multinomial: bool,
    coefficients: Vec<f64>,
    intercepts: Vec<f64>,
}

impl LogisticPredict {
    /// `x·βₖ + bₖ` for every coefficient vector k.
    fn margins(&self, x: &[f64], out: &mut [f64]) {
        for (k, m) in out.iter_mut().enumerate() {
            *m = self.intercepts[k] + dot(&self.coefficients[k * self.dim..(k + 1) * self.dim], x);
        }
    }

    /// Values per row of the vector outputs: the number of classes (2 for binomial).
    fn classes(&self) -> usize {
        if self.multinomial {
            self.intercepts.len()
        } else {
            2
        }
    }
}

/// Which column a [`LogisticOutput`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum OutputKind {
    /// Spark's rawPrediction: the margins, `[−m, m]` for binomial.
    Raw,
    /// Class probabilities: `[1 − p, p]` for binomial, the softmax for multinomial.
    Probability,
    /// The most probable class index.
    Prediction,
}

/// One of the model's output columns, computed batch by batch.
#[derive(Debug, Serialize, Deserialize)]
struct LogisticOutput {
    model: LogisticPredict,
    kind: OutputKind,
}

impl BatchFunction for LogisticOutput {
    fn name(&self) -> &str {
        match self.kind {
            OutputKind::Raw => "logistic_regression_raw_prediction",
            OutputKind::Probability => "logistic_regression_probability",
            OutputKind::Prediction => "logistic_regression_predict",
        }
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a logistic regression model", self)
    }
    fn input_dim(&self) -> usize {
        self.model.dim
    }
    fn return_type(&self) -> DataType {
        match self.kind {
            OutputKind::Prediction => DataType::Float64,
            _ => quiver_engine::vector::vector_type(self.model.classes()),
        }
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let p = &self.model;
        let mut margins = vec![0.0; p.intercepts.len()];
        let rows = b.values.chunks_exact(p.dim);
        if self.kind == OutputKind::Prediction {
            let out: Float64Array = rows
                .map(|x| {
                    p.margins(x, &mut margins);
                    if !p.multinomial {
                        return if margins[0] > 0.0 { 1.0 } else { 0.0 };
                    }
                    let mut best = (0, f64::NEG_INFINITY);
                    for (k, &m) in margins.iter().enumerate() {
                        if m > best.1 {
                            best = (k, m);
                        }
                    }
                    best.0 as f64
                })
                .collect();
            return Ok(Arc::new(out));
        }
        let width = p.classes();
        let mut out = Vec::with_capacity(b.n_rows * width);
        for x in rows {
            p.margins(x, &mut margins);
            match (self.kind, p.multinomial) {
                (OutputKind::Raw, true) => out.extend_from_slice(&margins),
                (OutputKind::Raw, false) => out.extend([-margins[0], margins[0]]),
                (_, true) => {
                    let max = margins.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = margins.iter().map(|m| (m - max).exp()).sum();
                    out.extend(margins.iter().map(|m| (m - max).exp() / z));
                }
                (_, false) => {
                    let q = 1.0 / (1.0 + (-margins[0]).exp());
                    out.extend([1.0 - q, q]);
                }
            }
        }
        Ok(Arc::new(quiver_engine::vector::vector_array(out, width)?))
    }
}

impl LogisticRegressionModel {
    fn output(&self, kind: OutputKind) -> Arc<LogisticOutput> {
        Arc::new(LogisticOutput {
            model: LogisticPredict {
                dim: self.dim,
                multinomial: self.multinomial,
                coefficients: self.coefficients.clone(),
                intercepts: self.intercepts.clone(),
            },
            kind,
        })
    }
}

impl Transformer for LogisticRegressionModel {
    /// Adds the raw prediction (the margins), probability (a vector of class probabilities)
    /// and prediction columns, as Spark's rawPrediction, probability and prediction.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let mut out = data.clone();
        for (kind, col) in [
            (OutputKind::Raw, self.params.raw_prediction_col.as_str()),
            (
                OutputKind::Probability,
                self.params.probability_col.as_str(),
            ),
            (OutputKind::Prediction, self.params.prediction_col.as_str()),
        ] {
            out = map_dataset(out, self.output(kind), col)?;
        }
        Ok(out)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Predict {
            prediction: self.output(OutputKind::Prediction),
            probability: Some(self.output(OutputKind::Probability)),
        }
    }

    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        self.coefficients
            .chunks_exact(self.dim)
            .zip(&self.intercepts)
            .enumerate()
            .map(|(k, (c, b))| {
                let class = if self.multinomial { k } else { 1 };
                let mut v = c.to_vec();
                v.push(*b);
                (format!("class {class}"), v)
            })
            .collect()
    }
}

impl Model for LogisticRegressionModel {
    const KIND: &'static str = "logistic_regression";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = ModelDraft {
            params: params_json(&(&self.params, self.dim, self.num_classes, self.multinomial))?,
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let coef = vectors_to_ipc(&[("coefficients", &self.coefficients)])?;
        let icpt = vectors_to_ipc(&[("intercepts", &self.intercepts)])?;
        Ok((
            draft,
            vec![
                ("coefficients.arrow".to_string(), coef),
                ("intercepts.arrow".to_string(), icpt),
            ],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, dim, num_classes, multinomial): (LogisticRegression, usize, usize, bool) =
            serde_json::from_value(meta.params.clone())
                .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: LogisticSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let vectors = if multinomial { num_classes } else { 1 };
        let part = |n: &str| {
            parts
                .get(n)
                .ok_or_else(|| corrupt(format!("no part '{n}'")))
        };
        let mut c = vectors_from_ipc(part("coefficients.arrow")?, &meta.name)?;
        let mut i = vectors_from_ipc(part("intercepts.arrow")?, &meta.name)?;
        Ok(LogisticRegressionModel {
            coefficients: take_vector(&mut c, "coefficients", vectors * dim, &meta.name)?,
            intercepts: take_vector(&mut i, "intercepts", vectors, &meta.name)?,
            params,
            dim,
            num_classes,
            multinomial,
            summary,
        })
    }
}

quiver_engine::impl_json_params!(LogisticOutput => "a logistic regression model");

/// Lets the model's map functions run on a cluster.
pub(super) fn register_maps(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    for name in [
        "logistic_regression_raw_prediction",
        "logistic_regression_probability",
        "logistic_regression_predict",
    ] {
        r.add_batch_function::<LogisticOutput>(name)?;
    }
    Ok(())
}
