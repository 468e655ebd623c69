//! `quiver tune SPEC.toml`: a hyperparameter search of an MLlib estimator described in TOML,
//! with a progress bar (best so far), a table of the top trials, the best model refitted on
//! all the data and saved to the model store, and a convergence plot (SVG).
//!
//! Relative paths in the spec (`dataset`, `validation`, `trial_log`, `plot`) are relative to the spec file's
//! directory, wherever the command runs from. The dataset is read before any trial starts,
//! and a search whose trials all failed is an error (non-zero exit).
//!
//! ```toml
//! [data]
//! dataset = "data/breast_cancer.parquet"
//! label = "label"                  # features = ["f0", "f1"] (default: every numeric column)
//! # validation = "data/held_out.parquet"  # held-out rows kept apart: no split of `dataset`
//!
//! [model]
//! estimator = "logistic_regression"   # linear_regression, kmeans
//! metric = "log_loss"                 # optional; see TrainEval
//! eval_fraction = 0.2                # or folds = 5 (k-fold cross-validation)
//! name = "bc_tuned"                   # saved under this name (optional)
//! stages = ["standard_scaler"]        # feature stages before the estimator (optional)
//!
//! [search]
//! algo = "tpe"                        # random, grid
//! max_evals = 64
//! parallelism = 2
//! threads_per_trial = 1               # each trial's compute pool (default: the compute threads / parallelism)
//! asynchronous = false                # true: a new trial whenever one ends (no batches)
//! seed = 1
//! trial_log = "tune-trials.jsonl"     # resumes from it when it exists
//! plot = "tune-convergence.svg"
//! timeout_s = 600
//! trial_timeout_s = 60                # one trial's limit: past it, stopped and recorded failed
//! max_failures = 5                    # stop the search (exit 1) after 5 failed trials
//! early_stop = 20                     # finished trials without progress
//! pruner = "asha"                     # median, hyperband, none: stop poor trials as they train
//! # pruner = { name = "asha", min_resource = 9, reduction_factor = 3, extrapolate = true,
//! #           demote = true }
//! cluster = "df://127.0.0.1:50050"    # trials on a cluster's executors (or --cluster URL)
//! trial_placement = "auto"             # executor (each trial on one executor), distributed
//!                                      # (each a distributed fit driven from here; pruning works)
//!
//! [space]
//! reg_param = { loguniform = [1e-6, 100.0] }
//! elastic_net_param = { uniform = [0.0, 1.0] }
//! ```

use std::io::Write;
use std::time::Duration;

use quiver_mllib::tuning::{
    Algo, Point, Pruner, Search, SearchResult, Space, Tpe, TrainEval, TrialPlacement, objective,
};
use serde::Deserialize;

use crate::output::progress;
use crate::{QuiverError, QuiverSession, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    data: DataSpec,
    model: ModelSpec,
    #[serde(default)]
    search: SearchSpec,
    space: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSpec {
    dataset: String,
    label: Option<String>,
    features: Option<Vec<String>>,
    /// Held-out rows apart from `dataset` ([`TrainEval::validation`]).
    validation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSpec {
    estimator: String,
    metric: Option<String>,
    eval_fraction: Option<f64>,
    split_seed: Option<u64>,
    folds: Option<usize>,
    name: Option<String>,
    stages: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchSpec {
    algo: Option<String>,
    max_evals: Option<usize>,
    parallelism: Option<usize>,
    threads_per_trial: Option<usize>,
    asynchronous: Option<bool>,
    seed: Option<u64>,
    trial_log: Option<String>,
    plot: Option<String>,
    timeout_s: Option<f64>,
    trial_timeout_s: Option<f64>,
    max_failures: Option<usize>,
    early_stop: Option<usize>,
    grid_points: Option<usize>,
    loss_threshold: Option<f64>,
    cluster: Option<String>,
    /// A pruner's name, or a table with `name` and its settings.
    pruner: Option<toml::Value>,
    trial_placement: Option<String>,
}

fn invalid(reason: String) -> QuiverError {
    QuiverError::InvalidParam {
        param: "tune spec".to_string(),
        reason,
    }
}

/// `[search] pruner`: a name (`"asha"`) or a table (`{ name = "asha", min_resource = 2 }`).
fn pruner(value: &toml::Value) -> Result<Option<Pruner>> {
    let named =
        |name: &str| Pruner::from_name(name).map_err(|e| invalid(format!("[search] pruner: {e}")));
    match value {
        toml::Value::String(name) => named(name),
        toml::Value::Table(t) => {
            let name = t.get("name").and_then(toml::Value::as_str).ok_or_else(|| {
                invalid(
                    "[search] pruner: a table needs name = \"median\" | \"asha\" | \"hyperband\""
                        .to_string(),
                )
            })?;
            let Some(mut p) = named(name)? else {
                return Ok(None);
            };
            for (k, v) in t.iter().filter(|(k, _)| *k != "name") {
                let n = v
                    .as_integer()
                    .and_then(|n| u64::try_from(n).ok())
                    .or_else(|| v.as_bool().map(u64::from))
                    .ok_or_else(|| {
                        invalid(format!(
                            "[search] pruner.{k} = {v}: must be a whole number ≥ 0 (or true / false)"
                        ))
                    })?;
                p.set(k, n)
                    .map_err(|e| invalid(format!("[search] pruner: {e}")))?;
            }
            p.check()
                .map_err(|e| invalid(format!("[search] pruner: {e}")))?;
            Ok(Some(p))
        }
        other => Err(invalid(format!(
            "[search] pruner = {other}: use a name (\"asha\") or a table with name and settings"
        ))),
    }
}

fn read_spec(spec_path: &std::path::Path) -> Result<Spec> {
    let text = std::fs::read_to_string(spec_path).map_err(|source| QuiverError::Io {
        path: spec_path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| invalid(format!("{}: {e}", spec_path.display())))
}

/// A relative local path of the spec, resolved against the spec's directory (URLs and
/// absolute paths as they are).
fn beside(spec_path: &std::path::Path, path: &str) -> String {
    let p = std::path::Path::new(path);
    if path.contains("://") || p.is_absolute() {
        return path.to_string();
    }
    match spec_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p).to_string_lossy().into_owned(),
        _ => path.to_string(),
    }
}

/// The cluster a spec's trials run on (`[search] cluster`), if it names one.
pub fn spec_cluster(spec_path: &std::path::Path) -> Result<Option<String>> {
    Ok(read_spec(spec_path)?.search.cluster)
}

/// Runs the search a spec file describes (on a cluster session, trials run on the executors).
pub async fn tune(
    session: &QuiverSession,
    spec_path: &std::path::Path,
    out: &mut dyn Write,
) -> Result<SearchResult> {
    let mut spec = read_spec(spec_path)?;
    spec.data.dataset = beside(spec_path, &spec.data.dataset);
    spec.data.validation = spec.data.validation.map(|p| beside(spec_path, &p));
    spec.search.trial_log = spec.search.trial_log.map(|p| beside(spec_path, &p));
    spec.search.plot = spec.search.plot.map(|p| beside(spec_path, &p));
    for (name, value) in [
        ("timeout_s", spec.search.timeout_s),
        ("trial_timeout_s", spec.search.trial_timeout_s),
    ] {
        if let Some(t) = value
            && !(t.is_finite() && t > 0.0 && t < 1e9)
        {
            return Err(invalid(format!(
                "[search] {name} = {t}: must be a positive number of seconds"
            )));
        }
    }
    if spec.search.max_failures == Some(0) {
        return Err(invalid(
            "[search] max_failures must be at least 1 (leave it out to never stop on failures)"
                .to_string(),
        ));
    }
    if spec.search.max_evals == Some(0) {
        return Err(invalid("[search] max_evals must be at least 1".to_string()));
    }
    let space_json = serde_json::to_value(&spec.space).map_err(|e| invalid(e.to_string()))?;
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::from(e);
    let space = Space::from_json(&space_json).map_err(mllib_err)?;
    let s = &spec.search;
    let algo = match s.algo.as_deref().unwrap_or("tpe") {
        "tpe" => Algo::Tpe(Tpe::default()),
        "random" => Algo::Random,
        "grid" => Algo::Grid {
            points: s.grid_points.unwrap_or(5),
        },
        other => {
            return Err(invalid(format!(
                "[search] algo = '{other}': use tpe, random or grid"
            )));
        }
    };
    let train_eval = TrainEval {
        dataset: spec.data.dataset.clone(),
        estimator: spec.model.estimator.clone(),
        label: spec.data.label.clone(),
        features: spec.data.features.clone(),
        metric: spec.model.metric.clone(),
        eval_fraction: spec.model.eval_fraction.unwrap_or(0.2),
        validation: spec.data.validation.clone(),
        split_seed: spec.model.split_seed.unwrap_or(0),
        folds: spec.model.folds,
        params: Point::new(),
        sql_options: false,
        stages: spec.model.stages.clone().unwrap_or_default(),
        split_columns: None,
        keep_model: false,
    };
    // A bad estimator or parameter name fails here, not in every trial.
    let mut probe = train_eval.clone();
    probe.params =
        space.sample(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0));
    objective::pipeline(&probe, &["probe".to_string()])?;
    // The data is planned once here, so a missing or unreadable file fails the search before
    // any trial.
    session.read(&spec.data.dataset).await.map_err(|e| {
        invalid(format!(
            "[data] dataset = '{}' cannot be read: {e}",
            spec.data.dataset
        ))
    })?;
    if let Some(v) = &spec.data.validation {
        if let Some(k) = spec.model.folds {
            return Err(invalid(format!(
                "[data] validation and [model] folds = {k}: cross-validation splits the rows \
                 itself; give one or the other"
            )));
        }
        session
            .read(v)
            .await
            .map_err(|e| invalid(format!("[data] validation = '{v}' cannot be read: {e}")))?;
    }
    let pruner = match &s.pruner {
        Some(v) => pruner(v)?,
        None => None,
    };
    let placement = match s.trial_placement.as_deref().unwrap_or("auto") {
        "auto" => TrialPlacement::Auto,
        "executor" => TrialPlacement::Executor,
        "distributed" => TrialPlacement::Distributed,
        other => {
            return Err(invalid(format!(
                "[search] trial_placement = '{other}': use auto, executor or distributed"
            )));
        }
    };
    let max_evals = s.max_evals.unwrap_or(50);
    let bar = progress(max_evals as u64, "trials");
    let bar_in = bar.clone();
    let mut search = Search::train_eval(space, train_eval.clone())
        .algo(algo)
        .max_evals(max_evals)
        .parallelism(s.parallelism.unwrap_or(session.config().compute_threads))
        .asynchronous(s.asynchronous.unwrap_or(false))
        .seed(s.seed.unwrap_or(0))
        // On a cluster the executors run the trials.
        .runner(if session.is_cluster() {
            crate::Runner::Embedded
        } else {
            session.runner()
        })
        .on_batch(move |trials| {
            bar_in.set_position(trials.len() as u64);
            let best = trials
                .iter()
                .filter(|t| t.status.as_str() == "ok")
                .filter_map(|t| t.loss)
                .fold(f64::INFINITY, f64::min);
            bar_in.set_message(format!("trials, best {best:.6}"));
        });
    if let Some(t) = s.threads_per_trial {
        search = search.threads_per_trial(t);
    }
    if let Some(log) = &s.trial_log {
        search = search.trial_log(log);
    }
    if let Some(t) = s.timeout_s {
        search = search.timeout(Duration::from_secs_f64(t));
    }
    if let Some(t) = s.trial_timeout_s {
        search = search.trial_timeout(Duration::from_secs_f64(t));
    }
    if let Some(n) = s.max_failures {
        search = search.max_failures(n);
    }
    if let Some(k) = s.early_stop {
        search = search.early_stop(k);
    }
    if let Some(p) = pruner {
        search = search.pruner(p);
    }
    search = search.trial_placement(placement);
    if let Some(l) = s.loss_threshold {
        search = search.loss_threshold(l);
    }
    let result = search.run(session).await.map_err(mllib_err)?;
    bar.finish_and_clear();
    let count = |status: &str| {
        result
            .trials
            .iter()
            .filter(|t| t.status.as_str() == status)
            .count()
    };
    writeln!(
        out,
        "{} trials ({} ok, {} pruned, {} failed, {} cancelled); stopped: {}",
        result.trials.len(),
        count("ok"),
        count("pruned"),
        count("failed"),
        count("cancelled"),
        result.stopped
    )
    .ok();
    // Finished trials first by loss; a pruned trial's loss is only where it was stopped.
    let mut ranked: Vec<_> = result.trials.iter().filter(|t| t.loss.is_some()).collect();
    ranked.sort_by(|a, b| {
        (a.status.as_str() != "ok")
            .cmp(&(b.status.as_str() != "ok"))
            .then(
                a.loss
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.loss.unwrap_or(f64::INFINITY)),
            )
    });
    writeln!(
        out,
        "  {:>5}  {:>12}  {:<16}  params",
        "trial", "loss", "status"
    )
    .ok();
    for t in ranked.iter().take(10) {
        let status = match (t.status.as_str(), t.intermediate.last()) {
            ("pruned", Some((step, _))) => format!("pruned at {step}"),
            (s, _) => s.to_string(),
        };
        writeln!(
            out,
            "  {:>5}  {:>12.6}  {:<16}  {}",
            t.id,
            t.loss.unwrap_or(f64::NAN),
            status,
            serde_json::to_string(&t.params).unwrap_or_default()
        )
        .ok();
    }
    if let Some(failed) = result.trials.iter().find(|t| t.status.as_str() == "failed") {
        writeln!(
            out,
            "  e.g. trial {} failed: {}",
            failed.id,
            failed.message.as_deref().unwrap_or("?")
        )
        .ok();
        if result.stopped.starts_with("max_failures") {
            return Err(QuiverError::TaskFailed {
                task: "search".to_string(),
                reason: format!(
                    "stopped early, nothing refitted or saved: {}",
                    result.stopped
                ),
            });
        }
        if count("ok") == 0 {
            return Err(QuiverError::TaskFailed {
                task: "search".to_string(),
                reason: format!(
                    "all {} trials failed; trial {}: {}",
                    result.trials.len(),
                    failed.id,
                    failed.message.as_deref().unwrap_or("?")
                ),
            });
        }
    }
    if let (Some(best), Some(name)) = (&result.best, &spec.model.name) {
        let model = objective::refit(session, &train_eval, &best.params)
            .await
            .map_err(mllib_err)?;
        let meta = quiver_mllib::save(&session.model_store()?, name, &model)
            .await
            .map_err(mllib_err)?;
        writeln!(
            out,
            "best trial {} refitted on all rows and saved as {name} version {} in {}",
            best.id,
            meta.version,
            session.model_store()?.url()
        )
        .ok();
    }
    if let Some(plot) = &s.plot {
        std::fs::write(plot, convergence_svg(&result)).map_err(|source| QuiverError::Io {
            path: plot.into(),
            source,
        })?;
        writeln!(out, "convergence plot: {plot}").ok();
    }
    Ok(result)
}

/// Best loss so far against trial number, as an SVG line chart (trial losses as dots).
pub fn convergence_svg(result: &SearchResult) -> String {
    let (w, h, m) = (640.0, 400.0, 50.0);
    let losses: Vec<(u64, f64, bool)> = result
        .trials
        .iter()
        .filter_map(|t| t.loss.map(|l| (t.id, l, t.status.as_str() == "ok")))
        .collect();
    let n = result.trials.len().max(2) as f64;
    let mut best = f64::INFINITY;
    // The best finished trial so far (a pruned trial's loss is where it stopped, not a result).
    let best_path: Vec<(f64, f64)> = losses
        .iter()
        .filter(|(_, _, finished)| *finished)
        .map(|(i, l, _)| {
            best = best.min(*l);
            (*i as f64, best)
        })
        .collect();
    let lo = losses
        .iter()
        .map(|(_, l, _)| *l)
        .fold(f64::INFINITY, f64::min);
    // Clip the axis at the median trial so that a few huge losses do not flatten the curve.
    let mut sorted: Vec<f64> = losses.iter().map(|(_, l, _)| *l).collect();
    sorted.sort_by(f64::total_cmp);
    let hi = sorted
        .get(sorted.len() / 2)
        .copied()
        .unwrap_or(1.0)
        .max(lo + 1e-12);
    let x = |i: f64| m + (w - 2.0 * m) * i / (n - 1.0);
    let y = |l: f64| h - m - (h - 2.0 * m) * ((l.min(hi) - lo) / (hi - lo));
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n<text x=\"{cx}\" y=\"{t}\" text-anchor=\"middle\">trial</text>\n<text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">loss (best so far)</text>\n<text x=\"{m}\" y=\"{lb}\" text-anchor=\"start\">{lo:.4}</text>\n<text x=\"{m}\" y=\"{ht}\" text-anchor=\"start\">{hi:.4}</text>\n",
        b = h - m,
        r = w - m,
        cx = w / 2.0,
        t = h - 15.0,
        cy = h / 2.0,
        lb = h - m - 4.0,
        ht = m - 4.0,
    );
    // Finished trials as filled dots, pruned ones as rings.
    for (i, l, finished) in &losses {
        let style = if *finished {
            "fill=\"#9ab\""
        } else {
            "fill=\"none\" stroke=\"#bbb\""
        };
        svg.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" {style}/>\n",
            x(*i as f64),
            y(*l)
        ));
    }
    let points: Vec<String> = best_path
        .iter()
        .map(|(i, l)| format!("{:.1},{:.1}", x(*i), y(*l)))
        .collect();
    svg.push_str(&format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#c33\" stroke-width=\"2\"/>\n</svg>\n",
        points.join(" ")
    ));
    svg
}
