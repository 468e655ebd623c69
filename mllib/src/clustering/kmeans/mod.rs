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

mod bounds;
mod kernel;
mod model;
mod params;
mod statistic;

pub use model::KMeansModel;
pub use params::{KMeans, KMeansAlgorithm, KMeansInit};

use bounds::{BoundedPass, Bounds};
use kernel::*;
use model::*;
use statistic::*;

/// A uniform number in [0, 1) from a row's values, the seed and a round: the same row always
/// draws the same number, wherever it is processed. Four lanes take every fourth value each
/// (one multiply and shift per value, so the lanes' chains run side by side), then one
/// splitmix64 finaliser mixes them. [`row_uniforms`] draws a block's rows at once.
#[cfg(test)]
fn row_uniform(row: &[f64], seed: u64, round: u64) -> f64 {
    let mut lanes = start_lanes(seed, round);
    absorb(&mut lanes, row);
    finish_lanes(&lanes, row.len())
}

/// [`row_uniform`] of every row of `block` (`d` values each), into `out`: the same numbers,
/// four rows side by side, so that their sixteen multiply chains overlap (one row's four
/// chains alone wait on the multiplier's latency). Compiled also for AVX-512 (a row's four
/// lanes are one vector there: one 64-bit multiply instruction per four values) and chosen at
/// run time; integer arithmetic, so every compilation draws the same numbers.
fn row_uniforms(block: &[f64], d: usize, seed: u64, round: u64, out: &mut Vec<f64>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
        fn avx512(block: &[f64], d: usize, seed: u64, round: u64, out: &mut Vec<f64>) {
            row_uniforms_into(block, d, seed, round, out)
        }
        if quiver_engine::cpu::has_avx512_fma() {
            // SAFETY: the CPU reports AVX-512 F, DQ and VL.
            return unsafe { avx512(block, d, seed, round, out) };
        }
    }
    row_uniforms_into(block, d, seed, round, out)
}

#[inline(always)]
fn row_uniforms_into(block: &[f64], d: usize, seed: u64, round: u64, out: &mut Vec<f64>) {
    out.clear();
    if d == 0 {
        return; // no values: the caller has no rows to draw
    }
    let start = start_lanes(seed, round);
    let mut fours = block.chunks_exact(4 * d);
    for x in &mut fours {
        let mut lanes = [start; 4];
        let (r0, rest) = x.split_at(d);
        let (r1, rest) = rest.split_at(d);
        let (r2, r3) = rest.split_at(d);
        let rows = [r0, r1, r2, r3];
        // The last `d % 4` values go first, one to each lane (as `absorb` takes them).
        let tail = d / 4 * 4;
        for l in 0..d - tail {
            for q in 0..4 {
                lanes[q][l] = lane_step(lanes[q][l], rows[q][tail + l]);
            }
        }
        let chunks = r0[..tail]
            .chunks_exact(4)
            .zip(r1[..tail].chunks_exact(4))
            .zip(r2[..tail].chunks_exact(4))
            .zip(r3[..tail].chunks_exact(4));
        for (((c0, c1), c2), c3) in chunks {
            for (q, c) in [c0, c1, c2, c3].into_iter().enumerate() {
                for l in 0..4 {
                    lanes[q][l] = lane_step(lanes[q][l], c[l]);
                }
            }
        }
        out.extend(lanes.iter().map(|l| finish_lanes(l, d)));
    }
    for row in fours.remainder().chunks_exact(d) {
        let mut lanes = start;
        absorb(&mut lanes, row);
        out.push(finish_lanes(&lanes, d));
    }
}

const LANE_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// The four lanes' state before a row's values.
#[inline(always)]
fn start_lanes(seed: u64, round: u64) -> [u64; 4] {
    let start = seed ^ round.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    [
        start,
        start ^ 0xBF58_476D_1CE4_E5B9,
        start ^ 0x94D0_49BB_1331_11EB,
        start ^ 0x2545_F491_4F6C_DD1D,
    ]
}

#[inline(always)]
fn lane_step(h: u64, v: f64) -> u64 {
    let h = (h ^ v.to_bits()).wrapping_mul(LANE_MULTIPLIER);
    h ^ (h >> 29)
}

/// Lane `l` takes the row's `l`-th value of its last `len % 4` (if any), then every fourth value
/// from the `l`-th.
#[inline(always)]
fn absorb(lanes: &mut [u64; 4], row: &[f64]) {
    let chunks = row.chunks_exact(4);
    for (l, v) in chunks.remainder().iter().enumerate() {
        lanes[l] = lane_step(lanes[l], *v);
    }
    for c in chunks {
        for l in 0..4 {
            lanes[l] = lane_step(lanes[l], c[l]);
        }
    }
}

/// The lanes mixed into one number in [0, 1).
#[inline(always)]
fn finish_lanes(lanes: &[u64; 4], len: usize) -> f64 {
    let mut h = lanes[0]
        ^ lanes[1].rotate_left(16)
        ^ lanes[2].rotate_left(32)
        ^ lanes[3].rotate_left(48)
        ^ (len as u64);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Rows per k-means|| candidate whose nearest candidate is counted for its weight (a uniform
/// sample; Spark counts every row, which costs a pass of distances to all ~2k·steps candidates
/// — several Lloyd passes' worth — for weights that only guide the k-means++ among them).
const WEIGHT_ROWS: f64 = 500.0;

/// The most bytes of uniformly drawn rows the last k-means|| round brings back for the
/// candidates' weights (instead of a pass of its own that counts them where they lie): ~3.4 MB
/// at k = 10 and 20 features, whatever the partitioning (each task draws its share). Larger
/// draws (large k) keep the counting pass.
const FOLDED_DRAW_BYTES: f64 = 16.0 * 1024.0 * 1024.0;

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KMeansSummary {
    /// Sum of squared distances to the nearest centre (the objective), at the final centres.
    pub inertia: f64,
    /// Inertia before each Lloyd iteration.
    pub objective_history: Vec<f64>,
    pub iterations: usize,
    pub convergence: String,
    /// Points per cluster.
    pub cluster_sizes: Vec<u64>,
    /// Time spent choosing the initial centres, from the first pass over the prepared data
    /// (reading and preparing the data is not counted; after the initialisation, each
    /// iteration is one data pass).
    pub init_ms: f64,
    pub wall_time_ms: f64,
    /// With [`KMeansAlgorithm::Hamerly`], the share of rows whose centre the bounds settled
    /// without the other centres, over the passes after the first (which sets the bounds up):
    /// whether the bounds pay on this data (above about two thirds they save time). `None`
    /// for Lloyd's passes, and where the bounds could not be kept (a fit on a cluster).
    #[serde(default)]
    pub settled_share: Option<f64>,
}

impl KMeans {
    async fn pass(&self, data: &Prepared, centers: &[f64], pass: Pass) -> Result<PassState> {
        let stat = KMeansPass::new(data.dim(), centers.to_vec(), self.seed, pass);
        Ok(data.aggregate(Arc::new(stat)).await?)
    }

    /// A Lloyd pass: `[cost, counts (k), sums (k × d)]` for `centers`, with Hamerly's bounds
    /// where the fit keeps them.
    async fn lloyd(
        &self,
        data: &Prepared,
        centers: &[f64],
        bounds: Option<&Arc<Bounds>>,
    ) -> Result<Vec<f64>> {
        let mut stat = KMeansPass::new(data.dim(), centers.to_vec(), self.seed, Pass::Sums);
        stat.bounded = bounds.map(|b| BoundedPass::new(b, centers, data.dim()));
        Ok(data.aggregate(Arc::new(stat)).await?.values)
    }

    /// The initial centres from the first pass's uniform sample (`first`: k rows for random
    /// initialisation, one for k-means||). k-means|| then runs `init_steps` rounds, each one
    /// pass drawing 2k rows by their squared distance to the candidates so far, weighs the
    /// candidates by the rows nearest each (a uniform sample of about [`WEIGHT_ROWS`] rows per
    /// candidate, drawn by the last round's pass and counted here when it is small, else one
    /// pass more), and runs weighted k-means++ and Lloyd on them in the driver: `init_steps`
    /// passes after the first (`init_steps + 1` for a large draw).
    async fn initial_centers(&self, data: &Prepared, first: &[f64]) -> Result<Vec<f64>> {
        let d = data.dim();
        let rows = first[0];
        let k = self.k;
        let rows_of = |s: &[f64]| -> Vec<f64> {
            sampled_rows(s, d)
                .into_iter()
                .flat_map(|(_, r)| r)
                .collect()
        };
        let mut candidates = rows_of(first);
        if self.init_mode == KMeansInit::Random {
            return Ok(candidates);
        }
        let steps = self.init_steps as u64;
        // The weights' sample is drawn in round steps + 2 at a rate for the most candidates
        // the rounds can give (the rows of a lower rate are among them), by the last round's
        // pass when it is small enough to bring back.
        let weight_round = steps + 2;
        let most_candidates = 1.0 + 2.0 * k as f64 * self.init_steps as f64;
        let draw_rate = (WEIGHT_ROWS * most_candidates / rows).min(1.0);
        let folded = draw_rate * rows * ((d + 1) * 8) as f64 <= FOLDED_DRAW_BYTES;
        let mut drawn = Vec::new();
        for round in 1..=steps {
            let take = 2 * k;
            let draw = (folded && round == steps).then_some(Draw {
                round: weight_round,
                rate: draw_rate,
            });
            let s = self
                .pass(data, &candidates, Pass::Sample { round, take, draw })
                .await?;
            candidates.extend(rows_of(&s.values));
            drawn = s.drawn;
        }
        if candidates.len() / d < k {
            // Too few rows away from the candidates (repeated rows): top up uniformly.
            let s = self
                .pass(
                    data,
                    &[],
                    Pass::Sample {
                        round: steps + 1,
                        take: k,
                        draw: None,
                    },
                )
                .await?;
            candidates.extend(rows_of(&s.values));
        }
        // The candidates' weights from a uniform sample of about WEIGHT_ROWS rows per
        // candidate (all rows of smaller data).
        let n_cand = candidates.len() / d;
        let rate = (WEIGHT_ROWS * n_cand as f64 / rows).min(1.0);
        let counting = Pass::Counts {
            round: weight_round,
            rate,
        };
        let counted = if folded {
            // The counting pass over the drawn rows: the same rows counted, the same counts.
            let stat = KMeansPass::new(d, candidates.clone(), self.seed, counting);
            let mut s = stat.init();
            stat.update(&mut s, &FeatureBatch::new(&drawn, d)?)?;
            s
        } else {
            self.pass(data, &candidates, counting).await?
        };
        let weights: Vec<f64> = counted.values[1..1 + n_cand].to_vec();
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
        // With Hamerly's bounds, rows this process holds are passed over where they lie, so
        // that each Lloyd pass can keep the bounds for the next (see `bounds`).
        let resident = (self.algorithm == KMeansAlgorithm::Hamerly)
            .then(|| data.resident())
            .flatten();
        let (data, bounds) = match resident {
            Some(resident) => (resident, Some(Arc::<Bounds>::default())),
            None => (data, None),
        };
        let init_started = Instant::now();
        let d = data.dim();
        let k = self.k;
        // The first pass counts the rows and draws the first uniform sample.
        let take = if self.init_mode == KMeansInit::Random {
            k
        } else {
            1
        };
        let first = self
            .pass(
                &data,
                &[],
                Pass::Sample {
                    round: 0,
                    take,
                    draw: None,
                },
            )
            .await?
            .values;
        let rows = first[0] as u64;
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
        let mut centers = self.initial_centers(&data, &first).await?;
        let init_ms = init_started.elapsed().as_secs_f64() * 1e3;
        let mut history = Vec::new();
        let mut iterations = 0;
        let mut convergence = format!("reached max_iter = {}", self.max_iter);
        let mut sums = self.lloyd(&data, &centers, bounds.as_ref()).await?;
        // A trial's pruner sees the model after each Lloyd pass (see crate::progress).
        let progress = crate::progress::current();
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
            sums = self.lloyd(&data, &centers, bounds.as_ref()).await?;
            crate::progress::offer(progress.as_ref(), iterations as u64, || {
                Ok(Arc::new(KMeansModel {
                    params: self.clone(),
                    dim: d,
                    centers: centers.clone(),
                    summary: KMeansSummary::default(),
                }) as Arc<dyn crate::Transformer>)
            })
            .await?;
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
            settled_share: bounds.as_ref().and_then(|b| b.settled_share()),
        };
        Ok(KMeansModel {
            params: self.clone(),
            dim: d,
            centers,
            summary,
        })
    }
}

/// Lets k-means' statistic and map run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<KMeansPass>()?;
    r.add_batch_function::<Assign>("kmeans_predict")
}
