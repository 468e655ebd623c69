//! The catalogue: every algorithm and feature stage Quiver knows, declared once. Rust
//! (`TrainEval`, pipeline loading), SQL (`CREATE MODEL`, the model table functions), tuning
//! and the cluster registries read these entries; none of them matches on algorithm names.
//!
//! An [`Algorithm`] says what the algorithm is called (its kind — also its stored model's kind
//! and its name in `TrainEval` — and its SQL `model_type`s), its [`Task`] (which evaluator
//! scores it, which metrics it reports and which is the default), how an estimator is built
//! from a parameter map (serde over the estimator's defaults, then its `check()`), the SQL
//! options it takes and the parameters they set, which options are tunable and their default
//! search ranges, how its fitted model loads from the store, and the functions it registers
//! for the cluster. Adding an algorithm is its folder plus one entry in [`ALGORITHMS`].

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use quiver_engine::{Dataset, FunctionRegistry, ModelMetadata, QuiverSession};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{DynEstimator, DynModel, Model, Transformer};
use crate::classification::{
    LogisticRegression, LogisticRegressionModel, NaiveBayes, NaiveBayesModel,
};
use crate::clustering::{KMeans, KMeansModel};
use crate::decomposition::{PCA, PCAModel};
use crate::error::{MllibError, Result};
use crate::feature::{
    Bucketizer, ImputerModel, Interaction, MinMaxScaler, MinMaxScalerModel, MissingNumbers,
    OneHotEncoderModel, PolynomialExpansion, PreprocessorModel, StandardScaler,
    StandardScalerModel, StringIndexerModel, VectorAssembler,
};
use crate::regression::{LinearRegression, LinearRegressionModel};
use crate::tree::{
    DecisionTreeClassificationModel, DecisionTreeClassifier, DecisionTreeRegressionModel,
    DecisionTreeRegressor, GBTClassificationModel, GBTClassifier, GBTRegressionModel, GBTRegressor,
    RandomForestClassificationModel, RandomForestClassifier, RandomForestRegressionModel,
    RandomForestRegressor,
};
use crate::tuning::space::{Param, Point, hp};
use crate::{ClusteringEvaluator, ExplainedVarianceEvaluator, RegressionEvaluator};

/// What an algorithm learns: it decides the evaluator, the metrics and the default metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Classification,
    Regression,
    Clustering,
    Decomposition,
}

/// A metric an evaluator reports, with the other names users give it (BigQuery ML's among
/// them) and its direction.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub higher_is_better: bool,
}

const fn metric(name: &'static str, aliases: &'static [&'static str], higher: bool) -> Metric {
    Metric {
        name,
        aliases,
        higher_is_better: higher,
    }
}

const CLASSIFICATION_METRICS: &[Metric] = &[
    metric("accuracy", &[], true),
    metric("f1", &["f1_score"], true),
    metric("weighted_precision", &["precision"], true),
    metric("weighted_recall", &["recall"], true),
    metric("area_under_roc", &["roc_auc"], true),
    metric("area_under_pr", &["pr_auc"], true),
    metric("log_loss", &[], false),
];
const REGRESSION_METRICS: &[Metric] = &[
    metric("rmse", &["root_mean_squared_error"], false),
    metric("mse", &["mean_squared_error"], false),
    metric("mae", &["mean_absolute_error"], false),
    metric("r2", &["r2_score"], true),
];
const CLUSTERING_METRICS: &[Metric] = &[
    metric("silhouette", &["silhouette_score"], true),
    metric("within_ss", &["within_cluster_sum_of_squares"], false),
];
const DECOMPOSITION_METRICS: &[Metric] = &[metric("total_explained_variance_ratio", &[], true)];

impl Task {
    /// The metrics its evaluator reports (`ml_evaluate`'s columns), in order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Task::Classification => CLASSIFICATION_METRICS,
            Task::Regression => REGRESSION_METRICS,
            Task::Clustering => CLUSTERING_METRICS,
            Task::Decomposition => DECOMPOSITION_METRICS,
        }
    }

    /// The metric named `name` (or one of its aliases), case-insensitively.
    pub fn metric(self, name: &str) -> Option<&'static Metric> {
        let name = name.to_ascii_lowercase();
        self.metrics()
            .iter()
            .find(|m| m.name == name || m.aliases.contains(&name.as_str()))
    }

    /// Every name [`Task::metric`] accepts, for error messages.
    pub fn metric_names(self) -> Vec<&'static str> {
        self.metrics()
            .iter()
            .flat_map(|m| std::iter::once(m.name).chain(m.aliases.iter().copied()))
            .collect()
    }

    /// The metric a trial optimises when none is named, given what the evaluator computed:
    /// log loss for two classes, accuracy for more; rmse; within-cluster spread; explained
    /// variance.
    pub fn default_metric(self, computed: &Value) -> &'static str {
        match self {
            Task::Classification if computed.get("log_loss").is_some() => "log_loss",
            Task::Classification => "accuracy",
            Task::Regression => "rmse",
            Task::Clustering => "within_ss",
            Task::Decomposition => "total_explained_variance_ratio",
        }
    }

    /// The metric a tuned `CREATE MODEL` optimises when none is named, where it differs from
    /// [`Task::default_metric`]: within-cluster spread always falls as k grows, so the
    /// silhouette chooses k.
    pub fn tuning_metric(self) -> Option<&'static str> {
        match self {
            Task::Clustering => Some("silhouette"),
            _ => None,
        }
    }

    /// Whether the task trains against a label column.
    pub fn supervised(self) -> bool {
        matches!(self, Task::Classification | Task::Regression)
    }

    /// The task's metrics of the scored rows `scored` (a model's output on a dataset with its
    /// roles), as a JSON object. Metrics that cannot be computed on these rows (a silhouette
    /// with one cluster, ROC for more than two classes) are left out, or reported under
    /// `error` when none can.
    pub async fn evaluate(self, session: &QuiverSession, scored: &Dataset) -> Result<Value> {
        Ok(match self {
            Task::Classification => {
                // Both evaluators' counts in one pass over the scored rows.
                let has_scores = scored
                    .dataframe()
                    .schema()
                    .has_column_with_unqualified_name("probability");
                let (m, binary) = crate::evaluation::evaluate_classifier(
                    session,
                    scored,
                    "prediction",
                    has_scores.then_some("probability"),
                )
                .await?;
                classifier_json(&m, binary.as_ref())
            }
            Task::Regression => {
                let m = RegressionEvaluator::new().evaluate(session, scored).await?;
                json!({ "rmse": m.rmse, "mse": m.mse, "mae": m.mae, "r2": m.r2 })
            }
            Task::Clustering => match ClusteringEvaluator::new().evaluate(session, scored).await {
                Ok(m) => json!({
                    "silhouette": m.silhouette,
                    "within_ss": m.within_ss,
                    "cluster_sizes": m.cluster_sizes,
                }),
                // One non-empty cluster: no silhouette, the spread still means something.
                Err(e) => json!({ "error": e.to_string() }),
            },
            Task::Decomposition => {
                let m = ExplainedVarianceEvaluator::new()
                    .evaluate(session, scored)
                    .await?;
                json!({ "total_explained_variance_ratio": m.total_explained_variance_ratio })
            }
        })
    }

    /// [`Task::evaluate`] of `model`'s output on `data`. A classifier that can score and count
    /// its rows in one pass ([`Transformer::evaluate_classifier`]) does, without its output
    /// columns; the metrics are the same.
    pub async fn evaluate_model(
        self,
        session: &QuiverSession,
        model: &dyn Transformer,
        data: &Dataset,
    ) -> Result<Value> {
        if self == Task::Classification
            && let Some(evaluation) = model.evaluate_classifier(session, data)
        {
            let (m, binary) = evaluation.await?;
            return Ok(classifier_json(&m, binary.as_ref()));
        }
        self.evaluate(session, &model.transform(data)?).await
    }
}

/// A classifier's metrics as [`Task::evaluate`] reports them.
fn classifier_json(
    m: &crate::evaluation::MulticlassMetrics,
    binary: Option<&crate::evaluation::BinaryMetrics>,
) -> Value {
    let mut out = json!({
        "accuracy": m.accuracy,
        "f1": m.f1,
        "weighted_precision": m.weighted_precision,
        "weighted_recall": m.weighted_recall,
    });
    if let Some(b) = binary {
        out["area_under_roc"] = json!(b.area_under_roc);
        out["area_under_pr"] = json!(b.area_under_pr);
        out["log_loss"] = json!(b.log_loss);
    }
    out
}

/// Whether a larger value of the metric `name` is better (its loss is then the negated
/// value), whichever task reports it. Unknown names count as losses.
pub fn higher_is_better(name: &str) -> bool {
    [
        Task::Classification,
        Task::Regression,
        Task::Clustering,
        Task::Decomposition,
    ]
    .iter()
    .find_map(|t| t.metric(name))
    .is_some_and(|m| m.higher_is_better)
}

/// The values a SQL option takes.
#[derive(Debug, Clone, Copy)]
pub enum OptionType {
    /// A finite number ≥ 0.
    NonNegative,
    /// A number in (0, 1].
    Fraction,
    /// A whole number ≥ 1.
    Count,
    /// A whole number ≥ 0.
    Whole,
    Bool,
    /// One of these strings, each with the parameter value it stands for.
    Text(&'static [(&'static str, &'static str)]),
}

/// What a SQL option sets.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// This parameter, with the option's value.
    Param(&'static str),
    /// `l1_reg`: with `l2_reg` it sets `reg_param = l1 + l2`, `elastic_net_param = l1/(l1 + l2)`.
    L1,
    /// `l2_reg`: see [`Target::L1`].
    L2,
    /// Accepted and ignored (an iteration budget of an exact solver).
    Ignored,
}

/// Whether trials may vary an option, and its search range when `num_trials` is given
/// without any `HPARAM_…` (as BigQuery ML does).
#[derive(Debug, Clone, Copy)]
pub enum Tune {
    No,
    Yes,
    /// Tunable, and searched over this range by default.
    Default(Range),
}

/// A default search range.
#[derive(Debug, Clone, Copy)]
pub enum Range {
    /// Log-uniform over [low, high].
    Log(f64, f64),
    /// Integers in [low, high].
    Int(i64, i64),
}

/// One SQL option of a model type.
#[derive(Debug, Clone, Copy)]
pub struct SqlOption {
    pub name: &'static str,
    pub target: Target,
    pub ty: OptionType,
    pub tune: Tune,
    /// `CREATE MODEL` needs it (there is no sensible default).
    pub required: bool,
    pub doc: &'static str,
}

const fn opt(name: &'static str, target: Target, ty: OptionType, doc: &'static str) -> SqlOption {
    SqlOption {
        name,
        target,
        ty,
        tune: Tune::No,
        required: false,
        doc,
    }
}

impl SqlOption {
    const fn tune(mut self, tune: Tune) -> Self {
        self.tune = tune;
        self
    }

    const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn tunable(&self) -> bool {
        !matches!(self.tune, Tune::No)
    }

    /// Checks a JSON value against the option's type; returns it as the parameter value.
    pub fn convert(&self, v: &Value) -> Result<Value> {
        let bad = |reason: String| MllibError::InvalidOption {
            option: self.name.to_string(),
            reason,
        };
        let number = || {
            v.as_f64()
                .ok_or_else(|| bad(format!("expects a number, got {v}")))
        };
        Ok(match self.ty {
            OptionType::NonNegative => match number()? {
                x if x >= 0.0 && x.is_finite() => json!(x),
                x => return Err(bad(format!("must be ≥ 0, got {x}"))),
            },
            OptionType::Fraction => match number()? {
                x if x > 0.0 && x <= 1.0 => json!(x),
                x => return Err(bad(format!("must be in (0, 1], got {x}"))),
            },
            OptionType::Count | OptionType::Whole => {
                let x = number()?;
                if !(x >= 0.0 && x.fract() == 0.0 && x < 9.0e15) {
                    return Err(bad(format!("expects a whole number ≥ 0, got {x}")));
                }
                if matches!(self.ty, OptionType::Count) && x < 1.0 {
                    return Err(bad("must be at least 1".to_string()));
                }
                json!(x as u64)
            }
            OptionType::Bool => json!(
                v.as_bool()
                    .ok_or_else(|| bad(format!("expects TRUE or FALSE, got {v}")))?
            ),
            OptionType::Text(choices) => {
                let s = v
                    .as_str()
                    .ok_or_else(|| bad(format!("expects a string, got {v}")))?;
                match choices.iter().find(|(sql, _)| sql.eq_ignore_ascii_case(s)) {
                    Some((_, param)) => json!(param),
                    None => {
                        return Err(bad(format!(
                            "unknown value '{s}'; use {}",
                            choices
                                .iter()
                                .map(|(sql, _)| format!("'{sql}'"))
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )));
                    }
                }
            }
        })
    }
}

/// What feature importance a model kind has (`ml_feature_importance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportanceKind {
    None,
    /// Linear models: the absolute standardised coefficient, `|βⱼ| σⱼ` (the largest over the
    /// classes of a multinomial model).
    Coefficients,
    /// Trees: splits on the feature, their total gain and total cover (`importance_weight`,
    /// `importance_gain`, `importance_cover`).
    Splits,
}

/// How a model kind's predictions are attributed to its features (`ml_explain_predict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    None,
    /// Exact: `βⱼ (xⱼ − μⱼ)` on the margin.
    Exact,
    /// TreeSHAP over the trees.
    TreeShap,
}

/// The `model_type`s of the algorithms that satisfy `keep`, for error messages.
pub fn model_types_where(keep: impl Fn(&Algorithm) -> bool) -> String {
    ALGORITHMS
        .iter()
        .filter(|a| keep(a))
        .map(|a| format!("'{}'", a.model_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A default SQL option value.
#[derive(Debug, Clone, Copy)]
pub enum SqlDefault {
    Number(f64),
    Bool(bool),
}

/// Builds an estimator from a parameter map.
pub type Build = fn(&Point) -> Result<Arc<dyn DynEstimator>>;
/// Builds a feature stage from a parameter map, writing the given output column.
pub type BuildStage = fn(&Point, &str) -> Result<Arc<dyn DynEstimator>>;
/// Rebuilds a fitted model from its metadata and parts.
pub type Load = fn(&ModelMetadata, &BTreeMap<String, Bytes>) -> Result<Arc<dyn DynModel>>;
/// Adds an algorithm's statistics and map functions to a registry (for the cluster codecs).
pub type Register = fn(&mut FunctionRegistry) -> quiver_engine::Result<()>;

/// One algorithm, as every front end sees it.
#[derive(Debug)]
pub struct Algorithm {
    /// Its kind: the estimator's name in `TrainEval` and `quiver tune`, and its fitted model's
    /// kind in the store.
    pub name: &'static str,
    /// The Rust estimator type, for messages and docs.
    pub estimator: &'static str,
    /// `CREATE MODEL`'s `model_type` names; the first is the canonical one.
    pub model_types: &'static [&'static str],
    pub task: Task,
    /// The SQL options it takes besides the common ones (`model_type`, `input_label_cols`,
    /// the data split, `seed`, the tuning options).
    pub options: &'static [SqlOption],
    /// Option values `CREATE MODEL` uses when a statement leaves them out, where BigQuery ML's
    /// defaults differ from the estimator's (Spark's) defaults.
    pub sql_defaults: &'static [(&'static str, SqlDefault)],
    /// What `CREATE MODEL`'s automatic preprocessing does with missing numbers: impute the
    /// training mean, or keep them missing for models that route them (trees, which also
    /// take string columns as category indices rather than one-hot).
    pub missing_values: MissingNumbers,
    /// What `ml_feature_importance` reports for its models.
    pub importance: ImportanceKind,
    /// How `ml_explain_predict` and `ml_global_explain` attribute its predictions.
    pub attribution: Attribution,
    /// Whether its fit keeps the prepared rows in memory for many passes
    /// ([`quiver_engine::QuiverSession::prepare_iterative`]). `CREATE MODEL` then encodes its
    /// training rows once and keeps them, so the fit's kept copy is also the one the evaluation
    /// reads; for a fit that reads its rows once (or keeps a copy of its own, as the trees'
    /// binned rows) a kept encoded copy would only cost memory and page faults, and the rows
    /// are encoded as each pass reads them.
    pub keeps_prepared_rows: bool,
    pub build: Build,
    pub load: Load,
    pub register: Register,
}

impl Algorithm {
    pub fn model_type(&self) -> &'static str {
        self.model_types[0]
    }

    pub fn option(&self, name: &str) -> Option<&'static SqlOption> {
        self.options.iter().find(|o| o.name == name)
    }

    /// The estimator with `params` (parameter names; unknown ones and bad values are errors
    /// naming them) over its defaults, checked.
    pub fn estimator(&self, params: &Point) -> Result<Arc<dyn DynEstimator>> {
        (self.build)(params)
    }

    /// The parameters that SQL option values mean: each is checked against its type and
    /// mapped to its parameter; an option this algorithm does not take is an error naming it.
    pub fn params_from_sql(&self, options: &Point) -> Result<Point> {
        let mut out = Point::new();
        let (mut l1, mut l2) = (None, None);
        let mut options = options.clone();
        for (name, default) in self.sql_defaults {
            options.entry(name.to_string()).or_insert(match default {
                SqlDefault::Number(x) => json!(x),
                SqlDefault::Bool(b) => json!(b),
            });
        }
        for (k, v) in &options {
            let o = self.option(k).ok_or_else(|| MllibError::UnknownOption {
                option: k.clone(),
                model_type: self.model_type().to_string(),
                valid: self.option_names().join(", "),
            })?;
            let value = o.convert(v)?;
            match o.target {
                Target::Param(p) => {
                    out.insert(p.to_string(), value);
                }
                Target::L1 => l1 = value.as_f64(),
                Target::L2 => l2 = value.as_f64(),
                Target::Ignored => {}
            }
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

    /// The names of its SQL options.
    pub fn option_names(&self) -> Vec<&'static str> {
        self.options.iter().map(|o| o.name).collect()
    }

    /// The search space over SQL options used when tuning names no option: every option with
    /// a default range.
    pub fn default_space(&self) -> Vec<Param> {
        self.options
            .iter()
            .filter_map(|o| match o.tune {
                Tune::Default(Range::Log(lo, hi)) => Some(hp::loguniform(o.name, lo, hi)),
                Tune::Default(Range::Int(lo, hi)) => Some(hp::randint(o.name, lo, hi + 1)),
                _ => None,
            })
            .collect()
    }
}

/// A feature stage that a stored pipeline may hold.
#[derive(Debug)]
pub struct FeatureStage {
    /// Its kind in the store, and its name in `TrainEval::stages`.
    pub name: &'static str,
    /// How `TrainEval` builds it before the estimator, writing `output_col`: only for stages
    /// that map the feature vector.
    pub build: Option<BuildStage>,
    pub load: Load,
    pub register: Register,
}

/// The estimator `E` with `params` set over its defaults, then checked: serde reads the
/// merged map, so the names are the estimator's field names and an unknown one is an error
/// listing those it knows.
pub fn from_params<E>(algorithm: &str, params: &Point, check: fn(&E) -> Result<()>) -> Result<E>
where
    E: Serialize + DeserializeOwned + Default,
{
    let internal = |e: serde_json::Error| MllibError::InvalidParam {
        param: algorithm.to_string(),
        reason: e.to_string(),
    };
    let Value::Object(mut merged) = serde_json::to_value(E::default()).map_err(internal)? else {
        return Err(MllibError::InvalidParam {
            param: algorithm.to_string(),
            reason: "its parameters are not a JSON object".to_string(),
        });
    };
    for (k, v) in params {
        let Some(default) = merged.get(k) else {
            return Err(MllibError::UnknownParam {
                param: k.clone(),
                algorithm: algorithm.to_string(),
                known: merged.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let value = coerce(k, default, v)?;
        merged.insert(k.clone(), value);
    }
    let e: E =
        serde_json::from_value(Value::Object(merged)).map_err(|e| MllibError::InvalidParam {
            param: algorithm.to_string(),
            reason: e.to_string(),
        })?;
    check(&e)?;
    Ok(e)
}

/// `v` in the JSON type of the parameter's default: whole numbers for counts (a search's
/// `3.0` is `3`), numbers and booleans as such; anything else as given (serde checks it).
fn coerce(param: &str, default: &Value, v: &Value) -> Result<Value> {
    let bad = |reason: String| MllibError::InvalidParam {
        param: param.to_string(),
        reason,
    };
    Ok(match default {
        Value::Number(n) if n.is_u64() => match v.as_f64() {
            Some(x) if x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 => json!(x as u64),
            Some(x) => return Err(bad(format!("{x} is not a whole number ≥ 0"))),
            None => return Err(bad(format!("{v} is not a number"))),
        },
        Value::Number(_) => json!(
            v.as_f64()
                .ok_or_else(|| bad(format!("{v} is not a number")))?
        ),
        Value::Bool(_) => json!(
            v.as_bool()
                .ok_or_else(|| bad(format!("{v} is not a boolean")))?
        ),
        _ => v.clone(),
    })
}

/// [`Load`] for the model type `M`, refusing a newer format than this build reads.
pub fn load_model<M: Model + 'static>(
    meta: &ModelMetadata,
    parts: &BTreeMap<String, Bytes>,
) -> Result<Arc<dyn DynModel>> {
    if meta.format_version > M::FORMAT_VERSION {
        return Err(MllibError::UnsupportedFormatVersion {
            name: meta.name.clone(),
            kind: meta.kind.clone(),
            found: meta.format_version,
            supported: M::FORMAT_VERSION,
        });
    }
    Ok(Arc::new(M::from_parts(meta, parts)?))
}

use OptionType::{Bool, Count, Fraction, NonNegative, Text, Whole};
use Target::{Ignored, L1, L2, Param as P};

/// A feature stage that maps the feature vector, built from `params` with its output column
/// set to `out`.
fn vector_stage<E>(
    name: &str,
    params: &Point,
    out: &str,
    check: fn(&E) -> Result<()>,
) -> Result<Arc<dyn DynEstimator>>
where
    E: Serialize + DeserializeOwned + Default + crate::Estimator + 'static,
{
    let mut params = params.clone();
    params.insert("output_col".to_string(), json!(out));
    Ok(Arc::new(from_params::<E>(name, &params, check)?))
}

fn no_functions(_: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    Ok(())
}

const L1_REG: SqlOption =
    opt("l1_reg", L1, NonNegative, "L1 penalty weight").tune(Tune::Default(Range::Log(1e-4, 10.0)));
const L2_REG: SqlOption =
    opt("l2_reg", L2, NonNegative, "L2 penalty weight").tune(Tune::Default(Range::Log(1e-4, 10.0)));
const FIT_INTERCEPT: SqlOption = opt(
    "fit_intercept",
    P("fit_intercept"),
    Bool,
    "fit an intercept (default TRUE)",
)
.tune(Tune::Yes);
const STANDARDIZE: SqlOption = opt(
    "standardize_features",
    P("standardization"),
    Bool,
    "penalise standardised coefficients (default TRUE)",
)
.tune(Tune::Yes);
const MAX_ITERATIONS: SqlOption = opt(
    "max_iterations",
    P("max_iter"),
    Count,
    "optimiser iterations / passes",
)
.tune(Tune::Yes);
const MIN_REL_PROGRESS: SqlOption = opt(
    "min_rel_progress",
    P("tol"),
    NonNegative,
    "stop when the relative improvement falls below",
)
.tune(Tune::Yes);

const MAX_TREE_DEPTH: SqlOption = opt(
    "max_tree_depth",
    P("max_depth"),
    Whole,
    "the deepest a tree grows (0 is one leaf)",
)
.tune(Tune::Default(Range::Int(2, 10)));
const MAX_BINS: SqlOption = opt(
    "max_bins",
    P("max_bins"),
    Count,
    "value bins per feature, 2 to 256 (default 32)",
)
.tune(Tune::Yes);
const TREE_SEED: SqlOption = opt(
    "seed",
    P("seed"),
    Whole,
    "seed of the row and feature sampling",
);
const SUBSAMPLE: SqlOption = opt(
    "subsample",
    P("subsampling_rate"),
    Fraction,
    "rows sampled per tree, in (0, 1]",
)
.tune(Tune::Yes);
const FOREST_MIN_CHILD: SqlOption = opt(
    "min_tree_child_weight",
    P("min_instances_per_node"),
    Count,
    "the fewest rows in a child",
)
.tune(Tune::Yes);
const FOREST_MIN_SPLIT_LOSS: SqlOption = opt(
    "min_split_loss",
    P("min_info_gain"),
    NonNegative,
    "the least impurity decrease of a split",
)
.tune(Tune::Yes);
const CLASS_IMPURITY: SqlOption = opt(
    "impurity",
    P("impurity"),
    Text(&[("gini", "gini"), ("entropy", "entropy")]),
    "'gini' (default) or 'entropy'",
)
.tune(Tune::Yes);
const FEATURE_SUBSET: SqlOption = opt(
    "feature_subset_strategy",
    P("feature_subset_strategy"),
    Text(&[
        ("auto", "auto"),
        ("all", "all"),
        ("sqrt", "sqrt"),
        ("log2", "log2"),
        ("onethird", "onethird"),
    ]),
    "features tried per node (default 'auto': sqrt for classes, a third for regression)",
)
.tune(Tune::Yes);
const NUM_PARALLEL_TREE: SqlOption = opt(
    "num_parallel_tree",
    P("num_trees"),
    Count,
    "trees in the forest",
)
.tune(Tune::Default(Range::Int(10, 200)));
const BOOST_OPTIONS_COMMON: [SqlOption; 14] = [
    opt("max_iterations", P("max_iter"), Count, "boosting rounds").tune(Tune::Yes),
    opt(
        "learn_rate",
        P("step_size"),
        Fraction,
        "the step size: each tree's weights are scaled by it",
    )
    .tune(Tune::Default(Range::Log(0.01, 1.0))),
    MAX_TREE_DEPTH,
    MAX_BINS,
    SUBSAMPLE,
    opt(
        "colsample_bytree",
        P("colsample_bytree"),
        Fraction,
        "features sampled per tree",
    )
    .tune(Tune::Yes),
    opt(
        "colsample_bynode",
        P("colsample_bynode"),
        Fraction,
        "features sampled per node, of the tree's",
    )
    .tune(Tune::Yes),
    opt(
        "min_split_loss",
        P("min_split_loss"),
        NonNegative,
        "the least loss reduction of a split (gamma)",
    )
    .tune(Tune::Yes),
    opt(
        "min_tree_child_weight",
        P("min_child_weight"),
        NonNegative,
        "the least hessian sum in a child",
    )
    .tune(Tune::Yes),
    opt("l1_reg", P("reg_alpha"), NonNegative, "L1 on leaf weights").tune(Tune::Yes),
    opt("l2_reg", P("reg_lambda"), NonNegative, "L2 on leaf weights")
        .tune(Tune::Default(Range::Log(1e-3, 10.0))),
    opt(
        "early_stop",
        P("early_stop"),
        Bool,
        "stop when a round improves the held-out loss by less than min_rel_progress",
    ),
    opt(
        "min_rel_progress",
        P("validation_tol"),
        NonNegative,
        "the least relative improvement that continues boosting",
    ),
    opt(
        "booster_type",
        Ignored,
        Text(&[("gbtree", "gbtree")]),
        "'gbtree' (the only booster)",
    ),
];
/// BigQuery ML's boosted-tree defaults.
const BOOST_SQL_DEFAULTS: &[(&str, SqlDefault)] = &[
    ("learn_rate", SqlDefault::Number(0.3)),
    ("max_tree_depth", SqlDefault::Number(6.0)),
    ("l2_reg", SqlDefault::Number(1.0)),
    ("early_stop", SqlDefault::Bool(true)),
    ("min_rel_progress", SqlDefault::Number(0.01)),
];
/// BigQuery ML's random-forest defaults.
const FOREST_SQL_DEFAULTS: &[(&str, SqlDefault)] = &[
    ("num_parallel_tree", SqlDefault::Number(100.0)),
    ("max_tree_depth", SqlDefault::Number(6.0)),
    ("subsample", SqlDefault::Number(0.8)),
];
/// `options` followed by `last`.
const fn with_option<const N: usize, const M: usize>(
    options: [SqlOption; N],
    last: SqlOption,
) -> [SqlOption; M] {
    let mut out = [last; M];
    let mut i = 0;
    while i < N {
        out[i] = options[i];
        i += 1;
    }
    out
}
const BOOST_CLASSIFIER_OPTIONS: [SqlOption; 15] = with_option(BOOST_OPTIONS_COMMON, TREE_SEED);
/// The regressor's options: the classifier's plus the loss.
const BOOST_REGRESSOR_OPTIONS: [SqlOption; 16] = with_option(
    BOOST_CLASSIFIER_OPTIONS,
    opt(
        "loss",
        P("loss"),
        Text(&[("squared", "squared"), ("absolute", "absolute")]),
        "'squared' (default) or 'absolute' error",
    )
    .tune(Tune::Yes),
);
/// Every algorithm: the only list of them.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm {
        name: "logistic_regression",
        estimator: "LogisticRegression",
        model_types: &["logistic_reg"],
        task: Task::Classification,
        options: &[
            L1_REG,
            L2_REG,
            FIT_INTERCEPT,
            STANDARDIZE,
            MAX_ITERATIONS,
            MIN_REL_PROGRESS,
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Impute,
        importance: ImportanceKind::Coefficients,
        attribution: Attribution::Exact,
        keeps_prepared_rows: true,
        build: |p| {
            Ok(Arc::new(from_params::<LogisticRegression>(
                "logistic_regression",
                p,
                LogisticRegression::check,
            )?))
        },
        load: load_model::<LogisticRegressionModel>,
        register: crate::classification::logistic::register,
    },
    Algorithm {
        name: "linear_regression",
        estimator: "LinearRegression",
        model_types: &["linear_reg"],
        task: Task::Regression,
        options: &[
            L1_REG,
            L2_REG,
            FIT_INTERCEPT,
            STANDARDIZE,
            // Solved exactly: no iteration budget to set.
            opt(
                "max_iterations",
                Ignored,
                Count,
                "accepted; the fit is exact",
            ),
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Impute,
        importance: ImportanceKind::Coefficients,
        attribution: Attribution::Exact,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<LinearRegression>(
                "linear_regression",
                p,
                LinearRegression::check,
            )?))
        },
        load: load_model::<LinearRegressionModel>,
        register: crate::regression::linear::register,
    },
    Algorithm {
        name: "kmeans",
        estimator: "KMeans",
        model_types: &["kmeans"],
        task: Task::Clustering,
        options: &[
            opt("num_clusters", P("k"), Count, "the number of clusters k")
                .tune(Tune::Default(Range::Int(2, 10)))
                .required(),
            opt(
                "kmeans_init_method",
                P("init_mode"),
                Text(&[
                    ("kmeans++", "k_means_parallel"),
                    ("k-means||", "k_means_parallel"),
                    ("random", "random"),
                ]),
                "'kmeans++' (k-means‖, the default) or 'random'",
            )
            .tune(Tune::Yes),
            opt(
                "kmeans_algorithm",
                P("algorithm"),
                Text(&[("lloyd", "lloyd"), ("hamerly", "hamerly")]),
                "'lloyd' (the default) or 'hamerly' (bounds kept between passes: the same \
                 model, faster when the clusters are well separated)",
            ),
            MAX_ITERATIONS,
            MIN_REL_PROGRESS,
            opt("seed", P("seed"), Whole, "seed of the initialisation"),
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Impute,
        importance: ImportanceKind::None,
        attribution: Attribution::None,
        keeps_prepared_rows: true,
        build: |p| Ok(Arc::new(from_params::<KMeans>("kmeans", p, KMeans::check)?)),
        load: load_model::<KMeansModel>,
        register: crate::clustering::kmeans::register,
    },
    Algorithm {
        name: "naive_bayes",
        estimator: "NaiveBayes",
        model_types: &["naive_bayes"],
        task: Task::Classification,
        options: &[
            opt(
                "naive_bayes_type",
                P("model_type"),
                Text(&[
                    ("multinomial", "multinomial"),
                    ("complement", "complement"),
                    ("bernoulli", "bernoulli"),
                    ("gaussian", "gaussian"),
                ]),
                "the event model (default 'multinomial')",
            )
            .tune(Tune::Yes),
            opt(
                "smoothing",
                P("smoothing"),
                NonNegative,
                "additive smoothing of the counts (default 1.0)",
            )
            .tune(Tune::Default(Range::Log(1e-3, 10.0))),
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Impute,
        importance: ImportanceKind::None,
        attribution: Attribution::None,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<NaiveBayes>(
                "naive_bayes",
                p,
                NaiveBayes::check,
            )?))
        },
        load: load_model::<NaiveBayesModel>,
        register: crate::classification::naive_bayes::register,
    },
    Algorithm {
        name: "pca",
        estimator: "PCA",
        model_types: &["pca"],
        task: Task::Decomposition,
        options: &[
            opt(
                "num_principal_components",
                P("k"),
                Count,
                "the number of principal components",
            ),
            opt(
                "pca_explained_variance_ratio",
                P("explained_variance_ratio"),
                Fraction,
                "the share of the variance to keep, in (0, 1]",
            ),
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Impute,
        importance: ImportanceKind::None,
        attribution: Attribution::None,
        keeps_prepared_rows: false,
        build: |p| Ok(Arc::new(from_params::<PCA>("pca", p, PCA::check)?)),
        load: load_model::<PCAModel>,
        register: crate::decomposition::pca::register,
    },
    Algorithm {
        name: "decision_tree_classifier",
        estimator: "DecisionTreeClassifier",
        model_types: &["decision_tree_classifier"],
        task: Task::Classification,
        options: &[
            MAX_TREE_DEPTH,
            MAX_BINS,
            FOREST_MIN_CHILD,
            FOREST_MIN_SPLIT_LOSS,
            CLASS_IMPURITY,
            TREE_SEED,
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<DecisionTreeClassifier>(
                "decision_tree_classifier",
                p,
                DecisionTreeClassifier::check,
            )?))
        },
        load: load_model::<DecisionTreeClassificationModel>,
        register: crate::tree::register,
    },
    Algorithm {
        name: "decision_tree_regressor",
        estimator: "DecisionTreeRegressor",
        model_types: &["decision_tree_regressor"],
        task: Task::Regression,
        options: &[
            MAX_TREE_DEPTH,
            MAX_BINS,
            FOREST_MIN_CHILD,
            FOREST_MIN_SPLIT_LOSS,
            TREE_SEED,
        ],
        sql_defaults: &[],
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<DecisionTreeRegressor>(
                "decision_tree_regressor",
                p,
                DecisionTreeRegressor::check,
            )?))
        },
        load: load_model::<DecisionTreeRegressionModel>,
        register: no_functions,
    },
    Algorithm {
        name: "random_forest_classifier",
        estimator: "RandomForestClassifier",
        model_types: &["random_forest_classifier"],
        task: Task::Classification,
        options: &[
            NUM_PARALLEL_TREE,
            MAX_TREE_DEPTH,
            MAX_BINS,
            SUBSAMPLE,
            FOREST_MIN_CHILD,
            FOREST_MIN_SPLIT_LOSS,
            CLASS_IMPURITY,
            FEATURE_SUBSET,
            TREE_SEED,
        ],
        sql_defaults: FOREST_SQL_DEFAULTS,
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<RandomForestClassifier>(
                "random_forest_classifier",
                p,
                RandomForestClassifier::check,
            )?))
        },
        load: load_model::<RandomForestClassificationModel>,
        register: no_functions,
    },
    Algorithm {
        name: "random_forest_regressor",
        estimator: "RandomForestRegressor",
        model_types: &["random_forest_regressor"],
        task: Task::Regression,
        options: &[
            NUM_PARALLEL_TREE,
            MAX_TREE_DEPTH,
            MAX_BINS,
            SUBSAMPLE,
            FOREST_MIN_CHILD,
            FOREST_MIN_SPLIT_LOSS,
            FEATURE_SUBSET,
            TREE_SEED,
        ],
        sql_defaults: FOREST_SQL_DEFAULTS,
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<RandomForestRegressor>(
                "random_forest_regressor",
                p,
                RandomForestRegressor::check,
            )?))
        },
        load: load_model::<RandomForestRegressionModel>,
        register: no_functions,
    },
    Algorithm {
        name: "gbt_classifier",
        estimator: "GBTClassifier",
        model_types: &["boosted_tree_classifier"],
        task: Task::Classification,
        options: &BOOST_CLASSIFIER_OPTIONS,
        sql_defaults: BOOST_SQL_DEFAULTS,
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<GBTClassifier>(
                "gbt_classifier",
                p,
                GBTClassifier::check,
            )?))
        },
        load: load_model::<GBTClassificationModel>,
        register: no_functions,
    },
    Algorithm {
        name: "gbt_regressor",
        estimator: "GBTRegressor",
        model_types: &["boosted_tree_regressor"],
        task: Task::Regression,
        options: &BOOST_REGRESSOR_OPTIONS,
        sql_defaults: BOOST_SQL_DEFAULTS,
        missing_values: MissingNumbers::Keep,
        importance: ImportanceKind::Splits,
        attribution: Attribution::TreeShap,
        keeps_prepared_rows: false,
        build: |p| {
            Ok(Arc::new(from_params::<GBTRegressor>(
                "gbt_regressor",
                p,
                GBTRegressor::check,
            )?))
        },
        load: load_model::<GBTRegressionModel>,
        register: no_functions,
    },
];

/// Every feature stage a stored pipeline may hold (pipelines themselves load by
/// [`load_stage`]).
pub const FEATURE_STAGES: &[FeatureStage] = &[
    FeatureStage {
        name: "standard_scaler",
        build: Some(|p, out| {
            vector_stage::<StandardScaler>("standard_scaler", p, out, StandardScaler::check)
        }),
        load: load_model::<StandardScalerModel>,
        register: crate::feature::scaler::register,
    },
    FeatureStage {
        name: "min_max_scaler",
        build: Some(|p, out| {
            vector_stage::<MinMaxScaler>("min_max_scaler", p, out, MinMaxScaler::check)
        }),
        load: load_model::<MinMaxScalerModel>,
        register: no_functions,
    },
    FeatureStage {
        name: "vector_assembler",
        build: None,
        load: load_model::<VectorAssembler>,
        register: no_functions,
    },
    FeatureStage {
        name: "string_indexer",
        build: None,
        load: load_model::<StringIndexerModel>,
        register: crate::feature::indexer::register,
    },
    FeatureStage {
        name: "one_hot_encoder",
        build: None,
        load: load_model::<OneHotEncoderModel>,
        register: crate::feature::onehot::register,
    },
    FeatureStage {
        name: "preprocessor",
        build: None,
        load: load_model::<PreprocessorModel>,
        register: crate::feature::preprocess::register,
    },
    FeatureStage {
        name: "imputer",
        build: None,
        load: load_model::<ImputerModel>,
        register: no_functions,
    },
    FeatureStage {
        name: "sql_transform",
        build: None,
        load: load_model::<crate::feature::SqlTransformModel>,
        register: no_functions,
    },
    FeatureStage {
        name: "bucketizer",
        build: None,
        load: load_model::<Bucketizer>,
        register: crate::feature::expand::register,
    },
    FeatureStage {
        name: "polynomial_expansion",
        build: None,
        load: load_model::<PolynomialExpansion>,
        register: no_functions,
    },
    FeatureStage {
        name: "interaction",
        build: None,
        load: load_model::<Interaction>,
        register: no_functions,
    },
];

/// The algorithm of kind `name` (`logistic_regression`), or an error listing them.
pub fn algorithm(name: &str) -> Result<&'static Algorithm> {
    ALGORITHMS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| MllibError::UnknownAlgorithm {
            name: name.to_string(),
            known: ALGORITHMS
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The algorithm whose SQL `model_type` is `model_type` (case-insensitive).
pub fn by_model_type(model_type: &str) -> Option<&'static Algorithm> {
    ALGORITHMS.iter().find(|a| {
        a.model_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(model_type))
    })
}

/// Every SQL `model_type`, quoted, for error messages.
pub fn model_type_list() -> String {
    ALGORITHMS
        .iter()
        .map(|a| format!("'{}'", a.model_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The feature stage `name`, or an error listing those `TrainEval` can build.
pub fn feature_stage(name: &str) -> Result<&'static FeatureStage> {
    FEATURE_STAGES
        .iter()
        .find(|s| s.name == name && s.build.is_some())
        .ok_or_else(|| MllibError::InvalidParam {
            param: "stages".to_string(),
            reason: format!(
                "unknown stage '{name}'; use {}",
                FEATURE_STAGES
                    .iter()
                    .filter(|s| s.build.is_some())
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        })
}

/// Rebuilds a stored model or pipeline stage from its metadata and parts, by its kind.
pub fn load_stage(
    meta: &ModelMetadata,
    parts: &BTreeMap<String, Bytes>,
) -> Result<Arc<dyn DynModel>> {
    let kind = meta.kind.as_str();
    let load = if kind == crate::PipelineModel::KIND {
        load_model::<crate::PipelineModel>
    } else if let Some(a) = ALGORITHMS.iter().find(|a| a.name == kind) {
        a.load
    } else if let Some(s) = FEATURE_STAGES.iter().find(|s| s.name == kind) {
        s.load
    } else {
        return Err(MllibError::UnknownModelKind {
            name: meta.name.clone(),
            kind: kind.to_string(),
        });
    };
    load(meta, parts)
}

/// The algorithm that a stored model's final stage is (a pipeline's last stage, or the model
/// itself), if the catalogue knows its kind.
pub fn algorithm_of(meta: &ModelMetadata) -> Option<&'static Algorithm> {
    let (kind, _) = final_stage(meta);
    ALGORITHMS.iter().find(|a| a.name == kind)
}

/// The kind and training summary of a stored model's final stage: a pipeline's last stage
/// record, or the model itself.
pub fn final_stage(meta: &ModelMetadata) -> (&str, &Value) {
    match meta
        .params
        .get("stages")
        .and_then(Value::as_array)
        .and_then(|s| s.last())
    {
        Some(last) => (
            last["kind"].as_str().unwrap_or_default(),
            &last["training_summary"],
        ),
        None => (&meta.kind, &meta.training_summary),
    }
}

/// Adds every algorithm's and feature stage's functions, the evaluators' statistics and the
/// trial objective to `registry`.
pub fn register(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    for a in ALGORITHMS {
        (a.register)(registry)?;
    }
    for s in FEATURE_STAGES {
        (s.register)(registry)?;
    }
    // Statistics more than one algorithm uses.
    crate::regression::comoment::register(registry)?;
    crate::evaluation::register(registry)?;
    registry.add_task(crate::tuning::objective::train_eval_runner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut kinds: Vec<&str> = ALGORITHMS.iter().map(|a| a.name).collect();
        kinds.extend(FEATURE_STAGES.iter().map(|s| s.name));
        kinds.push(crate::PipelineModel::KIND);
        let n = kinds.len();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "a kind is declared twice");
        let mut types: Vec<&str> = ALGORITHMS
            .iter()
            .flat_map(|a| a.model_types.iter().copied())
            .collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n, "a model_type is declared twice");
    }

    #[test]
    fn every_option_maps_to_a_parameter_its_estimator_takes() {
        for a in ALGORITHMS {
            let mut names: Vec<&str> = a.options.iter().map(|o| o.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), a.options.len(), "{}: an option twice", a.name);
            for o in a.options {
                let value = match o.ty {
                    NonNegative => json!(0.5),
                    Fraction => json!(0.5),
                    Count | Whole => json!(3),
                    Bool => json!(true),
                    Text(choices) => json!(choices[0].0),
                };
                let sql = Point::from([(o.name.to_string(), value)]);
                let params = a.params_from_sql(&sql).unwrap();
                a.estimator(&params)
                    .unwrap_or_else(|e| panic!("{} option {}: {e}", a.name, o.name));
            }
        }
    }

    #[test]
    fn parameters_are_coerced_and_unknown_ones_named() {
        let a = algorithm("kmeans").unwrap();
        // A search's 3.0 is the count 3.
        a.estimator(&Point::from([("k".to_string(), json!(3.0))]))
            .unwrap();
        let err = a
            .estimator(&Point::from([("k".to_string(), json!(2.5))]))
            .unwrap_err();
        assert!(err.to_string().contains("'k'"), "{err}");
        let err = a
            .estimator(&Point::from([("learning_rate".to_string(), json!(1))]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown parameter 'learning_rate' for kmeans")
                && err.contains("max_iter"),
            "{err}"
        );
        let err = algorithm("random_forest").unwrap_err().to_string();
        assert!(err.contains("logistic_regression"), "{err}");
        let err = a
            .params_from_sql(&Point::from([("l2_reg".to_string(), json!(1))]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'l2_reg'") && err.contains("num_clusters"),
            "{err}"
        );
        let err = a
            .params_from_sql(&Point::from([(
                "kmeans_init_method".to_string(),
                json!("best"),
            )]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'kmeans++' or"), "{err}");
    }

    #[test]
    fn elastic_net_from_l1_and_l2() {
        let a = algorithm("logistic_regression").unwrap();
        let p = a
            .params_from_sql(&Point::from([
                ("l1_reg".to_string(), json!(0.3)),
                ("l2_reg".to_string(), json!(0.1)),
            ]))
            .unwrap();
        assert!((p["reg_param"].as_f64().unwrap() - 0.4).abs() < 1e-15);
        assert!((p["elastic_net_param"].as_f64().unwrap() - 0.75).abs() < 1e-15);
        let err = a
            .params_from_sql(&Point::from([("l2_reg".to_string(), json!(-1))]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid option 'l2_reg': must be ≥ 0, got -1");
    }

    #[test]
    fn metric_directions() {
        assert!(higher_is_better("area_under_roc") && higher_is_better("roc_auc"));
        assert!(!higher_is_better("log_loss") && !higher_is_better("within_ss"));
        assert_eq!(
            Task::Regression.metric("MEAN_SQUARED_ERROR").unwrap().name,
            "mse"
        );
        assert!(Task::Classification.metric("r2_score").is_none());
    }
}
