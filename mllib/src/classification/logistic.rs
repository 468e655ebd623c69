//! `LogisticRegression` (Spark MLlib's names and defaults): binomial or multinomial logistic
//! loss with elastic-net regularisation, minimised by L-BFGS (OWL-QN when the L1 part is on);
//! one aggregate pass per evaluation computes the loss and gradient over all partitions.
//!
//! Objective: `(1/W) Σ wᵢ loss(xᵢ, yᵢ) + λ Σₖⱼ [α qⱼ |γₖⱼ| + (1 − α)/2 pⱼ γₖⱼ²]` over
//! coefficients `γ` of the standardised features `xⱼ/σⱼ` (σ = sample standard deviation), with
//! `λ = reg_param`, `α = elastic_net_param`, and `pⱼ = qⱼ = 1` when `standardization` is on;
//! when off, `qⱼ = 1/σⱼ` and `pⱼ = 1/σⱼ²` (the penalty on the original coefficients).
//! Intercepts are not penalised. Coefficients are reported in the original feature space.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::vector::{dot, first_nan};
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, QuiverError, QuiverSession,
    StatInputs, Statistic, Summarizer, map_dataset,
};
use serde::{Deserialize, Serialize};

use crate::api::{
    Estimator, Model, Transformer, check_output_col, check_regularization, class_index,
};
use crate::error::{MllibError, Result};
use crate::optim::owlqn;
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// Binomial (one coefficient vector, classes 0 and 1) or multinomial (one per class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Binomial for two classes, multinomial for more. The default.
    #[default]
    Auto,
    Binomial,
    Multinomial,
}

/// Logistic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticRegression {
    reg_param: f64,
    elastic_net_param: f64,
    max_iter: usize,
    tol: f64,
    fit_intercept: bool,
    standardization: bool,
    weighted: bool,
    family: Family,
    prediction_col: String,
    #[serde(default = "default_probability_col")]
    probability_col: String,
    #[serde(default = "default_raw_prediction_col")]
    raw_prediction_col: String,
}

fn default_probability_col() -> String {
    "probability".to_string()
}

fn default_raw_prediction_col() -> String {
    "raw_prediction".to_string()
}

impl Default for LogisticRegression {
    fn default() -> Self {
        LogisticRegression {
            reg_param: 0.0,
            elastic_net_param: 0.0,
            max_iter: 100,
            tol: 1e-6,
            fit_intercept: true,
            standardization: true,
            weighted: false,
            family: Family::Auto,
            prediction_col: "prediction".to_string(),
            probability_col: default_probability_col(),
            raw_prediction_col: default_raw_prediction_col(),
        }
    }
}

impl LogisticRegression {
    pub fn new() -> Self {
        Self::default()
    }
    /// λ ≥ 0. Defaults to `0.0`.
    pub fn reg_param(mut self, v: f64) -> Self {
        self.reg_param = v;
        self
    }
    /// Elastic-net mixing α in [0, 1]. Defaults to `0.0` (L2).
    pub fn elastic_net_param(mut self, v: f64) -> Self {
        self.elastic_net_param = v;
        self
    }
    /// Defaults to `100`.
    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }
    /// Relative decrease of the objective that stops the optimiser. Defaults to `1e-6`.
    pub fn tol(mut self, t: f64) -> Self {
        self.tol = t;
        self
    }
    /// Defaults to `true`.
    pub fn fit_intercept(mut self, yes: bool) -> Self {
        self.fit_intercept = yes;
        self
    }
    /// Penalise standardised coefficients. Defaults to `true`.
    pub fn standardization(mut self, yes: bool) -> Self {
        self.standardization = yes;
        self
    }
    /// Weight rows by the dataset's weight column. Defaults to `false`.
    pub fn weighted(mut self, yes: bool) -> Self {
        self.weighted = yes;
        self
    }
    /// Defaults to `Auto`.
    pub fn family(mut self, f: Family) -> Self {
        self.family = f;
        self
    }
    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    /// The class-probability vector column. Defaults to `"probability"`.
    pub fn probability_col(mut self, c: impl Into<String>) -> Self {
        self.probability_col = c.into();
        self
    }
    /// The margins column (Spark's rawPrediction). Defaults to `"raw_prediction"`.
    pub fn raw_prediction_col(mut self, c: impl Into<String>) -> Self {
        self.raw_prediction_col = c.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        check_regularization(self.reg_param, self.elastic_net_param)?;
        if self.max_iter == 0 {
            return Err(MllibError::InvalidParam {
                param: "max_iter".to_string(),
                reason: "at least one iteration is needed".to_string(),
            });
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return Err(MllibError::InvalidParam {
                param: "tol".to_string(),
                reason: format!("{} is negative", self.tol),
            });
        }
        for col in [
            &self.prediction_col,
            &self.probability_col,
            &self.raw_prediction_col,
        ] {
            check_output_col(col)?;
        }
        if self.prediction_col == self.probability_col
            || self.prediction_col == self.raw_prediction_col
            || self.probability_col == self.raw_prediction_col
        {
            return Err(MllibError::InvalidParam {
                param: "prediction_col".to_string(),
                reason: format!(
                    "prediction, probability and raw prediction columns need distinct names (got '{}', '{}', '{}')",
                    self.prediction_col, self.probability_col, self.raw_prediction_col
                ),
            });
        }
        Ok(())
    }
}

/// Weighted count per class; the labels must be class indices 0, 1, 2, …
#[derive(Debug, Serialize, Deserialize)]
struct ClassCounts {
    d: usize,
    weighted: bool,
    /// The label column's name, for error messages.
    label: String,
}

impl Statistic for ClassCounts {
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_class_counts";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the class counts", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.weighted,
        }
    }
    fn init(&self) -> Vec<f64> {
        Vec::new()
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = b
            .label
            .ok_or_else(|| QuiverError::internal("class counts need a label"))?;
        for (r, &v) in y.iter().enumerate() {
            let c = class_index(v, &self.label, r)?;
            if s.len() <= c {
                s.resize(c + 1, 0.0);
            }
            s[c] += b.weight.map_or(1.0, |w| w[r]);
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        if s.len() < o.len() {
            s.resize(o.len(), 0.0);
        }
        s.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        encode_f64s(s, out);
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        let (n, rest) = decode_f64s(bytes, 1)?;
        Ok(decode_f64s(rest, n[0] as usize)?.0)
    }
}

/// Loss and gradient of the logistic objective's data term at given coefficients.
#[derive(Debug, Serialize, Deserialize)]
struct LogisticLoss {
    d: usize,
    /// Coefficient vectors (1 binomial, K multinomial).
    vectors: usize,
    multinomial: bool,
    /// Per vector: d coefficients in the original feature space, then the intercept.
    coef: Vec<f64>,
    weighted: bool,
}

impl Statistic for LogisticLoss {
    /// [W, loss, gradient (vectors × (d + 1)) in the original space]
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_logistic_loss";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the logistic loss", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.weighted,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 2 + self.coef.len()]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let (d, kv) = (self.d, self.vectors);
        let y = b
            .label
            .ok_or_else(|| QuiverError::internal("the logistic loss needs a label"))?;
        if let Some(i) = first_nan(b.values) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: i / d,
            });
        }
        let mut margins = vec![0.0; kv];
        let (head, grad) = s.split_at_mut(2);
        for (r, x) in b.values.chunks_exact(d).enumerate() {
            let w = if self.weighted {
                b.weight.map_or(1.0, |w| w[r])
            } else {
                1.0
            };
            if w == 0.0 {
                continue;
            }
            for (k, m) in margins.iter_mut().enumerate() {
                let c = &self.coef[k * (d + 1)..(k + 1) * (d + 1)];
                *m = c[d] + dot(&c[..d], x);
            }
            let label = y[r] as usize;
            head[0] += w;
            if self.multinomial {
                let max = margins.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + margins.iter().map(|m| (m - max).exp()).sum::<f64>().ln();
                head[1] += w * (lse - margins[label]);
                for k in 0..kv {
                    let resid = w * ((margins[k] - lse).exp() - if k == label { 1.0 } else { 0.0 });
                    let g = &mut grad[k * (d + 1)..(k + 1) * (d + 1)];
                    for (gj, v) in g[..d].iter_mut().zip(x) {
                        *gj += resid * v;
                    }
                    g[d] += resid;
                }
            } else {
                let m = margins[0];
                let t = if label == 1 { 1.0 } else { 0.0 };
                // One exponential serves both: e = exp(−|m|), log(1 + exp(m)) = max(m, 0) +
                // log1p(e), and σ(m) = 1/(1 + e) for m ≥ 0, e/(1 + e) below.
                let e = (-m.abs()).exp();
                let softplus = m.max(0.0) + e.ln_1p();
                let sigmoid = if m >= 0.0 {
                    1.0 / (1.0 + e)
                } else {
                    e / (1.0 + e)
                };
                head[1] += w * (softplus - t * m);
                let resid = w * (sigmoid - t);
                for (gj, v) in grad[..d].iter_mut().zip(x) {
                    *gj += resid * v;
                }
                grad[d] += resid;
            }
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        s.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(s, out);
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        Ok(decode_f64s(bytes, 2 + self.coef.len())?.0)
    }
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticSummary {
    pub objective_history: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    pub convergence: String,
    pub num_classes: usize,
    /// Aggregate passes over the data: class counts, feature scales, then one per objective
    /// evaluation (an iteration takes one, more when the line search backtracks).
    #[serde(default)]
    pub data_passes: usize,
    pub wall_time_ms: f64,
}

impl Estimator for LogisticRegression {
    type Model = LogisticRegressionModel;

    async fn fit(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<LogisticRegressionModel> {
        self.check()?;
        let started = Instant::now();
        if data.label().is_none() {
            return Err(MllibError::InvalidParam {
                param: "label".to_string(),
                reason: "LogisticRegression needs a label column (Dataset::with_label)".to_string(),
            });
        }
        let prepared = session.prepare_iterative(data, session.runner()).await?;
        let d = prepared.dim();
        let counts = prepared
            .aggregate(Arc::new(ClassCounts {
                d,
                weighted: self.weighted,
                label: data.label().unwrap_or("label").to_string(),
            }))
            .await?;
        let present = counts.iter().filter(|c| **c > 0.0).count();
        if present < 2 {
            return Err(MllibError::InvalidParam {
                param: "label".to_string(),
                reason: format!("the label has {present} class; classification needs at least two"),
            });
        }
        let num_classes = counts.len();
        let multinomial = match self.family {
            Family::Auto => num_classes > 2,
            Family::Binomial if num_classes > 2 => {
                return Err(MllibError::InvalidParam {
                    param: "family".to_string(),
                    reason: format!(
                        "binomial needs labels 0 and 1; the label has {num_classes} classes"
                    ),
                });
            }
            Family::Binomial => false,
            Family::Multinomial => true,
        };
        let vectors = if multinomial { num_classes } else { 1 };
        let mut summarizer = Summarizer::new(d);
        if self.weighted {
            summarizer = summarizer.weighted(true);
        }
        let summary = prepared.aggregate(Arc::new(summarizer)).await?;
        let std = summary.std;
        // With an intercept, optimise over centred standardised features (x − μ)/σ: the
        // intercept no longer fights the coefficients, which cuts the iterations on data far
        // from the origin several-fold. Virtual, as Spark does: the data is never shifted, the
        // centring moves into the intercept of each evaluation and out of its gradient.
        let shift: Vec<f64> = if self.fit_intercept {
            summary.mean
        } else {
            vec![0.0; d]
        };
        let inv_sigma: Vec<f64> = std
            .iter()
            .map(|s| if *s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        let penalty: Vec<f64> = std
            .iter()
            .map(|s| {
                if self.standardization || *s == 0.0 {
                    1.0
                } else {
                    1.0 / (s * s)
                }
            })
            .collect();
        let width = d + 1;
        let n_params = vectors * width;
        let (fit_intercept, weighted) = (self.fit_intercept, self.weighted);
        // Elastic net: λ(1 − α) on the squared terms here, λα on the absolute values through
        // OWL-QN's per-coordinate L1 weights (none on the intercepts).
        let lambda = self.reg_param * (1.0 - self.elastic_net_param);
        let l1_strength = self.reg_param * self.elastic_net_param;
        let l1: Vec<f64> = if l1_strength > 0.0 {
            (0..n_params)
                .map(|i| match i % width {
                    j if j == d => 0.0,
                    j if self.standardization || std[j] == 0.0 => l1_strength,
                    j => l1_strength / std[j],
                })
                .collect()
        } else {
            Vec::new()
        };
        // x: γ in the standardised space, intercepts last in each vector.
        let objective = |x: Vec<f64>| {
            let prepared = prepared.clone();
            let inv_sigma = inv_sigma.clone();
            let penalty = penalty.clone();
            let shift = shift.clone();
            async move {
                let mut coef = x.clone();
                for k in 0..vectors {
                    for j in 0..d {
                        coef[k * width + j] *= inv_sigma[j];
                        coef[k * width + d] -= coef[k * width + j] * shift[j];
                    }
                }
                let stat = LogisticLoss {
                    d,
                    vectors,
                    multinomial,
                    coef,
                    weighted,
                };
                let s = prepared.aggregate(Arc::new(stat)).await?;
                let w = s[0];
                let mut value = s[1] / w;
                let mut grad: Vec<f64> = s[2..].iter().map(|g| g / w).collect();
                for k in 0..vectors {
                    let g_intercept = grad[k * width + d];
                    for j in 0..d {
                        let i = k * width + j;
                        grad[i] = (grad[i] - shift[j] * g_intercept) * inv_sigma[j];
                        value += 0.5 * lambda * penalty[j] * x[i] * x[i];
                        grad[i] += lambda * penalty[j] * x[i];
                    }
                    if !fit_intercept {
                        grad[k * width + d] = 0.0;
                    }
                }
                Ok((value, grad))
            }
        };
        let min = owlqn(
            objective,
            vec![0.0; n_params],
            &l1,
            10,
            self.max_iter,
            self.tol,
        )
        .await?;
        let mut coefficients = vec![0.0; vectors * d];
        let mut intercepts = vec![0.0; vectors];
        for k in 0..vectors {
            intercepts[k] = min.x[k * width + d];
            for j in 0..d {
                coefficients[k * d + j] = min.x[k * width + j] * inv_sigma[j];
                intercepts[k] -= coefficients[k * d + j] * shift[j];
            }
        }
        Ok(LogisticRegressionModel {
            params: self.clone(),
            dim: d,
            num_classes,
            multinomial,
            coefficients,
            intercepts,
            summary: LogisticSummary {
                objective_history: min.history,
                iterations: min.iterations,
                converged: min.converged,
                convergence: min.reason,
                num_classes,
                data_passes: 2 + min.evaluations,
                wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
            },
        })
    }
}

/// A fitted [`LogisticRegression`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegressionModel {
    params: LogisticRegression,
    dim: usize,
    num_classes: usize,
    multinomial: bool,
    /// vectors × dim, row-major.
    coefficients: Vec<f64>,
    intercepts: Vec<f64>,
    summary: LogisticSummary,
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

quiver_engine::impl_json_params!(
    ClassCounts => "the class counts",
    LogisticLoss => "the logistic loss",
    LogisticOutput => "a logistic regression model",
);

/// Lets logistic regression's statistics and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<ClassCounts>()?;
    r.add_statistic::<LogisticLoss>()?;
    for name in [
        "logistic_regression_raw_prediction",
        "logistic_regression_probability",
        "logistic_regression_predict",
    ] {
        r.add_batch_function::<LogisticOutput>(name)?;
    }
    Ok(())
}
