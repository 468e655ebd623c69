//! Feature transformers: the assembler, and scalers (fit with the feature summary, applied with
//! the map primitive).

mod assembler;
mod imputer;
mod indexer;
mod onehot;
mod scaler;

pub use assembler::VectorAssembler;
pub use imputer::{Imputer, ImputerModel, ImputerStrategy};
pub use indexer::{HandleInvalid, StringIndexer, StringIndexerModel, StringOrderType};
pub use onehot::{OneHotEncoder, OneHotEncoderModel};
pub use scaler::{MinMaxScaler, MinMaxScalerModel, StandardScaler, StandardScalerModel};

/// Lets the feature transformers' functions run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    indexer::register(r)?;
    onehot::register(r)?;
    scaler::register(r)
}
