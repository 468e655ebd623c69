//! `ExplainedVarianceEvaluator`: the share of the features' variance a projection keeps.

use super::*;

/// What [`ExplainedVarianceEvaluator`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedVarianceMetrics {
    /// Σ var(projection) / Σ var(features), in [0, 1] for an orthonormal projection.
    pub total_explained_variance_ratio: f64,
    /// The sample variance of each projected component.
    pub explained_variance: Vec<f64>,
    /// Σ of the features' sample variances.
    pub total_variance: f64,
}

/// How much of the features' variance a projection keeps (PCA's output vector), on any rows:
/// `Σ var(projection) / Σ var(features)` with sample variances, two aggregate passes. On the
/// training rows it is the fitted PCA's explained variance ratio summed over its components;
/// on held-out rows it says how well the components generalise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedVarianceEvaluator {
    projection_col: String,
}

impl Default for ExplainedVarianceEvaluator {
    fn default() -> Self {
        ExplainedVarianceEvaluator {
            projection_col: "pca_features".to_string(),
        }
    }
}

impl ExplainedVarianceEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The projected vector column. Defaults to `"pca_features"` (PCA's output column).
    pub fn projection_col(mut self, c: impl Into<String>) -> Self {
        self.projection_col = c.into();
        self
    }

    /// The variances of `data`'s features and of its projection column.
    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<ExplainedVarianceMetrics> {
        // One pass: the features and the projection side by side in one vector.
        let dim = data.feature_names()?.len();
        let mut columns = data.features().to_vec();
        columns.push(self.projection_col.clone());
        let both = Dataset::new(data.dataframe().clone()).with_features(&columns)?;
        let prepared = session.prepare(&both, session.runner()).await?;
        let mut variance = prepared
            .aggregate(Arc::new(quiver_engine::Summarizer::new(prepared.dim())))
            .await?
            .variance;
        let projected = variance.split_off(dim);
        let features = variance;
        let total_variance: f64 = features.iter().sum();
        let kept: f64 = projected.iter().sum();
        Ok(ExplainedVarianceMetrics {
            total_explained_variance_ratio: if total_variance > 0.0 {
                kept / total_variance
            } else {
                0.0
            },
            explained_variance: projected,
            total_variance,
        })
    }
}
