//! # quiver-mllib
//!
//! Quiver's machine-learning library, written once against the engine's primitives so it runs
//! on the local runner, embedded DataFusion and a Ballista cluster alike: params, estimators and
//! models, pipelines, feature transformers, algorithms, evaluators and tuning.
//!
//! Entry points: the [`Estimator`] / [`Model`] / [`Transformer`] API with [`save`] and [`load`]
//! for the model store; [`Pipeline`] / [`PipelineModel`]; feature transformers
//! ([`VectorAssembler`], [`StandardScaler`], [`MinMaxScaler`]); [`register`] adds this crate's functions and task runners to a
//! [`FunctionRegistry`] (the executor and driver binaries call it through
//! `quiver_executor::install`). The feature summary every algorithm starts from lives in the
//! engine ([`quiver_engine::Summarizer`]).

pub mod api;
pub mod catalog;
pub mod classification;
pub mod clustering;
pub mod decomposition;
pub mod error;
pub mod evaluation;
pub mod explain;
pub mod feature;
pub mod optim;
pub mod persist;
pub mod pipeline;
pub mod progress;
pub mod regression;
pub mod rowwise;
pub mod tree;
pub mod tuning;

pub use api::{
    ColumnEncoder, ColumnMap, DynEstimator, DynModel, Estimator, Model, RowStage, Transformer,
    load, save,
};
pub use catalog::{ALGORITHMS, Algorithm, Task};
pub use classification::{
    Family, LogisticRegression, LogisticRegressionModel, LogisticSummary, NaiveBayes,
    NaiveBayesModel, NaiveBayesType,
};
pub use clustering::{KMeans, KMeansAlgorithm, KMeansInit, KMeansModel, KMeansSummary};
pub use decomposition::{PCA, PCAModel, PcaSummary};
pub use error::{MllibError, Result};
pub use evaluation::{
    BinaryClassificationEvaluator, BinaryMetrics, ClusteringEvaluator, ClusteringMetrics,
    ExplainedVarianceEvaluator, ExplainedVarianceMetrics, MulticlassClassificationEvaluator,
    MulticlassMetrics, RegressionEvaluator, RegressionMetrics,
};
pub use feature::{
    Bucketizer, CategoryEncoding, HandleInvalid, Imputer, ImputerModel, ImputerStrategy,
    Interaction, MinMaxScaler, MinMaxScalerModel, MissingNumbers, OneHotEncoder,
    OneHotEncoderModel, PolynomialExpansion, Preprocessor, PreprocessorModel, QuantileDiscretizer,
    SqlTransformModel, StandardScaler, StandardScalerModel, StringIndexer, StringIndexerModel,
    StringOrderType, VectorAssembler,
};
pub use pipeline::{Pipeline, PipelineModel};
pub use regression::{LinearRegression, LinearRegressionModel, TrainingSummary};
pub use rowwise::{RowPredictor, load_dyn};
pub use tree::{
    DecisionTreeClassificationModel, DecisionTreeClassifier, DecisionTreeRegressionModel,
    DecisionTreeRegressor, GBTClassificationModel, GBTClassifier, GBTRegressionModel, GBTRegressor,
    RandomForestClassificationModel, RandomForestClassifier, RandomForestRegressionModel,
    RandomForestRegressor,
};

use quiver_engine::FunctionRegistry;

/// Adds every algorithm's and feature stage's functions (from the [`catalog`]), the
/// evaluators' statistics and the built-in trial objective (`quiver.train_eval`) to
/// `registry`, so that any process can run them.
pub fn register(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    catalog::register(registry)
}
