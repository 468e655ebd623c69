//! Hyperparameter search: spaces ([`space`]), TPE ([`tpe`]) and the search runner
//! ([`search`]) that fans trials out with the engine's fan-out primitive, and MLlib-style
//! model selection on top of it ([`validation`]).

pub mod objective;
pub mod search;
pub mod space;
pub mod tpe;
pub mod validation;

pub use objective::{TRAIN_EVAL, TrainEval, TrainEvalRunner};
pub use search::{Algo, Search, SearchResult, Trial, no_progress, read_log};
pub use space::{Dist, Param, Point, Space, hp};
pub use tpe::Tpe;
pub use validation::{
    CrossValidator, CrossValidatorModel, ParamGridBuilder, TrainValidationSplit,
    TrainValidationSplitModel, TuningModel,
};
