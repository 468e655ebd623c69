//! k-means' one statistic: a pass over the data for a set of centres (Lloyd sums, costs, or
//! the k-means|| sample), and the sample's bookkeeping.

use super::*;

/// What one pass over the data computes for a set of centres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Pass {
    /// Per centre: sum of its points, count; plus the total cost (a Lloyd step).
    Sums,
    /// Per centre: the count of its points among the rows drawn with probability `rate` (by
    /// their `row_uniform` draw in `round`); plus their total cost. The k-means|| candidates'
    /// weights: no sums to accumulate, and only relative sizes matter, so a uniform sample
    /// of the rows estimates them (all rows when `rate` is 1).
    Counts { round: u64, rate: f64 },
    /// The `take` rows with the smallest keys, and a count of all rows. With no centres the key
    /// is a uniform draw `u` (a uniform sample); with centres it is `−ln(u) / d²(x)`, d² the
    /// squared distance to the nearest centre (Efraimidis and Spirakis' exponential race: a
    /// sample without replacement, each row drawn with probability proportional to d², the
    /// k-means|| round with a fixed size instead of Bernoulli draws, so no cost pass is needed
    /// first); rows on a centre are never drawn. With `draw`, the pass also draws rows
    /// uniformly (the candidates' weights of a fit's last round, without a pass of their own).
    Sample {
        round: u64,
        take: usize,
        #[serde(default)]
        draw: Option<Draw>,
    },
}

/// The rows a sample pass also draws uniformly: those whose `row_uniform` in `round` is below
/// `rate` (every row at rate 1 or more), so that [`Pass::Counts`] at that round and any rate up
/// to this one, run over them, counts what it would count over all the rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Draw {
    pub(super) round: u64,
    pub(super) rate: f64,
}

/// A pass's partial state.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct PassState {
    /// Sums: [cost, counts (k), sums (k·d)]. Counts: [cost, counts (k)]. Sample: [rows seen,
    /// n, then n × (key, row…)].
    pub(super) values: Vec<f64>,
    /// A sample pass's uniform [`Draw`]: the drawn rows (row-major), in no particular order.
    pub(super) drawn: Vec<f64>,
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
    /// A Lloyd pass over rows this process holds: Hamerly's bounds, kept between passes.
    #[serde(skip)]
    pub(super) bounded: Option<BoundedPass>,
}

impl Statistic for KMeansPass {
    type State = PassState;
    type Output = PassState;

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

    fn init(&self) -> PassState {
        let values = match self.pass {
            Pass::Sums => vec![0.0; 1 + self.centers.len() / self.d * (1 + self.d)],
            Pass::Counts { .. } => vec![0.0; 1 + self.centers.len() / self.d],
            Pass::Sample { .. } => vec![0.0, 0.0],
        };
        PassState {
            values,
            drawn: Vec::new(),
        }
    }

    fn update(&self, state: &mut PassState, b: &FeatureBatch<'_>) -> quiver_engine::Result<()> {
        let d = self.d;
        let PassState { values: s, drawn } = state;
        let mut uniforms = Vec::with_capacity(SUB_BLOCK_ROWS);
        let nan_check = |values: &[f64], first_row: usize| match first_nan(values) {
            Some(i) => Err(QuiverError::InvalidValueInBatch {
                kind: "NaN",
                column: "features".to_string(),
                row_in_batch: first_row + i / d,
            }),
            None => Ok(()),
        };
        match (&self.pass, &self.bounded) {
            (Pass::Sums, Some(bounded)) => {
                bounded.sums(&self.table, &self.centers, b.values, s, nan_check)?;
            }
            (Pass::Sums, None) => {
                // Sub-blocks that stay in cache while they are checked, assigned and summed.
                // The next sub-block is fetched into L2 while this one is assigned; a NaN value
                // makes its row's distance NaN, so only then is the sub-block searched for it.
                let mut nearest = Vec::with_capacity(SUB_BLOCK_ROWS);
                let step = SUB_BLOCK_ROWS * d;
                for (i, block) in b.values.chunks(step).enumerate() {
                    let next = b.values.get((i + 1) * step..).unwrap_or_default();
                    let next = &next[..next.len().min(step)];
                    // Assigned and summed in one compiled kernel; a NaN distance (a NaN value
                    // gives one) leaves the sums to be added here if no NaN value is found.
                    if !self
                        .table
                        .assign_sum_ahead(&self.centers, block, next, &mut nearest, s)
                    {
                        nan_check(block, i * SUB_BLOCK_ROWS)?;
                        add_to_sums(block, d, &nearest, s);
                    }
                }
            }
            (Pass::Counts { round, rate }, _) => {
                let mut nearest = Vec::with_capacity(SUB_BLOCK_ROWS);
                let mut picked = Vec::with_capacity(SUB_BLOCK_ROWS * d);
                for (i, block) in b.values.chunks(SUB_BLOCK_ROWS * d).enumerate() {
                    nan_check(block, i * SUB_BLOCK_ROWS)?;
                    let rows = if *rate >= 1.0 {
                        block
                    } else {
                        picked.clear();
                        row_uniforms(block, d, self.seed, *round, &mut uniforms);
                        for (x, u) in block.chunks_exact(d).zip(&uniforms) {
                            if *u < *rate {
                                picked.extend_from_slice(x);
                            }
                        }
                        &picked[..]
                    };
                    self.table.assign(&self.centers, rows, &mut nearest);
                    for &(c, dist) in &nearest {
                        s[0] += dist;
                        s[1 + c] += 1.0;
                    }
                }
            }
            (Pass::Sample { round, take, draw }, _) => {
                let take = *take;
                // Only a row whose key is at most the take-th smallest so far can be kept.
                let mut limit = sample_limit(s, d, take);
                let mut nearest = Vec::with_capacity(SUB_BLOCK_ROWS);
                let assigns = take > 0 && !self.centers.is_empty();
                for (i, block) in b.values.chunks(SUB_BLOCK_ROWS * d).enumerate() {
                    if assigns {
                        self.table.assign(&self.centers, block, &mut nearest);
                        // A NaN value makes its row's distance NaN: only then is the block
                        // searched for it (as the Lloyd pass does).
                        if nearest.iter().any(|(_, d2)| d2.is_nan()) {
                            nan_check(block, i * SUB_BLOCK_ROWS)?;
                        }
                    } else {
                        nan_check(block, i * SUB_BLOCK_ROWS)?;
                    }
                    s[0] += (block.len() / d) as f64;
                    if let Some(draw) = draw {
                        row_uniforms(block, d, self.seed, draw.round, &mut uniforms);
                        for (x, &u) in block.chunks_exact(d).zip(&uniforms) {
                            if draw.rate >= 1.0 || u < draw.rate {
                                drawn.extend_from_slice(x);
                            }
                        }
                    }
                    if take == 0 {
                        continue;
                    }
                    row_uniforms(block, d, self.seed, *round, &mut uniforms);
                    for (r, (x, &u)) in block.chunks_exact(d).zip(&uniforms).enumerate() {
                        let key = match nearest.get(r) {
                            _ if self.centers.is_empty() => u,
                            Some(&(_, d2)) if d2 > 0.0 => {
                                // −ln u ≥ 1 − u: most rows are refused without the logarithm.
                                if (1.0 - u) / d2 > limit {
                                    continue;
                                }
                                -u.ln() / d2
                            }
                            _ => continue,
                        };
                        if key > limit {
                            continue;
                        }
                        s[1] += 1.0;
                        s.push(key);
                        s.extend_from_slice(x);
                        if s[1] as usize >= 2 * take.max(16) {
                            keep_smallest(s, d, take);
                            limit = sample_limit(s, d, take);
                        }
                    }
                }
                keep_smallest(s, d, take);
            }
        }
        Ok(())
    }

    fn merge(&self, state: &mut PassState, other: &PassState) -> quiver_engine::Result<()> {
        state.drawn.extend_from_slice(&other.drawn);
        let (s, o) = (&mut state.values, &other.values);
        match &self.pass {
            Pass::Sums | Pass::Counts { .. } => s.iter_mut().zip(o).for_each(|(a, b)| *a += b),
            Pass::Sample { take, .. } => {
                s[0] += o[0];
                s[1] += o[1];
                s.extend_from_slice(&o[2..]);
                keep_smallest(s, self.d, *take);
            }
        }
        Ok(())
    }

    fn finish(&self, s: PassState) -> quiver_engine::Result<PassState> {
        Ok(s)
    }

    fn encode_state(&self, s: &PassState, out: &mut Vec<u8>) {
        encode_f64s(&[s.values.len() as f64, s.drawn.len() as f64], out);
        encode_f64s(&s.values, out);
        encode_f64s(&s.drawn, out);
    }

    fn state_size(&self, s: &PassState) -> usize {
        quiver_engine::aggregate::vec_size(&s.values) + quiver_engine::aggregate::vec_size(&s.drawn)
    }
    fn decode_state(&self, bytes: &[u8]) -> quiver_engine::Result<PassState> {
        let (n, rest) = decode_f64s(bytes, 2)?;
        let (values, rest) = decode_f64s(rest, n[0] as usize)?;
        let (drawn, _) = decode_f64s(rest, n[1] as usize)?;
        Ok(PassState { values, drawn })
    }
}

/// Keeps the `take` sampled rows with the smallest keys (ties by row values), sorted.
pub(super) fn keep_smallest(s: &mut Vec<f64>, d: usize, take: usize) {
    let mut rows = sampled_rows(s, d);
    rows.truncate(take);
    s.truncate(1);
    s.push(rows.len() as f64);
    for (u, r) in rows {
        s.push(u);
        s.extend_from_slice(&r);
    }
}

/// The largest key a row may have to enter a sample state kept by [`keep_smallest`]: the
/// take-th smallest key once there are `take` rows, else +∞.
fn sample_limit(s: &[f64], d: usize, take: usize) -> f64 {
    if take > 0 && s[1] as usize >= take {
        s[2 + (take - 1) * (d + 1)]
    } else {
        f64::INFINITY
    }
}

/// The (key, row) pairs of a sample state, in a canonical order (by key, then values).
pub(super) fn sampled_rows(s: &[f64], d: usize) -> Vec<(f64, Vec<f64>)> {
    let mut rows: Vec<(f64, Vec<f64>)> = s[2..]
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

impl KMeansPass {
    pub(super) fn new(d: usize, centers: Vec<f64>, seed: u64, pass: Pass) -> Self {
        KMeansPass {
            d,
            table: CenterTable::new(&centers, d),
            centers,
            seed,
            pass,
            bounded: None,
        }
    }
}

impl quiver_engine::registry::FromParams for KMeansPass {
    fn from_params(bytes: &[u8]) -> quiver_engine::Result<Self> {
        let mut v: Self = quiver_engine::registry::from_json_params("a k-means pass", bytes)?;
        v.table = CenterTable::new(&v.centers, v.d);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stat: &KMeansPass, parts: &[&[f64]]) -> PassState {
        let d = stat.d;
        let mut states: Vec<PassState> = parts
            .iter()
            .map(|values| {
                let mut s = stat.init();
                let batch = FeatureBatch::new(values, d).expect("batch");
                stat.update(&mut s, &batch).expect("update");
                s
            })
            .collect();
        let mut total = states.remove(0);
        for o in &states {
            stat.merge(&mut total, o).expect("merge");
        }
        total
    }

    /// A weighted sample is the same however the rows are split and merged, counts every row,
    /// never draws a row on a centre, and draws far rows far more often than near ones.
    #[test]
    fn sample_is_independent_of_partitioning_and_weighted_by_distance() {
        let d = 2;
        // 3000 rows: 2990 near the centre (distance² ≤ 0.02), 10 far away (distance² ≥ 10000),
        // and the centre itself.
        let mut values = vec![0.0, 0.0];
        for i in 0..2989 {
            values.extend_from_slice(&[(i % 10) as f64 * 0.01, (i / 10) as f64 * 1e-4]);
        }
        for i in 0..10 {
            values.extend_from_slice(&[100.0 + i as f64, -100.0]);
        }
        let centers = vec![0.0, 0.0];
        let mut far_draws = 0;
        for round in 1..=20 {
            let stat = KMeansPass {
                d,
                table: CenterTable::new(&centers, d),
                centers: centers.clone(),
                seed: 7,
                bounded: None,
                pass: Pass::Sample {
                    round,
                    take: 5,
                    draw: None,
                },
            };
            let whole = run(&stat, &[&values]).values;
            let n = values.len();
            let split = run(
                &stat,
                &[&values[n / 2..], &values[..1000], &values[1000..n / 2]],
            )
            .values;
            assert_eq!(whole, split, "round {round}");
            assert_eq!(whole[0], 3000.0);
            let rows = sampled_rows(&whole, d);
            assert_eq!(rows.len(), 5);
            assert!(rows.iter().all(|(_, r)| r != &[0.0, 0.0]));
            far_draws += rows.iter().filter(|(_, r)| r[0] >= 100.0).count();
        }
        // Far rows weigh ≥ 10⁴/0.02 more: nearly every draw is one of them.
        assert!(far_draws >= 95, "{far_draws} of 100 draws far");
    }

    /// A Lloyd pass and a k-means|| round name the first NaN value's row wherever it lies (past the first
    /// sub-block, in a column where a centre's coordinate is 0, after an infinite value, which
    /// is not one) and otherwise sums every row.
    #[test]
    fn lloyd_sums_find_a_nan_by_its_distance() {
        let d = 3;
        let n = 3 * SUB_BLOCK_ROWS + 17;
        let clean: Vec<f64> = (0..n * d).map(|i| (i % 13) as f64 - 6.0).collect();
        // The second centre's last coordinate is 0: 0 · NaN is NaN all the same.
        let centers = vec![1.0, 1.0, 1.0, -1.0, 2.0, 0.0];
        let stat = KMeansPass {
            d,
            table: CenterTable::new(&centers, d),
            centers: centers.clone(),
            seed: 1,
            bounded: None,
            pass: Pass::Sums,
        };
        let sums = run(&stat, &[&clean]).values;
        assert_eq!(sums[1] + sums[2], n as f64);
        // A k-means|| round finds it by the distance too.
        let round = KMeansPass {
            pass: Pass::Sample {
                round: 1,
                take: 4,
                draw: None,
            },
            ..stat.clone()
        };
        assert_eq!(run(&round, &[&clean]).values[0], n as f64);
        for ((row, column), stat) in [(0, 0), (SUB_BLOCK_ROWS + 5, 2), (n - 1, 1)]
            .into_iter()
            .flat_map(|at| [(at, &stat), (at, &round)])
        {
            let mut values = clean.clone();
            values[7 * d + 1] = f64::INFINITY;
            values[row * d + column] = f64::NAN;
            let mut s = stat.init();
            let err = stat
                .update(&mut s, &FeatureBatch::new(&values, d).expect("batch"))
                .expect_err("a NaN value");
            assert!(
                matches!(
                    err,
                    QuiverError::InvalidValueInBatch { kind: "NaN", row_in_batch, .. }
                        if row_in_batch == row
                ),
                "row {row}: {err}"
            );
        }
    }

    /// Candidate weights: every row at rate 1; at a lower rate a uniform sample of about that
    /// fraction, the same however the rows are split, in the same proportions.
    #[test]
    fn counts_sample_rows_uniformly_and_independently_of_partitioning() {
        let d = 2;
        // 30 000 rows: a third near (0, 0), two thirds near (10, 10).
        let values: Vec<f64> = (0..30_000)
            .flat_map(|i| {
                let base = if i % 3 == 0 { 0.0 } else { 10.0 };
                [
                    base + (i % 101) as f64 * 1e-3,
                    base + (i % 97) as f64 * 1e-3,
                ]
            })
            .collect();
        let centers = vec![0.0, 0.0, 10.0, 10.0];
        let pass = |rate: f64| KMeansPass {
            d,
            table: CenterTable::new(&centers, d),
            centers: centers.clone(),
            seed: 3,
            bounded: None,
            pass: Pass::Counts { round: 9, rate },
        };
        let all = run(&pass(1.0), &[&values]).values;
        assert_eq!(&all[1..], &[10_000.0, 20_000.0]);
        let n = values.len();
        let some = run(&pass(0.1), &[&values]).values;
        let split = run(&pass(0.1), &[&values[n / 3..], &values[..n / 3]]).values;
        assert_eq!(&some[1..], &split[1..]);
        let drawn = some[1] + some[2];
        assert!(
            (2_700.0..=3_300.0).contains(&drawn),
            "{drawn} of 30 000 drawn at 10%"
        );
        let share = some[1] / drawn;
        assert!((0.3..0.37).contains(&share), "{share}");
    }

    /// A block's uniforms are each row's own `row_uniform`, for every width (the lanes'
    /// remainders) and any number of rows (the groups of four and the rest).
    #[test]
    fn block_uniforms_are_the_rows_own() {
        for d in 1..=13 {
            for rows in [0, 1, 3, 4, 5, 8, 11] {
                let values: Vec<f64> = (0..rows * d).map(|i| (i as f64 * 0.37).sin()).collect();
                let mut out = Vec::new();
                row_uniforms(&values, d, 11, 3, &mut out);
                let each: Vec<f64> = values
                    .chunks_exact(d)
                    .map(|x| row_uniform(x, 11, 3))
                    .collect();
                assert_eq!(out, each, "d = {d}, {rows} rows");
            }
        }
    }

    /// The counting pass over the last round's uniform draw counts exactly what it counts over
    /// all the rows, at the draw's rate and at a lower one, however the rows are split; the
    /// round's weighted sample is the same with or without the draw.
    #[test]
    fn a_rounds_draw_counts_as_the_counting_pass_does() {
        let d = 3;
        let values: Vec<f64> = (0..20_000 * d)
            .map(|i| ((i * 7919) % 1000) as f64 * 0.01 + (i % d) as f64)
            .collect();
        let centers = vec![0.0, 1.0, 2.0, 5.0, 6.0, 7.0, 9.0, 10.0, 11.0];
        let stat = |pass: Pass| KMeansPass::new(d, centers.clone(), 5, pass);
        let n = values.len();
        let parts: [&[f64]; 3] = [&values[..n / 4], &values[n / 4..n / 2], &values[n / 2..]];
        let draw = Draw {
            round: 4,
            rate: 0.2,
        };
        let with = run(
            &stat(Pass::Sample {
                round: 2,
                take: 6,
                draw: Some(draw),
            }),
            &parts,
        );
        let without = run(
            &stat(Pass::Sample {
                round: 2,
                take: 6,
                draw: None,
            }),
            &[&values],
        );
        assert_eq!(with.values, without.values);
        assert!(without.drawn.is_empty());
        for rate in [0.2, 0.05] {
            let counts = stat(Pass::Counts { round: 4, rate });
            let over_drawn = run(&counts, &[&with.drawn[..]]).values;
            let over_all = run(&counts, &[&values]).values;
            assert_eq!(over_drawn[1..], over_all[1..], "rate {rate}");
            assert!(over_all[1..].iter().sum::<f64>() > 20_000.0 * rate * 0.8);
        }
        // The state travels as bytes between tasks and the driver.
        let s = stat(Pass::Sample {
            round: 2,
            take: 6,
            draw: Some(draw),
        });
        let mut bytes = Vec::new();
        s.encode_state(&with, &mut bytes);
        assert_eq!(s.decode_state(&bytes).expect("decode"), with);
    }
}
