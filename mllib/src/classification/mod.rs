//! Classification: `LogisticRegression` (binomial and multinomial, L2, L-BFGS) and
//! `NaiveBayes` (multinomial, complement, Bernoulli, Gaussian).

pub(crate) mod logistic;
pub mod naive_bayes;
pub(crate) mod scores;

pub use logistic::{Family, LogisticRegression, LogisticRegressionModel, LogisticSummary};
pub use naive_bayes::{NaiveBayes, NaiveBayesModel, NaiveBayesType};
