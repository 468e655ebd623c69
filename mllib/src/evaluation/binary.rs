//! `BinaryClassificationEvaluator`: exact AUC ROC, AUC PR and log loss from per-score counts.

use super::*;

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

/// One point of a ROC curve: rows whose score is at least `threshold` are predicted positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    pub threshold: f64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
}

impl RocPoint {
    /// True positive rate.
    pub fn recall(&self) -> f64 {
        let p = self.true_positives + self.false_negatives;
        if p == 0 {
            0.0
        } else {
            self.true_positives as f64 / p as f64
        }
    }

    pub fn false_positive_rate(&self) -> f64 {
        let n = self.false_positives + self.true_negatives;
        if n == 0 {
            0.0
        } else {
            self.false_positives as f64 / n as f64
        }
    }
}

/// Most points of a ROC curve drawn at the distinct scores (Spark's `numBins`): beyond it,
/// consecutive distinct scores share a point.
pub const ROC_MAX_POINTS: usize = 1000;

impl BinaryClassificationEvaluator {
    /// The ROC curve of the score column against the 0/1 label, by decreasing threshold: at
    /// `thresholds` when given, else at every distinct score (grouped into at most
    /// [`ROC_MAX_POINTS`] points when there are more). With every distinct score, the
    /// trapezoid area from (0, 0) through the points is [`BinaryMetrics::area_under_roc`].
    pub async fn roc_curve(
        &self,
        session: &QuiverSession,
        data: &Dataset,
        thresholds: Option<&[f64]>,
    ) -> Result<Vec<RocPoint>> {
        let ds = scored(data, &self.score_col)?;
        let dim = ds.feature_dim()?;
        let prepared = session.prepare(&ds, session.runner()).await?;
        let (counts, _) = prepared.aggregate(Arc::new(ScoreCounts { dim })).await?;
        let (pos, neg) = counts
            .values()
            .fold((0.0, 0.0), |a, (p, n)| (a.0 + p, a.1 + n));
        let point = |threshold: f64, tp: f64, fp: f64| RocPoint {
            threshold,
            true_positives: tp as u64,
            false_positives: fp as u64,
            true_negatives: (neg - fp) as u64,
            false_negatives: (pos - tp) as u64,
        };
        // Scores with their counts, highest first.
        let scores: Vec<(f64, f64, f64)> = counts
            .iter()
            .rev()
            .map(|(k, (p, n))| (from_ordered_bits(*k), *p, *n))
            .collect();
        if let Some(ts) = thresholds {
            if let Some(t) = ts.iter().find(|t| !t.is_finite()) {
                return Err(MllibError::InvalidParam {
                    param: "thresholds".to_string(),
                    reason: format!("{t} is not a finite number"),
                });
            }
            let mut ts = ts.to_vec();
            ts.sort_by(|a, b| b.total_cmp(a));
            ts.dedup();
            let (mut tp, mut fp, mut i) = (0.0, 0.0, 0);
            let mut out = Vec::with_capacity(ts.len());
            for t in ts {
                while i < scores.len() && scores[i].0 >= t {
                    tp += scores[i].1;
                    fp += scores[i].2;
                    i += 1;
                }
                out.push(point(t, tp, fp));
            }
            return Ok(out);
        }
        let per_point = scores.len().div_ceil(ROC_MAX_POINTS).max(1);
        let (mut tp, mut fp) = (0.0, 0.0);
        let mut out = Vec::with_capacity(scores.len().min(ROC_MAX_POINTS));
        for chunk in scores.chunks(per_point) {
            for (_, p, n) in chunk {
                tp += p;
                fp += n;
            }
            let lowest = chunk.last().map_or(f64::NAN, |c| c.0);
            out.push(point(lowest, tp, fp));
        }
        Ok(out)
    }
}

/// The inverse of [`ordered_bits`].
fn from_ordered_bits(b: u64) -> f64 {
    f64::from_bits(if b >> 63 == 1 { b & !(1 << 63) } else { !b })
}

/// Positive and negative counts per distinct score (keyed by the score's order-preserving bits),
/// and the summed log loss.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ScoreCounts {
    pub(super) dim: usize,
}

/// Maps an f64 to a u64 whose order is the f64's order.
pub(super) fn ordered_bits(v: f64) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_bits_round_trip_and_keep_order() {
        let xs = [-1e300, -2.5, -0.0, 0.0, 1e-300, 0.25, 1.0, f64::INFINITY];
        for w in xs.windows(2) {
            assert!(ordered_bits(w[0]) <= ordered_bits(w[1]));
        }
        for x in xs {
            assert_eq!(from_ordered_bits(ordered_bits(x)), x + 0.0);
        }
    }
}
