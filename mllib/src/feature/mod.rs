//! Feature transformers: the assembler, and scalers (fit with the feature summary, applied with
//! the map primitive).

mod assembler;
mod indexer;
mod scaler;

pub use assembler::VectorAssembler;
pub use indexer::{HandleInvalid, StringIndexer, StringIndexerModel, StringOrderType};
pub use scaler::{MinMaxScaler, MinMaxScalerModel, StandardScaler, StandardScalerModel};
