//! The MLlib API: an [`Estimator`] fits a [`Model`]; a model is a [`Transformer`] that adds its
//! output column lazily; models save to and load from the model store ([`save`], [`load`]).
//! [`DynEstimator`] and [`DynModel`] are the same behind a pointer (what pipelines and the
//! catalogue hold); [`RowStage`] says what a fitted stage does to one row.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use quiver_engine::{BatchFunction, Dataset, ModelDraft, ModelMetadata, ModelStore, QuiverSession};

use crate::error::{MllibError, Result};

/// Adds output columns to a dataset, lazily (a projection; nothing runs until the data is read).
pub trait Transformer: Send + Sync + Debug {
    fn transform(&self, data: &Dataset) -> Result<Dataset>;

    /// What this stage does to one row's feature vector, for applying a fitted model inside a
    /// single SQL function call (`ml_predict`). Column-wise stages keep the default.
    fn row_stage(&self) -> RowStage {
        RowStage::Unsupported
    }

    /// The fitted weight vectors, labelled (`"class 1"`, `"cluster 3"`, `"coefficients"`):
    /// coefficients followed by the intercept for linear models, the centre for k-means. Empty
    /// for stages without weights.
    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        Vec::new()
    }

    /// Per-row attributions of a predictor's output to its input features
    /// (`ml_explain_predict`), for the models that have them.
    fn explainer(&self) -> Option<Arc<dyn crate::explain::Explainer>> {
        None
    }

    /// For a classifier: its evaluator metrics on `data` (the features this model reads, and
    /// a label), each row scored and counted in one pass — the metrics
    /// [`crate::catalog::Task::evaluate`] takes from this model's output columns, without
    /// adding them (no column of predictions and probabilities made, assembled and read
    /// again). `None` when this model cannot (not a classifier, or features it would assemble
    /// itself): the caller evaluates [`Transformer::transform`]'s rows.
    fn evaluate_classifier(
        &self,
        _session: &QuiverSession,
        _data: &Dataset,
    ) -> Option<BoxedEvaluation> {
        None
    }
}

/// A classifier's metrics, being computed ([`Transformer::evaluate_classifier`]).
pub type BoxedEvaluation = Pin<
    Box<
        dyn Future<
                Output = Result<(
                    crate::evaluation::MulticlassMetrics,
                    Option<crate::evaluation::BinaryMetrics>,
                )>,
            > + Send,
    >,
>;

/// Learns a model from a dataset. Parameters are validated by the estimator's `check()` before
/// any data is read; statistics run on the session's runner (`quiver.runner`).
pub trait Estimator: Send + Sync + Debug {
    type Model: Model;
    fn fit(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> impl Future<Output = Result<Self::Model>> + Send;
}

/// A fitted transformer that persists in the model store.
pub trait Model: Transformer + Sized {
    /// Kind name in the model store, e.g. `"standard_scaler"`.
    const KIND: &'static str;
    /// Version of this kind's payload format; loading refuses newer ones.
    const FORMAT_VERSION: u32;

    /// Metadata (params, features, metrics) and payload parts.
    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)>;

    /// Rebuilds the model from what [`Model::to_parts`] wrote.
    fn from_parts(metadata: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self>;
}

/// A first stage that turns typed input columns (numbers, booleans, strings, dates, with
/// nulls) into the feature vector, batch by batch: what `ml_predict` on raw columns runs
/// before the model.
pub trait ColumnEncoder: Send + Sync + Debug {
    /// The input columns, in argument order.
    fn inputs(&self) -> &[String];
    /// Width of the feature vector it writes.
    fn dim(&self) -> usize;
    /// Names of the feature vector's values (`color_red`, `age`), what weights are named by.
    fn feature_names(&self) -> &[String];
    /// Whether argument `i` may have type `t`; the error says what the column needs.
    fn check_input(
        &self,
        i: usize,
        t: &arrow::datatypes::DataType,
    ) -> std::result::Result<(), String>;
    /// The row-major feature values of a batch of `rows` rows.
    fn encode(
        &self,
        arrays: &[arrow::array::ArrayRef],
        rows: usize,
    ) -> quiver_engine::Result<Vec<f64>>;
    /// The class labels a classifier's prediction index stands for, and their type (string or
    /// boolean labels): `ml_predict` returns them instead of the index.
    fn classes(&self) -> Option<(&[String], arrow::datatypes::DataType)> {
        None
    }
}

/// A first stage that computes typed columns from the input columns (a fitted `TRANSFORM`
/// clause), batch by batch, for the encoding stage after it.
pub trait ColumnMap: Send + Sync + Debug {
    /// The input columns, in argument order.
    fn inputs(&self) -> &[String];
    /// The columns it writes, in order.
    fn outputs(&self) -> &[String];
    /// Whether argument `i` may have type `t`; the error says what the column needs.
    fn check_input(
        &self,
        i: usize,
        t: &arrow::datatypes::DataType,
    ) -> std::result::Result<(), String>;
    /// The output columns of a batch of `rows` rows of the input columns.
    fn apply(
        &self,
        arrays: &[arrow::array::ArrayRef],
        rows: usize,
    ) -> quiver_engine::Result<Vec<arrow::array::ArrayRef>>;
}

/// What one fitted stage does to a row, for row-wise application (`ml_predict`).
#[derive(Debug, Clone)]
pub enum RowStage {
    /// Computes the columns the next (encoding) stage reads from the input columns.
    Columns(Arc<dyn ColumnMap>),
    /// Encodes typed input columns into the feature vector (automatic preprocessing).
    Encode(Arc<dyn ColumnEncoder>),
    /// Builds the feature vector from these input columns (a `VectorAssembler`).
    Assemble(Vec<String>),
    /// Maps the feature vector to another vector (a scaler).
    Map(Arc<dyn BatchFunction>),
    /// The final predictor: a prediction per row, and class probabilities where it has them.
    Predict {
        prediction: Arc<dyn BatchFunction>,
        probability: Option<Arc<dyn BatchFunction>>,
    },
    /// A nested pipeline: its stages, in order.
    Pipeline(Vec<Arc<dyn DynModel>>),
    /// Works on columns rather than on the feature vector (e.g. a `StringIndexer`).
    Unsupported,
}

/// A fitted model behind a pointer: what a pipeline holds.
pub trait DynModel: Transformer {
    fn kind(&self) -> &'static str;
    fn format_version(&self) -> u32;
    fn dyn_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)>;
}

impl<M: Model> DynModel for M {
    fn kind(&self) -> &'static str {
        M::KIND
    }

    fn format_version(&self) -> u32 {
        M::FORMAT_VERSION
    }

    fn dyn_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        self.to_parts()
    }
}

/// A boxed fit, as [`DynEstimator::fit_dyn`] returns it.
pub type BoxedFit<'a> = Pin<Box<dyn Future<Output = Result<Arc<dyn DynModel>>> + Send + 'a>>;

/// An estimator behind a pointer: what a pipeline and the catalogue hold.
pub trait DynEstimator: Send + Sync + Debug {
    fn fit_dyn<'a>(&'a self, session: &'a QuiverSession, data: &'a Dataset) -> BoxedFit<'a>;
}

impl<E: Estimator> DynEstimator for E
where
    E::Model: 'static,
{
    fn fit_dyn<'a>(&'a self, session: &'a QuiverSession, data: &'a Dataset) -> BoxedFit<'a> {
        Box::pin(async move { Ok(Arc::new(self.fit(session, data).await?) as Arc<dyn DynModel>) })
    }
}

/// Saves `model` as a new version of `name`; returns its metadata.
pub async fn save<M: Model>(store: &ModelStore, name: &str, model: &M) -> Result<ModelMetadata> {
    let (mut draft, parts) = model.to_parts()?;
    draft.kind = M::KIND.to_string();
    draft.format_version = M::FORMAT_VERSION;
    Ok(store.save(name, draft, parts.into_iter().map(Ok)).await?)
}

/// Loads version `version` (latest when `None`) of `name` as an `M`, refusing another kind or a
/// newer format.
pub async fn load<M: Model>(store: &ModelStore, name: &str, version: Option<u64>) -> Result<M> {
    let stored = store.load(name, version).await?;
    let meta = &stored.metadata;
    if meta.kind != M::KIND {
        return Err(MllibError::WrongModelKind {
            name: name.to_string(),
            expected: M::KIND.to_string(),
            found: meta.kind.clone(),
        });
    }
    if meta.format_version > M::FORMAT_VERSION {
        return Err(MllibError::UnsupportedFormatVersion {
            name: name.to_string(),
            kind: meta.kind.clone(),
            found: meta.format_version,
            supported: M::FORMAT_VERSION,
        });
    }
    let mut parts = BTreeMap::new();
    for (part, _) in &meta.parts {
        parts.insert(part.clone(), stored.part(part).await?);
    }
    M::from_parts(meta, &parts)
}

/// The regularisation rules shared by the linear models: `reg_param` ≥ 0 and finite,
/// `elastic_net_param` in [0, 1].
pub(crate) fn check_regularization(reg_param: f64, elastic_net_param: f64) -> Result<()> {
    if !(reg_param >= 0.0 && reg_param.is_finite()) {
        return Err(MllibError::NegativeRegParam(reg_param));
    }
    if !(0.0..=1.0).contains(&elastic_net_param) {
        return Err(MllibError::ElasticNetOutOfRange(elastic_net_param));
    }
    Ok(())
}

/// The rule every output-column parameter follows: it needs a name.
pub(crate) fn check_output_col(col: &str) -> Result<()> {
    if col.trim().is_empty() {
        return Err(MllibError::EmptyOutputColumn);
    }
    Ok(())
}

/// Class indices are below this: one value must not make a model with millions of classes.
pub const MAX_CLASS_INDEX: usize = 10_000;

/// A label or cluster value as an index 0, 1, 2, … (the rule every class-indexed statistic
/// follows), or an error naming the column, the value and its row in the batch.
pub(crate) fn class_index(
    v: f64,
    column: &str,
    row_in_batch: usize,
) -> quiver_engine::Result<usize> {
    if v >= 0.0 && v.fract() == 0.0 && v < MAX_CLASS_INDEX as f64 {
        Ok(v as usize)
    } else {
        Err(quiver_engine::QuiverError::InvalidParam {
            param: column.to_string(),
            reason: format!(
                "value {v} (row {row_in_batch} of a batch) is not a class index 0, 1, 2, … below {MAX_CLASS_INDEX} (a regression target?); index string labels with StringIndexer"
            ),
        })
    }
}
