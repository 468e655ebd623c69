//! `LogisticRegression` (Spark MLlib's names and defaults): binomial or multinomial logistic
//! loss with elastic-net regularisation, minimised by L-BFGS (OWL-QN when the L1 part is on);
//! one aggregate pass per evaluation computes the loss and gradient over all partitions.
//!
//! Objective: `(1/W) Σ wᵢ loss(xᵢ, yᵢ) + λ Σₖⱼ [α qⱼ |γₖⱼ| + (1 − α)/2 pⱼ γₖⱼ²]` over
//! coefficients `γ` of the standardised features `xⱼ/σⱼ` (σ = sample standard deviation), with
//! `λ = reg_param`, `α = elastic_net_param`, and `pⱼ = qⱼ = 1` when `standardization` is on;
//! when off, `qⱼ = 1/σⱼ` and `pⱼ = 1/σⱼ²` (the penalty on the original coefficients).
//! Intercepts are not penalised. Coefficients are reported in the original feature space.

mod kernel;
mod model;
mod params;
mod statistic;

pub use model::LogisticRegressionModel;
pub use params::{Family, LogisticRegression};

use std::sync::Arc;
use std::time::Instant;

use quiver_engine::{Dataset, FeatureSummary, QuiverError, QuiverSession, Statistic, Summarizer};
use serde::{Deserialize, Serialize};

use crate::api::Estimator;
use crate::error::{MllibError, Result};
use crate::optim::owlqn_observed;
use statistic::{ClassCounts, LogisticLoss, Setup};

/// What a fit reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogisticSummary {
    pub objective_history: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    pub convergence: String,
    pub num_classes: usize,
    /// Aggregate passes over the data: the set-up pass (class counts, with the feature scales
    /// when the rows did not come with them; none when trials over the same rows share it),
    /// then one per objective evaluation (an iteration takes one, more when the line search
    /// backtracks).
    #[serde(default)]
    pub data_passes: usize,
    /// Mean and sample standard deviation of each training feature (what explanations centre
    /// on and feature importance scales by; empty for models stored before they were kept).
    #[serde(default)]
    pub feature_mean: Vec<f64>,
    #[serde(default)]
    pub feature_std: Vec<f64>,
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
        let mut summarizer = Summarizer::new(d);
        if self.weighted {
            summarizer = summarizer.weighted(true);
        }
        // The features' means and deviations when the rows came with them (automatic
        // preprocessing computes them in the read that encodes the rows): the set-up pass then
        // only counts the classes. Unweighted moments only.
        let known = data
            .feature_moments()
            .filter(|_| !self.weighted)
            .map(|m| (m.mean.clone(), m.std.clone()));
        // The class counts and the feature summary in one pass; once for rows that trials
        // share (a search's fits over one kept split), whatever the hyperparameters.
        let setup = Setup {
            counts: ClassCounts {
                d,
                weighted: self.weighted,
                label: data.label().unwrap_or("label").to_string(),
            },
            summary: known.is_none().then_some(summarizer),
        };
        let key = data.reuse_key(&format!(
            "logistic set-up {}",
            String::from_utf8_lossy(&setup.params()?)
        ));
        let kept = key
            .as_deref()
            .and_then(quiver_engine::reuse::get::<(Vec<f64>, Option<FeatureSummary>)>);
        let setup_passes = usize::from(kept.is_none());
        let (counts, summary) = match kept {
            Some(kept) => kept.as_ref().clone(),
            None => {
                let computed = prepared.aggregate(Arc::new(setup)).await?;
                if let Some(key) = key {
                    let bytes = (computed.0.len() + 4 * d) * 8;
                    quiver_engine::reuse::put(key, Arc::new(computed.clone()), bytes);
                }
                computed
            }
        };
        let (mean, std) = match (summary, known) {
            (Some(summary), _) => (summary.mean, summary.std),
            (None, Some(known)) => known,
            (None, None) => {
                return Err(MllibError::Engine(QuiverError::internal(
                    "the set-up pass gave no feature summary",
                )));
            }
        };
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
        // With an intercept, optimise over centred standardised features (x − μ)/σ: the
        // intercept no longer fights the coefficients, which cuts the iterations on data far
        // from the origin several-fold. Virtual, as Spark does: the data is never shifted, the
        // centring moves into the intercept of each evaluation and out of its gradient.
        let shift: Vec<f64> = if self.fit_intercept {
            mean.clone()
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
        // γ in the standardised space back to coefficients and intercepts of the raw features.
        let unscale = |x: &[f64]| {
            let mut coefficients = vec![0.0; vectors * d];
            let mut intercepts = vec![0.0; vectors];
            for k in 0..vectors {
                intercepts[k] = x[k * width + d];
                for j in 0..d {
                    coefficients[k * d + j] = x[k * width + j] * inv_sigma[j];
                    intercepts[k] -= coefficients[k * d + j] * shift[j];
                }
            }
            (coefficients, intercepts)
        };
        // The model of an iterate, for a trial's pruner (see crate::progress).
        let progress = crate::progress::current();
        let model_of = |x: &[f64], summary: LogisticSummary| {
            let (coefficients, intercepts) = unscale(x);
            LogisticRegressionModel {
                params: self.clone(),
                dim: d,
                num_classes,
                multinomial,
                coefficients,
                intercepts,
                summary,
            }
        };
        let iterate_model = |x: &[f64]| {
            Ok(Arc::new(model_of(x, LogisticSummary::default())) as Arc<dyn crate::Transformer>)
        };
        let min = owlqn_observed(
            objective,
            vec![0.0; n_params],
            &l1,
            10,
            self.max_iter,
            self.tol,
            progress
                .as_ref()
                .map(|p| (p, &iterate_model as crate::optim::PointModel<'_>)),
        )
        .await?;
        Ok(model_of(
            &min.x,
            LogisticSummary {
                objective_history: min.history,
                iterations: min.iterations,
                converged: min.converged,
                convergence: min.reason,
                num_classes,
                data_passes: setup_passes + min.evaluations,
                feature_mean: mean,
                feature_std: std,
                wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
            },
        ))
    }
}

/// Lets logistic regression's statistics and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<Setup>()?;
    r.add_statistic::<LogisticLoss>()?;
    model::register_maps(r)
}
