//! `LinearRegression` (Spark MLlib's names and defaults) from the normal equations: one
//! aggregate pass computes the centred co-moments, the driver solves a d × d system (Cholesky,
//! or OWL-QN on the same quadratic form when the elastic net has an L1 part — no more data
//! passes either way).
//!
//! Objective: `1/(2W) Σ wᵢ (yᵢ − b − xᵢ·β)² + λ Σⱼ [α sⱼ|βⱼ| + (1 − α)/2 (sⱼ βⱼ)²]` with
//! `λ = reg_param`, `α = elastic_net_param` and `sⱼ` = the weighted population standard
//! deviation of feature j when `standardization` is on (the penalty acts on standardised
//! coefficients), else 1 — scikit-learn's `ElasticNet(alpha = λ, l1_ratio = α)` with
//! standardization off. Unlike Spark, the label is not rescaled before penalising. Features of
//! zero variance get a zero coefficient.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::store::FeatureField;
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, QuiverSession, map_dataset,
};
use serde::{Deserialize, Serialize};

use super::comoment::{CoMoments, CoMomentsStatistic};
use crate::api::{Estimator, Model, Transformer, check_output_col, check_regularization};
use crate::error::{MllibError, Result};
use crate::optim::owlqn;
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// Normal equations are used up to this many features.
const MAX_NORMAL_FEATURES: usize = 4096;

/// Least-squares linear regression with optional L2 regularisation and row weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearRegression {
    reg_param: f64,
    elastic_net_param: f64,
    fit_intercept: bool,
    standardization: bool,
    weighted: bool,
    prediction_col: String,
}

impl Default for LinearRegression {
    fn default() -> Self {
        LinearRegression {
            reg_param: 0.0,
            elastic_net_param: 0.0,
            fit_intercept: true,
            standardization: true,
            weighted: false,
            prediction_col: "prediction".to_string(),
        }
    }
}

impl LinearRegression {
    pub fn new() -> Self {
        Self::default()
    }

    /// Regularisation strength λ ≥ 0. Defaults to `0.0`.
    pub fn reg_param(mut self, v: f64) -> Self {
        self.reg_param = v;
        self
    }

    /// Elastic-net mixing α in [0, 1] (0 = L2). Defaults to `0.0`.
    pub fn elastic_net_param(mut self, v: f64) -> Self {
        self.elastic_net_param = v;
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

    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, col: impl Into<String>) -> Self {
        self.prediction_col = col.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        check_regularization(self.reg_param, self.elastic_net_param)?;
        check_output_col(&self.prediction_col)
    }
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Objective value at the solution.
    pub objective: f64,
    /// Objective per iteration (one entry: the normal equations are solved once).
    pub objective_history: Vec<f64>,
    pub iterations: usize,
    pub convergence: String,
    /// Coefficient of determination on the training data.
    pub r2: f64,
    /// Root mean squared error on the training data (weighted).
    pub rmse: f64,
    pub rows: u64,
    /// Mean and sample standard deviation of each training feature (what explanations centre
    /// on and feature importance scales by; empty for models stored before they were kept).
    #[serde(default)]
    pub feature_mean: Vec<f64>,
    #[serde(default)]
    pub feature_std: Vec<f64>,
    pub wall_time_ms: f64,
}

/// The least-norm `x` minimising `|a x − b|` for symmetric positive semi-definite `a` (n × n,
/// row-major): `a`'s pseudo-inverse applied to `b`, eigenvalues below 1e-10 of the largest
/// counting as zero.
fn min_norm_solve(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let eig = nalgebra::SymmetricEigen::new(nalgebra::DMatrix::from_row_slice(n, n, a));
    let largest = eig.eigenvalues.iter().copied().fold(0.0, f64::max);
    let b = nalgebra::DVector::from_column_slice(b);
    let mut x = nalgebra::DVector::zeros(n);
    for (i, &l) in eig.eigenvalues.iter().enumerate() {
        if l > largest * 1e-10 {
            let v = eig.eigenvectors.column(i);
            x += v * (v.dot(&b) / l);
        }
    }
    x.iter().copied().collect()
}

/// Solves `a x = b` for symmetric positive-definite `a` (n × n, row-major) by Cholesky. `None`
/// when `a` is not positive definite (within a relative tolerance).
fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    let scale = (0..n)
        .map(|i| a[i * n + i].abs())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 1e-12 * scale {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut z = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * z[k]).sum();
        z[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (z[i] - s) / l[i * n + i];
    }
    Some(x)
}

/// How the coefficients were found.
struct Solution {
    coefficients: Vec<f64>,
    intercept: f64,
    history: Vec<f64>,
    iterations: usize,
    convergence: String,
}

/// Refines an approximate minimiser `u` of `½ uᵀAu − uᵀr + Σ wⱼ|uⱼ|` to the exact one: on the
/// support and signs that `u` found, the minimiser solves `A_SS u_S = r_S − w_S sign(u_S)`.
/// The refinement is kept only when it passes the optimality check (same signs on the support,
/// `|gⱼ| ≤ wⱼ` off it); otherwise `u` is returned unchanged.
fn polish_lasso(a: &[f64], r: &[f64], w: &[f64], u: Vec<f64>) -> Vec<f64> {
    let k = r.len();
    let support: Vec<usize> = (0..k).filter(|&j| u[j] != 0.0).collect();
    let n = support.len();
    if n == 0 {
        return u;
    }
    let mut sub = vec![0.0; n * n];
    let mut rhs = vec![0.0; n];
    for (p, &i) in support.iter().enumerate() {
        for (q, &j) in support.iter().enumerate() {
            sub[p * n + q] = a[i * k + j];
        }
        rhs[p] = r[i] - w[i] * u[i].signum();
    }
    let Some(x) = cholesky_solve(&sub, &rhs, n) else {
        return u;
    };
    let mut exact = vec![0.0; k];
    for (p, &j) in support.iter().enumerate() {
        if x[p].signum() != u[j].signum() {
            return u;
        }
        exact[j] = x[p];
    }
    for j in (0..k).filter(|j| exact[*j] == 0.0) {
        let g = a[j * k..(j + 1) * k]
            .iter()
            .zip(&exact)
            .map(|(a, v)| a * v)
            .sum::<f64>()
            - r[j];
        if g.abs() > w[j] * (1.0 + 1e-9) + 1e-12 {
            return u;
        }
    }
    exact
}

impl LinearRegression {
    /// The L1 weight `λα` and the L2 weight `λ(1 − α)` of the elastic net.
    fn penalties(&self) -> (f64, f64) {
        (
            self.reg_param * self.elastic_net_param,
            self.reg_param * (1.0 - self.elastic_net_param),
        )
    }

    /// Solves the problem from the co-moments alone (no further data pass): the normal
    /// equations by Cholesky without L1, OWL-QN on the same quadratic form with it.
    async fn solve(&self, m: &CoMoments, names: &[String]) -> Result<Solution> {
        let d = m.mean_x.len();
        let w = m.weight_sum;
        // Second moments about the means (with an intercept) or about zero (without).
        let (sxx, sxy): (Vec<f64>, Vec<f64>) = if self.fit_intercept {
            (
                m.cxx.iter().map(|v| v / w).collect(),
                m.cxy.iter().map(|v| v / w).collect(),
            )
        } else {
            (
                (0..d * d)
                    .map(|k| (m.cxx[k] + w * m.mean_x[k / d] * m.mean_x[k % d]) / w)
                    .collect(),
                (0..d)
                    .map(|j| (m.cxy[j] + w * m.mean_x[j] * m.mean_y) / w)
                    .collect(),
            )
        };
        let var: Vec<f64> = (0..d).map(|j| m.cxx[j * d + j] / w).collect();
        // Constant features (zero variance) keep a zero coefficient, like Spark.
        let active: Vec<usize> = (0..d)
            .filter(|&j| var[j] > 0.0 || !self.fit_intercept && sxx[j * d + j] > 0.0)
            .collect();
        let k = active.len();
        let (l1, l2) = self.penalties();
        let mut a = vec![0.0; k * k];
        let mut rhs = vec![0.0; k];
        for (p, &i) in active.iter().enumerate() {
            for (q, &j) in active.iter().enumerate() {
                a[p * k + q] = sxx[i * d + j];
            }
            let s2 = if self.standardization { var[i] } else { 1.0 };
            a[p * k + p] += l2 * s2;
            rhs[p] = sxy[i];
        }
        let (x, history, iterations, convergence) = if l1 > 0.0 {
            // ½ βᵀAβ − βᵀr + Σ l1 sⱼ|βⱼ|, solved in the scaled coordinates uⱼ = cⱼβⱼ with cⱼ the
            // root of Aⱼⱼ so that the quadratic is well conditioned for the quasi-Newton steps.
            let c: Vec<f64> = (0..k).map(|p| a[p * k + p].sqrt()).collect();
            let au: Vec<f64> = (0..k * k).map(|i| a[i] / (c[i / k] * c[i % k])).collect();
            let ru: Vec<f64> = (0..k).map(|p| rhs[p] / c[p]).collect();
            let weights: Vec<f64> = active
                .iter()
                .enumerate()
                .map(|(p, &j)| {
                    let s = if self.standardization {
                        var[j].sqrt()
                    } else {
                        1.0
                    };
                    l1 * s / c[p]
                })
                .collect();
            let quadratic = |u: Vec<f64>| {
                let g: Vec<f64> = (0..k)
                    .map(|p| {
                        au[p * k..(p + 1) * k]
                            .iter()
                            .zip(&u)
                            .map(|(a, v)| a * v)
                            .sum::<f64>()
                            - ru[p]
                    })
                    .collect();
                let value = (0..k).map(|p| 0.5 * u[p] * (g[p] - ru[p])).sum::<f64>();
                std::future::ready(Ok((value, g)))
            };
            // Evaluations cost O(k²), so iterate until no step decreases the objective any more.
            let min = owlqn(quadratic, vec![0.0; k], &weights, 20, 10_000, 0.0).await?;
            let u = polish_lasso(&au, &ru, &weights, min.x);
            let x = u.iter().zip(&c).map(|(u, c)| u / c).collect();
            (x, min.history, min.iterations, min.reason)
        } else if let Some(x) = cholesky_solve(&a, &rhs, k) {
            (
                x,
                Vec::new(),
                1,
                "normal equations solved exactly".to_string(),
            )
        } else {
            // Collinear features (e.g. every one-hot column of a string beside the intercept):
            // the least-squares solutions form a line or plane; take the one of least norm, as
            // scikit-learn's LinearRegression does.
            let x = min_norm_solve(&a, &rhs, k);
            let some: Vec<&str> = active.iter().take(4).map(|&j| names[j].as_str()).collect();
            (
                x,
                Vec::new(),
                1,
                format!(
                    "collinear features (XᵀX is singular, e.g. among {}): minimum-norm least-squares solution",
                    some.join(", ")
                ),
            )
        };
        let mut coefficients = vec![0.0; d];
        for (p, &j) in active.iter().enumerate() {
            coefficients[j] = x[p];
        }
        let intercept = if self.fit_intercept {
            m.mean_y
                - coefficients
                    .iter()
                    .zip(&m.mean_x)
                    .map(|(c, x)| c * x)
                    .sum::<f64>()
        } else {
            0.0
        };
        Ok(Solution {
            coefficients,
            intercept,
            history,
            iterations,
            convergence,
        })
    }

    /// Objective, R² and RMSE from the co-moments.
    fn scores(&self, m: &CoMoments, coef: &[f64], intercept: f64) -> (f64, f64, f64) {
        let d = coef.len();
        let w = m.weight_sum;
        // Residual sum of squares about the fitted line, from centred moments plus the offset
        // between the means and the fitted intercept.
        let quad: f64 = (0..d)
            .map(|i| coef[i] * (0..d).map(|j| m.cxx[i * d + j] * coef[j]).sum::<f64>())
            .sum();
        let lin: f64 = coef.iter().zip(&m.cxy).map(|(c, v)| c * v).sum();
        let offset =
            m.mean_y - intercept - coef.iter().zip(&m.mean_x).map(|(c, x)| c * x).sum::<f64>();
        let sse = (m.cyy - 2.0 * lin + quad + w * offset * offset).max(0.0);
        let (l1, l2) = self.penalties();
        let penalty: f64 = (0..d)
            .map(|j| {
                let s2 = if self.standardization {
                    m.cxx[j * d + j] / w
                } else {
                    1.0
                };
                0.5 * l2 * s2 * coef[j] * coef[j] + l1 * s2.sqrt() * coef[j].abs()
            })
            .sum();
        let objective = sse / (2.0 * w) + penalty;
        let r2 = if m.cyy > 0.0 { 1.0 - sse / m.cyy } else { 0.0 };
        (objective, r2, (sse / w).sqrt())
    }
}

impl Estimator for LinearRegression {
    type Model = LinearRegressionModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<LinearRegressionModel> {
        self.check()?;
        let started = Instant::now();
        if data.label().is_none() {
            return Err(MllibError::InvalidParam {
                param: "label".to_string(),
                reason: "LinearRegression needs a label column (Dataset::with_label)".to_string(),
            });
        }
        let names = data.feature_names()?;
        let d = names.len();
        if d > MAX_NORMAL_FEATURES {
            return Err(MllibError::InvalidParam {
                param: "features".to_string(),
                reason: format!(
                    "{d} features; the normal-equation solver handles up to {MAX_NORMAL_FEATURES}"
                ),
            });
        }
        let prepared = session.prepare(data, session.runner()).await?;
        let stat = CoMomentsStatistic {
            dim: d,
            weighted: self.weighted,
            label: true,
        };
        let moments = prepared.aggregate(Arc::new(stat)).await?;
        let Solution {
            coefficients,
            intercept,
            history,
            iterations,
            convergence,
        } = self.solve(&moments, &names).await?;
        let (objective, r2, rmse) = self.scores(&moments, &coefficients, intercept);
        // The iterative solver's history is of the centred quadratic (the objective less a
        // constant); report it shifted so that its last entry is the objective.
        let objective_history = match history.last() {
            Some(last) => history.iter().map(|v| v - last + objective).collect(),
            None => vec![objective],
        };
        let summary = TrainingSummary {
            objective,
            objective_history,
            iterations,
            convergence,
            r2,
            rmse,
            rows: moments.count as u64,
            feature_mean: moments.mean_x.clone(),
            feature_std: {
                let d = moments.mean_x.len();
                let w = moments.weight_sum;
                (0..d)
                    .map(|j| {
                        if w > 1.0 {
                            (moments.cxx[j * d + j].max(0.0) / (w - 1.0)).sqrt()
                        } else {
                            0.0
                        }
                    })
                    .collect()
            },
            wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(LinearRegressionModel {
            params: self.clone(),
            coefficients,
            intercept,
            features: names
                .into_iter()
                .map(|name| FeatureField {
                    name,
                    data_type: "Float64".to_string(),
                })
                .collect(),
            label: data.label().map(str::to_string),
            summary,
        })
    }
}

/// A fitted [`LinearRegression`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearRegressionModel {
    params: LinearRegression,
    coefficients: Vec<f64>,
    intercept: f64,
    features: Vec<FeatureField>,
    label: Option<String>,
    summary: TrainingSummary,
}

impl LinearRegressionModel {
    pub fn coefficients(&self) -> &[f64] {
        &self.coefficients
    }

    pub fn intercept(&self) -> f64 {
        self.intercept
    }

    pub fn summary(&self) -> &TrainingSummary {
        &self.summary
    }
}

/// `x·β + b` per row.
#[derive(Debug, Serialize, Deserialize)]
struct LinearPredict {
    coefficients: Vec<f64>,
    intercept: f64,
}

impl BatchFunction for LinearPredict {
    fn name(&self) -> &str {
        "linear_regression_predict"
    }

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a linear regression model", self)
    }

    fn input_dim(&self) -> usize {
        self.coefficients.len()
    }

    fn return_type(&self) -> DataType {
        DataType::Float64
    }

    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        if let Some(on_device) = quiver_engine::device::affine_scores(
            batch.values,
            batch.dim,
            &self.coefficients,
            &[self.intercept],
        )? {
            return Ok(Arc::new(Float64Array::from(on_device)));
        }
        // `intercept + x·β`: a row's `dot` bits, blocked.
        let out = quiver_engine::vector::affine_rows(
            batch.values,
            batch.n_rows,
            &self.coefficients,
            &[self.intercept],
        );
        Ok(Arc::new(Float64Array::from(out)))
    }
}

impl LinearRegressionModel {
    fn predictor(&self) -> Arc<LinearPredict> {
        Arc::new(LinearPredict {
            coefficients: self.coefficients.clone(),
            intercept: self.intercept,
        })
    }
}

impl Transformer for LinearRegressionModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        Ok(map_dataset(
            data.clone(),
            self.predictor(),
            &self.params.prediction_col,
        )?)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Predict {
            prediction: self.predictor(),
            probability: None,
        }
    }

    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        let mut v = self.coefficients.clone();
        v.push(self.intercept);
        vec![("coefficients".to_string(), v)]
    }

    fn explainer(&self) -> Option<Arc<dyn crate::explain::Explainer>> {
        crate::explain::LinearExplainer::new(
            self.coefficients.clone(),
            vec![self.intercept],
            self.summary.feature_mean.clone(),
            false,
            false,
        )
        .map(|e| Arc::new(e) as Arc<dyn crate::explain::Explainer>)
    }
}

impl Model for LinearRegressionModel {
    const KIND: &'static str = "linear_regression";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = ModelDraft {
            params: params_json(&self.params)?,
            features: self.features.clone(),
            label: self.label.clone(),
            metrics: serde_json::json!({ "r2": self.summary.r2, "rmse": self.summary.rmse }),
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let coef = vectors_to_ipc(&[("coefficients", &self.coefficients)])?;
        let intercept = vectors_to_ipc(&[("intercept", &[self.intercept])])?;
        Ok((
            draft,
            vec![
                ("coefficients.arrow".to_string(), coef),
                ("intercept.arrow".to_string(), intercept),
            ],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let params: LinearRegression = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: TrainingSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let part = |name: &str| {
            parts
                .get(name)
                .ok_or_else(|| corrupt(format!("no part '{name}'")))
        };
        let mut coef = vectors_from_ipc(part("coefficients.arrow")?, &meta.name)?;
        let mut icpt = vectors_from_ipc(part("intercept.arrow")?, &meta.name)?;
        Ok(LinearRegressionModel {
            coefficients: take_vector(&mut coef, "coefficients", meta.features.len(), &meta.name)?,
            intercept: take_vector(&mut icpt, "intercept", 1, &meta.name)?[0],
            params,
            features: meta.features.clone(),
            label: meta.label.clone(),
            summary,
        })
    }
}

quiver_engine::impl_json_params!(
    LinearPredict => "a linear regression model",
);

/// Lets linear regression's statistic and map run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_batch_function::<LinearPredict>("linear_regression_predict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_detects_singular_systems() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0]
        let x = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-15 && x[1].abs() < 1e-15);
        assert!(cholesky_solve(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0], 2).is_none());
    }
}

#[cfg(test)]
mod exact_tests {
    use super::*;
    use quiver_engine::Statistic;

    /// Noise-free data with large feature offsets: the fit recovers the generating line.
    #[tokio::test]
    async fn recovers_exact_linear_data() {
        let d = 3;
        let n = 50;
        let xs: Vec<f64> = (0..n * d)
            .map(|i| ((i * 7919) % 101) as f64 + (i % 3) as f64 * 100.0)
            .collect();
        let ys: Vec<f64> = (0..n)
            .map(|r| 2.0 * xs[r * d] - xs[r * d + 1] + 0.5 * xs[r * d + 2] + 3.0)
            .collect();
        let stat = CoMomentsStatistic {
            dim: d,
            weighted: false,
            label: true,
        };
        let mut st = stat.init();
        let mut b = FeatureBatch::new(&xs, d).unwrap();
        b.label = Some(&ys);
        stat.update(&mut st, &b).unwrap();
        let names: Vec<String> = (0..d).map(|j| format!("f{j}")).collect();
        let sol = LinearRegression::new().solve(&st, &names).await.unwrap();
        let (c, i) = (sol.coefficients, sol.intercept);
        assert!(
            (c[0] - 2.0).abs() < 1e-9 && (c[1] + 1.0).abs() < 1e-9 && (c[2] - 0.5).abs() < 1e-9,
            "{c:?} {i}"
        );
        assert!((i - 3.0).abs() < 1e-6, "{i}");
    }
}
