//! `KMeans` (Spark MLlib's names and defaults): k-means|| initialisation (Bahmani et al.) and
//! Lloyd iterations, each pass one aggregate over the data.
//!
//! Every random choice about a row depends on the row's values and the seed (a hash), never on
//! its position, so the local and embedded runners, and any partitioning, pick the same points.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int32Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::vector::first_nan;
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, Prepared, QuiverError,
    QuiverSession, StatInputs, Statistic, map_dataset,
};
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, Transformer, check_output_col};
use crate::error::{MllibError, Result};
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// How the initial centres are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KMeansInit {
    /// k-means|| (the default): a few oversampling passes, then k-means++ on the candidates.
    #[default]
    #[serde(alias = "k-means||", alias = "kmeans++")]
    KMeansParallel,
    /// k rows chosen uniformly at random.
    Random,
}

/// k-means clustering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeans {
    k: usize,
    max_iter: usize,
    tol: f64,
    seed: u64,
    init_mode: KMeansInit,
    init_steps: usize,
    prediction_col: String,
}

impl Default for KMeans {
    fn default() -> Self {
        KMeans {
            k: 2,
            max_iter: 20,
            tol: 1e-4,
            seed: 42,
            init_mode: KMeansInit::KMeansParallel,
            init_steps: 2,
            prediction_col: "prediction".to_string(),
        }
    }
}

impl KMeans {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of clusters. Defaults to `2`.
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }
    /// Defaults to `20`.
    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }
    /// Stop when no centre moves farther than this. Defaults to `1e-4`.
    pub fn tol(mut self, t: f64) -> Self {
        self.tol = t;
        self
    }
    /// Defaults to `42`.
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Defaults to `KMeansParallel`.
    pub fn init_mode(mut self, m: KMeansInit) -> Self {
        self.init_mode = m;
        self
    }
    /// Oversampling rounds of k-means||. Defaults to `2`.
    pub fn init_steps(mut self, n: usize) -> Self {
        self.init_steps = n;
        self
    }
    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        if self.k < 1 {
            return Err(MllibError::InvalidK {
                k: self.k,
                reason: "k must be at least 1".to_string(),
            });
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return Err(MllibError::InvalidParam {
                param: "tol".to_string(),
                reason: format!("{} is negative", self.tol),
            });
        }
        if self.init_steps < 1 {
            return Err(MllibError::InvalidParam {
                param: "init_steps".to_string(),
                reason: "at least one step is needed".to_string(),
            });
        }
        check_output_col(&self.prediction_col)
    }
}

/// A uniform number in [0, 1) from a row's values, the seed and a round: the same row always
/// draws the same number, wherever it is processed.
fn row_uniform(row: &[f64], seed: u64, round: u64) -> f64 {
    let mut h = seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for v in row {
        h ^= v.to_bits();
        // splitmix64 finaliser
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// (index, squared distance) of the centre nearest to `x`.
#[inline]
fn nearest(x: &[f64], centers: &[f64], d: usize) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, center) in centers.chunks_exact(d).enumerate() {
        let dist: f64 = x.iter().zip(center).map(|(a, b)| (a - b) * (a - b)).sum();
        if dist < best.1 {
            best = (c, dist);
        }
    }
    best
}

/// The centres laid out for the nearest-centre kernel: groups of four centres, per feature the
/// four values `−2cⱼ` side by side, and each centre's `‖c‖²` (padding centres get +∞). The
/// nearest centre minimises `‖c‖² − 2x·c`, which the kernel computes for 8 rows × 4 centres at
/// a time with independent accumulators (so the multiply-adds pipeline and vectorise), then the
/// chosen centre's exact `‖x − c‖²` is computed directly (no cancellation in the cost).
#[derive(Debug, Clone, Default)]
struct CenterTable {
    d: usize,
    groups: usize,
    neg2t: Vec<f64>,
    norms: Vec<f64>,
}

/// Rows per kernel step.
const ROWS: usize = 8;

/// Rows per cache-resident sub-block of a batch (20 features: 40 KB).
const SUB_BLOCK_ROWS: usize = 256;

impl CenterTable {
    fn new(centers: &[f64], d: usize) -> Self {
        let k = centers.len() / d;
        let groups = k.div_ceil(4);
        let mut neg2t = vec![0.0; groups * d * 4];
        let mut norms = vec![f64::INFINITY; groups * 4];
        for (c, center) in centers.chunks_exact(d).enumerate() {
            let (g, l) = (c / 4, c % 4);
            norms[c] = center.iter().map(|v| v * v).sum();
            for (j, v) in center.iter().enumerate() {
                neg2t[(g * d + j) * 4 + l] = -2.0 * v;
            }
        }
        CenterTable {
            d,
            groups,
            neg2t,
            norms,
        }
    }

    /// For every row of `values`: (nearest centre, exact squared distance to it).
    fn assign(&self, centers: &[f64], values: &[f64], out: &mut Vec<(usize, f64)>) {
        out.clear();
        if self.groups == 0 {
            return;
        }
        // SAFETY: the AVX2 variant runs only when the CPU reports AVX2 and FMA.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                return nearest_avx2::assign(self, centers, values, out);
            }
            nearest_baseline::assign(self, centers, values, out)
        }
    }
}

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

/// `‖c‖² − 2x·c` for `R` rows against every group of four centres; keeps the smallest per row
/// (the first centre on ties).
#[inline(always)]
fn nearest_rows<const R: usize, const FMA: bool>(
    t: &CenterTable,
    rows: &[f64],
    best: &mut [(f64, usize); R],
) {
    let d = t.d;
    for g in 0..t.groups {
        let mut acc = [[0.0f64; 4]; R];
        let norms: [f64; 4] = t.norms[g * 4..g * 4 + 4].try_into().unwrap_or([0.0; 4]);
        for a in acc.iter_mut() {
            *a = norms;
        }
        let cols = &t.neg2t[g * d * 4..(g + 1) * d * 4];
        for (j, c) in cols.chunks_exact(4).enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                let xj = rows[r * d + j];
                for l in 0..4 {
                    a[l] = if FMA {
                        xj.mul_add(c[l], a[l])
                    } else {
                        a[l] + xj * c[l]
                    };
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (l, v) in a.iter().enumerate() {
                if *v < best[r].0 {
                    best[r] = (*v, g * 4 + l);
                }
            }
        }
    }
}

/// [`nearest_rows`] for [`ROWS`] rows with AVX2 and FMA: eight accumulators of four centres
/// in registers, one broadcast and one multiply-add per row and feature. The same operations in
/// the same order as `nearest_rows::<_, true>`, so the tail rows agree bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_block_avx2(t: &CenterTable, rows: &[f64], best: &mut [(f64, usize); ROWS]) {
    use std::arch::x86_64::*;
    let d = t.d;
    assert!(rows.len() >= ROWS * d && t.neg2t.len() == t.groups * d * 4);
    let x = rows.as_ptr();
    let mut lanes = [0.0f64; 4];
    for g in 0..t.groups {
        // SAFETY: every pointer below stays inside `rows` (ROWS × d values, asserted above),
        // `t.neg2t` (groups × d × 4) and `t.norms` (groups × 4).
        unsafe {
            let norms = _mm256_loadu_pd(t.norms.as_ptr().add(g * 4));
            let mut acc = [norms; ROWS];
            let cols = t.neg2t.as_ptr().add(g * d * 4);
            for j in 0..d {
                let c = _mm256_loadu_pd(cols.add(j * 4));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_pd(_mm256_broadcast_sd(&*x.add(r * d + j)), c, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_pd(lanes.as_mut_ptr(), *a);
                for (l, v) in lanes.iter().enumerate() {
                    if *v < best[r].0 {
                        best[r] = (*v, g * 4 + l);
                    }
                }
            }
        }
    }
}

/// The squared distance, with four independent partial sums.
#[inline(always)]
fn squared_distance(x: &[f64], c: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (xs, cs) = (x.chunks_exact(4), c.chunks_exact(4));
    let tail: f64 = xs
        .remainder()
        .iter()
        .zip(cs.remainder())
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    for (a4, b4) in xs.zip(cs) {
        for l in 0..4 {
            acc[l] += (a4[l] - b4[l]) * (a4[l] - b4[l]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

#[inline(always)]
fn assign_all<const FMA: bool>(
    t: &CenterTable,
    centers: &[f64],
    values: &[f64],
    out: &mut Vec<(usize, f64)>,
) {
    let d = t.d;
    let mut blocks = values.chunks_exact(ROWS * d);
    for block in blocks.by_ref() {
        let mut best = [(f64::INFINITY, 0); ROWS];
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: FMA is set only in the AVX2 + FMA compilation, chosen at run time.
            unsafe { nearest_block_avx2(t, block, &mut best) };
        } else {
            nearest_rows::<ROWS, FMA>(t, block, &mut best);
        }
        #[cfg(not(target_arch = "x86_64"))]
        nearest_rows::<ROWS, FMA>(t, block, &mut best);
        for (x, (_, c)) in block.chunks_exact(d).zip(best) {
            out.push((c, squared_distance(x, &centers[c * d..(c + 1) * d])));
        }
    }
    for x in blocks.remainder().chunks_exact(d) {
        let mut best = [(f64::INFINITY, 0); 1];
        nearest_rows::<1, FMA>(t, x, &mut best);
        let c = best[0].1;
        out.push((c, squared_distance(x, &centers[c * d..(c + 1) * d])));
    }
}

/// The kernel compiled for the baseline target and, chosen at run time, AVX2 with FMA.
macro_rules! nearest_kernels {
    ($modname:ident, $fma:literal, $($attr:meta)?) => {
        mod $modname {
            use super::*;
            $(#[$attr])?
            pub(super) unsafe fn assign(
                t: &CenterTable,
                centers: &[f64],
                values: &[f64],
                out: &mut Vec<(usize, f64)>,
            ) {
                assign_all::<$fma>(t, centers, values, out)
            }
        }
    };
}

nearest_kernels!(nearest_baseline, false,);
#[cfg(target_arch = "x86_64")]
nearest_kernels!(nearest_avx2, true, target_feature(enable = "avx2,fma"));

/// What one pass over the data computes for a set of centres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Pass {
    /// Per centre: sum of its points, count; plus the total cost (Lloyd step, candidate weights).
    Sums,
    /// The rows drawn with probability min(1, l·d²(x)/φ) (k-means|| round), or, with no
    /// centres yet, the rows with the smallest draws (a uniform sample of `take` rows).
    Sample {
        round: u64,
        l: f64,
        phi: f64,
        take: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KMeansPass {
    d: usize,
    centers: Vec<f64>,
    /// Derived from `centers`.
    #[serde(skip)]
    table: CenterTable,
    seed: u64,
    pass: Pass,
}

impl Statistic for KMeansPass {
    /// Sums: [cost, counts (k), sums (k·d)]. Sample: [n, then n × (draw, row…)].
    type State = Vec<f64>;
    type Output = Vec<f64>;

    const NAME: &'static str = "quiver_kmeans_pass";

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a k-means pass", self)
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn inputs(&self) -> StatInputs {
        StatInputs::default()
    }

    fn init(&self) -> Vec<f64> {
        match self.pass {
            Pass::Sums => vec![0.0; 1 + self.centers.len() / self.d * (1 + self.d)],
            Pass::Sample { .. } => vec![0.0],
        }
    }

    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let d = self.d;
        let nan_check = |values: &[f64], first_row: usize| match first_nan(values) {
            Some(i) => Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: first_row + i / d,
            }),
            None => Ok(()),
        };
        match &self.pass {
            Pass::Sums => {
                // Sub-blocks that stay in cache while they are checked, assigned and summed.
                let k = self.centers.len() / d;
                let mut nearest = Vec::with_capacity(SUB_BLOCK_ROWS);
                for (i, block) in b.values.chunks(SUB_BLOCK_ROWS * d).enumerate() {
                    nan_check(block, i * SUB_BLOCK_ROWS)?;
                    self.table.assign(&self.centers, block, &mut nearest);
                    for (x, &(c, dist)) in block.chunks_exact(d).zip(&nearest) {
                        s[0] += dist;
                        s[1 + c] += 1.0;
                        let sum = &mut s[1 + k + c * d..1 + k + (c + 1) * d];
                        for (a, v) in sum.iter_mut().zip(x) {
                            *a += v;
                        }
                    }
                }
            }
            Pass::Sample {
                round,
                l,
                phi,
                take,
            } => {
                nan_check(b.values, 0)?;
                let mut nearest = Vec::with_capacity(b.n_rows);
                self.table.assign(&self.centers, b.values, &mut nearest);
                for (r, x) in b.values.chunks_exact(d).enumerate() {
                    let u = row_uniform(x, self.seed, *round);
                    let keep = match nearest.get(r) {
                        None => true, // no centres yet
                        Some((_, dist)) => *phi > 0.0 && u < (l * dist / phi).min(1.0),
                    };
                    if keep {
                        s[0] += 1.0;
                        s.push(u);
                        s.extend_from_slice(x);
                    }
                }
                if self.centers.is_empty() {
                    keep_smallest(s, d, *take);
                }
            }
        }
        Ok(())
    }

    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        match &self.pass {
            Pass::Sums => s.iter_mut().zip(o).for_each(|(a, b)| *a += b),
            Pass::Sample { take, .. } => {
                s[0] += o[0];
                s.extend_from_slice(&o[1..]);
                if self.centers.is_empty() {
                    keep_smallest(s, self.d, *take);
                }
            }
        }
        Ok(())
    }

    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }

    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        encode_f64s(s, out);
    }

    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        let (n, rest) = decode_f64s(bytes, 1)?;
        Ok(decode_f64s(rest, n[0] as usize)?.0)
    }
}

/// Keeps the `take` sampled rows with the smallest draws (ties by row values), sorted.
fn keep_smallest(s: &mut Vec<f64>, d: usize, take: usize) {
    let mut rows = sampled_rows(s, d);
    rows.truncate(take);
    s.clear();
    s.push(rows.len() as f64);
    for (u, r) in rows {
        s.push(u);
        s.extend_from_slice(&r);
    }
}

/// The (draw, row) pairs of a sample state, in a canonical order (by draw, then values).
fn sampled_rows(s: &[f64], d: usize) -> Vec<(f64, Vec<f64>)> {
    let mut rows: Vec<(f64, Vec<f64>)> = s[1..]
        .chunks_exact(d + 1)
        .map(|c| (c[0], c[1..].to_vec()))
        .collect();
    rows.sort_by(|a, b| {
        a.0.total_cmp(&b.0).then_with(|| {
            a.1.iter()
                .zip(&b.1)
                .map(|(x, y)| x.total_cmp(y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    rows
}

/// Weighted k-means++ then Lloyd on a small candidate set, in the driver (Spark's LocalKMeans).
fn local_kmeans(points: &[Vec<f64>], weights: &[f64], k: usize, seed: u64, d: usize) -> Vec<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let total: f64 = weights.iter().sum();
    let pick = |probs: &[f64], sum: f64, rng: &mut rand_chacha::ChaCha8Rng| -> usize {
        let mut r = rng.random::<f64>() * sum;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return i;
            }
        }
        probs.len() - 1
    };
    let mut centers: Vec<f64> = points[pick(weights, total, &mut rng)].clone();
    let mut dist: Vec<f64> = points.iter().map(|p| nearest(p, &centers, d).1).collect();
    while centers.len() / d < k {
        let probs: Vec<f64> = dist.iter().zip(weights).map(|(a, w)| a * w).collect();
        let sum: f64 = probs.iter().sum();
        let i = if sum > 0.0 {
            pick(&probs, sum, &mut rng)
        } else {
            (centers.len() / d) % points.len()
        };
        centers.extend_from_slice(&points[i]);
        let c = &points[i];
        for (p, dd) in points.iter().zip(dist.iter_mut()) {
            let nd: f64 = p.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
            if nd < *dd {
                *dd = nd;
            }
        }
    }
    for _ in 0..30 {
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0.0; k];
        for (p, w) in points.iter().zip(weights) {
            let (c, _) = nearest(p, &centers, d);
            counts[c] += w;
            for (s, v) in sums[c * d..(c + 1) * d].iter_mut().zip(p) {
                *s += w * v;
            }
        }
        for c in 0..k {
            if counts[c] > 0.0 {
                for j in 0..d {
                    centers[c * d + j] = sums[c * d + j] / counts[c];
                }
            }
        }
    }
    centers
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansSummary {
    /// Sum of squared distances to the nearest centre (the objective), at the final centres.
    pub inertia: f64,
    /// Inertia before each Lloyd iteration.
    pub objective_history: Vec<f64>,
    pub iterations: usize,
    pub convergence: String,
    /// Points per cluster.
    pub cluster_sizes: Vec<u64>,
    /// Time spent choosing the initial centres (the rest is one data pass per iteration).
    pub init_ms: f64,
    pub wall_time_ms: f64,
}

impl KMeans {
    async fn pass(&self, data: &Prepared, centers: &[f64], pass: Pass) -> Result<Vec<f64>> {
        let stat = KMeansPass {
            d: data.dim(),
            centers: centers.to_vec(),
            table: CenterTable::new(centers, data.dim()),
            seed: self.seed,
            pass,
        };
        Ok(data.aggregate(Arc::new(stat)).await?)
    }

    async fn initial_centers(&self, data: &Prepared, rows: u64) -> Result<Vec<f64>> {
        let d = data.dim();
        let k = self.k;
        let first = |n: usize| Pass::Sample {
            round: 0,
            l: 0.0,
            phi: 0.0,
            take: n,
        };
        if self.init_mode == KMeansInit::Random {
            let s = self.pass(data, &[], first(k)).await?;
            return Ok(sampled_rows(&s, d)
                .into_iter()
                .flat_map(|(_, r)| r)
                .collect());
        }
        // k-means||: one uniform point, then rounds sampling ~2k points by their cost.
        let s = self.pass(data, &[], first(1)).await?;
        let mut candidates: Vec<f64> = sampled_rows(&s, d)
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect();
        for round in 1..=self.init_steps as u64 {
            let sums = self.pass(data, &candidates, Pass::Sums).await?;
            // Rounded to 10 significant digits: runners that sum in different orders must
            // still draw the same sample.
            let phi: f64 = format!("{:.9e}", sums[0]).parse().unwrap_or(sums[0]);
            let s = self
                .pass(
                    data,
                    &candidates,
                    Pass::Sample {
                        round,
                        l: 2.0 * k as f64,
                        phi,
                        take: 0,
                    },
                )
                .await?;
            for (_, r) in sampled_rows(&s, d) {
                candidates.extend_from_slice(&r);
            }
        }
        let n_cand = candidates.len() / d;
        if (n_cand as u64) < k as u64 && rows >= k as u64 {
            // Too few distinct candidates: top up with a uniform sample.
            let s = self.pass(data, &[], first(k)).await?;
            for (_, r) in sampled_rows(&s, d) {
                candidates.extend_from_slice(&r);
            }
        }
        let sums = self.pass(data, &candidates, Pass::Sums).await?;
        let n_cand = candidates.len() / d;
        let weights: Vec<f64> = sums[1..1 + n_cand].to_vec();
        let points: Vec<Vec<f64>> = candidates.chunks_exact(d).map(<[f64]>::to_vec).collect();
        Ok(local_kmeans(&points, &weights, k, self.seed, d))
    }
}

impl Estimator for KMeans {
    type Model = KMeansModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<KMeansModel> {
        self.check()?;
        let started = Instant::now();
        let data = session.prepare_iterative(data, session.runner()).await?;
        let d = data.dim();
        let k = self.k;
        // Row count from a zero-centre pass would be empty; use one centre at the origin.
        let zero = vec![0.0; d];
        let rows = self.pass(&data, &zero, Pass::Sums).await?[1] as u64;
        if rows == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "k-means".to_string(),
            }
            .into());
        }
        if k as u64 > rows {
            return Err(MllibError::InvalidK {
                k,
                reason: format!("k exceeds the {rows} rows of the data"),
            });
        }
        let mut centers = self.initial_centers(&data, rows).await?;
        let init_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut history = Vec::new();
        let mut iterations = 0;
        let mut convergence = format!("reached max_iter = {}", self.max_iter);
        let mut sums = self.pass(&data, &centers, Pass::Sums).await?;
        while iterations < self.max_iter {
            history.push(sums[0]);
            iterations += 1;
            let mut moved = 0.0f64;
            for c in 0..k {
                let n = sums[1 + c];
                if n == 0.0 {
                    continue; // an empty cluster keeps its centre
                }
                for j in 0..d {
                    let v = sums[1 + k + c * d + j] / n;
                    moved = moved.max((v - centers[c * d + j]).abs());
                    centers[c * d + j] = v;
                }
            }
            sums = self.pass(&data, &centers, Pass::Sums).await?;
            if moved <= self.tol {
                convergence = format!("centres moved less than tol = {}", self.tol);
                break;
            }
        }
        let summary = KMeansSummary {
            inertia: sums[0],
            objective_history: history,
            iterations,
            convergence,
            cluster_sizes: sums[1..1 + k].iter().map(|v| *v as u64).collect(),
            init_ms,
            wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(KMeansModel {
            params: self.clone(),
            dim: d,
            centers,
            summary,
        })
    }
}

/// A fitted [`KMeans`]: the cluster centres.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansModel {
    params: KMeans,
    dim: usize,
    centers: Vec<f64>,
    summary: KMeansSummary,
}

impl KMeansModel {
    /// Centres, one row of `dim` values per cluster.
    pub fn centers(&self) -> Vec<&[f64]> {
        self.centers.chunks_exact(self.dim).collect()
    }

    pub fn summary(&self) -> &KMeansSummary {
        &self.summary
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Assign {
    dim: usize,
    centers: Vec<f64>,
    /// Derived from `centers`.
    #[serde(skip)]
    table: CenterTable,
}

impl BatchFunction for Assign {
    fn name(&self) -> &str {
        "kmeans_predict"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a k-means model", self)
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn return_type(&self) -> DataType {
        DataType::Int32
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let mut nearest = Vec::with_capacity(b.n_rows);
        self.table.assign(&self.centers, b.values, &mut nearest);
        let out: Int32Array = nearest.into_iter().map(|(c, _)| c as i32).collect();
        Ok(Arc::new(out))
    }
}

impl KMeansModel {
    fn assigner(&self) -> Arc<Assign> {
        Arc::new(Assign {
            dim: self.dim,
            centers: self.centers.clone(),
            table: CenterTable::new(&self.centers, self.dim),
        })
    }
}

impl Transformer for KMeansModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        Ok(map_dataset(
            data.clone(),
            self.assigner(),
            &self.params.prediction_col,
        )?)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Predict {
            prediction: self.assigner(),
            probability: None,
        }
    }

    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        self.centers
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(k, c)| (format!("cluster {k}"), c.to_vec()))
            .collect()
    }
}

impl Model for KMeansModel {
    const KIND: &'static str = "kmeans";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = ModelDraft {
            params: params_json(&(&self.params, self.dim))?,
            metrics: serde_json::json!({ "inertia": self.summary.inertia }),
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let centers = vectors_to_ipc(&[("centers", &self.centers)])?;
        Ok((draft, vec![("centers.arrow".to_string(), centers)]))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, dim): (KMeans, usize) = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: KMeansSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let bytes = parts
            .get("centers.arrow")
            .ok_or_else(|| corrupt("no part 'centers.arrow'".to_string()))?;
        let mut cols = vectors_from_ipc(bytes, &meta.name)?;
        let centers = take_vector(&mut cols, "centers", params.k * dim, &meta.name)?;
        Ok(KMeansModel {
            params,
            dim,
            centers,
            summary,
        })
    }
}

impl quiver_engine::registry::FromParams for KMeansPass {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        let mut v: Self = quiver_engine::registry::from_json_params("a k-means pass", bytes)?;
        v.table = CenterTable::new(&v.centers, v.d);
        Ok(v)
    }
}

impl quiver_engine::registry::FromParams for Assign {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        let mut v: Self = quiver_engine::registry::from_json_params("a k-means model", bytes)?;
        v.table = CenterTable::new(&v.centers, v.dim);
        Ok(v)
    }
}

/// Lets k-means' statistic and map run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<KMeansPass>()?;
    r.add_batch_function::<Assign>("kmeans_predict")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked kernel (both compilations) picks the same centre as the direct distance for
    /// every k from 1 to 13 (padding groups included) and row counts around the block size.
    #[test]
    fn kernel_agrees_with_direct_distances() {
        let d = 5;
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        for k in 1..=13 {
            let centers: Vec<f64> = (0..k * d).map(|i| value(i * 31 + 7)).collect();
            let table = CenterTable::new(&centers, d);
            for n in [1, 7, 8, 9, 17, 64] {
                let values: Vec<f64> = (0..n * d).map(value).collect();
                let mut kernels: Vec<Vec<(usize, f64)>> = Vec::new();
                let mut out = Vec::new();
                // SAFETY: the AVX2 variant only where the CPU has it.
                unsafe {
                    nearest_baseline::assign(&table, &centers, &values, &mut out);
                    kernels.push(out.clone());
                    #[cfg(target_arch = "x86_64")]
                    if has_avx2() {
                        out.clear();
                        nearest_avx2::assign(&table, &centers, &values, &mut out);
                        kernels.push(out.clone());
                    }
                }
                for got in kernels {
                    assert_eq!(got.len(), n);
                    for (x, (c, dist)) in values.chunks_exact(d).zip(got) {
                        let (want, want_dist) = nearest(x, &centers, d);
                        assert_eq!(c, want, "k {k} n {n}");
                        assert!((dist - want_dist).abs() <= 1e-12 * want_dist.max(1.0));
                    }
                }
            }
        }
    }
}
