//! The built-in objective: train an MLlib estimator with a trial's parameters on a dataset
//! given by URL and score it on a held-out split. It is a registered fan-out task
//! (`quiver.train_eval`), so it runs wherever tasks run, executors included; each process
//! loads a dataset once and reuses it for every trial.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use quiver_engine::fanout::{TaskOutcome, TaskRunner, block_on};
use quiver_engine::{Dataset, QuiverConfig, QuiverError, QuiverSession};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::space::Point;
use crate::{
    BinaryClassificationEvaluator, ClusteringEvaluator, Estimator, KMeans, LinearRegression,
    LogisticRegression, MulticlassClassificationEvaluator, RegressionEvaluator, Transformer,
};

/// The task kind of the built-in objective.
pub const TRAIN_EVAL: &str = "quiver.train_eval";

/// What a `quiver.train_eval` task trains and how it scores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainEval {
    /// Path or URL of the data (any format Quiver reads).
    pub dataset: String,
    /// `logistic_regression`, `linear_regression` or `kmeans`.
    pub estimator: String,
    /// The label column (not for k-means).
    #[serde(default)]
    pub label: Option<String>,
    /// Feature columns; every numeric column but the label when absent.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// The metric to optimise: accuracy, f1, log_loss, area_under_roc (classification); rmse,
    /// mse, mae, r2 (regression); within_ss, silhouette (k-means). Higher-is-better metrics are
    /// negated into a loss. Defaults: log_loss, rmse, within_ss.
    #[serde(default)]
    pub metric: Option<String>,
    /// Held-out fraction. Defaults to 0.2.
    #[serde(default = "default_fraction")]
    pub eval_fraction: f64,
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
    /// `min_rel_progress`, `num_clusters`, `standardize_features`, `kmeans_init_method`, …),
    /// translated to the estimator's before it is built.
    #[serde(default)]
    pub sql_options: bool,
    /// Feature stages fitted on each trial's training rows before the estimator (a
    /// pipeline): `standard_scaler` (parameters `standard_scaler.with_mean`,
    /// `standard_scaler.with_std`) and `min_max_scaler` (`min_max_scaler.min`,
    /// `min_max_scaler.max`). A stage's parameters are searched like the estimator's.
    #[serde(default)]
    pub stages: Vec<String>,
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
            folds: None,
            split_seed: 0,
            params: Point::new(),
            sql_options: false,
            stages: Vec::new(),
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

/// Datasets kept loaded, at most [`DatasetCache::CAPACITY`]: the least recently used goes first
/// (a long-lived executor serves many searches, each over its own data).
#[derive(Default)]
struct DatasetCache {
    entries: HashMap<String, (Splits, u64)>,
    clock: u64,
}

impl DatasetCache {
    const CAPACITY: usize = 4;

    fn get(&mut self, key: &str) -> Option<Splits> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(key).map(|(splits, used)| {
            *used = now;
            Arc::clone(splits)
        })
    }

    fn insert(&mut self, key: String, splits: Splits) {
        self.clock += 1;
        self.entries.insert(key, (splits, self.clock));
        while self.entries.len() > Self::CAPACITY {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
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

fn num(params: &Point, key: &str) -> quiver_engine::Result<Option<f64>> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("parameter '{key}' = {v} is not a number"))),
    }
}

fn flag(params: &Point, key: &str) -> quiver_engine::Result<Option<bool>> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(format!("parameter '{key}' = {v} is not a boolean"))),
    }
}

fn check_known(params: &Point, known: &[&str], estimator: &str) -> quiver_engine::Result<()> {
    for k in params.keys() {
        if !known.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown parameter '{k}' for {estimator}; known: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
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
    ))
    .unwrap_or_default();
    if let Some(d) = c.data.lock().expect("dataset cache").get(&key) {
        return Ok(d);
    }
    let weights: Vec<f64> = match spec.folds {
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
    };
    let df = c.session.read(&spec.dataset).await?;
    let batches = df.collect().await?;
    let data = spec.with_roles(Dataset::new(c.session.from_batches(batches, 1)?))?;
    // Materialise the parts once: every trial reuses the same rows.
    let mut parts = Vec::with_capacity(weights.len());
    for part in data.random_split(&weights, spec.split_seed)? {
        parts.push(part.dataframe().clone().collect().await?);
    }
    let with_roles = |batches: Vec<arrow::array::RecordBatch>| {
        let mut out =
            Dataset::new(c.session.from_batches(batches, 1)?).with_features(data.features())?;
        if let Some(l) = data.label() {
            out = out.with_label(l)?;
        }
        Ok::<Dataset, QuiverError>(out)
    };
    let held_out: Vec<usize> = if spec.folds.is_some() {
        (0..parts.len()).collect()
    } else {
        vec![1]
    };
    let mut splits = Vec::with_capacity(held_out.len());
    for i in held_out {
        let train: Vec<_> = parts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect();
        splits.push((with_roles(train)?, with_roles(parts[i].clone())?));
    }
    let splits = Arc::new(splits);
    c.data
        .lock()
        .expect("dataset cache")
        .insert(key, Arc::clone(&splits));
    Ok(splits)
}

/// (train, test) pairs.
type Splits = Arc<Vec<(Dataset, Dataset)>>;

/// An estimator configured with a trial's parameters.
pub enum Built {
    Logistic(LogisticRegression),
    Linear(LinearRegression),
    KMeans(KMeans),
}

/// The estimator `spec` names, with `spec.params` applied (unknown names and bad values are
/// errors naming them).
pub fn build(spec: &TrainEval) -> quiver_engine::Result<Built> {
    check_stages(spec)?;
    let own: Point = spec
        .params
        .iter()
        .filter(|(k, _)| !k.contains('.'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let translated;
    let p = if spec.sql_options {
        translated = from_sql_options(&spec.estimator, &own)?;
        &translated
    } else {
        &own
    };
    Ok(match spec.estimator.as_str() {
        "logistic_regression" => {
            check_known(
                p,
                &[
                    "reg_param",
                    "elastic_net_param",
                    "max_iter",
                    "tol",
                    "fit_intercept",
                    "standardization",
                ],
                "logistic_regression",
            )?;
            let mut e = LogisticRegression::new();
            if let Some(v) = num(p, "reg_param")? {
                e = e.reg_param(v);
            }
            if let Some(v) = num(p, "elastic_net_param")? {
                e = e.elastic_net_param(v);
            }
            if let Some(v) = num(p, "max_iter")? {
                e = e.max_iter(v as usize);
            }
            if let Some(v) = num(p, "tol")? {
                e = e.tol(v);
            }
            if let Some(v) = flag(p, "fit_intercept")? {
                e = e.fit_intercept(v);
            }
            if let Some(v) = flag(p, "standardization")? {
                e = e.standardization(v);
            }
            Built::Logistic(e)
        }
        "linear_regression" => {
            check_known(
                p,
                &[
                    "reg_param",
                    "elastic_net_param",
                    "fit_intercept",
                    "standardization",
                ],
                "linear_regression",
            )?;
            let mut e = LinearRegression::new();
            if let Some(v) = num(p, "reg_param")? {
                e = e.reg_param(v);
            }
            if let Some(v) = num(p, "elastic_net_param")? {
                e = e.elastic_net_param(v);
            }
            if let Some(v) = flag(p, "fit_intercept")? {
                e = e.fit_intercept(v);
            }
            if let Some(v) = flag(p, "standardization")? {
                e = e.standardization(v);
            }
            Built::Linear(e)
        }
        "kmeans" => {
            check_known(
                p,
                &["k", "max_iter", "tol", "seed", "init_steps", "init_mode"],
                "kmeans",
            )?;
            let mut e = KMeans::new();
            if let Some(v) = num(p, "k")? {
                e = e.k(v as usize);
            }
            if let Some(v) = num(p, "max_iter")? {
                e = e.max_iter(v as usize);
            }
            if let Some(v) = num(p, "tol")? {
                e = e.tol(v);
            }
            if let Some(v) = num(p, "seed")? {
                e = e.seed(v as u64);
            }
            if let Some(v) = num(p, "init_steps")? {
                e = e.init_steps(v as usize);
            }
            match p.get("init_mode").map(|v| (v, v.as_str())) {
                None => {}
                Some((_, Some("random"))) => e = e.init_mode(crate::KMeansInit::Random),
                Some((_, Some("k-means||" | "kmeans++"))) => {
                    e = e.init_mode(crate::KMeansInit::KMeansParallel)
                }
                Some((v, _)) => {
                    return Err(bad(format!(
                        "parameter 'init_mode' = {v}: use \"k-means||\" or \"random\""
                    )));
                }
            }
            Built::KMeans(e)
        }
        other => {
            return Err(bad(format!(
                "unknown estimator '{other}'; use logistic_regression, linear_regression or kmeans"
            )));
        }
    })
}

/// The estimator parameters that `CREATE MODEL` options mean for `estimator`: `l1_reg` and
/// `l2_reg` become `reg_param = l1 + l2` and `elastic_net_param = l1 / (l1 + l2)`, the
/// other names map one to one; an option the estimator does not take is an error naming it.
fn from_sql_options(estimator: &str, options: &Point) -> quiver_engine::Result<Point> {
    let mut out = Point::new();
    let (mut l1, mut l2) = (None, None);
    for (k, v) in options {
        let to = match (estimator, k.as_str()) {
            ("logistic_regression" | "linear_regression", "l1_reg") => {
                l1 = Some(num(options, k)?.unwrap_or(0.0));
                continue;
            }
            ("logistic_regression" | "linear_regression", "l2_reg") => {
                l2 = Some(num(options, k)?.unwrap_or(0.0));
                continue;
            }
            ("logistic_regression" | "linear_regression", "fit_intercept") => "fit_intercept",
            ("logistic_regression" | "linear_regression", "standardize_features") => {
                "standardization"
            }
            ("logistic_regression" | "kmeans", "max_iterations") => "max_iter",
            ("logistic_regression" | "kmeans", "min_rel_progress") => "tol",
            // Linear regression is solved exactly: no iteration budget to set.
            ("linear_regression", "max_iterations") => continue,
            ("kmeans", "num_clusters") => "k",
            ("kmeans", "seed") => "seed",
            ("kmeans", "kmeans_init_method") => "init_mode",
            _ => {
                return Err(bad(format!("option '{k}' does not apply to {estimator}")));
            }
        };
        out.insert(to.to_string(), v.clone());
    }
    if l1.is_some() || l2.is_some() {
        let (l1, l2) = (l1.unwrap_or(0.0), l2.unwrap_or(0.0));
        let total = l1 + l2;
        out.insert("reg_param".to_string(), json!(total));
        out.insert(
            "elastic_net_param".to_string(),
            json!(if total > 0.0 { l1 / total } else { 0.0 }),
        );
    }
    Ok(out)
}

/// Fits `VectorAssembler → estimator(params)` on all of `spec`'s data (the search's best
/// trial, refitted): a pipeline that `ml_predict` can apply to the feature columns.
pub async fn refit(
    session: &QuiverSession,
    spec: &TrainEval,
    params: &Point,
) -> crate::Result<crate::PipelineModel> {
    let mut spec = spec.clone();
    spec.params.extend(params.clone());
    let data = spec.with_roles(Dataset::new(session.read(&spec.dataset).await?))?;
    pipeline(&spec, &data.feature_names()?)?
        .fit(session, &data)
        .await
}

/// Every stage is known and every `stage.param` names one of the spec's stages.
fn check_stages(spec: &TrainEval) -> quiver_engine::Result<()> {
    if let Some(other) = spec
        .stages
        .iter()
        .find(|s| !matches!(s.as_str(), "standard_scaler" | "min_max_scaler"))
    {
        return Err(bad(format!(
            "unknown stage '{other}'; use standard_scaler or min_max_scaler"
        )));
    }
    for k in spec.params.keys() {
        if let Some((stage, _)) = k.split_once('.')
            && !spec.stages.iter().any(|s| s == stage)
        {
            return Err(bad(format!(
                "parameter '{k}': no stage '{stage}' in stages [{}]",
                spec.stages.join(", ")
            )));
        }
    }
    Ok(())
}

/// `VectorAssembler(names) → stages → estimator`, with `spec.params` applied (a stage's as
/// `stage.param`); unknown stages and parameters are errors naming them.
pub fn pipeline(spec: &TrainEval, names: &[String]) -> quiver_engine::Result<crate::Pipeline> {
    check_stages(spec)?;
    let mut pipeline = crate::Pipeline::new().transformer(crate::VectorAssembler::new(names));
    for (i, stage) in spec.stages.iter().enumerate() {
        let prefix = format!("{stage}.");
        let p: Point = spec
            .params
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect();
        // Each stage writes its own column: the next one reads it.
        let out = format!("stage_{i}_{stage}");
        pipeline = match stage.as_str() {
            "standard_scaler" => {
                check_known(&p, &["with_mean", "with_std"], stage)?;
                let mut e = crate::StandardScaler::new().output_col(out);
                if let Some(v) = flag(&p, "with_mean")? {
                    e = e.with_mean(v);
                }
                if let Some(v) = flag(&p, "with_std")? {
                    e = e.with_std(v);
                }
                pipeline.estimator(e)
            }
            "min_max_scaler" => {
                check_known(&p, &["min", "max"], stage)?;
                let mut e = crate::MinMaxScaler::new().output_col(out);
                if let Some(v) = num(&p, "min")? {
                    e = e.min(v);
                }
                if let Some(v) = num(&p, "max")? {
                    e = e.max(v);
                }
                pipeline.estimator(e)
            }
            other => {
                return Err(bad(format!(
                    "unknown stage '{other}'; use standard_scaler or min_max_scaler"
                )));
            }
        };
    }
    Ok(match build(spec)? {
        Built::Logistic(e) => pipeline.estimator(e),
        Built::Linear(e) => pipeline.estimator(e),
        Built::KMeans(e) => pipeline.estimator(e),
    })
}

/// Whether a larger `metric` is better (its loss is then the negated value).
pub fn higher_is_better(metric: &str) -> bool {
    matches!(
        metric,
        "accuracy" | "f1" | "area_under_roc" | "r2" | "silhouette"
    )
}

/// `(loss, metrics)` of one trial: the metrics include `objective`, the metric's name.
async fn train_eval(spec: &TrainEval) -> quiver_engine::Result<(f64, Value)> {
    let c = context()?;
    let splits = dataset(c, spec).await?;
    let mut losses = Vec::with_capacity(splits.len());
    let mut all_metrics = Vec::with_capacity(splits.len());
    for (train, test) in splits.iter() {
        let (loss, metrics) = train_eval_split(c, spec, train, test).await?;
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

/// `(loss, metrics)` of one train/test split.
async fn train_eval_split(
    c: &TrialContext,
    spec: &TrainEval,
    train: &Dataset,
    test: &Dataset,
) -> quiver_engine::Result<(f64, Value)> {
    let s = &c.session;
    let err = |e: crate::MllibError| QuiverError::TaskFailed {
        task: TRAIN_EVAL.to_string(),
        reason: e.to_string(),
    };
    // Without stages the estimator fits the feature columns directly (no assembler pass:
    // about 20% of a small trial's time).
    let scored = match (spec.stages.is_empty(), build(spec)?) {
        (true, Built::Logistic(e)) => e.fit(s, train).await.map_err(err)?.transform(test),
        (true, Built::Linear(e)) => e.fit(s, train).await.map_err(err)?.transform(test),
        (true, Built::KMeans(e)) => e.fit(s, train).await.map_err(err)?.transform(test),
        (false, _) => pipeline(spec, &train.feature_names()?)?
            .fit(s, train)
            .await
            .map_err(err)?
            .transform(test),
    }
    .map_err(err)?;
    let (metrics, metric) = match build(spec)? {
        Built::Logistic(_) => {
            let m = MulticlassClassificationEvaluator::new()
                .evaluate(s, &scored)
                .await
                .map_err(err)?;
            let binary = m.classes.len() <= 2;
            let mut metrics = json!({"accuracy": m.accuracy, "f1": m.f1});
            if binary {
                let b = BinaryClassificationEvaluator::new()
                    .evaluate(s, &scored)
                    .await
                    .map_err(err)?;
                metrics["log_loss"] = json!(b.log_loss);
                metrics["area_under_roc"] = json!(b.area_under_roc);
            }
            let default = if binary { "log_loss" } else { "accuracy" };
            (
                metrics,
                spec.metric.clone().unwrap_or_else(|| default.to_string()),
            )
        }
        Built::Linear(_) => {
            let m = RegressionEvaluator::new()
                .evaluate(s, &scored)
                .await
                .map_err(err)?;
            (
                json!({"rmse": m.rmse, "mse": m.mse, "mae": m.mae, "r2": m.r2}),
                spec.metric.clone().unwrap_or_else(|| "rmse".to_string()),
            )
        }
        Built::KMeans(_) => {
            let m = ClusteringEvaluator::new()
                .evaluate(s, &scored)
                .await
                .map_err(err)?;
            (
                json!({"within_ss": m.within_ss, "silhouette": m.silhouette}),
                spec.metric
                    .clone()
                    .unwrap_or_else(|| "within_ss".to_string()),
            )
        }
    };
    let value = metrics[metric.as_str()].as_f64().ok_or_else(|| {
        bad(format!(
            "metric '{metric}' is not computed for {}; available: {metrics}",
            spec.estimator
        ))
    })?;
    let mut metrics = metrics;
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

impl TaskRunner for TrainEvalRunner {
    fn kind(&self) -> &str {
        TRAIN_EVAL
    }

    fn run(&self, params: &str) -> quiver_engine::Result<TaskOutcome> {
        let spec: TrainEval = serde_json::from_str(params).map_err(|e| QuiverError::Json {
            context: format!("{TRAIN_EVAL} parameters"),
            source: e,
        })?;
        let (loss, metrics) = block_on(train_eval(&spec))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_cache_drops_the_least_recently_used() {
        let mut c = DatasetCache::default();
        let splits = || Arc::new(Vec::new());
        for k in ["a", "b", "c", "d"] {
            c.insert(k.to_string(), splits());
        }
        assert!(c.get("a").is_some());
        c.insert("e".to_string(), splits());
        assert!(c.get("b").is_none(), "b was the least recently used");
        for k in ["a", "c", "d", "e"] {
            assert!(c.get(k).is_some(), "{k}");
        }
        assert_eq!(c.entries.len(), DatasetCache::CAPACITY);
    }
}
