//! `CREATE MODEL … OPTIONS (…) AS SELECT …`: fits a model on the query's result (features =
//! every selected column but the label), evaluates it, stores a new version.
//!
//! The model types and the options each takes come from the catalogue
//! (`quiver_mllib::catalog`): the statement builds a `TrainEval` from them — the same
//! specification a search trial trains — runs the search when tuning, and fits the pipeline
//! `VectorAssembler → estimator` on the training rows. The options every model type takes
//! (BigQuery ML's names):
//!
//! | option | model types | meaning |
//! |---|---|---|
//! | `model_type` | all | the catalogue's SQL names: `'logistic_reg'`, `'linear_reg'`, `'kmeans'`, … (required) |
//! | `input_label_cols` | supervised | `['label_column']` (required for them) |
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
use quiver_mllib::catalog::{self, Algorithm, OptionType, Task};
use quiver_mllib::tuning::objective::pipeline;
use quiver_mllib::tuning::{Point, TrainEval};
use quiver_mllib::{Estimator, Model, PipelineModel, Transformer};
use serde_json::{Value, json};

use crate::error::{Result, SqlError};
use crate::hparam::{TUNING_OPTIONS, Tuning};
use crate::models::ModelCatalog;
use crate::statement::{
    CreateModel, expr_bool, expr_f64, expr_json, expr_str, expr_str_list, expr_usize,
};

/// The options every model type accepts (besides the tuning options).
const COMMON: &[&str] = &[
    "model_type",
    "data_split_method",
    "data_split_eval_fraction",
    "seed",
];

/// The options `algorithm` accepts in a statement.
fn valid_options(algorithm: &Algorithm) -> Vec<&'static str> {
    let mut all: Vec<&str> = COMMON.to_vec();
    all.extend(TUNING_OPTIONS);
    if algorithm.task.supervised() {
        all.push("input_label_cols");
    }
    for o in algorithm.option_names() {
        if !all.contains(&o) {
            all.push(o);
        }
    }
    all
}

/// The validated options of one statement.
struct Options {
    model_type: String,
    algorithm: &'static Algorithm,
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
                    reason: format!("missing; use one of {}", catalog::model_type_list()),
                });
            }
        };
        let Some(algorithm) = catalog::by_model_type(&model_type) else {
            return Err(SqlError::InvalidOption {
                option: "model_type".to_string(),
                reason: format!(
                    "unknown model_type '{model_type}'; use one of {}",
                    catalog::model_type_list()
                ),
            });
        };
        let valid = valid_options(algorithm);
        for k in map.keys() {
            if !valid.contains(&k.as_str()) {
                return Err(SqlError::Mllib(quiver_mllib::MllibError::UnknownOption {
                    option: k.clone(),
                    model_type: model_type.clone(),
                    valid: valid.join(", "),
                }));
            }
        }
        Ok(Options {
            model_type,
            algorithm,
            map,
        })
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.map.get(key).map(|e| expr_f64(key, e)).transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.map.get(key).map(|e| expr_usize(key, e)).transpose()
    }

    fn str(&self, key: &str) -> Result<Option<String>> {
        self.map.get(key).map(|e| expr_str(key, e)).transpose()
    }

    /// The algorithm's options in the statement (tuned ones already taken out) as SQL option
    /// values, each read by its type and checked by the catalogue; a required option that is
    /// neither given nor tuned is an error naming it.
    fn algorithm_options(&self, tuned: &[String]) -> Result<Point> {
        let a = self.algorithm;
        let mut out = Point::new();
        for o in a.options {
            let Some(e) = self.map.get(o.name) else {
                if o.required && !tuned.iter().any(|t| t == o.name) {
                    return Err(SqlError::InvalidOption {
                        option: o.name.to_string(),
                        reason: format!("missing; {} needs {}", self.model_type, o.doc),
                    });
                }
                continue;
            };
            let v = match o.ty {
                OptionType::NonNegative | OptionType::Fraction => json!(expr_f64(o.name, e)?),
                OptionType::Count | OptionType::Whole => json!(expr_usize(o.name, e)?),
                OptionType::Bool => json!(expr_bool(o.name, e)?),
                OptionType::Text(_) => json!(expr_str(o.name, e)?),
            };
            o.convert(&v)?;
            out.insert(o.name.to_string(), v);
        }
        Ok(out)
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
    let tuning = Tuning::take(&mut o.map, o.algorithm, cores)?;
    let tuned: Vec<String> = tuning.as_ref().map(Tuning::tuned).unwrap_or_default();
    let fixed = o.algorithm_options(&tuned)?;
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
    let label = if !o.algorithm.task.supervised() {
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
    // What a trial trains, and so what the stored model is: the estimator with the
    // statement's options, then the best trial's values of the tuned ones.
    let mut spec = TrainEval::new("", o.algorithm.name);
    spec.features = Some(names.clone());
    spec.label = label.clone();
    spec.params = fixed.clone();
    spec.sql_options = true;
    let tuning = match &tuning {
        Some(t) => {
            let fraction = match split_of(&o, rows)? {
                Split::Random(f) => f,
                Split::None => o.f64("data_split_eval_fraction")?.unwrap_or(0.2),
            };
            let (record, best) = t
                .run(
                    session,
                    store.absolute_url(),
                    &c.name,
                    data.dataframe().clone(),
                    label.as_deref(),
                    &names,
                    &fixed,
                    fraction,
                    seed,
                )
                .await?;
            spec.params.extend(best);
            Some(record)
        }
        None => None,
    };
    let model = pipeline(&spec, &names)?.fit(session, &train).await?;
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
    let metrics = evaluate(session, o.algorithm.task, &model, scored_on).await?;
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
    // The statement's options, tuned ones at the best trial's values.
    let mut options = o.value_json();
    for (k, v) in &spec.params {
        options[k] = v.clone();
    }
    draft.training_summary = json!({
        "model_type": o.model_type,
        "options": options,
        "params": spec.estimator_params()?,
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

/// The evaluator metrics of `model` on `data`, by the model's task.
pub async fn evaluate(
    session: &QuiverSession,
    task: Task,
    model: &dyn Transformer,
    data: &Dataset,
) -> Result<Value> {
    let scored = model.transform(data)?;
    Ok(task.evaluate(session, &scored).await?)
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
