//! One fitted tree, flattened into arrays (node `i`'s split, children and leaf values), and
//! an ensemble of them: how a row is routed and what the trees add up to.

use serde::{Deserialize, Serialize};

use super::bins::MISSING;

/// A leaf's marker in [`Tree::left`].
pub const LEAF: u32 = u32::MAX;

/// A binary tree in arrays; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Tree {
    /// Split feature (unused for leaves).
    pub feature: Vec<u32>,
    /// Rows with `x ≤ threshold` go left.
    pub threshold: Vec<f64>,
    /// The bin of the threshold (training rows are routed by their codes: `code ≤ bin`).
    pub bin: Vec<u8>,
    /// Where a missing value goes.
    pub default_left: Vec<bool>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// The split's gain (0 for leaves).
    pub gain: Vec<f64>,
    /// Σ hessian (boosting) or Σ weight (forests) of the node's training rows.
    pub cover: Vec<f64>,
    /// Leaf values, `width` per node (zeros for inner nodes): a boosted tree's weight, a
    /// regression tree's mean, a classification tree's class probabilities.
    pub values: Vec<f64>,
    pub width: usize,
}

impl Tree {
    pub fn new(width: usize) -> Self {
        Tree {
            width,
            ..Default::default()
        }
    }

    pub fn n_nodes(&self) -> usize {
        self.left.len()
    }

    pub fn is_leaf(&self, i: usize) -> bool {
        self.left[i] == LEAF
    }

    /// Adds a leaf; returns its index.
    pub fn push_leaf(&mut self, values: &[f64], cover: f64) -> u32 {
        let i = self.left.len() as u32;
        self.feature.push(0);
        self.threshold.push(0.0);
        self.bin.push(0);
        self.default_left.push(false);
        self.left.push(LEAF);
        self.right.push(LEAF);
        self.gain.push(0.0);
        self.cover.push(cover);
        self.values.extend_from_slice(values);
        i
    }

    /// Turns leaf `i` into a split.
    pub fn set_split(&mut self, i: usize, s: &SplitInfo, left: u32, right: u32) {
        self.feature[i] = s.feature as u32;
        self.threshold[i] = s.threshold;
        self.bin[i] = s.bin;
        self.default_left[i] = s.default_left;
        self.left[i] = left;
        self.right[i] = right;
        self.gain[i] = s.gain;
        let w = self.width;
        self.values[i * w..(i + 1) * w].fill(0.0);
    }

    /// The leaf a raw row reaches.
    #[inline]
    pub fn leaf(&self, x: &[f64]) -> usize {
        let mut i = 0usize;
        while self.left[i] != LEAF {
            let v = x[self.feature[i] as usize];
            let go_left = if v.is_nan() {
                self.default_left[i]
            } else {
                v <= self.threshold[i]
            };
            i = if go_left { self.left[i] } else { self.right[i] } as usize;
        }
        i
    }

    /// The leaf a coded training row reaches.
    #[inline]
    pub fn leaf_binned(&self, codes: &[u8]) -> usize {
        let mut i = 0usize;
        while self.left[i] != LEAF {
            let c = codes[self.feature[i] as usize];
            let go_left = if c == MISSING {
                self.default_left[i]
            } else {
                c <= self.bin[i]
            };
            i = if go_left { self.left[i] } else { self.right[i] } as usize;
        }
        i
    }

    pub fn leaf_values(&self, i: usize) -> &[f64] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    pub fn depth(&self) -> usize {
        fn go(t: &Tree, i: usize) -> usize {
            if t.is_leaf(i) {
                0
            } else {
                1 + go(t, t.left[i] as usize).max(go(t, t.right[i] as usize))
            }
        }
        if self.n_nodes() == 0 { 0 } else { go(self, 0) }
    }

    /// Checks the arrays of a tree read from the store: lengths agree, children point
    /// forward inside the tree, features are in range.
    pub fn validate(&self, dim: usize) -> Result<(), String> {
        let n = self.left.len();
        let w = self.width;
        if n == 0 {
            return Err("a tree has no node".to_string());
        }
        if [
            self.feature.len(),
            self.threshold.len(),
            self.bin.len(),
            self.default_left.len(),
            self.right.len(),
            self.gain.len(),
            self.cover.len(),
        ]
        .iter()
        .any(|l| *l != n)
            || self.values.len() != n * w
            || w == 0
        {
            return Err("a tree's arrays differ in length".to_string());
        }
        for i in 0..n {
            if self.left[i] == LEAF {
                continue;
            }
            let (l, r) = (self.left[i] as usize, self.right[i] as usize);
            if l <= i || r <= i || l >= n || r >= n {
                return Err(format!("node {i} points to a child outside the tree"));
            }
            if self.feature[i] as usize >= dim {
                return Err(format!(
                    "node {i} splits feature {} of {dim}",
                    self.feature[i]
                ));
            }
        }
        Ok(())
    }
}

/// Rows that walk a tree together in [`Ensemble::outputs_rows`]: enough independent walks to
/// overlap their loads, few enough that their features stay in the first-level cache.
const ROW_BLOCK: usize = 64;

/// One node of a tree as a blocked walk reads it: one record, a leaf pointing to itself (so a
/// row that reached its leaf stays there for the remaining steps of the walk).
#[derive(Debug, Clone, Copy)]
struct Step {
    threshold: f64,
    feature: u32,
    left: u32,
    right: u32,
    default_left: bool,
}

impl Step {
    fn of(t: &Tree) -> Vec<Step> {
        (0..t.n_nodes())
            .map(|i| {
                if t.left[i] == LEAF {
                    let me = i as u32;
                    Step {
                        threshold: 0.0,
                        feature: 0,
                        left: me,
                        right: me,
                        default_left: true,
                    }
                } else {
                    Step {
                        threshold: t.threshold[i],
                        feature: t.feature[i],
                        left: t.left[i],
                        right: t.right[i],
                        default_left: t.default_left[i],
                    }
                }
            })
            .collect()
    }
}

/// A chosen split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitInfo {
    pub feature: usize,
    pub bin: u8,
    pub threshold: f64,
    pub default_left: bool,
    pub gain: f64,
}

/// How an ensemble's trees combine into its raw output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// A forest: the trees' leaf values (class probabilities or means) averaged.
    Average,
    /// Boosting: base score plus the sum of the trees' weights; tree `t` adds to output
    /// `t % groups`.
    Sum,
}

/// Trees and how they add up: what prediction needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    pub dim: usize,
    pub combine: Combine,
    /// Outputs per row: classes for a forest classifier, or a boosted multiclass model; 1
    /// for regression and binary boosting.
    pub groups: usize,
    /// Per output, the base score (boosting); zeros for forests.
    pub base: Vec<f64>,
    pub trees: Vec<Tree>,
}

impl Ensemble {
    /// The raw outputs of a row: averaged leaf values, or margins.
    #[inline]
    pub fn outputs(&self, x: &[f64], out: &mut [f64]) {
        out.copy_from_slice(&self.base);
        match self.combine {
            Combine::Average => {
                for t in &self.trees {
                    let leaf = t.leaf(x);
                    for (o, v) in out.iter_mut().zip(t.leaf_values(leaf)) {
                        *o += v;
                    }
                }
                let n = self.trees.len().max(1) as f64;
                out.iter_mut().for_each(|o| *o /= n);
            }
            Combine::Sum => {
                let g = self.groups;
                for (i, t) in self.trees.iter().enumerate() {
                    out[i % g] += t.values[t.leaf(x)];
                }
            }
        }
    }

    /// [`Self::outputs`] of every row of `x` (row-major, `dim` values each) into `out`
    /// (`base.len()` values per row), equal bit for bit: each row adds the same values in the
    /// same order. Blocks of rows walk one tree together, each row one level per step with no
    /// branch to mispredict, so the walks' loads overlap instead of waiting on each other (the
    /// row-at-a-time walk is bound by one dependent load and one unpredictable branch per
    /// level). Small batches (online scoring) go row by row.
    pub fn outputs_rows(&self, x: &[f64], out: &mut [f64]) {
        let (dim, w) = (self.dim, self.base.len());
        if w == 0 {
            return;
        }
        if dim == 0 {
            // No features: every row reaches the roots.
            for o in out.chunks_exact_mut(w) {
                self.outputs(&[], o);
            }
            return;
        }
        if x.len() < ROW_BLOCK * dim {
            for (x, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(w)) {
                self.outputs(x, o);
            }
            return;
        }
        let walks: Vec<(Vec<Step>, usize)> = self
            .trees
            .iter()
            .map(|t| (Step::of(t), t.depth()))
            .collect();
        let mut at = [0u32; ROW_BLOCK];
        for (xb, ob) in x.chunks(ROW_BLOCK * dim).zip(out.chunks_mut(ROW_BLOCK * w)) {
            let at = &mut at[..ob.len() / w];
            for o in ob.chunks_exact_mut(w) {
                o.copy_from_slice(&self.base);
            }
            for (i, (t, (steps, depth))) in self.trees.iter().zip(&walks).enumerate() {
                at.fill(0);
                for _ in 0..*depth {
                    for (a, x) in at.iter_mut().zip(xb.chunks_exact(dim)) {
                        let s = &steps[*a as usize];
                        let v = x[s.feature as usize];
                        // A missing value goes the default way; `NaN ≤ t` is false.
                        let left = (v <= s.threshold) | (v.is_nan() & s.default_left);
                        *a = if left { s.left } else { s.right };
                    }
                }
                match self.combine {
                    Combine::Sum => {
                        let k = i % self.groups.max(1);
                        for (a, o) in at.iter().zip(ob.chunks_exact_mut(w)) {
                            o[k] += t.values[*a as usize];
                        }
                    }
                    Combine::Average => {
                        for (a, o) in at.iter().zip(ob.chunks_exact_mut(w)) {
                            for (o, v) in o.iter_mut().zip(t.leaf_values(*a as usize)) {
                                *o += v;
                            }
                        }
                    }
                }
            }
            if self.combine == Combine::Average {
                let n = self.trees.len().max(1) as f64;
                ob.iter_mut().for_each(|o| *o /= n);
            }
        }
    }

    /// Every tree in one set of arrays, for the device ([`quiver_engine::device::Forest`]).
    pub fn flatten(&self) -> quiver_engine::device::Forest {
        let mut f = quiver_engine::device::Forest {
            width: match self.combine {
                Combine::Average => self.groups,
                Combine::Sum => 1,
            },
            base: self.base.clone(),
            divisor: match self.combine {
                Combine::Average => self.trees.len().max(1) as f64,
                Combine::Sum => 1.0,
            },
            ..Default::default()
        };
        for (t, tree) in self.trees.iter().enumerate() {
            let offset = f.left.len() as u32;
            let global = |i: u32| if i == LEAF { LEAF } else { i + offset };
            f.roots.push(offset);
            f.slots.push(match self.combine {
                Combine::Average => 0,
                Combine::Sum => (t % self.groups) as u32,
            });
            f.feature.extend_from_slice(&tree.feature);
            f.threshold.extend_from_slice(&tree.threshold);
            f.left.extend(tree.left.iter().map(|&i| global(i)));
            f.right.extend(tree.right.iter().map(|&i| global(i)));
            f.default_left
                .extend(tree.default_left.iter().map(|&l| l as u8));
            f.values.extend_from_slice(&tree.values);
        }
        f
    }

    /// Per feature: splits, total gain and total cover over the trees.
    pub fn importance(&self) -> Importance {
        let mut imp = Importance {
            weight: vec![0.0; self.dim],
            gain: vec![0.0; self.dim],
            cover: vec![0.0; self.dim],
        };
        for t in &self.trees {
            for i in 0..t.n_nodes() {
                if !t.is_leaf(i) {
                    let f = t.feature[i] as usize;
                    imp.weight[f] += 1.0;
                    imp.gain[f] += t.gain[i];
                    imp.cover[f] += t.cover[i];
                }
            }
        }
        imp
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.groups == 0 || self.base.len() != self.groups {
            return Err(format!(
                "{} base scores for {} outputs",
                self.base.len(),
                self.groups
            ));
        }
        if self.dim == 0 {
            return Err("the model has no features".to_string());
        }
        for t in &self.trees {
            t.validate(self.dim)?;
            let w = match self.combine {
                Combine::Average => self.groups,
                Combine::Sum => 1,
            };
            if t.width != w {
                return Err(format!("a tree has {} values per leaf, not {w}", t.width));
            }
        }
        Ok(())
    }
}

/// Feature importance as BigQuery ML reports it: per feature, the number of splits on it
/// (`importance_weight`), their total gain (`importance_gain`) and the total cover of the
/// nodes it splits (`importance_cover`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    pub weight: Vec<f64>,
    pub gain: Vec<f64>,
    pub cover: Vec<f64>,
}

impl Importance {
    /// Total gain normalised to sum to 1 (Spark's `featureImportances`; all zeros without a
    /// split).
    pub fn normalized_gain(&self) -> Vec<f64> {
        let total: f64 = self.gain.iter().sum();
        self.gain
            .iter()
            .map(|g| if total > 0.0 { g / total } else { 0.0 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random tree of at most `depth` levels over `dim` features: node `i`'s children come
    /// after it, as fitted trees are laid out.
    fn tree(seed: u64, dim: usize, depth: usize, width: usize) -> Tree {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut t = Tree::new(width);
        // Nodes to lay out, with their depth; a node is pushed before its children.
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize)]);
        t.left.push(LEAF);
        while let Some((i, d)) = queue.pop_front() {
            let r = next();
            let split = d < depth && (d == 0 || !r.is_multiple_of(4));
            t.feature
                .push(if split { (r % dim as u64) as u32 } else { 0 });
            t.threshold.push(((r >> 8) % 200) as f64 / 100.0 - 1.0);
            t.bin.push(0);
            t.default_left.push(r & (1 << 20) != 0);
            t.gain.push(0.0);
            t.cover.push(1.0);
            for _ in 0..width {
                t.values
                    .push(((next() >> 11) as f64 / (1u64 << 53) as f64) - 0.5);
            }
            t.right.push(LEAF);
            if split {
                let l = t.left.len();
                t.left[i] = l as u32;
                t.right[i] = l as u32 + 1;
                t.left.extend([LEAF, LEAF]);
                queue.extend([(l, d + 1), (l + 1, d + 1)]);
            }
        }
        t
    }

    proptest! {
        /// The blocked walk gives the row-at-a-time outputs bit for bit, missing values and
        /// every combination included, for batches of any size.
        #[test]
        fn blocked_outputs_equal_row_by_row(
            seed in 0u64..1000,
            rows in 0usize..200,
            dim in 1usize..6,
            depth in 0usize..7,
            n_trees in 0usize..12,
            average in any::<bool>(),
            groups in 1usize..4,
        ) {
            let width = if average { groups } else { 1 };
            let trees: Vec<Tree> =
                (0..n_trees).map(|t| tree(seed * 31 + t as u64, dim, depth, width)).collect();
            for t in &trees {
                prop_assert!(t.validate(dim).is_ok());
            }
            let e = Ensemble {
                dim,
                combine: if average { Combine::Average } else { Combine::Sum },
                groups,
                base: (0..groups).map(|g| if average { 0.0 } else { g as f64 * 0.1 }).collect(),
                trees,
            };
            let x: Vec<f64> = (0..rows * dim)
                .map(|i| {
                    let h = (i as u64 + seed).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                    if h.is_multiple_of(9) { f64::NAN } else { (h % 300) as f64 / 100.0 - 1.5 }
                })
                .collect();
            let mut blocked = vec![0.0; rows * groups];
            e.outputs_rows(&x, &mut blocked);
            for (r, got) in blocked.chunks_exact(groups).enumerate() {
                let mut want = vec![0.0; groups];
                e.outputs(&x[r * dim..(r + 1) * dim], &mut want);
                let same = want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "row {}: {:?} vs {:?}", r, want, got);
            }
        }
    }
}
