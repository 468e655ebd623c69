//! Naive Bayes' parameters: the event model, additive smoothing, variance smoothing.

use serde::{Deserialize, Serialize};

use crate::classification::scores::OutputCols;
use crate::error::{MllibError, Result};

/// The event model: what a feature value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NaiveBayesType {
    /// Counts (non-negative values), e.g. term frequencies. The default, as in Spark.
    #[default]
    Multinomial,
    /// Multinomial over each class's complement (Rennie et al. 2003): steadier on imbalanced
    /// classes. Non-negative values.
    Complement,
    /// Presence (values 0 or 1).
    Bernoulli,
    /// Real values, normal within each class.
    Gaussian,
}

impl NaiveBayesType {
    pub fn name(self) -> &'static str {
        match self {
            NaiveBayesType::Multinomial => "multinomial",
            NaiveBayesType::Complement => "complement",
            NaiveBayesType::Bernoulli => "bernoulli",
            NaiveBayesType::Gaussian => "gaussian",
        }
    }
}

/// Naive Bayes classification. Labels are class indices 0, 1, 2, …
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NaiveBayes {
    #[serde(default)]
    pub(super) model_type: NaiveBayesType,
    #[serde(default = "default_smoothing")]
    pub(super) smoothing: f64,
    #[serde(default = "default_var_smoothing")]
    pub(super) var_smoothing: f64,
    #[serde(default)]
    pub(super) weighted: bool,
    #[serde(default = "default_prediction_col")]
    pub(super) prediction_col: String,
    #[serde(default = "default_probability_col")]
    pub(super) probability_col: String,
    #[serde(default = "default_raw_prediction_col")]
    pub(super) raw_prediction_col: String,
}

fn default_smoothing() -> f64 {
    1.0
}
fn default_var_smoothing() -> f64 {
    1e-9
}
fn default_prediction_col() -> String {
    "prediction".to_string()
}
fn default_probability_col() -> String {
    "probability".to_string()
}
fn default_raw_prediction_col() -> String {
    "raw_prediction".to_string()
}

impl Default for NaiveBayes {
    fn default() -> Self {
        NaiveBayes {
            model_type: NaiveBayesType::default(),
            smoothing: default_smoothing(),
            var_smoothing: default_var_smoothing(),
            weighted: false,
            prediction_col: default_prediction_col(),
            probability_col: default_probability_col(),
            raw_prediction_col: default_raw_prediction_col(),
        }
    }
}

impl NaiveBayes {
    pub fn new() -> Self {
        Self::default()
    }
    /// The event model. Defaults to `Multinomial`.
    pub fn model_type(mut self, t: NaiveBayesType) -> Self {
        self.model_type = t;
        self
    }
    /// Additive (Laplace/Lidstone) smoothing α ≥ 0 of the multinomial, complement and
    /// Bernoulli counts (scikit-learn's `alpha`). Defaults to `1.0`.
    pub fn smoothing(mut self, alpha: f64) -> Self {
        self.smoothing = alpha;
        self
    }
    /// Gaussian only: added to every variance, as a fraction of the largest feature variance
    /// (scikit-learn's `var_smoothing`). Defaults to `1e-9`.
    pub fn var_smoothing(mut self, v: f64) -> Self {
        self.var_smoothing = v;
        self
    }
    /// Weight rows by the dataset's weight column. Defaults to `false`.
    pub fn weighted(mut self, yes: bool) -> Self {
        self.weighted = yes;
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
    /// The joint log-likelihood per class (Spark's rawPrediction). Defaults to
    /// `"raw_prediction"`.
    pub fn raw_prediction_col(mut self, c: impl Into<String>) -> Self {
        self.raw_prediction_col = c.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        if !(self.smoothing >= 0.0 && self.smoothing.is_finite()) {
            return Err(MllibError::InvalidParam {
                param: "smoothing".to_string(),
                reason: format!("{} is not a finite number ≥ 0", self.smoothing),
            });
        }
        if !(self.var_smoothing >= 0.0 && self.var_smoothing.is_finite()) {
            return Err(MllibError::InvalidParam {
                param: "var_smoothing".to_string(),
                reason: format!("{} is not a finite number ≥ 0", self.var_smoothing),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_error() {
        assert!(NaiveBayes::new().check().is_ok());
        let e = NaiveBayes::new().smoothing(-1.0).check().unwrap_err();
        assert!(e.to_string().contains("'smoothing'"), "{e}");
        let e = NaiveBayes::new().smoothing(f64::NAN).check().unwrap_err();
        assert!(e.to_string().contains("'smoothing'"), "{e}");
        let e = NaiveBayes::new().var_smoothing(-1e-9).check().unwrap_err();
        assert!(e.to_string().contains("'var_smoothing'"), "{e}");
        let e = NaiveBayes::new()
            .probability_col("prediction")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("distinct"), "{e}");
        let e = NaiveBayes::new().prediction_col(" ").check().unwrap_err();
        assert!(e.to_string().contains("output column"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<NaiveBayes>(r#"{"alpha": 1}"#).unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        let nb: NaiveBayes = serde_json::from_str(r#"{"model_type": "gaussian"}"#).unwrap();
        assert_eq!(nb.model_type, NaiveBayesType::Gaussian);
    }
}
