//! The fitted k-means model: the centres, applied as the nearest-centre map.

use super::*;

/// A fitted [`KMeans`]: the cluster centres.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansModel {
    pub(super) params: KMeans,
    pub(super) dim: usize,
    pub(super) centers: Vec<f64>,
    pub(super) summary: KMeansSummary,
}

impl KMeansModel {
    /// Centres, one row of `dim` values per cluster.
    pub fn centers(&self) -> Vec<&[f64]> {
        self.centers.chunks_exact(self.dim).collect()
    }

    pub fn summary(&self) -> &KMeansSummary {
        &self.summary
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Assign {
    pub(super) dim: usize,
    pub(super) centers: Vec<f64>,
    /// Derived from `centers`.
    #[serde(skip)]
    pub(super) table: CenterTable,
}

impl BatchFunction for Assign {
    fn name(&self) -> &str {
        "kmeans_predict"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a k-means model", self)
    }
    fn input_dim(&self) -> usize {
        self.dim
    }
    fn return_type(&self) -> DataType {
        DataType::Int32
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        // On the device: x·c for every centre (one GEMM); the nearest centre minimises
        // ‖c‖² − 2 x·c (‖x‖² is the same for every centre), the first of equals.
        let k = self.centers.len() / self.dim.max(1);
        if let Some(dots) =
            quiver_engine::device::affine_scores(b.values, self.dim, &self.centers, &vec![0.0; k])?
        {
            // The table keeps ‖c‖² for the CPU kernel (padded past k).
            let norms = &self.table.norms[..k];
            let out: Int32Array = dots
                .chunks_exact(k)
                .map(|row| {
                    let mut best = (0, f64::INFINITY);
                    for (c, (dot, norm)) in row.iter().zip(norms).enumerate() {
                        let dist = norm - 2.0 * dot;
                        if dist < best.1 {
                            best = (c, dist);
                        }
                    }
                    best.0 as i32
                })
                .collect();
            return Ok(Arc::new(out));
        }
        let mut nearest = Vec::with_capacity(b.n_rows);
        self.table.assign(&self.centers, b.values, &mut nearest);
        let out: Int32Array = nearest.into_iter().map(|(c, _)| c as i32).collect();
        Ok(Arc::new(out))
    }
}

impl KMeansModel {
    fn assigner(&self) -> Arc<Assign> {
        Arc::new(Assign {
            dim: self.dim,
            centers: self.centers.clone(),
            table: CenterTable::new(&self.centers, self.dim),
        })
    }
}

impl Transformer for KMeansModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        Ok(map_dataset(
            data.clone(),
            self.assigner(),
            &self.params.prediction_col,
        )?)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Predict {
            prediction: self.assigner(),
            probability: None,
        }
    }

    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        self.centers
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(k, c)| (format!("cluster {k}"), c.to_vec()))
            .collect()
    }
}

impl Model for KMeansModel {
    const KIND: &'static str = "kmeans";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let draft = ModelDraft {
            params: params_json(&(&self.params, self.dim))?,
            metrics: serde_json::json!({ "inertia": self.summary.inertia }),
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let centers = vectors_to_ipc(&[("centers", &self.centers)])?;
        Ok((draft, vec![("centers.arrow".to_string(), centers)]))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, dim): (KMeans, usize) = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: KMeansSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let bytes = parts
            .get("centers.arrow")
            .ok_or_else(|| corrupt("no part 'centers.arrow'".to_string()))?;
        let mut cols = vectors_from_ipc(bytes, &meta.name)?;
        let size = params
            .k
            .checked_mul(dim)
            .filter(|n| params.k > 0 && dim > 0 && *n <= 1 << 32)
            .ok_or_else(|| {
                corrupt(format!(
                    "k = {} and dim = {dim}: both must be at least 1 (and k × dim sensible)",
                    params.k
                ))
            })?;
        let centers = take_vector(&mut cols, "centers", size, &meta.name)?;
        Ok(KMeansModel {
            params,
            dim,
            centers,
            summary,
        })
    }
}

impl quiver_engine::registry::FromParams for Assign {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        let mut v: Self = quiver_engine::registry::from_json_params("a k-means model", bytes)?;
        if v.dim == 0 || v.centers.is_empty() || !v.centers.len().is_multiple_of(v.dim) {
            return Err(quiver_engine::QuiverError::InvalidParam {
                param: "k-means model".to_string(),
                reason: format!(
                    "{} centre values for dimension {}: not whole centres",
                    v.centers.len(),
                    v.dim
                ),
            });
        }
        v.table = CenterTable::new(&v.centers, v.dim);
        Ok(v)
    }
}
