//! Logistic regression's statistics: the class counts, and the loss with its gradient at given
//! coefficients (one aggregate pass per evaluation of the objective).

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::summary::SummaryState;
use quiver_engine::vector::{dot, first_nan};
use quiver_engine::{FeatureBatch, FeatureSummary, QuiverError, StatInputs, Statistic, Summarizer};
use serde::{Deserialize, Serialize};

use crate::api::class_index;

/// Weighted count per class; the labels must be class indices 0, 1, 2, …
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ClassCounts {
    pub(super) d: usize,
    pub(super) weighted: bool,
    /// The label column's name, for error messages.
    pub(super) label: String,
}

impl Statistic for ClassCounts {
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_class_counts";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the class counts", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.weighted,
        }
    }
    fn init(&self) -> Vec<f64> {
        Vec::new()
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = b
            .label
            .ok_or_else(|| QuiverError::internal("class counts need a label"))?;
        for (r, &v) in y.iter().enumerate() {
            let c = class_index(v, &self.label, r)?;
            if s.len() <= c {
                s.resize(c + 1, 0.0);
            }
            s[c] += b.weight.map_or(1.0, |w| w[r]);
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        if s.len() < o.len() {
            s.resize(o.len(), 0.0);
        }
        s.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        encode_f64s(s, out);
    }
    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        let (n, rest) = decode_f64s(bytes, 1)?;
        Ok(decode_f64s(rest, n[0] as usize)?.0)
    }
}

/// What a fit needs before its first iteration, in one pass: the class counts and the
/// feature summary (means and deviations for the standardisation) unless the rows came with
/// their features' moments (`summary` is then `None`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Setup {
    pub(super) counts: ClassCounts,
    pub(super) summary: Option<Summarizer>,
}

impl Statistic for Setup {
    type State = (Vec<f64>, Option<SummaryState>);
    type Output = (Vec<f64>, Option<FeatureSummary>);
    const NAME: &'static str = "quiver_logistic_setup";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the logistic set-up pass", self)
    }
    fn dim(&self) -> usize {
        self.counts.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.counts.weighted,
        }
    }
    fn init(&self) -> Self::State {
        (self.counts.init(), self.summary.as_ref().map(|m| m.init()))
    }
    fn update(&self, s: &mut Self::State, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        self.counts.update(&mut s.0, b)?;
        match (&self.summary, &mut s.1) {
            (Some(m), Some(state)) => m.update(state, b),
            _ => Ok(()),
        }
    }
    fn merge(&self, s: &mut Self::State, o: &Self::State) -> quiver_engine::Result<()> {
        self.counts.merge(&mut s.0, &o.0)?;
        match (&self.summary, &mut s.1, &o.1) {
            (Some(m), Some(state), Some(other)) => m.merge(state, other),
            _ => Ok(()),
        }
    }
    fn finish(&self, s: Self::State) -> quiver_engine::Result<Self::Output> {
        let summary = match (&self.summary, s.1) {
            (Some(m), Some(state)) => Some(m.finish(state)?),
            _ => None,
        };
        Ok((self.counts.finish(s.0)?, summary))
    }
    fn encode_state(&self, s: &Self::State, out: &mut Vec<u8>) {
        // The counts' encoding starts with its length, so the summary's follows it.
        self.counts.encode_state(&s.0, out);
        if let (Some(m), Some(state)) = (&self.summary, &s.1) {
            m.encode_state(state, out);
        }
    }
    fn state_size(&self, s: &Self::State) -> usize {
        let summary = match (&self.summary, &s.1) {
            (Some(m), Some(state)) => m.state_size(state),
            _ => 0,
        };
        self.counts.state_size(&s.0) + summary
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Self::State> {
        let (n, rest) = decode_f64s(bytes, 1)?;
        let (counts, rest) = decode_f64s(rest, n[0] as usize)?;
        let summary = self
            .summary
            .as_ref()
            .map(|m| m.decode_state(rest))
            .transpose()?;
        Ok((counts, summary))
    }
}

/// Loss and gradient of the logistic objective's data term at given coefficients.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LogisticLoss {
    pub(super) d: usize,
    /// Coefficient vectors (1 binomial, K multinomial).
    pub(super) vectors: usize,
    pub(super) multinomial: bool,
    /// Per vector: d coefficients in the original feature space, then the intercept.
    pub(super) coef: Vec<f64>,
    pub(super) weighted: bool,
}

impl Statistic for LogisticLoss {
    /// [W, loss, gradient (vectors × (d + 1)) in the original space]
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_logistic_loss";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the logistic loss", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.weighted,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 2 + self.coef.len()]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let (d, kv) = (self.d, self.vectors);
        let y = b
            .label
            .ok_or_else(|| QuiverError::internal("the logistic loss needs a label"))?;
        let nan_at = |i: usize| QuiverError::InvalidValueInBatch {
            kind: "NaN",
            column: "features".to_string(),
            row_in_batch: i,
        };
        if !self.multinomial {
            // The kernel checks each block for NaN while it is in cache.
            let w = if self.weighted { b.weight } else { None };
            let mut nan = None;
            super::kernel::binomial_loss_gradient(&self.coef, b.values, y, w, s, &mut nan);
            return nan.map_or(Ok(()), |r| Err(nan_at(r)));
        }
        if let Some(i) = first_nan(b.values) {
            return Err(nan_at(i / d));
        }
        let mut margins = vec![0.0; kv];
        let (head, grad) = s.split_at_mut(2);
        for (r, x) in b.values.chunks_exact(d).enumerate() {
            let w = if self.weighted {
                b.weight.map_or(1.0, |w| w[r])
            } else {
                1.0
            };
            if w == 0.0 {
                continue;
            }
            for (k, m) in margins.iter_mut().enumerate() {
                let c = &self.coef[k * (d + 1)..(k + 1) * (d + 1)];
                *m = c[d] + dot(&c[..d], x);
            }
            let label = y[r] as usize;
            head[0] += w;
            {
                let max = margins.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + margins.iter().map(|m| (m - max).exp()).sum::<f64>().ln();
                head[1] += w * (lse - margins[label]);
                for k in 0..kv {
                    let resid = w * ((margins[k] - lse).exp() - if k == label { 1.0 } else { 0.0 });
                    let g = &mut grad[k * (d + 1)..(k + 1) * (d + 1)];
                    for (gj, v) in g[..d].iter_mut().zip(x) {
                        *gj += resid * v;
                    }
                    g[d] += resid;
                }
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
    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        Ok(decode_f64s(bytes, 2 + self.coef.len())?.0)
    }
}

quiver_engine::impl_json_params!(
    Setup => "the logistic set-up pass",
    LogisticLoss => "the logistic loss",
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The set-up pass gives what the class counts and the summary give on their own, also
    /// across a merge of states that went through their byte encoding (as partial states
    /// do from executors).
    #[test]
    fn setup_pass_equals_its_two_statistics() {
        let d = 3;
        let values: Vec<f64> = (0..30).map(|i| ((i * 7) % 11) as f64 - 4.5).collect();
        let label: Vec<f64> = (0..10).map(|r| (r % 3) as f64).collect();
        let batch = |rows: std::ops::Range<usize>| FeatureBatch {
            values: &values[rows.start * d..rows.end * d],
            n_rows: rows.len(),
            dim: d,
            label: Some(&label[rows]),
            weight: None,
        };
        let counts = ClassCounts {
            d,
            weighted: false,
            label: "y".to_string(),
        };
        let setup = Setup {
            counts: ClassCounts {
                d,
                weighted: false,
                label: "y".to_string(),
            },
            summary: Some(Summarizer::new(d)),
        };
        let (mut a, mut b) = (setup.init(), setup.init());
        setup.update(&mut a, &batch(0..4)).unwrap();
        setup.update(&mut b, &batch(4..10)).unwrap();
        let mut bytes = Vec::new();
        setup.encode_state(&b, &mut bytes);
        setup
            .merge(&mut a, &setup.decode_state(&bytes).unwrap())
            .unwrap();
        let (got_counts, got_summary) = setup.finish(a).unwrap();
        let got_summary = got_summary.unwrap();

        let mut c = counts.init();
        counts.update(&mut c, &batch(0..10)).unwrap();
        assert_eq!(got_counts, vec![4.0, 3.0, 3.0]);
        assert_eq!(got_counts, counts.finish(c).unwrap());
        let summarizer = Summarizer::new(d);
        let mut s = summarizer.init();
        summarizer.update(&mut s, &batch(0..10)).unwrap();
        let want = summarizer.finish(s).unwrap();
        for (g, w) in got_summary.mean.iter().zip(&want.mean) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        for (g, w) in got_summary.std.iter().zip(&want.std) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        // Without the summary (moments known): the counts alone, through the byte encoding.
        let counting = Setup {
            counts,
            summary: None,
        };
        let (mut a, mut b) = (counting.init(), counting.init());
        counting.update(&mut a, &batch(0..4)).unwrap();
        counting.update(&mut b, &batch(4..10)).unwrap();
        let mut bytes = Vec::new();
        counting.encode_state(&b, &mut bytes);
        assert_eq!(bytes.len(), counting.state_size(&b));
        let b = counting.decode_state(&bytes).unwrap();
        counting.merge(&mut a, &b).unwrap();
        assert_eq!(counting.finish(a).unwrap(), (vec![4.0, 3.0, 3.0], None));
    }
}
