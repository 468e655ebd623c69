//! Feature-vector transformers with Spark MLlib's names: `Bucketizer` (values into buckets
//! between given splits), `QuantileDiscretizer` (an estimator whose model is the bucketizer at
//! the data's quantiles), `PolynomialExpansion` (every monomial up to a degree) and
//! `Interaction` (products across groups of the vector). Each maps the feature vector to a new
//! one with the map primitive, so they run where the data is and inside `ml_predict`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::vector::{vector_array, vector_type};
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, QuiverError, QuiverSession,
    map_dataset,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, RowStage, Transformer, check_output_col};
use crate::error::{MllibError, Result};
use crate::persist::params_json;
use crate::tree::bins::BinSample;

/// The most values an expansion may write per row.
pub const MAX_EXPANDED_DIM: usize = 1 << 20;

fn invalid(param: &str, reason: impl Into<String>) -> MllibError {
    MllibError::InvalidParam {
        param: param.to_string(),
        reason: reason.into(),
    }
}

/// Applies `f` to the dataset's features, writing `output_col`, which becomes the features.
fn map_features<F: BatchFunction + 'static>(
    data: &Dataset,
    f: F,
    output_col: &str,
) -> Result<Dataset> {
    check_output_col(output_col)?;
    let out = map_dataset(data.clone(), Arc::new(f), output_col)?;
    Ok(out.with_features([output_col])?)
}

/// A stateless transformer stores its parameters only.
fn params_draft<P: Serialize>(p: &P) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
    Ok((
        ModelDraft {
            params: params_json(p)?,
            ..Default::default()
        },
        Vec::new(),
    ))
}

fn params_of<P: DeserializeOwned>(meta: &ModelMetadata, check: fn(&P) -> Result<()>) -> Result<P> {
    let p: P =
        serde_json::from_value(meta.params.clone()).map_err(|e| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason: format!("invalid params: {e}"),
        })?;
    check(&p).map_err(|e| MllibError::CorruptModel {
        name: meta.name.clone(),
        reason: e.to_string(),
    })?;
    Ok(p)
}

/// A stateless transformer's `Model`: its parameters are all it stores, checked on load.
macro_rules! stateless_model {
    ($t:ty, $kind:literal) => {
        impl Model for $t {
            const KIND: &'static str = $kind;
            const FORMAT_VERSION: u32 = 1;

            fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
                params_draft(self)
            }

            fn from_parts(meta: &ModelMetadata, _parts: &BTreeMap<String, Bytes>) -> Result<Self> {
                params_of(meta, <$t>::check)
            }
        }
    };
}

/// Splits with `±∞` as `±f64::MAX`.
fn finite_splits(s: Vec<f64>) -> Vec<f64> {
    s.into_iter().map(|x| x.clamp(f64::MIN, f64::MAX)).collect()
}

/// What a bucketizer does with NaN (Spark's `handleInvalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidValues {
    /// An error naming the feature and the row.
    #[default]
    Error,
    /// NaN goes to an extra bucket after the others.
    Keep,
}

/// Maps each feature to the index of its bucket: with splits `s₀ < s₁ < … < sₙ`, bucket `i`
/// holds `sᵢ ≤ x < sᵢ₊₁`, the last also `x = sₙ` (Spark's `Bucketizer`). Use `-∞` and `+∞` as
/// the outer splits to take every value (they are kept as the largest finite numbers, which
/// the store and the cluster codec carry; inputs are finite); a value outside the splits is an
/// error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucketizer {
    /// Per feature, its splits.
    splits: Vec<Vec<f64>>,
    #[serde(default)]
    handle_invalid: InvalidValues,
    output_col: String,
}

impl Bucketizer {
    /// One list of splits per feature of the vector.
    pub fn new(splits: Vec<Vec<f64>>) -> Self {
        Bucketizer {
            splits: splits.into_iter().map(finite_splits).collect(),
            handle_invalid: InvalidValues::Error,
            output_col: "buckets".to_string(),
        }
    }

    pub fn handle_invalid(mut self, h: InvalidValues) -> Self {
        self.handle_invalid = h;
        self
    }

    /// Defaults to `"buckets"`.
    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    pub fn splits(&self) -> &[Vec<f64>] {
        &self.splits
    }

    pub fn check(&self) -> Result<()> {
        if self.splits.is_empty() {
            return Err(invalid("splits", "no feature has splits"));
        }
        for (j, s) in self.splits.iter().enumerate() {
            if s.len() < 2 {
                return Err(invalid(
                    "splits",
                    format!("feature {j} has {} splits; a bucket needs two", s.len()),
                ));
            }
            if s.iter().any(|x| x.is_nan()) || s.windows(2).any(|w| w[0] >= w[1]) {
                return Err(invalid(
                    "splits",
                    format!("the splits of feature {j} are not strictly increasing: {s:?}"),
                ));
            }
        }
        check_output_col(&self.output_col)
    }

    /// The bucket of `x` for feature `j`.
    fn bucket(&self, j: usize, x: f64) -> std::result::Result<f64, String> {
        let s = &self.splits[j];
        let n = s.len() - 1;
        if x.is_nan() {
            return match self.handle_invalid {
                InvalidValues::Keep => Ok(n as f64),
                InvalidValues::Error => Err(format!(
                    "feature {j} is NaN or missing (handle_invalid = 'keep' puts it in bucket {n})"
                )),
            };
        }
        if x < s[0] || x > s[n] {
            return Err(format!(
                "feature {j} = {x} is outside its splits [{}, {}]",
                s[0], s[n]
            ));
        }
        // The number of splits ≤ x, less one; x = sₙ belongs to the last bucket.
        let i = s.partition_point(|t| *t <= x);
        Ok((i.min(n) - 1) as f64)
    }
}

impl BatchFunction for Bucketizer {
    fn name(&self) -> &str {
        "bucketizer"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a bucketizer", self)
    }
    fn input_dim(&self) -> usize {
        self.splits.len()
    }
    fn return_type(&self) -> DataType {
        vector_type(self.splits.len())
    }
    fn accepts_missing(&self) -> bool {
        self.handle_invalid == InvalidValues::Keep
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let d = batch.dim;
        let mut out = Vec::with_capacity(batch.values.len());
        for (r, row) in batch.values.chunks_exact(d).enumerate() {
            for (j, x) in row.iter().enumerate() {
                out.push(
                    self.bucket(j, *x)
                        .map_err(|reason| QuiverError::InvalidParam {
                            param: "bucketizer".to_string(),
                            reason: format!("{reason} (row {r} of a batch)"),
                        })?,
                );
            }
        }
        Ok(Arc::new(vector_array(out, d)?))
    }
}

impl Transformer for Bucketizer {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.check()?;
        let data = if self.handle_invalid == InvalidValues::Keep {
            data.clone().keep_missing()
        } else {
            data.clone()
        };
        map_features(&data, self.clone(), &self.output_col)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Map(Arc::new(self.clone()))
    }
}

stateless_model!(Bucketizer, "bucketizer");

/// Buckets each feature at its quantiles (Spark's `QuantileDiscretizer`): `num_buckets`
/// buckets of about equal counts, from quantiles of a bounded, order-independent sample of the
/// rows (every row up to 200 000), linearly interpolated as numpy's `quantile`; repeated
/// quantiles merge, so a feature with few distinct values gets fewer buckets. The outer splits
/// are `-∞` and `+∞`. The fitted model is a [`Bucketizer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileDiscretizer {
    num_buckets: usize,
    handle_invalid: InvalidValues,
    output_col: String,
}

impl Default for QuantileDiscretizer {
    fn default() -> Self {
        QuantileDiscretizer {
            num_buckets: 2,
            handle_invalid: InvalidValues::Error,
            output_col: "buckets".to_string(),
        }
    }
}

impl QuantileDiscretizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defaults to 2.
    pub fn num_buckets(mut self, n: usize) -> Self {
        self.num_buckets = n;
        self
    }

    pub fn handle_invalid(mut self, h: InvalidValues) -> Self {
        self.handle_invalid = h;
        self
    }

    /// Defaults to `"buckets"`.
    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    pub fn check(&self) -> Result<()> {
        if !(2..=MAX_EXPANDED_DIM).contains(&self.num_buckets) {
            return Err(invalid(
                "num_buckets",
                format!("{} buckets; at least 2 are needed", self.num_buckets),
            ));
        }
        check_output_col(&self.output_col)
    }
}

/// The splits at the `1/n … (n−1)/n` quantiles of sorted NaN-free `v` (linear interpolation),
/// repeated ones merged, between `-∞` and `+∞`.
pub fn quantile_splits(v: &[f64], n: usize) -> Vec<f64> {
    let mut splits = vec![f64::NEG_INFINITY];
    if !v.is_empty() {
        for i in 1..n {
            let pos = i as f64 / n as f64 * (v.len() - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
            let hi = (lo + 1).min(v.len() - 1);
            let q = v[lo] + (v[hi] - v[lo]) * frac;
            if q > *splits.last().expect("the first split") {
                splits.push(q);
            }
        }
    }
    splits.push(f64::INFINITY);
    splits
}

impl Estimator for QuantileDiscretizer {
    type Model = Bucketizer;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<Bucketizer> {
        self.check()?;
        let data = data.clone().keep_missing();
        let prepared = session.prepare(&data, session.runner()).await?;
        let d = prepared.dim();
        let sample = prepared.aggregate(Arc::new(BinSample::new(d, 0))).await?;
        let splits = (0..d)
            .map(|j| {
                let mut v = sample.column(j, d);
                v.retain(|x| !x.is_nan());
                v.sort_unstable_by(f64::total_cmp);
                quantile_splits(&v, self.num_buckets)
            })
            .collect();
        let b = Bucketizer::new(splits)
            .handle_invalid(self.handle_invalid)
            .output_col(self.output_col.clone());
        b.check()?;
        Ok(b)
    }
}

/// Every monomial of the features of degree 1 to `degree` (Spark's `PolynomialExpansion`), in
/// scikit-learn's `PolynomialFeatures(include_bias=False)` order: by degree, then
/// lexicographically by the features' indices (`x, y, x², xy, y²`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolynomialExpansion {
    degree: usize,
    /// Width of the input vector.
    dim: usize,
    output_col: String,
}

impl PolynomialExpansion {
    /// Expands vectors of `dim` features to `degree` (Spark's default is 2).
    pub fn new(dim: usize, degree: usize) -> Self {
        PolynomialExpansion {
            degree,
            dim,
            output_col: "poly_features".to_string(),
        }
    }

    /// Defaults to `"poly_features"`.
    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    /// Width of the output: the monomials of degree 1..=degree in `dim` variables.
    pub fn output_dim(&self) -> usize {
        // C(dim + degree, degree) − 1, saturating.
        let mut c: u128 = 1;
        for i in 1..=self.degree as u128 {
            c = c.saturating_mul(self.dim as u128 + i) / i;
        }
        usize::try_from(c - 1).unwrap_or(usize::MAX)
    }

    pub fn check(&self) -> Result<()> {
        if self.degree < 1 {
            return Err(invalid("degree", "the degree must be at least 1"));
        }
        if self.dim < 1 {
            return Err(invalid("dim", "the input has no features"));
        }
        let out = self.output_dim();
        if out > MAX_EXPANDED_DIM {
            return Err(invalid(
                "degree",
                format!(
                    "{} features to degree {} make {out} values per row, more than {MAX_EXPANDED_DIM}",
                    self.dim, self.degree
                ),
            ));
        }
        check_output_col(&self.output_col)
    }

    /// The monomials as lists of feature indices, in output order.
    pub fn terms(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::with_capacity(self.output_dim());
        let mut level: Vec<Vec<usize>> = (0..self.dim).map(|j| vec![j]).collect();
        for _ in 1..=self.degree {
            out.extend(level.iter().cloned());
            let next = level
                .iter()
                .flat_map(|t| {
                    let last = *t.last().expect("a term has a feature");
                    (last..self.dim).map(move |j| {
                        let mut n = t.clone();
                        n.push(j);
                        n
                    })
                })
                .collect();
            level = next;
        }
        out
    }
}

impl BatchFunction for PolynomialExpansion {
    fn name(&self) -> &str {
        "polynomial_expansion"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a polynomial expansion", self)
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn return_type(&self) -> DataType {
        vector_type(self.output_dim())
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let width = self.output_dim();
        let mut out = Vec::with_capacity(batch.values.len() / self.dim.max(1) * width);
        for row in batch.values.chunks_exact(self.dim) {
            // Degree by degree: each term is a lower-degree term times one more feature, so a
            // row costs one multiplication per output value.
            let start = out.len();
            out.extend_from_slice(row);
            let mut level: Vec<(usize, f64)> = row.iter().copied().enumerate().collect();
            for _ in 2..=self.degree {
                let mut next = Vec::with_capacity(level.len() * self.dim);
                for (last, v) in &level {
                    for (j, x) in row.iter().enumerate().skip(*last) {
                        next.push((j, v * x));
                    }
                }
                out.extend(next.iter().map(|(_, v)| *v));
                level = next;
            }
            debug_assert_eq!(out.len() - start, width);
        }
        Ok(Arc::new(vector_array(out, width)?))
    }
}

impl Transformer for PolynomialExpansion {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.check()?;
        map_features(data, self.clone(), &self.output_col)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Map(Arc::new(self.clone()))
    }
}

stateless_model!(PolynomialExpansion, "polynomial_expansion");

/// Products across groups of the feature vector (Spark's `Interaction`): the vector is cut
/// into consecutive groups of the given sizes, and the output holds the product of every
/// choice of one value per group, the first group varying slowest (`[a₁b₁, a₁b₂, a₂b₁, a₂b₂]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    groups: Vec<usize>,
    output_col: String,
}

impl Interaction {
    /// Groups of `sizes` values, in vector order (a number is a group of one).
    pub fn new(sizes: Vec<usize>) -> Self {
        Interaction {
            groups: sizes,
            output_col: "interacted".to_string(),
        }
    }

    /// Defaults to `"interacted"`.
    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    pub fn output_dim(&self) -> usize {
        self.groups
            .iter()
            .try_fold(1usize, |a, g| a.checked_mul(*g))
            .unwrap_or(usize::MAX)
    }

    pub fn check(&self) -> Result<()> {
        if self.groups.len() < 2 || self.groups.contains(&0) {
            return Err(invalid(
                "groups",
                format!(
                    "an interaction needs at least two non-empty groups, got sizes {:?}",
                    self.groups
                ),
            ));
        }
        let out = self.output_dim();
        if out > MAX_EXPANDED_DIM {
            return Err(invalid(
                "groups",
                format!(
                    "groups {:?} make {out} values per row, more than {MAX_EXPANDED_DIM}",
                    self.groups
                ),
            ));
        }
        check_output_col(&self.output_col)
    }
}

impl BatchFunction for Interaction {
    fn name(&self) -> &str {
        "interaction"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("an interaction", self)
    }
    fn input_dim(&self) -> usize {
        self.groups.iter().sum()
    }
    fn return_type(&self) -> DataType {
        vector_type(self.output_dim())
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let width = self.output_dim();
        let d = self.input_dim();
        let mut out = Vec::with_capacity(batch.values.len() / d.max(1) * width);
        let mut products = Vec::with_capacity(width);
        for row in batch.values.chunks_exact(d) {
            products.clear();
            products.push(1.0);
            let mut at = 0;
            for g in &self.groups {
                let values = &row[at..at + g];
                at += g;
                products = products
                    .iter()
                    .flat_map(|p| values.iter().map(move |v| p * v))
                    .collect();
            }
            out.extend_from_slice(&products);
        }
        Ok(Arc::new(vector_array(out, width)?))
    }
}

impl Transformer for Interaction {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.check()?;
        map_features(data, self.clone(), &self.output_col)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Map(Arc::new(self.clone()))
    }
}

stateless_model!(Interaction, "interaction");

quiver_engine::impl_json_params!(
    Bucketizer => "a bucketizer",
    PolynomialExpansion => "a polynomial expansion",
    Interaction => "an interaction",
);

/// Lets these maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_batch_function::<Bucketizer>("bucketizer")?;
    r.add_batch_function::<PolynomialExpansion>("polynomial_expansion")?;
    r.add_batch_function::<Interaction>("interaction")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(f: &dyn BatchFunction, values: &[f64], dim: usize) -> Vec<f64> {
        let out = f.apply(&FeatureBatch::new(values, dim).unwrap()).unwrap();
        let (v, _) = quiver_engine::vector::vector_values(out.as_ref(), "out").unwrap();
        v.to_vec()
    }

    #[test]
    fn buckets_are_half_open_with_a_closed_last() {
        let b = Bucketizer::new(vec![
            vec![f64::NEG_INFINITY, 0.0, 1.0, 2.0],
            vec![0.0, 10.0],
        ]);
        b.check().unwrap();
        let out = apply(&b, &[-5.0, 0.0, 0.0, 10.0, 1.0, 5.0, 2.0, 3.0], 2);
        assert_eq!(out, [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0]);
        let err = b
            .apply(&FeatureBatch::new(&[0.5, 11.0], 2).unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("feature 1 = 11 is outside its splits [0, 10] (row 0"),
            "{err}"
        );
        let err = b
            .apply(&FeatureBatch::new(&[f64::NAN, 1.0], 2).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("feature 0 is NaN"), "{err}");
        let keep = b.clone().handle_invalid(InvalidValues::Keep);
        assert_eq!(apply(&keep, &[f64::NAN, f64::NAN], 2), [3.0, 1.0]);
        assert!(Bucketizer::new(vec![vec![1.0, 1.0]]).check().is_err());
        assert!(Bucketizer::new(vec![vec![1.0]]).check().is_err());
    }

    #[test]
    fn quantile_splits_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4, 10], [0.25, 0.5, 0.75]) = [2, 3, 4].
        assert_eq!(
            quantile_splits(&[1.0, 2.0, 3.0, 4.0, 10.0], 4),
            [f64::NEG_INFINITY, 2.0, 3.0, 4.0, f64::INFINITY]
        );
        // numpy.quantile([0, 1, 2, 3], [1/3, 2/3]) = [1, 2]; 0.5 → 1.5.
        assert_eq!(
            quantile_splits(&[0.0, 1.0, 2.0, 3.0], 2),
            [f64::NEG_INFINITY, 1.5, f64::INFINITY]
        );
        // Repeated quantiles merge.
        assert_eq!(
            quantile_splits(&[1.0, 1.0, 1.0, 1.0, 2.0], 4),
            [f64::NEG_INFINITY, 1.0, f64::INFINITY]
        );
    }

    #[test]
    fn polynomial_terms_follow_scikit_learn() {
        let p = PolynomialExpansion::new(3, 2);
        assert_eq!(p.output_dim(), 9);
        assert_eq!(
            p.terms(),
            [
                vec![0],
                vec![1],
                vec![2],
                vec![0, 0],
                vec![0, 1],
                vec![0, 2],
                vec![1, 1],
                vec![1, 2],
                vec![2, 2]
            ]
        );
        // sklearn PolynomialFeatures(2, include_bias=False) of [2, 3, 5].
        assert_eq!(
            apply(&p, &[2.0, 3.0, 5.0], 3),
            [2.0, 3.0, 5.0, 4.0, 6.0, 10.0, 9.0, 15.0, 25.0]
        );
        let cubic = PolynomialExpansion::new(2, 3);
        assert_eq!(cubic.output_dim(), 9);
        // x, y, x², xy, y², x³, x²y, xy², y³ at (2, 3).
        assert_eq!(
            apply(&cubic, &[2.0, 3.0], 2),
            [2.0, 3.0, 4.0, 6.0, 9.0, 8.0, 12.0, 18.0, 27.0]
        );
        let values = apply(&cubic, &[2.0, 3.0], 2);
        for (t, v) in cubic.terms().iter().zip(&values) {
            let expected: f64 = t.iter().map(|j| [2.0, 3.0][*j]).product();
            assert_eq!(*v, expected);
        }
        assert!(PolynomialExpansion::new(1000, 3).check().is_err());
        assert!(PolynomialExpansion::new(3, 0).check().is_err());
    }

    #[test]
    fn interactions_vary_the_first_group_slowest() {
        // Spark's example: 1 × [1, 2, 3] × [8, 4, 5].
        let i = Interaction::new(vec![1, 3, 3]);
        i.check().unwrap();
        assert_eq!(
            apply(&i, &[1.0, 1.0, 2.0, 3.0, 8.0, 4.0, 5.0], 7),
            [8.0, 4.0, 5.0, 16.0, 8.0, 10.0, 24.0, 12.0, 15.0]
        );
        assert!(Interaction::new(vec![3]).check().is_err());
        assert!(Interaction::new(vec![2, 0]).check().is_err());
    }
}
