//! Naive Bayes' one statistic: per class, the weight and the weighted feature means (and, for
//! the Gaussian model, the centred sums of squares), merged with Chan et al.'s update so that
//! large feature offsets keep their digits.

use quiver_engine::aggregate::{decode_f64s, encode_f64s};
use quiver_engine::{FeatureBatch, QuiverError, StatInputs, Statistic};
use serde::{Deserialize, Serialize};

use super::params::NaiveBayesType;
use crate::api::class_index;

/// One class's moments.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClassMoments {
    /// Σ w
    pub weight: f64,
    /// Weighted mean of each feature (Σ w x / Σ w).
    pub mean: Vec<f64>,
    /// Σ w (x − mean)², Gaussian only (empty otherwise).
    pub m2: Vec<f64>,
}

impl ClassMoments {
    fn new(d: usize, gaussian: bool) -> Self {
        ClassMoments {
            weight: 0.0,
            mean: vec![0.0; d],
            m2: if gaussian { vec![0.0; d] } else { Vec::new() },
        }
    }

    /// Chan et al.'s pairwise update.
    pub fn combine(&mut self, o: &ClassMoments) {
        if o.weight == 0.0 {
            return;
        }
        let w = self.weight + o.weight;
        let f = self.weight * o.weight / w;
        for j in 0..self.mean.len() {
            let delta = o.mean[j] - self.mean[j];
            if !self.m2.is_empty() {
                self.m2[j] += o.m2[j] + f * delta * delta;
            }
            self.mean[j] += delta * o.weight / w;
        }
        self.weight = w;
    }
}

/// The merged state: one entry per class index seen (classes absent in between keep weight 0).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ClassSumsState {
    pub classes: Vec<ClassMoments>,
}

/// Per-class weights and feature moments over the label's classes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClassSums {
    pub dim: usize,
    pub model_type: NaiveBayesType,
    pub weighted: bool,
    /// The label column, for error messages.
    pub label: String,
    /// The feature names, for error messages.
    pub features: Vec<String>,
}

impl ClassSums {
    fn gaussian(&self) -> bool {
        self.model_type == NaiveBayesType::Gaussian
    }

    /// The index of the first value (in the batch's row-major features) that the event model
    /// does not accept, and what is wrong with it.
    pub fn refused(&self, b: &FeatureBatch<'_>) -> Option<(usize, &'static str)> {
        match self.model_type {
            NaiveBayesType::Multinomial | NaiveBayesType::Complement => b
                .values
                .iter()
                .position(|x| !(*x >= 0.0 && x.is_finite()))
                .map(|i| {
                    (
                        i,
                        "negative or non-finite value (multinomial and complement naive Bayes take counts ≥ 0)",
                    )
                }),
            NaiveBayesType::Bernoulli => b
                .values
                .iter()
                .position(|x| *x != 0.0 && *x != 1.0)
                .map(|i| {
                    (
                        i,
                        "value other than 0 or 1 (Bernoulli naive Bayes takes presence flags)",
                    )
                }),
            NaiveBayesType::Gaussian => b
                .values
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, "non-finite value")),
        }
    }

    /// [`ClassSums::refused`] as an error naming the column and the row in the batch.
    fn check_values(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let d = self.dim;
        match self.refused(b) {
            None => Ok(()),
            Some((i, kind)) => Err(QuiverError::InvalidValueInBatch {
                kind,
                column: self
                    .features
                    .get(i % d)
                    .cloned()
                    .unwrap_or_else(|| format!("feature {}", i % d)),
                row_in_batch: i / d,
            }),
        }
    }
}

impl Statistic for ClassSums {
    type State = ClassSumsState;
    type Output = ClassSumsState;

    const NAME: &'static str = "quiver_naive_bayes_sums";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the naive Bayes sums", self)
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: self.weighted,
        }
    }
    fn init(&self) -> ClassSumsState {
        ClassSumsState::default()
    }

    fn update(&self, s: &mut ClassSumsState, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let y = b
            .label
            .ok_or_else(|| QuiverError::internal("naive Bayes needs a label"))?;
        self.check_values(b)?;
        let weights = if self.weighted { b.weight } else { None };
        if let Some(w) = weights
            && let Some(r) = w.iter().position(|v| !(*v >= 0.0 && v.is_finite()))
        {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "negative or non-finite value",
                column: "weight".to_string(),
                row_in_batch: r,
            });
        }
        let (d, gaussian) = (self.dim, self.gaussian());
        // Pass 1: the batch's per-class weights and weighted sums.
        let mut part: Vec<ClassMoments> = Vec::new();
        let mut index = Vec::with_capacity(b.n_rows);
        for (r, &v) in y.iter().enumerate().take(b.n_rows) {
            let c = class_index(v, &self.label, r)?;
            index.push(c);
            if part.len() <= c {
                part.resize(c + 1, ClassMoments::new(d, gaussian));
            }
            let w = weights.map_or(1.0, |w| w[r]);
            let m = &mut part[c];
            m.weight += w;
            for (acc, x) in m.mean.iter_mut().zip(b.row(r)) {
                *acc += w * x;
            }
        }
        for m in part.iter_mut().filter(|m| m.weight > 0.0) {
            let inv = 1.0 / m.weight;
            m.mean.iter_mut().for_each(|v| *v *= inv);
        }
        // Pass 2 (Gaussian): centred sums of squares about the batch's class means.
        if gaussian {
            for (r, &c) in index.iter().enumerate() {
                let w = weights.map_or(1.0, |w| w[r]);
                let m = &mut part[c];
                for ((acc, x), mu) in m.m2.iter_mut().zip(b.row(r)).zip(&m.mean) {
                    let dx = x - mu;
                    *acc += w * dx * dx;
                }
            }
        }
        self.merge(s, &ClassSumsState { classes: part })
    }

    fn merge(&self, s: &mut ClassSumsState, o: &ClassSumsState) -> quiver_engine::Result<()> {
        if s.classes.len() < o.classes.len() {
            s.classes.resize(
                o.classes.len(),
                ClassMoments::new(self.dim, self.gaussian()),
            );
        }
        for (a, b) in s.classes.iter_mut().zip(&o.classes) {
            a.combine(b);
        }
        Ok(())
    }

    fn finish(&self, s: ClassSumsState) -> quiver_engine::Result<ClassSumsState> {
        if s.classes.iter().all(|c| c.weight == 0.0) {
            return Err(QuiverError::EmptyDataset {
                context: "naive Bayes".to_string(),
            });
        }
        Ok(s)
    }

    fn encode_state(&self, s: &ClassSumsState, out: &mut Vec<u8>) {
        encode_f64s(&[s.classes.len() as f64], out);
        for c in &s.classes {
            encode_f64s(&[c.weight], out);
            encode_f64s(&c.mean, out);
            encode_f64s(&c.m2, out);
        }
    }

    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<ClassSumsState> {
        let (n, mut rest) = decode_f64s(bytes, 1)?;
        let m2_len = if self.gaussian() { self.dim } else { 0 };
        let mut classes = Vec::with_capacity(n[0] as usize);
        for _ in 0..n[0] as usize {
            let (w, r) = decode_f64s(rest, 1)?;
            let (mean, r) = decode_f64s(r, self.dim)?;
            let (m2, r) = decode_f64s(r, m2_len)?;
            rest = r;
            classes.push(ClassMoments {
                weight: w[0],
                mean,
                m2,
            });
        }
        if !rest.is_empty() {
            return Err(QuiverError::internal(
                "trailing bytes in a naive Bayes state",
            ));
        }
        Ok(ClassSumsState { classes })
    }

    fn state_size(&self, s: &ClassSumsState) -> usize {
        s.classes.len() * 8 * (1 + self.dim * if self.gaussian() { 2 } else { 1 })
    }
}

quiver_engine::impl_json_params!(ClassSums => "the naive Bayes sums");

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(model_type: NaiveBayesType) -> ClassSums {
        ClassSums {
            dim: 2,
            model_type,
            weighted: false,
            label: "y".to_string(),
            features: vec!["a".to_string(), "b".to_string()],
        }
    }

    #[test]
    fn merged_halves_equal_one_pass_and_survive_encoding() {
        let xs = [1.0, 2.0, 3.0, 5.0, 1e6 + 1.0, 7.0, 1e6 + 3.0, 0.5, 4.0, 4.0];
        let ys = [0.0, 1.0, 0.0, 1.0, 2.0];
        let s = stat(NaiveBayesType::Gaussian);
        let batch = |lo: usize, hi: usize| {
            let mut b = FeatureBatch::new(&xs[2 * lo..2 * hi], 2).unwrap();
            b.label = Some(&ys[lo..hi]);
            b
        };
        let mut whole = s.init();
        s.update(&mut whole, &batch(0, 5)).unwrap();
        let (mut a, mut b) = (s.init(), s.init());
        s.update(&mut a, &batch(0, 2)).unwrap();
        s.update(&mut b, &batch(2, 5)).unwrap();
        let mut bytes = Vec::new();
        s.encode_state(&b, &mut bytes);
        s.merge(&mut a, &s.decode_state(&bytes).unwrap()).unwrap();
        for (x, y) in whole.classes.iter().zip(&a.classes) {
            assert!((x.weight - y.weight).abs() < 1e-12);
            for j in 0..2 {
                assert!((x.mean[j] - y.mean[j]).abs() < 1e-9 * x.mean[j].abs().max(1.0));
                assert!((x.m2[j] - y.m2[j]).abs() < 1e-9 * x.m2[j].abs().max(1.0));
            }
        }
        // Class 0: rows (1, 2) and (1e6 + 1, 7).
        let c0 = &whole.classes[0];
        assert_eq!(c0.weight, 2.0);
        assert_eq!(c0.mean, vec![500_001.0, 4.5]);
        assert_eq!(c0.m2, vec![2.0 * 500_000.0f64.powi(2), 12.5]);
    }

    #[test]
    fn values_the_event_model_refuses_name_column_and_row() {
        let xs = [1.0, 2.0, 3.0, -1.0];
        let ys = [0.0, 1.0];
        let mut b = FeatureBatch::new(&xs, 2).unwrap();
        b.label = Some(&ys);
        let s = stat(NaiveBayesType::Multinomial);
        let e = s.update(&mut s.init(), &b).unwrap_err().to_string();
        assert!(e.contains("column 'b'") && e.contains("row 1"), "{e}");
        let s = stat(NaiveBayesType::Bernoulli);
        let e = s.update(&mut s.init(), &b).unwrap_err().to_string();
        assert!(
            e.contains("other than 0 or 1") && e.contains("column 'b'") && e.contains("row 0"),
            "{e}"
        );
        let s = stat(NaiveBayesType::Gaussian);
        s.update(&mut s.init(), &b).unwrap();
    }
}
