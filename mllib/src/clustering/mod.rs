//! Clustering: `KMeans` (k-means|| initialisation, Lloyd iterations as aggregate passes).

mod kmeans;

pub use kmeans::{KMeans, KMeansInit, KMeansModel, KMeansSummary};
