//! Trees: decision trees, random forests and gradient-boosted trees (Spark MLlib's names),
//! histogram-based as LightGBM and XGBoost's `hist` grow them.
//!
//! A fit reads the training rows once into memory: one aggregate pass of a row sample gives
//! each feature at most `max_bins` bins ([`bins`]), and the rows are coded once as one byte
//! per value. Trees then grow over the codes ([`grow`]): per node, histograms of the row
//! statistics built over fixed row blocks and merged in order (the aggregate primitive over
//! the cached codes), the sibling's by subtraction; forests grow their trees in parallel,
//! boosting parallelises each histogram. Prediction walks flattened trees over whole row
//! blocks (a map function), so `ml_predict` runs where the data is, also on a cluster.

pub(crate) mod bins;
mod ensemble;
mod forest;
mod gbt;
mod grow;
mod model;
mod params;
mod shap;

pub use ensemble::{Combine, Ensemble, Importance, Tree};
pub use model::{
    DecisionTreeClassificationModel, DecisionTreeRegressionModel, GBTClassificationModel,
    GBTRegressionModel, RandomForestClassificationModel, RandomForestRegressionModel,
    TreeEnsembleModel, TreeEstimator, TreeSummary,
};
pub use params::{
    BoostParams, DecisionTreeClassifier, DecisionTreeRegressor, ForestParams, GBTClassifier,
    GBTRegressor, Impurity, Loss, RandomForestClassifier, RandomForestRegressor,
};
pub use shap::{TreeExplainer, expected_value, tree_shap};

use std::sync::Arc;
use std::time::Instant;

use quiver_engine::{Dataset, QuiverSession};
use rayon::prelude::*;

use crate::api::{Estimator, class_index};
use crate::error::{MllibError, Result};
use bins::{BinSample, Bins};
use grow::Binned;

/// The most classes a tree classifier takes (Spark's limit: its histograms hold a sum per
/// class, and a label with larger values is more likely a regression target).
const MAX_CLASSES: usize = 100;

/// The training rows, coded, with their labels and weights.
#[derive(Debug)]
struct Training {
    pub binned: Binned,
    pub label: Vec<f64>,
    pub weight: Vec<f64>,
    /// Classifiers: the class index per row and the number of classes.
    pub classes: Option<(Vec<u32>, usize)>,
}

impl Training {
    /// Reads `data` once into memory, bins its features and codes the rows; a reusable
    /// dataset's ([`Dataset::reusable`]: the trials of a search) once per process.
    async fn read(
        session: &QuiverSession,
        data: &Dataset,
        max_bins: u64,
        weighted: bool,
        classifier: bool,
    ) -> Result<Arc<Training>> {
        let key = data.reuse_key(&format!(
            "tree training, {max_bins} bins, weighted {weighted}, classifier {classifier}"
        ));
        if let Some(t) = key
            .as_deref()
            .and_then(quiver_engine::reuse::get::<Training>)
        {
            return Ok(t);
        }
        let t = Arc::new(Self::read_rows(session, data, max_bins, weighted, classifier).await?);
        if let Some(key) = key {
            let bytes = t.label.len() * (t.binned.d + 20);
            quiver_engine::reuse::put(key, Arc::clone(&t), bytes);
        }
        Ok(t)
    }

    /// [`Training::read`], reading the rows.
    async fn read_rows(
        session: &QuiverSession,
        data: &Dataset,
        max_bins: u64,
        weighted: bool,
        classifier: bool,
    ) -> Result<Training> {
        let label_col = data
            .label()
            .ok_or_else(|| MllibError::InvalidParam {
                param: "label".to_string(),
                reason: "a tree model needs a label column (Dataset::with_label)".to_string(),
            })?
            .to_string();
        if weighted && data.weight().is_none() {
            return Err(MllibError::InvalidParam {
                param: "weighted".to_string(),
                reason: "the dataset has no weight column (Dataset::with_weight)".to_string(),
            });
        }
        // Trees route missing values (nulls and NaN) by a learned default direction.
        let frame = data.clone().keep_missing().cache_local().await?;
        let d = frame.dim();
        let sample = session.aggregate_local(&frame, &BinSample::new(d, frame.n_rows()))?;
        let bins = session.run_compute(|| Bins::from_sample(&sample, d, max_bins as usize));
        let n = frame.n_rows() as usize;
        if n == 0 {
            return Err(MllibError::InvalidParam {
                param: "data".to_string(),
                reason: "no training rows".to_string(),
            });
        }
        let mut codes = vec![0u8; n * d];
        let mut label = Vec::with_capacity(n);
        let mut weight = Vec::with_capacity(n);
        let mut blocks = Vec::new();
        let mut rest = codes.as_mut_slice();
        for chunk in frame.chunks() {
            let b = chunk.batch();
            let (head, tail) = rest.split_at_mut(b.n_rows * d);
            rest = tail;
            blocks.push((b, head));
            label.extend_from_slice(b.label.unwrap_or_default());
            match (weighted, b.weight) {
                (true, Some(w)) => weight.extend_from_slice(w),
                _ => weight.extend(std::iter::repeat_n(1.0, b.n_rows)),
            }
        }
        session.run_compute(|| {
            blocks
                .into_par_iter()
                .for_each(|(b, out)| bins.code_rows(b.values, out))
        });
        if let Some(r) = weight.iter().position(|w| !(*w >= 0.0 && w.is_finite())) {
            return Err(MllibError::InvalidParam {
                param: data.weight().unwrap_or("weight").to_string(),
                reason: format!("weight {} at row {r} is not a finite number ≥ 0", weight[r]),
            });
        }
        let classes = if classifier {
            let mut class = Vec::with_capacity(n);
            for (r, y) in label.iter().enumerate() {
                let c = class_index(*y, &label_col, r)?;
                if c >= MAX_CLASSES {
                    return Err(MllibError::InvalidParam {
                        param: label_col.clone(),
                        reason: format!(
                            "label {y} at row {r} is not a class index below {MAX_CLASSES}; index string labels with StringIndexer"
                        ),
                    });
                }
                class.push(c as u32);
            }
            let k = class.iter().max().map_or(0, |m| *m as usize + 1);
            let present = {
                let mut seen = vec![false; k];
                class.iter().for_each(|c| seen[*c as usize] = true);
                seen.iter().filter(|s| **s).count()
            };
            if present < 2 {
                return Err(MllibError::InvalidParam {
                    param: label_col.clone(),
                    reason: format!(
                        "the label has {present} class; classification needs at least two"
                    ),
                });
            }
            Some((class, k))
        } else {
            if let Some(r) = label.iter().position(|y| !y.is_finite()) {
                return Err(MllibError::InvalidParam {
                    param: label_col.clone(),
                    reason: format!("label {} at row {r} is not finite", label[r]),
                });
            }
            None
        };
        Ok(Training {
            binned: Binned::new(codes, d, bins),
            label,
            weight,
            classes,
        })
    }

    fn bins_per_feature(&self) -> Vec<usize> {
        (0..self.binned.d)
            .map(|j| self.binned.bins.n_bins(j))
            .collect()
    }
}

macro_rules! forest_fit {
    ($($est:ident: classifier = $classifier:literal;)*) => {$(
        impl Estimator for $est {
            type Model = TreeEnsembleModel<$est>;

            async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<Self::Model> {
                self.check()?;
                let started = Instant::now();
                let p = &self.0;
                let t = Training::read(session, data, p.max_bins, p.weighted, $classifier).await?;
                let ensemble = session.run_compute(|| forest::fit(p, &t))?;
                let summary = summary(&t, &ensemble, Vec::new(), Vec::new(), started);
                Ok(TreeEnsembleModel::new(self.clone(), ensemble, summary))
            }
        }
    )*};
}

forest_fit! {
    DecisionTreeClassifier: classifier = true;
    DecisionTreeRegressor: classifier = false;
    RandomForestClassifier: classifier = true;
    RandomForestRegressor: classifier = false;
}

macro_rules! boost_fit {
    ($($est:ident: classifier = $classifier:literal;)*) => {$(
        impl Estimator for $est {
            type Model = TreeEnsembleModel<$est>;

            async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<Self::Model> {
                self.check()?;
                let started = Instant::now();
                let p = &self.0;
                let t = Training::read(session, data, p.max_bins, p.weighted, $classifier).await?;
                // A trial's pruner sees the model after each round (see crate::progress).
                let progress = crate::progress::current();
                let fit = session.run_compute(|| {
                    gbt::fit(p, &t, &mut |round, ensemble| {
                        crate::progress::offer_blocking(progress.as_ref(), round, || {
                            let e = ensemble();
                            let s = summary(&t, &e, Vec::new(), Vec::new(), started);
                            Ok(Arc::new(TreeEnsembleModel::new(self.clone(), e, s))
                                as Arc<dyn crate::Transformer>)
                        })
                    })
                })?;
                let summary = summary(&t, &fit.ensemble, fit.train_loss, fit.valid_loss, started);
                Ok(TreeEnsembleModel::new(self.clone(), fit.ensemble, summary))
            }
        }
    )*};
}

boost_fit! {
    GBTClassifier: classifier = true;
    GBTRegressor: classifier = false;
}

fn summary(
    t: &Training,
    e: &Ensemble,
    objective_history: Vec<f64>,
    validation_history: Vec<f64>,
    started: Instant,
) -> TreeSummary {
    TreeSummary {
        num_trees: e.trees.len(),
        num_classes: t.classes.as_ref().map_or(0, |c| c.1),
        rounds: match e.combine {
            Combine::Sum => e.trees.len() / e.groups.max(1),
            Combine::Average => 0,
        },
        objective_history,
        validation_history,
        bins: t.bins_per_feature(),
        importance: e.importance(),
        wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// Lets the tree models' statistics and map functions run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<BinSample>()?;
    model::register(r)
}
