//! Gradient boosting with second-order steps: each round computes every row's gradient and
//! hessian of the loss at the current scores, grows a tree per output on them (one per class
//! for softmax), and adds its weights to the scores. The scores live beside the coded rows, so
//! a round costs one pass over the rows plus the tree's histograms.

use rayon::prelude::*;

use super::Training;
use super::bins::splitmix;
use super::ensemble::{Combine, Ensemble, Tree};
use super::grow::{Criterion, GrowConfig, Rng64, RowStats, grow};
use super::params::{BoostParams, Loss};
use crate::error::{MllibError, Result};

/// Rows per parallel block of the per-row passes.
const BLOCK: usize = 8192;

/// What a boosted fit returns.
pub(super) struct BoostFit {
    pub ensemble: Ensemble,
    /// Training loss before each round and after the last.
    pub train_loss: Vec<f64>,
    /// Held-out loss, the same way (early stopping only).
    pub valid_loss: Vec<f64>,
}

/// The loss of one row at score(s) `s`, and its gradients and hessians into `g`, `h` (one per
/// output).
#[derive(Debug, Clone, Copy)]
enum Objective {
    Binary,
    Softmax(usize),
    Squared,
    Absolute,
}

const MIN_HESSIAN: f64 = 1e-16;

/// The most outputs of a boosted model (classes: the classifier's limit).
const MAX_GROUPS: usize = 100;

impl Objective {
    fn groups(self) -> usize {
        match self {
            Objective::Softmax(k) => k,
            _ => 1,
        }
    }

    /// Unweighted loss at scores `s`; gradient and hessian per output into `g`, `h`.
    #[inline]
    fn eval(self, s: &[f64], y: f64, g: &mut [f64], h: &mut [f64]) -> f64 {
        match self {
            Objective::Binary => {
                // One exponential: e = exp(−|s|) gives the probability and log(1 + e^s).
                let e = (-s[0].abs()).exp();
                let p = if s[0] >= 0.0 {
                    1.0 / (1.0 + e)
                } else {
                    e / (1.0 + e)
                };
                g[0] = p - y;
                h[0] = (p * (1.0 - p)).max(MIN_HESSIAN);
                s[0].max(0.0) + e.ln_1p() - y * s[0]
            }
            Objective::Softmax(k) => {
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut z = 0.0;
                for c in 0..k {
                    g[c] = (s[c] - max).exp();
                    z += g[c];
                }
                let yc = y as usize;
                for c in 0..k {
                    let p = g[c] / z;
                    g[c] = p - if c == yc { 1.0 } else { 0.0 };
                    h[c] = (p * (1.0 - p)).max(MIN_HESSIAN);
                }
                z.ln() + max - s[yc]
            }
            Objective::Squared => {
                let e = s[0] - y;
                g[0] = e;
                h[0] = 1.0;
                e * e
            }
            Objective::Absolute => {
                let e = s[0] - y;
                g[0] = if e > 0.0 {
                    1.0
                } else if e < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                h[0] = 1.0;
                e.abs()
            }
        }
    }

    /// The constant scores the boosting starts from, fitted on the training rows.
    fn base(self, t: &Training, rows: &[u32]) -> Vec<f64> {
        let w_sum: f64 = rows.iter().map(|&r| t.weight[r as usize]).sum();
        let mean = |f: &dyn Fn(usize) -> f64| -> f64 {
            rows.iter()
                .map(|&r| t.weight[r as usize] * f(r as usize))
                .sum::<f64>()
                / w_sum
        };
        match self {
            Objective::Binary => {
                let p = mean(&|r| t.label[r]).clamp(1e-15, 1.0 - 1e-15);
                vec![(p / (1.0 - p)).ln()]
            }
            Objective::Softmax(k) => {
                let logs: Vec<f64> = (0..k)
                    .map(|c| {
                        mean(&|r| f64::from(t.label[r] as usize == c))
                            .max(1e-15)
                            .ln()
                    })
                    .collect();
                let avg = logs.iter().sum::<f64>() / k as f64;
                logs.iter().map(|l| l - avg).collect()
            }
            Objective::Squared => vec![mean(&|r| t.label[r])],
            Objective::Absolute => {
                let mut ys: Vec<(f64, f64)> = rows
                    .iter()
                    .map(|&r| (t.label[r as usize], t.weight[r as usize]))
                    .collect();
                ys.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
                let mut acc = 0.0;
                let median = ys
                    .iter()
                    .find(|(_, w)| {
                        acc += w;
                        acc >= w_sum / 2.0
                    })
                    .map_or(0.0, |(y, _)| *y);
                vec![median]
            }
        }
    }
}

/// Called after each boosting round with the round's number and a builder of the ensemble so
/// far; its error stops the fit.
pub(super) type RoundHook<'a> = &'a mut dyn FnMut(u64, &dyn Fn() -> Ensemble) -> Result<()>;

/// Boosts `p.max_iter` rounds on `t`. After each round `progress(round, ensemble)` may take
/// the ensemble so far (built only when it calls `ensemble`); its error stops the fit.
pub(super) fn fit(p: &BoostParams, t: &Training, progress: RoundHook<'_>) -> Result<BoostFit> {
    let data = &t.binned;
    let n = data.n;
    let objective = match (&t.classes, p.loss) {
        (Some((_, 2)), _) => Objective::Binary,
        (Some((_, k)), _) => Objective::Softmax(*k),
        (None, Loss::Absolute) => Objective::Absolute,
        (None, _) => Objective::Squared,
    };
    let groups = objective.groups();
    // Held-out rows for early stopping: a hash of the row number, so the same rows every time.
    let valid: Vec<bool> = (0..n)
        .map(|r| {
            let u = (splitmix(p.seed ^ splitmix(r as u64)) >> 11) as f64 / (1u64 << 53) as f64;
            p.early_stop && u < p.validation_fraction
        })
        .collect();
    let train_rows: Vec<u32> = (0..n as u32).filter(|r| !valid[*r as usize]).collect();
    if train_rows.is_empty() || p.early_stop && train_rows.len() == n {
        return Err(MllibError::InvalidParam {
            param: "validation_fraction".to_string(),
            reason: format!(
                "{} rows cannot be split into training and validation rows at {}",
                n, p.validation_fraction
            ),
        });
    }
    let base = objective.base(t, &train_rows);
    let mut scores: Vec<f64> = (0..n).flat_map(|_| base.iter().copied()).collect();
    // Per output, the gradient and hessian of every row (weights included).
    let mut gh = vec![[0.0; 2]; n * groups];
    let criterion = Criterion::Newton {
        alpha: p.reg_alpha,
        lambda: p.reg_lambda,
        gamma: p.min_split_loss,
        min_child_weight: p.min_child_weight,
        eta: p.step_size,
    };
    let d = data.d;
    let per_tree = ((p.colsample_bytree * d as f64).ceil() as usize).clamp(1, d);
    let per_node = ((p.colsample_bynode * per_tree as f64).ceil() as usize).clamp(1, per_tree);
    let mut trees: Vec<Tree> = Vec::new();
    let (mut train_loss, mut valid_loss) = (Vec::new(), Vec::new());
    let mut best = (f64::INFINITY, 0usize);
    for round in 0..=p.max_iter as usize {
        let (tl, vl) = gradients(objective, t, &scores, &valid, &mut gh);
        train_loss.push(tl);
        if round == p.max_iter as usize {
            if p.early_stop {
                valid_loss.push(vl);
                if vl < best.0 {
                    best = (vl, round);
                }
            }
            break;
        }
        if p.early_stop {
            valid_loss.push(vl);
            if round > 0 && best.0 - vl < p.validation_tol * vl.max(0.01) {
                break;
            }
            if vl < best.0 {
                best = (vl, round);
            }
        }
        let mut rng = Rng64::new(splitmix(p.seed ^ splitmix(0x0b00_57ed ^ round as u64)));
        let mut rows: Vec<u32> = if p.subsampling_rate < 1.0 {
            train_rows
                .iter()
                .copied()
                .filter(|_| rng.uniform() < p.subsampling_rate)
                .collect()
        } else {
            train_rows.clone()
        };
        for k in 0..groups {
            let allowed = rng.choose(d, per_tree);
            let cfg = GrowConfig {
                criterion,
                max_depth: p.max_depth as usize,
                // Without counts, a child must only be non-empty (a positive hessian).
                min_size: if p.min_instances_per_node > 1 {
                    p.min_instances_per_node as f64
                } else {
                    f64::MIN_POSITIVE
                },
                min_info_gain: 0.0,
                features_per_node: per_node,
                seed: rng.next_u64(),
            };
            let stats = RowStats::GradHess {
                gh: &gh[k * n..(k + 1) * n],
                counted: p.min_instances_per_node > 1,
            };
            let grown = grow(data, &stats, None, &mut rows, &allowed, &cfg);
            let tree = grown.tree;
            if rows.len() == n {
                // Every row was in the tree: its leaves hold the rows' ranges.
                for &(leaf, start, end) in &grown.leaves {
                    let v = tree.values[leaf];
                    for &r in &rows[start..end] {
                        scores[r as usize * groups + k] += v;
                    }
                }
            } else {
                scores
                    .par_chunks_mut(BLOCK * groups)
                    .enumerate()
                    .for_each(|(b, s)| {
                        for (i, row_scores) in s.chunks_exact_mut(groups).enumerate() {
                            let r = b * BLOCK + i;
                            row_scores[k] += tree.values[tree.leaf_binned(data.row(r))];
                        }
                    });
            }
            trees.push(tree);
        }
        progress(round as u64 + 1, &|| Ensemble {
            dim: d,
            combine: Combine::Sum,
            groups,
            base: base.clone(),
            trees: trees.clone(),
        })?;
    }
    if p.early_stop {
        trees.truncate(best.1 * groups);
    }
    Ok(BoostFit {
        ensemble: Ensemble {
            dim: d,
            combine: Combine::Sum,
            groups,
            base,
            trees,
        },
        train_loss,
        valid_loss,
    })
}

/// Every row's gradients and hessians at `scores` (weighted) into `gh`, laid out output by
/// output; returns the weighted mean loss of the training and of the held-out rows.
fn gradients(
    objective: Objective,
    t: &Training,
    scores: &[f64],
    valid: &[bool],
    gh: &mut [[f64; 2]],
) -> (f64, f64) {
    let groups = objective.groups();
    let n = t.label.len();
    // (train loss, train weight, held-out loss, held-out weight) per block.
    let block = |b: usize, s: &[f64], out: &mut dyn FnMut(usize, usize, f64, f64)| {
        let mut sums = [0.0; 4];
        let (mut g, mut h) = ([0.0; MAX_GROUPS], [0.0; MAX_GROUPS]);
        for (i, s) in s.chunks_exact(groups).enumerate() {
            let r = b * BLOCK + i;
            let w = t.weight[r];
            let loss = objective.eval(s, t.label[r], &mut g[..groups], &mut h[..groups]);
            for k in 0..groups {
                out(k, i, w * g[k], w * h[k]);
            }
            let at = if valid[r] { 2 } else { 0 };
            sums[at] += w * loss;
            sums[at + 1] += w;
        }
        sums
    };
    let sums: Vec<[f64; 4]> = if groups == 1 {
        scores
            .par_chunks(BLOCK)
            .zip(gh.par_chunks_mut(BLOCK))
            .enumerate()
            .map(|(b, (s, out))| block(b, s, &mut |_, i, g, h| out[i] = [g, h]))
            .collect()
    } else {
        // Row-major per block, then scattered output by output.
        let parts: Vec<(Vec<[f64; 2]>, [f64; 4])> = scores
            .par_chunks(BLOCK * groups)
            .enumerate()
            .map(|(b, s)| {
                let mut local = vec![[0.0; 2]; s.len()];
                let sums = block(b, s, &mut |k, i, g, h| local[i * groups + k] = [g, h]);
                (local, sums)
            })
            .collect();
        let mut start = 0;
        for (local, _) in &parts {
            let rows = local.len() / groups;
            for k in 0..groups {
                for i in 0..rows {
                    gh[k * n + start + i] = local[i * groups + k];
                }
            }
            start += rows;
        }
        parts.into_iter().map(|(_, s)| s).collect()
    };
    let mut total = [0.0; 4];
    for s in &sums {
        for (a, v) in total.iter_mut().zip(s) {
            *a += v;
        }
    }
    let mean = |l: f64, w: f64| if w > 0.0 { l / w } else { 0.0 };
    (mean(total[0], total[1]), mean(total[2], total[3]))
}
