//! `Imputer` (Spark's name): replaces missing values (null and NaN) of numeric columns with the
//! column's mean, median or most frequent value, learned at fit time with aggregate queries.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use bytes::Bytes;
use datafusion::functions::expr_fn::isnan;
use datafusion::functions_aggregate::expr_fn::{avg, count, median};
use datafusion::prelude::{Expr, cast, col, lit, when};
use quiver_engine::aggregate::quoted_name;
use quiver_engine::vector::is_numeric;
use quiver_engine::{Dataset, ModelDraft, ModelMetadata, QuiverError, QuiverSession};
use serde::{Deserialize, Serialize};

use crate::api::{Estimator, Model, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::params_json;

/// Which value replaces a missing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImputerStrategy {
    /// The mean of the valid values. The default.
    #[default]
    Mean,
    /// The exact median of the valid values.
    Median,
    /// The most frequent valid value (the smallest one on ties).
    Mode,
}

/// Fills nulls and NaN in `input_cols`, in place unless output columns are given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imputer {
    input_cols: Vec<String>,
    output_cols: Option<Vec<String>>,
    strategy: ImputerStrategy,
}

impl Imputer {
    pub fn new<S: AsRef<str>>(input_cols: impl IntoIterator<Item = S>) -> Self {
        Imputer {
            input_cols: input_cols
                .into_iter()
                .map(|c| c.as_ref().to_string())
                .collect(),
            output_cols: None,
            strategy: ImputerStrategy::Mean,
        }
    }

    /// Defaults to `Mean`.
    pub fn strategy(mut self, s: ImputerStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// Write the filled values to these columns instead of replacing the inputs.
    pub fn output_cols<S: AsRef<str>>(mut self, cols: impl IntoIterator<Item = S>) -> Self {
        self.output_cols = Some(cols.into_iter().map(|c| c.as_ref().to_string()).collect());
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
        if let Some(out) = &self.output_cols
            && out.len() != self.input_cols.len()
        {
            return Err(MllibError::InvalidParam {
                param: "output_cols".to_string(),
                reason: format!(
                    "{} output columns for {} input columns",
                    out.len(),
                    self.input_cols.len()
                ),
            });
        }
        Ok(())
    }

    fn outputs(&self) -> &[String] {
        self.output_cols.as_deref().unwrap_or(&self.input_cols)
    }
}

fn value(c: &str) -> Expr {
    cast(col(quoted_name(c)), DataType::Float64)
}

fn missing(c: &str) -> Expr {
    col(quoted_name(c)).is_null().or(isnan(value(c)))
}

impl Estimator for Imputer {
    type Model = ImputerModel;

    async fn fit(&self, _session: &QuiverSession, data: &Dataset) -> Result<ImputerModel> {
        self.check()?;
        let df = data.dataframe();
        let mut surrogates = Vec::with_capacity(self.input_cols.len());
        for c in &self.input_cols {
            let field = df.schema().field_with_unqualified_name(c).map_err(|_| {
                QuiverError::ColumnNotFound {
                    column: c.clone(),
                    available: data.columns().join(", "),
                }
            })?;
            if !is_numeric(field.data_type()) {
                return Err(QuiverError::NonNumericColumn {
                    column: c.clone(),
                    data_type: field.data_type().to_string(),
                }
                .into());
            }
            let valid = df.clone().filter(!missing(c)).map_err(QuiverError::from)?;
            let query = match self.strategy {
                ImputerStrategy::Mean => valid.aggregate(vec![], vec![avg(value(c)).alias("v")]),
                ImputerStrategy::Median => {
                    valid.aggregate(vec![], vec![median(value(c)).alias("v")])
                }
                ImputerStrategy::Mode => valid
                    .aggregate(vec![value(c).alias("v")], vec![count(lit(1)).alias("n")])
                    .and_then(|d| {
                        d.sort(vec![col("n").sort(false, true), col("v").sort(true, true)])
                    })
                    .and_then(|d| d.limit(0, Some(1)))
                    .and_then(|d| d.select_columns(&["v"])),
            };
            let batches = query
                .map_err(QuiverError::from)?
                .collect()
                .await
                .map_err(QuiverError::from)?;
            let v = batches
                .iter()
                .find(|b| b.num_rows() > 0)
                .map(|b| b.column(0).as_primitive::<Float64Type>())
                .filter(|a| !a.is_empty() && a.is_valid(0))
                .map(|a| a.value(0));
            match v {
                Some(v) => surrogates.push(v),
                None => {
                    return Err(MllibError::InvalidParam {
                        param: "input_cols".to_string(),
                        reason: format!("column '{c}' has no valid value to impute from"),
                    });
                }
            }
        }
        Ok(ImputerModel {
            params: self.clone(),
            surrogates,
        })
    }
}

/// A fitted [`Imputer`]: one surrogate value per input column.
#[derive(Debug, Clone, PartialEq)]
pub struct ImputerModel {
    params: Imputer,
    surrogates: Vec<f64>,
}

impl ImputerModel {
    pub fn surrogates(&self) -> &[f64] {
        &self.surrogates
    }
}

impl Transformer for ImputerModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let mut df = data.dataframe().clone();
        for ((c, out), s) in self
            .params
            .input_cols
            .iter()
            .zip(self.params.outputs())
            .zip(&self.surrogates)
        {
            let filled = when(missing(c), lit(*s))
                .otherwise(value(c))
                .map_err(QuiverError::from)?;
            df = df.with_column(out, filled).map_err(QuiverError::from)?;
        }
        Ok(data.with_dataframe(df)?)
    }
}

impl Model for ImputerModel {
    const KIND: &'static str = "imputer";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        Ok((
            ModelDraft {
                params: params_json(&(&self.params, &self.surrogates))?,
                ..Default::default()
            },
            Vec::new(),
        ))
    }

    fn from_parts(meta: &ModelMetadata, _parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let (params, surrogates): (Imputer, Vec<f64>) = serde_json::from_value(meta.params.clone())
            .map_err(|e| MllibError::CorruptModel {
                name: meta.name.clone(),
                reason: format!("invalid params: {e}"),
            })?;
        if surrogates.len() != params.input_cols.len() {
            return Err(MllibError::CorruptModel {
                name: meta.name.clone(),
                reason: "one surrogate per input column expected".to_string(),
            });
        }
        Ok(ImputerModel { params, surrogates })
    }
}
