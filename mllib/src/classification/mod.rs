//! Classification: `LogisticRegression` (binomial and multinomial, L2, L-BFGS).

pub(crate) mod logistic;

pub use logistic::{Family, LogisticRegression, LogisticRegressionModel, LogisticSummary};
