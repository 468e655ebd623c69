//! k-means' one statistic: a pass over the data for a set of centres (Lloyd sums, costs, or
//! the k-means|| sample), and the sample's bookkeeping.

use super::*;

/// What one pass over the data computes for a set of centres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Pass {
    /// Per centre: sum of its points, count; plus the total cost (Lloyd step, candidate weights).
    Sums,
    /// The rows drawn with probability min(1, l·d²(x)/φ) (k-means|| round), or, with no
    /// centres yet, the rows with the smallest draws (a uniform sample of `take` rows).
    Sample {
        round: u64,
        l: f64,
        phi: f64,
        take: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KMeansPass {
    pub(super) d: usize,
    pub(super) centers: Vec<f64>,
    /// Derived from `centers`.
    #[serde(skip)]
    pub(super) table: CenterTable,
    pub(super) seed: u64,
    pub(super) pass: Pass,
}

impl Statistic for KMeansPass {
    /// Sums: [cost, counts (k), sums (k·d)]. Sample: [n, then n × (draw, row…)].
    type State = Vec<f64>;
    type Output = Vec<f64>;

    const NAME: &'static str = "quiver_kmeans_pass";

    fn params(&self) -> quiver_engine::Result<Vec<u8>> {
        quiver_engine::registry::json_params("a k-means pass", self)
    }

    fn dim(&self) -> usize {
        self.d
    }

    fn inputs(&self) -> StatInputs {
        StatInputs::default()
    }

    fn init(&self) -> Vec<f64> {
        match self.pass {
            Pass::Sums => vec![0.0; 1 + self.centers.len() / self.d * (1 + self.d)],
            Pass::Sample { .. } => vec![0.0],
        }
    }

    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let d = self.d;
        let nan_check = |values: &[f64], first_row: usize| match first_nan(values) {
            Some(i) => Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: first_row + i / d,
            }),
            None => Ok(()),
        };
        match &self.pass {
            Pass::Sums => {
                // Sub-blocks that stay in cache while they are checked, assigned and summed.
                let k = self.centers.len() / d;
                let mut nearest = Vec::with_capacity(SUB_BLOCK_ROWS);
                for (i, block) in b.values.chunks(SUB_BLOCK_ROWS * d).enumerate() {
                    nan_check(block, i * SUB_BLOCK_ROWS)?;
                    self.table.assign(&self.centers, block, &mut nearest);
                    for (x, &(c, dist)) in block.chunks_exact(d).zip(&nearest) {
                        s[0] += dist;
                        s[1 + c] += 1.0;
                        let sum = &mut s[1 + k + c * d..1 + k + (c + 1) * d];
                        for (a, v) in sum.iter_mut().zip(x) {
                            *a += v;
                        }
                    }
                }
            }
            Pass::Sample {
                round,
                l,
                phi,
                take,
            } => {
                nan_check(b.values, 0)?;
                let mut nearest = Vec::with_capacity(b.n_rows);
                self.table.assign(&self.centers, b.values, &mut nearest);
                for (r, x) in b.values.chunks_exact(d).enumerate() {
                    let u = row_uniform(x, self.seed, *round);
                    let keep = match nearest.get(r) {
                        None => true, // no centres yet
                        Some((_, dist)) => *phi > 0.0 && u < (l * dist / phi).min(1.0),
                    };
                    if keep {
                        s[0] += 1.0;
                        s.push(u);
                        s.extend_from_slice(x);
                    }
                }
                if self.centers.is_empty() {
                    keep_smallest(s, d, *take);
                }
            }
        }
        Ok(())
    }

    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> quiver_engine::Result<()> {
        match &self.pass {
            Pass::Sums => s.iter_mut().zip(o).for_each(|(a, b)| *a += b),
            Pass::Sample { take, .. } => {
                s[0] += o[0];
                s.extend_from_slice(&o[1..]);
                if self.centers.is_empty() {
                    keep_smallest(s, self.d, *take);
                }
            }
        }
        Ok(())
    }

    fn finish(&self, s: Vec<f64>) -> quiver_engine::Result<Vec<f64>> {
        Ok(s)
    }

    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        encode_f64s(&[s.len() as f64], out);
        encode_f64s(s, out);
    }

    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<Vec<f64>> {
        let (n, rest) = decode_f64s(bytes, 1)?;
        Ok(decode_f64s(rest, n[0] as usize)?.0)
    }
}

/// Keeps the `take` sampled rows with the smallest draws (ties by row values), sorted.
pub(super) fn keep_smallest(s: &mut Vec<f64>, d: usize, take: usize) {
    let mut rows = sampled_rows(s, d);
    rows.truncate(take);
    s.clear();
    s.push(rows.len() as f64);
    for (u, r) in rows {
        s.push(u);
        s.extend_from_slice(&r);
    }
}

/// The (draw, row) pairs of a sample state, in a canonical order (by draw, then values).
pub(super) fn sampled_rows(s: &[f64], d: usize) -> Vec<(f64, Vec<f64>)> {
    let mut rows: Vec<(f64, Vec<f64>)> = s[1..]
        .chunks_exact(d + 1)
        .map(|c| (c[0], c[1..].to_vec()))
        .collect();
    rows.sort_by(|a, b| {
        a.0.total_cmp(&b.0).then_with(|| {
            a.1.iter()
                .zip(&b.1)
                .map(|(x, y)| x.total_cmp(y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    rows
}

impl quiver_engine::registry::FromParams for KMeansPass {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        let mut v: Self = quiver_engine::registry::from_json_params("a k-means pass", bytes)?;
        v.table = CenterTable::new(&v.centers, v.d);
        Ok(v)
    }
}
