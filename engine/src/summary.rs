//! The feature summary (Spark's `Summarizer`): count, mean, variance, min, max, L1/L2 norms and
//! number of non-zeros per feature, as a [`Statistic`].
//!
//! Numerics: each block of rows is reduced with a two-pass mean/M2 (exact for the block, the
//! block being in cache for the second pass) and blocks are combined with Chan et al.'s
//! pairwise update, so the variance does not suffer the cancellation of `E[x²] − E[x]²` and
//! results agree across partitionings to ~1e-15 relative.
//!
//! Speed: a block is processed four features at a time with every accumulator in a register
//! (an AVX2+FMA build of the kernel is chosen at run time), and the next block is prefetched
//! because the group-by-group reads defeat the hardware prefetcher. Measured on 1M × 20 (see
//! `quiver bench summary`): 12.3 ms per pass with two threads, 13 GB/s, against 7.7 ms for a
//! plain vectorised sum of the same data.

use serde::{Deserialize, Serialize};

use crate::aggregate::{StatInputs, Statistic, decode_f64s, encode_f64s};
use crate::error::{QuiverError, Result};
use crate::vector::{FeatureBatch, first_non_finite};

/// Bytes per block of the two-pass update (e.g. 64 rows × 64 features × 8 bytes): small enough
/// to stay in L1 while each group of four features is read twice, with the next block
/// prefetched meanwhile.
const BLOCK_BYTES: usize = 32 * 1024;

/// Computes a [`FeatureSummary`] of `dim` features, optionally weighted by the weight column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summarizer {
    dim: usize,
    weighted: bool,
}

impl Summarizer {
    pub fn new(dim: usize) -> Self {
        Summarizer {
            dim,
            weighted: false,
        }
    }

    /// Weight rows by the dataset's weight column (rows of weight 0 are skipped, like Spark).
    /// Defaults to `false`.
    pub fn weighted(mut self, weighted: bool) -> Self {
        self.weighted = weighted;
        self
    }
}

/// Per-feature summary statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    /// Rows counted (rows of weight 0 excluded).
    pub count: u64,
    /// Sum of the weights (equals `count` when unweighted).
    pub weight_sum: f64,
    pub mean: Vec<f64>,
    /// Unbiased sample variance (with reliability weights when weighted, like Spark).
    pub variance: Vec<f64>,
    pub std: Vec<f64>,
    /// Weighted sum of the values.
    pub sum: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    /// Σ w·|x|
    pub norm_l1: Vec<f64>,
    /// √(Σ w·x²)
    pub norm_l2: Vec<f64>,
    /// Number of rows where the feature is not zero.
    pub num_nonzeros: Vec<u64>,
}

impl FeatureSummary {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// One row per feature (`feature`, `mean`, `std`, `min`, `max`, `norm_l1`, `norm_l2`,
    /// `num_nonzeros`), for printing or querying. `names` must have one name per feature.
    pub fn to_record_batch(&self, names: &[String]) -> Result<arrow::array::RecordBatch> {
        use arrow::array::{ArrayRef, Float64Array, StringArray, UInt64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        if names.len() != self.dim() {
            return Err(QuiverError::internal(format!(
                "{} names for a summary of {} features",
                names.len(),
                self.dim()
            )));
        }
        let f = |v: &Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v.clone())) };
        let schema = Schema::new(vec![
            Field::new("feature", DataType::Utf8, false),
            Field::new("mean", DataType::Float64, false),
            Field::new("std", DataType::Float64, false),
            Field::new("min", DataType::Float64, false),
            Field::new("max", DataType::Float64, false),
            Field::new("norm_l1", DataType::Float64, false),
            Field::new("norm_l2", DataType::Float64, false),
            Field::new("num_nonzeros", DataType::UInt64, false),
        ]);
        Ok(arrow::array::RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(names)),
                f(&self.mean),
                f(&self.std),
                f(&self.min),
                f(&self.max),
                f(&self.norm_l1),
                f(&self.norm_l2),
                Arc::new(UInt64Array::from(self.num_nonzeros.clone())),
            ],
        )?)
    }
}

/// Mergeable state of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryState {
    count: f64,
    weight_sum: f64,
    weight_sq_sum: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    l1: Vec<f64>,
    l2: Vec<f64>,
    nnz: Vec<f64>,
}

impl SummaryState {
    fn new(dim: usize) -> Self {
        SummaryState {
            count: 0.0,
            weight_sum: 0.0,
            weight_sq_sum: 0.0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            min: vec![f64::INFINITY; dim],
            max: vec![f64::NEG_INFINITY; dim],
            l1: vec![0.0; dim],
            l2: vec![0.0; dim],
            nnz: vec![0.0; dim],
        }
    }

    fn vectors(&self) -> [&Vec<f64>; 7] {
        [
            &self.mean, &self.m2, &self.min, &self.max, &self.l1, &self.l2, &self.nnz,
        ]
    }

    /// Chan et al.'s pairwise combination of (weight, mean, M2), plus the plain reductions.
    fn combine(&mut self, other: &SummaryState) {
        self.combine_parts(Parts {
            count: other.count,
            weight_sum: other.weight_sum,
            weight_sq_sum: other.weight_sq_sum,
            mean: &other.mean,
            m2: &other.m2,
            min: &other.min,
            max: &other.max,
            l1: &other.l1,
            l2: &other.l2,
            nnz: &other.nnz,
        });
    }

    fn combine_parts(&mut self, other: Parts<'_>) {
        if other.weight_sum == 0.0 {
            self.count += other.count;
            return;
        }
        let wa = self.weight_sum;
        let wb = other.weight_sum;
        let w = wa + wb;
        let fb = wb / w;
        let cross = wa * wb / w;
        for j in 0..self.mean.len() {
            let delta = other.mean[j] - self.mean[j];
            self.mean[j] += delta * fb;
            self.m2[j] += other.m2[j] + delta * delta * cross;
            self.min[j] = if other.min[j] < self.min[j] {
                other.min[j]
            } else {
                self.min[j]
            };
            self.max[j] = if other.max[j] > self.max[j] {
                other.max[j]
            } else {
                self.max[j]
            };
            self.l1[j] += other.l1[j];
            self.l2[j] += other.l2[j];
            self.nnz[j] += other.nnz[j];
        }
        self.count += other.count;
        self.weight_sum = w;
        self.weight_sq_sum += other.weight_sq_sum;
    }
}

/// A borrowed partial summary (a block's or a whole state's).
struct Parts<'a> {
    count: f64,
    weight_sum: f64,
    weight_sq_sum: f64,
    mean: &'a [f64],
    m2: &'a [f64],
    min: &'a [f64],
    max: &'a [f64],
    l1: &'a [f64],
    l2: &'a [f64],
    nnz: &'a [f64],
}

/// Scratch accumulators for one block.
struct Block {
    sum: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    l1: Vec<f64>,
    l2: Vec<f64>,
    nnz: Vec<f64>,
}

impl Block {
    fn new(dim: usize) -> Self {
        Block {
            sum: vec![0.0; dim],
            m2: vec![0.0; dim],
            min: vec![f64::INFINITY; dim],
            max: vec![f64::NEG_INFINITY; dim],
            l1: vec![0.0; dim],
            l2: vec![0.0; dim],
            nnz: vec![0.0; dim],
        }
    }

    fn reset(&mut self) {
        for v in [
            &mut self.sum,
            &mut self.m2,
            &mut self.l1,
            &mut self.l2,
            &mut self.nnz,
        ] {
            v.fill(0.0);
        }
        self.min.fill(f64::INFINITY);
        self.max.fill(f64::NEG_INFINITY);
    }
}

/// Statistics of `W` adjacent features (`g..g + W`) over every row of a block, with all
/// accumulators in registers: first pass for sums, norms, extremes and non-zeros, second pass
/// (the block's lines are in cache by then) for Σ w·(x − mean)². `WEIGHTED` selects the
/// weighted form; rows of weight 0 contribute nothing.
#[inline(always)]
fn feature_group<const W: usize, const WEIGHTED: bool, const FMA: bool>(
    values: &[f64],
    dim: usize,
    g: usize,
    w: &[f64],
    weight_sum: f64,
    b: &mut Block,
    mean: &mut [f64],
) {
    let mut sum = [0.0f64; W];
    let mut l1 = [0.0f64; W];
    let mut l2 = [0.0f64; W];
    let mut mn = [f64::INFINITY; W];
    let mut mx = [f64::NEG_INFINITY; W];
    let mut nnz = [0.0f64; W];
    for (r, row) in values.chunks_exact(dim).enumerate() {
        let x: &[f64; W] = match row[g..g + W].try_into() {
            Ok(x) => x,
            Err(_) => continue,
        };
        let wi = if WEIGHTED { w[r] } else { 1.0 };
        if WEIGHTED && wi == 0.0 {
            continue;
        }
        for k in 0..W {
            let v = x[k];
            if WEIGHTED {
                sum[k] += wi * v;
                l1[k] += wi * v.abs();
                l2[k] += wi * v * v;
            } else {
                sum[k] += v;
                l1[k] += v.abs();
                l2[k] = if FMA {
                    v.mul_add(v, l2[k])
                } else {
                    l2[k] + v * v
                };
            }
            mn[k] = if v < mn[k] { v } else { mn[k] };
            mx[k] = if v > mx[k] { v } else { mx[k] };
            nnz[k] += if v != 0.0 { 1.0 } else { 0.0 };
        }
    }
    let mut mu = [0.0f64; W];
    for k in 0..W {
        mu[k] = sum[k] / weight_sum;
    }
    let mut m2 = [0.0f64; W];
    for (r, row) in values.chunks_exact(dim).enumerate() {
        let x: &[f64; W] = match row[g..g + W].try_into() {
            Ok(x) => x,
            Err(_) => continue,
        };
        for k in 0..W {
            let d = x[k] - mu[k];
            m2[k] = if WEIGHTED {
                m2[k] + w[r] * d * d
            } else if FMA {
                d.mul_add(d, m2[k])
            } else {
                m2[k] + d * d
            };
        }
    }
    b.sum[g..g + W].copy_from_slice(&sum);
    b.l1[g..g + W].copy_from_slice(&l1);
    b.l2[g..g + W].copy_from_slice(&l2);
    b.min[g..g + W].copy_from_slice(&mn);
    b.max[g..g + W].copy_from_slice(&mx);
    b.nnz[g..g + W].copy_from_slice(&nnz);
    b.m2[g..g + W].copy_from_slice(&m2);
    mean[g..g + W].copy_from_slice(&mu);
}

/// Every feature of a block, four at a time (one AVX2 register per accumulator), then the
/// remainder one by one.
#[inline(always)]
fn block_stats<const WEIGHTED: bool, const FMA: bool>(
    values: &[f64],
    dim: usize,
    w: &[f64],
    weight_sum: f64,
    b: &mut Block,
    mean: &mut [f64],
) {
    let mut g = 0;
    while g + 4 <= dim {
        feature_group::<4, WEIGHTED, FMA>(values, dim, g, w, weight_sum, b, mean);
        g += 4;
    }
    while g < dim {
        feature_group::<1, WEIGHTED, FMA>(values, dim, g, w, weight_sum, b, mean);
        g += 1;
    }
}

#[inline(always)]
fn block_unweighted_impl<const FMA: bool>(
    values: &[f64],
    dim: usize,
    b: &mut Block,
    mean: &mut [f64],
) {
    let n = (values.len() / dim) as f64;
    block_stats::<false, FMA>(values, dim, &[], n, b, mean);
}

#[inline(always)]
fn block_weighted_impl<const FMA: bool>(
    values: &[f64],
    w: &[f64],
    ws: f64,
    dim: usize,
    b: &mut Block,
    mean: &mut [f64],
) {
    block_stats::<true, FMA>(values, dim, w, ws, b, mean);
}

// The block kernels, compiled for the baseline target and for AVX2 with FMA.
crate::fma_kernels!(best => baseline, avx2;
    fn block_unweighted(values: &[f64], dim: usize, b: &mut Block, mean: &mut [f64]) => block_unweighted_impl;
    fn block_weighted(values: &[f64], w: &[f64], ws: f64, dim: usize, b: &mut Block, mean: &mut [f64]) => block_weighted_impl;
);

/// Hints the CPU to bring `data` into cache (no effect on other architectures).
#[inline]
fn prefetch(data: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr() as *const i8;
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch never faults; the address is inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

impl Summarizer {
    fn update_block(
        &self,
        state: &mut SummaryState,
        block: &FeatureBatch<'_>,
        b: &mut Block,
        mean: &mut [f64],
    ) -> Result<()> {
        let dim = self.dim;
        b.reset();
        let (count, ws, wsq) = match (self.weighted, block.weight) {
            (true, Some(w)) => {
                let mut ws = 0.0;
                let mut wsq = 0.0;
                let mut count = 0.0;
                for (r, &wi) in w.iter().enumerate() {
                    if wi.is_nan() || wi < 0.0 {
                        return Err(QuiverError::InvalidValueInBatch {
                            kind: if wi.is_nan() { "NaN" } else { "negative value" },
                            column: "weight".to_string(),
                            row_in_batch: r,
                        });
                    }
                    ws += wi;
                    wsq += wi * wi;
                    count += if wi != 0.0 { 1.0 } else { 0.0 };
                }
                if ws == 0.0 {
                    state.count += 0.0;
                    return Ok(());
                }
                best::block_weighted(block.values, w, ws, dim, b, mean);
                (count, ws, wsq)
            }
            (true, None) => {
                return Err(QuiverError::InvalidParam {
                    param: "weight".to_string(),
                    reason: "a weighted summary needs a weight column".to_string(),
                });
            }
            (false, _) => {
                best::block_unweighted(block.values, dim, b, mean);
                let n = block.n_rows as f64;
                (n, n, n)
            }
        };
        // A NaN or an infinity anywhere in the block shows up in its sums: only then look for
        // the row.
        if b.sum.iter().any(|s| !s.is_finite())
            && let Some((i, kind)) = first_non_finite(block.values, false)
        {
            return Err(QuiverError::InvalidValueInBatch {
                kind,
                column: "features".to_string(),
                row_in_batch: i / dim,
            });
        }
        state.combine_parts(Parts {
            count,
            weight_sum: ws,
            weight_sq_sum: wsq,
            mean,
            m2: &b.m2,
            min: &b.min,
            max: &b.max,
            l1: &b.l1,
            l2: &b.l2,
            nnz: &b.nnz,
        });
        Ok(())
    }
}

impl Statistic for Summarizer {
    type State = SummaryState;
    type Output = FeatureSummary;

    const NAME: &'static str = "feature_summary";

    fn params(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| QuiverError::Json {
            context: "summary parameters".to_string(),
            source,
        })
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: false,
            weight: self.weighted,
        }
    }

    fn init(&self) -> SummaryState {
        SummaryState::new(self.dim)
    }

    fn update(&self, state: &mut SummaryState, batch: &FeatureBatch<'_>) -> Result<()> {
        if batch.dim != self.dim {
            return Err(QuiverError::InvalidParam {
                param: "features".to_string(),
                reason: format!(
                    "summary of {} features given rows of {}",
                    self.dim, batch.dim
                ),
            });
        }
        let rows_per_block = (BLOCK_BYTES / (8 * self.dim.max(1))).max(1);
        let mut b = Block::new(self.dim);
        let mut mean = vec![0.0; self.dim];
        let mut start = 0;
        while start < batch.n_rows {
            let end = (start + rows_per_block).min(batch.n_rows);
            // Ask for the next block while this one is computed: each block is read feature
            // group by feature group, a pattern the hardware prefetcher does not run ahead of.
            let next_end = (end + rows_per_block).min(batch.n_rows);
            prefetch(&batch.values[end * self.dim..next_end * self.dim]);
            self.update_block(state, &batch.slice(start, end), &mut b, &mut mean)
                .map_err(|e| match e {
                    QuiverError::InvalidValueInBatch {
                        kind,
                        column,
                        row_in_batch,
                    } => QuiverError::InvalidValueInBatch {
                        kind,
                        column,
                        row_in_batch: start + row_in_batch,
                    },
                    other => other,
                })?;
            start = end;
        }
        Ok(())
    }

    fn merge(&self, state: &mut SummaryState, other: &SummaryState) -> Result<()> {
        if other.mean.len() != state.mean.len() {
            return Err(QuiverError::internal(
                "merging summaries of different widths",
            ));
        }
        state.combine(other);
        Ok(())
    }

    fn finish(&self, s: SummaryState) -> Result<FeatureSummary> {
        if s.count == 0.0 {
            return Err(QuiverError::EmptyDataset {
                context: "the feature summary".to_string(),
            });
        }
        // Unbiased with reliability weights; equals n − 1 when unweighted.
        let denom = s.weight_sum - s.weight_sq_sum / s.weight_sum;
        let variance: Vec<f64> =
            s.m2.iter()
                .map(|m2| {
                    if denom > 0.0 {
                        (m2 / denom).max(0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
        Ok(FeatureSummary {
            count: s.count as u64,
            weight_sum: s.weight_sum,
            std: variance.iter().map(|v| v.sqrt()).collect(),
            variance,
            sum: s.mean.iter().map(|m| m * s.weight_sum).collect(),
            mean: s.mean,
            min: s.min,
            max: s.max,
            norm_l1: s.l1,
            norm_l2: s.l2.iter().map(|v| v.sqrt()).collect(),
            num_nonzeros: s.nnz.iter().map(|&v| v as u64).collect(),
        })
    }

    fn encode_state(&self, s: &SummaryState, out: &mut Vec<u8>) {
        encode_f64s(&[s.count, s.weight_sum, s.weight_sq_sum], out);
        for v in s.vectors() {
            encode_f64s(v, out);
        }
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<SummaryState> {
        let (head, mut rest) = decode_f64s(bytes, 3)?;
        let mut next = || -> Result<Vec<f64>> {
            let (v, r) = decode_f64s(rest, self.dim)?;
            rest = r;
            Ok(v)
        };
        let state = SummaryState {
            count: head[0],
            weight_sum: head[1],
            weight_sq_sum: head[2],
            mean: next()?,
            m2: next()?,
            min: next()?,
            max: next()?,
            l1: next()?,
            l2: next()?,
            nnz: next()?,
        };
        if !rest.is_empty() {
            return Err(QuiverError::internal("trailing bytes in a summary state"));
        }
        Ok(state)
    }

    fn state_size(&self, _state: &SummaryState) -> usize {
        7 * 8 * self.dim
    }
}

crate::impl_json_params!(Summarizer => "the feature summary");

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: usize, dim: usize) -> Vec<f64> {
        (0..rows * dim)
            .map(|i| ((i * 7919) % 1009) as f64 * 0.01 - 3.0 + if i % 5 == 0 { 0.0 } else { 1.0 })
            .collect()
    }

    /// The portable kernel and the AVX2 one agree (FMA rounds differently, hence the tolerance),
    /// and both match a direct computation, for widths that exercise the 4-wide groups and the
    /// one-wide remainder.
    #[test]
    fn kernels_agree_with_direct_computation() {
        for dim in [1, 3, 4, 7, 20] {
            let rows = 301;
            let v = data(rows, dim);
            let w: Vec<f64> = (0..rows).map(|r| (r % 3) as f64 * 0.5).collect();
            let ws: f64 = w.iter().sum();
            let mut b1 = Block::new(dim);
            let mut m1 = vec![0.0; dim];
            // SAFETY: the portable kernel runs anywhere.
            unsafe { baseline::block_unweighted(&v, dim, &mut b1, &mut m1) };
            for j in 0..dim {
                let col: Vec<f64> = (0..rows).map(|r| v[r * dim + j]).collect();
                let mean = col.iter().sum::<f64>() / rows as f64;
                let m2: f64 = col.iter().map(|x| (x - mean) * (x - mean)).sum();
                assert!((m1[j] - mean).abs() < 1e-12, "dim {dim} mean[{j}]");
                assert!(
                    (b1.m2[j] - m2).abs() < 1e-9 * m2.max(1.0),
                    "dim {dim} m2[{j}]"
                );
                assert_eq!(b1.nnz[j], col.iter().filter(|x| **x != 0.0).count() as f64);
                assert_eq!(b1.min[j], col.iter().cloned().fold(f64::INFINITY, f64::min));
                assert_eq!(
                    b1.max[j],
                    col.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                );
            }
            let mut bw = Block::new(dim);
            let mut mw = vec![0.0; dim];
            // SAFETY: as above.
            unsafe { baseline::block_weighted(&v, &w, ws, dim, &mut bw, &mut mw) };
            for j in 0..dim {
                let mean = (0..rows).map(|r| w[r] * v[r * dim + j]).sum::<f64>() / ws;
                assert!((mw[j] - mean).abs() < 1e-12, "dim {dim} weighted mean[{j}]");
            }
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::has_avx2_fma() {
                let mut b2 = Block::new(dim);
                let mut m2 = vec![0.0; dim];
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { avx2::block_unweighted(&v, dim, &mut b2, &mut m2) };
                for j in 0..dim {
                    assert_eq!(m1[j], m2[j]);
                    assert!((b1.m2[j] - b2.m2[j]).abs() <= 1e-12 * b1.m2[j].abs().max(1.0));
                    assert!((b1.l2[j] - b2.l2[j]).abs() <= 1e-12 * b1.l2[j].abs().max(1.0));
                    assert_eq!(
                        (b1.min[j], b1.max[j], b1.nnz[j]),
                        (b2.min[j], b2.max[j], b2.nnz[j])
                    );
                }
            }
        }
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let s = Summarizer::new(3);
        let mut state = s.init();
        let v = data(50, 3);
        s.update(&mut state, &FeatureBatch::new(&v, 3).unwrap())
            .unwrap();
        let mut bytes = Vec::new();
        s.encode_state(&state, &mut bytes);
        assert_eq!(s.decode_state(&bytes).unwrap(), state);
        assert!(s.decode_state(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn negative_weights_are_rejected() {
        let s = Summarizer::new(1).weighted(true);
        let mut state = s.init();
        let v = [1.0, 2.0, 3.0];
        let w = [1.0, -1.0, 1.0];
        let mut batch = FeatureBatch::new(&v, 1).unwrap();
        batch.weight = Some(&w);
        let err = s.update(&mut state, &batch).unwrap_err().to_string();
        assert!(
            err.contains("negative value in column 'weight'") && err.contains("row 1"),
            "{err}"
        );
    }
}
