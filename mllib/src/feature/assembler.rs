//! `VectorAssembler` (Spark's name): numeric columns and vectors into one feature vector column.

use std::collections::BTreeMap;

use bytes::Bytes;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata};
use serde::{Deserialize, Serialize};

use crate::api::{Model, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::params_json;

/// Assembles `input_cols` (any integer or float type, or numeric vectors) into `output_col`, a
/// dense `FixedSizeList<Float64>` that becomes the dataset's features. Nulls and NaN are errors
/// naming the column and the row. A stateless transformer; it persists by its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorAssembler {
    input_cols: Vec<String>,
    output_col: String,
}

impl VectorAssembler {
    /// Assembles `input_cols` into `"features"`.
    pub fn new<S: AsRef<str>>(input_cols: impl IntoIterator<Item = S>) -> Self {
        VectorAssembler {
            input_cols: input_cols
                .into_iter()
                .map(|c| c.as_ref().to_string())
                .collect(),
            output_col: "features".to_string(),
        }
    }

    /// Name of the output vector column. Defaults to `"features"`.
    pub fn output_col(mut self, col: impl Into<String>) -> Self {
        self.output_col = col.into();
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
        if self.output_col.trim().is_empty() {
            return Err(MllibError::EmptyOutputColumn);
        }
        Ok(())
    }
}

impl Transformer for VectorAssembler {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        self.check()?;
        Ok(data
            .clone()
            .with_features(&self.input_cols)?
            .assemble(&self.output_col)?)
    }

    fn row_stage(&self) -> crate::api::RowStage {
        crate::api::RowStage::Assemble(self.input_cols.clone())
    }
}

impl Model for VectorAssembler {
    const KIND: &'static str = "vector_assembler";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let params = params_json(self)?;
        Ok((
            ModelDraft {
                params,
                ..Default::default()
            },
            Vec::new(),
        ))
    }

    fn from_parts(meta: &ModelMetadata, _parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let a: VectorAssembler =
            serde_json::from_value(meta.params.clone()).map_err(|e| MllibError::CorruptModel {
                name: meta.name.clone(),
                reason: format!("invalid params: {e}"),
            })?;
        a.check()?;
        Ok(a)
    }
}
