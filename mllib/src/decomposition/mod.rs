//! Decomposition: `PCA` (principal components from the distributed co-moment statistic).

pub mod pca;

pub use pca::{PCA, PCAModel, PcaSummary};
