//! The built-in objective: train an MLlib estimator with a trial's parameters on a dataset
//! given by URL and score it on a held-out split. It is a registered fan-out task
//! (`quiver.train_eval`), so it runs wherever tasks run, executors included; each process
//! loads a dataset once and reuses it for every trial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use quiver_engine::fanout::{Reporter, TaskOutcome, TaskRunner, block_on};
use quiver_engine::{Dataset, QuiverConfig, QuiverError, QuiverSession};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::space::Point;
use crate::catalog::{self, Algorithm};
use crate::{DynEstimator, Estimator, Transformer};

/// The task kind of the built-in objective.
pub const TRAIN_EVAL: &str = "quiver.train_eval";

/// What a `quiver.train_eval` task trains and how it scores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainEval {
    /// Path or URL of the data (any format Quiver reads).
    pub dataset: String,
    /// The algorithm's name in the catalogue (`logistic_regression`, `linear_regression`,
    /// `kmeans`, … — see [`crate::catalog::ALGORITHMS`]).
    pub estimator: String,
    /// The label column (not for k-means).
    #[serde(default)]
    pub label: Option<String>,
    /// Feature columns; every numeric column but the label when absent.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// The metric to optimise, one the algorithm's task reports (see
    /// [`crate::catalog::Task::metrics`]): accuracy, f1, log_loss, area_under_roc, …
    /// (classification); rmse, mse, mae, r2 (regression); within_ss, silhouette (clustering).
    /// Higher-is-better metrics are negated into a loss. Defaults: log_loss for two classes
    /// (accuracy for more), rmse, within_ss.
    #[serde(default)]
    pub metric: Option<String>,
    /// Held-out fraction. Defaults to 0.2.
    #[serde(default = "default_fraction")]
    pub eval_fraction: f64,
    /// Path or URL of held-out rows kept apart from `dataset` (scikit-learn's
    /// `PredefinedSplit`, LightGBM's `valid_sets`): each trial then trains on all of `dataset`
    /// and scores on these rows, with no split (`eval_fraction`, `split_seed` and
    /// `split_columns` are unused; not with `folds`).
    #[serde(default)]
    pub validation: Option<String>,
    /// k-fold cross-validation instead of one held-out split: the loss is the mean over the
    /// folds (`eval_fraction` is then unused).
    #[serde(default)]
    pub folds: Option<usize>,
    #[serde(default)]
    pub split_seed: u64,
    /// Fixed hyperparameters (the estimator's parameter names); a search adds each trial's
    /// point to them (the point wins where both name a parameter).
    #[serde(default)]
    pub params: Point,
    /// `params` use `CREATE MODEL`'s option names (`l1_reg`, `l2_reg`, `max_iterations`,
    /// `num_clusters`, …: the catalogue entry's SQL options), translated to the estimator's
    /// before it is built.
    #[serde(default)]
    pub sql_options: bool,
    /// Feature stages fitted on each trial's training rows before the estimator (a
    /// pipeline): the catalogue's vector stages, `standard_scaler` (parameters
    /// `standard_scaler.with_mean`, `standard_scaler.with_std`) and `min_max_scaler`
    /// (`min_max_scaler.min`, `min_max_scaler.max`). A stage's parameters are searched like
    /// the estimator's.
    #[serde(default)]
    pub stages: Vec<String>,
    /// The columns whose values decide a row's side of the split (all columns when absent):
    /// `CREATE MODEL` names its query's raw columns, so trials over the encoded rows hold
    /// out exactly the rows the stored model is evaluated on.
    #[serde(default)]
    pub split_columns: Option<Vec<String>>,
    /// A trial run in this process keeps its fitted pipeline (`VectorAssembler → stages →
    /// estimator`, as [`pipeline`] builds it) under [`kept_model_key`] in
    /// [`quiver_engine::reuse`], so that whoever ran the search can take the best trial's fit
    /// instead of fitting it again on the same rows (`CREATE MODEL` does). Only with one
    /// held-out split (no folds).
    #[serde(default)]
    pub keep_model: bool,
}

/// Where a trial with [`TrainEval::keep_model`] keeps its fit: the search's data and the
/// trial's parameters (fixed and tuned) decide it.
pub fn kept_model_key(dataset: &str, params: &Point) -> String {
    format!(
        "{}{}",
        kept_models_prefix(dataset),
        serde_json::to_string(params).unwrap_or_default()
    )
}

/// The start of every [`kept_model_key`] of a search over `dataset`.
pub fn kept_models_prefix(dataset: &str) -> String {
    format!("trial model\u{0}{dataset}\u{0}")
}

fn default_fraction() -> f64 {
    0.2
}

impl TrainEval {
    /// Trains `estimator` on the data at `dataset` with the defaults: no label, every numeric
    /// column a feature, the estimator's default metric, 20% held out with split seed 0.
    pub fn new(dataset: impl Into<String>, estimator: impl Into<String>) -> Self {
        TrainEval {
            dataset: dataset.into(),
            estimator: estimator.into(),
            label: None,
            features: None,
            metric: None,
            eval_fraction: default_fraction(),
            validation: None,
            folds: None,
            split_seed: 0,
            split_columns: None,
            params: Point::new(),
            sql_options: false,
            stages: Vec::new(),
            keep_model: false,
        }
    }

    /// Feature stages before the estimator (see [`TrainEval::stages`]).
    pub fn stages<S: Into<String>>(mut self, stages: impl IntoIterator<Item = S>) -> Self {
        self.stages = stages.into_iter().map(Into::into).collect();
        self
    }

    pub fn label(mut self, column: impl Into<String>) -> Self {
        self.label = Some(column.into());
        self
    }

    pub fn metric(mut self, metric: impl Into<String>) -> Self {
        self.metric = Some(metric.into());
        self
    }

    /// Defaults to 0.2.
    pub fn eval_fraction(mut self, fraction: f64) -> Self {
        self.eval_fraction = fraction;
        self
    }

    /// Defaults to 0.
    pub fn split_seed(mut self, seed: u64) -> Self {
        self.split_seed = seed;
        self
    }

    /// Held-out rows apart from the training rows (see [`TrainEval::validation`]).
    pub fn validation(mut self, location: impl Into<String>) -> Self {
        self.validation = Some(location.into());
        self
    }

    /// `data` with this spec's features (every numeric column but the label by default) and
    /// label.
    fn with_roles(&self, data: Dataset) -> quiver_engine::Result<Dataset> {
        let mut data = match &self.features {
            Some(f) => data.with_features(f)?,
            None => data.with_numeric_features_except(
                &self.label.iter().map(String::as_str).collect::<Vec<_>>(),
            )?,
        };
        if let Some(l) = &self.label {
            data = data.with_label(l)?;
        }
        Ok(data)
    }
}

/// Runs [`TrainEval`] tasks.
#[derive(Debug, Default)]
pub struct TrainEvalRunner;

/// The process's trial session (local runner; each trial computes on its fan-out task's pool)
/// and the datasets its trials use.
struct TrialContext {
    session: QuiverSession,
    data: Mutex<DatasetCache>,
}

/// Datasets kept loaded, at most [`DatasetCache::CAPACITY`] of them and
/// [`DatasetCache::MAX_BYTES`] together: the least recently used goes first (a long-lived
/// executor serves many searches, each over its own data). Keys hold the files' sizes and
/// modification times, so a dataset rewritten in place is read again.
#[derive(Default)]
struct DatasetCache {
    /// Splits, last use, bytes held.
    entries: HashMap<String, (Splits, u64, usize)>,
    clock: u64,
}

impl DatasetCache {
    const CAPACITY: usize = 4;
    const MAX_BYTES: usize = 2 << 30;

    fn get(&mut self, key: &str) -> Option<Splits> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(splits, used, _)| {
            *used = now;
            Arc::clone(splits)
        })
    }

    fn insert(&mut self, key: String, splits: Splits, bytes: usize) {
        self.clock += 1;
        self.entries
            .insert(key.clone(), (splits, self.clock, bytes));
        loop {
            let total: usize = self.entries.values().map(|(_, _, b)| *b).sum();
            if self.entries.len() <= Self::CAPACITY && total <= Self::MAX_BYTES {
                break;
            }
            // The entry just added stays: its search is about to use it.
            let oldest = self
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
    }
}

fn context() -> quiver_engine::Result<&'static TrialContext> {
    static CONTEXT: OnceLock<TrialContext> = OnceLock::new();
    if let Some(c) = CONTEXT.get() {
        return Ok(c);
    }
    let config = QuiverConfig::default().with_pairs([
        ("quiver.runner", "local"),
        ("quiver.compute_threads", "1"),
        ("quiver.target_partitions", "1"),
    ])?;
    let session = QuiverSession::embedded_with(config)?;
    Ok(CONTEXT.get_or_init(|| TrialContext {
        session,
        data: Mutex::new(DatasetCache::default()),
    }))
}

fn bad(reason: String) -> QuiverError {
    QuiverError::InvalidParam {
        param: TRAIN_EVAL.to_string(),
        reason,
    }
}

/// Loads (once per process) the dataset with its roles, split into (train, test) pairs: one
/// held-out split, or `folds` cross-validation splits.
async fn dataset(c: &TrialContext, spec: &TrainEval) -> quiver_engine::Result<Splits> {
    let key = serde_json::to_string(&(
        &spec.dataset,
        &spec.label,
        &spec.features,
        spec.eval_fraction,
        spec.split_seed,
        spec.folds,
        &spec.split_columns,
        version_of(&c.session, &spec.dataset).await,
        &spec.validation,
        match &spec.validation {
            Some(v) => version_of(&c.session, v).await,
            None => String::new(),
        },
    ))
    .unwrap_or_default();
    if let Some(d) = c.data.lock().expect("dataset cache").get(&key) {
        return Ok(d);
    }
    let weights = split_weights(spec)?;
    let df = c.session.read(&spec.dataset).await?;
    let batches = df.collect().await?;
    let data = spec.with_roles(Dataset::new(c.session.from_batches(batches.clone(), 1)?))?;
    // Materialise the parts once: every trial reuses the same rows.
    let parts: Vec<Vec<arrow::array::RecordBatch>> = match &spec.validation {
        // Kept apart already: the training rows as read, then the held-out ones.
        Some(v) => {
            let held_out = validation_rows(&c.session, &data, v)
                .await?
                .collect()
                .await?;
            vec![batches, held_out]
        }
        None => {
            let split_columns = spec.split_columns.clone().unwrap_or_else(|| data.columns());
            data.random_split_collect(&split_columns, &weights, spec.split_seed, usize::MAX)
                .await?
                .ok_or_else(|| {
                    bad(
                        "splitting the rows: no memory limit was set, yet one was reported \
                         exceeded"
                            .to_string(),
                    )
                })?
                .into_iter()
                .map(|part| part.into_iter().flatten().collect())
                .collect()
        }
    };
    let bytes = parts
        .iter()
        .flatten()
        .map(|b| b.get_array_memory_size())
        .sum::<usize>();
    let with_roles = |batches: Vec<arrow::array::RecordBatch>| {
        roles_of(&data, c.session.from_batches(batches, 1)?)
    };
    let held_out = held_out_parts(spec, parts.len());
    let mut splits = Vec::with_capacity(held_out.len());
    for i in held_out {
        let train: Vec<_> = parts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect();
        // The parts stay in memory unchanged while cached here: fits may keep what they
        // derive from them (assembled rows, binned codes) for the next trial.
        splits.push((
            with_roles(train)?.reusable(format!("{key}\u{0}train {i}")),
            with_roles(parts[i].clone())?.reusable(format!("{key}\u{0}held out {i}")),
        ));
    }
    let splits = Arc::new(splits);
    c.data
        .lock()
        .expect("dataset cache")
        .insert(key, Arc::clone(&splits), bytes);
    Ok(splits)
}

/// The held-out rows at `location` ([`TrainEval::validation`]) with the columns of the
/// training rows `data`, in their order (a union or a shared scorer reads columns by
/// position); a missing column is an error naming it and the location.
async fn validation_rows(
    session: &QuiverSession,
    data: &Dataset,
    location: &str,
) -> quiver_engine::Result<datafusion::prelude::DataFrame> {
    let df = session.read(location).await?;
    let columns = data.columns();
    for c in &columns {
        if df.schema().field_with_unqualified_name(c).is_err() {
            return Err(bad(format!(
                "validation rows '{location}' have no column '{c}' (the training rows' columns: {})",
                columns.join(", ")
            )));
        }
    }
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    Ok(df.select_columns(&names)?)
}

/// `df` with the feature and label roles of `data` (a part of it).
fn roles_of(data: &Dataset, df: datafusion::prelude::DataFrame) -> quiver_engine::Result<Dataset> {
    let mut out = Dataset::new(df).with_features(data.features())?;
    if let Some(l) = data.label() {
        out = out.with_label(l)?;
    }
    Ok(out)
}

/// Which of the `parts` are held out in turn: each fold, or the one held-out part.
fn held_out_parts(spec: &TrainEval, parts: usize) -> Vec<usize> {
    if spec.folds.is_some() {
        (0..parts).collect()
    } else {
        vec![1]
    }
}

/// The parts a spec splits its rows into: k folds, or (train, held out); none when the
/// held-out rows are given apart ([`TrainEval::validation`]).
fn split_weights(spec: &TrainEval) -> quiver_engine::Result<Vec<f64>> {
    if let Some(v) = &spec.validation {
        return match spec.folds {
            Some(k) => Err(bad(format!(
                "folds = {k} and validation = '{v}': cross-validation splits the rows itself; \
                 give one or the other"
            ))),
            None => Ok(Vec::new()),
        };
    }
    Ok(match spec.folds {
        Some(k) if k >= 2 => vec![1.0; k],
        Some(k) => {
            return Err(bad(format!(
                "folds = {k}: cross-validation needs at least 2"
            )));
        }
        None if spec.eval_fraction > 0.0 && spec.eval_fraction < 1.0 => {
            vec![1.0 - spec.eval_fraction, spec.eval_fraction]
        }
        None => {
            return Err(bad(format!(
                "eval_fraction {} is not strictly between 0 and 1",
                spec.eval_fraction
            )));
        }
    })
}

/// The spec's data on `session` split into (train, test) pairs without reading it: each part
/// a filter over the same plan, so on a cluster every pass of a fit runs on the executors (a
/// trial placed as a distributed fit). The same rows as [`dataset`] holds.
async fn lazy_splits(session: &QuiverSession, spec: &TrainEval) -> quiver_engine::Result<Splits> {
    let weights = split_weights(spec)?;
    let data = spec.with_roles(Dataset::new(session.read(&spec.dataset).await?))?;
    if let Some(v) = &spec.validation {
        let held_out = roles_of(&data, validation_rows(session, &data, v).await?)?;
        return Ok(Arc::new(vec![(data, held_out)]));
    }
    let split_columns = spec.split_columns.clone().unwrap_or_else(|| data.columns());
    let parts = data.random_split_on(&split_columns, &weights, spec.split_seed)?;
    let with_roles = |df| roles_of(&data, df);
    let held_out = held_out_parts(spec, parts.len());
    let mut splits = Vec::with_capacity(held_out.len());
    for i in held_out {
        let mut train: Option<datafusion::prelude::DataFrame> = None;
        for (_, p) in parts.iter().enumerate().filter(|(j, _)| *j != i) {
            let df = p.dataframe().clone();
            train = Some(match train {
                None => df,
                Some(t) => t.union(df)?,
            });
        }
        let train = train.ok_or_else(|| bad("a split needs at least two parts".to_string()))?;
        splits.push((
            with_roles(train)?,
            with_roles(parts[i].dataframe().clone())?,
        ));
    }
    Ok(Arc::new(splits))
}

/// (train, test) pairs.
type Splits = Arc<Vec<(Dataset, Dataset)>>;

/// The size and modification time of every object at `location` (a file, or the files under a
/// directory), as one string: what the dataset cache keys on besides the name. Empty when the
/// store cannot say (the read that follows then reports the problem).
pub(crate) async fn version_of(session: &QuiverSession, location: &str) -> String {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    let Ok(loc) = quiver_engine::io::resolve(session.context(), &session.config().s3, location)
    else {
        return String::new();
    };
    let stamp = |m: &object_store::ObjectMeta| {
        format!(
            "{}:{}:{}",
            m.location,
            m.size,
            m.last_modified.timestamp_nanos_opt().unwrap_or(0)
        )
    };
    if let Ok(m) = loc.store.head(&loc.path).await {
        return stamp(&m);
    }
    let mut all: Vec<String> = loc
        .store
        .list(Some(&loc.path))
        .filter_map(|m| async move { m.ok().map(|m| stamp(&m)) })
        .collect()
        .await;
    all.sort();
    quiver_engine::store::sha256_hex(all.join("\n").as_bytes())
}

/// The bytes of the objects at `location` (a file, or the files under a folder); 0 when the
/// store cannot say.
pub(crate) async fn dataset_bytes(session: &QuiverSession, location: &str) -> u64 {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    let Ok(loc) = quiver_engine::io::resolve(session.context(), &session.config().s3, location)
    else {
        return 0;
    };
    if let Ok(m) = loc.store.head(&loc.path).await {
        return m.size;
    }
    loc.store
        .list(Some(&loc.path))
        .filter_map(|m| async move { m.ok().map(|m| m.size) })
        .fold(0u64, |a, b| async move { a + b })
        .await
}

impl TrainEval {
    /// The catalogue entry of [`TrainEval::estimator`].
    pub fn algorithm(&self) -> crate::Result<&'static Algorithm> {
        catalog::algorithm(&self.estimator)
    }

    /// The estimator's own parameters (not a stage's `stage.param`), in the estimator's names
    /// (translated from SQL option names when [`TrainEval::sql_options`] is set).
    pub fn estimator_params(&self) -> crate::Result<Point> {
        let own: Point = self
            .params
            .iter()
            .filter(|(k, _)| !k.contains('.'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.sql_options {
            self.algorithm()?.params_from_sql(&own)
        } else {
            Ok(own)
        }
    }
}

/// The estimator `spec` names, with `spec.params` applied (unknown names and bad values are
/// errors naming them).
pub fn build(spec: &TrainEval) -> crate::Result<Arc<dyn DynEstimator>> {
    check_stages(spec)?;
    spec.algorithm()?.estimator(&spec.estimator_params()?)
}

/// Fits `VectorAssembler → estimator(params)` on all of `spec`'s data, its
/// [`TrainEval::validation`] rows included (the search's best trial, refitted): a pipeline
/// that `ml_predict` can apply to the feature columns.
pub async fn refit(
    session: &QuiverSession,
    spec: &TrainEval,
    params: &Point,
) -> crate::Result<crate::PipelineModel> {
    let mut spec = spec.clone();
    spec.params.extend(params.clone());
    let mut data = spec.with_roles(Dataset::new(session.read(&spec.dataset).await?))?;
    if let Some(v) = &spec.validation {
        // All the rows the spec names: the training rows and the held-out ones.
        let all = data
            .dataframe()
            .clone()
            .union(validation_rows(session, &data, v).await?)
            .map_err(QuiverError::from)?;
        data = roles_of(&data, all)?;
    }
    pipeline(&spec, &data.feature_names()?)?
        .fit(session, &data)
        .await
}

/// Every stage is known and every `stage.param` names one of the spec's stages.
fn check_stages(spec: &TrainEval) -> crate::Result<()> {
    for s in &spec.stages {
        catalog::feature_stage(s)?;
    }
    for k in spec.params.keys() {
        if let Some((stage, _)) = k.split_once('.')
            && !spec.stages.iter().any(|s| s == stage)
        {
            return Err(crate::MllibError::InvalidParam {
                param: k.clone(),
                reason: format!("no stage '{stage}' in stages [{}]", spec.stages.join(", ")),
            });
        }
    }
    Ok(())
}

/// `VectorAssembler(names) → stages → estimator`, with `spec.params` applied (a stage's as
/// `stage.param`); unknown stages and parameters are errors naming them.
pub fn pipeline(spec: &TrainEval, names: &[String]) -> crate::Result<crate::Pipeline> {
    check_stages(spec)?;
    let mut pipeline = crate::Pipeline::new().transformer(crate::VectorAssembler::new(names));
    for (i, stage) in spec.stages.iter().enumerate() {
        let prefix = format!("{stage}.");
        let p: Point = spec
            .params
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect();
        let build = catalog::feature_stage(stage)?.build.ok_or_else(|| {
            crate::MllibError::InvalidParam {
                param: "stages".to_string(),
                reason: format!("stage '{stage}' cannot be built from parameters"),
            }
        })?;
        // Each stage writes its own column: the next one reads it.
        pipeline = pipeline.dyn_estimator(build(&p, &format!("stage_{i}_{stage}"))?);
    }
    Ok(pipeline.dyn_estimator(build(spec)?))
}

/// Whether a larger `metric` is better (its loss is then the negated value).
pub fn higher_is_better(metric: &str) -> bool {
    catalog::higher_is_better(metric)
}

/// `(loss, metrics)` of one trial: the metrics include `objective`, the metric's name. With a
/// `reporter` (a search with a pruner) and one held-out split, the fit's progress is scored on
/// the held-out rows at the steps the pruner asks for and reported.
async fn train_eval(
    spec: &TrainEval,
    reporter: Option<Reporter>,
) -> quiver_engine::Result<(f64, Value)> {
    let c = context()?;
    let splits = dataset(c, spec).await?;
    train_eval_on(&c.session, splits, spec, reporter).await
}

/// [`train_eval`] over `splits` with `session` computing the fits.
async fn train_eval_on(
    session: &QuiverSession,
    splits: Splits,
    spec: &TrainEval,
    reporter: Option<Reporter>,
) -> quiver_engine::Result<(f64, Value)> {
    let mut losses = Vec::with_capacity(splits.len());
    let mut all_metrics = Vec::with_capacity(splits.len());
    let keep = spec.keep_model && splits.len() == 1;
    for (train, test) in splits.iter() {
        let fit = train_eval_split(session, spec, train, test, keep);
        let (loss, metrics) = match &reporter {
            // Cross-validation reports nothing: each fold would restart the steps.
            Some(r) if splits.len() == 1 => {
                let progress = Arc::new(TrialProgress {
                    session: session.clone(),
                    spec: spec.clone(),
                    test: test.clone(),
                    reporter: r.clone(),
                });
                crate::progress::with_progress(progress, fit).await?
            }
            _ => fit.await?,
        };
        losses.push(loss);
        all_metrics.push(metrics);
    }
    if losses.len() == 1 {
        return Ok((losses[0], all_metrics.pop().unwrap_or(Value::Null)));
    }
    // Cross-validation: the mean loss and each metric's mean over the folds.
    let mut mean = serde_json::Map::new();
    if let Some(Value::Object(first)) = all_metrics.first() {
        for k in first.keys() {
            let v: Vec<f64> = all_metrics.iter().filter_map(|m| m[k].as_f64()).collect();
            mean.insert(
                k.clone(),
                json!(v.iter().sum::<f64>() / v.len().max(1) as f64),
            );
        }
    }
    if let Some(Value::Object(first)) = all_metrics.first()
        && let Some(name) = first.get("objective")
    {
        mean.insert("objective".to_string(), name.clone());
    }
    mean.insert("fold_losses".to_string(), json!(losses));
    Ok((
        losses.iter().sum::<f64>() / losses.len() as f64,
        Value::Object(mean),
    ))
}

/// A trial's error: a pruned fit stays pruned, anything else names the task.
fn trial_error(e: crate::MllibError) -> QuiverError {
    match e {
        crate::MllibError::Engine(p @ QuiverError::Pruned { .. }) => p,
        e => QuiverError::TaskFailed {
            task: TRAIN_EVAL.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Scores a trial's fit so far on its held-out rows and reports the loss to the pruner.
struct TrialProgress {
    session: QuiverSession,
    spec: TrainEval,
    test: Dataset,
    reporter: Reporter,
}

impl crate::progress::Progress for TrialProgress {
    fn due(&self, step: u64) -> bool {
        self.reporter.due(step)
    }

    fn report(
        &self,
        step: u64,
        model: Arc<dyn crate::Transformer>,
    ) -> crate::progress::BoxedReport<'_> {
        Box::pin(async move {
            let (loss, _) = score(&self.session, &self.spec, model.as_ref(), &self.test).await?;
            self.reporter.report(step, loss)?;
            Ok(())
        })
    }
}

/// `(loss, metrics)` of one train/test split; with `keep` the fitted pipeline is kept
/// ([`TrainEval::keep_model`]).
async fn train_eval_split(
    s: &QuiverSession,
    spec: &TrainEval,
    train: &Dataset,
    test: &Dataset,
    keep: bool,
) -> quiver_engine::Result<(f64, Value)> {
    let err = trial_error;
    // Without stages the estimator fits the feature columns directly (no assembler pass:
    // about 20% of a small trial's time), unless the fit is kept: then it is the pipeline
    // a refit would make.
    let fitted: Arc<dyn Transformer> = if spec.stages.is_empty() && !keep {
        build(spec)?.fit_dyn(s, train).await.map_err(err)?
    } else {
        // A kept fit assembles the feature columns themselves, as a refit over them does.
        let names = if keep {
            train.features().to_vec()
        } else {
            train.feature_names()?
        };
        let fitted = Arc::new(pipeline(spec, &names)?.fit(s, train).await.map_err(err)?);
        if keep {
            // A model's size is not known without writing it; its parameters are small
            // next to the rows the store keeps, and the search's caller takes or drops them.
            quiver_engine::reuse::put(
                kept_model_key(&spec.dataset, &spec.params),
                Arc::clone(&fitted),
                1 << 16,
            );
        }
        fitted
    };
    score(s, spec, fitted.as_ref(), test).await.map_err(err)
}

/// `(loss, metrics)` of `model` on held-out rows `test`: the spec's metric (or the task's
/// default), negated when higher is better.
async fn score(
    s: &QuiverSession,
    spec: &TrainEval,
    model: &dyn Transformer,
    test: &Dataset,
) -> crate::Result<(f64, Value)> {
    let algorithm = spec.algorithm()?;
    let mut metrics = algorithm.task.evaluate_model(s, model, test).await?;
    let metric = match &spec.metric {
        Some(m) => algorithm
            .task
            .metric(m)
            .map_or_else(|| m.clone(), |m| m.name.to_string()),
        None => algorithm.task.default_metric(&metrics).to_string(),
    };
    let value = metrics[metric.as_str()].as_f64().ok_or_else(|| {
        bad(format!(
            "metric '{metric}' is not computed for {}; available: {metrics}",
            spec.estimator
        ))
    })?;
    metrics["objective"] = json!(metric);
    Ok((
        if higher_is_better(&metric) {
            -value
        } else {
            value
        },
        metrics,
    ))
}

/// The spec a `kind` task carries as its parameters.
fn spec_of(kind: &str, params: &str) -> quiver_engine::Result<TrainEval> {
    serde_json::from_str(params).map_err(|e| QuiverError::Json {
        context: format!("{kind} parameters"),
        source: e,
    })
}

impl TaskRunner for TrainEvalRunner {
    fn kind(&self) -> &str {
        TRAIN_EVAL
    }

    fn run(&self, params: &str) -> quiver_engine::Result<TaskOutcome> {
        let spec = spec_of(TRAIN_EVAL, params)?;
        // Captured here: the trial runs on a runtime that may poll it on another thread.
        let reporter = quiver_engine::fanout::reporter();
        let (loss, metrics) = block_on(train_eval(&spec, reporter))?;
        Ok(TaskOutcome {
            loss: Some(loss),
            metrics,
        })
    }
}

/// The runner as the registry wants it.
pub fn train_eval_runner() -> Arc<dyn TaskRunner> {
    Arc::new(TrainEvalRunner)
}

/// The task kind of a trial placed as a distributed fit (see [`DistributedTrainEval`]).
pub const TRAIN_EVAL_DISTRIBUTED: &str = "quiver.train_eval.distributed";

/// Runs [`TrainEval`] trials in the search's own process as distributed fits on the search's
/// session: every statistic pass of a trial is a query of that session (Ballista jobs on a
/// cluster), over the data where it lies, so a trial's data need not fit one executor. Not
/// registered anywhere: a search makes one for its run.
#[derive(Debug)]
pub struct DistributedTrainEval {
    session: QuiverSession,
    /// The runtime the search runs on: trials are polled there, where the session's
    /// connections live.
    runtime: tokio::runtime::Handle,
}

impl DistributedTrainEval {
    pub fn new(session: QuiverSession, runtime: tokio::runtime::Handle) -> Self {
        DistributedTrainEval { session, runtime }
    }
}

impl TaskRunner for DistributedTrainEval {
    fn kind(&self) -> &str {
        TRAIN_EVAL_DISTRIBUTED
    }

    fn run(&self, params: &str) -> quiver_engine::Result<TaskOutcome> {
        let spec = spec_of(TRAIN_EVAL_DISTRIBUTED, params)?;
        let reporter = quiver_engine::fanout::reporter();
        let session = self.session.clone();
        // The trial's deadline travels into the runtime's task with it.
        let (loss, metrics) = self.runtime.block_on(async move {
            let splits = lazy_splits(&session, &spec).await?;
            train_eval_on(&session, splits, &spec, reporter).await
        })?;
        Ok(TaskOutcome {
            loss: Some(loss),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_cache_drops_the_least_recently_used() {
        let mut c = DatasetCache::default();
        let splits = || Arc::new(Vec::new());
        for k in ["a", "b", "c", "d"] {
            c.insert(k.to_string(), splits(), 10);
        }
        assert!(c.get("a").is_some());
        c.insert("e".to_string(), splits(), 10);
        assert!(c.get("b").is_none(), "b was the least recently used");
        for k in ["a", "c", "d", "e"] {
            assert!(c.get(k).is_some(), "{k}");
        }
        assert_eq!(c.entries.len(), DatasetCache::CAPACITY);
        // Bytes bound it too: a large dataset pushes out the others, and stays itself.
        c.insert("big".to_string(), splits(), DatasetCache::MAX_BYTES - 5);
        let kept: Vec<&String> = c.entries.keys().collect();
        assert!(c.entries.contains_key("big") && kept.len() == 1, "{kept:?}");
        c.insert("huge".to_string(), splits(), DatasetCache::MAX_BYTES * 2);
        assert!(c.get("huge").is_some() && c.get("big").is_none());
    }
}
