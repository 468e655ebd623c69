//! Table functions about stored models:
//!
//! - `ml_training_info('m')`: the objective per iteration (the learning curve);
//! - `ml_weights('m')`: every weight by vector and feature (coefficients, intercepts, centres);
//! - `ml_feature_info('m')`: per input column of a CREATE MODEL model its type, statistics of
//!   the training rows, null count and, for string columns, category count (`ML.FEATURE_INFO`);
//! - `ml_trial_info('m')`: the trials of a model trained with hyperparameter tuning
//!   (`num_trials`): parameters, status, objective value, which one was kept;
//! - `ml_feature_importance('m')`: per feature of a tree model its split count, total gain and
//!   total cover (`importance_weight`, `importance_gain`, `importance_cover`), as BigQuery
//!   ML's `ML.FEATURE_IMPORTANCE`; of a linear model its absolute standardised coefficient
//!   (`importance` = |β| × the feature's training standard deviation);
//! - `ml_explain_predict('m', source [, top_k])`: per row of a table or query its prediction,
//!   the `top_k` (default 5) feature attributions, the baseline and the explained value
//!   (`ML.EXPLAIN_PREDICT`: exact for linear models, TreeSHAP for trees);
//! - `ml_global_explain('m' [, source])`: per feature its mean absolute attribution over the
//!   training rows (recorded by `CREATE MODEL … enable_global_explain = TRUE`) or over a
//!   table or query (`ML.GLOBAL_EXPLAIN`);
//! - `ml_transform('m', source)`: the columns the model's `TRANSFORM` clause computes from a
//!   table or query (its features, and the label where the source has its inputs), as BigQuery
//!   ML's `ML.TRANSFORM`;
//! - `ml_principal_component_info('m')`: per principal component of a decomposition model
//!   (PCA) its eigenvalue and explained variance ratio, as BigQuery ML's
//!   `ML.PRINCIPAL_COMPONENT_INFO`;
//! - `ml_evaluate('m', 'table')`: the evaluator metrics of the model on a table (which must have
//!   the model's features and, for supervised models, its label column); computed when the
//!   query is scanned, or, on a cluster, when it is planned.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DFResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use quiver_engine::{Dataset, QuiverSession};
use serde_json::Value;

use crate::error::{Result, SqlError};
use crate::explain::{GlobalAttribution, attributor, top_attributions, value_columns};
use crate::models::{LoadedModel, ModelCatalog};
use datafusion::logical_expr::{ScalarUDF, when};
use datafusion::prelude::{col, lit};
use quiver_engine::functions::{VectorOp, VectorOpUdf};
use quiver_mllib::catalog::{self, ImportanceKind, Task};
use quiver_mllib::evaluation::RocPoint;
use quiver_mllib::{BinaryClassificationEvaluator, MulticlassClassificationEvaluator};

/// Which table function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TrainingInfo,
    Weights,
    FeatureInfo,
    Evaluate,
    TrialInfo,
    PrincipalComponentInfo,
    FeatureImportance,
    ConfusionMatrix,
    RocCurve,
    ExplainPredict,
    GlobalExplain,
    Transform,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::TrainingInfo => "ml_training_info",
            Kind::Weights => "ml_weights",
            Kind::FeatureInfo => "ml_feature_info",
            Kind::Evaluate => "ml_evaluate",
            Kind::TrialInfo => "ml_trial_info",
            Kind::PrincipalComponentInfo => "ml_principal_component_info",
            Kind::FeatureImportance => "ml_feature_importance",
            Kind::ConfusionMatrix => "ml_confusion_matrix",
            Kind::RocCurve => "ml_roc_curve",
            Kind::ExplainPredict => "ml_explain_predict",
            Kind::GlobalExplain => "ml_global_explain",
            Kind::Transform => "ml_transform",
        }
    }
}

/// One table function over the models of a catalog.
#[derive(Debug)]
pub struct ModelTableFunction {
    catalog: Arc<ModelCatalog>,
    /// The session's configuration and compute pool over an empty context (holding the real
    /// context here would make a reference cycle through its function registry).
    base: QuiverSession,
    kind: Kind,
}

/// The table functions over `catalog`, with their names.
pub fn table_functions(
    session: &QuiverSession,
    catalog: &Arc<ModelCatalog>,
) -> Vec<(String, Arc<dyn TableFunctionImpl>)> {
    let base = session.with_context(SessionContext::new());
    [
        Kind::TrainingInfo,
        Kind::Weights,
        Kind::FeatureInfo,
        Kind::Evaluate,
        Kind::TrialInfo,
        Kind::PrincipalComponentInfo,
        Kind::FeatureImportance,
        Kind::ConfusionMatrix,
        Kind::RocCurve,
        Kind::ExplainPredict,
        Kind::GlobalExplain,
        Kind::Transform,
    ]
    .into_iter()
    .map(|kind| {
        (
            kind.name().to_string(),
            Arc::new(ModelTableFunction {
                catalog: Arc::clone(catalog),
                base: base.clone(),
                kind,
            }) as Arc<dyn TableFunctionImpl>,
        )
    })
    .collect()
}

fn string_arg(function: &str, exprs: &[Expr], i: usize, what: &str) -> Result<String> {
    match exprs.get(i) {
        Some(Expr::Literal(ScalarValue::Utf8(Some(s)), _))
        | Some(Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _))
        | Some(Expr::Literal(ScalarValue::Utf8View(Some(s)), _)) => Ok(s.clone()),
        _ => Err(SqlError::Invalid(format!(
            "{function}: argument {} must be the {what} as a string literal",
            i + 1
        ))),
    }
}

/// The training summary of the model's last stage (CREATE MODEL records it; pipelines built in
/// Rust keep it in their stage list; a single model has it at the top).
fn final_summary(model: &LoadedModel) -> Value {
    let meta = &model.metadata;
    if let Some(s) = meta.training_summary.get("final_stage") {
        return s.clone();
    }
    if let Some(stages) = meta.params.get("stages").and_then(Value::as_array)
        && let Some(last) = stages.last()
    {
        return last["training_summary"].clone();
    }
    meta.training_summary.clone()
}

fn training_info(model: &LoadedModel) -> Result<RecordBatch> {
    let summary = final_summary(model);
    let history: Vec<f64> = summary["objective_history"]
        .as_array()
        .map(|h| h.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if history.is_empty() {
        return Err(SqlError::Invalid(format!(
            "ml_training_info: model '{}' ({}) records no per-iteration objective",
            model.label(),
            model.metadata.kind
        )));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("iteration", DataType::Int64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("improvement", DataType::Float64, true),
    ]));
    let improvement: Vec<Option<f64>> = (0..history.len())
        .map(|i| (i > 0).then(|| history[i - 1] - history[i]))
        .collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            (0..history.len() as i64).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(history)),
        Arc::new(Float64Array::from(improvement)),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// One row per trial of a tuned model: `trial_id`, `hyperparameters` (JSON), `status`,
/// `objective`, `objective_value` (the metric as such, not negated), `is_optimal`,
/// `metrics` (JSON), `worker`, `duration_ms`, `error_message`.
fn trial_info(model: &LoadedModel) -> Result<RecordBatch> {
    let tuning = &model.metadata.training_summary["tuning"];
    let Some(trials) = tuning["trials"].as_array() else {
        return Err(SqlError::Invalid(format!(
            "ml_trial_info: model '{}' was not trained with hyperparameter tuning (CREATE MODEL \
             … OPTIONS (num_trials = …, option = HPARAM_RANGE(…)))",
            model.label()
        )));
    };
    let objective = tuning["objective"].as_str().unwrap_or("loss");
    let larger = tuning["is_larger_better"].as_bool().unwrap_or(false);
    let best = tuning["best_trial"].as_u64();
    let schema = Arc::new(Schema::new(vec![
        Field::new("trial_id", DataType::Int64, false),
        Field::new("hyperparameters", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("objective", DataType::Utf8, false),
        Field::new("objective_value", DataType::Float64, true),
        Field::new("is_optimal", DataType::Boolean, false),
        Field::new("metrics", DataType::Utf8, false),
        Field::new("worker", DataType::Utf8, false),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("error_message", DataType::Utf8, true),
    ]));
    let text = |t: &Value, k: &str| t[k].as_str().unwrap_or_default().to_string();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            trials.iter().map(|t| t["id"].as_i64().unwrap_or(-1)),
        )),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| t["params"].to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| text(t, "status")),
        )),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|_| objective),
        )),
        Arc::new(Float64Array::from_iter(trials.iter().map(|t| {
            t["loss"].as_f64().map(|l| if larger { -l } else { l })
        }))),
        Arc::new(arrow::array::BooleanArray::from_iter(trials.iter().map(
            |t| Some(t["id"].as_u64().is_some() && t["id"].as_u64() == best),
        ))),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| t["metrics"].to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            trials.iter().map(|t| text(t, "worker")),
        )),
        Arc::new(Int64Array::from_iter_values(trials.iter().map(|t| {
            t["finished_ms"].as_i64().unwrap_or(0) - t["started_ms"].as_i64().unwrap_or(0)
        }))),
        Arc::new(StringArray::from_iter(
            trials
                .iter()
                .map(|t| t["message"].as_str().map(str::to_string)),
        )),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// The model's input columns (what `ml_predict` takes), else its stored feature names.
/// Names of the values of the feature vector the model's final stage sees: the encoded ones
/// (`color_red`) after automatic preprocessing, else the input columns.
fn feature_names(model: &LoadedModel) -> Vec<String> {
    if let Some(e) = model.rows.as_ref().ok().and_then(|r| r.encoder.as_ref()) {
        return e.feature_names().to_vec();
    }
    match model.rows.as_ref().ok().and_then(|r| r.inputs.clone()) {
        Some(cols) => cols,
        None => model
            .metadata
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    }
}

fn weights(model: &LoadedModel) -> Result<RecordBatch> {
    let vectors = model.model.weight_vectors();
    if vectors.is_empty() {
        return Err(SqlError::Invalid(format!(
            "ml_weights: model '{}' ({}) has no weights",
            model.label(),
            model.metadata.kind
        )));
    }
    let features = feature_names(model);
    let (mut vec_col, mut feat_col, mut w_col) = (Vec::new(), Vec::new(), Vec::new());
    for (label, v) in &vectors {
        for (j, w) in v.iter().enumerate() {
            let feature = match features.get(j) {
                Some(f) if j < features.len() => f.clone(),
                _ if j == v.len() - 1 && v.len() == features.len() + 1 => "(intercept)".to_string(),
                _ => format!("feature {j}"),
            };
            vec_col.push(label.clone());
            feat_col.push(feature);
            w_col.push(*w);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("vector", DataType::Utf8, false),
        Field::new("feature", DataType::Utf8, false),
        Field::new("weight", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec_col)),
        Arc::new(StringArray::from(feat_col)),
        Arc::new(Float64Array::from(w_col)),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

fn feature_info(model: &LoadedModel) -> Result<RecordBatch> {
    let Some(info) = model.metadata.training_summary["feature_info"].as_array() else {
        return Err(SqlError::Invalid(format!(
            "ml_feature_info: model '{}' has no feature statistics (they are recorded by CREATE MODEL)",
            model.label()
        )));
    };
    let num = |key: &str| -> Float64Array { info.iter().map(|r| r[key].as_f64()).collect() };
    let int = |key: &str| -> Int64Array { info.iter().map(|r| r[key].as_i64()).collect() };
    let text = |key: &str| -> StringArray {
        info.iter()
            .map(|r| r[key].as_str().map(str::to_string))
            .collect()
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("mean", DataType::Float64, true),
        Field::new("stddev", DataType::Float64, true),
        Field::new("count", DataType::Float64, true),
        Field::new("null_count", DataType::Int64, true),
        Field::new("category_count", DataType::Int64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            info.iter()
                .map(|r| r["feature"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>(),
        )),
        Arc::new(text("type")),
        Arc::new(num("min")),
        Arc::new(num("max")),
        Arc::new(num("mean")),
        Arc::new(num("stddev")),
        Arc::new(num("count")),
        Arc::new(int("null_count")),
        Arc::new(int("category_count")),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// One row per component of a decomposition model: `principal_component_id` (1-based),
/// `eigenvalue`, `explained_variance_ratio`, `cumulative_explained_variance_ratio`.
fn principal_component_info(model: &LoadedModel) -> Result<RecordBatch> {
    let (_, summary) = catalog::final_stage(&model.metadata);
    let floats = |key: &str| -> Option<Vec<f64>> {
        summary[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
    };
    let (Some(eigenvalues), Some(ratios)) =
        (floats("eigenvalues"), floats("explained_variance_ratio"))
    else {
        return Err(SqlError::Invalid(format!(
            "ml_principal_component_info: model '{}' has no principal components (train it with model_type = 'pca')",
            model.label()
        )));
    };
    let cumulative: Vec<f64> = ratios
        .iter()
        .scan(0.0, |sum, r| {
            *sum += r;
            Some(*sum)
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("principal_component_id", DataType::Int64, false),
        Field::new("eigenvalue", DataType::Float64, false),
        Field::new("explained_variance_ratio", DataType::Float64, false),
        Field::new(
            "cumulative_explained_variance_ratio",
            DataType::Float64,
            false,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(1..=eigenvalues.len() as i64)),
        Arc::new(Float64Array::from(eigenvalues)),
        Arc::new(Float64Array::from(ratios)),
        Arc::new(Float64Array::from(cumulative)),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// One row per feature, most important first: for trees `importance_weight` (splits on
/// it), `importance_gain` (their total gain) and `importance_cover` (the total cover of the
/// nodes it splits), ordered by gain; for linear models `importance` = |β| σ (the largest over
/// a multinomial model's classes), with the coefficient (single-vector models) and σ.
fn feature_importance(model: &LoadedModel) -> Result<RecordBatch> {
    let (kind, summary) = catalog::final_stage(&model.metadata);
    let algorithm = catalog::algorithm_of(&model.metadata);
    let importance = algorithm.map_or(ImportanceKind::None, |a| a.importance);
    let unavailable = |why: String| {
        SqlError::Invalid(format!(
            "ml_feature_importance: model '{}' {why}",
            model.label()
        ))
    };
    let floats = |v: &Value| -> Option<Vec<f64>> {
        v.as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
    };
    let names = feature_names(model);
    let name = |j: usize| {
        names
            .get(j)
            .cloned()
            .unwrap_or_else(|| format!("feature {j}"))
    };
    let by_size = |v: &[f64]| -> Vec<usize> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|a, b| v[*b].total_cmp(&v[*a]).then(a.cmp(b)));
        order
    };
    let pick = |order: &[usize], v: &[f64]| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(order.iter().map(|j| v[*j])))
    };
    let (fields, cols): (Vec<Field>, Vec<ArrayRef>) = match importance {
        ImportanceKind::Splits => {
            let imp = &summary["importance"];
            let (Some(weight), Some(gain), Some(cover)) = (
                floats(&imp["weight"]),
                floats(&imp["gain"]),
                floats(&imp["cover"]),
            ) else {
                return Err(unavailable(
                    "was stored without its split statistics".to_string(),
                ));
            };
            let order = by_size(&gain);
            (
                vec![
                    Field::new("importance_weight", DataType::Float64, false),
                    Field::new("importance_gain", DataType::Float64, false),
                    Field::new("importance_cover", DataType::Float64, false),
                ],
                vec![
                    Arc::new(StringArray::from_iter_values(
                        order.iter().map(|j| name(*j)),
                    )) as ArrayRef,
                    pick(&order, &weight),
                    pick(&order, &gain),
                    pick(&order, &cover),
                ],
            )
        }
        ImportanceKind::Coefficients => {
            let Some(std) = floats(&summary["feature_std"]).filter(|s| !s.is_empty()) else {
                return Err(unavailable(
                    "was stored without the feature statistics importance needs; train it again"
                        .to_string(),
                ));
            };
            let d = std.len();
            // Weight vectors end in their intercept.
            let vectors: Vec<Vec<f64>> = model
                .model
                .weight_vectors()
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| v.len() == d + 1)
                .collect();
            if vectors.is_empty() {
                return Err(unavailable(format!(
                    "has no coefficient vector over its {d} features"
                )));
            }
            let importance: Vec<f64> = (0..d)
                .map(|j| {
                    vectors
                        .iter()
                        .map(|v| v[j].abs() * std[j])
                        .fold(0.0, f64::max)
                })
                .collect();
            let order = by_size(&importance);
            let coefficient: Float64Array = order
                .iter()
                .map(|j| (vectors.len() == 1).then(|| vectors[0][*j]))
                .collect();
            (
                vec![
                    Field::new("importance", DataType::Float64, false),
                    Field::new("coefficient", DataType::Float64, true),
                    Field::new("stddev", DataType::Float64, false),
                ],
                vec![
                    Arc::new(StringArray::from_iter_values(
                        order.iter().map(|j| name(*j)),
                    )) as ArrayRef,
                    pick(&order, &importance),
                    Arc::new(coefficient),
                    pick(&order, &std),
                ],
            )
        }
        ImportanceKind::None => {
            return Err(unavailable(format!(
                "({kind}) has no feature importance; models that have one: {}",
                catalog::model_types_where(|a| a.importance != ImportanceKind::None)
            )));
        }
    };
    let schema = Arc::new(Schema::new(
        std::iter::once(Field::new("feature", DataType::Utf8, false))
            .chain(fields)
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// The task of a model's final stage (its evaluator and metrics), from the catalogue.
fn task_of(model: &LoadedModel) -> Result<Task> {
    catalog::algorithm_of(&model.metadata)
        .map(|a| a.task)
        .ok_or_else(|| {
            SqlError::Invalid(format!(
                "model '{}' ends in a stage that is not an algorithm of the catalogue; nothing to evaluate",
                model.label()
            ))
        })
}

/// A number literal argument (an integer, float or decimal), if given.
fn number_arg(function: &str, exprs: &[Expr], i: usize, what: &str) -> Result<Option<f64>> {
    let Some(e) = exprs.get(i) else {
        return Ok(None);
    };
    literal_number(e).map(Some).ok_or_else(|| {
        SqlError::Invalid(format!(
            "{function}: argument {} must be the {what} as a number literal",
            i + 1
        ))
    })
}

fn literal_number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => {
            let v = v.cast_to(&DataType::Float64).ok()?;
            match v {
                ScalarValue::Float64(Some(x)) if x.is_finite() => Some(x),
                _ => None,
            }
        }
        Expr::Negative(inner) => literal_number(inner).map(|x| -x),
        Expr::Cast(c) => literal_number(&c.expr),
        Expr::TryCast(c) => literal_number(&c.expr),
        _ => None,
    }
}

/// A list of number literals (`[0.1, 0.5]`), if given.
fn numbers_arg(function: &str, exprs: &[Expr], i: usize, what: &str) -> Result<Option<Vec<f64>>> {
    let Some(e) = exprs.get(i) else {
        return Ok(None);
    };
    let bad = || {
        SqlError::Invalid(format!(
            "{function}: argument {} must be the {what} as a list of number literals, e.g. [0.25, 0.5, 0.75]",
            i + 1
        ))
    };
    let items: Vec<Expr> = match e {
        Expr::ScalarFunction(f) if f.func.name() == "make_array" => f.args.clone(),
        Expr::Literal(ScalarValue::List(list), _) => {
            let values = list.value(0);
            let values = arrow::compute::cast(&values, &DataType::Float64).map_err(|_| bad())?;
            let values = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(bad)?;
            values
                .iter()
                .map(|v| v.map(|x| Expr::Literal(ScalarValue::Float64(Some(x)), None)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    let out: Vec<f64> = items
        .iter()
        .map(literal_number)
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if out.is_empty() {
        return Err(bad());
    }
    Ok(Some(out))
}

/// The class names of a classifier, in class-index order: its string or boolean labels, or
/// the indices themselves.
fn class_names(model: &LoadedModel, function: &str) -> Result<Vec<String>> {
    let rows = model
        .rows
        .as_ref()
        .map_err(|e| SqlError::Invalid(e.clone()))?;
    if let Some((classes, _)) = rows.encoder.as_ref().and_then(|e| e.classes()) {
        return Ok(classes.to_vec());
    }
    match rows.probability.as_ref().map(|p| p.return_type()) {
        Some(DataType::FixedSizeList(_, k)) => Ok((0..k).map(|i| i.to_string()).collect()),
        _ => Err(SqlError::Invalid(format!(
            "{function}: model '{}' has no class probabilities to count classes by",
            model.label()
        ))),
    }
}

/// What an evaluation function reports, and its columns, from its arguments.
fn report_of(
    kind: Kind,
    model: &LoadedModel,
    task: Task,
    exprs: &[Expr],
) -> Result<(Report, Vec<Field>)> {
    let f = kind.name();
    let binary = |what: &str| -> Result<()> {
        let classes = match task {
            Task::Classification => class_names(model, f)?.len(),
            _ => 0,
        };
        if classes != 2 {
            return Err(SqlError::Invalid(format!(
                "{f}: {what} needs a binary classifier; model '{}' is {}",
                model.label(),
                if classes == 0 {
                    "not a classifier".to_string()
                } else {
                    format!("a {classes}-class classifier")
                }
            )));
        }
        Ok(())
    };
    let threshold = match kind {
        Kind::RocCurve => None,
        _ => number_arg(f, exprs, 2, "decision threshold")?,
    };
    if let Some(t) = threshold {
        binary("a threshold")?;
        if !(0.0..=1.0).contains(&t) {
            return Err(SqlError::Invalid(format!(
                "{f}: the threshold must be between 0 and 1, got {t}"
            )));
        }
    }
    if exprs.len() > 3 {
        return Err(SqlError::Invalid(format!(
            "{f}: takes the model, the table or query, and one optional argument; got {} arguments",
            exprs.len()
        )));
    }
    Ok(match kind {
        Kind::ConfusionMatrix => {
            if task != Task::Classification {
                return Err(SqlError::Invalid(format!(
                    "{f}: model '{}' is not a classifier",
                    model.label()
                )));
            }
            let classes = class_names(model, f)?;
            let fields = std::iter::once(Field::new("expected_label", DataType::Utf8, false))
                .chain(
                    classes
                        .iter()
                        .map(|c| Field::new(c, DataType::Int64, false)),
                )
                .collect();
            (Report::Confusion { classes, threshold }, fields)
        }
        Kind::RocCurve => {
            binary("a ROC curve")?;
            let thresholds = numbers_arg(f, exprs, 2, "thresholds")?;
            let fields = vec![
                Field::new("threshold", DataType::Float64, false),
                Field::new("recall", DataType::Float64, false),
                Field::new("false_positive_rate", DataType::Float64, false),
                Field::new("true_positives", DataType::Int64, false),
                Field::new("false_positives", DataType::Int64, false),
                Field::new("true_negatives", DataType::Int64, false),
                Field::new("false_negatives", DataType::Int64, false),
            ];
            (Report::Roc { thresholds }, fields)
        }
        _ => {
            let fields = task
                .metrics()
                .iter()
                .map(|m| Field::new(m.name, DataType::Float64, true))
                .chain([Field::new("rows", DataType::Int64, false)])
                .collect();
            (Report::Metrics { threshold }, fields)
        }
    })
}

impl TableFunctionImpl for ModelTableFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let run = || -> Result<Arc<dyn TableProvider>> {
            let f = self.kind.name();
            let reference = string_arg(f, args.exprs(), 0, "model name")?;
            let model = self.catalog.resolve_blocking(&reference)?;
            let batch = match self.kind {
                Kind::TrainingInfo => training_info(&model)?,
                Kind::Weights => weights(&model)?,
                Kind::FeatureInfo => feature_info(&model)?,
                Kind::TrialInfo => trial_info(&model)?,
                Kind::PrincipalComponentInfo => principal_component_info(&model)?,
                Kind::FeatureImportance => feature_importance(&model)?,
                Kind::Evaluate | Kind::ConfusionMatrix | Kind::RocCurve => {
                    let source = string_arg(f, args.exprs(), 1, "table name or query")?;
                    let task = task_of(&model)?;
                    let (report, fields) = report_of(self.kind, &model, task, args.exprs())?;
                    let evaluation = Evaluation {
                        function: f,
                        base: self.base.clone(),
                        model,
                        task,
                        source,
                        report,
                        schema: Arc::new(Schema::new(fields)),
                    };
                    return self.deferred(&args, evaluation);
                }
                Kind::Transform => {
                    let t = TransformTable::plan(&args, model)?;
                    return self.deferred(&args, t);
                }
                Kind::ExplainPredict => {
                    let explanation = Explanation::plan(&args, self.base.clone(), model)?;
                    return self.deferred(&args, explanation);
                }
                Kind::GlobalExplain => match args.exprs().get(1) {
                    None => stored_global_explain(&model)?,
                    Some(_) => {
                        let source = string_arg(f, args.exprs(), 1, "table name or query")?;
                        if args.exprs().len() > 2 {
                            return Err(SqlError::Invalid(format!(
                                "{f}: takes the model and an optional table or query; got {} arguments",
                                args.exprs().len()
                            )));
                        }
                        // Fails now when the model has no attributions.
                        attributor(f, &model, feature_names(&model))?;
                        let global = GlobalExplain {
                            base: self.base.clone(),
                            model,
                            source,
                        };
                        return self.deferred(&args, global);
                    }
                },
            };
            let schema = batch.schema();
            Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
        };
        run().map_err(SqlError::into_datafusion)
    }
}

/// What an evaluation table function reports.
#[derive(Debug, Clone)]
enum Report {
    /// `ml_evaluate`: the task's metrics (binary ones with a decision threshold if given).
    Metrics { threshold: Option<f64> },
    /// `ml_confusion_matrix`: one row per actual class, one count column per predicted class.
    Confusion {
        classes: Vec<String>,
        threshold: Option<f64>,
    },
    /// `ml_roc_curve`: a row per threshold.
    Roc { thresholds: Option<Vec<f64>> },
}

/// An evaluation table function's result: computed when the query runs (it reads the source).
#[derive(Debug)]
struct Evaluation {
    function: &'static str,
    base: QuiverSession,
    model: Arc<LoadedModel>,
    task: Task,
    /// A table name, or a query.
    source: String,
    report: Report,
    schema: SchemaRef,
}

/// Whether an evaluation source is a query rather than a table name.
fn is_query(source: &str) -> bool {
    let head = source.trim_start().to_ascii_uppercase();
    head.starts_with("SELECT")
        || head.starts_with("WITH")
        || head.starts_with("VALUES")
        || head.starts_with('(')
}

impl Evaluation {
    /// The source's rows with the model's roles (features, label).
    async fn data(&self, ctx: &SessionContext) -> Result<Dataset> {
        let df = source_frame(ctx, &self.source).await?;
        let what = if is_query(&self.source) {
            "query"
        } else {
            "table"
        };
        let names: Vec<String> = match self.model.rows.as_ref().ok().and_then(|r| r.inputs.clone())
        {
            Some(cols) => cols,
            None => self
                .model
                .metadata
                .features
                .iter()
                .map(|f| f.name.clone())
                .collect(),
        };
        let preprocessed = self.model.rows.as_ref().is_ok_and(|r| r.encoder.is_some());
        let mut data = Dataset::new(df);
        if preprocessed {
            // The model's preprocessing reads the raw columns and indexes the label.
            let available = data.columns();
            for c in names.iter().chain(&self.model.metadata.label) {
                if !available.contains(c) {
                    return Err(SqlError::Invalid(format!(
                        "{}: {what} '{}' lacks the column '{c}' of model '{}' (it has {})",
                        self.function,
                        self.source,
                        self.model.label(),
                        available.join(", ")
                    )));
                }
            }
        } else {
            data = data.with_features(&names)?;
        }
        if let Some(label) = self.model.metadata.label.as_ref().filter(|_| !preprocessed) {
            data = data.with_label(label).map_err(|e| {
                SqlError::Invalid(format!(
                    "{}: {what} '{}' needs the label column '{label}' of model '{}': {e}",
                    self.function,
                    self.source,
                    self.model.label()
                ))
            })?;
        }
        Ok(data)
    }

    /// The model's output on `data`, its prediction at `threshold` when one is given (a
    /// binary classifier's positive class when the probability of class 1 reaches it).
    fn scored(&self, data: &Dataset, threshold: Option<f64>) -> Result<Dataset> {
        let scored = self.model.model.transform(data)?;
        let Some(t) = threshold else {
            return Ok(scored);
        };
        let element = ScalarUDF::from(VectorOpUdf::new(VectorOp::Element));
        let p1 = element.call(vec![col("probability"), lit(2i64)]);
        let prediction = when(p1.gt_eq(lit(t)), lit(1.0))
            .otherwise(lit(0.0))
            .map_err(quiver_engine::QuiverError::from)?;
        let df = scored
            .dataframe()
            .clone()
            .with_column("prediction", prediction)
            .map_err(quiver_engine::QuiverError::from)?;
        Ok(scored.with_dataframe(df)?)
    }

    async fn report(&self, state: &SessionState) -> Result<RecordBatch> {
        let ctx = SessionContext::new_with_state(state.clone());
        let data = self.data(&ctx).await?;
        let session = self.base.with_context(ctx);
        let batch = match &self.report {
            Report::Metrics { threshold } => {
                let rows = data.dataframe().clone().count().await? as i64;
                let metrics = match threshold {
                    // A classifier scores and counts the rows in one pass where it can.
                    None => {
                        self.task
                            .evaluate_model(&session, self.model.model.as_ref(), &data)
                            .await?
                    }
                    Some(_) => {
                        let scored = self.scored(&data, *threshold)?;
                        self.task.evaluate(&session, &scored).await?
                    }
                };
                let mut cols: Vec<ArrayRef> = self
                    .task
                    .metrics()
                    .iter()
                    .map(|m| {
                        Arc::new(Float64Array::from(vec![metrics[m.name].as_f64()])) as ArrayRef
                    })
                    .collect();
                cols.push(Arc::new(Int64Array::from(vec![rows])));
                RecordBatch::try_new(Arc::clone(&self.schema), cols)
            }
            Report::Confusion { classes, threshold } => {
                let scored = self.scored(&data, *threshold)?;
                let m = MulticlassClassificationEvaluator::new()
                    .evaluate(&session, &scored)
                    .await?;
                let k = classes.len();
                let slot = |c: f64| -> Result<usize> {
                    (c >= 0.0 && c.fract() == 0.0 && (c as usize) < k)
                        .then_some(c as usize)
                        .ok_or_else(|| {
                            SqlError::Invalid(format!(
                                "{}: class {c} is not one of the {k} classes of model '{}'",
                                self.function,
                                self.model.label()
                            ))
                        })
                };
                let mut counts = vec![vec![0i64; k]; k];
                for (i, actual) in m.classes.iter().enumerate() {
                    for (j, predicted) in m.classes.iter().enumerate() {
                        counts[slot(*actual)?][slot(*predicted)?] += m.confusion[i][j] as i64;
                    }
                }
                let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(classes.clone()))];
                for j in 0..k {
                    cols.push(Arc::new(Int64Array::from_iter_values(
                        counts.iter().map(|row| row[j]),
                    )));
                }
                RecordBatch::try_new(Arc::clone(&self.schema), cols)
            }
            Report::Roc { thresholds } => {
                let scored = self.scored(&data, None)?;
                let points = BinaryClassificationEvaluator::new()
                    .roc_curve(&session, &scored, thresholds.as_deref())
                    .await?;
                let f = |g: fn(&RocPoint) -> f64| -> ArrayRef {
                    Arc::new(Float64Array::from_iter_values(points.iter().map(g)))
                };
                let n = |g: fn(&RocPoint) -> u64| -> ArrayRef {
                    Arc::new(Int64Array::from_iter_values(
                        points.iter().map(|p| g(p) as i64),
                    ))
                };
                let cols = vec![
                    f(|p| p.threshold),
                    f(RocPoint::recall),
                    f(RocPoint::false_positive_rate),
                    n(|p| p.true_positives),
                    n(|p| p.false_positives),
                    n(|p| p.true_negatives),
                    n(|p| p.false_negatives),
                ];
                RecordBatch::try_new(Arc::clone(&self.schema), cols)
            }
        };
        Ok(batch.map_err(quiver_engine::QuiverError::from)?)
    }
}

/// The rows of an evaluation or explanation source: a table name or a query.
async fn source_frame(ctx: &SessionContext, source: &str) -> Result<DataFrame> {
    Ok(if is_query(source) {
        ctx.sql(source).await?
    } else {
        ctx.table(source).await?
    })
}

/// A table function's result that reads a source: computed when the query runs.
#[async_trait]
trait Computed: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> SchemaRef;
    async fn compute(&self, state: &SessionState) -> Result<Vec<RecordBatch>>;
}

/// The DataFusion session state behind a table function call.
fn state_of<'a>(function: &str, session: &'a dyn Session) -> Result<&'a SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| SqlError::Invalid(format!("{function} needs a DataFusion session state")))
}

impl ModelTableFunction {
    /// Embedded: `result` is computed when scanned (planning alone costs nothing). On a
    /// cluster the plan goes to the scheduler, which cannot rebuild this provider: the result
    /// is computed now (its queries run on the executors) and shipped inside the plan.
    fn deferred<T: Computed>(
        &self,
        args: &TableFunctionArgs,
        result: T,
    ) -> Result<Arc<dyn TableProvider>> {
        if !self.base.is_cluster() {
            return Ok(Arc::new(Deferred(result)));
        }
        let state = state_of(self.kind.name(), args.session())?;
        let batches = quiver_engine::fanout::block_on(result.compute(state))?;
        Ok(Arc::new(MemTable::try_new(result.schema(), vec![batches])?))
    }
}

#[async_trait]
impl Computed for Evaluation {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn compute(&self, state: &SessionState) -> Result<Vec<RecordBatch>> {
        Ok(vec![self.report(state).await?])
    }
}

/// A [`Computed`] result as a table.
#[derive(Debug)]
struct Deferred<T>(T);

#[async_trait]
impl<T: Computed> TableProvider for Deferred<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let run = async {
            let state = state_of("a model table function", state)?;
            self.0.compute(state).await
        };
        let batches = run.await.map_err(SqlError::into_datafusion)?;
        let table = MemTable::try_new(self.0.schema(), vec![batches])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// `ml_transform`: the model's TRANSFORM outputs over a table or query.
#[derive(Debug)]
struct TransformTable {
    stage: Arc<dyn quiver_mllib::DynModel>,
    source: String,
    schema: SchemaRef,
}

impl TransformTable {
    /// The model's TRANSFORM stage, or an error saying the model has none.
    fn stage(model: &LoadedModel) -> Result<Arc<dyn quiver_mllib::DynModel>> {
        let first = match model.model.row_stage() {
            quiver_mllib::RowStage::Pipeline(stages) => stages.first().cloned(),
            _ => None,
        };
        first
            .filter(|s| s.kind() == quiver_mllib::SqlTransformModel::KIND_NAME)
            .ok_or_else(|| {
                SqlError::Invalid(format!(
                    "{}: model '{}' was not created with a TRANSFORM clause",
                    Kind::Transform.name(),
                    model.label()
                ))
            })
    }

    fn frame(&self, df: DataFrame) -> Result<DataFrame> {
        Ok(self.stage.transform(&Dataset::new(df))?.into_dataframe())
    }

    fn plan(args: &TableFunctionArgs, model: Arc<LoadedModel>) -> Result<Self> {
        let f = Kind::Transform.name();
        let source = string_arg(f, args.exprs(), 1, "table name or query")?;
        if args.exprs().len() > 2 {
            return Err(SqlError::Invalid(format!(
                "{f}: takes the model and a table or query; got {} arguments",
                args.exprs().len()
            )));
        }
        let stage = Self::stage(&model)?;
        let state = state_of(f, args.session())?;
        let ctx = SessionContext::new_with_state(state.clone());
        let df = quiver_engine::fanout::block_on(source_frame(&ctx, &source))?;
        let mut t = TransformTable {
            stage,
            source,
            schema: Arc::new(Schema::empty()),
        };
        let out = t.frame(df).map_err(|e| {
            SqlError::Invalid(format!(
                "{f}: model '{}' on '{}': {e}",
                model.label(),
                t.source
            ))
        })?;
        t.schema = out.schema().inner().clone();
        Ok(t)
    }
}

#[async_trait]
impl Computed for TransformTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn compute(&self, state: &SessionState) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new_with_state(state.clone());
        let df = source_frame(&ctx, &self.source).await?;
        Ok(self.frame(df)?.collect().await?)
    }
}

/// `ml_explain_predict`: per source row the prediction, its top attributions, the baseline and
/// the explained value, then the source's columns.
#[derive(Debug)]
struct Explanation {
    base: QuiverSession,
    model: Arc<LoadedModel>,
    source: String,
    top_k: usize,
    schema: SchemaRef,
}

impl Explanation {
    /// Checks the arguments and plans the source (for its columns) before any row is read.
    fn plan(
        args: &TableFunctionArgs,
        base: QuiverSession,
        model: Arc<LoadedModel>,
    ) -> Result<Self> {
        let f = Kind::ExplainPredict.name();
        let source = string_arg(f, args.exprs(), 1, "table name or query")?;
        if args.exprs().len() > 3 {
            return Err(SqlError::Invalid(format!(
                "{f}: takes the model, the table or query, and top_k; got {} arguments",
                args.exprs().len()
            )));
        }
        let top_k = match number_arg(f, args.exprs(), 2, "number of top features (top_k)")? {
            None => 5,
            Some(k) if k >= 1.0 && k.fract() == 0.0 => k as usize,
            Some(k) => {
                return Err(SqlError::Invalid(format!(
                    "{f}: top_k must be a whole number of at least 1, got {k}"
                )));
            }
        };
        let a = attributor(f, &model, feature_names(&model))?;
        let state = state_of(f, args.session())?;
        let ctx = SessionContext::new_with_state(state.clone());
        let df = quiver_engine::fanout::block_on(source_frame(&ctx, &source))?;
        let source_schema = df.schema().inner().clone();
        let names: Vec<String> = source_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let what = if is_query(&source) { "query" } else { "table" };
        a.check_columns(&names, &format!("{what} '{source}'"))?;
        let predicted = format!(
            "predicted_{}",
            model.metadata.label.as_deref().unwrap_or("label")
        );
        let mut fields = vec![Field::new(&predicted, a.prediction_type(), true)];
        if a.has_probability() {
            fields.push(Field::new("probability", DataType::Float64, true));
        }
        fields.extend([
            Field::new(
                "top_feature_attributions",
                crate::explain::attributions_type(),
                false,
            ),
            Field::new("baseline_prediction_value", DataType::Float64, false),
            Field::new("prediction_value", DataType::Float64, false),
            Field::new("approximation_error", DataType::Float64, false),
        ]);
        for field in source_schema.fields() {
            if fields.iter().any(|f| f.name() == field.name()) {
                return Err(SqlError::Invalid(format!(
                    "{f}: the {what}'s column '{}' has the name of an output column; rename it",
                    field.name()
                )));
            }
            fields.push(field.as_ref().clone());
        }
        Ok(Explanation {
            base,
            model,
            source,
            top_k,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

#[async_trait]
impl Computed for Explanation {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn compute(&self, state: &SessionState) -> Result<Vec<RecordBatch>> {
        let f = Kind::ExplainPredict.name();
        let a = attributor(f, &self.model, feature_names(&self.model))?;
        let ctx = SessionContext::new_with_state(state.clone());
        let mut stream = source_frame(&ctx, &self.source)
            .await?
            .execute_stream()
            .await?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let explained = a.explain(&self.base, &batch)?;
            let (prediction, probability) = a.predict(&explained)?;
            let mut cols = vec![prediction];
            cols.extend(probability);
            cols.push(top_attributions(&explained, &a.features, self.top_k));
            cols.extend(value_columns(&explained));
            cols.extend(batch.columns().iter().cloned());
            out.push(
                RecordBatch::try_new(Arc::clone(&self.schema), cols)
                    .map_err(quiver_engine::QuiverError::from)?,
            );
        }
        Ok(out)
    }
}

/// `ml_global_explain` over a table or query.
#[derive(Debug)]
struct GlobalExplain {
    base: QuiverSession,
    model: Arc<LoadedModel>,
    source: String,
}

#[async_trait]
impl Computed for GlobalExplain {
    fn schema(&self) -> SchemaRef {
        global_explain_schema()
    }

    async fn compute(&self, state: &SessionState) -> Result<Vec<RecordBatch>> {
        let f = Kind::GlobalExplain.name();
        let a = attributor(f, &self.model, feature_names(&self.model))?;
        let ctx = SessionContext::new_with_state(state.clone());
        let df = source_frame(&ctx, &self.source).await?;
        let names: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let what = if is_query(&self.source) {
            "query"
        } else {
            "table"
        };
        a.check_columns(&names, &format!("{what} '{}'", self.source))?;
        let total = GlobalAttribution::over(&self.base, &a, df.execute_stream().await?).await?;
        let ranked: Vec<(String, f64)> = total
            .ranked()
            .into_iter()
            .map(|(j, v)| (a.features[j].clone(), v))
            .collect();
        Ok(vec![global_explain_batch(&ranked)?])
    }
}

fn global_explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("attribution", DataType::Float64, false),
    ]))
}

/// (feature, mean absolute attribution) rows, as given.
fn global_explain_batch(ranked: &[(String, f64)]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            ranked.iter().map(|(f, _)| f.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(
            ranked.iter().map(|(_, v)| *v),
        )),
    ];
    Ok(RecordBatch::try_new(global_explain_schema(), cols)
        .map_err(quiver_engine::QuiverError::from)?)
}

/// The global explanation `CREATE MODEL … enable_global_explain = TRUE` recorded.
fn stored_global_explain(model: &LoadedModel) -> Result<RecordBatch> {
    let f = Kind::GlobalExplain.name();
    let Some(rows) = model.metadata.training_summary["global_explain"].as_array() else {
        // Say first whether the model could have one at all.
        attributor(f, model, feature_names(model))?;
        return Err(SqlError::Invalid(format!(
            "{f}: model '{}' was trained without enable_global_explain = TRUE; train it with that option, or pass a table or query to explain: {f}('{}', 'SELECT …')",
            model.label(),
            model.metadata.name
        )));
    };
    let ranked: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["feature"].as_str().unwrap_or_default().to_string(),
                r["attribution"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    global_explain_batch(&ranked)
}
