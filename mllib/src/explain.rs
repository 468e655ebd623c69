//! Per-row explanations: how much each feature moved a model's output away from a baseline
//! (BigQuery ML's `ML.EXPLAIN_PREDICT`). Linear and logistic models are explained exactly:
//! feature `j` contributes `βⱼ (xⱼ − μⱼ)` on the link scale (the margin), where `μ` is the
//! training mean and the baseline is the margin at the mean. Tree ensembles use TreeSHAP
//! (Lundberg et al., 2018: path-dependent Shapley values, the node covers standing in for the
//! training distribution); their baseline is each tree's cover-weighted mean leaf. In both
//! cases the attributions of a row sum to its output minus the baseline.

use std::fmt::Debug;

/// One explained row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Explained {
    /// The explained output for the row (a margin, a regression value or a class probability).
    pub value: f64,
    /// The output at the baseline (no feature known).
    pub baseline: f64,
    /// The class whose output is explained (the predicted one), for classifiers.
    pub class: Option<usize>,
}

impl Explained {
    /// A binary classifier's explanation of its positive-class margin `m`, turned to the
    /// predicted class (class 0 when `m ≤ 0`, whose margin is `−m`): the attributions then
    /// speak for the prediction, as for a multiclass model.
    pub fn for_predicted_binary(mut self, phi: &mut [f64]) -> Self {
        if self.value > 0.0 {
            self.class = Some(1);
        } else {
            self.class = Some(0);
            self.value = -self.value;
            self.baseline = -self.baseline;
            phi.iter_mut().for_each(|p| *p = -*p);
        }
        self
    }
}

/// Attributes a model's output on one feature vector to its features.
pub trait Explainer: Send + Sync + Debug {
    /// Width of the feature vectors it takes.
    fn dim(&self) -> usize;
    /// How attributions are computed (`"exact"`, `"tree_shap"`).
    fn method(&self) -> &'static str;
    /// What the explained value is: `"margin"` (the link scale), `"value"` or `"probability"`.
    fn scale(&self) -> &'static str;
    /// Writes one attribution per feature into `phi` (`dim` long) and returns the explained
    /// value and baseline; the attributions sum to `value − baseline`.
    fn explain(&self, x: &[f64], phi: &mut [f64]) -> Explained;
}

/// A linear model's exact attributions on its margins: `βₖⱼ (xⱼ − μⱼ)` for the explained
/// vector `k` (the predicted class of a multinomial model, the only vector of a regression);
/// a binomial model's margin is turned to the predicted class.
#[derive(Debug, Clone)]
pub struct LinearExplainer {
    dim: usize,
    /// vectors × dim, row-major.
    coefficients: Vec<f64>,
    intercepts: Vec<f64>,
    /// Training mean of each feature.
    mean: Vec<f64>,
    /// Several vectors, one per class: the predicted class's is explained.
    multinomial: bool,
    /// A binomial classifier: one vector, the positive class's margin.
    binomial: bool,
}

impl LinearExplainer {
    /// `None` when the means are not those of the coefficients' features (a model stored
    /// before they were recorded).
    pub fn new(
        coefficients: Vec<f64>,
        intercepts: Vec<f64>,
        mean: Vec<f64>,
        multinomial: bool,
        binomial: bool,
    ) -> Option<Self> {
        let dim = mean.len();
        (dim > 0
            && !intercepts.is_empty()
            && coefficients.len() == dim * intercepts.len()
            && mean.iter().all(|m| m.is_finite()))
        .then_some(LinearExplainer {
            dim,
            coefficients,
            intercepts,
            mean,
            multinomial,
            binomial,
        })
    }

    fn margin(&self, k: usize, x: &[f64]) -> f64 {
        let beta = &self.coefficients[k * self.dim..(k + 1) * self.dim];
        self.intercepts[k] + beta.iter().zip(x).map(|(b, v)| b * v).sum::<f64>()
    }
}

impl Explainer for LinearExplainer {
    fn dim(&self) -> usize {
        self.dim
    }

    fn method(&self) -> &'static str {
        "exact"
    }

    fn scale(&self) -> &'static str {
        if self.multinomial || self.binomial {
            "margin"
        } else {
            "value"
        }
    }

    fn explain(&self, x: &[f64], phi: &mut [f64]) -> Explained {
        let k = if self.multinomial {
            (0..self.intercepts.len())
                .map(|k| (k, self.margin(k, x)))
                .fold((0, f64::NEG_INFINITY), |best, (k, m)| {
                    if m > best.1 { (k, m) } else { best }
                })
                .0
        } else {
            0
        };
        let beta = &self.coefficients[k * self.dim..(k + 1) * self.dim];
        for (j, p) in phi.iter_mut().enumerate() {
            *p = beta[j] * (x[j] - self.mean[j]);
        }
        let out = Explained {
            value: self.margin(k, x),
            baseline: self.margin(k, &self.mean),
            class: self.multinomial.then_some(k),
        };
        if self.binomial {
            out.for_predicted_binary(phi)
        } else {
            out
        }
    }
}

/// Rows explained per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Explains the row-major rows `x` (`dim` wide), in parallel blocks on the current rayon pool
/// (run it inside `QuiverSession::run_compute`): the attributions, row-major, and per row
/// its explained value.
pub fn explain_rows(e: &dyn Explainer, x: &[f64], dim: usize) -> (Vec<f64>, Vec<Explained>) {
    use rayon::prelude::*;
    let width = dim.max(1);
    let mut phi = vec![0.0; x.len() / width * dim];
    let explained = x
        .par_chunks(ROWS_PER_TASK * width)
        .zip(phi.par_chunks_mut(ROWS_PER_TASK * width))
        .flat_map_iter(|(rows, out)| {
            rows.chunks_exact(width)
                .zip(out.chunks_exact_mut(width))
                .map(|(row, p)| e.explain(row, p))
                .collect::<Vec<_>>()
        })
        .collect();
    (phi, explained)
}

/// The `top_k` features of a row's attributions by absolute value (ties: feature order).
pub fn top_features(phi: &[f64], top_k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..phi.len()).collect();
    order.sort_by(|a, b| phi[*b].abs().total_cmp(&phi[*a].abs()).then(a.cmp(b)));
    order.truncate(top_k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_attributions_sum_to_margin_minus_baseline() {
        let e = LinearExplainer::new(
            vec![2.0, -1.0, 0.5, 1.0, 1.0, -3.0],
            vec![0.5, -0.25],
            vec![1.0, 2.0, 3.0],
            true,
            false,
        )
        .unwrap();
        let x = [3.0, 0.0, 1.0];
        let mut phi = [0.0; 3];
        let out = e.explain(&x, &mut phi);
        // Margins: class 0 = 0.5 + 6 + 0 + 0.5 = 7; class 1 = -0.25 + 3 + 0 - 3 = -0.25.
        assert_eq!(out.class, Some(0));
        assert!((out.value - 7.0).abs() < 1e-12);
        assert!((out.baseline - (0.5 + 2.0 - 2.0 + 1.5)).abs() < 1e-12);
        assert_eq!(phi, [4.0, 2.0, -1.0]);
        assert!((phi.iter().sum::<f64>() - (out.value - out.baseline)).abs() < 1e-12);
        assert_eq!(top_features(&phi, 2), vec![0, 1]);
    }

    #[test]
    fn binomial_explanations_speak_for_the_predicted_class() {
        let e =
            LinearExplainer::new(vec![1.0, -2.0], vec![0.5], vec![0.0, 0.0], false, true).unwrap();
        let mut phi = [0.0; 2];
        // Margin 0.5 + 1 − 4 = −2.5: class 0 predicted, its margin 2.5.
        let out = e.explain(&[1.0, 2.0], &mut phi);
        assert_eq!(out.class, Some(0));
        assert_eq!((out.value, out.baseline), (2.5, -0.5));
        assert_eq!(phi, [-1.0, 4.0]);
        let out = e.explain(&[3.0, 0.0], &mut phi);
        assert_eq!(out.class, Some(1));
        assert_eq!((out.value, out.baseline, phi), (3.5, 0.5, [3.0, 0.0]));
    }

    #[test]
    fn mismatched_means_give_no_explainer() {
        assert!(LinearExplainer::new(vec![1.0, 2.0], vec![0.0], vec![0.0], false, false).is_none());
        assert!(LinearExplainer::new(vec![1.0], vec![0.0], vec![f64::NAN], false, false).is_none());
    }
}
