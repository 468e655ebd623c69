//! `quiver bench trees`: boosted trees and a random forest fitted on the rows of
//! `quiver bench algorithms` (binary class label), with the fit's reading and binning included,
//! a batch predict, and the feature summary over the same cached rows as the per-pass
//! baseline. `--export` writes the rows so that LightGBM and XGBoost can be run on them
//! (scripts/bench_trees.py runs all of it in one invocation).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use quiver_mllib::{Estimator, GBTClassifier, RandomForestClassifier, Transformer};

use super::bench::{AlgorithmsBench, algorithm_batches, time_predict};
use crate::{Dataset, QuiverError, QuiverSession, Result, Summarizer};

/// Options of `quiver bench trees`.
#[derive(Debug, Clone)]
pub struct TreesBench {
    pub rows: usize,
    pub features: usize,
    /// Boosting rounds.
    pub rounds: usize,
    /// Depth of the boosted trees.
    pub depth: usize,
    pub bins: usize,
    /// Trees of the forest.
    pub trees: usize,
    pub forest_depth: usize,
    pub seed: u64,
    pub export: Option<String>,
}

impl Default for TreesBench {
    fn default() -> Self {
        TreesBench {
            rows: 1_000_000,
            features: 20,
            rounds: 20,
            depth: 5,
            bins: 32,
            trees: 20,
            forest_depth: 8,
            seed: 42,
            export: None,
        }
    }
}

/// The area under the ROC curve of `scores` for the 0/1 `labels` (ties share their rank).
fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|k| labels[order[*k]] == 1.0).count() as f64 * rank;
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l == 1.0).count() as f64;
    let neg = labels.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The probability of class 1 and the label of every row of `scored`.
async fn scores(scored: &Dataset) -> Result<(Vec<f64>, Vec<f64>)> {
    let batches = scored
        .dataframe()
        .clone()
        .select_columns(&["probability", "class"])?
        .collect()
        .await?;
    let (mut p, mut y) = (Vec::new(), Vec::new());
    for b in batches {
        let probs = b.column(0).as_fixed_size_list();
        let values = probs.values().as_primitive::<Float64Type>();
        p.extend((0..probs.len()).map(|r| values.value(r * 2 + 1)));
        y.extend_from_slice(b.column(1).as_primitive::<Float64Type>().values());
    }
    Ok((p, y))
}

pub async fn trees(session: &QuiverSession, opts: &TreesBench, out: &mut dyn Write) -> Result<()> {
    let (rows, dim) = (opts.rows, opts.features);
    let data = AlgorithmsBench {
        rows,
        features: dim,
        seed: opts.seed,
        ..AlgorithmsBench::default()
    };
    let batches = algorithm_batches(&data, session.config().batch_size)?;
    if let Some(path) = &opts.export {
        let written = session
            .write_parquet(session.from_batches(batches.clone(), 1)?, path)
            .await?;
        writeln!(out, "wrote {written} rows to {path}").ok();
    }
    let threads = session.config().compute_threads;
    writeln!(
        out,
        "bench trees: {rows} rows x {dim} features, binary label, {threads} threads, seed {}",
        opts.seed
    )
    .ok();
    let ds = Dataset::new(session.from_batches(batches, session.config().target_partitions)?)
        .with_features(["features"])?
        .with_label("class")?;
    let mllib_err = |e: quiver_mllib::MllibError| QuiverError::internal(e.to_string());

    let prepared = session.prepare_iterative(&ds, session.runner()).await?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(prepared.aggregate(Arc::new(Summarizer::new(dim))).await?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let floor = times[2];
    let line = |out: &mut dyn Write, case: &str, ms: f64, extra: String| {
        writeln!(
            out,
            "  {case:<34} {ms:>10.1} ms {:>8.2}x summary   {extra}",
            ms / floor
        )
        .ok();
    };
    line(out, "summary pass", floor, "median of 5".to_string());

    let t = Instant::now();
    let gbt = GBTClassifier::new()
        .max_iter(opts.rounds as u64)
        .max_depth(opts.depth as u64)
        .max_bins(opts.bins as u64)
        .step_size(0.1)
        .fit(session, &ds)
        .await
        .map_err(mllib_err)?;
    let fit_ms = t.elapsed().as_secs_f64() * 1e3;
    let scored = gbt.transform(&ds).map_err(mllib_err)?;
    let (p, y) = scores(&scored).await?;
    line(
        out,
        &format!(
            "gbt fit ({} rounds, depth {}, {} bins)",
            opts.rounds, opts.depth, opts.bins
        ),
        fit_ms,
        format!("train AUC {:.4}", auc(&p, &y)),
    );
    let ms = time_predict(&scored, "prediction").await?;
    line(
        out,
        "gbt predict",
        ms,
        format!("{:.1}M rows/s", rows as f64 / ms / 1e3),
    );

    let t = Instant::now();
    let rf = RandomForestClassifier::new()
        .num_trees(opts.trees as u64)
        .max_depth(opts.forest_depth as u64)
        .max_bins(opts.bins as u64)
        .seed(opts.seed)
        .fit(session, &ds)
        .await
        .map_err(mllib_err)?;
    let fit_ms = t.elapsed().as_secs_f64() * 1e3;
    let (p, y) = scores(&rf.transform(&ds).map_err(mllib_err)?).await?;
    line(
        out,
        &format!(
            "forest fit ({} trees, depth {})",
            opts.trees, opts.forest_depth
        ),
        fit_ms,
        format!("train AUC {:.4}", auc(&p, &y)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), 0.5);
    }
}
