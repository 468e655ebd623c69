//! Evaluators (Spark MLlib's names): metrics computed as one aggregate pass over the prediction
//! and label columns — never by collecting the rows to the driver.

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

/// Regression metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub count: u64,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    /// 1 − SSE / SST (SST about the label mean).
    pub r2: f64,
}

/// RMSE, MSE, MAE and R² of a prediction column against the dataset's label.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionEvaluator {
    prediction_col: String,
}

impl Default for RegressionEvaluator {
    fn default() -> Self {
        RegressionEvaluator {
            prediction_col: "prediction".to_string(),
        }
    }
}

impl RegressionEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<RegressionMetrics> {
        let s = evaluate_with(session, data, &self.prediction_col, RegressionStat).await?;
        // s = [n, mean_y, m2_y, sse, sae]
        let n = s[0];
        let mse = s[3] / n;
        Ok(RegressionMetrics {
            count: n as u64,
            mse,
            rmse: mse.sqrt(),
            mae: s[4] / n,
            r2: if s[2] > 0.0 { 1.0 - s[3] / s[2] } else { 0.0 },
        })
    }
}

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

#[derive(Debug, Serialize, Deserialize)]
struct RegressionStat;

impl Statistic for RegressionStat {
    type State = Vec<f64>;
    type Output = Vec<f64>;

    const NAME: &'static str = "quiver_regression_metrics";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the regression metrics", self)
    }
    fn dim(&self) -> usize {
        1
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 5]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        let n = b.n_rows as f64;
        if n == 0.0 {
            return Ok(());
        }
        let mean = y.iter().sum::<f64>() / n;
        let m2: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum();
        let (mut sse, mut sae) = (0.0, 0.0);
        for (p, t) in b.values.iter().zip(y) {
            sse += (p - t) * (p - t);
            sae += (p - t).abs();
        }
        self.merge(s, &vec![n, mean, m2, sse, sae])
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        let (na, nb) = (s[0], o[0]);
        if nb == 0.0 {
            return Ok(());
        }
        let n = na + nb;
        let delta = o[1] - s[1];
        s[2] += o[2] + delta * delta * na * nb / n;
        s[1] += delta * nb / n;
        s[0] = n;
        s[3] += o[3];
        s[4] += o[4];
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        if s[0] == 0.0 {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(s, out);
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        Ok(decode_f64s(bytes, 5)?.0)
    }
}

/// Multiclass metrics from the confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassMetrics {
    /// Class values in order (the union of labels and predictions).
    pub classes: Vec<f64>,
    /// `confusion[i][j]`: rows with label `classes[i]` predicted as `classes[j]`.
    pub confusion: Vec<Vec<u64>>,
    pub accuracy: f64,
    /// Precision, recall and F1 averaged over classes weighted by their label counts (Spark's
    /// weightedPrecision, weightedRecall, weightedFMeasure).
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub f1: f64,
}

/// Accuracy, weighted precision/recall/F1 and the confusion matrix of a prediction column of
/// class values against the dataset's label.
#[derive(Debug, Clone, PartialEq)]
pub struct MulticlassClassificationEvaluator {
    prediction_col: String,
}

impl Default for MulticlassClassificationEvaluator {
    fn default() -> Self {
        MulticlassClassificationEvaluator {
            prediction_col: "prediction".to_string(),
        }
    }
}

impl MulticlassClassificationEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<MulticlassMetrics> {
        let pairs = evaluate_with(session, data, &self.prediction_col, ConfusionStat).await?;
        let mut classes: Vec<f64> = pairs
            .keys()
            .flat_map(|(l, p)| [f64::from_bits(*l), f64::from_bits(*p)])
            .collect();
        classes.sort_by(f64::total_cmp);
        classes.dedup();
        let index: BTreeMap<u64, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_bits(), i))
            .collect();
        let k = classes.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for ((l, p), n) in &pairs {
            confusion[index[l]][index[p]] += *n;
        }
        let total: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let (mut wp, mut wr, mut wf) = (0.0, 0.0, 0.0);
        for (i, row) in confusion.iter().enumerate() {
            let label_n: u64 = row.iter().sum();
            let pred_n: u64 = confusion.iter().map(|r| r[i]).sum();
            let tp = row[i] as f64;
            let precision = if pred_n > 0 { tp / pred_n as f64 } else { 0.0 };
            let recall = if label_n > 0 {
                tp / label_n as f64
            } else {
                0.0
            };
            let f = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            let share = label_n as f64 / total as f64;
            wp += share * precision;
            wr += share * recall;
            wf += share * f;
        }
        Ok(MulticlassMetrics {
            classes,
            confusion,
            accuracy: correct as f64 / total as f64,
            weighted_precision: wp,
            weighted_recall: wr,
            f1: wf,
        })
    }
}

/// Counts of (label, prediction) pairs, keyed by their bit patterns.
#[derive(Debug, Serialize, Deserialize)]
struct ConfusionStat;

impl Statistic for ConfusionStat {
    type State = BTreeMap<(u64, u64), u64>;
    type Output = BTreeMap<(u64, u64), u64>;

    const NAME: &'static str = "quiver_confusion_counts";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the confusion counts", self)
    }
    fn dim(&self) -> usize {
        1
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Self::State {
        BTreeMap::new()
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        for (p, l) in b.values.iter().zip(y) {
            // -0.0 and 0.0 are the same class.
            let key = ((l + 0.0).to_bits(), (p + 0.0).to_bits());
            *s.entry(key).or_insert(0) += 1;
        }
        Ok(())
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        for (k, n) in o {
            *s.entry(*k).or_insert(0) += n;
        }
        Ok(())
    }
    fn finish(&self, s: Self::State) -> quiver_engine::Result<Self::State> {
        if s.is_empty() {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        Ok(s)
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        for ((l, p), n) in s {
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        if !bytes.len().is_multiple_of(24) {
            return Err(QuiverError::internal(
                "confusion state is not whole triples",
            ));
        }
        let word = |c: &[u8]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        };
        Ok(bytes
            .chunks_exact(24)
            .map(|c| ((word(&c[0..8]), word(&c[8..16])), word(&c[16..24])))
            .collect())
    }
}

/// Binary classification metrics from scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub count: u64,
    /// Area under the ROC curve (exact, ties handled as in the trapezoid rule).
    pub area_under_roc: f64,
    /// Area under the precision-recall curve (trapezoid rule, starting at recall 0 with the
    /// first point's precision, like Spark).
    pub area_under_pr: f64,
    /// Mean negative log-likelihood of the labels under the scores (clipped to [1e-15, 1 − 1e-15]).
    pub log_loss: f64,
}

/// AUC ROC, AUC PR and log loss of a score column (the probability of class 1: a Float64
/// column, or the second element of a probability vector) against a 0/1 label.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryClassificationEvaluator {
    score_col: String,
}

impl Default for BinaryClassificationEvaluator {
    fn default() -> Self {
        BinaryClassificationEvaluator {
            score_col: "probability".to_string(),
        }
    }
}

impl BinaryClassificationEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defaults to `"probability"`.
    pub fn score_col(mut self, c: impl Into<String>) -> Self {
        self.score_col = c.into();
        self
    }

    pub async fn evaluate(&self, session: &QuiverSession, data: &Dataset) -> Result<BinaryMetrics> {
        let ds = scored(data, &self.score_col)?;
        let dim = ds.feature_dim()?;
        if dim != 1 && dim != 2 {
            return Err(MllibError::InvalidParam {
                param: "score_col".to_string(),
                reason: format!(
                    "'{}' has {dim} values per row; expected a score or a two-class probability vector",
                    self.score_col
                ),
            });
        }
        let prepared = session.prepare(&ds, session.runner()).await?;
        let (counts, log_loss_sum) = prepared.aggregate(Arc::new(ScoreCounts { dim })).await?;
        // Sweep thresholds from the highest score down.
        let (pos, neg): (f64, f64) = counts
            .values()
            .fold((0.0, 0.0), |a, (p, n)| (a.0 + p, a.1 + n));
        if pos == 0.0 || neg == 0.0 {
            return Err(MllibError::InvalidParam {
                param: "label".to_string(),
                reason: "AUC needs both classes (0 and 1) among the labels".to_string(),
            });
        }
        let (mut tp, mut fp) = (0.0, 0.0);
        let (mut roc, mut pr) = (0.0, 0.0);
        let mut first = true;
        let (mut last_recall, mut last_precision) = (0.0, 1.0);
        for (p, n) in counts.values().rev() {
            let (tpr0, fpr0) = (tp / pos, fp / neg);
            tp += p;
            fp += n;
            let (tpr, fpr) = (tp / pos, fp / neg);
            roc += (fpr - fpr0) * (tpr + tpr0) / 2.0;
            let precision = tp / (tp + fp);
            if first {
                last_precision = precision;
                first = false;
            }
            pr += (tpr - last_recall) * (precision + last_precision) / 2.0;
            last_recall = tpr;
            last_precision = precision;
        }
        let count = pos + neg;
        Ok(BinaryMetrics {
            count: count as u64,
            area_under_roc: roc,
            area_under_pr: pr,
            log_loss: log_loss_sum / count,
        })
    }
}

/// Positive and negative counts per distinct score (keyed by the score's order-preserving bits),
/// and the summed log loss.
#[derive(Debug, Serialize, Deserialize)]
struct ScoreCounts {
    dim: usize,
}

/// Maps an f64 to a u64 whose order is the f64's order.
fn ordered_bits(v: f64) -> u64 {
    let b = (v + 0.0).to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

impl Statistic for ScoreCounts {
    type State = (BTreeMap<u64, (f64, f64)>, f64);
    type Output = (BTreeMap<u64, (f64, f64)>, f64);

    const NAME: &'static str = "quiver_score_counts";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the score counts", self)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Self::State {
        (BTreeMap::new(), 0.0)
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        for (r, &label) in y.iter().enumerate() {
            if label != 0.0 && label != 1.0 {
                return Err(QuiverError::InvalidParam {
                    param: "label".to_string(),
                    reason: format!("value {label} (row {r} of a batch) is not 0 or 1"),
                });
            }
            let score = b.row(r)[self.dim - 1];
            let e = s.0.entry(ordered_bits(score)).or_insert((0.0, 0.0));
            if label == 1.0 {
                e.0 += 1.0;
            } else {
                e.1 += 1.0;
            }
            let p = score.clamp(1e-15, 1.0 - 1e-15);
            s.1 -= if label == 1.0 { p.ln() } else { (1.0 - p).ln() };
        }
        Ok(())
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        for (k, (p, n)) in &o.0 {
            let e = s.0.entry(*k).or_insert((0.0, 0.0));
            e.0 += p;
            e.1 += n;
        }
        s.1 += o.1;
        Ok(())
    }
    fn finish(&self, s: Self::State) -> quiver_engine::Result<Self::State> {
        if s.0.is_empty() {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        Ok(s)
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        encode_f64s(&[s.1, s.0.len() as f64], out);
        for (k, (p, n)) in &s.0 {
            out.extend_from_slice(&k.to_le_bytes());
            encode_f64s(&[*p, *n], out);
        }
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        let (head, mut rest) = decode_f64s(bytes, 2)?;
        let mut map = BTreeMap::new();
        for _ in 0..head[1] as usize {
            if rest.len() < 24 {
                return Err(QuiverError::internal("score-count state too short"));
            }
            let mut k = [0u8; 8];
            k.copy_from_slice(&rest[..8]);
            let (pn, r) = decode_f64s(&rest[8..], 2)?;
            map.insert(u64::from_le_bytes(k), (pn[0], pn[1]));
            rest = r;
        }
        Ok((map, head[0]))
    }
}

/// Clustering metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusteringMetrics {
    pub count: u64,
    /// Rows per cluster index (0 for an index no row has).
    pub cluster_sizes: Vec<u64>,
    /// Mean silhouette with squared Euclidean distance, in [−1, 1] (rows alone in their
    /// cluster count 0, as in scikit-learn).
    pub silhouette: f64,
    /// Σ ‖x − μ(cluster of x)‖² about each cluster's mean: the inertia of converged k-means.
    pub within_ss: f64,
}

/// The silhouette (squared Euclidean, Spark's default) and within-cluster sum of squares of a
/// cluster-index column against the dataset's features. Exact and distributed as in Spark:
/// one aggregate gathers each cluster's size, mean and spread, a second scores every row
/// against those (the mean squared distance from x to the rows of C is ‖x − μ_C‖² plus C's
/// mean squared deviation), so the cost is O(n·k·d), not O(n²).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusteringEvaluator {
    prediction_col: String,
}

impl Default for ClusteringEvaluator {
    fn default() -> Self {
        ClusteringEvaluator {
            prediction_col: "prediction".to_string(),
        }
    }
}

impl ClusteringEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cluster-index column. Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<ClusteringMetrics> {
        let ds = data.clone().with_label(&self.prediction_col)?;
        let prepared = session.prepare(&ds, session.runner()).await?;
        let d = prepared.dim();
        let column = self.prediction_col.clone();
        let clusters = prepared
            .aggregate(Arc::new(ClusterMoments {
                d,
                column: column.clone(),
            }))
            .await?;
        let sizes: Vec<u64> = clusters.iter().map(|c| c.n as u64).collect();
        let count: u64 = sizes.iter().sum();
        if count == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "clustering evaluation".to_string(),
            }
            .into());
        }
        let nonempty = sizes.iter().filter(|n| **n > 0).count();
        if nonempty < 2 {
            return Err(MllibError::InvalidParam {
                param: self.prediction_col.clone(),
                reason: format!(
                    "the silhouette needs at least two non-empty clusters; '{}' has {nonempty}",
                    self.prediction_col
                ),
            });
        }
        let within_ss = clusters.iter().map(|c| c.m2).sum();
        let s = prepared
            .aggregate(Arc::new(SilhouetteStat {
                d,
                column,
                clusters,
            }))
            .await?;
        Ok(ClusteringMetrics {
            count,
            cluster_sizes: sizes,
            silhouette: s[1] / s[0],
            within_ss,
        })
    }
}

/// One cluster's size, mean and sum of squared deviations from the mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Moments {
    n: f64,
    mean: Vec<f64>,
    m2: f64,
}

/// Per cluster index (the label input): size, mean and squared spread, merged as Chan et al.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterMoments {
    d: usize,
    /// The cluster column, for error messages.
    column: String,
}

impl Statistic for ClusterMoments {
    type State = Vec<Moments>;
    type Output = Vec<Moments>;
    const NAME: &'static str = "quiver_cluster_moments";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the cluster moments", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<Moments> {
        Vec::new()
    }
    fn update(&self, s: &mut Vec<Moments>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let c = b
            .label
            .ok_or_else(|| QuiverError::internal("cluster moments need the cluster column"))?;
        if let Some(i) = first_nan(b.values) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: i / self.d,
            });
        }
        for (r, x) in b.values.chunks_exact(self.d).enumerate() {
            let k = class_index(c[r], &self.column, r)?;
            if s.len() <= k {
                s.resize(
                    k + 1,
                    Moments {
                        n: 0.0,
                        mean: vec![0.0; self.d],
                        m2: 0.0,
                    },
                );
            }
            let m = &mut s[k];
            m.n += 1.0;
            let mut m2 = 0.0;
            for (mu, v) in m.mean.iter_mut().zip(x) {
                let delta = v - *mu;
                *mu += delta / m.n;
                m2 += delta * (v - *mu);
            }
            m.m2 += m2;
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<Moments>, o: &Vec<Moments>) -> quiver_engine::Result<()> {
        if s.len() < o.len() {
            s.resize(
                o.len(),
                Moments {
                    n: 0.0,
                    mean: vec![0.0; self.d],
                    m2: 0.0,
                },
            );
        }
        for (a, b) in s.iter_mut().zip(o) {
            if b.n == 0.0 {
                continue;
            }
            let n = a.n + b.n;
            let gap: f64 = a
                .mean
                .iter()
                .zip(&b.mean)
                .map(|(x, y)| (y - x) * (y - x))
                .sum();
            a.m2 += b.m2 + gap * a.n * b.n / n;
            for (x, y) in a.mean.iter_mut().zip(&b.mean) {
                *x += (y - *x) * b.n / n;
            }
            a.n = n;
        }
        Ok(())
    }
    fn finish(&self, s: Vec<Moments>) -> quiver_engine::Result<Vec<Moments>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<Moments>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        for m in s {
            encode_f64s(&[m.n, m.m2], out);
            encode_f64s(&m.mean, out);
        }
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<Moments>> {
        let (k, mut rest) = decode_f64s(bytes, 1)?;
        let mut out = Vec::with_capacity(k[0] as usize);
        for _ in 0..k[0] as usize {
            let (head, r) = decode_f64s(rest, 2)?;
            let (mean, r) = decode_f64s(r, self.d)?;
            out.push(Moments {
                n: head[0],
                m2: head[1],
                mean,
            });
            rest = r;
        }
        Ok(out)
    }
}

/// `[rows, Σ silhouette]` given every cluster's moments.
#[derive(Debug, Serialize, Deserialize)]
struct SilhouetteStat {
    d: usize,
    column: String,
    clusters: Vec<Moments>,
}

impl Statistic for SilhouetteStat {
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_silhouette";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the silhouette", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 2]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let c = b
            .label
            .ok_or_else(|| QuiverError::internal("the silhouette needs the cluster column"))?;
        let spread: Vec<f64> = self
            .clusters
            .iter()
            .map(|m| if m.n > 0.0 { m.m2 / m.n } else { 0.0 })
            .collect();
        for (r, x) in b.values.chunks_exact(self.d).enumerate() {
            let own = class_index(c[r], &self.column, r)?;
            let mut a = 0.0;
            let mut nearest = f64::INFINITY;
            for (k, m) in self.clusters.iter().enumerate() {
                if m.n == 0.0 {
                    continue;
                }
                let dist: f64 = m
                    .mean
                    .iter()
                    .zip(x)
                    .map(|(mu, v)| (v - mu) * (v - mu))
                    .sum::<f64>()
                    + spread[k];
                if k == own {
                    // The mean over the other rows of x's cluster: x itself contributes 0.
                    a = if m.n > 1.0 {
                        dist * m.n / (m.n - 1.0)
                    } else {
                        f64::NAN
                    };
                } else {
                    nearest = nearest.min(dist);
                }
            }
            s[0] += 1.0;
            let denom = a.max(nearest);
            if a.is_finite() && denom > 0.0 {
                s[1] += (nearest - a) / denom;
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
        Ok(decode_f64s(bytes, 2)?.0)
    }
}

quiver_engine::impl_json_params!(
    RegressionStat => "the regression metrics",
    ConfusionStat => "the confusion counts",
    ScoreCounts => "the score counts",
    ClusterMoments => "the cluster moments",
    SilhouetteStat => "the silhouette",
);

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
        let variances = |ds: Dataset| async move {
            let prepared = session.prepare(&ds, session.runner()).await?;
            let s = prepared
                .aggregate(Arc::new(quiver_engine::Summarizer::new(prepared.dim())))
                .await?;
            Ok::<Vec<f64>, MllibError>(s.variance)
        };
        let features = variances(data.clone()).await?;
        let projected = variances(
            Dataset::new(data.dataframe().clone()).with_features([self.projection_col.as_str()])?,
        )
        .await?;
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

/// Lets the evaluators' statistics run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<RegressionStat>()?;
    r.add_statistic::<ConfusionStat>()?;
    r.add_statistic::<ScoreCounts>()?;
    r.add_statistic::<ClusterMoments>()?;
    r.add_statistic::<SilhouetteStat>()
}
