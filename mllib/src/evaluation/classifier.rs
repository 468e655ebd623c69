//! A classifier's evaluation in one pass: the (label, prediction) counts of the multiclass
//! metrics and, for two classes, the score counts of the binary ones, from one read of the
//! scored rows instead of one per evaluator (each read predicts every row again).

use super::binary::{ScoreHistogram, metrics_from_histogram};
use super::multiclass::{count_pairs, metrics_from_pairs};
use super::*;

/// Multiclass metrics and, when the labels are 0/1 and a score is there, the binary ones, of
/// `data`'s label against its `prediction_col` and its `score_col` (the probability of class
/// 1, or a two-class probability vector). The binary metrics are `None` when they do not apply
/// (more than two classes, another width of score, a label other than 0 or 1, one class only).
pub async fn evaluate_classifier(
    session: &QuiverSession,
    data: &Dataset,
    prediction_col: &str,
    score_col: Option<&str>,
) -> Result<(MulticlassMetrics, Option<BinaryMetrics>)> {
    let label = data.label().ok_or_else(|| MllibError::InvalidParam {
        param: "label".to_string(),
        reason: "evaluation needs a label column (Dataset::with_label)".to_string(),
    })?;
    let mut columns = vec![prediction_col];
    columns.extend(score_col);
    let ds = Dataset::new(data.dataframe().clone())
        .with_features(columns)?
        .with_label(label)?;
    let dim = ds.feature_dim()?;
    let prepared = session.prepare(&ds, session.runner()).await?;
    let counts = prepared
        .aggregate(Arc::new(ClassifierCounts::scoring(dim - 1)))
        .await?;
    Ok(classifier_metrics(counts))
}

/// What [`ClassifierCounts`] counts: the (label, prediction) pairs, and the score bins while
/// every label is 0 or 1 and there is a score.
pub(crate) type ClassifierState = (BTreeMap<(u64, u64), u64>, Option<ScoreHistogram>);

/// The metrics of a classifier's counts.
pub(crate) fn classifier_metrics(
    (pairs, histogram): ClassifierState,
) -> (MulticlassMetrics, Option<BinaryMetrics>) {
    let multiclass = metrics_from_pairs(&pairs);
    let binary = match histogram {
        Some(h) if multiclass.classes.len() <= 2 => metrics_from_histogram(&h).ok(),
        _ => None,
    };
    (multiclass, binary)
}

/// Over rows of [prediction, then `scores` score values] (`dim` in all): the confusion counts
/// and, while every label is 0 or 1 and `scores` > 0, the counts per score of the last one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClassifierCounts {
    pub(super) dim: usize,
    pub(super) scores: usize,
}

impl ClassifierCounts {
    /// Over rows of a prediction and `width` class probabilities (0: none): the binary
    /// metrics' score is the last probability when there are one or two.
    pub(crate) fn scoring(width: usize) -> Self {
        ClassifierCounts {
            dim: 1 + width,
            scores: if matches!(width, 1 | 2) { width } else { 0 },
        }
    }

    /// The score part's statistic: its state encoding and settling.
    fn score_counts(&self) -> ScoreCounts {
        ScoreCounts { dim: self.dim }
    }
}

impl Statistic for ClassifierCounts {
    /// The confusion counts; the score counts, dropped at the first label other than 0 or 1.
    type State = ClassifierState;
    type Output = Self::State;

    const NAME: &'static str = "quiver_classifier_counts";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the classifier counts", self)
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
        (
            BTreeMap::new(),
            (self.scores > 0).then(ScoreHistogram::default),
        )
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        count_pairs(&mut s.0, b.values, self.dim, y);
        if let Some(h) = &mut s.1
            && h.add_rows(b.values, self.dim, y).is_some()
        {
            s.1 = None;
        }
        Ok(())
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        for (k, n) in &o.0 {
            *s.0.entry(*k).or_insert(0) += n;
        }
        match (&mut s.1, &o.1) {
            (Some(a), Some(b)) => a.merge(b),
            _ => s.1 = None,
        }
        Ok(())
    }
    fn finish(&self, s: Self::State) -> quiver_engine::Result<Self::Output> {
        if s.0.is_empty() {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        let scores = match s.1 {
            Some(h) => self.score_counts().finish(h).ok(),
            None => None,
        };
        Ok((s.0, scores))
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        encode_f64s(&[s.0.len() as f64, s.1.is_some() as u8 as f64], out);
        ConfusionStat.encode_state(&s.0, out);
        if let Some(h) = &s.1 {
            self.score_counts().encode_state(h, out);
        }
    }
    fn state_size(&self, s: &Self::State) -> usize {
        ConfusionStat.state_size(&s.0)
            + s.1
                .as_ref()
                .map_or(0, |h| self.score_counts().state_size(h))
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        let (head, rest) = decode_f64s(bytes, 2)?;
        let pair_bytes = head[0] as usize * 24;
        if rest.len() < pair_bytes {
            return Err(QuiverError::internal("classifier-count state too short"));
        }
        let pairs = ConfusionStat.decode_state(&rest[..pair_bytes])?;
        let scores = if head[1] == 1.0 {
            Some(self.score_counts().decode_state(&rest[pair_bytes..])?)
        } else {
            None
        };
        Ok((pairs, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `rows` of [prediction, p0, p1] values and their labels.
    fn batch<'a>(
        values: &'a [f64],
        label: &'a [f64],
        rows: std::ops::Range<usize>,
    ) -> FeatureBatch<'a> {
        FeatureBatch {
            values: &values[rows.start * 3..rows.end * 3],
            n_rows: rows.len(),
            dim: 3,
            label: Some(&label[rows]),
            weight: None,
        }
    }

    /// One pass gives what the confusion counts and the score counts give on their own, also
    /// across a merge of states that went through their byte encoding (as partial states do
    /// from executors); a label other than 0 or 1 drops the score part only.
    #[test]
    fn one_pass_equals_the_two_evaluators_statistics() {
        let rows = 40;
        let values: Vec<f64> = (0..rows)
            .flat_map(|r| {
                let p1 = ((r * 37) % 41) as f64 / 41.0;
                [(p1 >= 0.5) as u8 as f64, 1.0 - p1, p1]
            })
            .collect();
        let label: Vec<f64> = (0..rows).map(|r| ((r * 7) % 3 == 0) as u8 as f64).collect();
        let stat = ClassifierCounts { dim: 3, scores: 2 };
        let (mut a, mut b) = (stat.init(), stat.init());
        stat.update(&mut a, &batch(&values, &label, 0..13)).unwrap();
        stat.update(&mut b, &batch(&values, &label, 13..rows))
            .unwrap();
        let mut bytes = Vec::new();
        stat.encode_state(&b, &mut bytes);
        stat.merge(&mut a, &stat.decode_state(&bytes).unwrap())
            .unwrap();
        let (pairs, histogram) = stat.finish(a).unwrap();

        let predictions: Vec<f64> = values.iter().step_by(3).copied().collect();
        let one = FeatureBatch {
            values: &predictions,
            n_rows: rows,
            dim: 1,
            label: Some(&label),
            weight: None,
        };
        let mut c = ConfusionStat.init();
        ConfusionStat.update(&mut c, &one).unwrap();
        assert_eq!(pairs, ConfusionStat.finish(c).unwrap());
        assert_eq!(pairs.values().sum::<u64>(), rows as u64);
        let scores = ScoreCounts { dim: 3 };
        let mut h = scores.init();
        scores
            .update(&mut h, &batch(&values, &label, 0..rows))
            .unwrap();
        let want = metrics_from_histogram(&scores.finish(h).unwrap()).unwrap();
        let got = metrics_from_histogram(&histogram.expect("labels are 0/1")).unwrap();
        // The log loss is a sum taken in two parts here: equal to rounding.
        assert!((got.log_loss - want.log_loss).abs() <= 1e-12 * want.log_loss);
        assert_eq!(
            (got.count, got.area_under_roc, got.area_under_pr),
            (want.count, want.area_under_roc, want.area_under_pr)
        );
        assert!(want.area_under_roc > 0.0 && want.log_loss > 0.0);

        let three: Vec<f64> = (0..rows).map(|r| (r % 3) as f64).collect();
        let mut s = stat.init();
        stat.update(&mut s, &batch(&values, &three, 0..rows))
            .unwrap();
        let (pairs, histogram) = stat.finish(s).unwrap();
        assert!(histogram.is_none());
        assert_eq!(pairs.values().sum::<u64>(), rows as u64);
    }
}
