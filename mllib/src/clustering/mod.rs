//! Clustering: `KMeans` (k-means|| initialisation, Lloyd iterations as aggregate passes).

mod kmeans;

pub use kmeans::{KMeans, KMeansInit, KMeansModel, KMeansSummary};

/// Lets these algorithms' statistics and maps run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    kmeans::register(r)
}
