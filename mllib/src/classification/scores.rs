//! What every probabilistic classifier outputs, written once: per-class raw scores (Spark's
//! rawPrediction), class probabilities and the predicted class, as map functions over feature
//! batches, plus the rule on the three output column names. A classifier implements
//! [`ClassScores`] for its fitted parameters.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, map_dataset};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{RowStage, check_output_col};
use crate::error::{MllibError, Result};

/// Raw scores that are an affine map of the row, `s = W·x + c`: the weights (`k × dim`,
/// row-major) and the offsets (`k`).
#[derive(Debug, Clone)]
pub(crate) struct Affine<'a> {
    pub weights: Cow<'a, [f64]>,
    pub offsets: Cow<'a, [f64]>,
}

/// A fitted classifier as scores of a row.
pub(crate) trait ClassScores:
    Serialize + DeserializeOwned + std::fmt::Debug + Clone + Send + Sync + 'static
{
    /// The map functions' names: raw prediction, probability, prediction.
    const FUNCTIONS: [&'static str; 3];
    /// What the parameters are, for errors.
    const WHAT: &'static str;
    /// Whether rows with missing (NaN) features are scored rather than refused.
    const ACCEPTS_MISSING: bool = false;

    fn dim(&self) -> usize;
    /// Values per row of the raw and probability vectors.
    fn width(&self) -> usize;
    /// The raw scores of `x` (margins, joint log-likelihoods), `width()` of them.
    fn raw(&self, x: &[f64], out: &mut [f64]);
    /// Models whose raw scores are an affine map of the row: its [`Affine`] form. Large
    /// batches of such models go to the device when the process's `quiver.device` policy
    /// sends them (one GEMM per batch); `None` (the default) keeps every batch on the CPU.
    fn affine(&self) -> Option<Affine<'_>> {
        None
    }
    /// The batch's scores computed on a device, `k` per row, when the process's policy sends
    /// it there (`Ok(None)` otherwise), for [`Self::raw_from_scores`] to finish: by default
    /// the [`Self::affine`] form's GEMM.
    fn device_scores(&self, x: &[f64]) -> quiver_engine::Result<Option<(Vec<f64>, usize)>> {
        match self.affine() {
            Some(a) => {
                Ok(
                    quiver_engine::device::affine_scores(x, self.dim(), &a.weights, &a.offsets)?
                        .map(|s| (s, a.offsets.len())),
                )
            }
            None => Ok(None),
        }
    }
    /// The raw vector (`width()` values) from the `k` device scores of a row; a copy unless
    /// overridden.
    fn raw_from_scores(&self, s: &[f64], out: &mut [f64]) {
        out.copy_from_slice(s);
    }
    /// Class probabilities from the raw scores; the softmax unless overridden.
    fn probabilities(&self, raw: &[f64], out: &mut [f64]) {
        softmax(raw, out);
    }
}

/// `exp(s − max) / Σ exp(s − max)`; classes scored −∞ get 0.
pub(crate) fn softmax(scores: &[f64], out: &mut [f64]) {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut z = 0.0;
    for (o, s) in out.iter_mut().zip(scores) {
        *o = (s - max).exp();
        z += *o;
    }
    out.iter_mut().for_each(|o| *o /= z);
}

/// The index of the largest score (the first on ties).
fn argmax(scores: &[f64]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (k, &s) in scores.iter().enumerate() {
        if s > best.1 {
            best = (k, s);
        }
    }
    best.0
}

/// Which column a [`ScoreOutput`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OutputKind {
    Raw,
    Probability,
    /// The class with the largest raw score.
    Prediction,
}

/// One of a classifier's output columns, computed batch by batch.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScoreOutput<M> {
    model: M,
    kind: OutputKind,
}

impl<M: ClassScores> BatchFunction for ScoreOutput<M> {
    fn name(&self) -> &str {
        match self.kind {
            OutputKind::Raw => M::FUNCTIONS[0],
            OutputKind::Probability => M::FUNCTIONS[1],
            OutputKind::Prediction => M::FUNCTIONS[2],
        }
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params(M::WHAT, self)
    }
    fn input_dim(&self) -> usize {
        self.model.dim()
    }
    fn accepts_missing(&self) -> bool {
        M::ACCEPTS_MISSING
    }
    fn return_type(&self) -> DataType {
        match self.kind {
            OutputKind::Prediction => DataType::Float64,
            _ => quiver_engine::vector::vector_type(self.model.width()),
        }
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let m = &self.model;
        let (width, dim) = (m.width(), m.dim());
        // The batch's scores when the device takes it (`quiver.device`).
        let device = m.device_scores(b.values)?;
        let raw_of = |r: usize, out: &mut [f64]| match &device {
            Some((s, k)) => m.raw_from_scores(&s[r * k..(r + 1) * k], out),
            None => m.raw(&b.values[r * dim..(r + 1) * dim], out),
        };
        let mut raw = vec![0.0; width];
        if self.kind == OutputKind::Prediction {
            let out: Float64Array = (0..b.n_rows)
                .map(|r| {
                    raw_of(r, &mut raw);
                    argmax(&raw) as f64
                })
                .collect();
            return Ok(Arc::new(out));
        }
        let mut out = vec![0.0; b.n_rows * width];
        for (r, o) in out.chunks_exact_mut(width).enumerate() {
            if self.kind == OutputKind::Raw {
                raw_of(r, o);
            } else {
                raw_of(r, &mut raw);
                m.probabilities(&raw, o);
            }
        }
        Ok(Arc::new(quiver_engine::vector::vector_array(out, width)?))
    }
}

impl<M: ClassScores> quiver_engine::registry::FromParams for ScoreOutput<M> {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        quiver_engine::registry::from_json_params(M::WHAT, bytes)
    }
}

/// A classifier's three output columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OutputCols<'a> {
    pub prediction: &'a str,
    pub probability: &'a str,
    pub raw_prediction: &'a str,
}

impl OutputCols<'_> {
    /// Each needs a name, and the three differ.
    pub fn check(&self) -> Result<()> {
        let cols = [self.prediction, self.probability, self.raw_prediction];
        for c in cols {
            check_output_col(c)?;
        }
        if cols[0] == cols[1] || cols[0] == cols[2] || cols[1] == cols[2] {
            return Err(MllibError::InvalidParam {
                param: "prediction_col".to_string(),
                reason: format!(
                    "prediction, probability and raw prediction columns need distinct names (got '{}', '{}', '{}')",
                    cols[0], cols[1], cols[2]
                ),
            });
        }
        Ok(())
    }

    /// Adds the raw prediction, probability and prediction columns of `model` to `data`.
    pub fn transform<M: ClassScores>(&self, model: &M, data: &Dataset) -> Result<Dataset> {
        let mut out = data.clone();
        for (kind, col) in [
            (OutputKind::Raw, self.raw_prediction),
            (OutputKind::Probability, self.probability),
            (OutputKind::Prediction, self.prediction),
        ] {
            out = map_dataset(out, output(model, kind), col)?;
        }
        Ok(out)
    }
}

fn output<M: ClassScores>(model: &M, kind: OutputKind) -> Arc<ScoreOutput<M>> {
    Arc::new(ScoreOutput {
        model: model.clone(),
        kind,
    })
}

/// The row stage of a classifier: its prediction and probabilities.
pub(crate) fn row_stage<M: ClassScores>(model: &M) -> RowStage {
    RowStage::Predict {
        prediction: output(model, OutputKind::Prediction),
        probability: Some(output(model, OutputKind::Probability)),
    }
}

/// Lets a classifier's output functions run on a cluster.
pub(crate) fn register<M: ClassScores>(
    r: &mut quiver_engine::FunctionRegistry,
) -> quiver_engine::Result<()> {
    for name in M::FUNCTIONS {
        r.add_batch_function::<ScoreOutput<M>>(name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_argmax() {
        let mut p = [0.0; 3];
        softmax(&[1.0, f64::NEG_INFINITY, 1.0], &mut p);
        assert_eq!(p, [0.5, 0.0, 0.5]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        let cols = OutputCols {
            prediction: "p",
            probability: "p",
            raw_prediction: "r",
        };
        assert!(cols.check().unwrap_err().to_string().contains("distinct"));
    }
}
