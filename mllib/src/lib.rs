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
pub mod classification;
pub mod clustering;
pub mod error;
pub mod evaluation;
pub mod feature;
pub mod optim;
pub mod persist;
pub mod pipeline;
pub mod regression;
pub mod rowwise;
pub mod tuning;

pub use api::{Estimator, Model, Transformer, load, save};
pub use classification::{Family, LogisticRegression, LogisticRegressionModel, LogisticSummary};
pub use clustering::{KMeans, KMeansInit, KMeansModel, KMeansSummary};
pub use error::{MllibError, Result};
pub use evaluation::{
    BinaryClassificationEvaluator, BinaryMetrics, ClusteringEvaluator, ClusteringMetrics,
    MulticlassClassificationEvaluator, MulticlassMetrics, RegressionEvaluator, RegressionMetrics,
};
pub use feature::{
    HandleInvalid, Imputer, ImputerModel, ImputerStrategy, MinMaxScaler, MinMaxScalerModel,
    OneHotEncoder, OneHotEncoderModel, StandardScaler, StandardScalerModel, StringIndexer,
    StringIndexerModel, StringOrderType, VectorAssembler,
};
pub use pipeline::{Pipeline, PipelineModel};
pub use regression::{LinearRegression, LinearRegressionModel, TrainingSummary};
pub use rowwise::{RowPredictor, RowStage, load_dyn};

use quiver_engine::FunctionRegistry;

/// Adds MLlib's fan-out task runners to `registry`: the built-in trial objective
/// (`quiver.train_eval`), so that any process can run search trials.
pub fn register(registry: &mut FunctionRegistry) -> quiver_engine::Result<()> {
    classification::register(registry)?;
    clustering::register(registry)?;
    regression::register(registry)?;
    feature::register(registry)?;
    evaluation::register(registry)?;
    registry.add_task(tuning::objective::train_eval_runner())
}
