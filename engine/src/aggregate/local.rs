//! The local runner: a statistic over cached record batches, rayon map-reduce, no planning.

use rayon::ThreadPool;
use rayon::prelude::*;

use super::Statistic;
use crate::dataset::{LocalFrame, at_row};
use crate::error::{QuiverError, Result};

/// Rows per parallel task: small enough to balance two to dozens of cores, large enough that
/// the per-task merge is noise.
const TASK_ROWS: usize = 16 * 1024;

/// Runs `stat` over a cached frame on `pool`. Partial states are merged in row order, so the
/// result is the same on every run, whatever the thread count.
pub fn run_local<S: Statistic>(
    frame: &LocalFrame,
    stat: &S,
    pool: &ThreadPool,
) -> Result<S::Output> {
    if frame.dim() != stat.dim() {
        return Err(QuiverError::InvalidParam {
            param: "features".to_string(),
            reason: format!(
                "{} expects {} features per row, the data has {}",
                stat.name(),
                stat.dim(),
                frame.dim()
            ),
        });
    }
    let inputs = stat.inputs();
    frame.check_inputs(inputs.label, inputs.weight)?;
    // (chunk index, first row in chunk, end row in chunk)
    let mut tasks = Vec::new();
    for (i, chunk) in frame.chunks().iter().enumerate() {
        let n = chunk.n_rows();
        let mut start = 0;
        while start < n {
            let end = (start + TASK_ROWS).min(n);
            tasks.push((i, start, end));
            start = end;
        }
    }
    let partials: Vec<Result<S::State>> = pool.install(|| {
        tasks
            .par_iter()
            .map(|&(i, start, end)| {
                let chunk = &frame.chunks()[i];
                // Exactly the inputs the statistic asked for, as in the embedded runner.
                let mut batch = chunk.batch().slice(start, end);
                if !inputs.label {
                    batch.label = None;
                }
                if !inputs.weight {
                    batch.weight = None;
                }
                let mut state = stat.init();
                stat.update(&mut state, &batch)
                    .map_err(|e| at_row(e, chunk.first_row() + start as u64))?;
                Ok(state)
            })
            .collect()
    });
    let mut total = stat.init();
    for partial in partials {
        stat.merge(&mut total, &partial?)?;
    }
    stat.finish(total)
}
