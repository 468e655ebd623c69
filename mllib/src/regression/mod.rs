//! Regression: `LinearRegression` (normal equations from a distributed co-moment matrix).

mod comoment;
mod linear;

pub use comoment::{CoMoments, CoMomentsStatistic};
pub use linear::{LinearRegression, LinearRegressionModel, TrainingSummary};

/// Lets these algorithms' statistics and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    linear::register(r)
}
