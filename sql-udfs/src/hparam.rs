//! Hyperparameter tuning in `CREATE MODEL` (BigQuery ML's options):
//!
//! | option | meaning |
//! |---|---|
//! | `num_trials` | trials to run (turns tuning on; needs at least one tuned option) |
//! | `max_parallel_trials` | trials at once (default 1); this process's compute threads (`quiver.compute_threads`) are shared among them, so one trial at a time computes on all of them |
//! | `hparam_tuning_algorithm` | `'vizier_default'` or `'tpe'` (TPE, default), `'random_search'`, `'grid_search'` |
//! | `hparam_tuning_objectives` | the metric to optimise, e.g. `['roc_auc']`, `'log_loss'`, `'mean_squared_error'`, `'silhouette'` |
//! | `hparam_tuning_pruner` | Quiver's extension: `'asha'`, `'median'`, `'hyperband'` or `'none'` (default): stop poor trials while they train, judged on their held-out rows at the pruner's steps (ASHA: from step 9, on what each curve extrapolates to at `max_iterations`, each trial's budget); stopped trials show status `pruned` |
//!
//! A tuned option is written `l2_reg = HPARAM_RANGE(0.0001, 1.0)` (a range: log-scaled when
//! its bounds are positive and span two decades or more, integers for counts such as
//! `max_iterations` and `num_clusters`) or
//! `kmeans_init_method = HPARAM_CANDIDATES(['kmeans++', 'random'])`. Which options are
//! tunable is the catalogue's word (`quiver_mllib::catalog`). With `num_trials` and no
//! `HPARAM_…` option, trials search the model type's default space (as BigQuery ML does):
//! `l1_reg` and `l2_reg` log-uniform over [1e-4, 10] for the linear models, `num_clusters`
//! in 2..=10 for k-means, `smoothing` for naive Bayes.
//!
//! Every trial is a `quiver.train_eval` task (so trials run on cluster executors too) over the
//! statement's encoded rows: held in this process's memory when the trials run here, an Arrow
//! IPC snapshot next to the model (removed afterwards, whatever happens) on a cluster. When the
//! statement splits its rows, the trials train on its training rows and score on its held-out
//! rows (read, split and encoded in the statement's one read when they fit
//! `quiver.training_cache`; else each trial holds out the same rows by their draw, which depends
//! only on a row's values and the seed), so the best trial's fit is the stored model (refitted
//! on the same rows when the trials ran on a cluster's executors); with
//! `no_split` the trials still hold out `data_split_eval_fraction` (default 0.2) of the rows,
//! and the best trial's options then train the stored model on all of them. The trials are
//! recorded with the model (`ml_trial_info('model')`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::object_store::ObjectStoreExt;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, FunctionArguments};
use quiver_engine::{QuiverSession, Runner};
use quiver_mllib::PipelineModel;
use quiver_mllib::catalog::{Algorithm, OptionType, higher_is_better};
use quiver_mllib::tuning::objective::{kept_model_key, kept_models_prefix};
use quiver_mllib::tuning::{Algo, Param, Point, Pruner, Search, Space, Tpe, TrainEval, Trial, hp};
use serde_json::{Value, json};

use crate::error::{Result, SqlError};
use crate::statement::{expr_f64, expr_json, expr_str, expr_str_list, expr_usize};

/// The tuning options every model type accepts.
pub const TUNING_OPTIONS: &[&str] = &[
    "num_trials",
    "max_parallel_trials",
    "hparam_tuning_algorithm",
    "hparam_tuning_objectives",
    "hparam_tuning_pruner",
];

/// The rows a statement's trials train and score on.
pub enum TrialRows {
    /// The encoded rows with each row's split draw: every trial holds out `eval_fraction` of
    /// them by the draw over `split_columns` (the statement's own held-out rows when it
    /// splits with that fraction).
    Drawn {
        rows: DataFrame,
        split_columns: Vec<String>,
        eval_fraction: f64,
    },
    /// The statement's training rows and its held-out rows, already apart (read, split and
    /// encoded in one pass): the trials train on the one and score on the other.
    Apart {
        train: DataFrame,
        held_out: DataFrame,
    },
}

/// Rows handed to the trials: in this process's memory, or (on a cluster, whose executors
/// need a file) an Arrow IPC snapshot next to the model, which the executors read without
/// decoding (a Parquet snapshot of the encoded rows cost more to write and to read back than
/// the trials that read it).
struct Placed {
    url: String,
    /// The rows in this process; `None`: `url` is a snapshot file.
    in_memory: Option<quiver_engine::io::ProcessTable>,
}

impl Placed {
    async fn new(
        session: &QuiverSession,
        store_url: &str,
        model: &str,
        df: DataFrame,
        part: &str,
    ) -> Result<Placed> {
        if session.is_cluster() {
            let url = format!(
                "{}/{model}/tuning-{part}-{}-{}.arrow",
                store_url.trim_end_matches('/'),
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            );
            let written = session.write_ipc(df, &url).await;
            let placed = Placed {
                url,
                in_memory: None,
            };
            if let Err(e) = written {
                // A partly written snapshot goes too.
                placed.remove(session).await;
                return Err(e.into());
            }
            Ok(placed)
        } else {
            let batches = df
                .collect()
                .await
                .map_err(quiver_engine::QuiverError::from)?;
            let table = quiver_engine::io::ProcessTable::new(batches)?;
            Ok(Placed {
                url: table.url().to_string(),
                in_memory: Some(table),
            })
        }
    }

    /// Frees the rows (deletes the snapshot), whatever the search did.
    async fn remove(self, session: &QuiverSession) {
        if self.in_memory.is_none()
            && let Ok(loc) =
                quiver_engine::io::resolve(session.context(), &session.config().s3, &self.url)
        {
            let _ = loc.store.delete(&loc.path).await;
        }
    }
}

/// A tuning request taken out of a statement's options.
#[derive(Debug)]
pub struct Tuning {
    num_trials: usize,
    max_parallel: usize,
    algorithm: String,
    algo: Algo,
    /// The metric as `quiver.train_eval` names it (`None`: the estimator's default).
    metric: Option<String>,
    space: Space,
    /// Each tuned option as written (`HPARAM_RANGE(…)`, or `default` for a default range).
    tuned: BTreeMap<String, String>,
    algorithm_entry: &'static Algorithm,
    pruner: Option<Pruner>,
}

fn invalid(option: &str, reason: impl Into<String>) -> SqlError {
    SqlError::InvalidOption {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// `HPARAM_RANGE(…)` / `HPARAM_CANDIDATES(…)`: the function's name (upper case) and arguments.
fn hparam_call(e: &Expr) -> Option<(String, Vec<&Expr>)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string().to_ascii_uppercase();
    if !name.starts_with("HPARAM_") {
        return None;
    }
    let args = match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((name, args))
}

/// The tunable options of `algorithm`, for messages.
fn tunable_list(algorithm: &Algorithm) -> String {
    algorithm
        .options
        .iter()
        .filter(|o| o.tunable())
        .map(|o| o.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The prior of one tuned option.
fn param_of(algorithm: &Algorithm, option: &str, call: &str, args: &[&Expr]) -> Result<Param> {
    let Some(o) = algorithm.option(option).filter(|o| o.tunable()) else {
        return Err(invalid(
            option,
            format!(
                "cannot be tuned; tunable options: {}",
                tunable_list(algorithm)
            ),
        ));
    };
    let integer = matches!(o.ty, OptionType::Count | OptionType::Whole);
    match call {
        "HPARAM_RANGE" => {
            let [lo, hi] = args else {
                return Err(invalid(option, "HPARAM_RANGE takes (min, max)"));
            };
            let (lo, hi) = (expr_f64(option, lo)?, expr_f64(option, hi)?);
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(invalid(
                    option,
                    format!("HPARAM_RANGE({lo}, {hi}): min must be below max"),
                ));
            }
            if matches!(o.ty, OptionType::Bool | OptionType::Text(_)) {
                return Err(invalid(option, "takes HPARAM_CANDIDATES([…]), not a range"));
            }
            // Both ends must be values the option takes.
            for v in [lo, hi] {
                o.convert(&json!(v))
                    .map_err(|e| invalid(option, format!("HPARAM_RANGE({lo}, {hi}): {e}")))?;
            }
            if integer {
                return Ok(hp::randint(option, lo as i64, hi as i64 + 1));
            }
            Ok(if lo > 0.0 && hi / lo >= 100.0 {
                hp::loguniform(option, lo, hi)
            } else {
                hp::uniform(option, lo, hi)
            })
        }
        "HPARAM_CANDIDATES" => {
            let values: Vec<Value> = match args {
                [Expr::Array(a)] => a.elem.iter().map(expr_json).collect(),
                [] => Vec::new(),
                many => many.iter().map(|e| expr_json(e)).collect(),
            };
            if values.is_empty() {
                return Err(invalid(
                    option,
                    "HPARAM_CANDIDATES needs at least one value",
                ));
            }
            for v in &values {
                o.convert(v)
                    .map_err(|e| invalid(option, format!("candidate {v}: {e}")))?;
            }
            Ok(hp::choice(option, values))
        }
        other => Err(invalid(
            option,
            format!(
                "unknown function {other}; use HPARAM_RANGE(min, max) or HPARAM_CANDIDATES([…])"
            ),
        )),
    }
}

/// The `quiver.train_eval` metric for a BigQuery ML objective name (or one of Quiver's).
fn metric_of(algorithm: &Algorithm, objective: &str) -> Result<String> {
    match algorithm.task.metric(objective) {
        Some(m) => Ok(m.name.to_string()),
        None => Err(invalid(
            "hparam_tuning_objectives",
            format!(
                "'{objective}' is not an objective for {}; use one of {}",
                algorithm.model_type(),
                algorithm.task.metric_names().join(", ")
            ),
        )),
    }
}

impl Tuning {
    /// Takes the tuning options and the tuned (`HPARAM_…`) options out of `options`; `None`
    /// when the statement tunes nothing. `cores`: this process's compute threads (`None` on a
    /// cluster, where executors run the trials).
    pub fn take(
        options: &mut BTreeMap<String, Expr>,
        entry: &'static Algorithm,
        cores: Option<usize>,
    ) -> Result<Option<Tuning>> {
        let mut params = Vec::new();
        let mut tuned = BTreeMap::new();
        let names: Vec<String> = options.keys().cloned().collect();
        for k in names {
            if let Some((call, args)) = hparam_call(&options[&k]) {
                params.push(param_of(entry, &k, &call, &args)?);
                tuned.insert(k.clone(), options[&k].to_string());
                options.remove(&k);
            }
        }
        let num_trials = options
            .remove("num_trials")
            .map(|e| expr_usize("num_trials", &e))
            .transpose()?;
        let max_parallel = options
            .remove("max_parallel_trials")
            .map(|e| expr_usize("max_parallel_trials", &e))
            .transpose()?;
        let algorithm = options
            .remove("hparam_tuning_algorithm")
            .map(|e| expr_str("hparam_tuning_algorithm", &e))
            .transpose()?;
        let objectives = options
            .remove("hparam_tuning_objectives")
            .map(|e| expr_str_list("hparam_tuning_objectives", &e))
            .transpose()?;
        let pruner = options
            .remove("hparam_tuning_pruner")
            .map(|e| expr_str("hparam_tuning_pruner", &e))
            .transpose()?;
        let Some(num_trials) = num_trials else {
            if let Some(k) = tuned.keys().next() {
                return Err(invalid(
                    k,
                    "HPARAM_… values need num_trials (how many trials to run), e.g. num_trials = 20",
                ));
            }
            for (given, name) in [
                (max_parallel.is_some(), "max_parallel_trials"),
                (algorithm.is_some(), "hparam_tuning_algorithm"),
                (objectives.is_some(), "hparam_tuning_objectives"),
                (pruner.is_some(), "hparam_tuning_pruner"),
            ] {
                if given {
                    return Err(invalid(name, "only applies with num_trials"));
                }
            }
            return Ok(None);
        };
        if num_trials == 0 {
            return Err(invalid("num_trials", "must be at least 1"));
        }
        if params.is_empty() {
            // BigQuery ML's rule: no HPARAM_… option means the model type's default space,
            // over the options the statement does not fix.
            params = entry
                .default_space()
                .into_iter()
                .filter(|p| !options.contains_key(&p.name))
                .collect();
            if params.is_empty() {
                return Err(invalid(
                    "num_trials",
                    format!(
                        "model_type '{}' has no default search space left to tune; give options \
                         as HPARAM_RANGE(min, max) or HPARAM_CANDIDATES([…]); tunable: {}",
                        entry.model_type(),
                        tunable_list(entry)
                    ),
                ));
            }
            for p in &params {
                tuned.insert(p.name.clone(), "default".to_string());
            }
        }
        let max_parallel = max_parallel.unwrap_or(1);
        if max_parallel == 0 {
            return Err(invalid("max_parallel_trials", "must be at least 1"));
        }
        if let Some(cores) = cores
            && max_parallel > cores
        {
            return Err(invalid(
                "max_parallel_trials",
                format!(
                    "{max_parallel} trials at once, but this session has {cores} compute threads \
                     (quiver.compute_threads); lower it, or run on a cluster"
                ),
            ));
        }
        let algorithm = algorithm
            .unwrap_or_else(|| "vizier_default".to_string())
            .to_ascii_lowercase();
        let algo = match algorithm.as_str() {
            "vizier_default" | "tpe" => Algo::Tpe(Tpe::default()),
            "random_search" | "random" => Algo::Random,
            "grid_search" | "grid" => Algo::Grid { points: 5 },
            other => {
                return Err(invalid(
                    "hparam_tuning_algorithm",
                    format!(
                        "unknown algorithm '{other}'; use 'vizier_default' (TPE), 'tpe', \
                         'random_search' or 'grid_search'"
                    ),
                ));
            }
        };
        let metric = match objectives.as_deref() {
            None => None,
            Some([one]) => Some(metric_of(entry, one)?),
            Some(other) => {
                return Err(invalid(
                    "hparam_tuning_objectives",
                    format!("expects one objective, got {}", other.len()),
                ));
            }
        };
        let metric = metric.or_else(|| entry.task.tuning_metric().map(str::to_string));
        let pruner = match pruner {
            Some(name) => Pruner::from_name(&name).map_err(|e| {
                invalid(
                    "hparam_tuning_pruner",
                    format!("'{name}' is not a pruner: use 'asha', 'median', 'hyperband' or 'none' ({e})"),
                )
            })?,
            None => None,
        };
        Ok(Some(Tuning {
            num_trials,
            max_parallel,
            algorithm,
            algo,
            metric,
            space: Space::new(params)?,
            tuned,
            algorithm_entry: entry,
            pruner,
        }))
    }

    /// The options the trials vary.
    pub fn tuned(&self) -> Vec<String> {
        self.tuned.keys().cloned().collect()
    }

    /// Runs the trials over `rows`, each training with the statement's fixed options `fixed`
    /// (SQL option names) plus its point. Returns the tuning record stored with the model, the
    /// best trial's values of the tuned options and, with `keep_best` when the trials ran in
    /// this process, the best trial's fitted pipeline (`VectorAssembler → estimator`, as a
    /// refit on the trials' training rows would make it).
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        session: &QuiverSession,
        store_url: &str,
        model: &str,
        rows: TrialRows,
        label: Option<&str>,
        features: &[String],
        fixed: &Point,
        seed: u64,
        keep_best: bool,
    ) -> Result<(Value, Point, Option<Arc<PipelineModel>>)> {
        let (all, held_out, split) = match rows {
            TrialRows::Drawn {
                rows,
                split_columns,
                eval_fraction,
            } => (rows, None, Some((split_columns, eval_fraction))),
            TrialRows::Apart { train, held_out } => (train, Some(held_out), None),
        };
        let mut placed = vec![Placed::new(session, store_url, model, all, "rows").await?];
        if let Some(h) = held_out {
            match Placed::new(session, store_url, model, h, "held-out").await {
                Ok(p) => placed.push(p),
                Err(e) => {
                    for p in placed {
                        p.remove(session).await;
                    }
                    return Err(e);
                }
            }
        }
        let location = placed[0].url.clone();
        let mut spec = TrainEval::new(location.clone(), self.algorithm_entry.name).split_seed(seed);
        match &split {
            Some((columns, fraction)) => {
                spec.eval_fraction = *fraction;
                spec.split_columns = Some(columns.clone());
            }
            None => spec.validation = placed.get(1).map(|p| p.url.clone()),
        }
        spec.features = Some(features.to_vec());
        spec.label = label.map(str::to_string);
        spec.metric = self.metric.clone();
        spec.params = fixed.clone();
        spec.sql_options = true;
        let keep = keep_best && placed[0].in_memory.is_some();
        spec.keep_model = keep;
        let result = self.search(session, spec, seed).await;
        let kept = match &result {
            Ok((best, _, _)) if keep => {
                let mut params = fixed.clone();
                params.extend(best.params.clone());
                quiver_engine::reuse::take::<PipelineModel>(&kept_model_key(&location, &params))
            }
            _ => None,
        };
        // The rows and the other trials' fits go, whatever the search did.
        if keep {
            quiver_engine::reuse::forget(&kept_models_prefix(&location));
        }
        for p in placed {
            p.remove(session).await;
        }
        let (record, chosen) = self.record(result)?;
        Ok((record, chosen, kept))
    }

    /// The tuning record of a search's result, and the best trial's tuned values.
    fn record(&self, result: Result<(Trial, Vec<Trial>, String)>) -> Result<(Value, Point)> {
        let (best, trials, stopped) = result?;
        let chosen: Point = best
            .params
            .iter()
            .filter(|(k, _)| self.tuned.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let metric = best.metrics["objective"]
            .as_str()
            .unwrap_or("loss")
            .to_string();
        let record = json!({
            "algorithm": self.algorithm,
            "num_trials": self.num_trials,
            "max_parallel_trials": self.max_parallel,
            "tuned": self.tuned,
            "objective": metric,
            "is_larger_better": higher_is_better(&metric),
            "best_trial": best.id,
            "pruner": self.pruner.as_ref().map(Pruner::name),
            "stopped": stopped,
            "trials": trials,
        });
        Ok((record, chosen))
    }

    async fn search(
        &self,
        session: &QuiverSession,
        spec: TrainEval,
        seed: u64,
    ) -> Result<(Trial, Vec<Trial>, String)> {
        // A fixed max_iterations is every trial's budget: the pruner's horizon.
        let budget = ["max_iterations", "max_iter"]
            .iter()
            .filter(|k| !self.space.params.iter().any(|p| p.name == **k))
            .find_map(|k| spec.params.get(*k).and_then(serde_json::Value::as_u64));
        let mut search = Search::train_eval(self.space.clone(), spec)
            .algo(self.algo.clone())
            .max_evals(self.num_trials)
            .parallelism(self.max_parallel)
            .seed(seed)
            .runner(Runner::Embedded);
        if let Some(p) = &self.pruner {
            search = search.pruner(match budget {
                Some(steps) => p.clone().with_budget(steps),
                None => p.clone(),
            });
        }
        let result = search.run(session).await?;
        match result.best {
            Some(best) => Ok((best, result.trials, result.stopped)),
            None => {
                let first = result.trials.iter().find(|t| t.message.is_some());
                Err(SqlError::Invalid(format!(
                    "hyperparameter tuning: none of the {} trials trained a model{}",
                    result.trials.len(),
                    first.map_or(String::new(), |t| format!(
                        "; trial {} ({}) failed: {}",
                        t.id,
                        serde_json::to_string(&t.params).unwrap_or_default(),
                        t.message.as_deref().unwrap_or_default()
                    ))
                )))
            }
        }
    }
}
