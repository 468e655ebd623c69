//! Fitted models applied row by row inside one SQL function call (`ml_predict`): the stages of
//! a pipeline that act on the feature vector are composed into one [`BatchFunction`], so a
//! batch goes through every stage without planning a query per batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use quiver_engine::vector::vector_values;
use quiver_engine::{BatchFunction, FeatureBatch, ModelMetadata, ModelStore, QuiverError};

use crate::api::DynModel;
pub use crate::api::{ColumnEncoder, ColumnMap, RowStage};
use crate::catalog::load_stage;
use crate::error::{MllibError, Result};
use crate::explain::Explainer;

/// A fitted model as functions of its input rows.
#[derive(Debug, Clone)]
pub struct RowPredictor {
    /// The input columns in order, when the model assembles them itself; otherwise the model
    /// takes its feature vector (or that many numeric columns) directly.
    pub inputs: Option<Vec<String>>,
    pub prediction: Arc<dyn BatchFunction>,
    pub probability: Option<Arc<dyn BatchFunction>>,
    /// The first stage when it encodes typed columns (automatic preprocessing): the
    /// arguments go through it, not through the assembler.
    pub encoder: Option<Arc<dyn ColumnEncoder>>,
    /// The vector maps between the inputs and the predictor (scalers), in order.
    pub maps: Vec<Arc<dyn BatchFunction>>,
    /// The predictor's attributions (`ml_explain_predict`), where it has them.
    pub explainer: Option<Arc<dyn Explainer>>,
}

impl RowPredictor {
    /// Composes the stages of a fitted model (a pipeline's stages in order, or one model).
    pub fn from_stages(name: &str, stages: &[Arc<dyn DynModel>]) -> Result<Self> {
        fn flatten(stages: &[Arc<dyn DynModel>], out: &mut Vec<Arc<dyn DynModel>>) {
            for s in stages {
                match s.row_stage() {
                    RowStage::Pipeline(inner) => flatten(&inner, out),
                    _ => out.push(Arc::clone(s)),
                }
            }
        }
        let mut flat = Vec::new();
        flatten(stages, &mut flat);
        let stages = flat.as_slice();
        let mut inputs = None;
        let mut encoder: Option<Arc<dyn ColumnEncoder>> = None;
        let mut maps: Vec<Arc<dyn BatchFunction>> = Vec::new();
        // A TRANSFORM clause: its columns feed the encoding stage right after it.
        let mut columns: Option<Arc<dyn ColumnMap>> = None;
        let unsupported = |kind: &str, why: &str| MllibError::InvalidParam {
            param: "model".to_string(),
            reason: format!("model '{name}' cannot be applied row by row: its {kind} stage {why}"),
        };
        for (i, stage) in stages.iter().enumerate() {
            let last = i + 1 == stages.len();
            match stage.row_stage() {
                RowStage::Columns(m) if i == 0 => columns = Some(m),
                RowStage::Columns(_) => {
                    return Err(unsupported(
                        stage.kind(),
                        "computes columns after the first stage",
                    ));
                }
                _ if columns.is_some()
                    && i == 1
                    && !matches!(stage.row_stage(), RowStage::Encode(_)) =>
                {
                    return Err(unsupported(
                        stage.kind(),
                        "follows a TRANSFORM stage but does not encode its columns",
                    ));
                }
                RowStage::Assemble(cols) if i == 0 => inputs = Some(cols),
                RowStage::Encode(e) if i == 0 || (i == 1 && columns.is_some()) => {
                    let e = match columns.take() {
                        Some(m) => Arc::new(
                            MappedEncoder::new(m, e)
                                .map_err(|why| unsupported(stage.kind(), &why))?,
                        ) as Arc<dyn ColumnEncoder>,
                        None => e,
                    };
                    inputs = Some(e.inputs().to_vec());
                    encoder = Some(e);
                }
                RowStage::Encode(_) => {
                    return Err(unsupported(
                        stage.kind(),
                        "encodes columns after the first stage",
                    ));
                }
                RowStage::Assemble(_) => {
                    return Err(unsupported(
                        stage.kind(),
                        "assembles columns after the first stage",
                    ));
                }
                RowStage::Map(f) if !last => maps.push(f),
                RowStage::Map(_) => return Err(unsupported(stage.kind(), "is not a predictor")),
                RowStage::Predict {
                    prediction,
                    probability,
                } if last => {
                    let compose = |f: Arc<dyn BatchFunction>| -> Arc<dyn BatchFunction> {
                        if maps.is_empty() {
                            f
                        } else {
                            Arc::new(Composed::new(maps.clone(), f))
                        }
                    };
                    let mut prediction = compose(prediction);
                    if let Some((classes, data_type)) = encoder.as_ref().and_then(|e| e.classes()) {
                        prediction = Arc::new(ClassLabels {
                            name: format!("{}+class_labels", prediction.name()),
                            classes: classes.to_vec(),
                            data_type,
                            index: prediction,
                        });
                    }
                    return Ok(RowPredictor {
                        inputs,
                        prediction,
                        probability: probability.map(compose),
                        encoder,
                        explainer: stage.explainer(),
                        maps,
                    });
                }
                RowStage::Predict { .. } => {
                    return Err(unsupported(stage.kind(), "predicts before the last stage"));
                }
                RowStage::Pipeline(_) | RowStage::Unsupported => {
                    return Err(unsupported(
                        stage.kind(),
                        "works on columns, not on the feature vector",
                    ));
                }
            }
        }
        Err(MllibError::InvalidParam {
            param: "model".to_string(),
            reason: format!("model '{name}' has no predictor stage"),
        })
    }
}

/// The encoding stage over the columns a TRANSFORM stage computes: takes the TRANSFORM's
/// inputs, encodes its outputs.
#[derive(Debug)]
struct MappedEncoder {
    map: Arc<dyn ColumnMap>,
    encoder: Arc<dyn ColumnEncoder>,
    /// For each encoder input, its index among the map's outputs.
    order: Vec<usize>,
}

impl MappedEncoder {
    fn new(
        map: Arc<dyn ColumnMap>,
        encoder: Arc<dyn ColumnEncoder>,
    ) -> std::result::Result<Self, String> {
        let order = encoder
            .inputs()
            .iter()
            .map(|c| {
                map.outputs().iter().position(|o| o == c).ok_or_else(|| {
                    format!(
                        "reads column '{c}', which the TRANSFORM stage does not write ({})",
                        map.outputs().join(", ")
                    )
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(MappedEncoder {
            map,
            encoder,
            order,
        })
    }
}

impl ColumnEncoder for MappedEncoder {
    fn inputs(&self) -> &[String] {
        self.map.inputs()
    }
    fn dim(&self) -> usize {
        self.encoder.dim()
    }
    fn feature_names(&self) -> &[String] {
        self.encoder.feature_names()
    }
    fn check_input(&self, i: usize, t: &DataType) -> std::result::Result<(), String> {
        self.map.check_input(i, t)
    }
    fn encode(&self, arrays: &[ArrayRef], rows: usize) -> quiver_engine::Result<Vec<f64>> {
        let out = self.map.apply(arrays, rows)?;
        let columns: Vec<ArrayRef> = self.order.iter().map(|&k| Arc::clone(&out[k])).collect();
        self.encoder.encode(&columns, rows)
    }
    fn classes(&self) -> Option<(&[String], DataType)> {
        self.encoder.classes()
    }
}

impl RowPredictor {
    /// The predictor's input vectors for a batch of encoded or assembled rows (`values`,
    /// row-major, `dim` wide): the rows through the vector maps between (scalers), or the rows
    /// themselves when there are none.
    pub fn predictor_inputs<'a>(
        &self,
        values: &'a [f64],
        dim: usize,
    ) -> quiver_engine::Result<(std::borrow::Cow<'a, [f64]>, usize)> {
        let (mut values, mut dim) = (std::borrow::Cow::Borrowed(values), dim);
        for f in &self.maps {
            let out = f.apply(&FeatureBatch::new(&values, dim)?)?;
            let (v, d) = vector_values(out.as_ref(), f.name())?;
            values = std::borrow::Cow::Owned(v.to_vec());
            dim = d;
        }
        Ok((values, dim))
    }
}

/// Loads any stored model (a pipeline or a single model) by its recorded kind.
pub async fn load_dyn(
    store: &ModelStore,
    name: &str,
    version: Option<u64>,
) -> Result<(ModelMetadata, Arc<dyn DynModel>)> {
    let stored = store.load(name, version).await?;
    let meta = stored.metadata.clone();
    let mut parts = BTreeMap::new();
    for (part, _) in &meta.parts {
        parts.insert(part.clone(), stored.part(part).await?);
    }
    let model = load_stage(&meta, &parts)?;
    Ok((meta, model))
}

/// Vector maps followed by a final function, as one batch function.
#[derive(Debug)]
struct Composed {
    name: String,
    maps: Vec<Arc<dyn BatchFunction>>,
    last: Arc<dyn BatchFunction>,
}

impl Composed {
    fn new(maps: Vec<Arc<dyn BatchFunction>>, last: Arc<dyn BatchFunction>) -> Self {
        let name = maps
            .iter()
            .map(|m| m.name())
            .chain([last.name()])
            .collect::<Vec<_>>()
            .join("+");
        Composed { name, maps, last }
    }
}

impl BatchFunction for Composed {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        let mut out = Vec::new();
        for f in self.maps.iter().chain([&self.last]) {
            let p = f.params()?;
            out.extend_from_slice(&(p.len() as u64).to_le_bytes());
            out.extend_from_slice(&p);
        }
        Ok(out)
    }
    fn input_dim(&self) -> usize {
        self.maps.first().unwrap_or(&self.last).input_dim()
    }
    fn return_type(&self) -> DataType {
        self.last.return_type()
    }
    /// Missing values reach the first function only: it decides.
    fn accepts_missing(&self) -> bool {
        self.maps.first().unwrap_or(&self.last).accepts_missing()
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let mut current: Option<ArrayRef> = None;
        for f in &self.maps {
            let next = match &current {
                None => f.apply(batch)?,
                Some(a) => {
                    let (values, dim) = vector_values(a.as_ref(), f.name())?;
                    f.apply(&FeatureBatch::new(values, dim)?)?
                }
            };
            current = Some(next);
        }
        match &current {
            None => self.last.apply(batch),
            Some(a) => {
                let (values, dim) = vector_values(a.as_ref(), self.name())?;
                if dim != self.last.input_dim() {
                    return Err(QuiverError::FeatureCountMismatch {
                        function: self.last.name().to_string(),
                        expected: self.last.input_dim(),
                        found: dim,
                    });
                }
                self.last.apply(&FeatureBatch::new(values, dim)?)
            }
        }
    }
}

/// A classifier's predicted class index as the class label it stands for (string or boolean
/// labels that automatic preprocessing indexed).
#[derive(Debug)]
struct ClassLabels {
    name: String,
    classes: Vec<String>,
    data_type: DataType,
    index: Arc<dyn BatchFunction>,
}

impl BatchFunction for ClassLabels {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        let mut out = self.index.params()?;
        for c in &self.classes {
            out.extend_from_slice(&(c.len() as u64).to_le_bytes());
            out.extend_from_slice(c.as_bytes());
        }
        Ok(out)
    }
    fn input_dim(&self) -> usize {
        self.index.input_dim()
    }
    fn return_type(&self) -> DataType {
        self.data_type.clone()
    }
    fn accepts_missing(&self) -> bool {
        self.index.accepts_missing()
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let index = self.index.apply(batch)?;
        let index = arrow::compute::cast(&index, &DataType::Float64)?;
        let index = index.as_primitive::<arrow::datatypes::Float64Type>();
        let label = |i: usize| -> quiver_engine::Result<Option<&str>> {
            if index.is_null(i) {
                return Ok(None);
            }
            let k = index.value(i);
            self.classes
                .get(k as usize)
                .filter(|_| k >= 0.0 && k.fract() == 0.0)
                .map(|c| Some(c.as_str()))
                .ok_or_else(|| {
                    QuiverError::internal(format!(
                        "{} predicted class {k}, but the model knows {} classes",
                        self.index.name(),
                        self.classes.len()
                    ))
                })
        };
        let n = index.len();
        if self.data_type == DataType::Boolean {
            let out: arrow::array::BooleanArray = (0..n)
                .map(|i| label(i).map(|l| l.map(|l| l == "true")))
                .collect::<quiver_engine::Result<_>>()?;
            return Ok(Arc::new(out));
        }
        let out: arrow::array::StringArray =
            (0..n).map(label).collect::<quiver_engine::Result<_>>()?;
        Ok(Arc::new(out))
    }
}
