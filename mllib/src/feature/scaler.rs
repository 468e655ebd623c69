//! `StandardScaler` and `MinMaxScaler` (Spark MLlib's, same names and defaults): fitted from one
//! feature-summary pass, applied as an affine map `y = (x − shift) · scale + offset` per feature.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::store::FeatureField;
use quiver_engine::vector::{vector_array, vector_type};
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, QuiverSession, Summarizer,
    map_dataset,
};
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, Transformer, check_output_col};
use crate::error::{MllibError, Result};
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

const DEFAULT_OUTPUT: &str = "scaled_features";

/// The per-feature affine map both scalers apply, as a batch function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Affine {
    name: String,
    shift: Vec<f64>,
    scale: Vec<f64>,
    offset: Vec<f64>,
}

impl BatchFunction for Affine {
    fn name(&self) -> &str {
        &self.name
    }

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a scaler", self)
    }

    fn input_dim(&self) -> usize {
        self.shift.len()
    }

    fn return_type(&self) -> DataType {
        vector_type(self.shift.len())
    }

    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let dim = batch.dim;
        let mut out = Vec::with_capacity(batch.values.len());
        for row in batch.values.chunks_exact(dim) {
            for (((x, shift), scale), offset) in row
                .iter()
                .zip(&self.shift)
                .zip(&self.scale)
                .zip(&self.offset)
            {
                out.push((x - shift) * scale + offset);
            }
        }
        Ok(Arc::new(vector_array(out, dim)?))
    }
}

/// Adds `output_col` = affine(features) and makes it the dataset's features.
fn apply_affine(data: &Dataset, f: Affine, output_col: &str) -> Result<Dataset> {
    let out = map_dataset(data.clone(), Arc::new(f), output_col)?;
    Ok(out.with_features([output_col])?)
}

async fn summarize(
    session: &QuiverSession,
    data: &Dataset,
) -> Result<quiver_engine::FeatureSummary> {
    let prepared = session.prepare(data, session.runner()).await?;
    Ok(prepared
        .aggregate(Arc::new(Summarizer::new(prepared.dim())))
        .await?)
}

fn feature_fields(data: &Dataset) -> Result<Vec<FeatureField>> {
    Ok(data
        .feature_names()?
        .into_iter()
        .map(|name| FeatureField {
            name,
            data_type: "Float64".to_string(),
        })
        .collect())
}

/// Standardises features by removing the mean (optional) and scaling to unit sample standard
/// deviation. A feature of zero variance maps to 0 when scaling, like Spark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    with_mean: bool,
    with_std: bool,
    output_col: String,
}

impl Default for StandardScaler {
    fn default() -> Self {
        StandardScaler {
            with_mean: false,
            with_std: true,
            output_col: DEFAULT_OUTPUT.to_string(),
        }
    }
}

impl StandardScaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Centre each feature on its mean. Defaults to `false` (keeps sparse data sparse).
    pub fn with_mean(mut self, yes: bool) -> Self {
        self.with_mean = yes;
        self
    }

    /// Divide each feature by its standard deviation. Defaults to `true`.
    pub fn with_std(mut self, yes: bool) -> Self {
        self.with_std = yes;
        self
    }

    /// Name of the output vector column. Defaults to `"scaled_features"`.
    pub fn output_col(mut self, col: impl Into<String>) -> Self {
        self.output_col = col.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        check_output_col(&self.output_col)
    }
}

impl Estimator for StandardScaler {
    type Model = StandardScalerModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<StandardScalerModel> {
        self.check()?;
        let s = summarize(session, data).await?;
        Ok(StandardScalerModel {
            params: self.clone(),
            mean: s.mean,
            std: s.std,
            features: feature_fields(data)?,
        })
    }
}

/// A fitted [`StandardScaler`]: the means and standard deviations it scales with.
#[derive(Debug, Clone, PartialEq)]
pub struct StandardScalerModel {
    params: StandardScaler,
    mean: Vec<f64>,
    std: Vec<f64>,
    features: Vec<FeatureField>,
}

impl StandardScalerModel {
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn std(&self) -> &[f64] {
        &self.std
    }

    fn affine(&self) -> Affine {
        let dim = self.mean.len();
        Affine {
            name: "standard_scaler".to_string(),
            shift: if self.params.with_mean {
                self.mean.clone()
            } else {
                vec![0.0; dim]
            },
            scale: self
                .std
                .iter()
                .map(|&s| match (self.params.with_std, s > 0.0) {
                    (true, true) => 1.0 / s,
                    (true, false) => 0.0,
                    (false, _) => 1.0,
                })
                .collect(),
            offset: vec![0.0; dim],
        }
    }
}

impl Transformer for StandardScalerModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        apply_affine(data, self.affine(), &self.params.output_col)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Map(Arc::new(self.affine()))
    }
}

impl Model for StandardScalerModel {
    const KIND: &'static str = "standard_scaler";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = draft(&self.params, &self.features)?;
        let stats = vectors_to_ipc(&[("mean", &self.mean), ("std", &self.std)])?;
        Ok((draft, vec![("stats.arrow".to_string(), stats)]))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let (params, mut cols) = read_parts::<StandardScaler>(meta, parts)?;
        let dim = meta.features.len();
        Ok(StandardScalerModel {
            mean: take_vector(&mut cols, "mean", dim, &meta.name)?,
            std: take_vector(&mut cols, "std", dim, &meta.name)?,
            params,
            features: meta.features.clone(),
        })
    }
}

/// Metadata of a scaler: its params as JSON and its input features.
fn draft<P: Serialize>(params: &P, features: &[FeatureField]) -> Result<ModelDraft> {
    Ok(ModelDraft {
        params: params_json(params)?,
        features: features.to_vec(),
        ..Default::default()
    })
}

fn read_parts<P: serde::de::DeserializeOwned>(
    meta: &ModelMetadata,
    parts: &BTreeMap<String, Bytes>,
) -> Result<(P, BTreeMap<String, Vec<f64>>)> {
    let corrupt = |reason: String| MllibError::CorruptModel {
        name: meta.name.clone(),
        reason,
    };
    let params: P = serde_json::from_value(meta.params.clone())
        .map_err(|e| corrupt(format!("invalid params: {e}")))?;
    let stats = parts
        .get("stats.arrow")
        .ok_or_else(|| corrupt("no part 'stats.arrow'".to_string()))?;
    Ok((params, vectors_from_ipc(stats, &meta.name)?))
}

/// Rescales each feature to `[min, max]` (defaults 0 and 1) from the minima and maxima seen at
/// fit time. A constant feature maps to the middle of the range, like Spark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMaxScaler {
    min: f64,
    max: f64,
    output_col: String,
}

impl Default for MinMaxScaler {
    fn default() -> Self {
        MinMaxScaler {
            min: 0.0,
            max: 1.0,
            output_col: DEFAULT_OUTPUT.to_string(),
        }
    }
}

impl MinMaxScaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lower bound of the output range. Defaults to `0.0`.
    pub fn min(mut self, v: f64) -> Self {
        self.min = v;
        self
    }

    /// Upper bound of the output range. Defaults to `1.0`.
    pub fn max(mut self, v: f64) -> Self {
        self.max = v;
        self
    }

    /// Name of the output vector column. Defaults to `"scaled_features"`.
    pub fn output_col(mut self, col: impl Into<String>) -> Self {
        self.output_col = col.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        let ordered = self.min.is_finite() && self.max.is_finite() && self.min < self.max;
        if !ordered {
            return Err(MllibError::MinNotBelowMax {
                min: self.min,
                max: self.max,
            });
        }
        check_output_col(&self.output_col)
    }
}

impl Estimator for MinMaxScaler {
    type Model = MinMaxScalerModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<MinMaxScalerModel> {
        self.check()?;
        let s = summarize(session, data).await?;
        Ok(MinMaxScalerModel {
            params: self.clone(),
            original_min: s.min,
            original_max: s.max,
            features: feature_fields(data)?,
        })
    }
}

/// A fitted [`MinMaxScaler`]: the minima and maxima it rescales from.
#[derive(Debug, Clone, PartialEq)]
pub struct MinMaxScalerModel {
    params: MinMaxScaler,
    original_min: Vec<f64>,
    original_max: Vec<f64>,
    features: Vec<FeatureField>,
}

impl MinMaxScalerModel {
    pub fn original_min(&self) -> &[f64] {
        &self.original_min
    }

    pub fn original_max(&self) -> &[f64] {
        &self.original_max
    }

    fn affine(&self) -> Affine {
        let (lo, hi) = (self.params.min, self.params.max);
        let mut scale = Vec::with_capacity(self.original_min.len());
        let mut offset = Vec::with_capacity(self.original_min.len());
        for (&a, &b) in self.original_min.iter().zip(&self.original_max) {
            if b > a {
                scale.push((hi - lo) / (b - a));
                offset.push(lo);
            } else {
                scale.push(0.0);
                offset.push(0.5 * (lo + hi));
            }
        }
        Affine {
            name: "min_max_scaler".to_string(),
            shift: self.original_min.clone(),
            scale,
            offset,
        }
    }
}

impl Transformer for MinMaxScalerModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        apply_affine(data, self.affine(), &self.params.output_col)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Map(Arc::new(self.affine()))
    }
}

impl Model for MinMaxScalerModel {
    const KIND: &'static str = "min_max_scaler";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = draft(&self.params, &self.features)?;
        let stats = vectors_to_ipc(&[
            ("original_min", &self.original_min),
            ("original_max", &self.original_max),
        ])?;
        Ok((draft, vec![("stats.arrow".to_string(), stats)]))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let (params, mut cols) = read_parts::<MinMaxScaler>(meta, parts)?;
        let dim = meta.features.len();
        Ok(MinMaxScalerModel {
            original_min: take_vector(&mut cols, "original_min", dim, &meta.name)?,
            original_max: take_vector(&mut cols, "original_max", dim, &meta.name)?,
            params,
            features: meta.features.clone(),
        })
    }
}

quiver_engine::impl_json_params!(
    Affine => "a scaler",
);

/// Lets the scalers' maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_batch_function::<Affine>("standard_scaler")?;
    r.add_batch_function::<Affine>("min_max_scaler")
}
