//! Weighted means and centred co-moments of features and label (`XᵀWX`, `XᵀWy`, `yᵀWy` about
//! the means) as one mergeable statistic: the input of the normal equations. Each batch is
//! reduced with its own means (two passes) and batches are merged with Chan et al.'s update, so
//! large feature offsets do not cancel digits away.

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::math::madd;
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
        // Pass 2: centred products (upper triangle, mirrored below), blocked.
        let e = d + 1;
        let mut g = vec![0.0; e * e];
        centred_products(b.values, y, weights, &part.mean_x, part.mean_y, &mut g);
        for i in 0..d {
            part.cxx[i * d + i..(i + 1) * d].copy_from_slice(&g[i * e + i..i * e + d]);
            part.cxy[i] = g[i * e + d];
        }
        part.cyy = g[d * e + d];
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
/// Rows per block of centred values (21 values each at 20 features: 43 KB, in L1/L2).
const BLOCK: usize = 256;

/// `g += Σ w z zᵀ` (upper triangle of the `e × e` matrix, `e = d + 1`) over the rows of
/// `values` centred on `mean_x`, with `y − mean_y` as the last value of each `z`: a block of
/// rows is centred into a buffer, then folded in four rows per step (each element of `g`
/// loaded and stored once per four rows, the inner loops contiguous: they vectorise).
#[inline(always)]
fn products<const FMA: bool>(
    values: &[f64],
    y: &[f64],
    w: Option<&[f64]>,
    mean_x: &[f64],
    mean_y: f64,
    g: &mut [f64],
) {
    let d = mean_x.len();
    let e = d + 1;
    let mut z = vec![0.0; BLOCK * e];
    let mut wz = vec![0.0; BLOCK * e];
    for (b, ys) in y.chunks(BLOCK).enumerate() {
        let first = b * BLOCK;
        let n = ys.len();
        for (r, yr) in ys.iter().enumerate() {
            let x = &values[(first + r) * d..(first + r + 1) * d];
            let wr = w.map_or(1.0, |w| w[first + r]);
            let zr = &mut z[r * e..(r + 1) * e];
            for ((zj, xj), mj) in zr.iter_mut().zip(x).zip(mean_x) {
                *zj = xj - mj;
            }
            zr[d] = yr - mean_y;
            for (a, zj) in wz[r * e..(r + 1) * e]
                .iter_mut()
                .zip(&z[r * e..(r + 1) * e])
            {
                *a = wr * zj;
            }
        }
        let mut r = 0;
        while r + 4 <= n {
            let zs = &z[r * e..(r + 4) * e];
            let (z0, rest) = zs.split_at(e);
            let (z1, rest) = rest.split_at(e);
            let (z2, z3) = rest.split_at(e);
            let a = &wz[r * e..(r + 4) * e];
            for i in 0..e {
                let (a0, a1, a2, a3) = (a[i], a[e + i], a[2 * e + i], a[3 * e + i]);
                let row = &mut g[i * e + i..(i + 1) * e];
                for ((((gj, b0), b1), b2), b3) in row
                    .iter_mut()
                    .zip(&z0[i..])
                    .zip(&z1[i..])
                    .zip(&z2[i..])
                    .zip(&z3[i..])
                {
                    let s = madd::<FMA>(a0, *b0, a1 * *b1);
                    let s = madd::<FMA>(a2, *b2, s);
                    *gj += madd::<FMA>(a3, *b3, s);
                }
            }
            r += 4;
        }
        for q in r..n {
            let zq = &z[q * e..(q + 1) * e];
            for i in 0..e {
                let a = wz[q * e + i];
                for (gj, bj) in g[i * e + i..(i + 1) * e].iter_mut().zip(&zq[i..]) {
                    *gj = madd::<FMA>(a, *bj, *gj);
                }
            }
        }
    }
}

quiver_engine::fma_kernels!(products_baseline, products_avx2;
    fn centred(
        values: &[f64], y: &[f64], w: Option<&[f64]>, mean_x: &[f64], mean_y: f64, g: &mut [f64],
    ) => products;
);

/// [`products`] with the best compilation this CPU runs.
fn centred_products(
    values: &[f64],
    y: &[f64],
    w: Option<&[f64]>,
    mean_x: &[f64],
    mean_y: f64,
    g: &mut [f64],
) {
    // SAFETY: the AVX2 variant runs only when the CPU reports AVX2 and FMA.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if quiver_engine::cpu::has_avx2_fma() {
            return products_avx2::centred(values, y, w, mean_x, mean_y, g);
        }
        products_baseline::centred(values, y, w, mean_x, mean_y, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked products (both compilations) agree with the upper triangle summed one row
    /// at a time: batch sizes around the block and the four-row step, weights with zeros.
    #[test]
    fn blocked_products_agree_with_rows_one_at_a_time() {
        let d = 6;
        let e = d + 1;
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        for n in [1, 3, 4, 5, 255, 256, 257, 1030] {
            let values: Vec<f64> = (0..n * d).map(value).collect();
            let y: Vec<f64> = (0..n).map(|r| value(r * 3 + 1) * 2.0).collect();
            let w: Vec<f64> = (0..n)
                .map(|r| {
                    if r % 5 == 2 {
                        0.0
                    } else {
                        0.5 + r as f64 / n as f64
                    }
                })
                .collect();
            let mean_x: Vec<f64> = (0..d).map(|j| value(j + 11)).collect();
            let mean_y = 0.25;
            for weights in [None, Some(&w[..])] {
                let mut expected = vec![0.0; e * e];
                for r in 0..n {
                    let wr = weights.map_or(1.0, |w| w[r]);
                    let mut z: Vec<f64> = (0..d).map(|j| values[r * d + j] - mean_x[j]).collect();
                    z.push(y[r] - mean_y);
                    for i in 0..e {
                        for j in i..e {
                            expected[i * e + j] += wr * z[i] * z[j];
                        }
                    }
                }
                let mut blocked = vec![0.0; e * e];
                centred_products(&values, &y, weights, &mean_x, mean_y, &mut blocked);
                let mut plain = vec![0.0; e * e];
                // SAFETY: the baseline compilation runs anywhere.
                unsafe {
                    products_baseline::centred(&values, &y, weights, &mean_x, mean_y, &mut plain)
                };
                for (k, want) in expected.iter().enumerate() {
                    for got in [blocked[k], plain[k]] {
                        assert!(
                            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                            "n {n}, entry {k}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
