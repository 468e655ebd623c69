//! Clustering: `KMeans` (k-means|| initialisation, Lloyd iterations as aggregate passes).

pub(crate) mod kmeans;

pub use kmeans::{KMeans, KMeansAlgorithm, KMeansInit, KMeansModel, KMeansSummary};
