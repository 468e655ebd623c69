//! Evaluators (Spark MLlib's names): metrics computed as one aggregate pass over the prediction
//! and label columns — never by collecting the rows to the driver. One file per evaluator.

use std::collections::BTreeMap;
use std::sync::Arc;

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::vector::first_nan;
use quiver_engine::{Dataset, FeatureBatch, QuiverError, QuiverSession, StatInputs, Statistic};
use serde::{Deserialize, Serialize};

use crate::api::class_index;
use crate::error::{MllibError, Result};

/// The dataset an evaluator reads: the prediction column as the single feature, the label.
fn scored(data: &Dataset, prediction_col: &str) -> Result<Dataset> {
    let label = data.label().ok_or_else(|| MllibError::InvalidParam {
        param: "label".to_string(),
        reason: "evaluation needs a label column (Dataset::with_label)".to_string(),
    })?;
    Ok(Dataset::new(data.dataframe().clone())
        .with_features([prediction_col])?
        .with_label(label)?)
}

/// Runs one evaluation statistic over `data`'s score column and label, on the session's runner.
async fn evaluate_with<S: Statistic>(
    session: &QuiverSession,
    data: &Dataset,
    score_col: &str,
    stat: S,
) -> Result<S::Output> {
    let ds = scored(data, score_col)?;
    let prepared = session.prepare(&ds, session.runner()).await?;
    Ok(prepared.aggregate(Arc::new(stat)).await?)
}

mod binary;
mod classifier;
mod clustering;
mod explained_variance;
mod multiclass;
mod regression;

pub use binary::{BinaryClassificationEvaluator, BinaryMetrics, ROC_MAX_POINTS, RocPoint};
pub use classifier::evaluate_classifier;
pub use clustering::{ClusteringEvaluator, ClusteringMetrics};
pub use explained_variance::{ExplainedVarianceEvaluator, ExplainedVarianceMetrics};
pub use multiclass::{MulticlassClassificationEvaluator, MulticlassMetrics};
pub use regression::{RegressionEvaluator, RegressionMetrics};

use binary::ScoreCounts;
pub(crate) use classifier::{ClassifierCounts, ClassifierState, classifier_metrics};
use clustering::{ClusterMoments, SilhouetteStat};
use multiclass::ConfusionStat;
use regression::RegressionStat;

fn check_finite<'a>(b: &FeatureBatch<'a>) -> quiver_engine::Result<&'a [f64]> {
    let y = b
        .label
        .ok_or_else(|| QuiverError::internal("evaluation needs a label"))?;
    if let Some(r) = first_nan(y) {
        return Err(QuiverError::InvalidValueInBatch {
            kind: "NaN",
            column: "label".to_string(),
            row_in_batch: r,
        });
    }
    if let Some(r) = first_nan(b.values) {
        return Err(QuiverError::InvalidValueInBatch {
            kind: "NaN",
            column: "prediction".to_string(),
            row_in_batch: r,
        });
    }
    Ok(y)
}

quiver_engine::impl_json_params!(
    RegressionStat => "the regression metrics",
    ConfusionStat => "the confusion counts",
    ScoreCounts => "the score counts",
    ClassifierCounts => "the classifier counts",
    ClusterMoments => "the cluster moments",
    SilhouetteStat => "the silhouette",
);

/// Lets the evaluators' statistics run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<RegressionStat>()?;
    r.add_statistic::<ConfusionStat>()?;
    r.add_statistic::<ScoreCounts>()?;
    r.add_statistic::<ClassifierCounts>()?;
    r.add_statistic::<ClusterMoments>()?;
    r.add_statistic::<SilhouetteStat>()
}
