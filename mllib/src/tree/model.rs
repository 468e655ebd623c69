//! The fitted tree models: one generic model over an ensemble, its output columns (class
//! scores for classifiers, a value for regressors) as map functions over row blocks, and its
//! storage (the nodes of every tree as Arrow vectors).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, ModelDraft, ModelMetadata, map_dataset};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ensemble::{Combine, Ensemble, Importance, Tree};
use super::params::{
    DecisionTreeClassifier, DecisionTreeRegressor, GBTClassifier, GBTRegressor,
    RandomForestClassifier, RandomForestRegressor,
};
use crate::api::{Model, RowStage, Transformer};
use crate::classification::scores::{self, ClassScores, OutputCols};
use crate::error::{MllibError, Result};
use crate::persist::{params_json, take_vector, vectors_from_ipc, vectors_to_ipc};

/// A tree estimator as its fitted model sees it.
pub trait TreeEstimator:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The stored model's kind (the catalogue's algorithm name).
    const KIND: &'static str;
    const CLASSIFIER: bool;
    /// Prediction, probability and raw prediction columns (regressors use the first).
    fn output_cols(&self) -> [&str; 3];
}

macro_rules! tree_kind {
    ($($est:ident => $kind:literal, $classifier:literal;)*) => {$(
        impl TreeEstimator for $est {
            const KIND: &'static str = $kind;
            const CLASSIFIER: bool = $classifier;
            fn output_cols(&self) -> [&str; 3] {
                let p = &self.0;
                [&p.prediction_col, &p.probability_col, &p.raw_prediction_col]
            }
        }
    )*};
}

tree_kind! {
    DecisionTreeClassifier => "decision_tree_classifier", true;
    DecisionTreeRegressor => "decision_tree_regressor", false;
    RandomForestClassifier => "random_forest_classifier", true;
    RandomForestRegressor => "random_forest_regressor", false;
    GBTClassifier => "gbt_classifier", true;
    GBTRegressor => "gbt_regressor", false;
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeSummary {
    pub num_trees: usize,
    /// Classes of a classifier (0 for a regressor).
    pub num_classes: usize,
    /// Boosting: the training loss before each round and after the last (empty for forests).
    pub objective_history: Vec<f64>,
    /// Boosting with early stopping: the held-out loss after each round.
    pub validation_history: Vec<f64>,
    /// Boosting: rounds kept.
    pub rounds: usize,
    /// Value bins per feature.
    pub bins: Vec<usize>,
    pub importance: Importance,
    pub wall_time_ms: f64,
}

/// A fitted tree model: a decision tree, a random forest or boosted trees.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsembleModel<E: TreeEstimator> {
    params: E,
    ensemble: Ensemble,
    summary: TreeSummary,
    _kind: PhantomData<E>,
}

pub type DecisionTreeClassificationModel = TreeEnsembleModel<DecisionTreeClassifier>;
pub type DecisionTreeRegressionModel = TreeEnsembleModel<DecisionTreeRegressor>;
pub type RandomForestClassificationModel = TreeEnsembleModel<RandomForestClassifier>;
pub type RandomForestRegressionModel = TreeEnsembleModel<RandomForestRegressor>;
pub type GBTClassificationModel = TreeEnsembleModel<GBTClassifier>;
pub type GBTRegressionModel = TreeEnsembleModel<GBTRegressor>;

impl<E: TreeEstimator> TreeEnsembleModel<E> {
    pub(super) fn new(params: E, ensemble: Ensemble, summary: TreeSummary) -> Self {
        TreeEnsembleModel {
            params,
            ensemble,
            summary,
            _kind: PhantomData,
        }
    }

    pub fn trees(&self) -> &[Tree] {
        &self.ensemble.trees
    }

    pub fn ensemble(&self) -> &Ensemble {
        &self.ensemble
    }

    pub fn summary(&self) -> &TreeSummary {
        &self.summary
    }

    pub fn num_features(&self) -> usize {
        self.ensemble.dim
    }

    /// Total gain per feature normalised to sum to 1 (Spark's `featureImportances`).
    pub fn feature_importances(&self) -> Vec<f64> {
        self.summary.importance.normalized_gain()
    }

    /// The model's output for one raw row: a regressor's value, or a classifier's class
    /// probabilities.
    pub fn predict_row(&self, x: &[f64]) -> Vec<f64> {
        if E::CLASSIFIER {
            let w = self.ensemble.width();
            let (mut raw, mut p) = (vec![0.0; w], vec![0.0; w]);
            ClassScores::raw(&self.ensemble, x, &mut raw);
            ClassScores::probabilities(&self.ensemble, &raw, &mut p);
            p
        } else {
            vec![self.ensemble.value(x)]
        }
    }

    fn regressor(&self) -> Arc<TreeRegress> {
        Arc::new(TreeRegress {
            ensemble: self.ensemble.clone(),
        })
    }
}

impl Ensemble {
    /// Values per row of a classifier's raw and probability vectors.
    fn width(&self) -> usize {
        match self.combine {
            Combine::Sum if self.groups == 1 => 2,
            _ => self.groups,
        }
    }

    /// A regressor's prediction.
    #[inline]
    fn value(&self, x: &[f64]) -> f64 {
        let mut out = [0.0];
        self.outputs(x, &mut out);
        out[0]
    }
}

impl ClassScores for Ensemble {
    const FUNCTIONS: [&'static str; 3] = [
        "tree_ensemble_raw_prediction",
        "tree_ensemble_probability",
        "tree_ensemble_predict",
    ];
    const EVALUATION: &'static str = "tree_ensemble_evaluation_counts";
    const WHAT: &'static str = "a tree ensemble";
    /// A missing value goes where the split learned (its default direction).
    const ACCEPTS_MISSING: bool = true;

    fn dim(&self) -> usize {
        self.dim
    }

    fn width(&self) -> usize {
        Ensemble::width(self)
    }

    /// Forests: the averaged class probabilities. Boosting: the margins per class; for two
    /// classes `(−m/2, m/2)`, whose softmax is the logistic of the margin `m`.
    fn raw(&self, x: &[f64], out: &mut [f64]) {
        if self.combine == Combine::Sum && self.groups == 1 {
            let m = self.value(x);
            out[0] = -0.5 * m;
            out[1] = 0.5 * m;
        } else {
            self.outputs(x, out);
        }
    }

    /// On the device: the ensemble's outputs (margins or averaged leaf values), one thread
    /// per row — equal to the CPU's bit for bit.
    fn device_scores(&self, x: &[f64]) -> quiver_engine::Result<Option<(Vec<f64>, usize)>> {
        Ok(
            quiver_engine::device::forest_outputs(x, self.dim, || self.flatten())?
                .map(|s| (s, self.groups)),
        )
    }

    /// The outputs of the whole batch, walked in blocks of rows ([`Ensemble::outputs_rows`]).
    fn batch_scores(&self, x: &[f64], rows: usize) -> Option<(Vec<f64>, usize)> {
        let k = self.base.len();
        let mut out = vec![0.0; rows * k];
        self.outputs_rows(x, &mut out);
        Some((out, k))
    }

    fn raw_from_scores(&self, s: &[f64], out: &mut [f64]) {
        if self.combine == Combine::Sum && self.groups == 1 {
            out[0] = -0.5 * s[0];
            out[1] = 0.5 * s[0];
        } else {
            out.copy_from_slice(s);
        }
    }

    fn probabilities(&self, raw: &[f64], out: &mut [f64]) {
        match self.combine {
            Combine::Sum => scores::softmax(raw, out),
            Combine::Average => {
                let total: f64 = raw.iter().sum();
                for (o, r) in out.iter_mut().zip(raw) {
                    *o = if total > 0.0 { r / total } else { 0.0 };
                }
            }
        }
    }
}

/// A regression ensemble's value per row.
#[derive(Debug, Serialize, Deserialize)]
struct TreeRegress {
    ensemble: Ensemble,
}

impl BatchFunction for TreeRegress {
    fn name(&self) -> &str {
        "tree_ensemble_regress"
    }
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a tree ensemble", self)
    }
    fn input_dim(&self) -> usize {
        self.ensemble.dim
    }
    fn return_type(&self) -> DataType {
        DataType::Float64
    }
    fn accepts_missing(&self) -> bool {
        true
    }
    fn apply(&self, b: &FeatureBatch<'_>) -> quiver_engine::Result<ArrayRef> {
        let e = &self.ensemble;
        if let Some(on_device) =
            quiver_engine::device::forest_outputs(b.values, e.dim, || e.flatten())?
        {
            return Ok(Arc::new(Float64Array::from(on_device)));
        }
        let mut out = vec![0.0; b.n_rows];
        e.outputs_rows(b.values, &mut out);
        Ok(Arc::new(Float64Array::from(out)))
    }
}

quiver_engine::impl_json_params!(TreeRegress => "a tree ensemble");

impl<E: TreeEstimator> Transformer for TreeEnsembleModel<E> {
    /// Classifiers add the raw prediction, probability and prediction columns; regressors the
    /// prediction.
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let [prediction, probability, raw_prediction] = self.params.output_cols();
        let cols = OutputCols {
            prediction,
            probability,
            raw_prediction,
        };
        if E::CLASSIFIER {
            cols.transform(&self.ensemble, data)
        } else {
            Ok(map_dataset(
                data.clone(),
                self.regressor(),
                cols.prediction,
            )?)
        }
    }

    fn evaluate_classifier(
        &self,
        session: &quiver_engine::QuiverSession,
        data: &Dataset,
    ) -> Option<crate::api::BoxedEvaluation> {
        if !E::CLASSIFIER {
            return None;
        }
        scores::evaluate_in_one_pass(self.ensemble.clone(), session, data)
    }

    fn explainer(&self) -> Option<Arc<dyn crate::explain::Explainer>> {
        Some(Arc::new(super::TreeExplainer::new(
            self.ensemble.clone(),
            E::CLASSIFIER,
        )))
    }

    fn row_stage(&self) -> RowStage {
        if E::CLASSIFIER {
            scores::row_stage(&self.ensemble)
        } else {
            RowStage::Predict {
                prediction: self.regressor(),
                probability: None,
            }
        }
    }

    /// Feature importance: splits, total gain and total cover per feature.
    fn weight_vectors(&self) -> Vec<(String, Vec<f64>)> {
        let imp = &self.summary.importance;
        vec![
            ("importance_weight".to_string(), imp.weight.clone()),
            ("importance_gain".to_string(), imp.gain.clone()),
            ("importance_cover".to_string(), imp.cover.clone()),
        ]
    }
}

/// The ensemble's shape as stored in the metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shape {
    dim: usize,
    combine: Combine,
    groups: usize,
    base: Vec<f64>,
    width: usize,
}

const NODE_COLUMNS: [&str; 9] = [
    "tree",
    "feature",
    "threshold",
    "bin",
    "default_left",
    "left",
    "right",
    "gain",
    "cover",
];

impl<E: TreeEstimator> Model for TreeEnsembleModel<E> {
    const KIND: &'static str = E::KIND;
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let e = &self.ensemble;
        let width = e.trees.first().map_or(1, |t| t.width);
        let shape = Shape {
            dim: e.dim,
            combine: e.combine,
            groups: e.groups,
            base: e.base.clone(),
            width,
        };
        let draft = ModelDraft {
            params: params_json(&(&self.params, &shape))?,
            training_summary: params_json(&self.summary)?,
            ..Default::default()
        };
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); NODE_COLUMNS.len()];
        let mut values = Vec::new();
        for (t, tree) in e.trees.iter().enumerate() {
            for i in 0..tree.n_nodes() {
                let row = [
                    t as f64,
                    tree.feature[i] as f64,
                    tree.threshold[i],
                    tree.bin[i] as f64,
                    if tree.default_left[i] { 1.0 } else { 0.0 },
                    tree.left[i] as f64,
                    tree.right[i] as f64,
                    tree.gain[i],
                    tree.cover[i],
                ];
                for (c, v) in cols.iter_mut().zip(row) {
                    c.push(v);
                }
            }
            values.extend_from_slice(&tree.values);
        }
        let named: Vec<(&str, &[f64])> = NODE_COLUMNS
            .iter()
            .zip(&cols)
            .map(|(n, c)| (*n, c.as_slice()))
            .collect();
        Ok((
            draft,
            vec![
                ("nodes.arrow".to_string(), vectors_to_ipc(&named)?),
                (
                    "values.arrow".to_string(),
                    vectors_to_ipc(&[("values", &values)])?,
                ),
            ],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let (params, shape): (E, Shape) = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        let summary: TreeSummary = serde_json::from_value(meta.training_summary.clone())
            .map_err(|e| corrupt(format!("invalid training summary: {e}")))?;
        let part = |n: &str| {
            parts
                .get(n)
                .ok_or_else(|| corrupt(format!("no part '{n}'")))
        };
        let mut nodes = vectors_from_ipc(part("nodes.arrow")?, &meta.name)?;
        let n = nodes.get("tree").map_or(0, Vec::len);
        let mut col = |name: &str| take_vector(&mut nodes, name, n, &meta.name);
        let (tree, feature, threshold, bin, default_left, left, right, gain, cover) = (
            col("tree")?,
            col("feature")?,
            col("threshold")?,
            col("bin")?,
            col("default_left")?,
            col("left")?,
            col("right")?,
            col("gain")?,
            col("cover")?,
        );
        // Sizes the metadata claims are checked before anything is sized by them.
        if shape.width == 0
            || shape.width > crate::api::MAX_CLASS_INDEX
            || shape.dim == 0
            || shape.dim > 1 << 24
            || shape.groups == 0
            || shape.groups > crate::api::MAX_CLASS_INDEX
            || shape.base.len() > crate::api::MAX_CLASS_INDEX
        {
            return Err(corrupt(format!(
                "shape dim {}, width {}, groups {}, {} base scores is not a tree ensemble's",
                shape.dim,
                shape.width,
                shape.groups,
                shape.base.len()
            )));
        }
        let w = shape.width;
        let values = take_vector(
            &mut vectors_from_ipc(part("values.arrow")?, &meta.name)?,
            "values",
            n.checked_mul(w)
                .ok_or_else(|| corrupt(format!("{n} nodes of width {w}")))?,
            &meta.name,
        )?;
        let index = |v: f64, what: &str| -> Result<u32> {
            if v >= 0.0 && v <= u32::MAX as f64 && v.fract() == 0.0 {
                Ok(v as u32)
            } else {
                Err(corrupt(format!("{what} {v} is not an index")))
            }
        };
        let mut trees: Vec<Tree> = Vec::new();
        for i in 0..n {
            let t = index(tree[i], "tree")? as usize;
            if t == trees.len() {
                trees.push(Tree::new(w));
            } else if t + 1 != trees.len() {
                return Err(corrupt(format!(
                    "node {i} belongs to tree {t} out of order"
                )));
            }
            let tr = trees.last_mut().expect("pushed above");
            tr.feature.push(index(feature[i], "feature")?);
            // Models stored before thresholds were kept finite split "missing or not" at +∞.
            tr.threshold.push(if threshold[i] == f64::INFINITY {
                f64::MAX
            } else {
                threshold[i]
            });
            tr.bin.push(index(bin[i], "bin")?.min(255) as u8);
            tr.default_left.push(default_left[i] != 0.0);
            tr.left.push(index(left[i], "child")?);
            tr.right.push(index(right[i], "child")?);
            tr.gain.push(gain[i]);
            tr.cover.push(cover[i]);
            tr.values.extend_from_slice(&values[i * w..(i + 1) * w]);
        }
        let ensemble = Ensemble {
            dim: shape.dim,
            combine: shape.combine,
            groups: shape.groups,
            base: shape.base,
            trees,
        };
        ensemble.validate().map_err(corrupt)?;
        Ok(TreeEnsembleModel::new(params, ensemble, summary))
    }
}

/// Lets the tree models' map functions run on a cluster.
pub(super) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    scores::register::<Ensemble>(r)?;
    r.add_batch_function::<TreeRegress>("tree_ensemble_regress")
}
