//! Logistic regression's parameters (Spark MLlib's names and defaults) and their rules.

use serde::{Deserialize, Serialize};

use crate::api::check_regularization;
use crate::classification::scores::OutputCols;
use crate::error::{MllibError, Result};

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
    pub(super) reg_param: f64,
    pub(super) elastic_net_param: f64,
    pub(super) max_iter: usize,
    pub(super) tol: f64,
    pub(super) fit_intercept: bool,
    pub(super) standardization: bool,
    pub(super) weighted: bool,
    pub(super) family: Family,
    pub(super) prediction_col: String,
    #[serde(default = "default_probability_col")]
    pub(super) probability_col: String,
    #[serde(default = "default_raw_prediction_col")]
    pub(super) raw_prediction_col: String,
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
        OutputCols {
            prediction: &self.prediction_col,
            probability: &self.probability_col,
            raw_prediction: &self.raw_prediction_col,
        }
        .check()?;
        Ok(())
    }
}
