//! `quiver bench device`: batch prediction from memory on the CPU against a CUDA device, the
//! per-batch crossover that `quiver.device.min_rows` should sit at, and how far the device's
//! results are from the CPU's.
//!
//! On a machine without a usable device it prints the CPU side and why there is no device
//! side: it never claims a device number it did not measure.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use quiver_engine::device::{self, DeviceChoice, DevicePolicy, Placement, Precision};
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, QuiverError, QuiverSession, Result};
use rayon::prelude::*;

use super::bench::{AlgorithmsBench, algorithm_batches, synthetic};

/// Options of `quiver bench device`.
#[derive(Debug, Clone)]
pub struct DeviceBench {
    /// Rows scored from memory per case.
    pub rows: usize,
    pub features: usize,
    /// Rows per batch handed to a model's predict function.
    pub batch_rows: usize,
    /// k of the k-means model.
    pub k: usize,
    pub seed: u64,
    /// The device measured (`cuda` / `cuda:N`).
    pub device: DeviceChoice,
}

/// One predict function under test.
struct Case {
    name: String,
    func: Arc<dyn BatchFunction>,
}

pub async fn device(
    session: &QuiverSession,
    opts: &DeviceBench,
    out: &mut dyn Write,
) -> Result<()> {
    use quiver_mllib::api::RowStage;
    use quiver_mllib::{Estimator, KMeans, LinearRegression, LogisticRegression, Transformer};
    let dim = opts.features;
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());
    // The models: fitted on 100k rows of the `bench algorithms` data, on the CPU.
    let session_policy = device::policy();
    device::set_policy(cpu_policy());
    let fit_rows = AlgorithmsBench {
        rows: 100_000.min(opts.rows.max(1)),
        features: dim,
        k: opts.k,
        iters: 10,
        seed: opts.seed,
        export: None,
    };
    let batches = algorithm_batches(&fit_rows, session.config().batch_size)?;
    let ds = Dataset::new(session.from_batches(batches, 1)?)
        .with_features(["features"])?
        .with_label("label")?;
    let predict = |stage: RowStage, probability: bool| -> Result<Arc<dyn BatchFunction>> {
        match stage {
            RowStage::Predict {
                prediction,
                probability: p,
            } => Ok(if probability {
                p.unwrap_or(prediction)
            } else {
                prediction
            }),
            _ => Err(QuiverError::internal("a model without a predict stage")),
        }
    };
    let linear = LinearRegression::new()
        .fit(session, &ds)
        .await
        .map_err(mllib_err)?;
    let logistic = LogisticRegression::new()
        .max_iter(10)
        .fit(session, &ds.clone().with_label("class")?)
        .await
        .map_err(mllib_err)?;
    let kmeans = KMeans::new()
        .k(opts.k)
        .max_iter(5)
        .seed(opts.seed)
        .fit(session, &ds)
        .await
        .map_err(mllib_err)?;
    let forest = quiver_mllib::GBTRegressor::new()
        .max_iter(100)
        .max_depth(6)
        .fit(session, &ds)
        .await
        .map_err(mllib_err)?;
    let cases = vec![
        Case {
            name: "linear_reg predict".into(),
            func: predict(linear.row_stage(), false)?,
        },
        Case {
            name: "logistic_reg predict_proba".into(),
            func: predict(logistic.row_stage(), true)?,
        },
        Case {
            name: format!("kmeans k={} assign", opts.k),
            func: predict(kmeans.row_stage(), false)?,
        },
        Case {
            name: "boosted trees (100, depth 6)".into(),
            func: predict(forest.row_stage(), false)?,
        },
    ];
    let data = synthetic(opts.rows, dim, opts.batch_rows.max(1), opts.seed + 1);
    let placement = device::resolve(opts.device);
    let threads = session.config().compute_threads;
    writeln!(
        out,
        "bench device: {} rows x {dim} features from memory ({:.2} GB of f64) in batches of {} rows; CPU: {threads} threads; device: {}",
        opts.rows,
        (opts.rows * dim * 8) as f64 / 1e9,
        opts.batch_rows,
        match &placement {
            Ok(Placement::Cuda { ordinal, name }) => format!("cuda:{ordinal} ({name})"),
            Ok(Placement::Cpu) => "none".to_string(),
            Err(e) => format!("none ({e})"),
        }
    )
    .ok();
    let ordinal = match &placement {
        Ok(Placement::Cuda { ordinal, .. }) => Some(*ordinal),
        _ => None,
    };
    writeln!(
        out,
        "  {:<32} {:>10} {:>12} {:>10} {:>12} {:>9} {:>12}",
        "case", "cpu ms", "cpu rows/s", "device ms", "dev rows/s", "speedup", "max rel diff"
    )
    .ok();
    let pool = session.compute_pool();
    for case in &cases {
        let precisions: &[Precision] = if case.name.starts_with("logistic") && ordinal.is_some() {
            &[Precision::F64, Precision::F32]
        } else {
            &[Precision::F64]
        };
        // The 100-tree case is long on a CPU: one timed run.
        let reps = if case.name.starts_with("boosted") {
            1
        } else {
            3
        };
        device::set_policy(cpu_policy());
        let cpu_ms = median_ms(reps, || {
            pool.install(|| {
                data.par_iter()
                    .map(|c| apply(case.func.as_ref(), c, dim).map(|a| a.len()))
                    .sum::<Result<usize>>()
            })
        })?;
        let reference = apply(case.func.as_ref(), &data[0], dim)?;
        for &precision in precisions {
            let label = if precision == Precision::F64 {
                case.name.clone()
            } else {
                format!("{} (f32)", case.name)
            };
            let Some(n) = ordinal else {
                writeln!(
                    out,
                    "  {label:<32} {cpu_ms:>10.1} {:>12.3e} {:>10} {:>12} {:>9} {:>12}",
                    opts.rows as f64 / (cpu_ms / 1e3),
                    "-",
                    "-",
                    "-",
                    "-"
                )
                .ok();
                continue;
            };
            device::set_policy(on_device(n, precision));
            let dev_ms = median_ms(reps, || {
                data.iter()
                    .map(|c| apply(case.func.as_ref(), c, dim).map(|a| a.len()))
                    .sum::<Result<usize>>()
            })?;
            let on_dev = apply(case.func.as_ref(), &data[0], dim)?;
            writeln!(
                out,
                "  {label:<32} {cpu_ms:>10.1} {:>12.3e} {dev_ms:>10.1} {:>12.3e} {:>8.1}x {:>12.1e}",
                opts.rows as f64 / (cpu_ms / 1e3),
                opts.rows as f64 / (dev_ms / 1e3),
                cpu_ms / dev_ms,
                max_rel_diff(&reference, &on_dev)
            )
            .ok();
        }
    }
    // The crossover: one batch at a time, one CPU thread against the device.
    if let Some(n) = ordinal {
        let func = cases[1].func.as_ref();
        writeln!(
            out,
            "  per-batch latency, {} (one CPU thread vs the device, median):",
            cases[1].name
        )
        .ok();
        writeln!(
            out,
            "    {:>9} {:>12} {:>12} {:>8}",
            "rows", "cpu us", "device us", "speedup"
        )
        .ok();
        let rows: Vec<f64> = data
            .iter()
            .flatten()
            .take(2_097_152 * dim)
            .copied()
            .collect();
        let mut crossover = None;
        for batch in [1usize, 64, 1024, 8192, 32_768, 131_072, 524_288, 2_097_152] {
            let batch = batch.min(rows.len() / dim);
            let x = &rows[..batch * dim];
            let reps = (4_000_000 / batch).clamp(3, 1000);
            device::set_policy(cpu_policy());
            let cpu = median_ms(reps, || apply(func, x, dim).map(|a| a.len()))? * 1e3;
            device::set_policy(on_device(n, Precision::F64));
            let dev = median_ms(reps, || apply(func, x, dim).map(|a| a.len()))? * 1e3;
            if crossover.is_none() && dev < cpu {
                crossover = Some(batch);
            }
            writeln!(
                out,
                "    {batch:>9} {cpu:>12.1} {dev:>12.1} {:>7.2}x",
                cpu / dev
            )
            .ok();
        }
        match crossover {
            Some(b) => writeln!(
                out,
                "  the device wins from {b} rows per batch on (quiver.device.min_rows, default {})",
                device::DEFAULT_MIN_ROWS
            ),
            None => writeln!(
                out,
                "  the device won at no batch size measured: keep quiver.device = cpu here"
            ),
        }
        .ok();
    }
    device::set_policy(session_policy);
    Ok(())
}

fn cpu_policy() -> DevicePolicy {
    DevicePolicy {
        choice: DeviceChoice::Cpu,
        ..DevicePolicy::default()
    }
}

/// Every batch to device `n`.
fn on_device(n: usize, precision: Precision) -> DevicePolicy {
    DevicePolicy {
        choice: DeviceChoice::Cuda(n),
        min_rows: 1,
        precision,
    }
}

fn apply(func: &dyn BatchFunction, values: &[f64], dim: usize) -> Result<arrow::array::ArrayRef> {
    func.apply(&FeatureBatch::new(values, dim)?)
}

/// The median wall time of `reps` runs of `f`, in ms (after one warm-up run).
fn median_ms<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    std::hint::black_box(f()?);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The largest relative difference between two outputs of the same function (numbers or
/// vectors of numbers); class indices compare as numbers.
fn max_rel_diff(a: &arrow::array::ArrayRef, b: &arrow::array::ArrayRef) -> f64 {
    let values = |x: &arrow::array::ArrayRef| -> Vec<f64> {
        use arrow::array::{AsArray, FixedSizeListArray};
        use arrow::datatypes::{Float64Type, Int32Type};
        if let Some(l) = x.as_any().downcast_ref::<FixedSizeListArray>() {
            return l.values().as_primitive::<Float64Type>().values().to_vec();
        }
        if let Some(p) = x.as_primitive_opt::<Float64Type>() {
            return p.values().to_vec();
        }
        if let Some(p) = x.as_primitive_opt::<Int32Type>() {
            return p.values().iter().map(|v| *v as f64).collect();
        }
        Vec::new()
    };
    let (a, b) = (values(a), values(b));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-300))
        .fold(0.0, f64::max)
}
