//! Hyperparameter search: spaces ([`space`]), TPE ([`tpe`]) and the search runner
//! ([`search`]) that fans trials out with the engine's fan-out primitive, and MLlib-style
//! model selection on top of it ([`validation`]). Trials report intermediate values while they
//! train and a pruner ([`prune`]) stops the unpromising ones.

pub mod objective;
pub mod prune;
pub mod search;
pub mod space;
pub mod tpe;
pub mod validation;

pub use objective::{TRAIN_EVAL, TrainEval, TrainEvalRunner};
pub use prune::{PruneBoard, Pruner};
pub use search::{
    AUTO_DISTRIBUTED_BYTES, Algo, Search, SearchResult, Trial, TrialPlacement, no_progress,
    read_log, report, report_due,
};
pub use space::{Dist, Param, Point, Space, hp};
pub use tpe::Tpe;
pub use validation::{
    CrossValidator, CrossValidatorModel, ParamGridBuilder, TrainValidationSplit,
    TrainValidationSplitModel, TuningModel,
};
