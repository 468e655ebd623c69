//! Logistic regression's statistics: the class counts, and the loss with its gradient at given
//! coefficients (one aggregate pass per evaluation of the objective).

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::vector::{dot, first_nan};
use quiver_engine::{FeatureBatch, QuiverError, StatInputs, Statistic};
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
    ClassCounts => "the class counts",
    LogisticLoss => "the logistic loss",
);
