//! PCA's parameters: how many components (a count, or a share of the variance to keep).

use serde::{Deserialize, Serialize};

use crate::api::check_output_col;
use crate::error::{MllibError, Result};

/// Principal component analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PCA {
    /// Number of components.
    #[serde(default)]
    pub(super) k: Option<usize>,
    /// Keep the fewest components whose explained variance ratio sums above this.
    #[serde(default)]
    pub(super) explained_variance_ratio: Option<f64>,
    #[serde(default = "default_output_col")]
    pub(super) output_col: String,
}

fn default_output_col() -> String {
    "pca_features".to_string()
}

pub(super) fn missing_k() -> MllibError {
    MllibError::InvalidParam {
        param: "k".to_string(),
        reason: "PCA needs k (num_principal_components in SQL) or explained_variance_ratio \
                 (pca_explained_variance_ratio)"
            .to_string(),
    }
}

impl Default for PCA {
    fn default() -> Self {
        PCA {
            k: None,
            explained_variance_ratio: None,
            output_col: default_output_col(),
        }
    }
}

impl PCA {
    pub fn new() -> Self {
        Self::default()
    }
    /// The number of principal components (≥ 1, at most the feature count). No default.
    pub fn k(mut self, k: usize) -> Self {
        self.k = Some(k);
        self
    }
    /// Instead of `k`: keep the fewest components explaining more than this share of the
    /// variance, in (0, 1].
    pub fn explained_variance_ratio(mut self, r: f64) -> Self {
        self.explained_variance_ratio = Some(r);
        self
    }
    /// The projected vector column. Defaults to `"pca_features"`.
    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Validates the parameters: exactly one of `k` and `explained_variance_ratio`.
    pub fn check(&self) -> Result<()> {
        check_output_col(&self.output_col)?;
        match (self.k, self.explained_variance_ratio) {
            (None, None) => Err(missing_k()),
            (Some(_), Some(_)) => Err(MllibError::InvalidParam {
                param: "explained_variance_ratio".to_string(),
                reason: "set k or explained_variance_ratio, not both".to_string(),
            }),
            (Some(0), None) => Err(MllibError::InvalidParam {
                param: "k".to_string(),
                reason: "at least one component is needed".to_string(),
            }),
            (None, Some(r)) if !(r > 0.0 && r <= 1.0) => Err(MllibError::InvalidParam {
                param: "explained_variance_ratio".to_string(),
                reason: format!("{r} is outside (0, 1] (pca_explained_variance_ratio in SQL)"),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_its_error() {
        assert!(PCA::new().k(2).check().is_ok());
        assert!(PCA::new().explained_variance_ratio(1.0).check().is_ok());
        let e = PCA::new().check().unwrap_err().to_string();
        assert!(e.contains("num_principal_components"), "{e}");
        let e = PCA::new().k(0).check().unwrap_err().to_string();
        assert!(e.contains("'k'"), "{e}");
        let e = PCA::new()
            .explained_variance_ratio(1.5)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside (0, 1]"), "{e}");
        let e = PCA::new()
            .k(2)
            .explained_variance_ratio(0.5)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = PCA::new().k(2).output_col("").check().unwrap_err();
        assert!(e.to_string().contains("output column"), "{e}");
    }
}
