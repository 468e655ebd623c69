//! Growing one tree over coded rows: per node, per feature, per bin, the sums of the row
//! statistics (gradient and hessian, or class weights) and counts; the smaller child's
//! histogram is built from its rows and the larger one's is the parent's minus it; splits are
//! chosen by prefix sums, with a learned direction for missing values.
//!
//! A histogram is a sum over rows, so it is built as the aggregate primitive builds any
//! statistic: partial sums over fixed-size row blocks, merged in block order (the same trees
//! whatever the number of threads).

use rayon::prelude::*;

use super::bins::{Bins, MISSING};
use super::ensemble::{SplitInfo, Tree};

/// Rows per histogram block.
const BLOCK_ROWS: usize = 16 * 1024;

/// The training rows, coded once.
#[derive(Debug)]
pub(super) struct Binned {
    /// Row-major codes, `codes[r * d + j]`: what a histogram reads, a row at a time.
    pub codes: Vec<u8>,
    /// The same codes column-major, `columns[j * n + r]`: what a partition reads, one
    /// feature at a time.
    pub columns: Vec<u8>,
    pub n: usize,
    pub d: usize,
    pub bins: Bins,
    /// Histogram slots per feature: the most value bins of any feature, plus the missing slot.
    pub slots: usize,
}

impl Binned {
    pub fn new(codes: Vec<u8>, d: usize, bins: Bins) -> Self {
        let n = codes.len() / d.max(1);
        let slots = (0..d).map(|j| bins.n_bins(j)).max().unwrap_or(1) + 1;
        let mut columns = vec![0u8; n * d];
        columns
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(j, col)| {
                for (r, c) in col.iter_mut().enumerate() {
                    *c = codes[r * d + j];
                }
            });
        Binned {
            codes,
            columns,
            n,
            d,
            bins,
            slots,
        }
    }

    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.codes[r * self.d..(r + 1) * self.d]
    }
}

/// What each row adds to a histogram.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowStats<'a> {
    /// (gradient, hessian) per row, weights included: boosting, and regression forests with
    /// `g = w·y`, `h = w`. Interleaved, so that a row's pair is one load. Without `counted`
    /// the histogram holds no row counts (a third fewer additions): boosting with at most one
    /// row per leaf required, where a child is non-empty when its hessian sum is positive.
    GradHess { gh: &'a [[f64; 2]], counted: bool },
    /// Class index and weight per row: classification forests. Without `counted` the
    /// weights (bootstrap multiplicity included) are the counts.
    Classes {
        /// (class index, weight) per row, interleaved as the gradient pairs are.
        cw: &'a [[f64; 2]],
        k: usize,
        counted: bool,
    },
}

impl RowStats<'_> {
    /// Values per histogram slot: the statistics, then the count when kept.
    pub fn stride(&self) -> usize {
        match *self {
            RowStats::GradHess { counted, .. } => 2 + usize::from(counted),
            RowStats::Classes { k, counted, .. } => k + usize::from(counted),
        }
    }

    pub fn counted(&self) -> bool {
        match *self {
            RowStats::GradHess { counted, .. } | RowStats::Classes { counted, .. } => counted,
        }
    }
}

/// How a split is scored and what a leaf holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Criterion {
    /// Second-order boosting (XGBoost's gain): L1 `alpha`, L2 `lambda`, the least gain
    /// `gamma`, the least hessian in a child; leaves are `−T(G)/(H+λ)·eta`.
    Newton {
        alpha: f64,
        lambda: f64,
        gamma: f64,
        min_child_weight: f64,
        eta: f64,
    },
    /// Variance reduction per unit weight (regression forests); leaves are means.
    Variance,
    /// Gini impurity reduction over `k` classes (classification forests); leaves are class
    /// probabilities.
    Gini { k: usize },
    /// Entropy (bits) reduction over `k` classes; leaves are class probabilities.
    Entropy { k: usize },
}

fn soft_threshold(g: f64, alpha: f64) -> f64 {
    if g > alpha {
        g - alpha
    } else if g < -alpha {
        g + alpha
    } else {
        0.0
    }
}

impl Criterion {
    /// Values per leaf.
    pub fn width(&self) -> usize {
        match *self {
            Criterion::Gini { k } | Criterion::Entropy { k } => k,
            _ => 1,
        }
    }

    /// A node's impurity or score term from its sums `s` (count last).
    fn node_term(&self, s: &[f64]) -> f64 {
        match *self {
            Criterion::Newton { alpha, lambda, .. } => {
                let t = soft_threshold(s[0], alpha);
                t * t / (s[1] + lambda)
            }
            Criterion::Variance => {
                if s[1] > 0.0 {
                    s[0] * s[0] / s[1]
                } else {
                    0.0
                }
            }
            Criterion::Gini { k } | Criterion::Entropy { k } => {
                let w: f64 = s[..k].iter().sum();
                if w <= 0.0 {
                    return 0.0;
                }
                let imp = if matches!(self, Criterion::Gini { .. }) {
                    1.0 - s[..k].iter().map(|c| (c / w) * (c / w)).sum::<f64>()
                } else {
                    -s[..k]
                        .iter()
                        .filter(|c| **c > 0.0)
                        .map(|c| (c / w) * (c / w).log2())
                        .sum::<f64>()
                };
                imp * w
            }
        }
    }

    /// Σ weight (or hessian) of a node.
    fn cover(&self, s: &[f64]) -> f64 {
        match *self {
            Criterion::Newton { .. } | Criterion::Variance => s[1],
            Criterion::Gini { k } | Criterion::Entropy { k } => s[..k].iter().sum(),
        }
    }

    /// A node's size: its count when the histogram keeps counts, else its cover.
    fn size(&self, s: &[f64], counted: bool) -> f64 {
        if counted {
            s[s.len() - 1]
        } else {
            self.cover(s)
        }
    }

    /// The gain of splitting a node with sums `p` (and term `p_term`) into `l` and `r`; `None`
    /// when a child is smaller than `min_size` or breaks another limit.
    fn gain(
        &self,
        l: &[f64],
        r: &[f64],
        p: &[f64],
        p_term: f64,
        (min_size, counted): (f64, bool),
    ) -> Option<f64> {
        if self.size(l, counted) < min_size || self.size(r, counted) < min_size {
            return None;
        }
        match *self {
            Criterion::Newton {
                gamma,
                min_child_weight,
                ..
            } => {
                if l[1] < min_child_weight || r[1] < min_child_weight {
                    return None;
                }
                Some(0.5 * (self.node_term(l) + self.node_term(r) - p_term) - gamma)
            }
            Criterion::Variance => {
                if l[1] <= 0.0 || r[1] <= 0.0 {
                    return None;
                }
                Some((self.node_term(l) + self.node_term(r) - p_term) / p[1])
            }
            Criterion::Gini { .. } | Criterion::Entropy { .. } => {
                let w = self.cover(p);
                if self.cover(l) <= 0.0 || self.cover(r) <= 0.0 {
                    return None;
                }
                // Impurity·weight terms: (W·I(P) − W_L·I(L) − W_R·I(R)) / W.
                Some((p_term - self.node_term(l) - self.node_term(r)) / w)
            }
        }
    }

    /// A leaf's values from its sums.
    pub fn leaf(&self, s: &[f64], out: &mut Vec<f64>) {
        out.clear();
        match *self {
            Criterion::Newton {
                alpha, lambda, eta, ..
            } => {
                let v = -soft_threshold(s[0], alpha) / (s[1] + lambda) * eta;
                out.push(if v.is_finite() { v } else { 0.0 });
            }
            Criterion::Variance => out.push(if s[1] > 0.0 { s[0] / s[1] } else { 0.0 }),
            Criterion::Gini { k } | Criterion::Entropy { k } => {
                let w: f64 = s[..k].iter().sum();
                out.extend(s[..k].iter().map(|c| if w > 0.0 { c / w } else { 0.0 }));
            }
        }
    }
}

/// The limits and randomness of one tree's growth.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrowConfig {
    pub criterion: Criterion,
    pub max_depth: usize,
    /// Least size of a child: rows (with bootstrap multiplicity) where the histogram counts
    /// them or the weights are the counts; a tiny positive number (non-empty) otherwise.
    pub min_size: f64,
    /// Least gain of a split.
    pub min_info_gain: f64,
    /// Features tried per node (all when ≥ d).
    pub features_per_node: usize,
    /// Seed of the per-node feature choice.
    pub seed: u64,
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub(super) struct Rng64(u64);

impl Rng64 {
    pub fn new(seed: u64) -> Self {
        Rng64(super::bins::splitmix(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        super::bins::splitmix(self.0)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// `m` distinct indices of `0..n`, sorted.
    pub fn choose(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let m = m.min(n);
        for i in 0..m {
            let j = i + (self.next_u64() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut out = all[..m].to_vec();
        out.sort_unstable();
        out
    }
}

/// The histogram of `rows`: `d × slots × stride` sums.
pub(super) fn histogram(
    data: &Binned,
    stats: &RowStats<'_>,
    count: Option<&[f64]>,
    rows: &[u32],
) -> Vec<f64> {
    let len = data.d * data.slots * stats.stride();
    let block = |rows: &[u32]| {
        let mut h = vec![0.0; len];
        accumulate(data, stats, count, rows, &mut h);
        h
    };
    if rows.len() <= BLOCK_ROWS {
        return block(rows);
    }
    let parts: Vec<Vec<f64>> = rows.par_chunks(BLOCK_ROWS).map(block).collect();
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0.0; len]);
    for p in parts {
        for (t, v) in total.iter_mut().zip(&p) {
            *t += v;
        }
    }
    total
}

/// How far ahead the histogram loop asks for a row's codes and statistics: a node's rows are
/// ascending but sparse, which the hardware prefetcher does not follow.
const PREFETCH_ROWS: usize = 16;

/// Asks for the cache line at `p` (a hint; nothing on other targets).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Adds `rows` to `h`: the hot loop.
fn accumulate(
    data: &Binned,
    stats: &RowStats<'_>,
    count: Option<&[f64]>,
    rows: &[u32],
    h: &mut [f64],
) {
    let slots = data.slots;
    let last = (slots - 1) as u8;
    match *stats {
        RowStats::GradHess { gh, counted } => {
            if counted {
                accumulate_gh::<3>(data, gh, count, rows, h);
            } else {
                accumulate_gh::<2>(data, gh, count, rows, h);
            }
        }
        RowStats::Classes { cw, k, counted } => {
            let stride = k + usize::from(counted);
            for (i, &r) in rows.iter().enumerate() {
                if let Some(&ahead) = rows.get(i + PREFETCH_ROWS) {
                    prefetch(data.row(ahead as usize).as_ptr());
                    prefetch(cw[ahead as usize].as_ptr().cast());
                }
                let r = r as usize;
                let [cl, wr] = cw[r];
                let cl = cl as usize;
                let mut base = 0;
                if counted {
                    let c = count.map_or(1.0, |c| c[r]);
                    for &code in data.row(r) {
                        let s = (base + code.min(last) as usize) * stride;
                        h[s + cl] += wr;
                        h[s + k] += c;
                        base += slots;
                    }
                } else {
                    for &code in data.row(r) {
                        h[(base + code.min(last) as usize) * stride + cl] += wr;
                        base += slots;
                    }
                }
            }
        }
    }
}

/// The (gradient, hessian[, count]) histogram loop, `S` values per slot.
fn accumulate_gh<const S: usize>(
    data: &Binned,
    gh: &[[f64; 2]],
    count: Option<&[f64]>,
    rows: &[u32],
    h: &mut [f64],
) {
    let slots = data.slots;
    let last = (slots - 1) as u8;
    for (i, &r) in rows.iter().enumerate() {
        if let Some(&ahead) = rows.get(i + PREFETCH_ROWS) {
            prefetch(data.row(ahead as usize).as_ptr());
            prefetch(gh[ahead as usize].as_ptr().cast());
        }
        let r = r as usize;
        let [gr, hr] = gh[r];
        let c = if S == 3 {
            count.map_or(1.0, |c| c[r])
        } else {
            0.0
        };
        let mut base = 0;
        for &code in data.row(r) {
            let s = (base + code.min(last) as usize) * S;
            h[s] += gr;
            h[s + 1] += hr;
            if S == 3 {
                h[s + 2] += c;
            }
            base += slots;
        }
    }
}

/// The best split of a node from its histogram, with the left child's sums.
fn best_split(
    data: &Binned,
    counted: bool,
    hist: &[f64],
    totals: &[f64],
    features: &[usize],
    cfg: &GrowConfig,
) -> Option<(SplitInfo, Vec<f64>)> {
    let s = totals.len();
    let slots = data.slots;
    let crit = &cfg.criterion;
    let p_term = crit.node_term(totals);
    let limits = (cfg.min_size, counted);
    let mut best: Option<(SplitInfo, Vec<f64>)> = None;
    let mut best_gain = cfg.min_info_gain.max(0.0);
    let mut left = vec![0.0; s];
    let mut with_missing = vec![0.0; s];
    let mut right = vec![0.0; s];
    for &j in features {
        let nb = data.bins.n_bins(j);
        let base = j * slots * s;
        let miss = &hist[base + (slots - 1) * s..base + slots * s];
        let has_missing = crit.size(miss, counted) > 0.0;
        left.fill(0.0);
        for b in 0..nb {
            let bin = &hist[base + b * s..base + (b + 1) * s];
            for (l, v) in left.iter_mut().zip(bin) {
                *l += v;
            }
            let last = b + 1 == nb;
            // Missing values right, then (when there are some) left.
            for default_left in [false, true] {
                if default_left && !has_missing || last && (default_left || !has_missing) {
                    continue;
                }
                let l = if default_left {
                    for ((m, a), b) in with_missing.iter_mut().zip(&left).zip(miss) {
                        *m = a + b;
                    }
                    &with_missing
                } else {
                    &left
                };
                for ((r, t), l) in right.iter_mut().zip(totals).zip(l) {
                    *r = t - l;
                }
                if let Some(gain) = crit.gain(l, &right, totals, p_term, limits)
                    && gain > best_gain
                {
                    best_gain = gain;
                    // The last bin splits the missing values from all others: every number
                    // goes left (the largest finite threshold, which a JSON codec can carry).
                    let threshold = if last {
                        f64::MAX
                    } else {
                        data.bins.thresholds[j][b]
                    };
                    best = Some((
                        SplitInfo {
                            feature: j,
                            bin: b as u8,
                            threshold,
                            default_left,
                            gain,
                        },
                        l.clone(),
                    ));
                }
            }
        }
    }
    best
}

/// Moves the rows going left to the front (keeping their order); returns how many. Large
/// nodes are split in blocks in parallel and put back together in block order.
fn partition(data: &Binned, rows: &mut [u32], split: &SplitInfo, scratch: &mut Vec<u32>) -> usize {
    let column = &data.columns[split.feature * data.n..(split.feature + 1) * data.n];
    let goes_left = |r: u32| {
        let c = column[r as usize];
        if c == MISSING {
            split.default_left
        } else {
            c <= split.bin
        }
    };
    if rows.len() <= BLOCK_ROWS {
        scratch.clear();
        let mut w = 0;
        for i in 0..rows.len() {
            let r = rows[i];
            if goes_left(r) {
                rows[w] = r;
                w += 1;
            } else {
                scratch.push(r);
            }
        }
        rows[w..].copy_from_slice(scratch);
        return w;
    }
    let parts: Vec<(Vec<u32>, Vec<u32>)> = rows
        .par_chunks(BLOCK_ROWS)
        .map(|block| {
            let (mut l, mut r) = (Vec::with_capacity(block.len()), Vec::new());
            for &row in block {
                if goes_left(row) {
                    l.push(row);
                } else {
                    r.push(row);
                }
            }
            (l, r)
        })
        .collect();
    let mut w = 0;
    for (l, _) in &parts {
        rows[w..w + l.len()].copy_from_slice(l);
        w += l.len();
    }
    let left = w;
    for (_, r) in &parts {
        rows[w..w + r.len()].copy_from_slice(r);
        w += r.len();
    }
    left
}

/// The sums of a node from its histogram (every row falls in one slot of feature 0).
fn totals(hist: &[f64], slots: usize, stride: usize) -> Vec<f64> {
    let mut t = vec![0.0; stride];
    for slot in hist[..slots * stride].chunks_exact(stride) {
        for (a, v) in t.iter_mut().zip(slot) {
            *a += v;
        }
    }
    t
}

/// A grown tree, and where its training rows ended: `(leaf, start, end)` ranges of the
/// reordered rows.
pub(super) struct Grown {
    pub tree: Tree,
    pub leaves: Vec<(usize, usize, usize)>,
}

/// Grows one tree over the training rows `rows` (reordered in place), splitting on the
/// features in `allowed` (`features_per_node` of them drawn per node). Nodes are grown depth
/// first, so at most two histograms per level are alive; the tree is the same as grown level
/// by level.
pub(super) fn grow(
    data: &Binned,
    stats: &RowStats<'_>,
    count: Option<&[f64]>,
    rows: &mut [u32],
    allowed: &[usize],
    cfg: &GrowConfig,
) -> Grown {
    let stride = stats.stride();
    let counted = stats.counted();
    let crit = cfg.criterion;
    let mut tree = Tree::new(crit.width());
    let mut values = Vec::new();
    let root = histogram(data, stats, count, rows);
    let root_totals = totals(&root, data.slots, stride);
    crit.leaf(&root_totals, &mut values);
    tree.push_leaf(&values, crit.cover(&root_totals));
    // (node, rows start, rows end, histogram, sums, depth)
    let mut stack = vec![(0usize, 0usize, rows.len(), root, root_totals, 0usize)];
    let mut scratch = Vec::new();
    let mut leaves = Vec::new();
    let mut rng = Rng64::new(cfg.seed);
    while let Some((node, start, end, mut hist, sums, depth)) = stack.pop() {
        if depth >= cfg.max_depth || crit.size(&sums, counted) < 2.0 * cfg.min_size {
            leaves.push((node, start, end));
            continue;
        }
        let chosen: Vec<usize>;
        let features = if cfg.features_per_node >= allowed.len() {
            allowed
        } else {
            chosen = rng
                .choose(allowed.len(), cfg.features_per_node)
                .into_iter()
                .map(|i| allowed[i])
                .collect();
            &chosen
        };
        let Some((split, left_sums)) = best_split(data, counted, &hist, &sums, features, cfg)
        else {
            leaves.push((node, start, end));
            continue;
        };
        let right_sums: Vec<f64> = sums.iter().zip(&left_sums).map(|(t, l)| t - l).collect();
        let mid = start + partition(data, &mut rows[start..end], &split, &mut scratch);
        crit.leaf(&left_sums, &mut values);
        let l = tree.push_leaf(&values, crit.cover(&left_sums));
        crit.leaf(&right_sums, &mut values);
        let r = tree.push_leaf(&values, crit.cover(&right_sums));
        tree.set_split(node, &split, l, r);
        if depth + 1 >= cfg.max_depth {
            leaves.push((l as usize, start, mid));
            leaves.push((r as usize, mid, end));
            continue;
        }
        // The smaller child's histogram from its rows, the larger's by subtraction.
        let left_smaller = mid - start <= end - mid;
        let small = if left_smaller {
            histogram(data, stats, count, &rows[start..mid])
        } else {
            histogram(data, stats, count, &rows[mid..end])
        };
        for (p, s) in hist.iter_mut().zip(&small) {
            *p -= s;
        }
        let (left_hist, right_hist) = if left_smaller {
            (small, hist)
        } else {
            (hist, small)
        };
        stack.push((r as usize, mid, end, right_hist, right_sums, depth + 1));
        stack.push((l as usize, start, mid, left_hist, left_sums, depth + 1));
    }
    Grown { tree, leaves }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One feature, values 0..8 in their own bins; y jumps at x = 5: the regression tree's
    /// split is x ≤ 4.5 with the two means as leaves, and the gain is the variance reduction.
    #[test]
    fn a_stump_splits_where_the_label_jumps() {
        let x: Vec<f64> = (0..8).map(f64::from).collect();
        let y = [1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0];
        let bins = Bins {
            thresholds: vec![(0..7).map(|i| i as f64 + 0.5).collect()],
        };
        let mut codes = vec![0u8; 8];
        bins.code_rows(&x, &mut codes);
        let data = Binned::new(codes, 1, bins);
        let gh: Vec<[f64; 2]> = y.iter().map(|y| [*y, 1.0]).collect();
        let stats = RowStats::GradHess {
            gh: &gh,
            counted: true,
        };
        let cfg = GrowConfig {
            criterion: Criterion::Variance,
            max_depth: 3,
            min_size: 1.0,
            min_info_gain: 0.0,
            features_per_node: 1,
            seed: 0,
        };
        let mut rows: Vec<u32> = (0..8).collect();
        let t = grow(&data, &stats, None, &mut rows, &[0], &cfg).tree;
        assert_eq!(t.n_nodes(), 3, "{t:?}");
        assert_eq!(t.threshold[0], 4.5);
        assert_eq!(t.leaf_values(t.left[0] as usize), &[1.0]);
        assert_eq!(t.leaf_values(t.right[0] as usize), &[3.0]);
        // Both children are pure: the gain is the variance per row, 7.5 / 8.
        assert!((t.gain[0] - 0.9375).abs() < 1e-12, "{}", t.gain[0]);
        assert_eq!(t.leaf(&[5.0]), t.right[0] as usize);
    }

    /// Missing values learn their side: rows with NaN have the label of the right side.
    #[test]
    fn missing_values_go_where_they_fit() {
        let x = [0.0, 1.0, 2.0, 3.0, f64::NAN, f64::NAN];
        let cw: Vec<[f64; 2]> = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
            .iter()
            .map(|c| [*c, 1.0])
            .collect();
        let bins = Bins {
            thresholds: vec![vec![0.5, 1.5, 2.5]],
        };
        let mut codes = vec![0u8; 6];
        bins.code_rows(&x, &mut codes);
        let data = Binned::new(codes, 1, bins);
        let stats = RowStats::Classes {
            cw: &cw,
            k: 2,
            counted: true,
        };
        let cfg = GrowConfig {
            criterion: Criterion::Gini { k: 2 },
            max_depth: 1,
            min_size: 1.0,
            min_info_gain: 0.0,
            features_per_node: 1,
            seed: 0,
        };
        let mut rows: Vec<u32> = (0..6).collect();
        let t = grow(&data, &stats, None, &mut rows, &[0], &cfg).tree;
        assert_eq!(t.threshold[0], 1.5);
        assert!(!t.default_left[0]);
        assert_eq!(t.leaf_values(t.leaf(&[f64::NAN])), &[0.0, 1.0]);
        assert_eq!(t.leaf_values(t.leaf(&[0.2])), &[1.0, 0.0]);
    }

    /// Missing values on the side of the larger values: one split separates the classes.
    #[test]
    fn missing_values_join_the_side_they_belong_to() {
        let n = 1000;
        let x: Vec<f64> = (0..n)
            .map(|i| {
                if i % 4 == 0 {
                    f64::NAN
                } else {
                    (i % 10) as f64 / 10.0
                }
            })
            .collect();
        let cw: Vec<[f64; 2]> = (0..n)
            .map(|i| [f64::from(i % 4 == 0 || i % 10 >= 7), 1.0])
            .collect();
        let bins = Bins {
            thresholds: vec![(0..9).map(|i| i as f64 / 10.0 + 0.05).collect()],
        };
        let mut codes = vec![0u8; n];
        bins.code_rows(&x, &mut codes);
        let data = Binned::new(codes, 1, bins);
        let stats = RowStats::Classes {
            cw: &cw,
            k: 2,
            counted: false,
        };
        let cfg = GrowConfig {
            criterion: Criterion::Gini { k: 2 },
            max_depth: 1,
            min_size: 1.0,
            min_info_gain: 0.0,
            features_per_node: 1,
            seed: 0,
        };
        let mut rows: Vec<u32> = (0..n as u32).collect();
        let t = grow(&data, &stats, None, &mut rows, &[0], &cfg).tree;
        assert_eq!((t.bin[0], t.default_left[0]), (6, false), "{t:?}");
    }
}
