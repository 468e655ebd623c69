//! `BinaryClassificationEvaluator`: AUC ROC, AUC PR and log loss from per-score counts, exact
//! up to [`MAX_SCORE_BINS`] distinct scores; beyond, neighbouring scores share a bin (Spark's
//! `numBins`), so the state stays bounded on any data.

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
        let histogram = prepared.aggregate(Arc::new(ScoreCounts { dim })).await?;
        metrics_from_histogram(&histogram)
    }
}

/// The metrics of the score counts [`ScoreCounts`] gathers (settled: nothing pending).
pub(super) fn metrics_from_histogram(histogram: &ScoreHistogram) -> Result<BinaryMetrics> {
    let (counts, log_loss_sum) = (&histogram.counts, histogram.log_loss);
    // Sweep thresholds from the highest score down.
    let (pos, neg): (f64, f64) = counts
        .iter()
        .map(|(_, c)| c)
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
    for (_, (p, n)) in counts.iter().rev() {
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
        let histogram = prepared.aggregate(Arc::new(ScoreCounts { dim })).await?;
        let (pos, neg) = histogram
            .counts
            .iter()
            .map(|(_, c)| c)
            .fold((0.0, 0.0), |a, (p, n)| (a.0 + p, a.1 + n));
        let point = |threshold: f64, tp: f64, fp: f64| RocPoint {
            threshold,
            true_positives: tp as u64,
            false_positives: fp as u64,
            true_negatives: (neg - fp) as u64,
            false_negatives: (pos - tp) as u64,
        };
        // Scores (a bin's lowest possible score) with their counts, highest first.
        let scores: Vec<(f64, f64, f64)> = histogram
            .counts
            .iter()
            .rev()
            .map(|(k, (p, n))| (histogram.lowest(*k), *p, *n))
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

/// Most distinct scores counted exactly: past it, scores are binned by their leading bits.
pub const MAX_SCORE_BINS: usize = 1 << 16;

/// Positive and negative counts per distinct score (keyed by the score's order-preserving bits),
/// and the summed log loss.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ScoreCounts {
    pub(super) dim: usize,
}

/// Positive and negative counts per score bin, and the summed log loss. A bin holds the scores
/// whose order-preserving bits agree but for the last `shift` (0: one bin per distinct score).
/// Scores are first gathered unsorted (`pending`) and folded into the bins a block at a time: a
/// sort and one merge per block instead of a tree insertion per row.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ScoreHistogram {
    /// `(bin key, (positives, negatives))`, sorted by key, keys distinct.
    pub(super) counts: Vec<(u64, (f64, f64))>,
    pub(super) shift: u32,
    pub(super) log_loss: f64,
    /// Scores not folded in yet, negatives' then positives': order-preserving bits (unshifted).
    pending: [Vec<u64>; 2],
}

/// Scores gathered before they are folded into the bins.
const PENDING_SCORES: usize = 1 << 16;

impl ScoreHistogram {
    /// Adds the score of each row (the last of every `stride` values) under its label, and its
    /// log loss. Stops at the first label that is not 0 or 1 and returns its row.
    pub(super) fn add_rows(
        &mut self,
        values: &[f64],
        stride: usize,
        labels: &[f64],
    ) -> Option<usize> {
        for (r, &label) in labels.iter().enumerate() {
            if label != 0.0 && label != 1.0 {
                return Some(r);
            }
            let score = values[r * stride + stride - 1];
            self.add(score, label == 1.0);
            let p = score.clamp(1e-15, 1.0 - 1e-15);
            self.log_loss -= if label == 1.0 { p.ln() } else { (1.0 - p).ln() };
        }
        None
    }

    fn add(&mut self, score: f64, positive: bool) {
        self.pending[positive as usize].push(ordered_bits(score));
        if self.pending_len() >= PENDING_SCORES {
            self.flush();
        }
    }

    fn pending_len(&self) -> usize {
        self.pending[0].len() + self.pending[1].len()
    }

    /// Folds the pending scores into the bins: each label's sorted (plain keys sort fastest),
    /// then counted in one merge of the two.
    fn flush(&mut self) {
        if self.pending_len() == 0 {
            return;
        }
        let shift = self.shift;
        for keys in &mut self.pending {
            if shift > 0 {
                keys.iter_mut().for_each(|k| *k = bits_shr(*k, shift));
            }
            keys.sort_unstable();
        }
        let [negatives, positives] = &self.pending;
        let mut runs: Vec<(u64, (f64, f64))> = Vec::with_capacity(self.pending_len());
        let (mut i, mut j) = (0, 0);
        loop {
            let key = match (negatives.get(i), positives.get(j)) {
                (Some(&a), Some(&b)) => a.min(b),
                (Some(&a), None) => a,
                (None, Some(&b)) => b,
                (None, None) => break,
            };
            let (mut p, mut n) = (0.0, 0.0);
            while negatives.get(i) == Some(&key) {
                n += 1.0;
                i += 1;
            }
            while positives.get(j) == Some(&key) {
                p += 1.0;
                j += 1;
            }
            runs.push((key, (p, n)));
        }
        // Cleared, not dropped: the next block reuses the buffers.
        self.pending.iter_mut().for_each(Vec::clear);
        let bins = std::mem::take(&mut self.counts);
        self.set_bins(merge_sorted(bins, runs));
    }

    /// The bins from `bins` (sorted by key, at the current shift), coarsened when there are
    /// more than [`MAX_SCORE_BINS`]: at once to the finest shift that leaves a quarter of that,
    /// so that the next blocks rarely coarsen again.
    fn set_bins(&mut self, mut bins: Vec<(u64, (f64, f64))>) {
        if bins.len() > MAX_SCORE_BINS {
            let distinct = |by: u32| {
                1 + bins
                    .windows(2)
                    .filter(|w| bits_shr(w[0].0, by) != bits_shr(w[1].0, by))
                    .count()
            };
            let mut by = 4;
            while by < 64 && distinct(by) > MAX_SCORE_BINS / 4 {
                by += 4;
            }
            bins = coarsened(bins, by);
            self.shift += by;
        }
        self.counts = bins;
    }

    /// Adds `other`'s scores: its unsorted ones join this histogram's (their bits are raw, so
    /// they take this one's bins when folded in), its bins are merged at the coarser shift of
    /// the two. No copy of `other` beyond its bins (a task's partial over a few thousand rows
    /// has none: its scores are all pending).
    pub(super) fn merge(&mut self, other: &ScoreHistogram) {
        self.log_loss += other.log_loss;
        for (mine, theirs) in self.pending.iter_mut().zip(&other.pending) {
            mine.extend_from_slice(theirs);
        }
        if !other.counts.is_empty() {
            let shift = self.shift.max(other.shift);
            if shift > self.shift {
                let mine = std::mem::take(&mut self.counts);
                self.counts = coarsened(mine, shift - self.shift);
                self.shift = shift;
            }
            let theirs = if shift > other.shift {
                coarsened(other.counts.clone(), shift - other.shift)
            } else {
                other.counts.clone()
            };
            let mine = std::mem::take(&mut self.counts);
            self.set_bins(merge_sorted(mine, theirs));
        }
        if self.pending_len() >= PENDING_SCORES {
            self.flush();
        }
    }

    /// This histogram with every score folded into the bins.
    fn settled(&self) -> std::borrow::Cow<'_, ScoreHistogram> {
        if self.pending_len() == 0 {
            std::borrow::Cow::Borrowed(self)
        } else {
            let mut s = self.clone();
            s.flush();
            std::borrow::Cow::Owned(s)
        }
    }

    /// The lowest score bin `key` can hold (the score itself when scores are not binned).
    pub(super) fn lowest(&self, key: u64) -> f64 {
        from_ordered_bits(if self.shift >= 64 {
            0
        } else {
            key << self.shift
        })
    }
}

/// Two lists of bins sorted by key as one, the counts of equal keys added.
fn merge_sorted(a: Vec<(u64, (f64, f64))>, b: Vec<(u64, (f64, f64))>) -> Vec<(u64, (f64, f64))> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (k, (p, n)) = a.next().expect("peeked");
                let (_, (q, m)) = b.next().expect("peeked");
                (k, (p + q, n + m))
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next().expect("peeked"),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().expect("peeked"),
            (Some(_), None) => a.next().expect("peeked"),
            (None, None) => return out,
        };
        out.push(next);
    }
}

/// Sorted bins with `by` more bits shifted out, neighbours that now agree merged.
fn coarsened(bins: Vec<(u64, (f64, f64))>, by: u32) -> Vec<(u64, (f64, f64))> {
    let mut out: Vec<(u64, (f64, f64))> = Vec::with_capacity(bins.len());
    for (k, (p, n)) in bins {
        let k = bits_shr(k, by);
        match out.last_mut() {
            Some((last, (q, m))) if *last == k => {
                *q += p;
                *m += n;
            }
            _ => out.push((k, (p, n))),
        }
    }
    out
}

/// `bits >> shift`, zero when everything is shifted out.
fn bits_shr(bits: u64, shift: u32) -> u64 {
    bits.checked_shr(shift).unwrap_or(0)
}

/// Maps an f64 to a u64 whose order is the f64's order.
pub(super) fn ordered_bits(v: f64) -> u64 {
    let b = (v + 0.0).to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

impl Statistic for ScoreCounts {
    type State = ScoreHistogram;
    type Output = ScoreHistogram;

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
        ScoreHistogram::default()
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = check_finite(b)?;
        if let Some(r) = s.add_rows(b.values, self.dim, y) {
            return Err(QuiverError::InvalidParam {
                param: "label".to_string(),
                reason: format!("value {} (row {r} of a batch) is not 0 or 1", y[r]),
            });
        }
        Ok(())
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        s.merge(o);
        Ok(())
    }
    fn finish(&self, mut s: Self::State) -> quiver_engine::Result<Self::State> {
        s.flush();
        if s.counts.is_empty() {
            return Err(QuiverError::EmptyDataset {
                context: "evaluation".to_string(),
            });
        }
        Ok(s)
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        let s = s.settled();
        encode_f64s(&[s.log_loss, s.counts.len() as f64, s.shift as f64], out);
        for (k, (p, n)) in &s.counts {
            out.extend_from_slice(&k.to_le_bytes());
            encode_f64s(&[*p, *n], out);
        }
    }
    fn state_size(&self, s: &Self::State) -> usize {
        s.counts.capacity() * std::mem::size_of::<(u64, (f64, f64))>()
            + (s.pending[0].capacity() + s.pending[1].capacity()) * std::mem::size_of::<u64>()
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        let (head, mut rest) = decode_f64s(bytes, 3)?;
        let mut counts = Vec::with_capacity(head[1] as usize);
        for _ in 0..head[1] as usize {
            if rest.len() < 24 {
                return Err(QuiverError::internal("score-count state too short"));
            }
            let mut k = [0u8; 8];
            k.copy_from_slice(&rest[..8]);
            let (pn, r) = decode_f64s(&rest[8..], 2)?;
            counts.push((u64::from_le_bytes(k), (pn[0], pn[1])));
            rest = r;
        }
        if counts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(QuiverError::internal(
                "score-count state: bins out of order",
            ));
        }
        Ok(ScoreHistogram {
            counts,
            shift: head[2] as u32,
            log_loss: head[0],
            pending: Default::default(),
        })
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

    /// Scores spread so that every one is distinct.
    fn scores(n: usize, seed: u64) -> Vec<(f64, bool)> {
        let mut state = seed;
        (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                (u, (i % 3 == 0) == (u > 0.4))
            })
            .collect()
    }

    /// Partials merged as a runner merges its tasks' states (scores pending, or some folded
    /// into bins) hold what one histogram of every score holds: the same bins while they are
    /// exact, the same counts once they are coarsened.
    #[test]
    fn merged_partials_hold_what_one_histogram_of_every_score_holds() {
        let whole = |data: &[(f64, bool)]| {
            let mut h = ScoreHistogram::default();
            data.iter().for_each(|(s, y)| h.add(*s, *y));
            h.flush();
            h
        };
        let merged = |data: &[(f64, bool)], part: usize, flush_every: usize| {
            let mut m = ScoreHistogram::default();
            for (i, chunk) in data.chunks(part).enumerate() {
                let mut p = ScoreHistogram::default();
                chunk.iter().for_each(|(s, y)| p.add(*s, *y));
                if i % flush_every == 0 {
                    p.flush();
                }
                m.merge(&p);
            }
            m.flush();
            m
        };
        let data = scores(40_000, 3);
        for (part, flush_every) in [(3_000, usize::MAX), (3_000, 2), (40_000, 1)] {
            assert_eq!(merged(&data, part, flush_every).counts, whole(&data).counts);
        }
        let data = scores(3 * MAX_SCORE_BINS, 5);
        let m = merged(&data, 16 * 1024, 3);
        assert!(m.shift > 0 && m.counts.len() <= MAX_SCORE_BINS);
        let count = |h: &ScoreHistogram| {
            h.counts
                .iter()
                .fold((0.0, 0.0), |(a, b), (_, (p, n))| (a + p, b + n))
        };
        assert_eq!(count(&m), count(&whole(&data)));
    }

    #[test]
    fn histograms_stay_bounded_and_keep_counts_and_order() {
        let data = scores(3 * MAX_SCORE_BINS, 7);
        let (a, b) = data.split_at(data.len() / 3);
        let mut h = ScoreHistogram::default();
        let mut g = ScoreHistogram::default();
        a.iter().for_each(|(s, y)| h.add(*s, *y));
        h.flush();
        assert_eq!(h.shift, 0, "exact while the distinct scores fit");
        assert_eq!(h.counts.len(), a.len());
        b.iter().for_each(|(s, y)| g.add(*s, *y));
        g.flush();
        assert!(g.shift > 0 && g.counts.len() <= MAX_SCORE_BINS);
        h.merge(&g);
        assert!(h.counts.len() <= MAX_SCORE_BINS);
        let total: f64 = h.counts.iter().map(|(_, (p, n))| p + n).sum();
        assert_eq!(total, data.len() as f64);
        let positives = data.iter().filter(|(_, y)| *y).count() as f64;
        assert_eq!(h.counts.iter().map(|(_, (p, _))| p).sum::<f64>(), positives);
        // Every score lies in its bin: not below the bin's lowest score, below the next one's.
        let keys: Vec<u64> = h.counts.iter().map(|(k, _)| *k).collect();
        for (s, _) in &data {
            let k = bits_shr(ordered_bits(*s), h.shift);
            let i = keys.binary_search(&k).expect("its bin");
            assert!(*s >= h.lowest(k));
            if let Some(next) = keys.get(i + 1) {
                assert!(*s < h.lowest(*next));
            }
        }
        // The state's reported size follows its bins (what DataFusion's memory pool sees).
        let stat = ScoreCounts { dim: 1 };
        let empty = stat.state_size(&ScoreHistogram::default());
        assert_eq!(empty, 0);
        assert!(
            stat.state_size(&h) >= h.counts.len() * 24,
            "{}",
            stat.state_size(&h)
        );
        // Encoding round trip.
        let mut bytes = Vec::new();
        stat.encode_state(&h, &mut bytes);
        assert_eq!(stat.decode_state(&bytes).unwrap(), h);
    }
}
