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
//! | `category_encoding_method` | all | `'one_hot_encoding'` (default; trees: `'label_encoding'`), `'dummy_encoding'`, `'label_encoding'` |
//! | `enable_global_explain` | linear models, trees | `TRUE` records the mean absolute attribution per feature over the training rows (`ml_global_explain`) |
//! | `num_trials`, `max_parallel_trials`, `hparam_tuning_algorithm`, `hparam_tuning_objectives`, `hparam_tuning_pruner` | all | hyperparameter tuning: see [`crate::hparam`] |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::DataFrame;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr, Statement as SQLStatement};
use quiver_engine::store::FeatureField;
use quiver_engine::{Dataset, QuiverSession, SPLIT_DRAW};
use quiver_mllib::catalog::{self, Algorithm, Attribution, OptionType, Task};
use quiver_mllib::feature::{
    CategoryEncoding, ColumnKind, MissingNumbers, OnePassFit, OnePassPart, OnePassRows,
    Preprocessor, PreprocessorModel, SqlTransformModel,
};
use quiver_mllib::pipeline::DynModel;
use quiver_mllib::tuning::objective::pipeline;
use quiver_mllib::tuning::{Point, TrainEval};
use quiver_mllib::{Estimator, Model, PipelineModel, RowPredictor, Transformer};
use serde_json::{Value, json};

use crate::error::{Result, SqlError};
use crate::explain::{Attributor, GlobalAttribution};
use crate::hparam::{TUNING_OPTIONS, TrialRows, Tuning};
use crate::models::ModelCatalog;
use crate::statement::{
    CreateModel, expr_bool, expr_f64, expr_json, expr_str, expr_str_list, expr_usize,
};

/// The column the automatic preprocessing writes the feature vector to.
const ENCODED: &str = "__quiver_features";

/// The options every model type accepts (besides the tuning options).
const COMMON: &[&str] = &[
    "model_type",
    "category_encoding_method",
    "enable_global_explain",
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
        "auto_split" if rows < AUTO_SPLIT_MIN_ROWS => Ok(Split::None),
        "auto_split" => Ok(Split::Random(0.2)),
        other => Err(SqlError::InvalidOption {
            option: "data_split_method".to_string(),
            reason: format!("unknown method '{other}'; use 'auto_split', 'random' or 'no_split'"),
        }),
    }
}

/// `auto_split` holds rows out from this many rows of query result up; below, it does not split.
const AUTO_SPLIT_MIN_ROWS: usize = 500;

/// Runs the training query.
async fn query_frame(session: &QuiverSession, c: &CreateModel) -> Result<DataFrame> {
    let statement = DFStatement::Statement(Box::new(SQLStatement::Query(c.query.clone())));
    let ctx = session.context();
    let plan = ctx.state().statement_to_plan(statement).await?;
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// Embedded: the training query's result in memory when it fits `limit` bytes (partitions
/// read in parallel, given up as soon as they exceed it), so the query runs once and every
/// later pass reads memory. `None` when it is larger (or cannot be held as a table): the
/// passes then run the query again. On a cluster: the query under a cache node, each executor
/// keeping the partitions it reads ([`QuiverSession::cache_on_executors`]).
async fn materialise(
    session: &QuiverSession,
    df: &DataFrame,
    limit: usize,
) -> Result<Option<DataFrame>> {
    if session.is_cluster() {
        // Kept by the executors, each for the partitions it reads (quiver.cluster.cache).
        return Ok(session.cache_on_executors(df).await);
    }
    if limit == 0 {
        return Ok(None);
    }
    let keep = |kept: &mut Vec<RecordBatch>, b: RecordBatch| {
        let bytes = b.get_array_memory_size();
        kept.push(b);
        Ok(Some(bytes))
    };
    let Some(partitions) = read_within(df, limit, Vec::new, keep).await? else {
        return Ok(None);
    };
    let schema = Arc::new(df.schema().as_arrow().clone());
    let Ok(table) = datafusion::datasource::MemTable::try_new(schema, partitions) else {
        return Ok(None);
    };
    Ok(Some(session.context().read_table(Arc::new(table))?))
}

/// Reads `df`'s partitions in parallel, each batch handed to `keep` with its partition's
/// state (`keep` returns the bytes it kept, or `None` to give up); the states in partition
/// order, or `None` as soon as one gives up or more than `limit` bytes are kept in all.
async fn read_within<S, I, K>(
    df: &DataFrame,
    limit: usize,
    init: I,
    keep: K,
) -> Result<Option<Vec<S>>>
where
    S: Send + 'static,
    I: Fn() -> S,
    K: Fn(&mut S, RecordBatch) -> Result<Option<usize>> + Clone + Send + 'static,
{
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let used = Arc::new(AtomicUsize::new(0));
    let streams = df.clone().execute_stream_partitioned().await?;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let used = Arc::clone(&used);
            let keep = keep.clone();
            let mut state = init();
            tokio::spawn(async move {
                while let Some(b) = stream.next().await {
                    let Some(bytes) = keep(&mut state, b?)? else {
                        return Ok(None);
                    };
                    if used.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
                        return Ok(None);
                    }
                }
                Ok::<_, SqlError>(Some(state))
            })
        })
        .collect();
    let mut states = Vec::with_capacity(tasks.len());
    let mut tasks = tasks.into_iter();
    while let Some(t) = tasks.next() {
        let outcome = t
            .await
            .map_err(|e| SqlError::Invalid(format!("reading the training rows: {e}")))
            .and_then(|r| r);
        match outcome {
            Ok(Some(s)) => states.push(s),
            other => {
                // The other partitions' reads are not needed any more.
                tasks.for_each(|t| t.abort());
                return other.map(|_| None);
            }
        }
    }
    Ok(Some(states))
}

/// What the one read of the training query ([`read_encoded`]) gave.
enum OneRead {
    /// The rows encoded as read.
    Encoded(Box<EncodedRows>),
    /// Fewer rows than `auto_split` splits (the read split them as for more), or a value the
    /// encoding refuses: the rows as the query returned them, kept in memory while they were
    /// that few, for the usual path — the query does not run again.
    Rows(DataFrame),
    /// Not encoded as read: the usual path runs the query.
    Not,
}

/// The fitted preprocessing, the encoded training rows, the held-out ones (if any), and the
/// rows the query returned.
struct EncodedRows {
    prep: PreprocessorModel,
    train: Dataset,
    eval: Option<Dataset>,
    rows: usize,
}

/// Embedded: the rows split as the statement's options `o` ask, the preprocessing fitted and
/// the rows encoded in the one read of the training query ([`OnePassFit`]), the encoded rows
/// kept in memory (not the rows as read). [`OneRead::Not`] when they do not fit the memory
/// budget (`quiver.training_cache`) or hold a value the encoding refuses (the usual path
/// reports it with its row); [`OneRead::Rows`] when they turn out too few for the split
/// planned for larger results (auto_split does not split under [`AUTO_SPLIT_MIN_ROWS`] rows).
/// While the rows read are fewer than that, the read also keeps them as read (a result that
/// small costs little to hold, and an expensive query over much data, say an aggregate, would
/// otherwise run twice).
async fn read_encoded(
    session: &QuiverSession,
    df: &DataFrame,
    o: &Options,
    fit: OnePassFit,
) -> Result<OneRead> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let limit = session.config().training_cache;
    let schema = df.schema().as_arrow();
    let planned = split_of(o, usize::MAX)?;
    let fit = match planned {
        Split::None => fit,
        Split::Random(f) => {
            let bounds = quiver_engine::dataset::split_bounds(&[1.0 - f, f])?;
            match fit.split_on(schema, SPLIT_DRAW, bounds[0], bounds[1]) {
                Some(fit) => fit,
                None => return Ok(OneRead::Not),
            }
        }
    };
    // Whether the split depends on the rows' count: then the rows as read are kept while there
    // are fewer than auto_split splits (`seen` counts them over all partitions; a partition
    // drops its rows once the count reaches that, as the split then happens).
    let few_unsplit = matches!(planned, Split::Random(_)) && matches!(split_of(o, 0)?, Split::None);
    let seen = Arc::new(AtomicUsize::new(0));
    let fit = Arc::new(fit);
    let pushing = Arc::clone(&fit);
    let keep = move |(part, rows): &mut (OnePassPart, Option<Vec<RecordBatch>>), b: RecordBatch| {
        let Some(mut bytes) = pushing.push(part, &b)? else {
            return Ok(None);
        };
        if let Some(kept) = rows {
            let n = b.num_rows();
            if seen.fetch_add(n, Ordering::Relaxed) + n < AUTO_SPLIT_MIN_ROWS {
                bytes += b.get_array_memory_size();
                kept.push(b);
            } else {
                *rows = None;
            }
        }
        Ok(Some(bytes))
    };
    let init = || (fit.part(), few_unsplit.then(Vec::new));
    let Some(read) = read_within(df, limit, init, keep).await? else {
        return Ok(OneRead::Not);
    };
    let (parts, kept): (Vec<OnePassPart>, Vec<Option<Vec<RecordBatch>>>) = read.into_iter().unzip();
    // The rows as read, when every partition kept them (as a table of the batches' own
    // schema; should the partitions' schemas differ, the usual path runs the query).
    let as_read = || -> Result<OneRead> {
        let Some(partitions) = kept.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(OneRead::Not);
        };
        let batches_schema = match partitions.iter().flatten().next() {
            Some(b) => b.schema(),
            None => Arc::new(schema.clone()),
        };
        match datafusion::datasource::MemTable::try_new(batches_schema, partitions) {
            Ok(table) => Ok(OneRead::Rows(
                session.context().read_table(Arc::new(table))?,
            )),
            Err(_) => Ok(OneRead::Not),
        }
    };
    let Some(read) = session.run_compute(|| fit.finish(parts))? else {
        return as_read();
    };
    let OnePassRows {
        model,
        schema: encoded_schema,
        train,
        held_out,
        rows,
        moments,
    } = read;
    let rows = rows as usize;
    if matches!(
        (&planned, split_of(o, rows)?),
        (Split::Random(_), Split::None)
    ) {
        return as_read();
    }
    let encoded = |partitions| -> Result<Dataset> {
        let table =
            datafusion::datasource::MemTable::try_new(Arc::clone(&encoded_schema), partitions)?;
        let df = session.context().read_table(Arc::new(table))?;
        Ok(model.encoded_rows(df, fit.encoded_label(), None)?)
    };
    let mut train = encoded(train)?;
    if let Some(m) = moments {
        train = train.with_feature_moments(m);
    }
    let eval = held_out.map(&encoded).transpose()?;
    Ok(OneRead::Encoded(Box::new(EncodedRows {
        prep: model,
        train,
        eval,
        rows,
    })))
}

/// A statement's rows, prepared for the fit: the fitted preprocessing, the encoded training
/// rows and the held-out ones (if any), and the rows the query returned.
struct Prepared {
    prep: PreprocessorModel,
    train: Dataset,
    eval: Option<Dataset>,
    /// Rows the query returned.
    rows: usize,
    /// The rows as the query returned them (with their split draw when they may be split) and
    /// their training side, for the trials and the global explanation; `None` when the rows
    /// were encoded as they were read (neither is then asked for).
    raw: Option<Dataset>,
    train_raw: Option<Dataset>,
    sql_transform: Option<SqlTransformModel>,
    features: Vec<FeatureField>,
}

/// The error for a part of the statement that needs the rows as read when they were encoded
/// in one pass (a combination the statement does not choose that path for).
fn read_in_one_pass(what: &str) -> SqlError {
    SqlError::Invalid(format!(
        "{what} need the rows as the query returns them, but they were encoded as read"
    ))
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
    let raw_columns: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
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
        // With a TRANSFORM clause the label is one of its outputs (checked when it is fitted).
        if c.transform.is_none() && !raw_columns.contains(label) {
            return Err(SqlError::InvalidOption {
                option: "input_label_cols".to_string(),
                reason: format!(
                    "label column '{label}' is not among the query's columns ({})",
                    raw_columns.join(", ")
                ),
            });
        }
        Some(label.clone())
    };
    // The query's own columns are the features unless a TRANSFORM makes them.
    let query_features = match &c.transform {
        None => Some(check_columns(&o, df.schema().as_arrow(), label.as_deref())?),
        Some(_) => None,
    };
    let classify = o.algorithm.task == Task::Classification;
    let global_explain = match o.map.get("enable_global_explain") {
        Some(e) => expr_bool("enable_global_explain", e)?,
        None => false,
    };
    if global_explain && o.algorithm.attribution == Attribution::None {
        return Err(SqlError::InvalidOption {
            option: "enable_global_explain".to_string(),
            reason: format!(
                "model_type '{}' has no feature attributions (those that have: {})",
                o.model_type,
                catalog::model_types_where(|a| a.attribution != Attribution::None)
            ),
        });
    }
    let encoding = match o.str("category_encoding_method")? {
        Some(m) => CategoryEncoding::parse(&m)?,
        None if o.algorithm.missing_values == MissingNumbers::Keep => CategoryEncoding::Label,
        None => CategoryEncoding::OneHot,
    };
    let seed = o.usize("seed")?.unwrap_or(42) as u64;
    // Rows that may be split (a split, or the trials' held-out rows) get their draw as they
    // are read: one hash of each row for the statement's sides and the trials' alike.
    let draw = [SPLIT_DRAW.to_string()];
    let may_split = tuning.is_some()
        || !o
            .str("data_split_method")?
            .is_some_and(|m| m.eq_ignore_ascii_case("no_split"));
    let preprocessor_of = |features: &[FeatureField]| {
        let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
        let p = Preprocessor::new(names)
            .output_col(ENCODED)
            .encoding(encoding)
            .missing(o.algorithm.missing_values);
        match &label {
            Some(l) => p.label(l.clone(), classify),
            None => p,
        }
    };
    let df = if may_split {
        Dataset::new(df)
            .with_split_draw(&raw_columns, seed)?
            .dataframe()
            .clone()
    } else {
        df
    };
    let limit = session.config().training_cache;
    // Without a TRANSFORM or explanations (which read the rows as the query returns them), the
    // rows are split, the preprocessing fitted and the rows encoded in the one read of the
    // query, and only the encoded rows are kept. Trials take them too when the statement
    // splits (they train and score on its two sides); with `no_split` they split the rows by
    // each row's draw, which the one read does not keep.
    let trials_take_sides = match &tuning {
        None => true,
        Some(_) => matches!(split_of(&o, usize::MAX)?, Split::Random(_)),
    };
    let mut df = df;
    let one_pass = match query_features {
        Some(features)
            if trials_take_sides && !global_explain && !session.is_cluster() && limit > 0 =>
        {
            match preprocessor_of(&features).one_pass(df.schema().as_arrow()) {
                Some(fit) => match read_encoded(session, &df, &o, fit).await? {
                    OneRead::Encoded(read) => Some(Prepared {
                        prep: read.prep,
                        train: read.train,
                        eval: read.eval,
                        rows: read.rows,
                        raw: None,
                        train_raw: None,
                        sql_transform: None,
                        features,
                    }),
                    OneRead::Rows(rows) => {
                        df = rows;
                        None
                    }
                    OneRead::Not => None,
                },
                None => None,
            }
        }
        _ => None,
    };
    let Prepared {
        prep,
        train,
        eval,
        rows,
        raw,
        train_raw,
        sql_transform,
        features,
    } = match one_pass {
        Some(p) => p,
        None => {
            // The statement is checked; now its query runs, once when the result fits in memory.
            let (df, cached) = match materialise(session, &df, limit).await? {
                Some(rows) => (rows, true),
                None => (df, false),
            };
            let raw = Dataset::new(df);
            let rows = raw.count().await?;
            let (train_raw, eval_raw) = match split_of(&o, rows)? {
                // The rows without their draw.
                Split::None if may_split => (
                    raw.with_dataframe(raw.dataframe().clone().drop_columns(&[SPLIT_DRAW])?)?,
                    None,
                ),
                Split::None => (raw.clone(), None),
                Split::Random(f) => {
                    let weights = [1.0 - f, f];
                    // Each side a filter over the kept rows, not a copy of them: a side is read
                    // about once (the preprocessing's statistics and the fit read the training
                    // side — an iterative fit keeps its own encoded rows — the evaluation the
                    // held-out side), and a kept copy of both sides cost more in fresh memory
                    // than those reads.
                    let mut parts = raw.random_split_on(&draw, &weights, seed)?;
                    let eval = parts.pop();
                    (parts.pop().expect("two parts"), eval)
                }
            };
            // A TRANSFORM clause is fitted on the training rows; its outputs are the model's
            // columns.
            let sql_transform = match &c.transform {
                Some(items) => Some(
                    crate::transform::fit(session, train_raw.dataframe(), items, label.as_deref())
                        .await?,
                ),
                None => None,
            };
            let (train_in, eval_in) = match &sql_transform {
                Some(t) => (
                    t.transform(&train_raw)?,
                    eval_raw.as_ref().map(|e| t.transform(e)).transpose()?,
                ),
                None => (train_raw.clone(), eval_raw.clone()),
            };
            let features = check_columns(
                &o,
                train_in.dataframe().schema().as_arrow(),
                label.as_deref(),
            )?;
            // The preprocessing is fitted on the training rows, as every other stage.
            let prep = preprocessor_of(&features).fit(session, &train_in).await?;
            let mut train = prep.transform(&train_in)?;
            let eval = eval_in.as_ref().map(|e| prep.transform(e)).transpose()?;
            if cached
                && eval.is_none()
                && tuning.is_none()
                && !session.is_cluster()
                && o.algorithm.keeps_prepared_rows
            {
                // The model is fitted and evaluated on the same rows, and the fit keeps the
                // encoded vectors it reads anyway: encoded once, kept beside the raw rows they
                // come from. (A fit that reads its rows once encodes them as it reads, into
                // buffers it reuses: cheaper than a second copy of the rows in fresh memory.)
                train = train.persist(session).await?;
            }
            Prepared {
                prep,
                train,
                eval,
                rows,
                raw: Some(raw),
                train_raw: Some(train_raw),
                sql_transform,
                features,
            }
        }
    };
    let encoded = [ENCODED.to_string()];
    // What a trial trains, and so what the stored model is: the estimator with the
    // statement's options, then the best trial's values of the tuned ones.
    let mut spec = TrainEval::new("", o.algorithm.name);
    spec.features = Some(encoded.to_vec());
    spec.label = train.label().map(str::to_string);
    spec.params = fixed.clone();
    spec.sql_options = true;
    let mut best_fit = None;
    let tuning = match &tuning {
        Some(t) => {
            // With the statement's own split the trials train on exactly its training rows,
            // so the best trial's fit is the stored model's (no refit).
            let (fraction, same_rows) = match split_of(&o, rows)? {
                Split::Random(f) => (f, true),
                Split::None => (o.f64("data_split_eval_fraction")?.unwrap_or(0.2), false),
            };
            // What the trials read: the encoded rows (the vector, the label's class index).
            let trial_columns =
                |d: &Dataset, draw: bool| -> Result<DataFrame> {
                    let mut keep = vec![datafusion::prelude::col(ENCODED)];
                    keep.extend(d.label().map(|l| {
                        datafusion::prelude::col(quiver_engine::aggregate::quoted_name(l))
                    }));
                    if draw {
                        keep.push(datafusion::prelude::col(SPLIT_DRAW));
                    }
                    Ok(d.dataframe().clone().select(keep)?)
                };
            let trial_rows = match (&raw, &eval) {
                // Read in one pass: the statement's two sides, encoded.
                (None, Some(held_out)) if same_rows => TrialRows::Apart {
                    train: trial_columns(&train, false)?,
                    held_out: trial_columns(held_out, false)?,
                },
                (None, _) => return Err(read_in_one_pass("the trials")),
                // Each row with its split draw, made from the raw columns as the statement's
                // was: the trials hold out the rows the stored model is evaluated on.
                (Some(raw), _) => {
                    let encoded_rows = match &sql_transform {
                        None => prep.transform(raw)?,
                        Some(st) => {
                            // The TRANSFORM's outputs beside the draw.
                            let df = raw.dataframe();
                            let (mut exprs, with_label) = st.exprs(df, true)?;
                            exprs.push(datafusion::prelude::col(SPLIT_DRAW));
                            if label.is_some() && !with_label {
                                return Err(SqlError::Invalid(
                                    "TRANSFORM: the label's inputs are missing from the query"
                                        .to_string(),
                                ));
                            }
                            let input = Dataset::new(df.clone().select(exprs)?);
                            prep.transform(&input)?
                        }
                    };
                    TrialRows::Drawn {
                        rows: trial_columns(&encoded_rows, true)?,
                        split_columns: draw.to_vec(),
                        eval_fraction: fraction,
                    }
                }
            };
            let (record, best, fit) = t
                .run(
                    session,
                    store.absolute_url(),
                    &c.name,
                    trial_rows,
                    train.label(),
                    &encoded,
                    &fixed,
                    seed,
                    same_rows,
                )
                .await?;
            spec.params.extend(best);
            best_fit = fit;
            Some(record)
        }
        None => None,
    };
    // The estimator (and any stages) on the encoded rows; the stored model is the
    // preprocessing followed by them, so ml_predict takes the raw columns.
    let refit = best_fit.is_none();
    let fitted = match best_fit {
        Some(fit) => Arc::unwrap_or_clone(fit),
        None => pipeline(&spec, &encoded)?.fit(session, &train).await?,
    };
    let inner = PipelineModel::from_stages(fitted.stages().iter().skip(1).cloned().collect());
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
    let metrics = o
        .algorithm
        .task
        .evaluate_model(session, &inner, scored_on)
        .await?;
    let last = inner
        .stages()
        .last()
        .map(|s| s.dyn_parts())
        .transpose()?
        .map(|(draft, _)| draft.training_summary)
        .unwrap_or(Value::Null);
    let mut stages: Vec<Arc<dyn DynModel>> = Vec::new();
    if let Some(t) = &sql_transform {
        stages.push(Arc::new(t.clone()));
    }
    stages.push(Arc::new(prep.clone()));
    stages.extend(inner.stages().iter().cloned());
    let model = PipelineModel::from_stages(stages);
    let global = if global_explain {
        let train_raw = train_raw
            .as_ref()
            .ok_or_else(|| read_in_one_pass("the global explanation"))?;
        Some(global_attribution(session, &c.name, o.algorithm, &model, &prep, train_raw).await?)
    } else {
        None
    };
    let (mut draft, parts) = model.to_parts()?;
    draft.kind = PipelineModel::KIND.to_string();
    draft.format_version = PipelineModel::FORMAT_VERSION;
    draft.features = match &sql_transform {
        // ml_predict takes the columns the TRANSFORM reads.
        Some(t) => t
            .params()
            .inputs
            .iter()
            .map(|i| FeatureField {
                name: i.name.clone(),
                data_type: i.data_type.clone(),
            })
            .collect(),
        None => features,
    };
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
        "final_stage": last,
        "feature_info": prep.feature_info(),
        "encoded_features": prep.feature_names(),
        "classes": prep.label_classes().map(|l| &l.classes),
        "transform": sql_transform.as_ref().map(|t| json!({
            "clause": t.params().clause,
            "columns": t.params().outputs,
        })),
        "wall_time_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    if let Some(mut t) = tuning {
        // Where the stored fit comes from: the best trial (trained on these training rows in
        // this process) or a fit of the best values after the search.
        t["stored_fit"] = json!(if refit { "refit" } else { "best trial" });
        draft.training_summary["tuning"] = t;
    }
    if let Some(g) = global {
        draft.training_summary["global_explain"] = g;
    }
    // OR REPLACE adds a version; otherwise the store decides atomically that this statement
    // creates the model (another writer may have created it since the check above).
    let meta = if c.or_replace {
        store
            .save(&c.name, draft, parts.into_iter().map(Ok))
            .await?
    } else {
        match store
            .save_new(&c.name, draft, parts.into_iter().map(Ok))
            .await?
        {
            quiver_engine::SaveNew::Saved(meta) => *meta,
            quiver_engine::SaveNew::Exists(why) if c.if_not_exists => {
                return Ok(message_batch(&format!(
                    "model '{}' exists ({why}); nothing done",
                    c.name
                )));
            }
            quiver_engine::SaveNew::Exists(why) => {
                return Err(SqlError::Invalid(format!(
                    "model '{}' already exists ({why}); use CREATE OR REPLACE MODEL to add a version",
                    c.name
                )));
            }
        }
    };
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

/// The feature columns of the model's input rows (every column but the label), each of a type
/// the automatic preprocessing reads, and the label of a type the model type takes.
fn check_columns(o: &Options, schema: &Schema, label: Option<&str>) -> Result<Vec<FeatureField>> {
    let mut features = Vec::new();
    for f in schema.fields() {
        if Some(f.name().as_str()) == label {
            continue;
        }
        let t = f.data_type();
        if ColumnKind::of(t).is_none() {
            return Err(SqlError::Invalid(format!(
                "feature column '{}' has type {t}; CREATE MODEL takes numbers, booleans, strings, dates and timestamps (cast it, or leave it out of the query)",
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
    let classify = o.algorithm.task == Task::Classification;
    if let Some(l) = label {
        let t = schema
            .field_with_name(l)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null);
        let numeric = t.is_integer() || t.is_floating();
        let class_like =
            t == DataType::Boolean || ColumnKind::of(&t) == Some(ColumnKind::Categorical);
        if !(numeric || classify && class_like) {
            return Err(SqlError::Invalid(format!(
                "label column '{l}' has type {t}; model_type '{}' needs a numeric label{}",
                o.model_type,
                if classify {
                    " or a string or boolean class"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(features)
}

/// The mean absolute attribution of each feature over the training rows (`ml_global_explain`),
/// largest first, as `[{feature, attribution}]`.
async fn global_attribution(
    session: &QuiverSession,
    name: &str,
    algorithm: &Algorithm,
    model: &PipelineModel,
    prep: &quiver_mllib::PreprocessorModel,
    train: &Dataset,
) -> Result<Value> {
    let stages = [Arc::new(model.clone()) as Arc<dyn DynModel>];
    let rows = RowPredictor::from_stages(name, &stages)?;
    let a = Attributor::new(
        "CREATE MODEL",
        name,
        algorithm.name,
        &rows,
        Vec::new(),
        prep.feature_names().to_vec(),
    )?;
    let total = GlobalAttribution::over(
        session,
        &a,
        train.dataframe().clone().execute_stream().await?,
    )
    .await?;
    Ok(total
        .ranked()
        .into_iter()
        .map(|(j, v)| json!({ "feature": a.features[j], "attribution": v }))
        .collect())
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
