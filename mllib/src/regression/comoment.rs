//! Weighted means and centred co-moments of features and label (`XᵀWX`, `XᵀWy`, `yᵀWy` about
//! the means) as one mergeable statistic: the input of the normal equations. Each batch is
//! reduced with its own means (two passes) and batches are merged with Chan et al.'s update, so
//! large feature offsets do not cancel digits away.

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::vector::first_nan;
use quiver_engine::{FeatureBatch, QuiverError, StatInputs, Statistic};
use serde::{Deserialize, Serialize};

/// Centred co-moments of `d` features and a label.
#[derive(Debug, Clone, PartialEq)]
pub struct CoMoments {
    /// Rows counted (weight > 0).
    pub count: f64,
    /// Σ w
    pub weight_sum: f64,
    /// Weighted feature means.
    pub mean_x: Vec<f64>,
    pub mean_y: f64,
    /// Σ w (x − x̄)(x − x̄)ᵀ, row-major d × d (symmetric).
    pub cxx: Vec<f64>,
    /// Σ w (x − x̄)(y − ȳ)
    pub cxy: Vec<f64>,
    /// Σ w (y − ȳ)²
    pub cyy: f64,
}

impl CoMoments {
    fn new(d: usize) -> Self {
        CoMoments {
            count: 0.0,
            weight_sum: 0.0,
            mean_x: vec![0.0; d],
            mean_y: 0.0,
            cxx: vec![0.0; d * d],
            cxy: vec![0.0; d],
            cyy: 0.0,
        }
    }

    fn combine(&mut self, o: &CoMoments) {
        if o.weight_sum == 0.0 {
            self.count += o.count;
            return;
        }
        let (wa, wb) = (self.weight_sum, o.weight_sum);
        let w = wa + wb;
        let f = wa * wb / w;
        let d = self.mean_x.len();
        let dx: Vec<f64> = (0..d).map(|j| o.mean_x[j] - self.mean_x[j]).collect();
        let dy = o.mean_y - self.mean_y;
        for i in 0..d {
            for j in 0..d {
                self.cxx[i * d + j] += o.cxx[i * d + j] + f * dx[i] * dx[j];
            }
            self.cxy[i] += o.cxy[i] + f * dx[i] * dy;
            self.mean_x[i] += dx[i] * wb / w;
        }
        self.cyy += o.cyy + f * dy * dy;
        self.mean_y += dy * wb / w;
        self.weight_sum = w;
        self.count += o.count;
    }
}

/// The statistic computing [`CoMoments`] (weights when `weighted`; without `label` the label
/// terms stay zero and the features alone are read, as PCA wants them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoMomentsStatistic {
    pub dim: usize,
    pub weighted: bool,
    #[serde(default = "yes")]
    pub label: bool,
}

fn yes() -> bool {
    true
}

impl Statistic for CoMomentsStatistic {
    type State = CoMoments;
    type Output = CoMoments;

    const NAME: &'static str = "quiver_comoments";

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the co-moments", self)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: self.label,
            weight: self.weighted,
        }
    }

    fn init(&self) -> CoMoments {
        CoMoments::new(self.dim)
    }

    fn update(&self, state: &mut CoMoments, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let d = self.dim;
        let zeros;
        let y = if self.label {
            b.label
                .ok_or_else(|| QuiverError::internal("co-moments need a label"))?
        } else {
            zeros = vec![0.0; b.n_rows];
            &zeros
        };
        if let Some(r) = first_nan(y) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "label".to_string(),
                row_in_batch: r,
            });
        }
        if let Some(i) = first_nan(b.values) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: i / d,
            });
        }
        let weights = if self.weighted { b.weight } else { None };
        let weight = |r: usize| weights.map_or(1.0, |w| w[r]);
        if let Some(w) = weights
            && let Some(r) = w.iter().position(|v| v.is_nan() || *v < 0.0)
        {
            return Err(QuiverError::InvalidValueInBatch {
                kind: if w[r].is_nan() {
                    "NaN"
                } else {
                    "negative value"
                },
                column: "weight".to_string(),
                row_in_batch: r,
            });
        }
        // Pass 1: the batch's weighted means.
        let mut part = CoMoments::new(d);
        for (r, &yr) in y.iter().enumerate().take(b.n_rows) {
            let w = weight(r);
            if w == 0.0 {
                continue;
            }
            part.count += 1.0;
            part.weight_sum += w;
            part.mean_y += w * yr;
            for (m, x) in part.mean_x.iter_mut().zip(b.row(r)) {
                *m += w * x;
            }
        }
        if part.weight_sum == 0.0 {
            state.count += part.count;
            return Ok(());
        }
        part.mean_y /= part.weight_sum;
        for m in part.mean_x.iter_mut() {
            *m /= part.weight_sum;
        }
        // Pass 2: centred products (upper triangle, mirrored below).
        let mut dx = vec![0.0; d];
        for (r, &yr) in y.iter().enumerate().take(b.n_rows) {
            let w = weight(r);
            if w == 0.0 {
                continue;
            }
            for ((v, x), m) in dx.iter_mut().zip(b.row(r)).zip(&part.mean_x) {
                *v = x - m;
            }
            let dy = yr - part.mean_y;
            part.cyy += w * dy * dy;
            for i in 0..d {
                let wdi = w * dx[i];
                part.cxy[i] += wdi * dy;
                let row = &mut part.cxx[i * d..(i + 1) * d];
                for j in i..d {
                    row[j] += wdi * dx[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                part.cxx[i * d + j] = part.cxx[j * d + i];
            }
        }
        state.combine(&part);
        Ok(())
    }

    fn merge(&self, state: &mut CoMoments, other: &CoMoments) -> quiver_engine::Result<()> {
        state.combine(other);
        Ok(())
    }

    fn finish(&self, state: CoMoments) -> quiver_engine::Result<CoMoments> {
        if state.count == 0.0 {
            return Err(QuiverError::EmptyDataset {
                context: "linear regression".to_string(),
            });
        }
        Ok(state)
    }

    fn encode_state(&self, s: &CoMoments, out: &mut Vec<u8>) {
        encode_f64s(&[s.count, s.weight_sum, s.mean_y, s.cyy], out);
        encode_f64s(&s.mean_x, out);
        encode_f64s(&s.cxy, out);
        encode_f64s(&s.cxx, out);
    }

    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<CoMoments> {
        let d = self.dim;
        let (head, rest) = decode_f64s(bytes, 4)?;
        let (mean_x, rest) = decode_f64s(rest, d)?;
        let (cxy, rest) = decode_f64s(rest, d)?;
        let (cxx, rest) = decode_f64s(rest, d * d)?;
        if !rest.is_empty() {
            return Err(QuiverError::internal("trailing bytes in a co-moment state"));
        }
        Ok(CoMoments {
            count: head[0],
            weight_sum: head[1],
            mean_y: head[2],
            cyy: head[3],
            mean_x,
            cxy,
            cxx,
        })
    }

    fn state_size(&self, _s: &CoMoments) -> usize {
        8 * (self.dim * self.dim + 2 * self.dim + 4)
    }
}

quiver_engine::impl_json_params!(
    CoMomentsStatistic => "the co-moments",
);

/// Lets the co-moment statistic (linear regression's, PCA's) run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<CoMomentsStatistic>()
}
