//! `NaiveBayes` (Spark MLlib's names): multinomial, complement, Bernoulli and Gaussian naive
//! Bayes, fitted in one aggregate pass of per-class weighted sums; the class probabilities
//! equal scikit-learn's `MultinomialNB`, `ComplementNB`, `BernoulliNB` and `GaussianNB`.

mod model;
mod params;
mod statistic;

pub use model::NaiveBayesModel;
pub use params::{NaiveBayes, NaiveBayesType};

use std::sync::Arc;
use std::time::Instant;

use quiver_engine::{Dataset, QuiverSession};

use crate::api::Estimator;
use crate::error::{MllibError, Result};
use model::Fitted;
use statistic::ClassSums;

impl Estimator for NaiveBayes {
    type Model = NaiveBayesModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<NaiveBayesModel> {
        self.check()?;
        let started = Instant::now();
        let label = data.label().ok_or_else(|| MllibError::InvalidParam {
            param: "label".to_string(),
            reason: "NaiveBayes needs a label column (Dataset::with_label)".to_string(),
        })?;
        let features = data.feature_names()?;
        let prepared = session.prepare(data, session.runner()).await?;
        let stat = Arc::new(ClassSums {
            dim: prepared.dim(),
            model_type: self.model_type,
            weighted: self.weighted,
            label: label.to_string(),
            features,
        });
        let sums = match prepared.aggregate(Arc::clone(&stat)).await {
            Ok(sums) => sums,
            // A value the event model refuses is found where the batch was (an executor, a
            // partition): locate it in the dataset's row order here.
            Err(e) => match data.locate_refused(|b| stat.refused(b)).await {
                Ok(Some(located)) => return Err(located.into()),
                _ => return Err(e.into()),
            },
        };
        let present = sums.classes.iter().filter(|c| c.weight > 0.0).count();
        if present < 2 {
            return Err(MllibError::InvalidParam {
                param: "label".to_string(),
                reason: format!("the label has {present} class; classification needs at least two"),
            });
        }
        let fitted = Fitted::from_sums(self, &sums);
        Ok(NaiveBayesModel::new(
            self.clone(),
            fitted,
            &sums,
            started.elapsed().as_secs_f64() * 1e3,
        ))
    }
}

/// Lets naive Bayes' statistic and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    r.add_statistic::<ClassSums>()?;
    model::register(r)
}
