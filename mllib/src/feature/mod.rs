//! Feature transformers: the assembler, and scalers (fit with the feature summary, applied with
//! the map primitive).

mod assembler;
pub(crate) mod expand;
mod imputer;
pub(crate) mod indexer;
pub(crate) mod onehot;
pub(crate) mod preprocess;
pub(crate) mod scaler;
pub(crate) mod sql_transform;

pub use assembler::VectorAssembler;
pub use expand::{
    Bucketizer, Interaction, InvalidValues, PolynomialExpansion, QuantileDiscretizer,
    quantile_splits,
};
pub use imputer::{Imputer, ImputerModel, ImputerStrategy};
pub use indexer::{HandleInvalid, StringIndexer, StringIndexerModel, StringOrderType};
pub use onehot::{OneHotEncoder, OneHotEncoderModel};
pub use preprocess::{
    CategoryEncoding, ColumnInfo, ColumnKind, Encoder, LABEL_INDEX, LabelClasses,
    MAX_LABEL_CLASSES, MissingNumbers, OnePassFit, OnePassPart, OnePassRows, Preprocessor,
    PreprocessorModel,
};
pub use scaler::{MinMaxScaler, MinMaxScalerModel, StandardScaler, StandardScalerModel};
pub use sql_transform::{SqlColumn, SqlInput, SqlTransformModel, SqlTransformParams};
