//! k-means' parameters (Spark MLlib's names and defaults) and their rules.

use super::*;

/// How the initial centres are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KMeansInit {
    /// k-means|| (the default): a few oversampling passes, then k-means++ on the candidates.
    #[default]
    #[serde(alias = "k-means||", alias = "kmeans++")]
    KMeansParallel,
    /// k rows chosen uniformly at random.
    Random,
}

/// How the Lloyd iterations find each row's nearest centre. Both give the same centres,
/// assignments and costs, to the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KMeansAlgorithm {
    /// Every row against every centre on every pass (the default).
    #[default]
    Lloyd,
    /// Hamerly's bounds (scikit-learn's `algorithm="elkan"` is the same idea with a bound per
    /// centre): per row its centre and a lower bound on the distance to the others, kept from
    /// pass to pass, so that a row whose centre the bounds settle skips the other centres.
    /// Faster where the clusters are well separated (about a third off each pass when nine
    /// rows in ten settle), slower where they are not (the bounds cost a pass's worth of
    /// memory traffic and settle few rows). Used where this process holds the rows (the local
    /// runner, an embedded fit); a fit on a cluster runs Lloyd's passes.
    Hamerly,
}

/// k-means clustering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeans {
    pub(super) k: usize,
    pub(super) max_iter: usize,
    pub(super) tol: f64,
    pub(super) seed: u64,
    pub(super) init_mode: KMeansInit,
    pub(super) init_steps: usize,
    pub(super) prediction_col: String,
    #[serde(default)]
    pub(super) algorithm: KMeansAlgorithm,
}

impl Default for KMeans {
    fn default() -> Self {
        KMeans {
            k: 2,
            max_iter: 20,
            tol: 1e-4,
            seed: 42,
            init_mode: KMeansInit::KMeansParallel,
            init_steps: 2,
            prediction_col: "prediction".to_string(),
            algorithm: KMeansAlgorithm::Lloyd,
        }
    }
}

impl KMeans {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of clusters. Defaults to `2`.
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }
    /// Defaults to `20`.
    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }
    /// Stop when no centre moves farther than this. Defaults to `1e-4`.
    pub fn tol(mut self, t: f64) -> Self {
        self.tol = t;
        self
    }
    /// Defaults to `42`.
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Defaults to `KMeansParallel`.
    pub fn init_mode(mut self, m: KMeansInit) -> Self {
        self.init_mode = m;
        self
    }
    /// Oversampling rounds of k-means||. Defaults to `2`.
    pub fn init_steps(mut self, n: usize) -> Self {
        self.init_steps = n;
        self
    }
    /// Defaults to [`KMeansAlgorithm::Lloyd`].
    pub fn algorithm(mut self, a: KMeansAlgorithm) -> Self {
        self.algorithm = a;
        self
    }

    /// Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    /// Validates the parameters.
    pub fn check(&self) -> Result<()> {
        if self.k < 1 {
            return Err(MllibError::InvalidK {
                k: self.k,
                reason: "k must be at least 1".to_string(),
            });
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return Err(MllibError::InvalidParam {
                param: "tol".to_string(),
                reason: format!("{} is negative", self.tol),
            });
        }
        if self.init_steps < 1 {
            return Err(MllibError::InvalidParam {
                param: "init_steps".to_string(),
                reason: "at least one step is needed".to_string(),
            });
        }
        check_output_col(&self.prediction_col)
    }
}
