//! Classification: `LogisticRegression` (binomial and multinomial, L2, L-BFGS).

mod logistic;

pub use logistic::{Family, LogisticRegression, LogisticRegressionModel, LogisticSummary};
