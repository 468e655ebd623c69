//! What every probabilistic classifier outputs, written once: per-class raw scores (Spark's
//! rawPrediction), class probabilities and the predicted class, as map functions over feature
//! batches, plus the rule on the three output column names. A classifier implements
//! [`ClassScores`] for its fitted parameters.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, QuiverSession, StatInputs, Statistic, map_dataset,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{BoxedEvaluation, RowStage, check_output_col};
use crate::error::{MllibError, Result};
use crate::evaluation::{ClassifierCounts, ClassifierState, classifier_metrics};

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
    /// The name of the statistic that scores rows and counts them for the evaluators
    /// ([`evaluate_in_one_pass`]).
    const EVALUATION: &'static str;
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
    /// The batch's scores on the CPU, `k` per row, computed for all its `rows` at once (a
    /// blocked kernel) rather than row by row, for [`Self::raw_from_scores`] to finish into
    /// exactly what [`Self::raw`] gives. `None` (the default): row by row.
    fn batch_scores(&self, _x: &[f64], _rows: usize) -> Option<(Vec<f64>, usize)> {
        None
    }
    /// The raw vector (`width()` values) from the `k` device scores of a row; a copy unless
    /// overridden.
    fn raw_from_scores(&self, s: &[f64], out: &mut [f64]) {
        out.copy_from_slice(s);
    }
    /// The predicted class of every row from a batch's scores (`k` per row): the index of the
    /// largest of the raw scores [`Self::raw_from_scores`] makes of them (the first on ties).
    /// Overridden where a cheaper rule gives the same classes.
    fn predictions_from_scores(&self, s: &[f64], k: usize) -> Vec<f64> {
        let mut raw = vec![0.0; self.width()];
        s.chunks_exact(k)
            .map(|r| {
                self.raw_from_scores(r, &mut raw);
                argmax(&raw) as f64
            })
            .collect()
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
pub(crate) fn argmax(scores: &[f64]) -> usize {
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
        let width = m.width();
        let scores = batch_scores(m, b)?;
        if let (OutputKind::Prediction, Some((s, k))) = (self.kind, &scores) {
            return Ok(Arc::new(Float64Array::from(
                m.predictions_from_scores(s, *k),
            )));
        }
        let raw_of = raw_scores(m, b, scores);
        let mut raw = vec![0.0; width];
        if self.kind == OutputKind::Prediction {
            let out: Vec<f64> = (0..b.n_rows)
                .map(|r| {
                    raw_of(r, &mut raw);
                    argmax(&raw) as f64
                })
                .collect();
            return Ok(Arc::new(Float64Array::from(out)));
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

/// The scores of batch `b`'s rows, `k` per row: on the device when the process's policy sends
/// the batch there (`quiver.device`), else by the model's blocked kernel for the batch if it has
/// one ([`ClassScores::batch_scores`]); `None` for a model scored row by row.
fn batch_scores<M: ClassScores>(
    m: &M,
    b: &FeatureBatch<'_>,
) -> quiver_engine::Result<Option<(Vec<f64>, usize)>> {
    Ok(match m.device_scores(b.values)? {
        Some(s) => Some(s),
        None => m.batch_scores(b.values, b.n_rows),
    })
}

/// Row `r`'s raw scores of batch `b` into `out`: from the batch's `scores` ([`batch_scores`])
/// when there are some, else row by row.
fn raw_scores<'a, M: ClassScores>(
    m: &'a M,
    b: &'a FeatureBatch<'_>,
    scores: Option<(Vec<f64>, usize)>,
) -> impl Fn(usize, &mut [f64]) + 'a {
    let dim = m.dim();
    move |r: usize, out: &mut [f64]| match &scores {
        Some((s, k)) => m.raw_from_scores(&s[r * k..(r + 1) * k], out),
        None => m.raw(&b.values[r * dim..(r + 1) * dim], out),
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

/// The classifier evaluators' counts ([`ClassifierCounts`]) of a model's own scores of the rows
/// it reads: each row's prediction and probabilities are computed as the model's output
/// columns compute them, into a buffer the counts read — one pass, and no output columns.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScoredCounts<M> {
    model: M,
}

/// Rows scored into the buffer at a time: small enough to stay in cache between the scoring
/// and the counting.
const SCORED_ROWS: usize = 1024;

impl<M: ClassScores> ScoredCounts<M> {
    fn counts(&self) -> ClassifierCounts {
        ClassifierCounts::scoring(self.model.width())
    }
}

impl<M: ClassScores> Statistic for ScoredCounts<M> {
    type State = ClassifierState;
    type Output = ClassifierState;

    const NAME: &'static str = M::EVALUATION;
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params(M::WHAT, self)
    }
    fn dim(&self) -> usize {
        self.model.dim()
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Self::State {
        self.counts().init()
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let m = &self.model;
        let width = m.width();
        let stride = 1 + width;
        let label = b
            .label
            .ok_or_else(|| quiver_engine::QuiverError::internal("evaluation needs a label"))?;
        let counts = self.counts();
        let raw_of = raw_scores(m, b, batch_scores(m, b)?);
        let mut raw = vec![0.0; width];
        let mut scored = vec![0.0; SCORED_ROWS.min(b.n_rows) * stride];
        for start in (0..b.n_rows).step_by(SCORED_ROWS) {
            let rows = SCORED_ROWS.min(b.n_rows - start);
            // As the prediction and probability columns: [prediction, probabilities…].
            for (i, out) in scored[..rows * stride].chunks_exact_mut(stride).enumerate() {
                raw_of(start + i, &mut raw);
                out[0] = argmax(&raw) as f64;
                m.probabilities(&raw, &mut out[1..]);
            }
            let rows_batch = FeatureBatch {
                values: &scored[..rows * stride],
                n_rows: rows,
                dim: stride,
                label: Some(&label[start..start + rows]),
                weight: None,
            };
            counts.update(s, &rows_batch)?;
        }
        Ok(())
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        self.counts().merge(s, o)
    }
    fn finish(&self, s: Self::State) -> quiver_engine::Result<Self::Output> {
        self.counts().finish(s)
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        self.counts().encode_state(s, out)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        self.counts().decode_state(bytes)
    }
    fn state_size(&self, s: &Self::State) -> usize {
        self.counts().state_size(s)
    }
}

impl<M: ClassScores> quiver_engine::registry::FromParams for ScoredCounts<M> {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        quiver_engine::registry::from_json_params(M::WHAT, bytes)
    }
}

/// `model`'s evaluator metrics on `data` in one pass ([`ScoredCounts`]), when `data` has a
/// label and its features are one vector column of the model's width — what the model's
/// output columns are computed from as they are (a model that assembles several columns
/// itself, missing values and all, is evaluated on its output columns instead: `None`).
pub(crate) fn evaluate_in_one_pass<M: ClassScores>(
    model: M,
    session: &QuiverSession,
    data: &Dataset,
) -> Option<BoxedEvaluation> {
    data.label()?;
    let [features] = data.features() else {
        return None;
    };
    let field = data
        .dataframe()
        .schema()
        .field_with_unqualified_name(features)
        .ok()?;
    match field.data_type() {
        DataType::FixedSizeList(f, n)
            if f.data_type() == &DataType::Float64 && *n as usize == model.dim() => {}
        _ => return None,
    }
    let (session, data) = (session.clone(), data.clone());
    Some(Box::pin(async move {
        let prepared = session.prepare(&data, session.runner()).await?;
        let counts = prepared.aggregate(Arc::new(ScoredCounts { model })).await?;
        Ok(classifier_metrics(counts))
    }))
}

/// Lets a classifier's output functions and its evaluation statistic run on a cluster.
pub(crate) fn register<M: ClassScores>(
    r: &mut quiver_engine::FunctionRegistry,
) -> quiver_engine::Result<()> {
    for name in M::FUNCTIONS {
        r.add_batch_function::<ScoreOutput<M>>(name)?;
    }
    r.add_statistic::<ScoredCounts<M>>()
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
