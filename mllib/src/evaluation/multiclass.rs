//! `MulticlassClassificationEvaluator`: accuracy, weighted precision/recall/F1 and the confusion
//! matrix from one pass of (label, prediction) counts.

use super::*;

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
        Ok(metrics_from_pairs(&pairs))
    }
}

/// The metrics of the (label, prediction) counts [`ConfusionStat`] gathers.
pub(super) fn metrics_from_pairs(pairs: &BTreeMap<(u64, u64), u64>) -> MulticlassMetrics {
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
    for ((l, p), n) in pairs {
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
    MulticlassMetrics {
        classes,
        confusion,
        accuracy: correct as f64 / total as f64,
        weighted_precision: wp,
        weighted_recall: wr,
        f1: wf,
    }
}

/// Adds one (label, prediction) pair per row of `labels`, the prediction of row `r` being
/// `values[r * stride]`. Pairs of small class indices (whole numbers below [`DENSE_CLASSES`],
/// what classifiers predict) are counted in a table; the few other distinct pairs of a batch
/// in a short list (a scan of a handful of entries per row, not a tree lookup); then all are
/// added to the map.
pub(super) fn count_pairs(
    s: &mut BTreeMap<(u64, u64), u64>,
    values: &[f64],
    stride: usize,
    labels: &[f64],
) {
    const LISTED: usize = 16;
    let mut dense = [[0u64; DENSE_CLASSES]; DENSE_CLASSES];
    let mut listed: Vec<((u64, u64), u64)> = Vec::with_capacity(LISTED);
    for (r, &l) in labels.iter().enumerate() {
        let p = values[r * stride];
        // Saturating casts: NaN, negative and fractional values fail the round trip.
        let (i, j) = (l as usize, p as usize);
        if i < DENSE_CLASSES && j < DENSE_CLASSES && i as f64 == l && j as f64 == p {
            dense[i][j] += 1;
            continue;
        }
        // -0.0 and 0.0 are the same class.
        let key = ((l + 0.0).to_bits(), (p + 0.0).to_bits());
        if let Some((_, n)) = listed.iter_mut().find(|(k, _)| *k == key) {
            *n += 1;
        } else if listed.len() < LISTED {
            listed.push((key, 1));
        } else {
            *s.entry(key).or_insert(0) += 1;
        }
    }
    for (i, row) in dense.iter().enumerate() {
        for (j, &n) in row.iter().enumerate() {
            if n > 0 {
                *s.entry(((i as f64).to_bits(), (j as f64).to_bits()))
                    .or_insert(0) += n;
            }
        }
    }
    for (key, n) in listed {
        *s.entry(key).or_insert(0) += n;
    }
}

/// Class indices below this are counted in [`count_pairs`]' table.
const DENSE_CLASSES: usize = 8;

/// Counts of (label, prediction) pairs, keyed by their bit patterns.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ConfusionStat;

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
        count_pairs(s, b.values, 1, y);
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
    fn state_size(&self, s: &Self::State) -> usize {
        quiver_engine::aggregate::btree_size::<(u64, u64), u64>(s.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_counted_alike_in_the_table_and_beyond_it() {
        // Class indices in the table, -0.0 as 0, and values past it: large, fractional, negative.
        let values = [0.0, 1.0, 7.0, 8.0, 2.5, -1.0, -0.0, 1.0, 300.0, 7.0];
        let labels = [0.0, -0.0, 7.0, 8.0, 2.5, 1.0, 0.0, 1.0, 300.0, 0.5];
        // Spread over a stride of 2, as the prediction of [prediction, score] rows.
        let rows: Vec<f64> = values.iter().flat_map(|&p| [p, 0.25]).collect();
        let mut got = BTreeMap::new();
        count_pairs(&mut got, &rows, 2, &labels);
        let mut want: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for (l, p) in labels.iter().zip(&values) {
            *want
                .entry(((l + 0.0).to_bits(), (p + 0.0).to_bits()))
                .or_insert(0) += 1;
        }
        assert_eq!(got, want);
        assert_eq!(got[&(0.0f64.to_bits(), 0.0f64.to_bits())], 2);
        assert_eq!(got[&(0.0f64.to_bits(), 1.0f64.to_bits())], 1);
    }
}
