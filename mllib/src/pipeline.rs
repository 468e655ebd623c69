//! `Pipeline` (stages of transformers and estimators, fitted in order) and `PipelineModel`
//! (the fitted stages), which persists as one model in the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use quiver_engine::store::FeatureField;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata, QuiverSession};
use serde::{Deserialize, Serialize};

pub use crate::api::{DynEstimator, DynModel};
use crate::api::{Estimator, Model, RowStage, Transformer};
use crate::catalog::load_stage;
use crate::error::{MllibError, Result};

/// One stage of a [`Pipeline`].
#[derive(Debug, Clone)]
pub enum Stage {
    /// Applied as is (already fitted, or stateless like [`VectorAssembler`]).
    Transformer(Arc<dyn DynModel>),
    /// Fitted on the output of the stages before it, then applied.
    Estimator(Arc<dyn DynEstimator>),
}

/// Stages run in order: each estimator is fitted on the data as transformed by the stages
/// before it. Fitting yields a [`PipelineModel`].
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a transformer stage.
    pub fn transformer(mut self, t: impl Model + 'static) -> Self {
        self.stages.push(Stage::Transformer(Arc::new(t)));
        self
    }

    /// Appends an estimator stage.
    pub fn estimator<E: Estimator + 'static>(mut self, e: E) -> Self
    where
        E::Model: 'static,
    {
        self.stages.push(Stage::Estimator(Arc::new(e)));
        self
    }

    /// Appends an estimator stage held behind a pointer (e.g. one the catalogue built).
    pub fn dyn_estimator(mut self, e: Arc<dyn DynEstimator>) -> Self {
        self.stages.push(Stage::Estimator(e));
        self
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Validates the pipeline's shape.
    pub fn check(&self) -> Result<()> {
        if self.stages.is_empty() {
            return Err(MllibError::InvalidParam {
                param: "stages".to_string(),
                reason: "a pipeline needs at least one stage".to_string(),
            });
        }
        Ok(())
    }
}

impl Estimator for Pipeline {
    type Model = PipelineModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<PipelineModel> {
        self.check()?;
        let mut current = data.clone();
        let mut fitted: Vec<Arc<dyn DynModel>> = Vec::with_capacity(self.stages.len());
        let progress = crate::progress::current();
        for stage in &self.stages {
            let model = match (stage, &progress) {
                (Stage::Transformer(t), _) => Arc::clone(t),
                // A fit reporting its progress (a pruned trial's) reports models that read
                // what this stage reads: the stages fitted so far go in front.
                (Stage::Estimator(e), Some(p)) if !fitted.is_empty() => {
                    let after: Arc<dyn crate::progress::Progress> =
                        Arc::new(crate::progress::AfterStages {
                            stages: fitted.clone(),
                            inner: Arc::clone(p),
                        });
                    crate::progress::with_progress(after, e.fit_dyn(session, &current)).await?
                }
                (Stage::Estimator(e), _) => e.fit_dyn(session, &current).await?,
            };
            current = model.transform(&current)?;
            fitted.push(model);
        }
        Ok(PipelineModel { stages: fitted })
    }
}

/// The fitted stages of a [`Pipeline`], applied in order; persists as one model.
#[derive(Debug, Clone)]
pub struct PipelineModel {
    stages: Vec<Arc<dyn DynModel>>,
}

impl PipelineModel {
    /// A pipeline of stages fitted elsewhere, applied in order.
    pub fn from_stages(stages: Vec<Arc<dyn DynModel>>) -> Self {
        PipelineModel { stages }
    }

    pub fn stages(&self) -> &[Arc<dyn DynModel>] {
        &self.stages
    }
}

impl Transformer for PipelineModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let mut current = data.clone();
        for s in &self.stages {
            current = s.transform(&current)?;
        }
        Ok(current)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Pipeline(self.stages.clone())
    }

    /// The last stage's.
    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        self.stages
            .last()
            .map(|s| s.weight_vectors())
            .unwrap_or_default()
    }

    /// The last stage's.
    fn explainer(&self) -> Option<std::sync::Arc<dyn crate::explain::Explainer>> {
        self.stages.last().and_then(|s| s.explainer())
    }

    /// The last stage's, on what the stages before it make of `data`.
    fn evaluate_classifier(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Option<crate::api::BoxedEvaluation> {
        let (last, before) = self.stages.split_last()?;
        let mut input = data.clone();
        for s in before {
            // An error is the caller's transform's to report.
            input = s.transform(&input).ok()?;
        }
        last.evaluate_classifier(session, &input)
    }
}

/// How one stage is recorded in the pipeline's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageRecord {
    kind: String,
    format_version: u32,
    params: serde_json::Value,
    features: Vec<FeatureField>,
    label: Option<String>,
    #[serde(default)]
    metrics: serde_json::Value,
    #[serde(default)]
    training_summary: serde_json::Value,
    parts: Vec<String>,
}

impl Model for PipelineModel {
    const KIND: &'static str = "pipeline";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let mut records = Vec::with_capacity(self.stages.len());
        let mut all_parts = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let (draft, parts) = stage.dyn_parts()?;
            records.push(StageRecord {
                kind: stage.kind().to_string(),
                format_version: stage.format_version(),
                params: draft.params,
                features: draft.features,
                label: draft.label,
                metrics: draft.metrics,
                training_summary: draft.training_summary,
                parts: parts.iter().map(|(n, _)| n.clone()).collect(),
            });
            all_parts.extend(parts.into_iter().map(|(n, b)| (format!("stage{i}.{n}"), b)));
        }
        let features = records
            .first()
            .map(|r| r.features.clone())
            .unwrap_or_default();
        let params = serde_json::to_value(&records).map_err(|e| MllibError::InvalidParam {
            param: "stages".to_string(),
            reason: e.to_string(),
        })?;
        Ok((
            ModelDraft {
                params: serde_json::json!({ "stages": params }),
                features,
                ..Default::default()
            },
            all_parts,
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let records: Vec<StageRecord> = serde_json::from_value(meta.params["stages"].clone())
            .map_err(|e| corrupt(format!("invalid stage list: {e}")))?;
        let mut stages = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            let mut stage_parts = BTreeMap::new();
            for p in &r.parts {
                let bytes = parts
                    .get(&format!("stage{i}.{p}"))
                    .ok_or_else(|| corrupt(format!("stage {i} lacks its part '{p}'")))?;
                stage_parts.insert(p.clone(), bytes.clone());
            }
            let stage_meta = ModelMetadata {
                name: format!("{} (stage {i})", meta.name),
                version: meta.version,
                kind: r.kind,
                format_version: r.format_version,
                params: r.params,
                features: r.features,
                label: r.label,
                metrics: r.metrics,
                training_summary: r.training_summary,
                created_at: meta.created_at.clone(),
                parts: stage_parts
                    .iter()
                    .map(|(n, b)| (n.clone(), b.len() as u64))
                    .collect(),
                quiver_version: meta.quiver_version.clone(),
                checksums: BTreeMap::new(),
            };
            stages.push(load_stage(&stage_meta, &stage_parts)?);
        }
        Ok(PipelineModel { stages })
    }
}
