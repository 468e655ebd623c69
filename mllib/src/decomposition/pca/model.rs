//! The fitted PCA: the feature means and the components, applied as a map function (the
//! centred projection), stored as Arrow vectors.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::vector::dot;
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, map_dataset};
use serde::{Deserialize, Serialize};

use super::params::PCA;
use crate::api::{Model, RowStage, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::{claimed_len, params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// What a fit reports (also what `ml_principal_component_info` lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaSummary {
    /// Components kept.
    pub k: usize,
    /// The variance along each kept component (eigenvalues of the sample covariance).
    pub eigenvalues: Vec<f64>,
    /// Each eigenvalue over the total variance.
    pub explained_variance_ratio: Vec<f64>,
    /// The trace of the sample covariance.
    pub total_variance: f64,
    pub rows: u64,
    pub wall_time_ms: f64,
}

/// The projection, as the map function carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Projection {
    dim: usize,
    mean: Vec<f64>,
    /// k × dim, row-major: one unit vector per component.
    components: Vec<f64>,
}

impl BatchFunction for Projection {
    fn name(&self) -> &str {
        "pca_project"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a PCA model", self)
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn return_type(&self) -> DataType {
        quiver_engine::vector::vector_type(self.components.len() / self.dim)
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let k = self.components.len() / self.dim;
        let mut centred = vec![0.0; self.dim];
        let mut out = Vec::with_capacity(b.n_rows * k);
        for x in b.values.chunks_exact(self.dim) {
            for ((c, x), m) in centred.iter_mut().zip(x).zip(&self.mean) {
                *c = x - m;
            }
            out.extend(
                self.components
                    .chunks_exact(self.dim)
                    .map(|v| dot(v, &centred)),
            );
        }
        Ok(Arc::new(quiver_engine::vector::vector_array(out, k)?))
    }
}

quiver_engine::impl_json_params!(Projection => "a PCA model");

/// A fitted [`PCA`].
#[derive(Debug, Clone, PartialEq)]
pub struct PCAModel {
    params: PCA,
    projection: Projection,
    summary: PcaSummary,
}

impl PCAModel {
    pub(super) fn new(
        params: PCA,
        dim: usize,
        mean: Vec<f64>,
        components: Vec<f64>,
        summary: PcaSummary,
    ) -> Self {
        PCAModel {
            params,
            projection: Projection {
                dim,
                mean,
                components,
            },
            summary,
        }
    }

    /// The principal components, largest variance first (unit vectors).
    pub fn components(&self) -> Vec<&[f64]> {
        self.projection
            .components
            .chunks_exact(self.projection.dim)
            .collect()
    }

    /// The feature means the projection subtracts.
    pub fn mean(&self) -> &[f64] {
        &self.projection.mean
    }

    pub fn summary(&self) -> &PcaSummary {
        &self.summary
    }
}

impl Transformer for PCAModel {
    /// Adds the projection onto the components (a vector of k values) as `output_col`.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        Ok(map_dataset(
            data.clone(),
            Arc::new(self.projection.clone()),
            &self.params.output_col,
        )?)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Predict {
            prediction: Arc::new(self.projection.clone()),
            probability: None,
        }
    }

    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        self.components()
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("principal component {}", i + 1), v.to_vec()))
            .collect()
    }
}

impl Model for PCAModel {
    const KIND: &'static str = "pca";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let p = &self.projection;
        let draft = ModelDraft {
            params: params_json(&(&self.params, p.dim))?,
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        Ok((
            draft,
            vec![
                (
                    "mean.arrow".to_string(),
                    vectors_to_ipc(&[("mean", &p.mean)])?,
                ),
                (
                    "components.arrow".to_string(),
                    vectors_to_ipc(&[("components", &p.components)])?,
                ),
            ],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, dim): (PCA, usize) = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: PcaSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        if dim == 0 || summary.k == 0 || summary.k > dim {
            return Err(corrupt(format!(
                "{} components of {dim} features",
                summary.k
            )));
        }
        let part = |n: &str| {
            parts
                .get(n)
                .ok_or_else(|| corrupt(format!("no part '{n}'")))
        };
        let mean = take_vector(
            &mut vectors_from_ipc(part("mean.arrow")?, &meta.name)?,
            "mean",
            dim,
            &meta.name,
        )?;
        let components = take_vector(
            &mut vectors_from_ipc(part("components.arrow")?, &meta.name)?,
            "components",
            claimed_len(summary.k, dim, "the components", &meta.name)?,
            &meta.name,
        )?;
        Ok(PCAModel::new(params, dim, mean, components, summary))
    }
}

/// Lets the projection run on a cluster.
pub(super) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_batch_function::<Projection>("pca_project")
}
