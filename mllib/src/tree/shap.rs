//! TreeSHAP (Lundberg, Erion & Lee, 2018, algorithm 2): exact path-dependent Shapley values of
//! a tree's output in time proportional to leaves × depth², the node covers standing in for
//! the training distribution (a feature not known follows both children, weighted by their
//! covers). Summed over an ensemble's trees (scaled like the ensemble combines them), a row's
//! attributions add up to its output minus the ensemble's expected output.

use super::ensemble::{Combine, Ensemble, Tree};
use crate::explain::{Explained, Explainer};

/// One feature on the path from the root: the share of the rows that reach here when it is
/// unknown (`zero`) and whether the row itself goes this way when known (`one`), with the
/// permutation weight of the subsets of the path's features of each size.
#[derive(Debug, Clone, Copy)]
struct PathItem {
    feature: usize,
    zero: f64,
    one: f64,
    weight: f64,
}

/// The share of a node's covers that go to `child` (half each when the node has no cover).
fn fraction(tree: &Tree, node: usize, child: usize) -> f64 {
    let (l, r) = (tree.left[node] as usize, tree.right[node] as usize);
    let total = tree.cover[l] + tree.cover[r];
    if total > 0.0 {
        tree.cover[child] / total
    } else {
        0.5
    }
}

/// Adds `feature` to the path (`path[..len]`), writing at `path[len]`.
fn extend(path: &mut [PathItem], len: usize, zero: f64, one: f64, feature: usize) {
    path[len] = PathItem {
        feature,
        zero,
        one,
        weight: if len == 0 { 1.0 } else { 0.0 },
    };
    let l = len as f64;
    for i in (0..len).rev() {
        let w = path[i].weight;
        path[i + 1].weight += one * w * (i as f64 + 1.0) / (l + 1.0);
        path[i].weight = zero * w * (l - i as f64) / (l + 1.0);
    }
}

/// Removes item `at` from the path (`path[..len]`, `len` ≥ 2), undoing its [`extend`].
fn unwind(path: &mut [PathItem], len: usize, at: usize) {
    let last = len - 1;
    let (one, zero) = (path[at].one, path[at].zero);
    let l = len as f64;
    let mut next = path[last].weight;
    for j in (0..last).rev() {
        let jf = j as f64;
        if one != 0.0 {
            let w = path[j].weight;
            path[j].weight = next * l / ((jf + 1.0) * one);
            next = w - path[j].weight * zero * (l - 1.0 - jf) / l;
        } else {
            path[j].weight = path[j].weight * l / (zero * (l - 1.0 - jf));
        }
    }
    for j in at..last {
        path[j].feature = path[j + 1].feature;
        path[j].zero = path[j + 1].zero;
        path[j].one = path[j + 1].one;
    }
}

/// The total permutation weight of the path with item `at` removed (without removing it).
fn unwound_sum(path: &[PathItem], len: usize, at: usize) -> f64 {
    let last = len - 1;
    let (one, zero) = (path[at].one, path[at].zero);
    let l = len as f64;
    let mut next = path[last].weight;
    let mut total = 0.0;
    for j in (0..last).rev() {
        let jf = j as f64;
        if one != 0.0 {
            let t = next * l / ((jf + 1.0) * one);
            total += t;
            next = path[j].weight - t * zero * (l - 1.0 - jf) / l;
        } else {
            total += path[j].weight * l / (zero * (l - 1.0 - jf));
        }
    }
    total
}

/// Adds `scale` × the Shapley values of leaf value `column` of `tree` at `x` to `phi`.
/// `path` has room for the tree's depth + 2 items per level of recursion.
#[allow(clippy::too_many_arguments)]
fn recurse(
    tree: &Tree,
    x: &[f64],
    column: usize,
    scale: f64,
    phi: &mut [f64],
    node: usize,
    path: &mut [PathItem],
    len: usize,
    zero: f64,
    one: f64,
    feature: usize,
) {
    // Each level works on its own copy of the path, after its parent's items.
    let (parent, own) = path.split_at_mut(len);
    own[..len].copy_from_slice(parent);
    let path = own;
    extend(path, len, zero, one, feature);
    let mut len = len + 1;
    if tree.is_leaf(node) {
        let v = tree.leaf_values(node)[column] * scale;
        for i in 1..len {
            let w = unwound_sum(path, len, i);
            phi[path[i].feature] += w * (path[i].one - path[i].zero) * v;
        }
        return;
    }
    let f = tree.feature[node] as usize;
    let value = x[f];
    let go_left = if value.is_nan() {
        tree.default_left[node]
    } else {
        value <= tree.threshold[node]
    };
    let (l, r) = (tree.left[node] as usize, tree.right[node] as usize);
    let (hot, cold) = if go_left { (l, r) } else { (r, l) };
    let (mut z, mut o) = (1.0, 1.0);
    // A feature split on again higher up: its earlier fractions merge into this split's.
    if let Some(k) = (1..len).find(|&k| path[k].feature == f) {
        z = path[k].zero;
        o = path[k].one;
        unwind(path, len, k);
        len -= 1;
    }
    let (hot_share, cold_share) = (fraction(tree, node, hot), fraction(tree, node, cold));
    recurse(
        tree,
        x,
        column,
        scale,
        phi,
        hot,
        path,
        len,
        z * hot_share,
        o,
        f,
    );
    recurse(
        tree,
        x,
        column,
        scale,
        phi,
        cold,
        path,
        len,
        z * cold_share,
        0.0,
        f,
    );
}

/// Adds `scale` × the Shapley values of `tree`'s leaf value `column` at `x` to `phi`.
pub fn tree_shap(tree: &Tree, x: &[f64], column: usize, scale: f64, phi: &mut [f64]) {
    let mut path = path_buffer(tree.depth());
    recurse(tree, x, column, scale, phi, 0, &mut path, 0, 1.0, 1.0, 0);
}

/// Room for the paths of a tree of depth `depth`: level d copies the path (at most d + 1
/// items) after its parent's.
fn path_buffer(depth: usize) -> Vec<PathItem> {
    let empty = PathItem {
        feature: 0,
        zero: 0.0,
        one: 0.0,
        weight: 0.0,
    };
    vec![empty; (depth + 2) * (depth + 3)]
}

/// A tree's expected leaf value `column` over its covers: the output with no feature known.
pub fn expected_value(tree: &Tree, column: usize) -> f64 {
    fn go(t: &Tree, node: usize, column: usize) -> f64 {
        if t.is_leaf(node) {
            return t.leaf_values(node)[column];
        }
        let (l, r) = (t.left[node] as usize, t.right[node] as usize);
        fraction(t, node, l) * go(t, l, column) + fraction(t, node, r) * go(t, r, column)
    }
    go(tree, 0, column)
}

/// TreeSHAP over an ensemble: a boosted classifier's margin of the predicted class (for two
/// classes the positive class's margin, turned), a forest classifier's predicted-class
/// probability, or a regressor's value.
#[derive(Debug, Clone)]
pub struct TreeExplainer {
    ensemble: Ensemble,
    classifier: bool,
    /// Per tree, its expected value in each leaf column.
    expected: Vec<Vec<f64>>,
    /// The deepest tree's depth: one path buffer of that size serves every tree of a row.
    depth: usize,
}

impl TreeExplainer {
    pub fn new(ensemble: Ensemble, classifier: bool) -> Self {
        let expected = ensemble
            .trees
            .iter()
            .map(|t| (0..t.width).map(|c| expected_value(t, c)).collect())
            .collect();
        let depth = ensemble.trees.iter().map(Tree::depth).max().unwrap_or(0);
        TreeExplainer {
            ensemble,
            classifier,
            expected,
            depth,
        }
    }

    /// The explained output given the ensemble's outputs for the row: its index and the
    /// class it stands for (classifiers).
    fn output(&self, out: &[f64]) -> (usize, Option<usize>) {
        let e = &self.ensemble;
        if !self.classifier {
            return (0, None);
        }
        if e.combine == Combine::Sum && e.groups == 1 {
            return (0, Some(1));
        }
        let k = (0..out.len()).fold(0, |best, k| if out[k] > out[best] { k } else { best });
        (k, Some(k))
    }
}

impl Explainer for TreeExplainer {
    fn dim(&self) -> usize {
        self.ensemble.dim
    }

    fn method(&self) -> &'static str {
        "tree_shap"
    }

    fn scale(&self) -> &'static str {
        match (self.ensemble.combine, self.classifier) {
            (Combine::Sum, true) => "margin",
            (Combine::Average, true) => "probability",
            _ => "value",
        }
    }

    fn explain(&self, x: &[f64], phi: &mut [f64]) -> Explained {
        phi.fill(0.0);
        let e = &self.ensemble;
        let mut out = vec![0.0; e.groups];
        e.outputs(x, &mut out);
        let (k, class) = self.output(&out);
        let mut path = path_buffer(self.depth);
        let mut baseline = e.base[k];
        match e.combine {
            Combine::Sum => {
                for (t, tree) in e.trees.iter().enumerate() {
                    if t % e.groups == k {
                        recurse(tree, x, 0, 1.0, phi, 0, &mut path, 0, 1.0, 1.0, 0);
                        baseline += self.expected[t][0];
                    }
                }
            }
            Combine::Average => {
                let scale = 1.0 / e.trees.len().max(1) as f64;
                for (t, tree) in e.trees.iter().enumerate() {
                    recurse(tree, x, k, scale, phi, 0, &mut path, 0, 1.0, 1.0, 0);
                    baseline += scale * self.expected[t][k];
                }
            }
        }
        let explained = Explained {
            value: out[k],
            baseline,
            class,
        };
        if self.classifier && e.combine == Combine::Sum && e.groups == 1 {
            explained.for_predicted_binary(phi)
        } else {
            explained
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::ensemble::SplitInfo;

    fn split(
        t: &mut Tree,
        node: u32,
        feature: usize,
        threshold: f64,
        covers: [f64; 2],
    ) -> [u32; 2] {
        let w = t.width;
        let l = t.push_leaf(&vec![0.0; w], covers[0]);
        let r = t.push_leaf(&vec![0.0; w], covers[1]);
        t.set_split(
            node as usize,
            &SplitInfo {
                feature,
                bin: 0,
                threshold,
                default_left: true,
                gain: 1.0,
            },
            l,
            r,
        );
        [l, r]
    }

    fn set_leaf(t: &mut Tree, node: u32, v: f64) {
        t.values[node as usize] = v;
    }

    /// A depth-3 tree that splits feature 0 twice on one path and feature 2 below it.
    fn sample_tree() -> Tree {
        let mut t = Tree::new(1);
        t.push_leaf(&[0.0], 100.0);
        let [a, b] = split(&mut t, 0, 0, 0.5, [60.0, 40.0]);
        let [c, d] = split(&mut t, a, 1, 1.0, [45.0, 15.0]);
        let [e, f] = split(&mut t, b, 0, 2.0, [10.0, 30.0]);
        let [g, h] = split(&mut t, e, 2, -1.0, [4.0, 6.0]);
        for (n, v) in [(c, 1.0), (d, -2.0), (f, 3.0), (g, 0.5), (h, 7.0)] {
            set_leaf(&mut t, n, v);
        }
        t
    }

    /// The tree's expected output when only the features in `known` are known: unknown
    /// splits follow both children by cover.
    fn conditional(t: &Tree, node: usize, x: &[f64], known: &[bool]) -> f64 {
        if t.is_leaf(node) {
            return t.values[node];
        }
        let f = t.feature[node] as usize;
        let (l, r) = (t.left[node] as usize, t.right[node] as usize);
        if known[f] {
            let next = if x[f].is_nan() {
                if t.default_left[node] { l } else { r }
            } else if x[f] <= t.threshold[node] {
                l
            } else {
                r
            };
            conditional(t, next, x, known)
        } else {
            fraction(t, node, l) * conditional(t, l, x, known)
                + fraction(t, node, r) * conditional(t, r, x, known)
        }
    }

    /// Shapley values by enumerating every subset of the features.
    fn brute_force(t: &Tree, x: &[f64]) -> Vec<f64> {
        let d = x.len();
        let fact = |n: usize| (1..=n).map(|i| i as f64).product::<f64>();
        let mut phi = vec![0.0; d];
        for (i, p) in phi.iter_mut().enumerate() {
            for mask in 0u32..(1 << d) {
                if mask & (1 << i) != 0 {
                    continue;
                }
                let size = mask.count_ones() as usize;
                let weight = fact(size) * fact(d - size - 1) / fact(d);
                let mut known: Vec<bool> = (0..d).map(|j| mask & (1 << j) != 0).collect();
                let without = conditional(t, 0, x, &known);
                known[i] = true;
                let with = conditional(t, 0, x, &known);
                *p += weight * (with - without);
            }
        }
        phi
    }

    #[test]
    fn tree_shap_matches_the_shapley_values_by_enumeration() {
        let t = sample_tree();
        for x in [
            [0.0, 0.0, 0.0],
            [1.0, 2.0, -2.0],
            [1.0, 0.0, 5.0],
            [3.0, 0.0, -5.0],
            [f64::NAN, 2.0, -2.0],
            [1.5, f64::NAN, f64::NAN],
        ] {
            let mut phi = vec![0.0; 3];
            tree_shap(&t, &x, 0, 1.0, &mut phi);
            let expected = brute_force(&t, &x);
            for (a, b) in phi.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-12, "x = {x:?}: {phi:?} vs {expected:?}");
            }
            let total: f64 = phi.iter().sum();
            let value = t.values[t.leaf(&x)];
            assert!((total - (value - expected_value(&t, 0))).abs() < 1e-12);
        }
    }

    #[test]
    fn ensemble_attributions_sum_to_the_output_minus_the_baseline() {
        let t = sample_tree();
        let mut u = Tree::new(1);
        u.push_leaf(&[0.0], 50.0);
        let [a, b] = split(&mut u, 0, 2, 0.0, [20.0, 30.0]);
        set_leaf(&mut u, a, -1.0);
        set_leaf(&mut u, b, 2.5);
        let boosted = Ensemble {
            dim: 3,
            combine: Combine::Sum,
            groups: 1,
            base: vec![0.3],
            trees: vec![t.clone(), u.clone()],
        };
        let e = TreeExplainer::new(boosted, true);
        let x = [1.0, 0.5, 2.0];
        let mut phi = vec![0.0; 3];
        let out = e.explain(&x, &mut phi);
        let margin = 0.3 + t.values[t.leaf(&x)] + u.values[u.leaf(&x)];
        let baseline = 0.3 + expected_value(&t, 0) + expected_value(&u, 0);
        // The predicted class's margin: the positive class's, or its negation.
        let sign = if margin > 0.0 { 1.0 } else { -1.0 };
        assert_eq!(out.class, Some(usize::from(margin > 0.0)));
        assert!((out.value - sign * margin).abs() < 1e-12);
        assert!((out.baseline - sign * baseline).abs() < 1e-12);
        assert!((phi.iter().sum::<f64>() - (out.value - out.baseline)).abs() < 1e-12);
    }
}
