//! `OneHotEncoder` (Spark's name and defaults): category indices (e.g. from `StringIndexer`)
//! to one-hot vectors, with `drop_last` and `handle_invalid`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use bytes::Bytes;
use datafusion::prelude::col;
use quiver_engine::aggregate::quoted_name;
use quiver_engine::vector::{vector_array, vector_type};
use quiver_engine::{
    BatchFunction, Dataset, FeatureBatch, MapUdf, ModelDraft, ModelMetadata, QuiverError,
    QuiverSession, Summarizer,
};
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, Transformer};
use crate::error::{MllibError, Result};
use crate::feature::HandleInvalid;
use crate::persist::params_json;

/// One-hot encodes each input column of category indices (non-negative integers stored as
/// numbers) into `<col>_vec`. The number of categories is learned as max index + 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneHotEncoder {
    input_cols: Vec<String>,
    drop_last: bool,
    handle_invalid: HandleInvalid,
}

impl OneHotEncoder {
    pub fn new<S: AsRef<str>>(input_cols: impl IntoIterator<Item = S>) -> Self {
        OneHotEncoder {
            input_cols: input_cols
                .into_iter()
                .map(|c| c.as_ref().to_string())
                .collect(),
            drop_last: true,
            handle_invalid: HandleInvalid::Error,
        }
    }

    /// Leave out the last category (its vector is all zeros), so the columns are not collinear.
    /// Defaults to `true`.
    pub fn drop_last(mut self, yes: bool) -> Self {
        self.drop_last = yes;
        self
    }

    /// An index outside the learned categories: `Error` (the default) or `Keep` (one extra
    /// category). `Skip` is not supported here, as in Spark.
    pub fn handle_invalid(mut self, h: HandleInvalid) -> Self {
        self.handle_invalid = h;
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        if self.input_cols.is_empty() {
            return Err(MllibError::InvalidParam {
                param: "input_cols".to_string(),
                reason: "at least one input column is needed".to_string(),
            });
        }
        if self.handle_invalid == HandleInvalid::Skip {
            return Err(MllibError::InvalidParam {
                param: "handle_invalid".to_string(),
                reason: "OneHotEncoder supports error or keep".to_string(),
            });
        }
        Ok(())
    }

    fn output_col(input: &str) -> String {
        format!("{input}_vec")
    }
}

fn bad_index(column: &str, value: f64, categories: usize) -> QuiverError {
    QuiverError::InvalidParam {
        param: "handle_invalid".to_string(),
        reason: format!(
            "column '{column}' has category index {value}, outside 0..{categories} (or not an integer); use handle_invalid = keep"
        ),
    }
}

impl Estimator for OneHotEncoder {
    type Model = OneHotEncoderModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<OneHotEncoderModel> {
        self.check()?;
        let ds = data.clone().with_features(&self.input_cols)?;
        let prepared = session.prepare(&ds, session.runner()).await?;
        let summary = prepared
            .aggregate(Arc::new(Summarizer::new(self.input_cols.len())))
            .await?;
        let mut categories = Vec::with_capacity(self.input_cols.len());
        for (j, c) in self.input_cols.iter().enumerate() {
            let (lo, hi) = (summary.min[j], summary.max[j]);
            if lo < 0.0 || hi.fract() != 0.0 {
                return Err(bad_index(c, if lo < 0.0 { lo } else { hi }, 0).into());
            }
            categories.push(hi as usize + 1);
        }
        Ok(OneHotEncoderModel {
            params: self.clone(),
            categories,
        })
    }
}

/// A fitted [`OneHotEncoder`]: the number of categories of each input column.
#[derive(Debug, Clone, PartialEq)]
pub struct OneHotEncoderModel {
    params: OneHotEncoder,
    categories: Vec<usize>,
}

impl OneHotEncoderModel {
    pub fn categories(&self) -> &[usize] {
        &self.categories
    }
}

/// One column's encoding as a batch function.
#[derive(Debug, Serialize, Deserialize)]
struct OneHot {
    column: String,
    categories: usize,
    width: usize,
    keep: bool,
}

impl BatchFunction for OneHot {
    fn name(&self) -> &str {
        "one_hot_encoder"
    }

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a one-hot encoder", self)
    }

    fn input_dim(&self) -> usize {
        1
    }

    fn return_type(&self) -> DataType {
        vector_type(self.width)
    }

    fn apply(&self, batch: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let mut out = vec![0.0; batch.n_rows * self.width];
        for (r, &v) in batch.values.iter().enumerate() {
            let valid = v >= 0.0 && v.fract() == 0.0 && (v as usize) < self.categories;
            let slot = match (valid, self.keep) {
                (true, _) => v as usize,
                (false, true) => self.categories,
                (false, false) => return Err(bad_index(&self.column, v, self.categories)),
            };
            // The dropped last slot stays all zeros.
            if slot < self.width {
                out[r * self.width + slot] = 1.0;
            }
        }
        Ok(Arc::new(vector_array(out, self.width)?))
    }
}

impl Transformer for OneHotEncoderModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let keep = self.params.handle_invalid == HandleInvalid::Keep;
        let mut df = data.dataframe().clone();
        for (c, &k) in self.params.input_cols.iter().zip(&self.categories) {
            let slots = k + keep as usize;
            let width = if self.params.drop_last {
                slots - 1
            } else {
                slots
            };
            let f = OneHot {
                column: c.clone(),
                categories: k,
                width: width.max(1),
                keep,
            };
            let udf = MapUdf::new(Arc::new(f))?.into_udf();
            df = df
                .with_column(
                    &OneHotEncoder::output_col(c),
                    udf.call(vec![col(quoted_name(c))]),
                )
                .map_err(QuiverError::from)?;
        }
        Ok(data.with_dataframe(df)?)
    }
}

impl Model for OneHotEncoderModel {
    const KIND: &'static str = "one_hot_encoder";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let params = params_json(&(&self.params, &self.categories))?;
        Ok((
            ModelDraft {
                params,
                ..Default::default()
            },
            Vec::new(),
        ))
    }

    fn from_parts(meta: &ModelMetadata, _parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let (params, categories): (OneHotEncoder, Vec<usize>) =
            serde_json::from_value(meta.params.clone()).map_err(|e| MllibError::CorruptModel {
                name: meta.name.clone(),
                reason: format!("invalid params: {e}"),
            })?;
        if categories.len() != params.input_cols.len() {
            return Err(MllibError::CorruptModel {
                name: meta.name.clone(),
                reason: "one category count per input column expected".to_string(),
            });
        }
        Ok(OneHotEncoderModel { params, categories })
    }
}

quiver_engine::impl_json_params!(
    OneHot => "a one-hot encoder",
);

/// Lets the encoder's map run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_batch_function::<OneHot>("one_hot_encoder")
}
