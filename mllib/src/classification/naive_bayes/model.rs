//! The fitted naive Bayes model: per-class log priors and feature parameters, applied as map
//! functions (joint log-likelihood, class probabilities, class), stored as Arrow vectors.

use std::collections::BTreeMap;

use bytes::Bytes;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata};
use serde::{Deserialize, Serialize};

use super::params::{NaiveBayes, NaiveBayesType};
use super::statistic::{ClassMoments, ClassSumsState};
use crate::api::{Model, RowStage, Transformer};
use crate::classification::scores::{self, Affine, ClassScores, OutputCols};
use crate::error::{MllibError, Result};
use crate::persist::{claimed_len, params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// What prediction needs: everything is a function of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Fitted {
    model_type: NaiveBayesType,
    dim: usize,
    /// Per class: the constant term of its joint log-likelihood (the log prior, plus Σ log(1−p)
    /// for Bernoulli, plus −½ Σ log(2πσ²) for Gaussian); −∞ for a class index no row has.
    base: Vec<f64>,
    /// Per class, d values: log probabilities (multinomial, Bernoulli log p − log(1−p)),
    /// complement weights, or Gaussian means.
    theta: Vec<f64>,
    /// Gaussian only, per class, d values: the smoothed variances (empty otherwise).
    var: Vec<f64>,
}

impl Fitted {
    /// Closed-form parameters from the per-class sums, as scikit-learn computes them.
    pub fn from_sums(p: &NaiveBayes, sums: &ClassSumsState) -> Fitted {
        let d = sums.classes.first().map_or(0, |c| c.mean.len());
        let classes = &sums.classes;
        let total: f64 = classes.iter().map(|c| c.weight).sum();
        let log_prior: Vec<f64> = classes
            .iter()
            .map(|c| {
                if c.weight > 0.0 {
                    (c.weight / total).ln()
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        let alpha = p.smoothing;
        // Σ w x per class and feature.
        let counts =
            |c: &ClassMoments| -> Vec<f64> { c.mean.iter().map(|m| m * c.weight).collect() };
        let mut base = log_prior.clone();
        let mut theta = Vec::with_capacity(classes.len() * d);
        let mut var = Vec::new();
        match p.model_type {
            NaiveBayesType::Multinomial => {
                for c in classes {
                    let n = counts(c);
                    let denom = (n.iter().sum::<f64>() + alpha * d as f64).ln();
                    theta.extend(n.iter().map(|v| (v + alpha).ln() - denom));
                }
            }
            NaiveBayesType::Complement => {
                let mut all = vec![0.0; d];
                for c in classes {
                    for (a, v) in all.iter_mut().zip(counts(c)) {
                        *a += v;
                    }
                }
                for (k, c) in classes.iter().enumerate() {
                    let comp: Vec<f64> = all
                        .iter()
                        .zip(counts(c))
                        .map(|(a, v)| a - v + alpha)
                        .collect();
                    let log_sum = comp.iter().sum::<f64>().ln();
                    theta.extend(comp.iter().map(|v| -(v.ln() - log_sum)));
                    // scikit-learn's ComplementNB scores by the complement weights alone (no
                    // prior) when there are two classes or more.
                    base[k] = if c.weight > 0.0 {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    };
                }
            }
            NaiveBayesType::Bernoulli => {
                for (k, c) in classes.iter().enumerate() {
                    let denom = c.weight + 2.0 * alpha;
                    for v in counts(c) {
                        let log_p = ((v + alpha) / denom).ln();
                        let log_q = (1.0 - log_p.exp()).ln();
                        theta.push(log_p - log_q);
                        base[k] += log_q;
                    }
                }
            }
            NaiveBayesType::Gaussian => {
                // ε = var_smoothing × the largest (population) variance of a feature.
                let mut pooled = ClassMoments {
                    weight: 0.0,
                    mean: vec![0.0; d],
                    m2: vec![0.0; d],
                };
                for c in classes {
                    pooled.combine(c);
                }
                let max_var = pooled
                    .m2
                    .iter()
                    .map(|m| m / pooled.weight)
                    .fold(0.0, f64::max);
                let epsilon = p.var_smoothing * max_var;
                for (k, c) in classes.iter().enumerate() {
                    theta.extend_from_slice(&c.mean);
                    for m2 in &c.m2 {
                        let v = if c.weight > 0.0 {
                            m2 / c.weight + epsilon
                        } else {
                            1.0
                        };
                        var.push(v);
                        base[k] -= 0.5 * (2.0 * std::f64::consts::PI * v).ln();
                    }
                }
            }
        }
        Fitted {
            model_type: p.model_type,
            dim: d,
            base,
            theta,
            var,
        }
    }

    fn classes(&self) -> usize {
        self.base.len()
    }

    /// The joint log-likelihood of `x` under each class.
    fn joint_log_likelihood(&self, x: &[f64], out: &mut [f64]) {
        let d = self.dim;
        for (k, o) in out.iter_mut().enumerate() {
            let theta = &self.theta[k * d..(k + 1) * d];
            *o = self.base[k]
                + match self.model_type {
                    NaiveBayesType::Gaussian => {
                        let var = &self.var[k * d..(k + 1) * d];
                        -0.5 * x
                            .iter()
                            .zip(theta)
                            .zip(var)
                            .map(|((x, m), v)| (x - m) * (x - m) / v)
                            .sum::<f64>()
                    }
                    // A zero count contributes nothing (also where its log probability is −∞).
                    _ => x
                        .iter()
                        .zip(theta)
                        .filter(|(x, _)| **x != 0.0)
                        .map(|(x, t)| x * t)
                        .sum::<f64>(),
                };
        }
    }
}

impl ClassScores for Fitted {
    const FUNCTIONS: [&'static str; 3] = [
        "naive_bayes_raw_prediction",
        "naive_bayes_probability",
        "naive_bayes_predict",
    ];
    const EVALUATION: &'static str = "naive_bayes_evaluation_counts";
    const WHAT: &'static str = "a naive Bayes model";

    fn dim(&self) -> usize {
        self.dim
    }

    fn width(&self) -> usize {
        self.classes()
    }

    /// The joint log-likelihood per class (Spark's rawPrediction).
    fn raw(&self, x: &[f64], out: &mut [f64]) {
        self.joint_log_likelihood(x, out);
    }

    /// The count models' likelihoods are `base + θ·x` — affine where every log probability
    /// is finite (a −∞ one times a zero count must give 0, which a GEMM does not). Gaussian's
    /// are quadratic in `x`.
    fn affine(&self) -> Option<Affine<'_>> {
        (self.model_type != NaiveBayesType::Gaussian && self.theta.iter().all(|t| t.is_finite()))
            .then(|| Affine {
                weights: std::borrow::Cow::Borrowed(&self.theta[..]),
                offsets: std::borrow::Cow::Borrowed(&self.base[..]),
            })
    }
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NaiveBayesSummary {
    pub num_classes: usize,
    /// Σ w per class index.
    pub class_weights: Vec<f64>,
    pub wall_time_ms: f64,
}

/// A fitted [`NaiveBayes`].
#[derive(Debug, Clone, PartialEq)]
pub struct NaiveBayesModel {
    params: NaiveBayes,
    fitted: Fitted,
    summary: NaiveBayesSummary,
}

impl NaiveBayesModel {
    pub(super) fn new(
        params: NaiveBayes,
        fitted: Fitted,
        sums: &ClassSumsState,
        wall_time_ms: f64,
    ) -> Self {
        NaiveBayesModel {
            params,
            summary: NaiveBayesSummary {
                num_classes: fitted.classes(),
                class_weights: sums.classes.iter().map(|c| c.weight).collect(),
                wall_time_ms,
            },
            fitted,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.fitted.classes()
    }

    pub fn summary(&self) -> &NaiveBayesSummary {
        &self.summary
    }

    fn output_cols(&self) -> OutputCols<'_> {
        OutputCols {
            prediction: &self.params.prediction_col,
            probability: &self.params.probability_col,
            raw_prediction: &self.params.raw_prediction_col,
        }
    }
}

impl Transformer for NaiveBayesModel {
    /// Adds the raw prediction (joint log-likelihoods), probability and prediction columns.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.output_cols().transform(&self.fitted, data)
    }

    fn row_stage(&self) -> RowStage {
        scores::row_stage(&self.fitted)
    }

    fn evaluate_classifier(
        &self,
        session: &quiver_engine::QuiverSession,
        data: &Dataset,
    ) -> Option<crate::api::BoxedEvaluation> {
        scores::evaluate_in_one_pass(self.fitted.clone(), session, data)
    }

    /// Per class: its feature log probabilities (multinomial, Bernoulli's log-odds),
    /// complement weights, or means and variances (Gaussian).
    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        let (f, d) = (&self.fitted, self.fitted.dim);
        let mut out = Vec::new();
        for k in 0..f.classes() {
            out.push((format!("class {k}"), f.theta[k * d..(k + 1) * d].to_vec()));
            if !f.var.is_empty() {
                out.push((
                    format!("class {k} variance"),
                    f.var[k * d..(k + 1) * d].to_vec(),
                ));
            }
        }
        out
    }
}

impl Model for NaiveBayesModel {
    const KIND: &'static str = "naive_bayes";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let f = &self.fitted;
        let draft = ModelDraft {
            params: params_json(&(&self.params, f.dim, f.classes()))?,
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let per_class = vectors_to_ipc(&[("base", &f.base)])?;
        let per_feature = vectors_to_ipc(&[("theta", &f.theta)])?;
        let mut parts = vec![
            ("base.arrow".to_string(), per_class),
            ("theta.arrow".to_string(), per_feature),
        ];
        if !f.var.is_empty() {
            parts.push((
                "variance.arrow".to_string(),
                vectors_to_ipc(&[("variance", &f.var)])?,
            ));
        }
        Ok((draft, parts))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, dim, classes): (NaiveBayes, usize, usize) =
            serde_json::from_value(meta.params.clone())
                .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: NaiveBayesSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let part = |n: &str| {
            parts
                .get(n)
                .ok_or_else(|| corrupt(format!("no part '{n}'")))
        };
        let base = take_vector(
            &mut vectors_from_ipc(part("base.arrow")?, &meta.name)?,
            "base",
            classes,
            &meta.name,
        )?;
        let theta = take_vector(
            &mut vectors_from_ipc(part("theta.arrow")?, &meta.name)?,
            "theta",
            claimed_len(classes, dim, "theta", &meta.name)?,
            &meta.name,
        )?;
        let var = if params.model_type == NaiveBayesType::Gaussian {
            let var = take_vector(
                &mut vectors_from_ipc(part("variance.arrow")?, &meta.name)?,
                "variance",
                claimed_len(classes, dim, "the variances", &meta.name)?,
                &meta.name,
            )?;
            if let Some(v) = var.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return Err(corrupt(format!("variance {v} is not positive")));
            }
            var
        } else {
            Vec::new()
        };
        Ok(NaiveBayesModel {
            fitted: Fitted {
                model_type: params.model_type,
                dim,
                base,
                theta,
                var,
            },
            params,
            summary,
        })
    }
}

/// Lets the model's map functions run on a cluster.
pub(super) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    scores::register::<Fitted>(r)
}
