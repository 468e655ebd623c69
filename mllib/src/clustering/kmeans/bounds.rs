//! Hamerly's bounds (G. Hamerly, "Making k-means even faster", SDM 2010) for Lloyd passes over
//! rows this process holds ([`quiver_engine::Prepared::resident`]): per row, its centre and a
//! lower bound on its distance to every other centre, kept from pass to pass. A pass computes
//! the row's exact distance to its centre (the cost and the sums need it anyway); when the
//! other centres are farther — by their bound, lowered by how far they have moved since, or by
//! half the distance between its centre and the nearest other — with room to spare for any
//! rounding of the nearest-centre kernel, the kernel would choose the same centre, and the row
//! skips it. The other rows go through the kernel, which also gives their new bound. The
//! assignments, sums and cost are the full pass's, to the bit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::kernel::{CenterTable, SUB_BLOCK_ROWS, add_to_sums, squared_distance};

/// The rounding allowance, relative. The kernel's `‖c‖² − 2x·c` over `d` features is off by at
/// most about `(d + 2)·2⁻⁵³·(‖x‖ + ‖c‖)²`; the allowance `ROUNDING·(d + 8)·2(‖x − c‖² + 4‖c‖²max)`
/// is thousands of times that, and each bound is also shrunk by `ROUNDING` as it is derived.
const ROUNDING: f64 = 1e-12;

/// The bounds of a fit's Lloyd passes, per batch of rows (keyed by where the batch's values
/// are: they stay there while the fit holds the rows).
#[derive(Debug, Default)]
pub(super) struct Bounds {
    inner: Mutex<Inner>,
    /// Rows passed over with bounds, and those of them the bounds settled.
    bounded: AtomicU64,
    settled: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each Lloyd pass's centres, by pass.
    centres: Vec<Arc<Vec<f64>>>,
    batches: HashMap<(usize, usize), RowBounds>,
}

/// A batch's rows' bounds, for the centres of pass `pass`.
#[derive(Debug)]
struct RowBounds {
    pass: usize,
    nearest: Vec<u32>,
    /// A lower bound on each row's distance (not squared) to every centre but its own.
    lower: Vec<f64>,
}

impl Bounds {
    /// Of the rows passed over with bounds (after each batch's first pass), the share whose
    /// centre the bounds settled without the kernel; `None` before any.
    pub(super) fn settled_share(&self) -> Option<f64> {
        let bounded = self.bounded.load(Ordering::Relaxed);
        (bounded > 0).then(|| self.settled.load(Ordering::Relaxed) as f64 / bounded as f64)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How far the centres moved between two passes: the farthest (its distance and centre), and
/// the farthest of the others.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    most: f64,
    centre: usize,
    others: f64,
}

/// One Lloyd pass's use of the bounds.
#[derive(Debug, Clone)]
pub(super) struct BoundedPass {
    bounds: Arc<Bounds>,
    pass: usize,
    /// Per centre, a quarter of the squared distance to the nearest other centre, shrunk:
    /// a row nearer its centre than half that distance has no nearer centre.
    quarter_gap: Vec<f64>,
    /// `4‖c‖²` of the largest centre.
    four_norm: f64,
}

/// What [`bounded_rows`] works with for one batch.
struct Batch<'a> {
    table: &'a CenterTable,
    centres: &'a [f64],
    quarter_gap: &'a [f64],
    /// `ROUNDING·(d + 8)·2`, `4‖c‖²max`.
    allowance: (f64, f64),
    moved: Moved,
}

impl BoundedPass {
    /// The next pass of `bounds`, with `centres` (`d` features each).
    pub(super) fn new(bounds: &Arc<Bounds>, centres: &[f64], d: usize) -> Self {
        let pass = {
            let mut inner = bounds.inner();
            inner.centres.push(Arc::new(centres.to_vec()));
            inner.centres.len() - 1
        };
        let quarter_gap = centres
            .chunks_exact(d)
            .enumerate()
            .map(|(i, c)| {
                let nearest = centres
                    .chunks_exact(d)
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, o)| squared_distance(c, o))
                    .fold(f64::INFINITY, f64::min);
                nearest / 4.0 * (1.0 - ROUNDING)
            })
            .collect();
        let four_norm = centres
            .chunks_exact(d)
            .map(|c| 4.0 * c.iter().map(|v| v * v).sum::<f64>())
            .fold(0.0, f64::max);
        BoundedPass {
            bounds: Arc::clone(bounds),
            pass,
            quarter_gap,
            four_norm,
        }
    }

    /// How far each centre moved from pass `from` to this one (distances rounded up).
    fn moved_since(&self, from: usize, d: usize) -> Moved {
        let (old, new) = {
            let inner = self.bounds.inner();
            (
                Arc::clone(&inner.centres[from]),
                Arc::clone(&inner.centres[self.pass]),
            )
        };
        let mut m = Moved::default();
        for (c, (a, b)) in old.chunks_exact(d).zip(new.chunks_exact(d)).enumerate() {
            let dist = squared_distance(a, b).sqrt() * (1.0 + ROUNDING);
            if dist > m.most {
                m.others = m.most;
                m = Moved {
                    most: dist,
                    centre: c,
                    others: m.others,
                };
            } else if dist > m.others {
                m.others = dist;
            }
        }
        m
    }

    /// Lloyd's sums for a batch of rows (`values`, `d` features each) into `s` ([`add_to_sums`]),
    /// assigning with the bounds kept for the batch where there are any, and keeping its
    /// bounds for the next pass. `nan_check(block, first row)` is asked to find a NaN value
    /// in a block of rows where a distance came out NaN.
    pub(super) fn sums(
        &self,
        table: &CenterTable,
        centres: &[f64],
        values: &[f64],
        s: &mut [f64],
        nan_check: impl Fn(&[f64], usize) -> quiver_engine::Result<()>,
    ) -> quiver_engine::Result<()> {
        let d = table.d;
        let n = values.len() / d;
        let key = (values.as_ptr() as usize, values.len());
        let kept = self
            .bounds
            .inner()
            .batches
            .remove(&key)
            .filter(|b| b.pass <= self.pass && b.nearest.len() == n);
        let moved = kept.as_ref().map(|b| self.moved_since(b.pass, d));
        let mut rows = kept.unwrap_or_else(|| RowBounds {
            pass: self.pass,
            nearest: vec![0; n],
            lower: vec![0.0; n],
        });
        let batch = Batch {
            table,
            centres,
            quarter_gap: &self.quarter_gap,
            allowance: (ROUNDING * (d as f64 + 8.0) * 2.0, self.four_norm),
            moved: moved.unwrap_or_default(),
        };
        let mut scratch = Scratch::default();
        let mut redone = 0;
        let step = SUB_BLOCK_ROWS * d;
        for (i, block) in values.chunks(step).enumerate() {
            let r = i * SUB_BLOCK_ROWS..i * SUB_BLOCK_ROWS + block.len() / d;
            let nearest = &mut rows.nearest[r.clone()];
            let lower = &mut rows.lower[r];
            let next = values.get((i + 1) * step..).unwrap_or_default();
            let next = &next[..next.len().min(step)];
            if moved.is_some() {
                // The rows are added to the sums there, in the same compilation.
                bounded::rows(&batch, block, next, nearest, lower, &mut scratch, s);
                redone += scratch.redone_rows;
            } else {
                table.assign_second(centres, block, next, &mut scratch.out, &mut scratch.gaps);
                for (j, (&(c, dist), &gap)) in scratch.out.iter().zip(&scratch.gaps).enumerate() {
                    nearest[j] = c as u32;
                    lower[j] = batch.lower_bound(dist, gap);
                }
                add_to_sums(block, d, &scratch.out, s);
            }
            // A NaN value gives a NaN distance: only then is the block searched for it (the
            // rows were added as the Lloyd pass adds them when it finds none).
            if scratch.out.iter().any(|(_, dist)| dist.is_nan()) {
                nan_check(block, i * SUB_BLOCK_ROWS)?;
            }
        }
        if moved.is_some() {
            self.bounds.bounded.fetch_add(n as u64, Ordering::Relaxed);
            self.bounds
                .settled
                .fetch_add((n - redone) as u64, Ordering::Relaxed);
        }
        rows.pass = self.pass;
        self.bounds.inner().batches.insert(key, rows);
        Ok(())
    }
}

impl Batch<'_> {
    /// The rounding allowance for a row at squared distance `dist` from its centre.
    #[inline(always)]
    fn allowance(&self, dist: f64) -> f64 {
        self.allowance.0 * (dist + self.allowance.1)
    }

    /// A lower bound on the distance from a row to every centre but its nearest, from the
    /// squared distance to the nearest and the kernel's gap to the second nearest.
    #[inline(always)]
    fn lower_bound(&self, dist: f64, gap: f64) -> f64 {
        (dist + gap - self.allowance(dist)).max(0.0).sqrt() * (1.0 - ROUNDING)
    }
}

/// Buffers of a batch's sub-blocks: every row's (centre, squared distance), and the rows that
/// go through the kernel (their positions, values, results) and how many there were.
#[derive(Default)]
struct Scratch {
    out: Vec<(usize, f64)>,
    gaps: Vec<f64>,
    redo: Vec<usize>,
    redo_values: Vec<f64>,
    redone: Vec<(usize, f64)>,
    redone_rows: usize,
}

/// A sub-block's rows with bounds: each row's exact squared distance to its centre, the kernel
/// for the rows whose bounds do not settle their centre (gathered after the sweep, while the
/// sub-block is in cache), then the rows added to Lloyd's sums `s` in row order. The sweep
/// fetches the next sub-block (`next`) into L2 a row at a time; whether a row settles is
/// recorded without a branch (as good as random where the data has no clear clusters).
#[inline(always)]
fn bounded_rows<const FMA: bool>(
    b: &Batch<'_>,
    block: &[f64],
    next: &[f64],
    nearest: &mut [u32],
    lower: &mut [f64],
    scratch: &mut Scratch,
    s: &mut [f64],
) {
    let d = b.table.d;
    let Scratch {
        out,
        gaps,
        redo,
        redo_values,
        redone,
        redone_rows,
    } = scratch;
    out.clear();
    let rows = block.len() / d;
    if redo.len() < rows {
        redo.resize(rows, 0);
    }
    let mut n_redo = 0;
    let mut ahead = next.chunks(d);
    for (r, x) in block.chunks_exact(d).enumerate() {
        if let Some(row) = ahead.next() {
            for line in row.chunks(8) {
                quiver_engine::math::prefetch_l2(line.as_ptr());
            }
        }
        let a = nearest[r] as usize;
        let dist = squared_distance(x, &b.centres[a * d..(a + 1) * d]);
        let moved = if a == b.moved.centre {
            b.moved.others
        } else {
            b.moved.most
        };
        let low = (lower[r] - moved) * (1.0 - ROUNDING);
        let need = dist + b.allowance(dist);
        out.push((a, dist));
        let settles = (low > 0.0 && low * low > need) | (b.quarter_gap[a] > need);
        lower[r] = if settles { low } else { lower[r] };
        // Every row is written to the next free place; the count moves on past those that
        // do not settle.
        redo[n_redo] = r;
        n_redo += usize::from(!settles);
    }
    *redone_rows = n_redo;
    if n_redo > 0 {
        redo_values.clear();
        for &r in &redo[..n_redo] {
            redo_values.extend_from_slice(&block[r * d..(r + 1) * d]);
        }
        b.table
            .assign_second(b.centres, redo_values, &[], redone, gaps);
        for ((&r, &(c, dist)), &gap) in redo[..n_redo].iter().zip(redone.iter()).zip(gaps.iter()) {
            out[r] = (c, dist);
            nearest[r] = c as u32;
            lower[r] = b.lower_bound(dist, gap);
        }
    }
    add_to_sums(block, d, out, s);
}

quiver_engine::fma_kernels!(bounded => bounded_baseline, bounded_avx2, bounded_avx512;
    fn rows(
        b: &Batch<'_>, block: &[f64], next: &[f64], nearest: &mut [u32], lower: &mut [f64],
        scratch: &mut Scratch, s: &mut [f64],
    ) => bounded_rows;
);

#[cfg(test)]
mod tests {
    use super::super::*;

    /// Rows about three blobs, with rows repeated, rows exactly and nearly halfway between
    /// two blob centres, and rows far out.
    fn rows(n: usize, d: usize) -> Vec<f64> {
        let mut v = Vec::with_capacity(n * d);
        let mut h = 0x9E37_79B9_7F4A_7C15u64;
        let mut unit = || {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..n {
            let blob = (i % 3) as f64 * 4.0;
            for j in 0..d {
                let x = match i % 11 {
                    // Halfway between the first two blobs' centres, exactly and within rounding.
                    7 => 2.0 + if j == 0 { 1e-15 * (i % 5) as f64 } else { 0.0 },
                    // A repeat of the previous row.
                    9 => v[(i - 1) * d + j],
                    10 => 40.0 * (unit() - 0.5),
                    _ => blob + unit() - 0.5,
                };
                v.push(x);
            }
        }
        v
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Lloyd's update, as the fit makes it.
    fn step(sums: &[f64], centres: &mut [f64], k: usize, d: usize) {
        for c in 0..k {
            let n = sums[1 + c];
            if n > 0.0 {
                for j in 0..d {
                    centres[c * d + j] = sums[1 + k + c * d + j] / n;
                }
            }
        }
    }

    #[test]
    fn bounded_passes_sum_what_full_passes_sum_to_the_bit() {
        for (k, d) in [(1, 3), (3, 2), (7, 5), (12, 9)] {
            let data = rows(3000, d);
            // Batches of several sizes, around the sub-block; the third is passed over only
            // every other pass (its bounds then span two passes' moves).
            let sizes = [700, 1, 256, 257, 1000, 786];
            let mut batches = Vec::new();
            let mut at = 0;
            for n in sizes {
                batches.push(&data[at * d..(at + n) * d]);
                at += n;
            }
            let mut centres: Vec<f64> = data[..k * d].to_vec();
            if k > 3 {
                // Two centres on one point, and one exactly where a row is.
                let (a, b) = centres.split_at_mut(d);
                b[..d].copy_from_slice(a);
            }
            let bounds = Arc::new(Bounds::default());
            for pass in 0..15 {
                let plain = KMeansPass::new(d, centres.clone(), 1, Pass::Sums);
                let mut bounded = plain.clone();
                bounded.bounded = Some(BoundedPass::new(&bounds, &centres, d));
                let mut total = plain.init();
                for (i, batch) in batches.iter().enumerate() {
                    let batch = FeatureBatch::new(batch, d).expect("batch");
                    let (mut a, mut b) = (plain.init(), bounded.init());
                    plain.update(&mut a, &batch).expect("plain");
                    if i == 2 && pass % 2 == 1 {
                        continue;
                    }
                    bounded.update(&mut b, &batch).expect("bounded");
                    assert_eq!(
                        bits(&a.values),
                        bits(&b.values),
                        "k = {k}, d = {d}, pass {pass}, batch {i}"
                    );
                    plain.merge(&mut total, &a).expect("merge");
                }
                step(&total.values, &mut centres, k, d);
            }
            let settled = bounds.settled_share().expect("bounded passes");
            assert!(settled > 0.5, "k = {k}: bounds settled {settled}");
        }
    }

    #[test]
    fn a_nan_is_found_with_or_without_bounds() {
        let d = 4;
        let mut data = rows(600, d);
        let centres = data[..3 * d].to_vec();
        let bounds = Arc::new(Bounds::default());
        // Each call: the next Lloyd pass with the bounds, for the same centres.
        let next_pass = || {
            let mut stat = KMeansPass::new(d, centres.clone(), 1, Pass::Sums);
            stat.bounded = Some(BoundedPass::new(&bounds, &centres, d));
            stat
        };
        let stat = next_pass();
        let mut s = stat.init();
        stat.update(&mut s, &FeatureBatch::new(&data, d).expect("batch"))
            .expect("first pass");
        data[517 * d + 2] = f64::NAN;
        let stat = next_pass();
        let mut s = stat.init();
        // The same values' address, so the batch's bounds are used.
        let err = stat
            .update(&mut s, &FeatureBatch::new(&data, d).expect("batch"))
            .expect_err("a NaN");
        assert!(
            matches!(
                err,
                QuiverError::InvalidValueInBatch {
                    row_in_batch: 517,
                    ..
                }
            ),
            "{err}"
        );
    }
}
