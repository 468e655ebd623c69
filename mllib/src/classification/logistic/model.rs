//! The fitted logistic regression: coefficients applied as map functions (margins, class
//! probabilities, class), stored as Arrow vectors.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use quiver_engine::vector::dot;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata};
use serde::{Deserialize, Serialize};

use super::LogisticSummary;
use super::params::LogisticRegression;
use crate::api::{Model, Transformer};
use crate::classification::scores::{self, Affine, ClassScores, OutputCols, softmax};
use crate::error::{MllibError, Result};
use crate::persist::{claimed_len, params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

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

impl ClassScores for LogisticPredict {
    const FUNCTIONS: [&'static str; 3] = [
        "logistic_regression_raw_prediction",
        "logistic_regression_probability",
        "logistic_regression_predict",
    ];
    const EVALUATION: &'static str = "logistic_regression_evaluation_counts";
    const WHAT: &'static str = "a logistic regression model";

    fn dim(&self) -> usize {
        self.dim
    }

    fn width(&self) -> usize {
        self.classes()
    }

    /// Spark's rawPrediction: the margins, `[−m, m]` for binomial.
    fn raw(&self, x: &[f64], out: &mut [f64]) {
        if self.multinomial {
            self.margins(x, out);
        } else {
            let mut m = [0.0];
            self.margins(x, &mut m);
            out[0] = -m[0];
            out[1] = m[0];
        }
    }

    /// The margins are `x·βₖ + bₖ`.
    fn affine(&self) -> Option<Affine<'_>> {
        Some(Affine {
            weights: Cow::Borrowed(&self.coefficients),
            offsets: Cow::Borrowed(&self.intercepts),
        })
    }

    /// The margins of the batch's rows by the blocked kernel: the same bits as [`Self::raw`]'s
    /// (`intercept + dot`).
    fn batch_scores(&self, x: &[f64], rows: usize) -> Option<(Vec<f64>, usize)> {
        Some((
            quiver_engine::vector::affine_rows(x, rows, &self.coefficients, &self.intercepts),
            self.intercepts.len(),
        ))
    }

    fn raw_from_scores(&self, s: &[f64], out: &mut [f64]) {
        if self.multinomial {
            out.copy_from_slice(s);
        } else {
            out[0] = -s[0];
            out[1] = s[0];
        }
    }

    /// Binomial: class 1 exactly where the margin is above 0 (the argmax of `[−m, m]`, the
    /// first on ties; a NaN margin gives class 0 as there), one compare per row.
    fn predictions_from_scores(&self, s: &[f64], k: usize) -> Vec<f64> {
        if self.multinomial {
            return s
                .chunks_exact(k)
                .map(|r| scores::argmax(r) as f64)
                .collect();
        }
        s.iter().map(|&m| if m > 0.0 { 1.0 } else { 0.0 }).collect()
    }

    /// `[1 − p, p]` with `p = σ(m)` for binomial, the softmax for multinomial.
    fn probabilities(&self, raw: &[f64], out: &mut [f64]) {
        if self.multinomial {
            softmax(raw, out);
        } else {
            let q = 1.0 / (1.0 + (-raw[1]).exp());
            out[0] = 1.0 - q;
            out[1] = q;
        }
    }
}

impl LogisticRegressionModel {
    fn predictor(&self) -> LogisticPredict {
        LogisticPredict {
            dim: self.dim,
            multinomial: self.multinomial,
            coefficients: self.coefficients.clone(),
            intercepts: self.intercepts.clone(),
        }
    }

    fn output_cols(&self) -> OutputCols<'_> {
        OutputCols {
            prediction: &self.params.prediction_col,
            probability: &self.params.probability_col,
            raw_prediction: &self.params.raw_prediction_col,
        }
    }
}

impl Transformer for LogisticRegressionModel {
    /// Adds the raw prediction (the margins), probability (a vector of class probabilities)
    /// and prediction columns, as Spark's rawPrediction, probability and prediction.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.output_cols().transform(&self.predictor(), data)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        scores::row_stage(&self.predictor())
    }

    fn evaluate_classifier(
        &self,
        session: &quiver_engine::QuiverSession,
        data: &Dataset,
    ) -> Option<crate::api::BoxedEvaluation> {
        scores::evaluate_in_one_pass(self.predictor(), session, data)
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

    fn explainer(&self) -> Option<std::sync::Arc<dyn crate::explain::Explainer>> {
        crate::explain::LinearExplainer::new(
            self.coefficients.clone(),
            self.intercepts.clone(),
            self.summary.feature_mean.clone(),
            self.multinomial,
            !self.multinomial,
        )
        .map(|e| std::sync::Arc::new(e) as std::sync::Arc<dyn crate::explain::Explainer>)
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
            coefficients: take_vector(
                &mut c,
                "coefficients",
                claimed_len(vectors, dim, "the coefficients", &meta.name)?,
                &meta.name,
            )?,
            intercepts: take_vector(&mut i, "intercepts", vectors, &meta.name)?,
            params,
            dim,
            num_classes,
            multinomial,
            summary,
        })
    }
}

/// Lets the model's map functions run on a cluster.
pub(super) fn register_maps(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    scores::register::<LogisticPredict>(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-compare rule gives the classes of the generic argmax over the raw scores, on
    /// zeros of both signs, infinities and NaN; multinomial scores keep the argmax.
    #[test]
    fn predictions_from_margins_are_the_argmax_of_the_raw_scores() {
        let generic = |m: &LogisticPredict, s: &[f64], k: usize| -> Vec<f64> {
            let mut raw = vec![0.0; m.width()];
            s.chunks_exact(k)
                .map(|r| {
                    m.raw_from_scores(r, &mut raw);
                    scores::argmax(&raw) as f64
                })
                .collect()
        };
        let binomial = LogisticPredict {
            dim: 1,
            multinomial: false,
            coefficients: vec![1.0],
            intercepts: vec![0.0],
        };
        let margins = [
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            2.5,
            -2.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let fast = binomial.predictions_from_scores(&margins, 1);
        assert_eq!(fast, generic(&binomial, &margins, 1));
        assert_eq!(fast, [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        let multinomial = LogisticPredict {
            dim: 1,
            multinomial: true,
            coefficients: vec![1.0, 2.0, 3.0],
            intercepts: vec![0.0; 3],
        };
        let s = [1.0, 3.0, 3.0, f64::NAN, 0.0, -1.0, -0.0, 0.0, 0.0];
        assert_eq!(
            multinomial.predictions_from_scores(&s, 3),
            generic(&multinomial, &s, 3)
        );
    }
}
