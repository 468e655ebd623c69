//! `quiver bench`: seeded synthetic benchmarks of the primitives, timed in-process.
//!
//! `quiver bench summary --rows 1000000 --features 20` times the feature summary over the same
//! data on the local runner, the embedded runner over an in-memory table, and the embedded
//! runner over Parquet on local disk, against a plain-sum baseline (the memory-bandwidth floor)
//! run in the same process.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::dataset::LocalFrame;
use quiver_engine::vector::vector_array;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::output::progress;
use crate::{Dataset, QuiverError, QuiverSession, Result, Summarizer};

/// Options of `quiver bench summary`.
#[derive(Debug, Clone)]
pub struct SummaryBench {
    pub rows: usize,
    pub features: usize,
    /// Timed repetitions per case (the median is reported).
    pub iters: usize,
    pub seed: u64,
    /// Include the Parquet-on-disk cases.
    pub parquet: bool,
}

impl Default for SummaryBench {
    fn default() -> Self {
        SummaryBench {
            rows: 1_000_000,
            features: 20,
            iters: 10,
            seed: 42,
            parquet: true,
        }
    }
}

/// One timed case.
#[derive(Debug, Clone)]
pub struct BenchCase {
    pub name: String,
    pub median: Duration,
    pub min: Duration,
    /// Bytes of feature data per pass.
    pub bytes: u64,
    pub rows: u64,
}

impl BenchCase {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.median.as_secs_f64() / 1e9
    }
    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.median.as_secs_f64()
    }
}

fn time<T>(iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, Duration)> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], times[0]))
}

async fn time_async<T, F: std::future::Future<Output = Result<T>>>(
    iters: usize,
    mut f: impl FnMut() -> F,
) -> Result<(Duration, Duration)> {
    f().await?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        std::hint::black_box(f().await?);
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], times[0]))
}

/// Seeded synthetic features: `rows × features` values, uniform in [-1, 1) plus a per-feature
/// offset, in batches of `batch` rows, row-major.
pub fn synthetic(rows: usize, features: usize, batch: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut left = rows;
    while left > 0 {
        let n = left.min(batch);
        let v: Vec<f64> = (0..n * features)
            .map(|i| rng.random_range(-1.0..1.0) + (i % features) as f64)
            .collect();
        out.push(v);
        left -= n;
    }
    out
}

/// A sum with eight independent accumulators, so that it runs at memory speed rather than at
/// the latency of one chain of additions.
fn wide_sum(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f64>() + rest
}

/// Runs the summary benchmark and prints a table. Returns the cases for callers and tests.
pub async fn summary(
    session: &QuiverSession,
    opts: &SummaryBench,
    out: &mut dyn Write,
) -> Result<Vec<BenchCase>> {
    let (rows, dim) = (opts.rows, opts.features);
    if rows == 0 || dim == 0 {
        return Err(QuiverError::InvalidParam {
            param: "--rows/--features".to_string(),
            reason: "both must be positive".to_string(),
        });
    }
    let batch_rows = session.config().batch_size;
    let bytes = (rows * dim * 8) as u64;
    let name = |case: &str| format!("{case}-{dim}f-{rows}r");
    writeln!(
        out,
        "bench summary: {rows} rows x {dim} features ({:.1} MB of f64), seed {}, {} timed runs per case (median), \
         {} partitions, {} compute threads",
        bytes as f64 / 1e6,
        opts.seed,
        opts.iters,
        session.config().target_partitions,
        session.config().compute_threads
    )
    .ok();
    let bar = progress(if opts.parquet { 6 } else { 3 }, "bench summary");

    // Data, built outside every timed loop.
    let chunks = synthetic(rows, dim, batch_rows, opts.seed);
    let vectors = chunks
        .iter()
        .map(|c| vector_array(c.clone(), dim))
        .collect::<Result<Vec<_>>>()?;
    let frame = LocalFrame::from_vectors(vectors.clone(), None, None)?;
    let stat = Summarizer::new(dim);
    let mut cases = Vec::new();
    let mut push = |name: String, (median, min): (Duration, Duration)| {
        cases.push(BenchCase {
            name,
            median,
            min,
            bytes,
            rows: rows as u64,
        });
    };

    // Baseline: one plain sum over the same slices on the same pool (the bandwidth floor).
    let pool = session.compute_pool();
    push(
        name("baseline-plain-sum"),
        time(opts.iters, || {
            use rayon::prelude::*;
            Ok(pool.install(|| chunks.par_iter().map(|c| wide_sum(c)).sum::<f64>()))
        })?,
    );
    bar.inc(1);

    push(
        name("summary-local-memory"),
        time(opts.iters, || session.aggregate_local(&frame, &stat))?,
    );
    bar.inc(1);

    // Embedded over an in-memory table of the same vectors.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "features",
        quiver_engine::vector::vector_type(dim),
        false,
    )]));
    let batches = vectors
        .iter()
        .map(|v| RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(v.clone()) as ArrayRef]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mem = Dataset::new(session.from_batches(batches, session.config().target_partitions)?)
        .with_features(["features"])?;
    let stat_arc = Arc::new(stat.clone());
    push(
        name("summary-embedded-memory"),
        time_async(opts.iters, || {
            session.aggregate(&mem, Arc::clone(&stat_arc))
        })
        .await?,
    );
    bar.inc(1);

    let mut _dir = None;
    if opts.parquet {
        // Parquet on local disk, one file per partition, one Float64 column per feature.
        let dir = tempfile::tempdir().map_err(|e| QuiverError::internal(e.to_string()))?;
        let cols: Vec<Field> = (0..dim)
            .map(|j| Field::new(format!("f{j}"), DataType::Float64, false))
            .collect();
        let col_schema = Arc::new(Schema::new(cols));
        let col_batches = chunks
            .iter()
            .map(|c| {
                let n = c.len() / dim;
                let arrays: Vec<ArrayRef> = (0..dim)
                    .map(|j| {
                        Arc::new(Float64Array::from_iter_values(
                            (0..n).map(|r| c[r * dim + j]),
                        )) as ArrayRef
                    })
                    .collect();
                RecordBatch::try_new(Arc::clone(&col_schema), arrays)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let parts = session.config().target_partitions.max(1);
        let per = col_batches.len().div_ceil(parts);
        let disk = format!("{}/", dir.path().to_string_lossy());
        let names: Vec<String> = (0..dim).map(|j| format!("f{j}")).collect();
        // The same files on local disk and in the session's memory:// object store.
        for (case, base) in [
            ("summary-embedded-parquet-disk", disk.as_str()),
            ("summary-embedded-parquet-memory-store", "memory:///bench/"),
        ] {
            for (i, group) in col_batches.chunks(per.max(1)).enumerate() {
                let df = session.from_batches(group.to_vec(), 1)?;
                session
                    .write_parquet(df, &format!("{base}part-{i}.parquet"))
                    .await?;
            }
            let pq = Dataset::new(session.read(base).await?).with_features(&names)?;
            push(
                name(case),
                time_async(opts.iters, || session.aggregate(&pq, Arc::clone(&stat_arc))).await?,
            );
            bar.inc(1);
            if base == disk {
                push(
                    name("load-parquet-disk-into-local-cache"),
                    time_async(opts.iters.min(3), || pq.cache_local()).await?,
                );
                bar.inc(1);
            }
        }
        _dir = Some(dir);
    }
    bar.finish_and_clear();

    let local = cases
        .iter()
        .find(|c| c.name.starts_with("summary-local"))
        .map(|c| c.median.as_secs_f64())
        .unwrap_or(f64::NAN);
    writeln!(
        out,
        "  {:<52} {:>10} {:>10} {:>12} {:>8} {:>9}",
        "case", "median ms", "min ms", "rows/s", "GB/s", "vs local"
    )
    .ok();
    for c in &cases {
        writeln!(
            out,
            "  {:<52} {:>10.2} {:>10.2} {:>12.3e} {:>8.2} {:>8.2}x",
            c.name,
            c.median.as_secs_f64() * 1e3,
            c.min.as_secs_f64() * 1e3,
            c.rows_per_s(),
            c.gb_per_s(),
            c.median.as_secs_f64() / local
        )
        .ok();
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_data_is_seeded() {
        assert_eq!(synthetic(10, 3, 4, 7), synthetic(10, 3, 4, 7));
        assert_ne!(synthetic(10, 3, 4, 7), synthetic(10, 3, 4, 8));
        let s = synthetic(10, 3, 4, 7);
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), vec![12, 12, 6]);
    }
}

/// Options of `quiver bench algorithms`.
#[derive(Debug, Clone)]
pub struct AlgorithmsBench {
    pub rows: usize,
    pub features: usize,
    /// k of k-means.
    pub k: usize,
    /// Iterations of LogisticRegression and Lloyd passes of KMeans (run in full: tol = 0).
    pub iters: usize,
    pub seed: u64,
    /// Also write the data to this Parquet file (for running other systems on the same rows).
    pub export: Option<String>,
}

impl Default for AlgorithmsBench {
    fn default() -> Self {
        AlgorithmsBench {
            rows: 1_000_000,
            features: 20,
            k: 10,
            iters: 20,
            seed: 42,
            export: None,
        }
    }
}

/// One row of the algorithms table.
struct AlgoRow<'a> {
    case: String,
    total_ms: f64,
    /// Time of one data pass (an iteration, a Lloyd step, a predict), when meaningful.
    per_pass_ms: f64,
    note: &'a str,
    extra: String,
}

/// Seeded regression and classification data: x_j uniform in [j − 1, j + 1), label
/// `Σ (j+1)/d · x_j` plus small noise, class = label above its mean after a ±1 jitter.
pub(crate) fn algorithm_batches(
    opts: &AlgorithmsBench,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let dim = opts.features;
    let chunks = synthetic(opts.rows, dim, batch_rows, opts.seed);
    let schema = Arc::new(Schema::new(vec![
        Field::new("features", quiver_engine::vector::vector_type(dim), false),
        Field::new("label", DataType::Float64, false),
        Field::new("class", DataType::Float64, false),
    ]));
    let signal = |x: &[f64]| -> f64 {
        x.iter()
            .enumerate()
            .map(|(j, v)| (j + 1) as f64 / dim as f64 * v)
            .sum()
    };
    // The mean of the signal: E[x_j] = j.
    let mean: f64 = (0..dim)
        .map(|j| (j + 1) as f64 / dim as f64 * j as f64)
        .sum();
    let mut row = 0usize;
    chunks
        .iter()
        .map(|c| {
            let n = c.len() / dim;
            let mut y = Vec::with_capacity(n);
            let mut class = Vec::with_capacity(n);
            for x in c.chunks_exact(dim) {
                let jitter = ((row * 7919) % 1000) as f64 / 1000.0 - 0.5;
                let v = signal(x);
                y.push(v + jitter * 2e-4);
                class.push(if v - mean + 2.0 * jitter > 0.0 {
                    1.0
                } else {
                    0.0
                });
                row += 1;
            }
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(vector_array(c.clone(), dim)?) as ArrayRef,
                    Arc::new(Float64Array::from(y)),
                    Arc::new(Float64Array::from(class)),
                ],
            )
            .map_err(QuiverError::from)
        })
        .collect()
}

/// Times a full predict (the median of five): the model's output column computed over every
/// row and collected.
pub(crate) async fn time_predict(scored: &Dataset, col: &str) -> Result<f64> {
    median_of_5_ms(|| async {
        let batches = scored
            .dataframe()
            .clone()
            .select_columns(&[col])?
            .collect()
            .await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        std::hint::black_box(rows);
        Ok(())
    })
    .await
}

/// The median wall time of five runs of `f`, in milliseconds.
async fn median_of_5_ms<F, Fut>(mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

/// Times LinearRegression (one co-moment pass + solve), LogisticRegression (`iters`
/// iterations), KMeans (k-means|| then `iters` Lloyd passes) and batch predict with both
/// models, on seeded synthetic data cached in memory, on the local and the embedded runner.
/// The feature summary over the same cached data is timed first as the per-pass baseline
/// (the memory-bandwidth floor), and every per-pass time is also given as a ratio to it.
pub async fn algorithms(
    session: &QuiverSession,
    opts: &AlgorithmsBench,
    out: &mut dyn Write,
) -> Result<()> {
    use quiver_mllib::{Estimator, KMeans, LinearRegression, LogisticRegression, Transformer};
    let (rows, dim) = (opts.rows, opts.features);
    let bytes = (rows * dim * 8) as f64;
    let batches = algorithm_batches(opts, session.config().batch_size)?;
    // The same values as plain slices, for the bandwidth floor.
    let chunks = synthetic(rows, dim, session.config().batch_size, opts.seed);
    if let Some(path) = &opts.export {
        let written = session
            .write_parquet(session.from_batches(batches.clone(), 1)?, path)
            .await?;
        writeln!(out, "wrote {written} rows to {path}").ok();
    }
    writeln!(
        out,
        "bench algorithms: {rows} rows x {dim} features ({:.1} MB), cached in memory, seed {}",
        bytes / 1e6,
        opts.seed
    )
    .ok();
    writeln!(
        out,
        "  {:<40} {:>10} {:>12} {:>8} {:>10} {:>8}",
        "case", "total ms", "per pass ms", "GB/s", "x summary", "x floor"
    )
    .ok();
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());
    for runner in ["local", "embedded"] {
        let mut config = session.config().clone();
        config.set("quiver.runner", runner)?;
        let s = crate::session_with(config)?;
        let ds = Dataset::new(s.from_batches(batches.clone(), s.config().target_partitions)?)
            .with_features(["features"])?
            .with_label("label")?;
        let mut table: Vec<AlgoRow> = Vec::new();

        // The memory-bandwidth floor: a plain 8-accumulator sum over the same values on the
        // session's compute pool (median of 5).
        let pool = s.compute_pool();
        let plain = median_of_5_ms(|| async {
            std::hint::black_box(pool.install(|| {
                use rayon::prelude::*;
                chunks.par_iter().map(|c| wide_sum(c)).sum::<f64>()
            }));
            Ok(())
        })
        .await?;
        let prepared = s.prepare_iterative(&ds, s.runner()).await?;
        // The feature summary over the same cached input (median of 5).
        let floor = median_of_5_ms(|| async {
            std::hint::black_box(prepared.aggregate(Arc::new(Summarizer::new(dim))).await?);
            Ok(())
        })
        .await?;
        for (what, ms, extra) in [
            ("plain-sum", plain, "median of 5 (the floor)"),
            ("summary", floor, "median of 5"),
        ] {
            table.push(AlgoRow {
                case: format!("{what}-{dim}f-{rows}r-{runner}"),
                total_ms: ms,
                per_pass_ms: ms,
                note: "",
                extra: extra.to_string(),
            });
        }

        let t = Instant::now();
        let lr = LinearRegression::new()
            .fit(&s, &ds)
            .await
            .map_err(mllib_err)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        table.push(AlgoRow {
            case: format!("linreg-{dim}f-{rows}r-{runner}"),
            total_ms: ms,
            per_pass_ms: ms,
            note: if lr.summary().r2 > 0.99 {
                ""
            } else {
                "  (r2 below 0.99!)"
            },
            extra: "1 pass + solve".to_string(),
        });

        let classes = ds.clone().with_label("class")?;
        let log = LogisticRegression::new()
            .max_iter(opts.iters)
            .tol(0.0)
            .fit(&s, &classes)
            .await
            .map_err(mllib_err)?;
        let sm = log.summary();
        table.push(AlgoRow {
            case: format!("logreg-{dim}f-{rows}r-{runner}"),
            total_ms: sm.wall_time_ms,
            per_pass_ms: sm.wall_time_ms / sm.data_passes.max(1) as f64,
            note: "",
            extra: format!("{} iterations, {} passes", sm.iterations, sm.data_passes),
        });

        let km = KMeans::new()
            .k(opts.k)
            .max_iter(opts.iters)
            .tol(0.0)
            .seed(opts.seed)
            .fit(&s, &ds)
            .await
            .map_err(mllib_err)?;
        let sm = km.summary();
        table.push(AlgoRow {
            case: format!("kmeans-k{}-{dim}f-{rows}r-{runner}", opts.k),
            total_ms: sm.wall_time_ms,
            per_pass_ms: (sm.wall_time_ms - sm.init_ms) / sm.iterations.max(1) as f64,
            note: "",
            extra: format!("init {:.1} ms, {} Lloyd passes", sm.init_ms, sm.iterations),
        });

        let ms = time_predict(&log.transform(&classes).map_err(mllib_err)?, "prediction").await?;
        table.push(AlgoRow {
            case: format!("predict-logreg-{dim}f-{rows}r-{runner}"),
            total_ms: ms,
            per_pass_ms: ms,
            note: "",
            extra: format!("{:.1}M rows/s", rows as f64 / ms / 1e3),
        });
        let ms = time_predict(&km.transform(&ds).map_err(mllib_err)?, "prediction").await?;
        table.push(AlgoRow {
            case: format!("predict-kmeans-k{}-{dim}f-{rows}r-{runner}", opts.k),
            total_ms: ms,
            per_pass_ms: ms,
            note: "",
            extra: format!("{:.1}M rows/s", rows as f64 / ms / 1e3),
        });

        for r in &table {
            writeln!(
                out,
                "  {:<40} {:>10.1} {:>12.2} {:>8.2} {:>9.2}x {:>7.2}x   {}{}",
                r.case,
                r.total_ms,
                r.per_pass_ms,
                bytes / (r.per_pass_ms / 1e3) / 1e9,
                r.per_pass_ms / floor,
                r.per_pass_ms / plain,
                r.extra,
                r.note
            )
            .ok();
        }
    }
    Ok(())
}

/// Options of `quiver bench predict`.
#[derive(Debug, Clone)]
pub struct PredictBench {
    pub rows: usize,
    pub features: usize,
    /// Timed repetitions of each query (the median is reported).
    pub iters: usize,
    pub seed: u64,
    /// Where the Parquet data goes (a temporary directory when `None`).
    pub dir: Option<String>,
}

/// `SELECT sum(ml_predict('m', f0, …)) FROM t` over Parquet against a scan that sums the same
/// columns, and the end-to-end latency of a single-row `ml_predict` query.
pub async fn predict(
    session: &QuiverSession,
    opts: &PredictBench,
    out: &mut dyn Write,
) -> Result<()> {
    use quiver_sql_udfs::SqlSession;
    let (rows, dim) = (opts.rows, opts.features);
    let tmp = tempfile::tempdir().map_err(|e| QuiverError::internal(e.to_string()))?;
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_string_lossy().to_string());
    let path = format!("{}/predict_bench.parquet", dir.trim_end_matches('/'));
    let names: Vec<String> = (0..dim).map(|j| format!("f{j}")).collect();
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Float64, false))
            .chain([Field::new("y", DataType::Float64, false)])
            .collect::<Vec<_>>(),
    ));
    // Seeded columns, written in chunks so that memory stays bounded.
    let chunk_rows = 1_000_000.min(rows.max(1));
    let mut batches = Vec::new();
    let mut left = rows;
    let mut seed = opts.seed;
    while left > 0 {
        let n = left.min(chunk_rows);
        let values = synthetic(n, dim, n, seed).remove(0);
        seed += 1;
        let mut cols: Vec<ArrayRef> = (0..dim)
            .map(|j| {
                Arc::new(Float64Array::from(
                    (0..n).map(|r| values[r * dim + j]).collect::<Vec<_>>(),
                )) as ArrayRef
            })
            .collect();
        let y: Vec<f64> = (0..n)
            .map(|r| values[r * dim..(r + 1) * dim].iter().sum::<f64>() + (r % 7) as f64)
            .collect();
        cols.push(Arc::new(Float64Array::from(y)));
        batches.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(QuiverError::from)?);
        left -= n;
    }
    let t = Instant::now();
    let written = session
        .write_parquet(session.from_batches(batches, 1)?, &path)
        .await?;
    writeln!(
        out,
        "bench predict: {written} rows x {dim} features of Parquet at {path} (written in {:.1} s)",
        t.elapsed().as_secs_f64()
    )
    .ok();
    let sql = SqlSession::new(session.clone()).map_err(QuiverError::from)?;
    let cols = names.join(", ");
    let script = format!(
        "CREATE VIEW t AS SELECT * FROM '{path}';
         CREATE OR REPLACE MODEL quiver_bench_predict OPTIONS (model_type = 'linear_reg', input_label_cols = ['y'], data_split_method = 'no_split')
         AS SELECT {cols}, y FROM t LIMIT 100000"
    );
    sql.execute(&script).await.map_err(QuiverError::from)?;
    let time = |query: String| {
        let sql = sql.clone();
        async move {
            let mut times = Vec::new();
            for i in 0..opts.iters + 1 {
                let t = Instant::now();
                let r = sql.execute(&query).await.map_err(QuiverError::from)?;
                std::hint::black_box(r);
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            Ok::<f64, QuiverError>(times[times.len() / 2])
        }
    };
    let scan = time(format!("SELECT sum({}) FROM t", names.join(" + "))).await?;
    let predict = time(format!(
        "SELECT sum(ml_predict('quiver_bench_predict', {cols})) FROM t"
    ))
    .await?;
    let literals = (0..dim)
        .map(|j| format!("{j}.5"))
        .collect::<Vec<_>>()
        .join(", ");
    let single = {
        let mut times = Vec::new();
        for i in 0..51 {
            let t = Instant::now();
            let r = sql
                .execute(&format!(
                    "SELECT ml_predict('quiver_bench_predict', {literals})"
                ))
                .await
                .map_err(QuiverError::from)?;
            std::hint::black_box(r);
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    writeln!(
        out,
        "  {:<44} {:>10} {:>14} {:>10}",
        "case", "median ms", "rows/s", "vs scan"
    )
    .ok();
    for (name, ms) in [
        ("scan-sum-of-features", scan),
        ("sum-of-ml_predict (linear_reg)", predict),
    ] {
        writeln!(
            out,
            "  {:<44} {:>10.1} {:>14.3e} {:>9.2}x",
            name,
            ms,
            rows as f64 / (ms / 1e3),
            ms / scan
        )
        .ok();
    }
    writeln!(
        out,
        "  {:<44} {:>10.2}   (median of 50, planning + model lookup + execution)",
        "single-row ml_predict query", single
    )
    .ok();
    sql.execute("DROP MODEL IF EXISTS quiver_bench_predict")
        .await
        .map_err(QuiverError::from)?;
    Ok(())
}

/// `quiver bench search`: the fan-out overhead per trial (a trivial objective) on the local
/// and the embedded runner, the TPE proposal time at 1000 finished trials, and a 64-trial
/// logistic-regression search on the breast-cancer data end to end.
pub async fn search(session: &QuiverSession, trials: usize, out: &mut dyn Write) -> Result<()> {
    use quiver_engine::Runner;
    use quiver_mllib::tuning::{Point, Search, Space, Tpe, TrainEval, hp};
    use rand::SeedableRng;
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());
    let space = Space::new(vec![
        hp::uniform("x", -5.0, 5.0),
        hp::uniform("y", -5.0, 5.0),
    ])
    .map_err(mllib_err)?;
    let parallelism = session.config().compute_threads;
    writeln!(out, "bench search: {parallelism} trials at a time").ok();
    for runner in [Runner::Local, Runner::Embedded] {
        let ms = sphere_search_ms(session, runner, trials, parallelism).await?;
        writeln!(
            out,
            "  trivial objective (quiver.sphere), {trials} trials, {runner:?}: {:.1} ms, {ms:.3} ms per trial",
            ms * trials as f64
        )
        .ok();
    }
    // TPE's proposal cost with 1000 finished trials.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let finished: Vec<(Point, f64)> = (0..1000)
        .map(|_| {
            let p = space.sample(&mut rng);
            let l = p["x"].as_f64().unwrap_or(0.0).powi(2) + p["y"].as_f64().unwrap_or(0.0);
            (p, l)
        })
        .collect();
    let tpe = Tpe::default();
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        std::hint::black_box(tpe.propose(&space, &finished, &[], &mut rng));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    writeln!(
        out,
        "  TPE proposal at 1000 finished trials (2 parameters, 24 candidates): {:.3} ms (median of 21)",
        times[10]
    )
    .ok();
    if let Some(digits) = crate::shipped_digits() {
        let data = digits.replace("digits.parquet", "breast_cancer.parquet");
        let lr_space = Space::new(vec![
            hp::loguniform("reg_param", 1e-6, 100.0),
            hp::uniform("elastic_net_param", 0.0, 1.0),
        ])
        .map_err(mllib_err)?;
        let spec = TrainEval::new(data, "logistic_regression")
            .label("label")
            .metric("log_loss")
            .eval_fraction(0.25)
            .split_seed(7);
        // One trial at a time, then `parallelism` at a time in batches and asynchronously:
        // each trial computes on its own thread pool, so trials at once should scale.
        let mut first_ms = None;
        for (label, p, asynchronous) in [
            ("1 at a time", 1, false),
            ("batches", parallelism, false),
            ("asynchronous", parallelism, true),
        ] {
            let t = Instant::now();
            let r = Search::train_eval(lr_space.clone(), spec.clone())
                .max_evals(64)
                .parallelism(p)
                .asynchronous(asynchronous)
                .seed(1)
                .run(session)
                .await
                .map_err(mllib_err)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let base = *first_ms.get_or_insert(ms);
            let best = r.best.as_ref().and_then(|b| b.loss).unwrap_or(f64::NAN);
            writeln!(
                out,
                "  64-trial TPE search, LogisticRegression (elastic net) on breast cancer, held-out log loss, {p} trials at once ({label}): {ms:.1} ms ({:.2}x of 1 at a time), best {best:.5}",
                base / ms
            )
            .ok();
        }
    }
    Ok(())
}

/// `quiver bench cluster`: per-iteration cost of a logistic-regression fit embedded and on a
/// local cluster of 1 and 2 executors (started and stopped here), on Parquet data in 4 files.
#[derive(Debug, Clone)]
pub struct ClusterBench {
    /// Row counts to run (e.g. a small and a 1M-row dataset).
    pub rows: Vec<usize>,
    pub features: usize,
    /// Iterations of every fit (tol 0: all run).
    pub iters: usize,
    pub seed: u64,
    /// Trials of the trivial `quiver.sphere` search (per-trial fan-out overhead).
    pub trials: usize,
    /// Start the clusters with an auth token (executors then poll for their tasks; without
    /// one the scheduler pushes them).
    pub auth: bool,
}

/// Milliseconds per trial of a random search of `trials` `quiver.sphere` trials.
async fn sphere_search_ms(
    session: &QuiverSession,
    runner: quiver_engine::Runner,
    trials: usize,
    parallelism: usize,
) -> Result<f64> {
    use quiver_mllib::tuning::{Algo, Search, Space, hp};
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());
    let space = Space::new(vec![
        hp::uniform("x", -5.0, 5.0),
        hp::uniform("y", -5.0, 5.0),
    ])
    .map_err(mllib_err)?;
    let t = Instant::now();
    let r = Search::task(space, "quiver.sphere")
        .algo(Algo::Random)
        .max_evals(trials)
        .parallelism(parallelism)
        .runner(runner)
        .run(session)
        .await
        .map_err(mllib_err)?;
    Ok(t.elapsed().as_secs_f64() * 1e3 / r.trials.len().max(1) as f64)
}

pub async fn cluster(
    session: &QuiverSession,
    opts: &ClusterBench,
    out: &mut dyn Write,
) -> Result<()> {
    use quiver_mllib::{Estimator, LogisticRegression};
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());
    let dir = tempfile::tempdir().map_err(|source| QuiverError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    writeln!(
        out,
        "bench cluster: logistic regression, {} features, {} iterations, Parquet in 4 files, {}",
        opts.features,
        opts.iters,
        if opts.auth {
            "clusters with an auth token (executors poll for tasks)"
        } else {
            "clusters without an auth token (tasks pushed)"
        }
    )
    .ok();
    writeln!(
        out,
        "  {:<28} {:>14} {:>16} {:>17} {:>15} {:>22}",
        "case",
        "embedded ms/it",
        "1 executor ms/it",
        "2 executors ms/it",
        "overhead (2) ms",
        "2 executors, no cache"
    )
    .ok();
    for &rows in &opts.rows {
        let data = dir.path().join(format!("data-{rows}"));
        let algo = AlgorithmsBench {
            rows,
            features: opts.features,
            k: 2,
            iters: opts.iters,
            seed: opts.seed,
            export: None,
        };
        let batches = algorithm_batches(&algo, session.config().batch_size)?;
        let per_file = batches.len().div_ceil(4).max(1);
        for (i, chunk) in batches.chunks(per_file).enumerate() {
            let path = data.join(format!("part-{i}.parquet"));
            session
                .write_parquet(
                    session.from_batches(chunk.to_vec(), 1)?,
                    &path.to_string_lossy(),
                )
                .await?;
        }
        let location = format!("{}/", data.to_string_lossy());
        let fit = |s: QuiverSession| {
            let location = location.clone();
            async move {
                let ds = Dataset::new(s.read(&location).await?)
                    .with_features(["features"])?
                    .with_label("class")?;
                let m = LogisticRegression::new()
                    .max_iter(opts.iters)
                    .tol(0.0)
                    .fit(&s, &ds)
                    .await
                    .map_err(mllib_err)?;
                let sm = m.summary();
                Ok::<f64, QuiverError>(sm.wall_time_ms / sm.data_passes.max(1) as f64)
            }
        };
        let embedded = fit(session.clone()).await?;
        let mut on_cluster = Vec::new();
        let mut uncached = None;
        let mut search_ms = None;
        for executors in [1, 2] {
            let up = super::cluster::UpOptions {
                dir: dir.path().join(format!("cluster-{rows}-{executors}")),
                executors,
                port: quiver_executor::standalone::free_port()?,
                concurrent_tasks: None,
                memory_limit: None,
                cache_memory: None,
                device: None,
                ready_timeout: Duration::from_secs(60),
                // As `quiver cluster up` starts it (by default with an auth token), reading its
                // data.
                auth: opts.auth,
                data_roots: vec![dir.path().to_path_buf()],
                allow_writes: false,
                tls: false,
            };
            let state = {
                let up = up.clone();
                tokio::task::spawn_blocking(move || super::cluster::up(&up, &mut std::io::sink()))
                    .await
                    .map_err(|e| QuiverError::internal(e.to_string()))??
            };
            let mut config = session.config().clone();
            if let Some(token) = &state.auth_token_file {
                config.auth_token =
                    Some(quiver_engine::cluster::auth::AuthToken::from_file(token)?);
            }
            let remote = crate::remote_session_with(&state.url, config).await;
            let result = match remote {
                Ok(r) => {
                    let fitted = fit(r.clone()).await;
                    if executors == 2 {
                        // The same fit reading the files on every pass (quiver.cluster.cache).
                        let off = r
                            .config()
                            .clone()
                            .with_pairs([("quiver.cluster.cache", "false")])?;
                        uncached = Some(match crate::remote_session_with(&state.url, off).await {
                            Ok(s) => fit(s).await,
                            Err(e) => Err(e),
                        });
                    }
                    if executors == 2 && search_ms.is_none() && opts.trials > 0 {
                        // As many trials at once as the two executors have task slots.
                        let slots = 2 * quiver_engine::config::available_cores();
                        let mut ms = Vec::new();
                        for p in [2, slots] {
                            let t = sphere_search_ms(
                                &r,
                                quiver_engine::Runner::Embedded,
                                opts.trials,
                                p,
                            )
                            .await;
                            ms.push((p, t));
                        }
                        search_ms = Some(ms);
                    }
                    fitted
                }
                Err(e) => Err(e),
            };
            super::cluster::down(&up.dir, &mut std::io::sink())?;
            on_cluster.push(result?);
        }
        writeln!(
            out,
            "  {:<28} {:>14.1} {:>16.1} {:>17.1} {:>15.1} {:>22.1}",
            format!("logreg-{}f-{rows}r", opts.features),
            embedded,
            on_cluster[0],
            on_cluster[1],
            on_cluster[1] - embedded,
            uncached.transpose()?.unwrap_or(f64::NAN)
        )
        .ok();
        if let Some(cluster_ms) = search_ms {
            let p = session.config().compute_threads.max(1);
            let local =
                sphere_search_ms(session, quiver_engine::Runner::Local, opts.trials, p).await?;
            let embedded =
                sphere_search_ms(session, quiver_engine::Runner::Embedded, opts.trials, p).await?;
            writeln!(
                out,
                "  fan-out, {} trivial trials (quiver.sphere): local {local:.3} ms/trial and embedded {embedded:.3} ms/trial ({p} at a time)",
                opts.trials,
            )
            .ok();
            for (parallel, ms) in cluster_ms {
                writeln!(
                    out,
                    "    cluster (2 executors), {parallel} at a time: {:.3} ms/trial",
                    ms?
                )
                .ok();
            }
        }
    }
    Ok(())
}
