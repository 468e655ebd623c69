//! `ml_predict('model', f1, f2, …)` / `ml_predict('model', features_vector)` and
//! `ml_predict_proba(…)`: a stored model applied to whole batches inside the query (no plan per
//! batch), usable wherever a scalar function is: projections, filters, joins, group-bys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use quiver_engine::apply_to_columns;
use quiver_engine::registry::{FunctionRegistry, ScalarCodec, from_json_params, json_params};
use quiver_engine::{BatchFunction, FeatureBatch, ModelStore};
use quiver_mllib::ColumnEncoder;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SqlError};
use crate::models::{LoadedModel, ModelCatalog};

/// Which output of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Output {
    Prediction,
    Probability,
}

/// `ml_predict` / `ml_predict_proba` over the models of one catalog.
#[derive(Debug)]
pub struct MlPredict {
    catalog: Arc<ModelCatalog>,
    output: Output,
    signature: Signature,
}

/// The two prediction functions over `catalog`.
pub fn predict_functions(catalog: &Arc<ModelCatalog>) -> Vec<ScalarUDF> {
    [Output::Prediction, Output::Probability]
        .into_iter()
        .map(|output| {
            ScalarUDF::from(MlPredict {
                catalog: Arc::clone(catalog),
                output,
                signature: Signature::variadic_any(Volatility::Immutable),
            })
        })
        .collect()
}

/// Pins every unpinned model reference of `ml_predict` / `ml_predict_proba` in `plan` to the
/// version the client resolves now (`'m'` becomes `'m@3'`, output names unchanged): on a
/// cluster the scheduler and every executor then use the same version, whatever is published
/// while the query runs.
pub(crate) async fn pin_model_versions(
    plan: datafusion::logical_expr::LogicalPlan,
    catalog: &ModelCatalog,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;
    use datafusion::logical_expr::expr_rewriter::NamePreserver;

    fn unpinned(e: &Expr) -> Option<&str> {
        let Expr::ScalarFunction(f) = e else {
            return None;
        };
        if !matches!(f.func.name(), "ml_predict" | "ml_predict_proba") {
            return None;
        }
        match f.args.first() {
            Some(Expr::Literal(ScalarValue::Utf8(Some(r)), _)) if !r.contains('@') => Some(r),
            _ => None,
        }
    }
    let mut references = Vec::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Some(r) = unpinned(e) {
                    references.push(r.to_string());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if references.is_empty() {
        return Ok(plan);
    }
    let mut pinned = HashMap::new();
    for r in references {
        if let std::collections::hash_map::Entry::Vacant(slot) = pinned.entry(r) {
            let model = catalog.resolve(slot.key()).await?;
            let to = format!("{}@{}", model.metadata.name, model.metadata.version);
            slot.insert(to);
        }
    }
    let plan = plan
        .transform_up_with_subqueries(|node| {
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = names.save(&e);
                e.transform_up(|e| {
                    let Some(to) = unpinned(&e).and_then(|r| pinned.get(r)).cloned() else {
                        return Ok(Transformed::no(e));
                    };
                    let Expr::ScalarFunction(mut f) = e else {
                        return Ok(Transformed::no(e));
                    };
                    f.args[0] = Expr::Literal(ScalarValue::Utf8(Some(to)), None);
                    Ok(Transformed::yes(Expr::ScalarFunction(f)))
                })
                .map(|t| t.update_data(|e| saved.restore(e)))
            })
        })?
        .data;
    Ok(plan)
}

/// What of `ml_predict` crosses to cluster processes: the model store (models themselves are
/// loaded there by name and version, and cached per process).
#[derive(Serialize, Deserialize)]
struct PredictPayload {
    store: String,
    output: Output,
}

/// One catalog per model store per process: executors load each model version once.
static CATALOGS: LazyLock<Mutex<HashMap<String, Arc<ModelCatalog>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The process-wide catalog of the store at `url` (S3 settings this process was started with,
/// then the environment).
fn process_catalog(url: &str) -> quiver_engine::Result<Arc<ModelCatalog>> {
    let mut catalogs = CATALOGS
        .lock()
        .map_err(|_| quiver_engine::QuiverError::internal("model catalog lock poisoned"))?;
    if let Some(c) = catalogs.get(url) {
        return Ok(Arc::clone(c));
    }
    let catalog = ModelCatalog::new(ModelStore::open(url, &quiver_engine::config::process_s3())?);
    catalogs.insert(url.to_string(), Arc::clone(&catalog));
    Ok(catalog)
}

/// Lets `ml_predict` and `ml_predict_proba` run on cluster executors.
pub(crate) fn register_codecs(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    for output in [Output::Prediction, Output::Probability] {
        let what = "ml_predict";
        let codec = ScalarCodec {
            encode: Arc::new(move |udf: &ScalarUDF| {
                let p = udf.inner().downcast_ref::<MlPredict>()?;
                Some(json_params(
                    what,
                    &PredictPayload {
                        store: p.catalog.store().absolute_url().to_string(),
                        output: p.output,
                    },
                ))
            }),
            decode: Arc::new(move |bytes: &[u8]| {
                let p: PredictPayload = from_json_params(what, bytes)?;
                Ok(ScalarUDF::from(MlPredict {
                    catalog: process_catalog(&p.store)?,
                    output: p.output,
                    signature: Signature::variadic_any(Volatility::Immutable),
                }))
            }),
        };
        let name = match output {
            Output::Prediction => "ml_predict",
            Output::Probability => "ml_predict_proba",
        };
        registry.add_scalar_codec(name, codec)?;
    }
    Ok(())
}

impl PartialEq for MlPredict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog) && self.output == other.output
    }
}

impl Eq for MlPredict {}

impl Hash for MlPredict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.output.hash(state);
        self.catalog.store().url().hash(state);
    }
}

fn model_reference(function: &str, first: Option<&ScalarValue>) -> Result<String> {
    match first {
        Some(ScalarValue::Utf8(Some(s)))
        | Some(ScalarValue::LargeUtf8(Some(s)))
        | Some(ScalarValue::Utf8View(Some(s))) => Ok(s.clone()),
        _ => Err(SqlError::Invalid(format!(
            "{function}: the first argument must be the model name as a string literal, e.g. {function}('my_model', x1, x2)"
        ))),
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

impl MlPredict {
    fn name_str(&self) -> &'static str {
        match self.output {
            Output::Prediction => "ml_predict",
            Output::Probability => "ml_predict_proba",
        }
    }

    fn function<'a>(&self, model: &'a LoadedModel) -> Result<&'a Arc<dyn BatchFunction>> {
        let rows = model.rows()?;
        match self.output {
            Output::Prediction => Ok(&rows.prediction),
            Output::Probability => rows.probability.as_ref().ok_or_else(|| {
                SqlError::Invalid(format!(
                    "ml_predict_proba: model '{}' ({}) has no class probabilities",
                    model.label(),
                    model.metadata.kind
                ))
            }),
        }
    }

    /// Checks the feature arguments against what the model expects, listing it on a mismatch.
    fn check_features(&self, model: &LoadedModel, fields: &[FieldRef]) -> Result<()> {
        let f = self.function(model)?;
        let rows = model.rows()?;
        let expected: Vec<String> = match &rows.inputs {
            Some(cols) => cols.clone(),
            None => model
                .metadata
                .features
                .iter()
                .map(|f| f.name.clone())
                .collect(),
        };
        // The vector the model itself sees (after preprocessing, if it has any).
        let dim = f.input_dim();
        // With automatic preprocessing the arguments are the raw columns, of their own types.
        let encoder = rows.encoder.as_deref();
        let columns = encoder.map_or(dim, |e| e.inputs().len());
        let numeric = encoder
            .is_none_or(|e| (0..columns).all(|i| e.check_input(i, &DataType::Float64).is_ok()));
        let describe = || {
            let what = if numeric {
                "numeric features"
            } else {
                "features"
            };
            if expected.len() == columns {
                format!("{columns} {what} ({})", expected.join(", "))
            } else {
                format!("{columns} {what}")
            }
        };
        let vector =
            matches!(fields, [one] if matches!(one.data_type(), DataType::FixedSizeList(_, _)));
        if vector {
            if let DataType::FixedSizeList(inner, n) = fields[0].data_type()
                && (*n as usize != dim || !is_numeric(inner.data_type()))
            {
                return Err(SqlError::Invalid(format!(
                    "{}: model '{}' expects {}, or one vector of {dim}; got '{}' of type {}",
                    self.name_str(),
                    model.label(),
                    describe(),
                    fields[0].name(),
                    fields[0].data_type()
                )));
            }
            return Ok(());
        }
        if fields.len() != columns {
            return Err(SqlError::Invalid(format!(
                "{}: model '{}' expects {}; got {} argument{}",
                self.name_str(),
                model.label(),
                describe(),
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            )));
        }
        for (i, field) in fields.iter().enumerate() {
            let refused = match encoder {
                Some(e) => e.check_input(i, field.data_type()).err(),
                None => (!is_numeric(field.data_type()))
                    .then(|| format!("model '{}' expects {}", model.label(), describe())),
            };
            if let Some(reason) = refused {
                let wanted = expected.get(i).map(String::as_str).unwrap_or("?");
                return Err(SqlError::Invalid(format!(
                    "{}: feature {} ('{}', for the model's '{wanted}') has type {}; {reason}",
                    self.name_str(),
                    i + 1,
                    field.name(),
                    field.data_type(),
                )));
            }
        }
        Ok(())
    }
}

/// `f` over raw columns through the model's preprocessing (`encoder`), or over numeric
/// columns / one feature vector as they are.
fn apply_model(
    f: &dyn BatchFunction,
    encoder: Option<&dyn ColumnEncoder>,
    arrays: &[ArrayRef],
    names: &[&str],
    rows: usize,
) -> quiver_engine::Result<ArrayRef> {
    let vector =
        matches!(arrays, [one] if matches!(one.data_type(), DataType::FixedSizeList(_, _)));
    let Some(e) = encoder.filter(|_| !vector) else {
        return apply_to_columns(f, arrays, names, rows);
    };
    let values = e.encode(arrays, rows)?;
    let out = f.apply(&FeatureBatch::new(&values, e.dim())?)?;
    if out.len() != rows {
        return Err(quiver_engine::QuiverError::internal(format!(
            "{} returned {} values for {rows} rows",
            f.name(),
            out.len()
        )));
    }
    Ok(out)
}

impl ScalarUDFImpl for MlPredict {
    fn name(&self) -> &str {
        self.name_str()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        // Only reached without the literal arguments; planning goes through
        // return_field_from_args, which sees the model name.
        Err(SqlError::Invalid(format!(
            "{}: the first argument must be the model name as a string literal",
            self.name_str()
        ))
        .into_datafusion())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        let run = || -> Result<FieldRef> {
            let reference = model_reference(
                self.name_str(),
                args.scalar_arguments.first().copied().flatten(),
            )?;
            let model = self.catalog.resolve_blocking(&reference)?;
            self.check_features(&model, args.arg_fields.get(1..).unwrap_or(&[]))?;
            let t = self.function(&model)?.return_type();
            Ok(Arc::new(Field::new(self.name_str(), t, true)))
        };
        run().map_err(SqlError::into_datafusion)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let run = || -> Result<ColumnarValue> {
            let first = match args.args.first() {
                Some(ColumnarValue::Scalar(s)) => Some(s),
                _ => None,
            };
            let reference = model_reference(self.name_str(), first)?;
            let model = self.catalog.resolve_blocking(&reference)?;
            let f = self.function(&model)?;
            let arrays = ColumnarValue::values_to_arrays(&args.args[1..])?;
            let names: Vec<&str> = args.arg_fields[1..]
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            let encoder = model.rows()?.encoder.as_deref();
            let out = apply_model(f.as_ref(), encoder, &arrays, &names, args.number_rows)?;
            Ok(ColumnarValue::Array(out))
        };
        run().map_err(SqlError::into_datafusion)
    }
}
