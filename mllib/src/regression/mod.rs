//! Regression: `LinearRegression` (normal equations from a distributed co-moment matrix).

mod comoment;
mod linear;

pub use comoment::{CoMoments, CoMomentsStatistic};
pub use linear::{LinearRegression, LinearRegressionModel, TrainingSummary};
