//! The feature summary (Spark's `Summarizer`): count, mean, variance, min, max, L1/L2 norms and
//! number of non-zeros per feature, as a [`Statistic`].
//!
//! Numerics: each block of rows is reduced with a two-pass mean/M2 (exact for the block, the
//! block being in cache for the second pass) and blocks are combined with Chan et al.'s
//! pairwise update, so the variance does not suffer the cancellation of `E[x²] − E[x]²` and
//! results agree across partitionings to ~1e-15 relative.

use serde::{Deserialize, Serialize};

use crate::aggregate::{StatInputs, Statistic, decode_f64s, encode_f64s};
use crate::error::{QuiverError, Result};
use crate::vector::{FeatureBatch, first_nan};

/// Rows per block of the two-pass update: 512 rows × 64 features × 8 bytes = 256 KiB, so the
/// second pass reads from L2.
const BLOCK_BYTES: usize = 256 * 1024;

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

/// First pass over an unweighted block: sums, norms, extremes, non-zeros.
#[inline(always)]
fn pass1_unweighted(values: &[f64], dim: usize, b: &mut Block) {
    let (sum, min, max) = (&mut b.sum[..dim], &mut b.min[..dim], &mut b.max[..dim]);
    let (l1, l2, nnz) = (&mut b.l1[..dim], &mut b.l2[..dim], &mut b.nnz[..dim]);
    for row in values.chunks_exact(dim) {
        let row = &row[..dim];
        for j in 0..dim {
            let x = row[j];
            sum[j] += x;
            l1[j] += x.abs();
            l2[j] += x * x;
            min[j] = if x < min[j] { x } else { min[j] };
            max[j] = if x > max[j] { x } else { max[j] };
            nnz[j] += if x != 0.0 { 1.0 } else { 0.0 };
        }
    }
}

/// Second pass over an unweighted block: Σ (x − mean)².
#[inline(always)]
fn pass2_unweighted(values: &[f64], dim: usize, mean: &[f64], m2: &mut [f64]) {
    let (mean, m2) = (&mean[..dim], &mut m2[..dim]);
    for row in values.chunks_exact(dim) {
        let row = &row[..dim];
        for j in 0..dim {
            let d = row[j] - mean[j];
            m2[j] += d * d;
        }
    }
}

#[inline(always)]
fn pass1_weighted(values: &[f64], w: &[f64], dim: usize, b: &mut Block) {
    let (sum, min, max) = (&mut b.sum[..dim], &mut b.min[..dim], &mut b.max[..dim]);
    let (l1, l2, nnz) = (&mut b.l1[..dim], &mut b.l2[..dim], &mut b.nnz[..dim]);
    for (row, &wi) in values.chunks_exact(dim).zip(w) {
        if wi == 0.0 {
            continue;
        }
        let row = &row[..dim];
        for j in 0..dim {
            let x = row[j];
            sum[j] += wi * x;
            l1[j] += wi * x.abs();
            l2[j] += wi * x * x;
            min[j] = if x < min[j] { x } else { min[j] };
            max[j] = if x > max[j] { x } else { max[j] };
            nnz[j] += if x != 0.0 { 1.0 } else { 0.0 };
        }
    }
}

#[inline(always)]
fn pass2_weighted(values: &[f64], w: &[f64], dim: usize, mean: &[f64], m2: &mut [f64]) {
    let (mean, m2) = (&mean[..dim], &mut m2[..dim]);
    for (row, &wi) in values.chunks_exact(dim).zip(w) {
        let row = &row[..dim];
        for j in 0..dim {
            let d = row[j] - mean[j];
            m2[j] += wi * d * d;
        }
    }
}

/// The block kernels, compiled twice: for the baseline target and, where the CPU has it, AVX2
/// (chosen at run time).
macro_rules! kernels {
    ($modname:ident, $($attr:meta)?) => {
        mod $modname {
            use super::*;
            $(#[$attr])?
            pub(super) unsafe fn block_unweighted(values: &[f64], dim: usize, b: &mut Block, mean: &mut [f64]) {
                pass1_unweighted(values, dim, b);
                let n = (values.len() / dim) as f64;
                for j in 0..dim {
                    mean[j] = b.sum[j] / n;
                }
                pass2_unweighted(values, dim, mean, &mut b.m2);
            }
            $(#[$attr])?
            pub(super) unsafe fn block_weighted(values: &[f64], w: &[f64], ws: f64, dim: usize, b: &mut Block, mean: &mut [f64]) {
                pass1_weighted(values, w, dim, b);
                for j in 0..dim {
                    mean[j] = b.sum[j] / ws;
                }
                pass2_weighted(values, w, dim, mean, &mut b.m2);
            }
        }
    };
}

kernels!(baseline,);
#[cfg(target_arch = "x86_64")]
kernels!(avx2, target_feature(enable = "avx2,fma"));

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
        let avx2 = has_avx2();
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
                // SAFETY: the AVX2 variant runs only when the CPU reports AVX2 and FMA.
                unsafe {
                    if avx2 {
                        #[cfg(target_arch = "x86_64")]
                        avx2::block_weighted(block.values, w, ws, dim, b, mean);
                    } else {
                        baseline::block_weighted(block.values, w, ws, dim, b, mean);
                    }
                }
                (count, ws, wsq)
            }
            (true, None) => {
                return Err(QuiverError::InvalidParam {
                    param: "weight".to_string(),
                    reason: "a weighted summary needs a weight column".to_string(),
                });
            }
            (false, _) => {
                // SAFETY: as above.
                unsafe {
                    if avx2 {
                        #[cfg(target_arch = "x86_64")]
                        avx2::block_unweighted(block.values, dim, b, mean);
                    } else {
                        baseline::block_unweighted(block.values, dim, b, mean);
                    }
                }
                let n = block.n_rows as f64;
                (n, n, n)
            }
        };
        // A NaN anywhere in the block shows up in its sums: only then look for the row.
        if b.sum.iter().any(|s| s.is_nan())
            && let Some(i) = first_nan(block.values)
        {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: i / dim,
            });
        }
        let part = SummaryState {
            count,
            weight_sum: ws,
            weight_sq_sum: wsq,
            mean: mean.to_vec(),
            m2: b.m2.clone(),
            min: b.min.clone(),
            max: b.max.clone(),
            l1: b.l1.clone(),
            l2: b.l2.clone(),
            nnz: b.nnz.clone(),
        };
        state.combine(&part);
        Ok(())
    }
}

impl Statistic for Summarizer {
    type State = SummaryState;
    type Output = FeatureSummary;

    fn name(&self) -> &str {
        "feature_summary"
    }

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
