//! Feature bins: one aggregate pass of a mergeable row sample gives each feature at most
//! `max_bins` value bins (thresholds between quantiles), and rows are coded once as `u8` bins.
//!
//! The sample is the bottom-k of the rows by a hash of their values: which rows it keeps does
//! not depend on the order, the partitioning or the runner, so every runner finds the same bins.

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::{FeatureBatch, QuiverError, Statistic};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The code of a missing (NaN) value; value bins are `0..n_bins ≤ 255`.
pub const MISSING: u8 = 255;
/// The most value bins a feature can have (code 255 is the missing bin).
pub const MAX_VALUE_BINS: usize = 255;

/// Rows the sample keeps (LightGBM samples 200 000 rows to build its bins).
const SAMPLE_ROWS: usize = 200_000;

/// The bottom-k row sample by hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BinSample {
    pub dim: usize,
    /// Rows kept (k).
    pub rows: usize,
    /// Rows whose hash is above this never enter: with the row count known, a threshold that
    /// lets about 1.25 k rows in spares copying the others (the sample is the same).
    pub tau: u64,
}

impl BinSample {
    /// The sample of `k` rows (LightGBM's 200 000 by default) of `n` rows of `dim` features.
    pub fn new(dim: usize, n: u64) -> Self {
        let rows = SAMPLE_ROWS;
        let share = 1.25 * rows as f64 / n.max(1) as f64;
        let tau = if share >= 1.0 {
            u64::MAX
        } else {
            (share * u64::MAX as f64) as u64
        };
        BinSample { dim, rows, tau }
    }
}

/// Sampled rows and their hashes; `tau` is the largest hash that can still enter.
#[derive(Debug, Clone)]
pub(crate) struct SampleState {
    hashes: Vec<u64>,
    values: Vec<f64>,
    tau: u64,
}

/// A 64-bit hash of a row's values (NaN of any payload, and ±0, hash alike): four
/// independent lanes so that the multiplications overlap.
fn row_hash(row: &[f64]) -> u64 {
    let bits = |v: f64| {
        if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            (v + 0.0).to_bits()
        }
    };
    let mut lanes: [u64; 4] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x27d4_eb2f_1656_67c5,
    ];
    let mut chunks = row.chunks_exact(4);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = (*l ^ bits(*v))
                .wrapping_mul(0xbf58_476d_1ce4_e5b9)
                .rotate_left(29);
        }
    }
    for (l, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = (*l ^ bits(*v))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
            .rotate_left(29);
    }
    let h = lanes.iter().fold(row.len() as u64, |h, l| splitmix(h ^ l));
    splitmix(h)
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from any seed.
pub(super) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SampleState {
    /// Feature `j` of the sampled rows (`dim` features each).
    pub(crate) fn column(&self, j: usize, dim: usize) -> Vec<f64> {
        self.values.iter().skip(j).step_by(dim).copied().collect()
    }

    fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Keeps the `k` rows of smallest hash. Rows of equal hash have equal values (a 64-bit
    /// collision aside), so which of them stay does not change the sample.
    fn keep(&mut self, k: usize, d: usize) {
        if self.len() <= k {
            return;
        }
        let mut sorted = self.hashes.clone();
        sorted.select_nth_unstable(k - 1);
        let cut = sorted[k - 1];
        let below = self.hashes.iter().filter(|h| **h < cut).count();
        let mut at_cut = k - below;
        let mut w = 0;
        for r in 0..self.len() {
            let h = self.hashes[r];
            let stay = h < cut
                || (h == cut && at_cut > 0 && {
                    at_cut -= 1;
                    true
                });
            if stay {
                self.hashes[w] = h;
                self.values.copy_within(r * d..(r + 1) * d, w * d);
                w += 1;
            }
        }
        self.hashes.truncate(w);
        self.values.truncate(w * d);
        self.tau = cut;
    }
}

impl Statistic for BinSample {
    type State = SampleState;
    type Output = SampleState;

    const NAME: &'static str = "quiver_tree_bin_sample";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the tree bin sample", self)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn init(&self) -> SampleState {
        SampleState {
            hashes: Vec::new(),
            values: Vec::new(),
            tau: self.tau,
        }
    }
    fn update(&self, s: &mut SampleState, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        for row in b.values.chunks_exact(self.dim) {
            let h = row_hash(row);
            if h > s.tau {
                continue;
            }
            s.hashes.push(h);
            s.values.extend_from_slice(row);
            if s.len() >= 2 * self.rows {
                s.keep(self.rows, self.dim);
            }
        }
        Ok(())
    }
    fn merge(&self, s: &mut SampleState, o: &SampleState) -> quiver_engine::Result<()> {
        s.hashes.extend_from_slice(&o.hashes);
        s.values.extend_from_slice(&o.values);
        s.tau = s.tau.min(o.tau);
        if s.len() >= 2 * self.rows {
            s.keep(self.rows, self.dim);
        }
        Ok(())
    }
    fn finish(&self, mut s: SampleState) -> quiver_engine::Result<SampleState> {
        s.keep(self.rows, self.dim);
        Ok(s)
    }
    fn encode_state(&self, s: &SampleState, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(&s.tau.to_le_bytes());
        for h in &s.hashes {
            out.extend_from_slice(&h.to_le_bytes());
        }
        encode_f64s(&s.values, out);
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<SampleState> {
        let bad = || QuiverError::internal("tree bin sample state is truncated");
        let word = |i: usize| -> quiver_engine::Result<u64> {
            let b = bytes.get(i * 8..i * 8 + 8).ok_or_else(bad)?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| bad())?))
        };
        let n = usize::try_from(word(0)?).map_err(|_| bad())?;
        if n > bytes.len() / 8 {
            return Err(bad());
        }
        let tau = word(1)?;
        let hashes = (0..n).map(|i| word(2 + i)).collect::<Result<Vec<_>, _>>()?;
        let (values, _) = decode_f64s(&bytes[(2 + n) * 8..], n * self.dim)?;
        Ok(SampleState {
            hashes,
            values,
            tau,
        })
    }
    fn state_size(&self, s: &SampleState) -> usize {
        s.hashes.capacity() * 8 + s.values.capacity() * 8
    }
}

quiver_engine::impl_json_params!(BinSample => "the tree bin sample");

/// Per feature, the thresholds between its value bins: bin `b` holds the values `x` with
/// `thresholds[b-1] < x ≤ thresholds[b]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bins {
    pub thresholds: Vec<Vec<f64>>,
}

impl Bins {
    /// At most `max_bins` bins per feature from the sample: between each pair of distinct
    /// values when there are that few, else at equal-frequency cut points (midpoints between
    /// neighbouring sampled values, so a threshold never equals a value seen).
    pub fn from_sample(sample: &SampleState, dim: usize, max_bins: usize) -> Bins {
        let max_bins = max_bins.clamp(2, MAX_VALUE_BINS);
        let n = sample.len();
        let thresholds = (0..dim)
            .into_par_iter()
            .map(|j| {
                let mut v: Vec<f64> = (0..n)
                    .map(|r| sample.values[r * dim + j])
                    .filter(|x| !x.is_nan())
                    .collect();
                v.sort_unstable_by(f64::total_cmp);
                feature_thresholds(&v, max_bins)
            })
            .collect();
        Bins { thresholds }
    }

    pub fn dim(&self) -> usize {
        self.thresholds.len()
    }

    /// Value bins of feature `j`.
    pub fn n_bins(&self, j: usize) -> usize {
        self.thresholds[j].len() + 1
    }

    /// Codes a row-major block of rows: per value, the thresholds below it counted in one
    /// vectorised sweep (AVX2 where the CPU has it).
    pub fn code_rows(&self, values: &[f64], out: &mut [u8]) {
        code::code(self, values, out)
    }
}

#[inline(always)]
fn code_block<const FMA: bool>(bins: &Bins, values: &[f64], out: &mut [u8]) {
    let d = bins.dim();
    for (row, codes) in values.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        for ((x, c), t) in row.iter().zip(codes.iter_mut()).zip(&bins.thresholds) {
            *c = if x.is_nan() {
                MISSING
            } else {
                t.iter().filter(|t| **t < *x).count() as u8
            };
        }
    }
}

quiver_engine::fma_kernels!(code => code_plain, code_avx2;
    fn code(bins: &Bins, values: &[f64], out: &mut [u8]) => code_block;
);

/// Thresholds for one feature's sorted, NaN-free sample.
fn feature_thresholds(sorted: &[f64], max_bins: usize) -> Vec<f64> {
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for &x in sorted {
        match distinct.last_mut() {
            Some((v, c)) if *v == x => *c += 1,
            _ => distinct.push((x, 1)),
        }
    }
    let mid = |a: f64, b: f64| {
        let m = a + (b - a) / 2.0;
        if m.is_finite() { m } else { a }
    };
    if distinct.len() <= max_bins {
        return distinct.windows(2).map(|w| mid(w[0].0, w[1].0)).collect();
    }
    // Equal-frequency cuts over the distinct values' cumulative counts: a cut goes after the
    // distinct value where the running count first reaches each multiple of n / max_bins.
    let n = sorted.len() as f64;
    let step = n / max_bins as f64;
    let mut out = Vec::with_capacity(max_bins - 1);
    let mut seen = 0usize;
    let mut next = step;
    for w in distinct.windows(2) {
        seen += w[0].1;
        if seen as f64 >= next {
            out.push(mid(w[0].0, w[1].0));
            while next <= seen as f64 {
                next += step;
            }
            if out.len() == max_bins - 1 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_of(values: &[f64], dim: usize, k: usize, chunk: usize) -> SampleState {
        let stat = BinSample {
            dim,
            rows: k,
            tau: u64::MAX,
        };
        let mut total = stat.init();
        for c in values.chunks(chunk * dim) {
            let mut s = stat.init();
            stat.update(&mut s, &FeatureBatch::new(c, dim).unwrap())
                .unwrap();
            let mut bytes = Vec::new();
            stat.encode_state(&s, &mut bytes);
            let s = stat.decode_state(&bytes).unwrap();
            stat.merge(&mut total, &s).unwrap();
        }
        stat.finish(total).unwrap()
    }

    #[test]
    fn the_sample_does_not_depend_on_the_partitioning() {
        let values: Vec<f64> = (0..5000).map(|i| ((i * 7919) % 1000) as f64).collect();
        let a = sample_of(&values, 2, 300, 100);
        let b = sample_of(&values, 2, 300, 777);
        let sorted = |s: &SampleState| {
            let mut rows: Vec<(u64, Vec<u64>)> = s
                .hashes
                .iter()
                .zip(s.values.chunks(2))
                .map(|(h, r)| (*h, r.iter().map(|v| v.to_bits()).collect()))
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(a.len(), 300);
        assert_eq!(sorted(&a), sorted(&b));
    }

    #[test]
    fn few_distinct_values_get_a_bin_each_and_many_get_equal_frequency_bins() {
        assert_eq!(
            feature_thresholds(&[0.0, 0.0, 1.0, 1.0, 3.0], 32),
            vec![0.5, 2.0]
        );
        assert!(feature_thresholds(&[2.0, 2.0], 32).is_empty());
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let t = feature_thresholds(&v, 4);
        assert_eq!(t, vec![249.5, 499.5, 749.5]);
        let bins = Bins {
            thresholds: vec![t],
        };
        // The production kernel (vectorised where the CPU allows).
        let mut codes = [0u8; 4];
        bins.code_rows(&[249.5, 250.0, 1e9, f64::NAN], &mut codes);
        assert_eq!(codes, [0, 1, 3, MISSING]);
    }
}
