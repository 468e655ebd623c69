//! Regression: `LinearRegression` (normal equations from a distributed co-moment matrix).

pub(crate) mod comoment;
pub(crate) mod linear;

pub use comoment::{CoMoments, CoMomentsStatistic};
pub use linear::{LinearRegression, LinearRegressionModel, TrainingSummary};
