//! MLlib-style model selection on the search machinery: [`ParamGridBuilder`] builds the
//! parameter maps, [`CrossValidator`] (k folds) and [`TrainValidationSplit`] (one held-out
//! split) score every map as a fan-out trial of the built-in `quiver.train_eval` task (so they
//! run locally, embedded or on cluster executors, `parallelism` at a time), then refit the
//! best map on all the data.

use serde_json::Value;

use quiver_engine::{QuiverSession, Runner};

use super::objective::{TrainEval, higher_is_better, refit};
use super::search::{Algo, Search, Trial};
use super::space::{Point, Space, hp};
use crate::error::{MllibError, Result};
use crate::pipeline::PipelineModel;
use quiver_engine::fanout::TaskStatus;

/// Builds a grid of parameter maps: the cartesian product of the values given per parameter
/// (the parameter added last varies fastest). No parameter at all is one empty map: the
/// estimator's defaults.
#[derive(Debug, Clone, Default)]
pub struct ParamGridBuilder {
    grid: Vec<(String, Vec<Value>)>,
}

impl ParamGridBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The values to try for `param` (an estimator parameter name, e.g. `reg_param`). Adding
    /// a parameter again replaces its values.
    pub fn add_grid<V: Into<Value>>(
        mut self,
        param: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let param = param.into();
        let values: Vec<Value> = values.into_iter().map(Into::into).collect();
        match self.grid.iter_mut().find(|(p, _)| *p == param) {
            Some((_, v)) => *v = values,
            None => self.grid.push((param, values)),
        }
        self
    }

    /// Every parameter map of the grid.
    pub fn build(&self) -> Vec<Point> {
        let mut out = vec![Point::new()];
        for (param, values) in &self.grid {
            out = out
                .iter()
                .flat_map(|base| {
                    values.iter().map(move |v| {
                        let mut p = base.clone();
                        p.insert(param.clone(), v.clone());
                        p
                    })
                })
                .collect();
        }
        out
    }
}

/// What model selection found: the best parameter map refitted on all the data, and the
/// validation metric of every map (in grid order).
#[derive(Debug)]
pub struct TuningModel {
    /// `VectorAssembler → estimator(best params)`, fitted on all the data.
    pub best_model: PipelineModel,
    pub best_params: Point,
    /// Index of the best map in the grid.
    pub best_index: usize,
    /// The metric that chose the model (e.g. `log_loss`, `area_under_roc`).
    pub metric: String,
    pub is_larger_better: bool,
    /// The metric of each map, averaged over the folds for a cross-validation; `None` where
    /// the map's training failed (its trial says why).
    pub metrics: Vec<Option<f64>>,
    /// One trial per map, in grid order.
    pub trials: Vec<Trial>,
}

/// The model a [`CrossValidator`] returns (Spark's `CrossValidatorModel`; `metrics` are its
/// `avgMetrics`).
pub type CrossValidatorModel = TuningModel;
/// The model a [`TrainValidationSplit`] returns (`metrics` are Spark's `validationMetrics`).
pub type TrainValidationSplitModel = TuningModel;

/// What both validators share: the data, estimator and metric (a [`TrainEval`]), the grid and
/// how the trials run.
#[derive(Debug, Clone)]
struct Selection {
    spec: TrainEval,
    grid: Vec<Point>,
    parallelism: usize,
    /// `None`: the search's default (the compute threads shared among the trials at once).
    threads_per_trial: Option<usize>,
    runner: Runner,
}

impl Selection {
    fn new(spec: TrainEval) -> Self {
        Selection {
            spec,
            grid: vec![Point::new()],
            parallelism: 1,
            threads_per_trial: None,
            runner: Runner::Embedded,
        }
    }

    async fn fit(&self, session: &QuiverSession, spec: TrainEval) -> Result<TuningModel> {
        if self.grid.is_empty() {
            return Err(MllibError::InvalidParam {
                param: "param_grid".to_string(),
                reason: "the grid has no parameter map; use ParamGridBuilder::new().build() \
                         for the estimator's defaults"
                    .to_string(),
            });
        }
        let mut search = Search::train_eval(grid_space(&self.grid)?, spec.clone())
            .algo(Algo::Points(self.grid.clone()))
            .max_evals(self.grid.len())
            .parallelism(self.parallelism)
            .runner(self.runner);
        if let Some(t) = self.threads_per_trial {
            search = search.threads_per_trial(t);
        }
        let result = search.run(session).await?;
        let Some(best) = result.best else {
            let first = result.trials.iter().find(|t| t.message.is_some());
            return Err(MllibError::InvalidParam {
                param: "param_grid".to_string(),
                reason: match first {
                    Some(t) => format!(
                        "no parameter map could be trained and scored; map {} failed: {}",
                        serde_json::to_string(&t.params).unwrap_or_default(),
                        t.message.as_deref().unwrap_or_default()
                    ),
                    None => "no parameter map could be trained and scored".to_string(),
                },
            });
        };
        let metric = best.metrics["objective"]
            .as_str()
            .unwrap_or("loss")
            .to_string();
        let is_larger_better = higher_is_better(&metric);
        let metrics = result
            .trials
            .iter()
            .map(|t| {
                (t.status == TaskStatus::Ok)
                    .then_some(t.loss)
                    .flatten()
                    .map(|l| if is_larger_better { -l } else { l })
            })
            .collect();
        let best_model = refit(session, &spec, &best.params).await?;
        Ok(TuningModel {
            best_model,
            best_params: best.params.clone(),
            best_index: best.id as usize,
            metric,
            is_larger_better,
            metrics,
            trials: result.trials,
        })
    }
}

/// A space whose every parameter is a choice of the values the grid uses (the search
/// evaluates the grid's own maps; the space only describes them).
fn grid_space(grid: &[Point]) -> Result<Space> {
    let mut params: Vec<(String, Vec<Value>)> = Vec::new();
    for point in grid {
        for (name, value) in point {
            match params.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) if !values.contains(value) => values.push(value.clone()),
                Some(_) => {}
                None => params.push((name.clone(), vec![value.clone()])),
            }
        }
    }
    Space::new(
        params
            .into_iter()
            .map(|(name, values)| hp::choice(&name, values))
            .collect(),
    )
}

macro_rules! selection_setters {
    () => {
        /// The parameter maps to compare (from [`ParamGridBuilder::build`]). Defaults to one
        /// map: the estimator's defaults.
        pub fn param_grid(mut self, grid: Vec<Point>) -> Self {
            self.selection.grid = grid;
            self
        }

        /// Maps evaluated at once. Defaults to 1 (as in Spark).
        pub fn parallelism(mut self, p: usize) -> Self {
            self.selection.parallelism = p;
            self
        }

        /// Threads of each trial's compute pool. Defaults to the session's compute threads
        /// shared among the maps evaluated at once (1 for trials on a cluster's executors).
        pub fn threads_per_trial(mut self, t: usize) -> Self {
            self.selection.threads_per_trial = Some(t);
            self
        }

        /// Where trials run: `Local` (threads of this process) or `Embedded` (the session's
        /// query engine: executors on a cluster). Defaults to `Embedded`.
        pub fn runner(mut self, r: Runner) -> Self {
            self.selection.runner = r;
            self
        }

        /// The seed of the data's random split. Defaults to 0.
        pub fn seed(mut self, seed: u64) -> Self {
            self.selection.spec.split_seed = seed;
            self
        }
    };
}

/// k-fold cross-validation over a parameter grid. `spec` names the data (a path or URL),
/// the estimator, the label and the metric; its own split settings are replaced.
///
/// ```no_run
/// # async fn demo(session: &quiver_engine::QuiverSession) -> quiver_mllib::Result<()> {
/// use quiver_mllib::tuning::{CrossValidator, ParamGridBuilder, TrainEval};
/// let grid = ParamGridBuilder::new()
///     .add_grid("reg_param", [0.001, 0.01, 0.1])
///     .add_grid("elastic_net_param", [0.0, 1.0])
///     .build();
/// let cv = CrossValidator::new(
///     TrainEval::new("data/breast_cancer.parquet", "logistic_regression")
///         .label("label")
///         .metric("area_under_roc"),
/// )
/// .param_grid(grid)
/// .num_folds(3)
/// .parallelism(2)
/// .fit(session)
/// .await?;
/// println!("best {:?}: {:?}", cv.best_params, cv.metrics[cv.best_index]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CrossValidator {
    selection: Selection,
    num_folds: usize,
}

impl CrossValidator {
    pub fn new(spec: TrainEval) -> Self {
        CrossValidator {
            selection: Selection::new(spec),
            num_folds: 3,
        }
    }

    selection_setters!();

    /// Folds (≥ 2). Defaults to 3 (as in Spark).
    pub fn num_folds(mut self, k: usize) -> Self {
        self.num_folds = k;
        self
    }

    /// Scores every map by its mean metric over the folds and refits the best on all data.
    pub async fn fit(&self, session: &QuiverSession) -> Result<CrossValidatorModel> {
        if self.num_folds < 2 {
            return Err(MllibError::InvalidParam {
                param: "num_folds".to_string(),
                reason: format!("{}: cross-validation needs at least 2", self.num_folds),
            });
        }
        let mut spec = self.selection.spec.clone();
        spec.folds = Some(self.num_folds);
        self.selection.fit(session, spec).await
    }
}

/// One random train/validation split over a parameter grid (cheaper than cross-validation:
/// each map is fitted once).
#[derive(Debug, Clone)]
pub struct TrainValidationSplit {
    selection: Selection,
    train_ratio: f64,
}

impl TrainValidationSplit {
    pub fn new(spec: TrainEval) -> Self {
        TrainValidationSplit {
            selection: Selection::new(spec),
            train_ratio: 0.75,
        }
    }

    selection_setters!();

    /// The training share of the rows, strictly between 0 and 1. Defaults to 0.75 (as in
    /// Spark).
    pub fn train_ratio(mut self, r: f64) -> Self {
        self.train_ratio = r;
        self
    }

    /// Scores every map on the validation rows and refits the best on all data.
    pub async fn fit(&self, session: &QuiverSession) -> Result<TrainValidationSplitModel> {
        if !(self.train_ratio > 0.0 && self.train_ratio < 1.0) {
            return Err(MllibError::InvalidParam {
                param: "train_ratio".to_string(),
                reason: format!("{} is not strictly between 0 and 1", self.train_ratio),
            });
        }
        let mut spec = self.selection.spec.clone();
        spec.folds = None;
        spec.eval_fraction = 1.0 - self.train_ratio;
        self.selection.fit(session, spec).await
    }
}
