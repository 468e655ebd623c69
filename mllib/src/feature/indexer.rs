//! `StringIndexer` (Spark's name and defaults): a column of labels (strings, or any type, cast
//! to strings) to label indices `0.0, 1.0, …`, most frequent first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use datafusion::error::Result as DFResult;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{cast, col, lit};
use quiver_engine::aggregate::quoted_name;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata, QuiverError, QuiverSession};
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::params_json;

/// What to do with a label not seen at fit time (and with nulls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HandleInvalid {
    /// Fail, naming the column and the value. The default.
    #[default]
    Error,
    /// Drop the row.
    Skip,
    /// Give it one extra index, the number of labels.
    Keep,
}

/// Order of the label indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StringOrderType {
    /// Most frequent first, ties alphabetically (Spark's `frequencyDesc`). The default.
    #[default]
    FrequencyDesc,
    /// Least frequent first, ties alphabetically.
    FrequencyAsc,
    AlphabetAsc,
    AlphabetDesc,
}

/// Maps a label column to indices, fitted from the label counts (one GROUP BY query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringIndexer {
    input_col: String,
    output_col: String,
    handle_invalid: HandleInvalid,
    string_order_type: StringOrderType,
}

impl StringIndexer {
    /// Indexes `input_col` into `"<input_col>_index"`.
    pub fn new(input_col: impl Into<String>) -> Self {
        let input_col = input_col.into();
        StringIndexer {
            output_col: format!("{input_col}_index"),
            input_col,
            handle_invalid: HandleInvalid::Error,
            string_order_type: StringOrderType::FrequencyDesc,
        }
    }

    /// Name of the Float64 output column. Defaults to `"<input_col>_index"`.
    pub fn output_col(mut self, col: impl Into<String>) -> Self {
        self.output_col = col.into();
        self
    }

    /// Unseen labels and nulls: error, skip or keep. Defaults to `Error`.
    pub fn handle_invalid(mut self, h: HandleInvalid) -> Self {
        self.handle_invalid = h;
        self
    }

    /// Defaults to `FrequencyDesc`.
    pub fn string_order_type(mut self, o: StringOrderType) -> Self {
        self.string_order_type = o;
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        if self.input_col.trim().is_empty() {
            return Err(MllibError::InvalidParam {
                param: "input_col".to_string(),
                reason: "the input column needs a name".to_string(),
            });
        }
        if self.output_col.trim().is_empty() {
            return Err(MllibError::EmptyOutputColumn);
        }
        Ok(())
    }
}

impl Estimator for StringIndexer {
    type Model = StringIndexerModel;

    async fn fit(&self, _session: &QuiverSession, data: &Dataset) -> Result<StringIndexerModel> {
        self.check()?;
        if !data.columns().contains(&self.input_col) {
            return Err(QuiverError::ColumnNotFound {
                column: self.input_col.clone(),
                available: data.columns().join(", "),
            }
            .into());
        }
        let label = cast(col(quoted_name(&self.input_col)), DataType::Utf8).alias("label");
        let counts = data
            .dataframe()
            .clone()
            .aggregate(vec![label], vec![count(lit(1)).alias("n")])
            .map_err(QuiverError::from)?
            .collect()
            .await
            .map_err(QuiverError::from)?;
        let mut labels: Vec<(String, i64)> = Vec::new();
        let mut nulls = 0i64;
        for b in &counts {
            let values = b.column(0).as_string::<i32>();
            let n = arrow::compute::cast(b.column(1), &DataType::Int64)?;
            let n = n.as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                if values.is_null(i) {
                    nulls += n.value(i);
                } else {
                    labels.push((values.value(i).to_string(), n.value(i)));
                }
            }
        }
        if nulls > 0 && self.handle_invalid == HandleInvalid::Error {
            return Err(MllibError::InvalidParam {
                param: "handle_invalid".to_string(),
                reason: format!(
                    "column '{}' has {nulls} null values; use handle_invalid = skip or keep",
                    self.input_col
                ),
            });
        }
        match self.string_order_type {
            StringOrderType::FrequencyDesc => {
                labels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)))
            }
            StringOrderType::FrequencyAsc => {
                labels.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)))
            }
            StringOrderType::AlphabetAsc => labels.sort_by(|a, b| a.0.cmp(&b.0)),
            StringOrderType::AlphabetDesc => labels.sort_by(|a, b| b.0.cmp(&a.0)),
        }
        Ok(StringIndexerModel {
            params: self.clone(),
            labels: labels.into_iter().map(|(l, _)| l).collect(),
        })
    }
}

/// A fitted [`StringIndexer`]: its labels in index order.
#[derive(Debug, Clone, PartialEq)]
pub struct StringIndexerModel {
    params: StringIndexer,
    labels: Vec<String>,
}

impl StringIndexerModel {
    /// Labels in index order (`labels()[i]` has index `i`).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

/// The lookup as a scalar function: string → index (NULL for a row to skip).
#[derive(Debug)]
struct IndexUdf {
    name: String,
    column: String,
    labels: Arc<Vec<String>>,
    index: Arc<HashMap<String, usize>>,
    handle_invalid: HandleInvalid,
    signature: Signature,
}

impl PartialEq for IndexUdf {
    fn eq(&self, o: &Self) -> bool {
        self.column == o.column
            && self.labels == o.labels
            && self.handle_invalid == o.handle_invalid
    }
}

impl Eq for IndexUdf {}

impl Hash for IndexUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.column.hash(state);
        self.labels.hash(state);
        self.handle_invalid.hash(state);
    }
}

impl IndexUdf {
    fn new(column: String, labels: Vec<String>, handle_invalid: HandleInvalid) -> Self {
        IndexUdf {
            name: "string_indexer".to_string(),
            index: Arc::new(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i))
                    .collect(),
            ),
            labels: Arc::new(labels),
            column,
            handle_invalid,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    fn lookup(&self, values: &ArrayRef) -> std::result::Result<ArrayRef, QuiverError> {
        let strings = arrow::compute::cast(values, &DataType::Utf8)?;
        let strings = strings.as_string::<i32>();
        let extra = self.labels.len() as f64;
        let mut out = Vec::with_capacity(strings.len());
        for i in 0..strings.len() {
            let found = if strings.is_null(i) {
                None
            } else {
                self.index.get(strings.value(i)).map(|&k| k as f64)
            };
            out.push(match (found, self.handle_invalid) {
                (Some(k), _) => Some(k),
                (None, HandleInvalid::Keep) => Some(extra),
                (None, HandleInvalid::Skip) => None,
                (None, HandleInvalid::Error) => {
                    let what = if strings.is_null(i) {
                        "a null".to_string()
                    } else {
                        format!("unseen label '{}'", strings.value(i))
                    };
                    return Err(QuiverError::InvalidParam {
                        param: "handle_invalid".to_string(),
                        reason: format!(
                            "{what} in column '{}' (row {i} of a batch); labels seen at fit: {}; use handle_invalid = skip or keep",
                            self.column,
                            self.labels.len()
                        ),
                    });
                }
            });
        }
        Ok(Arc::new(Float64Array::from(out)))
    }
}

impl ScalarUDFImpl for IndexUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        self.lookup(&arrays[0])
            .map(ColumnarValue::Array)
            .map_err(QuiverError::into_datafusion)
    }
}

impl Transformer for StringIndexerModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let udf = ScalarUDF::from(IndexUdf::new(
            self.params.input_col.clone(),
            self.labels.clone(),
            self.params.handle_invalid,
        ));
        let out_col = &self.params.output_col;
        let mut df = data
            .dataframe()
            .clone()
            .with_column(
                out_col,
                udf.call(vec![col(quoted_name(&self.params.input_col))]),
            )
            .map_err(QuiverError::from)?;
        if self.params.handle_invalid == HandleInvalid::Skip {
            df = df
                .filter(col(quoted_name(out_col)).is_not_null())
                .map_err(QuiverError::from)?;
        }
        Ok(data.with_dataframe(df)?)
    }
}

impl Model for StringIndexerModel {
    const KIND: &'static str = "string_indexer";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let params = params_json(&self.params)?;
        let labels = serde_json::to_vec(&self.labels).map_err(|e| MllibError::InvalidParam {
            param: "labels".to_string(),
            reason: e.to_string(),
        })?;
        Ok((
            ModelDraft {
                params,
                ..Default::default()
            },
            vec![("labels.json".to_string(), Bytes::from(labels))],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let params: StringIndexer = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let bytes = parts
            .get("labels.json")
            .ok_or_else(|| corrupt("no part 'labels.json'".to_string()))?;
        let labels: Vec<String> =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid labels: {e}")))?;
        Ok(StringIndexerModel { params, labels })
    }
}

/// What of a fitted indexer crosses to cluster processes.
#[derive(Serialize, Deserialize)]
struct IndexPayload {
    column: String,
    labels: Vec<String>,
    handle_invalid: HandleInvalid,
}

/// Lets the indexer's lookup run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    use quiver_engine::registry::{ScalarCodec, from_json_params, json_params};
    let what = "a string indexer";
    r.add_scalar_codec(
        "string_indexer",
        ScalarCodec {
            encode: Arc::new(move |udf: &ScalarUDF| {
                let u = udf.inner().downcast_ref::<IndexUdf>()?;
                Some(json_params(
                    what,
                    &IndexPayload {
                        column: u.column.clone(),
                        labels: u.labels.as_ref().clone(),
                        handle_invalid: u.handle_invalid,
                    },
                ))
            }),
            decode: Arc::new(move |bytes: &[u8]| {
                let p: IndexPayload = from_json_params(what, bytes)?;
                Ok(ScalarUDF::from(IndexUdf::new(
                    p.column,
                    p.labels,
                    p.handle_invalid,
                )))
            }),
        },
    )
}
