//! `PCA` (Spark MLlib's name): the principal components of the features, from one aggregate
//! pass of the co-moment statistic (the covariance matrix, merged across partitions) and a
//! symmetric eigendecomposition (nalgebra). Components and explained variance equal numpy's
//! SVD of the centred data up to sign; the projection centres rows first, like scikit-learn.

mod model;
mod params;

pub use model::{PCAModel, PcaSummary};
pub use params::PCA;

use std::sync::Arc;
use std::time::Instant;

use nalgebra::{DMatrix, SymmetricEigen};
use quiver_engine::{Dataset, QuiverSession};

use crate::api::Estimator;
use crate::error::{MllibError, Result};
use crate::regression::CoMomentsStatistic;

impl Estimator for PCA {
    type Model = PCAModel;

    async fn fit(&self, session: &QuiverSession, data: &Dataset) -> Result<PCAModel> {
        self.check()?;
        let started = Instant::now();
        let prepared = session.prepare(data, session.runner()).await?;
        let d = prepared.dim();
        let moments = prepared
            .aggregate(Arc::new(CoMomentsStatistic {
                dim: d,
                weighted: false,
                label: false,
            }))
            .await?;
        let n = moments.count;
        if n < 2.0 {
            return Err(MllibError::InvalidParam {
                param: "k".to_string(),
                reason: format!("PCA needs at least two rows, the data has {n}"),
            });
        }
        if let Some(k) = self.k
            && k > d.min(n as usize)
        {
            return Err(MllibError::InvalidParam {
                param: "k".to_string(),
                reason: format!(
                    "k = {k} (num_principal_components in SQL) exceeds min(features, rows) = {} ({d} features, {n} rows)",
                    d.min(n as usize)
                ),
            });
        }
        // Sample covariance, as numpy's SVD of the centred data gives it: S² / (n − 1).
        let cov = DMatrix::from_row_slice(d, d, &moments.cxx).map(|v| v / (n - 1.0));
        let total_variance = cov.trace();
        let eigen = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let eigenvalues: Vec<f64> = order
            .iter()
            .map(|&i| eigen.eigenvalues[i].max(0.0))
            .collect();
        let ratios: Vec<f64> = eigenvalues
            .iter()
            .map(|v| {
                if total_variance > 0.0 {
                    v / total_variance
                } else {
                    0.0
                }
            })
            .collect();
        let k = match (self.k, self.explained_variance_ratio) {
            (Some(k), _) => k,
            // As scikit-learn: the fewest components whose cumulative ratio exceeds r.
            (None, Some(r)) => {
                let mut sum = 0.0;
                let below = ratios
                    .iter()
                    .take_while(|v| {
                        sum += **v;
                        sum <= r
                    })
                    .count();
                (below + 1).min(d)
            }
            (None, None) => return Err(params::missing_k()),
        };
        let mut components = Vec::with_capacity(k * d);
        for &i in order.iter().take(k) {
            let mut v: Vec<f64> = eigen.eigenvectors.column(i).iter().copied().collect();
            // scikit-learn's sign rule: the entry of largest magnitude is positive.
            let largest = v
                .iter()
                .copied()
                .fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
            if largest < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            components.extend(v);
        }
        Ok(PCAModel::new(
            self.clone(),
            d,
            moments.mean_x,
            components,
            PcaSummary {
                k,
                eigenvalues: eigenvalues[..k].to_vec(),
                explained_variance_ratio: ratios[..k].to_vec(),
                total_variance,
                rows: n as u64,
                wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
            },
        ))
    }
}

/// Lets the projection run on a cluster (the co-moment statistic is registered once for all).
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    model::register(r)
}
