//! The tree estimators' parameters (Spark MLlib's names and defaults): forests and single
//! trees share [`ForestParams`], boosted trees [`BoostParams`]; each estimator is one of them
//! with its own defaults and checks.

use serde::{Deserialize, Serialize};

use super::bins::MAX_VALUE_BINS;
use crate::classification::scores::OutputCols;
use crate::error::{MllibError, Result};

/// How a forest node's split is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impurity {
    Gini,
    Entropy,
    Variance,
}

/// What a boosted model minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Log loss: binary logistic for two classes, softmax for more.
    Logistic,
    Squared,
    Absolute,
}

/// Random forests and single decision trees (a tree is a forest of one, without bootstrap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestParams {
    pub num_trees: u64,
    /// Depth 0 is a single leaf (Spark's convention).
    pub max_depth: u64,
    /// Value bins per feature, 2 to 255 (missing values have a bin of their own).
    pub max_bins: u64,
    pub min_instances_per_node: u64,
    pub min_info_gain: f64,
    /// Rows sampled per tree, as a fraction.
    pub subsampling_rate: f64,
    /// Sample with replacement (Poisson counts, as Spark does).
    pub bootstrap: bool,
    /// Features tried per node: auto, all, sqrt, log2, onethird, a fraction in (0, 1] or a
    /// count ≥ 1.
    pub feature_subset_strategy: String,
    pub impurity: Impurity,
    pub seed: u64,
    /// Read the dataset's weight column.
    pub weighted: bool,
    pub prediction_col: String,
    pub probability_col: String,
    pub raw_prediction_col: String,
}

/// Gradient-boosted trees with second-order (gradient and hessian) steps, as XGBoost and
/// LightGBM grow them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoostParams {
    /// Boosting rounds.
    pub max_iter: u64,
    /// Learning rate: each tree's weights are scaled by it.
    pub step_size: f64,
    pub max_depth: u64,
    pub max_bins: u64,
    pub min_instances_per_node: u64,
    /// L1 on leaf weights (XGBoost's alpha).
    pub reg_alpha: f64,
    /// L2 on leaf weights (XGBoost's lambda).
    pub reg_lambda: f64,
    /// The least gain a split must bring (XGBoost's gamma).
    pub min_split_loss: f64,
    /// The least hessian sum in a child.
    pub min_child_weight: f64,
    /// Rows sampled per round, as a fraction.
    pub subsampling_rate: f64,
    pub colsample_bytree: f64,
    pub colsample_bynode: f64,
    pub loss: Loss,
    /// Hold out `validation_fraction` of the rows and stop when a round improves their loss by
    /// less than `validation_tol` (relative); the model keeps the best round.
    pub early_stop: bool,
    pub validation_fraction: f64,
    pub validation_tol: f64,
    pub seed: u64,
    pub weighted: bool,
    pub prediction_col: String,
    pub probability_col: String,
    pub raw_prediction_col: String,
}

const SEED: u64 = 42;

impl ForestParams {
    fn forest(impurity: Impurity) -> Self {
        ForestParams {
            num_trees: 20,
            max_depth: 5,
            max_bins: 32,
            min_instances_per_node: 1,
            min_info_gain: 0.0,
            subsampling_rate: 1.0,
            bootstrap: true,
            feature_subset_strategy: "auto".to_string(),
            impurity,
            seed: SEED,
            weighted: false,
            prediction_col: "prediction".to_string(),
            probability_col: "probability".to_string(),
            raw_prediction_col: "raw_prediction".to_string(),
        }
    }

    fn single(impurity: Impurity) -> Self {
        ForestParams {
            num_trees: 1,
            bootstrap: false,
            feature_subset_strategy: "all".to_string(),
            ..ForestParams::forest(impurity)
        }
    }

    fn check(&self, classifier: bool, single: bool) -> Result<()> {
        check_growth(self.max_depth, self.max_bins, self.min_instances_per_node)?;
        if single && self.num_trees != 1 {
            return Err(invalid(
                "num_trees",
                format!(
                    "a decision tree is one tree, got {}; use a random forest for more",
                    self.num_trees
                ),
            ));
        }
        if self.num_trees == 0 || self.num_trees > 100_000 {
            return Err(invalid(
                "num_trees",
                format!("must be 1 to 100000, got {}", self.num_trees),
            ));
        }
        if !(self.min_info_gain >= 0.0 && self.min_info_gain.is_finite()) {
            return Err(invalid(
                "min_info_gain",
                format!("must be ≥ 0, got {}", self.min_info_gain),
            ));
        }
        check_fraction("subsampling_rate", self.subsampling_rate)?;
        features_per_node(&self.feature_subset_strategy, 1, classifier, 1)?;
        match (classifier, self.impurity) {
            (true, Impurity::Variance) => {
                return Err(invalid(
                    "impurity",
                    "'variance' is for regression; a classifier takes 'gini' or 'entropy'".into(),
                ));
            }
            (false, Impurity::Gini | Impurity::Entropy) => {
                return Err(invalid(
                    "impurity",
                    "a regression tree takes 'variance'; 'gini' and 'entropy' are for classes"
                        .into(),
                ));
            }
            _ => {}
        }
        self.output_cols().check()
    }

    pub(super) fn output_cols(&self) -> OutputCols<'_> {
        OutputCols {
            prediction: &self.prediction_col,
            probability: &self.probability_col,
            raw_prediction: &self.raw_prediction_col,
        }
    }
}

impl BoostParams {
    fn new(loss: Loss) -> Self {
        BoostParams {
            max_iter: 20,
            step_size: 0.1,
            max_depth: 5,
            max_bins: 32,
            min_instances_per_node: 1,
            reg_alpha: 0.0,
            reg_lambda: 1.0,
            min_split_loss: 0.0,
            min_child_weight: 1.0,
            subsampling_rate: 1.0,
            colsample_bytree: 1.0,
            colsample_bynode: 1.0,
            loss,
            early_stop: false,
            validation_fraction: 0.1,
            validation_tol: 0.01,
            seed: SEED,
            weighted: false,
            prediction_col: "prediction".to_string(),
            probability_col: "probability".to_string(),
            raw_prediction_col: "raw_prediction".to_string(),
        }
    }

    fn check(&self, classifier: bool) -> Result<()> {
        check_growth(self.max_depth, self.max_bins, self.min_instances_per_node)?;
        if self.max_iter == 0 || self.max_iter > 100_000 {
            return Err(invalid(
                "max_iter",
                format!("must be 1 to 100000, got {}", self.max_iter),
            ));
        }
        if !(self.step_size > 0.0 && self.step_size <= 1.0) {
            return Err(invalid(
                "step_size",
                format!("must be in (0, 1], got {}", self.step_size),
            ));
        }
        for (name, v) in [
            ("reg_alpha", self.reg_alpha),
            ("reg_lambda", self.reg_lambda),
            ("min_split_loss", self.min_split_loss),
            ("min_child_weight", self.min_child_weight),
            ("validation_tol", self.validation_tol),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(name, format!("must be ≥ 0, got {v}")));
            }
        }
        check_fraction("subsampling_rate", self.subsampling_rate)?;
        check_fraction("colsample_bytree", self.colsample_bytree)?;
        check_fraction("colsample_bynode", self.colsample_bynode)?;
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(invalid(
                "validation_fraction",
                format!("must be in (0, 1), got {}", self.validation_fraction),
            ));
        }
        match (classifier, self.loss) {
            (true, Loss::Squared | Loss::Absolute) => {
                return Err(invalid(
                    "loss",
                    format!(
                        "'{}' is a regression loss; a classifier takes 'logistic'",
                        loss_name(self.loss)
                    ),
                ));
            }
            (false, Loss::Logistic) => {
                return Err(invalid(
                    "loss",
                    "'logistic' is for classes; a regressor takes 'squared' or 'absolute'".into(),
                ));
            }
            _ => {}
        }
        self.output_cols().check()
    }

    pub(super) fn output_cols(&self) -> OutputCols<'_> {
        OutputCols {
            prediction: &self.prediction_col,
            probability: &self.probability_col,
            raw_prediction: &self.raw_prediction_col,
        }
    }
}

fn loss_name(l: Loss) -> &'static str {
    match l {
        Loss::Logistic => "logistic",
        Loss::Squared => "squared",
        Loss::Absolute => "absolute",
    }
}

fn invalid(param: &str, reason: String) -> MllibError {
    MllibError::InvalidParam {
        param: param.to_string(),
        reason,
    }
}

fn check_fraction(name: &str, v: f64) -> Result<()> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(invalid(name, format!("must be in (0, 1], got {v}")))
    }
}

fn check_growth(max_depth: u64, max_bins: u64, min_instances: u64) -> Result<()> {
    if max_depth > 30 {
        return Err(invalid(
            "max_depth",
            format!("must be 0 to 30, got {max_depth}"),
        ));
    }
    if !(2..=MAX_VALUE_BINS as u64 + 1).contains(&max_bins) {
        return Err(invalid(
            "max_bins",
            format!(
                "must be 2 to 256, got {max_bins} (bins are one byte per value; at most 255 hold values, one holds missing values)"
            ),
        ));
    }
    if min_instances == 0 {
        return Err(invalid(
            "min_instances_per_node",
            "must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// Features tried per node for Spark's `featureSubsetStrategy` over `d` features.
pub(super) fn features_per_node(
    strategy: &str,
    d: usize,
    classifier: bool,
    num_trees: usize,
) -> Result<usize> {
    let d_f = d as f64;
    let m = match strategy.to_ascii_lowercase().as_str() {
        "auto" if num_trees == 1 => d,
        "auto" if classifier => d_f.sqrt().ceil() as usize,
        "auto" => (d_f / 3.0).ceil() as usize,
        "all" => d,
        "sqrt" => d_f.sqrt().ceil() as usize,
        "log2" => d_f.log2().ceil().max(1.0) as usize,
        "onethird" => (d_f / 3.0).ceil() as usize,
        other => match other.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 && other.contains('.') => (f * d_f).ceil() as usize,
            Ok(n) if n >= 1.0 && n.fract() == 0.0 => (n as usize).min(d),
            _ => {
                return Err(invalid(
                    "feature_subset_strategy",
                    format!(
                        "unknown value '{strategy}'; use auto, all, sqrt, log2, onethird, a fraction in (0, 1] or a count ≥ 1"
                    ),
                ));
            }
        },
    };
    Ok(m.clamp(1, d.max(1)))
}

/// Declares a tree estimator: a newtype over its parameter struct, its defaults, its check
/// and builder methods.
macro_rules! tree_estimator {
    (
        $(#[$doc:meta])* $name:ident($params:ident) = $default:expr;
        check: |$p:ident| $check:expr;
        $($field:ident: $ty:ty),* $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub(super) $params);

        impl Default for $name {
            fn default() -> Self {
                $name($default)
            }
        }

        impl $name {
            pub fn new() -> Self {
                Self::default()
            }

            pub fn params(&self) -> &$params {
                &self.0
            }

            /// Checks the parameters (also done before every fit).
            pub fn check(&self) -> Result<()> {
                let $p = &self.0;
                $check
            }

            $(
                pub fn $field(mut self, v: $ty) -> Self {
                    self.0.$field = v.into();
                    self
                }
            )*
        }
    };
}

tree_estimator! {
    /// One classification tree over binned features (Spark's `DecisionTreeClassifier`).
    DecisionTreeClassifier(ForestParams) = ForestParams::single(Impurity::Gini);
    check: |p| p.check(true, true);
    max_depth: u64, max_bins: u64, min_instances_per_node: u64, min_info_gain: f64,
    impurity: Impurity, seed: u64, weighted: bool, prediction_col: &str,
    probability_col: &str, raw_prediction_col: &str,
}

tree_estimator! {
    /// One regression tree over binned features (Spark's `DecisionTreeRegressor`).
    DecisionTreeRegressor(ForestParams) = ForestParams::single(Impurity::Variance);
    check: |p| p.check(false, true);
    max_depth: u64, max_bins: u64, min_instances_per_node: u64, min_info_gain: f64,
    seed: u64, weighted: bool, prediction_col: &str,
}

tree_estimator! {
    /// A random forest of classification trees (Spark's `RandomForestClassifier`): bootstrap
    /// samples, a random subset of features per node, class probabilities averaged.
    RandomForestClassifier(ForestParams) = ForestParams::forest(Impurity::Gini);
    check: |p| p.check(true, false);
    num_trees: u64, max_depth: u64, max_bins: u64, min_instances_per_node: u64,
    min_info_gain: f64, subsampling_rate: f64, bootstrap: bool,
    feature_subset_strategy: &str, impurity: Impurity, seed: u64, weighted: bool,
    prediction_col: &str, probability_col: &str, raw_prediction_col: &str,
}

tree_estimator! {
    /// A random forest of regression trees (Spark's `RandomForestRegressor`): means averaged.
    RandomForestRegressor(ForestParams) = ForestParams::forest(Impurity::Variance);
    check: |p| p.check(false, false);
    num_trees: u64, max_depth: u64, max_bins: u64, min_instances_per_node: u64,
    min_info_gain: f64, subsampling_rate: f64, bootstrap: bool,
    feature_subset_strategy: &str, seed: u64, weighted: bool, prediction_col: &str,
}

tree_estimator! {
    /// Gradient-boosted classification trees, second order: binary logistic for two classes,
    /// softmax (one tree per class per round) for more (Spark's `GBTClassifier` is binary
    /// only and first order).
    GBTClassifier(BoostParams) = BoostParams::new(Loss::Logistic);
    check: |p| p.check(true);
    max_iter: u64, step_size: f64, max_depth: u64, max_bins: u64,
    min_instances_per_node: u64, reg_alpha: f64, reg_lambda: f64, min_split_loss: f64,
    min_child_weight: f64, subsampling_rate: f64, colsample_bytree: f64,
    colsample_bynode: f64, early_stop: bool, validation_fraction: f64,
    validation_tol: f64, seed: u64, weighted: bool, prediction_col: &str,
    probability_col: &str, raw_prediction_col: &str,
}

tree_estimator! {
    /// Gradient-boosted regression trees, second order, squared or absolute loss.
    GBTRegressor(BoostParams) = BoostParams::new(Loss::Squared);
    check: |p| p.check(false);
    max_iter: u64, step_size: f64, max_depth: u64, max_bins: u64,
    min_instances_per_node: u64, reg_alpha: f64, reg_lambda: f64, min_split_loss: f64,
    min_child_weight: f64, subsampling_rate: f64, colsample_bytree: f64,
    colsample_bynode: f64, loss: Loss, early_stop: bool, validation_fraction: f64,
    validation_tol: f64, seed: u64, weighted: bool, prediction_col: &str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_are_named() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        assert!(err(GBTClassifier::new().max_bins(300).check()).contains("'max_bins'"));
        assert!(err(GBTClassifier::new().max_depth(31).check()).contains("'max_depth'"));
        assert!(
            err(GBTRegressor::new().subsampling_rate(0.0).check()).contains("'subsampling_rate'")
        );
        assert!(err(GBTRegressor::new().loss(Loss::Logistic).check()).contains("'loss'"));
        assert!(
            err(RandomForestClassifier::new()
                .impurity(Impurity::Variance)
                .check())
            .contains("'impurity'")
        );
        assert!(
            err(RandomForestClassifier::new()
                .feature_subset_strategy("most")
                .check())
            .contains("'feature_subset_strategy'")
        );
        assert!(GBTClassifier::new().max_bins(256).check().is_ok());
    }

    #[test]
    fn feature_subsets_follow_spark() {
        assert_eq!(features_per_node("auto", 20, true, 10).unwrap(), 5);
        assert_eq!(features_per_node("auto", 20, false, 10).unwrap(), 7);
        assert_eq!(features_per_node("auto", 20, true, 1).unwrap(), 20);
        assert_eq!(features_per_node("log2", 20, true, 1).unwrap(), 5);
        assert_eq!(features_per_node("0.5", 20, true, 1).unwrap(), 10);
        assert_eq!(features_per_node("3", 20, true, 1).unwrap(), 3);
        assert_eq!(features_per_node("1.0", 20, true, 1).unwrap(), 20);
    }
}
