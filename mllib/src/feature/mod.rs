//! Feature transformers: scalers (fit with the feature summary, applied with the map primitive).

mod scaler;

pub use scaler::{MinMaxScaler, MinMaxScalerModel, StandardScaler, StandardScalerModel};
