//! Classification: `LogisticRegression` (binomial and multinomial, L2, L-BFGS).

mod logistic;

pub use logistic::{Family, LogisticRegression, LogisticRegressionModel, LogisticSummary};

/// Lets these algorithms' statistics and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    logistic::register(r)
}
