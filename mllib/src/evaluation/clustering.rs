//! `ClusteringEvaluator`: exact silhouette and within-cluster sum of squares in two passes.

use super::*;

/// Clustering metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusteringMetrics {
    pub count: u64,
    /// Rows per cluster index (0 for an index no row has).
    pub cluster_sizes: Vec<u64>,
    /// Mean silhouette with squared Euclidean distance, in [−1, 1] (rows alone in their
    /// cluster count 0, as in scikit-learn).
    pub silhouette: f64,
    /// Σ ‖x − μ(cluster of x)‖² about each cluster's mean: the inertia of converged k-means.
    pub within_ss: f64,
}

/// The silhouette (squared Euclidean, Spark's default) and within-cluster sum of squares of a
/// cluster-index column against the dataset's features. Exact and distributed as in Spark:
/// one aggregate gathers each cluster's size, mean and spread, a second scores every row
/// against those (the mean squared distance from x to the rows of C is ‖x − μ_C‖² plus C's
/// mean squared deviation), so the cost is O(n·k·d), not O(n²).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusteringEvaluator {
    prediction_col: String,
}

impl Default for ClusteringEvaluator {
    fn default() -> Self {
        ClusteringEvaluator {
            prediction_col: "prediction".to_string(),
        }
    }
}

impl ClusteringEvaluator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cluster-index column. Defaults to `"prediction"`.
    pub fn prediction_col(mut self, c: impl Into<String>) -> Self {
        self.prediction_col = c.into();
        self
    }

    pub async fn evaluate(
        &self,
        session: &QuiverSession,
        data: &Dataset,
    ) -> Result<ClusteringMetrics> {
        let ds = data.clone().with_label(&self.prediction_col)?;
        let prepared = session.prepare(&ds, session.runner()).await?;
        let d = prepared.dim();
        let column = self.prediction_col.clone();
        let clusters = prepared
            .aggregate(Arc::new(ClusterMoments {
                d,
                column: column.clone(),
            }))
            .await?;
        let sizes: Vec<u64> = clusters.iter().map(|c| c.n as u64).collect();
        let count: u64 = sizes.iter().sum();
        if count == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "clustering evaluation".to_string(),
            }
            .into());
        }
        let nonempty = sizes.iter().filter(|n| **n > 0).count();
        if nonempty < 2 {
            return Err(MllibError::InvalidParam {
                param: self.prediction_col.clone(),
                reason: format!(
                    "the silhouette needs at least two non-empty clusters; '{}' has {nonempty}",
                    self.prediction_col
                ),
            });
        }
        let within_ss = clusters.iter().map(|c| c.m2).sum();
        let s = prepared
            .aggregate(Arc::new(SilhouetteStat {
                d,
                column,
                clusters,
            }))
            .await?;
        Ok(ClusteringMetrics {
            count,
            cluster_sizes: sizes,
            silhouette: s[1] / s[0],
            within_ss,
        })
    }
}

/// One cluster's size, mean and sum of squared deviations from the mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Moments {
    pub(super) n: f64,
    pub(super) mean: Vec<f64>,
    pub(super) m2: f64,
}

/// Per cluster index (the label input): size, mean and squared spread, merged as Chan et al.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ClusterMoments {
    pub(super) d: usize,
    /// The cluster column, for error messages.
    pub(super) column: String,
}

impl Statistic for ClusterMoments {
    type State = Vec<Moments>;
    type Output = Vec<Moments>;
    const NAME: &'static str = "quiver_cluster_moments";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the cluster moments", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<Moments> {
        Vec::new()
    }
    fn update(&self, s: &mut Vec<Moments>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let c = b
            .label
            .ok_or_else(|| QuiverError::internal("cluster moments need the cluster column"))?;
        if let Some(i) = first_nan(b.values) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: i / self.d,
            });
        }
        for (r, x) in b.values.chunks_exact(self.d).enumerate() {
            let k = class_index(c[r], &self.column, r)?;
            if s.len() <= k {
                s.resize(
                    k + 1,
                    Moments {
                        n: 0.0,
                        mean: vec![0.0; self.d],
                        m2: 0.0,
                    },
                );
            }
            let m = &mut s[k];
            m.n += 1.0;
            let mut m2 = 0.0;
            for (mu, v) in m.mean.iter_mut().zip(x) {
                let delta = v - *mu;
                *mu += delta / m.n;
                m2 += delta * (v - *mu);
            }
            m.m2 += m2;
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<Moments>, o: &Vec<Moments>) -> quiver_engine::Result<()> {
        if s.len() < o.len() {
            s.resize(
                o.len(),
                Moments {
                    n: 0.0,
                    mean: vec![0.0; self.d],
                    m2: 0.0,
                },
            );
        }
        for (a, b) in s.iter_mut().zip(o) {
            if b.n == 0.0 {
                continue;
            }
            let n = a.n + b.n;
            let gap: f64 = a
                .mean
                .iter()
                .zip(&b.mean)
                .map(|(x, y)| (y - x) * (y - x))
                .sum();
            a.m2 += b.m2 + gap * a.n * b.n / n;
            for (x, y) in a.mean.iter_mut().zip(&b.mean) {
                *x += (y - *x) * b.n / n;
            }
            a.n = n;
        }
        Ok(())
    }
    fn finish(&self, s: Vec<Moments>) -> quiver_engine::Result<Vec<Moments>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<Moments>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        for m in s {
            encode_f64s(&[m.n, m.m2], out);
            encode_f64s(&m.mean, out);
        }
    }
    fn state_size(&self, s: &Vec<Moments>) -> usize {
        quiver_engine::aggregate::vec_size(s)
            + s.iter()
                .map(|m| quiver_engine::aggregate::vec_size(&m.mean))
                .sum::<usize>()
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<Moments>> {
        let (k, mut rest) = decode_f64s(bytes, 1)?;
        let mut out = Vec::with_capacity(k[0] as usize);
        for _ in 0..k[0] as usize {
            let (head, r) = decode_f64s(rest, 2)?;
            let (mean, r) = decode_f64s(r, self.d)?;
            out.push(Moments {
                n: head[0],
                m2: head[1],
                mean,
            });
            rest = r;
        }
        Ok(out)
    }
}

/// `[rows, Σ silhouette]` given every cluster's moments.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SilhouetteStat {
    pub(super) d: usize,
    pub(super) column: String,
    pub(super) clusters: Vec<Moments>,
}

impl Statistic for SilhouetteStat {
    type State = Vec<f64>;
    type Output = Vec<f64>;
    const NAME: &'static str = "quiver_silhouette";
    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("the silhouette", self)
    }
    fn dim(&self) -> usize {
        self.d
    }
    fn inputs(&self) -> StatInputs {
        StatInputs {
            label: true,
            weight: false,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 2]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let c = b
            .label
            .ok_or_else(|| QuiverError::internal("the silhouette needs the cluster column"))?;
        let spread: Vec<f64> = self
            .clusters
            .iter()
            .map(|m| if m.n > 0.0 { m.m2 / m.n } else { 0.0 })
            .collect();
        for (r, x) in b.values.chunks_exact(self.d).enumerate() {
            let own = class_index(c[r], &self.column, r)?;
            let mut a = 0.0;
            let mut nearest = f64::INFINITY;
            for (k, m) in self.clusters.iter().enumerate() {
                if m.n == 0.0 {
                    continue;
                }
                let dist: f64 = m
                    .mean
                    .iter()
                    .zip(x)
                    .map(|(mu, v)| (v - mu) * (v - mu))
                    .sum::<f64>()
                    + spread[k];
                if k == own {
                    // The mean over the other rows of x's cluster: x itself contributes 0.
                    a = if m.n > 1.0 {
                        dist * m.n / (m.n - 1.0)
                    } else {
                        f64::NAN
                    };
                } else {
                    nearest = nearest.min(dist);
                }
            }
            s[0] += 1.0;
            let denom = a.max(nearest);
            if a.is_finite() && denom > 0.0 {
                s[1] += (nearest - a) / denom;
            }
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        s.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(s, out);
    }
    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        Ok(decode_f64s(bytes, 2)?.0)
    }
}
