//! `SqlTransform`: a fitted `TRANSFORM` clause of `CREATE MODEL` as a pipeline stage. Each
//! output column is a SQL expression over the input columns in which every analytic function
//! (`ml_standard_scaler(x) OVER ()`, …) has already been replaced by its fitted form: plain
//! arithmetic, `CASE` and built-in functions with the training statistics as literals. So the
//! stage stores SQL text only, runs as a projection where the data is (also on a cluster), and
//! inside `ml_predict` evaluates the same expressions on each batch of raw columns, compiled
//! once per loaded model against the training types.
//!
//! The fitting itself (reading the `TRANSFORM` list, computing the statistics) belongs to the
//! SQL layer; this stage only applies the result.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{Expr, SessionContext};
use quiver_engine::{Dataset, ModelDraft, ModelMetadata, QuiverError};
use serde::{Deserialize, Serialize};

use crate::api::{ColumnMap, Model, RowStage, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::params_json;

/// An input column and its Arrow type at training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlInput {
    pub name: String,
    pub data_type: String,
}

/// An output column: its name and the fitted SQL expression that computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlColumn {
    pub name: String,
    pub sql: String,
}

/// What the stage stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlTransformParams {
    /// The columns the feature outputs read (what `ml_predict` takes), in the query's order.
    pub inputs: Vec<SqlInput>,
    /// The feature columns.
    pub outputs: Vec<SqlColumn>,
    /// The label's output, computed where its inputs are present (training, evaluation).
    pub label: Option<SqlColumn>,
    /// The columns the label's expression reads.
    pub label_inputs: Vec<String>,
    /// The clause as written, for `DESCRIBE MODEL`.
    pub clause: String,
}

/// A fitted `TRANSFORM` clause.
#[derive(Debug, Clone)]
pub struct SqlTransformModel {
    params: SqlTransformParams,
    compiled: Arc<Compiled>,
}

impl PartialEq for SqlTransformModel {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params
    }
}

impl SqlTransformModel {
    /// The stage's kind in the store (`Model::KIND`, for callers holding a `DynModel`).
    pub const KIND_NAME: &'static str = "sql_transform";

    /// Compiles the fitted expressions against the input types; an expression that does not
    /// compile (an unknown function, a type error) is an error naming its output column.
    pub fn new(params: SqlTransformParams) -> Result<Self> {
        let compiled = Arc::new(Compiled::new(&params)?);
        Ok(SqlTransformModel { params, compiled })
    }

    pub fn params(&self) -> &SqlTransformParams {
        &self.params
    }

    /// The feature columns' names.
    pub fn output_names(&self) -> &[String] {
        &self.compiled.outputs
    }

    /// The projection of `df` this stage computes: the feature columns, and the label's when
    /// `df` has the label's inputs and `with_label`.
    pub fn exprs(
        &self,
        df: &datafusion::prelude::DataFrame,
        with_label: bool,
    ) -> Result<(Vec<Expr>, bool)> {
        let available: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for i in &self.params.inputs {
            if !available.contains(&i.name) {
                return Err(QuiverError::ColumnNotFound {
                    column: i.name.clone(),
                    available: available.join(", "),
                }
                .into());
            }
        }
        let parse = |c: &SqlColumn| -> Result<Expr> {
            let e = df
                .parse_sql_expr(&c.sql)
                .map_err(|e| MllibError::InvalidParam {
                    param: "transform".to_string(),
                    reason: format!("column '{}' = {}: {e}", c.name, c.sql),
                })?;
            Ok(e.alias(&c.name))
        };
        let mut out = self
            .params
            .outputs
            .iter()
            .map(parse)
            .collect::<Result<Vec<_>>>()?;
        let label = match &self.params.label {
            Some(l)
                if with_label
                    && self
                        .params
                        .label_inputs
                        .iter()
                        .all(|c| available.contains(c)) =>
            {
                out.push(parse(l)?);
                true
            }
            _ => false,
        };
        Ok((out, label))
    }
}

impl Transformer for SqlTransformModel {
    /// The transformed columns only (as BigQuery ML: columns outside the clause are dropped),
    /// with the label computed where the input has it.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let df = data.dataframe();
        // The label keeps no role here: the encoding stage after this one knows its column
        // (and turns a string label into class indices).
        let (exprs, _) = self.exprs(df, true)?;
        let out = df.clone().select(exprs).map_err(QuiverError::from)?;
        let mut ds = Dataset::new(out);
        if let Some(w) = data
            .weight()
            .filter(|w| ds.columns().iter().any(|c| c == w))
        {
            ds = ds.with_weight(w)?;
        }
        Ok(ds)
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Columns(Arc::clone(&self.compiled) as Arc<dyn ColumnMap>)
    }
}

impl Model for SqlTransformModel {
    const KIND: &'static str = Self::KIND_NAME;
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        Ok((
            ModelDraft {
                params: params_json(&self.params)?,
                ..Default::default()
            },
            Vec::new(),
        ))
    }

    fn from_parts(meta: &ModelMetadata, _parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let params: SqlTransformParams = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid TRANSFORM params: {e}")))?;
        SqlTransformModel::new(params).map_err(|e| corrupt(e.to_string()))
    }
}

/// The physical expressions over the training schema of the inputs.
#[derive(Debug)]
struct Compiled {
    schema: SchemaRef,
    inputs: Vec<String>,
    outputs: Vec<String>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
}

impl Compiled {
    fn new(p: &SqlTransformParams) -> Result<Self> {
        let invalid = |reason: String| MllibError::InvalidParam {
            param: "transform".to_string(),
            reason,
        };
        let mut fields = Vec::with_capacity(p.inputs.len());
        for i in &p.inputs {
            let t = DataType::from_str(&i.data_type).map_err(|e| {
                invalid(format!(
                    "input column '{}' has an unknown type '{}': {e}",
                    i.name, i.data_type
                ))
            })?;
            fields.push(Field::new(&i.name, t, true));
        }
        let schema = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(Arc::clone(&schema)).map_err(QuiverError::from)?;
        // Only built-in functions: the fitted expressions need nothing of Quiver's.
        let ctx = SessionContext::new();
        // Simplified as a query's projection would be (some functions, such as COALESCE, are
        // only executable once rewritten).
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .build(),
        );
        let mut exprs = Vec::with_capacity(p.outputs.len());
        for o in &p.outputs {
            let e = ctx
                .parse_sql_expr(&o.sql, &df_schema)
                .and_then(|e| simplifier.coerce(e, &df_schema))
                .and_then(|e| simplifier.simplify(e))
                .and_then(|e| ctx.create_physical_expr(e, &df_schema))
                .map_err(|e| invalid(format!("column '{}' = {}: {e}", o.name, o.sql)))?;
            exprs.push(e);
        }
        Ok(Compiled {
            schema,
            inputs: p.inputs.iter().map(|i| i.name.clone()).collect(),
            outputs: p.outputs.iter().map(|o| o.name.clone()).collect(),
            exprs,
        })
    }
}

impl ColumnMap for Compiled {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    fn check_input(&self, i: usize, t: &DataType) -> std::result::Result<(), String> {
        let Some(f) = self.schema.fields().get(i) else {
            return Err(format!("the model takes {} columns", self.inputs.len()));
        };
        if t == f.data_type()
            || *t == DataType::Null
            || arrow::compute::can_cast_types(t, f.data_type())
        {
            Ok(())
        } else {
            Err(format!(
                "the TRANSFORM clause read it as {} at training",
                f.data_type()
            ))
        }
    }

    fn apply(&self, arrays: &[ArrayRef], rows: usize) -> quiver_engine::Result<Vec<ArrayRef>> {
        if arrays.len() != self.inputs.len() {
            return Err(QuiverError::internal(format!(
                "TRANSFORM takes {} columns, got {}",
                self.inputs.len(),
                arrays.len()
            )));
        }
        let columns = arrays
            .iter()
            .zip(self.schema.fields())
            .map(|(a, f)| {
                if a.data_type() == f.data_type() {
                    Ok(Arc::clone(a))
                } else {
                    arrow::compute::cast(a, f.data_type()).map_err(|e| QuiverError::InvalidParam {
                        param: f.name().clone(),
                        reason: format!(
                            "column '{}' of type {} cannot be read as {}: {e}",
                            f.name(),
                            a.data_type(),
                            f.data_type()
                        ),
                    })
                }
            })
            .collect::<quiver_engine::Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        self.exprs
            .iter()
            .map(|e| Ok(e.evaluate(&batch)?.into_array(rows)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Float64Array, StringArray};
    use arrow::datatypes::Float64Type;

    fn params(outputs: &[(&str, &str)]) -> SqlTransformParams {
        SqlTransformParams {
            inputs: vec![
                SqlInput {
                    name: "x".to_string(),
                    data_type: "Float64".to_string(),
                },
                SqlInput {
                    name: "s".to_string(),
                    data_type: "Utf8".to_string(),
                },
            ],
            outputs: outputs
                .iter()
                .map(|(n, sql)| SqlColumn {
                    name: n.to_string(),
                    sql: sql.to_string(),
                })
                .collect(),
            label: None,
            label_inputs: Vec::new(),
            clause: String::new(),
        }
    }

    #[test]
    fn evaluates_fitted_sql_on_raw_batches() {
        let m = SqlTransformModel::new(params(&[
            ("z", "(CAST((x) AS DOUBLE) - 2.0) / 4.0"),
            ("filled", "COALESCE(CAST((x) AS DOUBLE), 9.5)"),
            (
                "bin",
                "(CASE WHEN x IS NULL THEN NULL WHEN x < 3.0 THEN 'bin_1' ELSE 'bin_2' END)",
            ),
            (
                "is_a",
                "(CASE WHEN CAST((s) AS VARCHAR) = 'a' THEN 1.0 ELSE 0.0 END)",
            ),
        ]))
        .unwrap();
        let RowStage::Columns(map) = m.row_stage() else {
            panic!("a TRANSFORM stage maps columns");
        };
        assert_eq!(map.outputs(), ["z", "filled", "bin", "is_a"]);
        // An Int64 column where Float64 was trained is read as Float64.
        let x: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![Some(6), None, Some(1)]));
        let s: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
        assert!(map.check_input(0, x.data_type()).is_ok());
        let out = map.apply(&[x, s], 3).unwrap();
        let z = out[0].as_primitive::<Float64Type>();
        assert_eq!((z.value(0), z.is_null(1), z.value(2)), (1.0, true, -0.25));
        let filled = out[1].as_primitive::<Float64Type>();
        assert_eq!(filled.values().to_vec(), vec![6.0, 9.5, 1.0]);
        let bin = arrow::compute::cast(&out[2], &DataType::Utf8).unwrap();
        let bin = bin.as_string::<i32>();
        assert_eq!(
            (bin.value(0), bin.is_null(1), bin.value(2)),
            ("bin_2", true, "bin_1")
        );
        let is_a: &Float64Array = out[3].as_primitive();
        assert_eq!(is_a.values().to_vec(), vec![1.0, 0.0, 0.0]);
        // Stored and loaded, it is the same stage.
        let (draft, _) = m.to_parts().unwrap();
        let meta = ModelMetadata {
            name: "t".to_string(),
            version: 1,
            kind: SqlTransformModel::KIND_NAME.to_string(),
            format_version: 1,
            params: draft.params,
            features: Vec::new(),
            label: None,
            metrics: serde_json::Value::Null,
            training_summary: serde_json::Value::Null,
            created_at: String::new(),
            parts: Vec::new(),
            quiver_version: String::new(),
            checksums: BTreeMap::new(),
        };
        assert_eq!(
            SqlTransformModel::from_parts(&meta, &BTreeMap::new()).unwrap(),
            m
        );
    }

    #[test]
    fn refuses_what_does_not_compile_naming_the_column() {
        let e = SqlTransformModel::new(params(&[("y", "no_such_function(x)")])).unwrap_err();
        assert!(e.to_string().contains("column 'y'"), "{e}");
        let mut p = params(&[("y", "x")]);
        p.inputs[0].data_type = "NotAType".to_string();
        let e = SqlTransformModel::new(p).unwrap_err();
        assert!(e.to_string().contains("input column 'x'"), "{e}");
    }
}
