//! `CREATE MODEL … OPTIONS (…) AS SELECT …`: fits a model on the query's result (features =
//! every selected column but the label), evaluates it, stores a new version.
//!
//! Options follow BigQuery ML's names:
//!
//! | option | model types | meaning |
//! |---|---|---|
//! | `model_type` | all | `'logistic_reg'`, `'linear_reg'` or `'kmeans'` (required) |
//! | `input_label_cols` | supervised | `['label_column']` (required for them) |
//! | `max_iterations` | all | optimiser iterations / Lloyd passes |
//! | `l1_reg`, `l2_reg` | supervised | penalty weights: `l1·‖w‖₁ + l2/2·‖w‖²` on standardised coefficients |
//! | `fit_intercept` | supervised | default TRUE |
//! | `standardize_features` | supervised | penalise standardised coefficients, default TRUE |
//! | `min_rel_progress` | logistic_reg, kmeans | stop when the relative improvement falls below |
//! | `num_clusters` | kmeans | k (required) |
//! | `kmeans_init_method` | kmeans | `'kmeans++'` (k-means‖, default) or `'random'` |
//! | `data_split_method` | all | `'auto_split'` (default: 20% held out from 500 rows), `'random'`, `'no_split'` |
//! | `data_split_eval_fraction` | all | held-out fraction for `'random'` (default 0.2) |
//! | `seed` | all | seed of the split and of k-means' initialisation (default 42) |
//! | `num_trials`, `max_parallel_trials`, `hparam_tuning_algorithm`, `hparam_tuning_objectives` | all | hyperparameter tuning: see [`crate::hparam`] |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::DataFrame;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Statement as SQLStatement};
use quiver_engine::store::FeatureField;
use quiver_engine::{Dataset, QuiverSession, Summarizer};
use quiver_mllib::{
    BinaryClassificationEvaluator, ClusteringEvaluator, Estimator, KMeans, KMeansInit,
    LinearRegression, LogisticRegression, Model, MulticlassClassificationEvaluator, Pipeline,
    PipelineModel, RegressionEvaluator, Transformer, VectorAssembler,
};
use serde_json::{Value, json};

use crate::error::{Result, SqlError};
use crate::hparam::{TUNING_OPTIONS, Tuning};
use crate::models::ModelCatalog;
use crate::statement::{
    CreateModel, expr_bool, expr_f64, expr_json, expr_str, expr_str_list, expr_usize,
};

/// The model types and the options each accepts.
const COMMON: &[&str] = &[
    "model_type",
    "max_iterations",
    "data_split_method",
    "data_split_eval_fraction",
    "seed",
];
const SUPERVISED: &[&str] = &[
    "input_label_cols",
    "l1_reg",
    "l2_reg",
    "fit_intercept",
    "standardize_features",
];

fn valid_options(model_type: &str) -> Option<Vec<&'static str>> {
    let extra: &[&str] = match model_type {
        "logistic_reg" => &["min_rel_progress"],
        "linear_reg" => &[],
        "kmeans" => &["num_clusters", "kmeans_init_method", "min_rel_progress"],
        _ => return None,
    };
    let mut all: Vec<&str> = COMMON.to_vec();
    all.extend(TUNING_OPTIONS);
    if model_type != "kmeans" {
        all.extend(SUPERVISED);
    }
    all.extend(extra);
    Some(all)
}

/// The validated options of one statement.
struct Options {
    model_type: String,
    map: BTreeMap<String, Expr>,
}

impl Options {
    fn parse(c: &CreateModel) -> Result<Self> {
        let map = c.option_map()?;
        let model_type = match map.get("model_type") {
            Some(e) => expr_str("model_type", e)?.to_ascii_lowercase(),
            None => {
                return Err(SqlError::InvalidOption {
                    option: "model_type".to_string(),
                    reason: "missing; use 'logistic_reg', 'linear_reg' or 'kmeans'".to_string(),
                });
            }
        };
        let Some(valid) = valid_options(&model_type) else {
            return Err(SqlError::InvalidOption {
                option: "model_type".to_string(),
                reason: format!(
                    "unknown model_type '{model_type}'; use 'logistic_reg', 'linear_reg' or 'kmeans'"
                ),
            });
        };
        for k in map.keys() {
            if !valid.contains(&k.as_str()) {
                return Err(SqlError::UnknownOption {
                    option: k.clone(),
                    model_type: model_type.clone(),
                    valid: valid.join(", "),
                });
            }
        }
        Ok(Options { model_type, map })
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.map.get(key).map(|e| expr_f64(key, e)).transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.map.get(key).map(|e| expr_usize(key, e)).transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.map.get(key).map(|e| expr_bool(key, e)).transpose()
    }

    fn str(&self, key: &str) -> Result<Option<String>> {
        self.map.get(key).map(|e| expr_str(key, e)).transpose()
    }

    fn non_negative(&self, key: &str) -> Result<f64> {
        match self.f64(key)? {
            None => Ok(0.0),
            Some(v) if v >= 0.0 && v.is_finite() => Ok(v),
            Some(v) => Err(SqlError::InvalidOption {
                option: key.to_string(),
                reason: format!("must be ≥ 0, got {v}"),
            }),
        }
    }

    fn positive_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.usize(key)? {
            Some(0) => Err(SqlError::InvalidOption {
                option: key.to_string(),
                reason: "must be at least 1".to_string(),
            }),
            other => Ok(other),
        }
    }

    /// `(reg_param, elastic_net_param)` from `l1_reg` and `l2_reg`.
    fn regularization(&self) -> Result<(f64, f64)> {
        let (l1, l2) = (self.non_negative("l1_reg")?, self.non_negative("l2_reg")?);
        let total = l1 + l2;
        Ok(if total > 0.0 {
            (total, l1 / total)
        } else {
            (0.0, 0.0)
        })
    }

    fn value_json(&self) -> Value {
        Value::Object(
            self.map
                .iter()
                .map(|(k, v)| (k.clone(), expr_json(v)))
                .collect(),
        )
    }
}

/// How the rows are split into training and evaluation sets.
enum Split {
    None,
    Random(f64),
}

fn split_of(o: &Options, rows: usize) -> Result<Split> {
    let method = o
        .str("data_split_method")?
        .unwrap_or_else(|| "auto_split".to_string())
        .to_ascii_lowercase();
    let fraction = match o.f64("data_split_eval_fraction")? {
        None => 0.2,
        Some(f) if f > 0.0 && f < 1.0 => f,
        Some(f) => {
            return Err(SqlError::InvalidOption {
                option: "data_split_eval_fraction".to_string(),
                reason: format!("must be strictly between 0 and 1, got {f}"),
            });
        }
    };
    match method.as_str() {
        "no_split" => Ok(Split::None),
        "random" => Ok(Split::Random(fraction)),
        "auto_split" if rows < 500 => Ok(Split::None),
        "auto_split" => Ok(Split::Random(0.2)),
        other => Err(SqlError::InvalidOption {
            option: "data_split_method".to_string(),
            reason: format!("unknown method '{other}'; use 'auto_split', 'random' or 'no_split'"),
        }),
    }
}

/// Runs the training query.
async fn query_frame(session: &QuiverSession, c: &CreateModel) -> Result<DataFrame> {
    let statement = DFStatement::Statement(Box::new(SQLStatement::Query(c.query.clone())));
    let ctx = session.context();
    let plan = ctx.state().statement_to_plan(statement).await?;
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// What `CREATE MODEL` prints.
pub async fn create_model(
    session: &QuiverSession,
    catalog: &ModelCatalog,
    c: &CreateModel,
) -> Result<RecordBatch> {
    let started = Instant::now();
    let mut o = Options::parse(c)?;
    // On a cluster the executors run the trials; here this process's cores bound them.
    let cores = (!session.is_cluster()).then(|| session.config().compute_threads);
    let tuning = Tuning::take(&mut o.map, &o.model_type, cores)?;
    let store = catalog.store();
    let exists = !store.versions(&c.name).await?.is_empty();
    if exists && !c.or_replace {
        if c.if_not_exists {
            return Ok(message_batch(&format!(
                "model '{}' exists; nothing done",
                c.name
            )));
        }
        return Err(SqlError::ModelExists {
            name: c.name.clone(),
        });
    }
    let df = query_frame(session, c).await?;
    let schema = df.schema().clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let label = if o.model_type == "kmeans" {
        None
    } else {
        let cols = match o.map.get("input_label_cols") {
            Some(e) => expr_str_list("input_label_cols", e)?,
            None => {
                return Err(SqlError::InvalidOption {
                    option: "input_label_cols".to_string(),
                    reason: format!(
                        "missing; model_type '{}' needs the label column, e.g. input_label_cols = ['y']",
                        o.model_type
                    ),
                });
            }
        };
        let [label] = cols.as_slice() else {
            return Err(SqlError::InvalidOption {
                option: "input_label_cols".to_string(),
                reason: format!("expects exactly one column, got {}", cols.len()),
            });
        };
        if !columns.contains(label) {
            return Err(SqlError::InvalidOption {
                option: "input_label_cols".to_string(),
                reason: format!(
                    "label column '{label}' is not among the query's columns ({})",
                    columns.join(", ")
                ),
            });
        }
        Some(label.clone())
    };
    let mut features = Vec::new();
    for f in schema.fields() {
        if Some(f.name()) == label.as_ref() {
            continue;
        }
        let t = f.data_type();
        if !(t.is_integer() || t.is_floating()) {
            return Err(SqlError::Invalid(format!(
                "feature column '{}' has type {t}; CREATE MODEL trains on numeric columns (cast it, or encode it first)",
                f.name()
            )));
        }
        features.push(FeatureField {
            name: f.name().clone(),
            data_type: t.to_string(),
        });
    }
    if features.is_empty() {
        return Err(SqlError::Invalid(
            "the training query selects no feature columns besides the label".to_string(),
        ));
    }
    let names: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
    let mut data = Dataset::new(df).with_features(&names)?;
    if let Some(l) = &label {
        data = data.with_label(l)?;
    }
    let rows = data.dataframe().clone().count().await?;
    let seed = o.usize("seed")?.unwrap_or(42) as u64;
    let (train, eval) = match split_of(&o, rows)? {
        Split::None => (data.clone(), None),
        Split::Random(f) => {
            let mut parts = data.random_split(&[1.0 - f, f], seed)?;
            let eval = parts.pop();
            (parts.pop().expect("two parts"), eval)
        }
    };
    let tuning = match &tuning {
        Some(t) => {
            let fraction = match split_of(&o, rows)? {
                Split::Random(f) => f,
                Split::None => o.f64("data_split_eval_fraction")?.unwrap_or(0.2),
            };
            // The best trial's values replace the HPARAM_… options for the final fit.
            let record = t
                .run(
                    session,
                    store.absolute_url(),
                    &c.name,
                    data.dataframe().clone(),
                    &o.model_type,
                    label.as_deref(),
                    &names,
                    &mut o.map,
                    fraction,
                    seed,
                )
                .await?;
            Some(record)
        }
        None => None,
    };
    let max_iter = o.positive_usize("max_iterations")?;
    let tol = o.f64("min_rel_progress")?;
    let assembler = VectorAssembler::new(&names);
    let pipeline = match o.model_type.as_str() {
        "logistic_reg" => {
            let (reg, mix) = o.regularization()?;
            let mut e = LogisticRegression::new()
                .reg_param(reg)
                .elastic_net_param(mix)
                .fit_intercept(o.bool("fit_intercept")?.unwrap_or(true))
                .standardization(o.bool("standardize_features")?.unwrap_or(true));
            if let Some(n) = max_iter {
                e = e.max_iter(n);
            }
            if let Some(t) = tol {
                e = e.tol(t);
            }
            Pipeline::new().transformer(assembler).estimator(e)
        }
        "linear_reg" => {
            let (reg, mix) = o.regularization()?;
            let e = LinearRegression::new()
                .reg_param(reg)
                .elastic_net_param(mix)
                .fit_intercept(o.bool("fit_intercept")?.unwrap_or(true))
                .standardization(o.bool("standardize_features")?.unwrap_or(true));
            Pipeline::new().transformer(assembler).estimator(e)
        }
        _ => {
            let k = o
                .positive_usize("num_clusters")?
                .ok_or_else(|| SqlError::InvalidOption {
                    option: "num_clusters".to_string(),
                    reason: "missing; kmeans needs the number of clusters".to_string(),
                })?;
            let init = match o.str("kmeans_init_method")?.as_deref() {
                None | Some("kmeans++") | Some("k-means||") => KMeansInit::KMeansParallel,
                Some("random") => KMeansInit::Random,
                Some(other) => {
                    return Err(SqlError::InvalidOption {
                        option: "kmeans_init_method".to_string(),
                        reason: format!("unknown method '{other}'; use 'kmeans++' or 'random'"),
                    });
                }
            };
            let mut e = KMeans::new().k(k).seed(seed).init_mode(init);
            if let Some(n) = max_iter {
                e = e.max_iter(n);
            }
            if let Some(t) = tol {
                e = e.tol(t);
            }
            Pipeline::new().transformer(assembler).estimator(e)
        }
    };
    let model = pipeline.fit(session, &train).await?;
    let train_rows = train.dataframe().clone().count().await?;
    let eval_rows = match &eval {
        Some(e) => e.dataframe().clone().count().await?,
        None => 0,
    };
    // Metrics on the held-out rows when there are some, else on the training rows.
    let scored_on = match &eval {
        Some(e) if eval_rows > 0 => e,
        _ => &train,
    };
    let metrics = evaluate(session, &o.model_type, &model, scored_on).await?;
    let summary = train_summary(session, &model, &train).await?;
    let (mut draft, parts) = model.to_parts()?;
    draft.kind = PipelineModel::KIND.to_string();
    draft.format_version = PipelineModel::FORMAT_VERSION;
    draft.features = features;
    draft.label = label.clone();
    draft.metrics = json!({
        "evaluated_on": if eval_rows > 0 { "held-out rows" } else { "training rows" },
        "values": metrics,
    });
    draft.training_summary = json!({
        "model_type": o.model_type,
        "options": o.value_json(),
        "query": c.query.to_string(),
        "rows_train": train_rows,
        "rows_eval": eval_rows,
        "final_stage": summary.0,
        "feature_info": summary.1,
        "wall_time_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    if let Some(t) = tuning {
        draft.training_summary["tuning"] = t;
    }
    let meta = store
        .save(&c.name, draft, parts.into_iter().map(Ok))
        .await?;
    catalog.forget(&c.name);
    let stage = &meta.training_summary["final_stage"];
    let iterations = stage["iterations"].as_u64().unwrap_or(1) as i64;
    let loss = stage["objective_history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(Value::as_f64)
        .or_else(|| stage["inertia"].as_f64());
    let schema = Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("model_type", DataType::Utf8, false),
        Field::new("rows_train", DataType::Int64, false),
        Field::new("rows_eval", DataType::Int64, false),
        Field::new("iterations", DataType::Int64, false),
        Field::new("final_loss", DataType::Float64, true),
        Field::new("metrics", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![c.name.clone()])),
        Arc::new(Int64Array::from(vec![meta.version as i64])),
        Arc::new(StringArray::from(vec![o.model_type.clone()])),
        Arc::new(Int64Array::from(vec![train_rows as i64])),
        Arc::new(Int64Array::from(vec![eval_rows as i64])),
        Arc::new(Int64Array::from(vec![iterations])),
        Arc::new(Float64Array::from(vec![loss])),
        Arc::new(StringArray::from(vec![metrics.to_string()])),
    ];
    Ok(RecordBatch::try_new(schema, cols).map_err(quiver_engine::QuiverError::from)?)
}

/// The evaluator metrics of `model` on `data`, by model type.
pub async fn evaluate(
    session: &QuiverSession,
    model_type: &str,
    model: &dyn Transformer,
    data: &Dataset,
) -> Result<Value> {
    let scored = model.transform(data)?;
    Ok(match model_type {
        "logistic_reg" => {
            let m = MulticlassClassificationEvaluator::new()
                .evaluate(session, &scored)
                .await?;
            let mut out = json!({
                "accuracy": m.accuracy,
                "f1": m.f1,
                "weighted_precision": m.weighted_precision,
                "weighted_recall": m.weighted_recall,
            });
            if m.classes.len() <= 2
                && let Ok(b) = BinaryClassificationEvaluator::new()
                    .evaluate(session, &scored)
                    .await
            {
                out["area_under_roc"] = json!(b.area_under_roc);
                out["area_under_pr"] = json!(b.area_under_pr);
                out["log_loss"] = json!(b.log_loss);
            }
            out
        }
        "linear_reg" => {
            let m = RegressionEvaluator::new()
                .evaluate(session, &scored)
                .await?;
            json!({ "rmse": m.rmse, "mse": m.mse, "mae": m.mae, "r2": m.r2 })
        }
        _ => {
            let m = ClusteringEvaluator::new().evaluate(session, &scored).await;
            match m {
                Ok(m) => json!({
                    "silhouette": m.silhouette,
                    "within_ss": m.within_ss,
                    "cluster_sizes": m.cluster_sizes,
                }),
                // One non-empty cluster: no silhouette, the spread still means something.
                Err(e) => json!({ "error": e.to_string() }),
            }
        }
    })
}

/// The final stage's training summary and per-feature statistics of the training rows.
async fn train_summary(
    session: &QuiverSession,
    model: &PipelineModel,
    train: &Dataset,
) -> Result<(Value, Value)> {
    let last = model
        .stages()
        .last()
        .map(|s| s.dyn_parts())
        .transpose()?
        .map(|(draft, _)| draft.training_summary)
        .unwrap_or(Value::Null);
    let prepared = session.prepare(train, session.runner()).await?;
    let s = prepared
        .aggregate(Arc::new(Summarizer::new(prepared.dim())))
        .await?;
    let names = train.feature_names()?;
    let info: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            json!({
                "feature": n,
                "min": s.min[j],
                "max": s.max[j],
                "mean": s.mean[j],
                "stddev": s.std[j],
                "count": s.count,
            })
        })
        .collect();
    Ok((last, Value::Array(info)))
}

/// A one-column, one-row result.
pub fn message_batch(message: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Utf8,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![message]))])
        .expect("a valid one-column batch")
}
