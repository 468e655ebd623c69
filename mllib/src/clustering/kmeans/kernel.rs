//! The nearest-centre kernel: centres laid out in groups of four, 8 rows × 4 centres per step,
//! compiled for the baseline target, for AVX2 with FMA and for AVX-512 (the same operations
//! with twice the registers; chosen at run time). Each step can ask for the matching rows of
//! the next block to be fetched into L2, so a pass's memory stream overlaps its arithmetic.

/// The centres laid out for the nearest-centre kernel: groups of four centres, per feature the
/// four values `−2cⱼ` side by side, and each centre's `‖c‖²` (padding centres get +∞). The
/// nearest centre minimises `‖c‖² − 2x·c`, which the kernel computes for 8 rows × 4 centres at
/// a time with independent accumulators (so the multiply-adds pipeline and vectorise), then the
/// chosen centre's exact `‖x − c‖²` is computed directly (no cancellation in the cost).
#[derive(Debug, Clone, Default)]
pub(super) struct CenterTable {
    pub(super) d: usize,
    pub(super) groups: usize,
    pub(super) neg2t: Vec<f64>,
    pub(super) norms: Vec<f64>,
}

/// Rows per kernel step.
pub(super) const ROWS: usize = 8;

/// Rows per cache-resident sub-block of a batch (20 features: 40 KB).
pub(super) const SUB_BLOCK_ROWS: usize = 256;

impl CenterTable {
    pub(super) fn new(centers: &[f64], d: usize) -> Self {
        let k = centers.len() / d;
        let groups = k.div_ceil(4);
        let mut neg2t = vec![0.0; groups * d * 4];
        let mut norms = vec![f64::INFINITY; groups * 4];
        for (c, center) in centers.chunks_exact(d).enumerate() {
            let (g, l) = (c / 4, c % 4);
            norms[c] = center.iter().map(|v| v * v).sum();
            for (j, v) in center.iter().enumerate() {
                neg2t[(g * d + j) * 4 + l] = -2.0 * v;
            }
        }
        CenterTable {
            d,
            groups,
            neg2t,
            norms,
        }
    }

    /// For every row of `values`: (nearest centre, exact squared distance to it). A row with a
    /// NaN value gets a NaN distance.
    pub(super) fn assign(&self, centers: &[f64], values: &[f64], out: &mut Vec<(usize, f64)>) {
        self.assign_ahead(centers, values, &[], out)
    }

    /// [`CenterTable::assign`], fetching `next` (the rows a pass reads after these, any
    /// length) into L2 as it goes.
    pub(super) fn assign_ahead(
        &self,
        centers: &[f64],
        values: &[f64],
        next: &[f64],
        out: &mut Vec<(usize, f64)>,
    ) {
        out.clear();
        if self.groups == 0 {
            return;
        }
        if centers.len() == self.d && self.d > 0 {
            // One centre (k-means||' first round): the nearest of every row, whose distance
            // is all there is to compute (the kernels' exact distance, the same bits).
            return one_centre(centers, values, out);
        }
        nearest::assign(self, centers, values, next, out)
    }

    /// [`CenterTable::assign`] (every row through the kernel, one centre or more), also
    /// pushing into `second` each row's gap between its second smallest and its smallest
    /// `‖c‖² − 2x·c` (+∞ with one centre): a lower bound, up to rounding, on how much farther
    /// the second nearest centre is, in squared distance. `next` is fetched into L2 as it goes
    /// ([`CenterTable::assign_ahead`]).
    pub(super) fn assign_second(
        &self,
        centers: &[f64],
        values: &[f64],
        next: &[f64],
        out: &mut Vec<(usize, f64)>,
        second: &mut Vec<f64>,
    ) {
        out.clear();
        second.clear();
        if self.groups > 0 {
            nearest::assign_second(self, centers, values, next, out, second);
        }
    }

    /// [`CenterTable::assign_ahead`], then the rows added to Lloyd's sums `s = [cost, counts
    /// (k), sums (k × d)]` in row order, in the same compiled kernel. Returns `false`, leaving
    /// `s` as it was, when a row's distance is NaN (a NaN value: the caller looks for it and
    /// adds the rows itself, [`add_to_sums`], if there is none).
    pub(super) fn assign_sum_ahead(
        &self,
        centers: &[f64],
        values: &[f64],
        next: &[f64],
        out: &mut Vec<(usize, f64)>,
        s: &mut [f64],
    ) -> bool {
        out.clear();
        if self.groups == 0 {
            return true;
        }
        let mut nan = false;
        nearest::assign_sum(self, centers, values, next, out, s, &mut nan);
        !nan
    }
}

/// `‖c‖² − 2x·c` for `R` rows against every group of four centres; keeps the smallest per row
/// (the first centre on ties) and, with `SECOND`, the second smallest value in `second`.
#[inline(always)]
pub(super) fn nearest_rows<const R: usize, const FMA: bool, const SECOND: bool>(
    t: &CenterTable,
    rows: &[f64],
    best: &mut [(f64, usize); R],
    second: &mut [f64; R],
) {
    let d = t.d;
    for g in 0..t.groups {
        let mut acc = [[0.0f64; 4]; R];
        let norms: [f64; 4] = t.norms[g * 4..g * 4 + 4].try_into().unwrap_or([0.0; 4]);
        for a in acc.iter_mut() {
            *a = norms;
        }
        let cols = &t.neg2t[g * d * 4..(g + 1) * d * 4];
        for (j, c) in cols.chunks_exact(4).enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                let xj = rows[r * d + j];
                for l in 0..4 {
                    a[l] = if FMA {
                        xj.mul_add(c[l], a[l])
                    } else {
                        a[l] + xj * c[l]
                    };
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (l, v) in a.iter().enumerate() {
                keep_best::<SECOND>(&mut best[r], &mut second[r], *v, g * 4 + l);
            }
        }
    }
}

/// Takes value `v` of centre `c` into a row's smallest `(value, centre)` (the first centre on
/// ties) and, with `SECOND`, its second smallest value.
///
/// The second smallest is kept without a branch: the distances to the centres other than the
/// nearest are close together where the data has no clear clusters, and a branch on them was
/// mispredicted so often that it doubled the kernel's time. Plain compares (one `maxsd`, one
/// `minsd`): `f64::max` and `min` would add NaN handling, and a NaN row's bounds are never used.
#[inline(always)]
fn keep_best<const SECOND: bool>(best: &mut (f64, usize), second: &mut f64, v: f64, c: usize) {
    if SECOND {
        let above = if v > best.0 { v } else { best.0 };
        *second = if above < *second { above } else { *second };
    }
    if v < best.0 {
        *best = (v, c);
    }
}

/// The whole [`ROWS`]-row blocks of `values`, each block's rows fetched ahead from `next` into
/// L2 and assigned (centre, exact squared distance) into `out`, with AVX2 and FMA: per group of
/// four centres, eight accumulators in registers, one broadcast and one multiply-add per row and
/// feature — the same operations in the same order as `nearest_rows::<_, true, _>`, so the tail
/// rows agree bit for bit. Returns the rows assigned.
///
/// Written out once per compilation (`$features`) by this macro rather than left for the
/// optimiser to inline into each: a block kernel called per 8 rows cost a quarter of a Lloyd
/// pass, and whether it was inlined changed from build to build (it was not, once with AVX2 and
/// once with AVX-512: Lloyd passes 17 → 28 ms). Here the loop over blocks is in the same
/// function as the arithmetic, called once per sub-block. (Keeping the running minimum per lane
/// with compares and blends instead of the scalar scan below was tried: 24 vector registers'
/// worth of state for AVX2's 16, and the spills made Lloyd passes ~25% slower.)
macro_rules! nearest_blocks {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const SECOND: bool, const R: usize>(
            t: &CenterTable,
            centers: &[f64],
            values: &[f64],
            next: &[f64],
            out: &mut Vec<(usize, f64)>,
            second: &mut Vec<f64>,
        ) -> usize {
            use std::arch::x86_64::*;
            let d = t.d;
            assert!(t.neg2t.len() == t.groups * d * 4 && t.norms.len() == t.groups * 4);
            let mut ahead = next.chunks(R * d);
            let blocks = values.chunks_exact(R * d);
            let done = values.len() / (R * d) * R;
            let mut lanes = [0.0f64; 4];
            for rows in blocks {
                if let Some(lines) = ahead.next() {
                    for line in lines.chunks(8) {
                        quiver_engine::math::prefetch_l2(line.as_ptr());
                    }
                }
                let mut best = [(f64::INFINITY, 0usize); R];
                // With SECOND, per row and lane the smallest and second smallest value so
                // far (vector minima and maxima, no branches).
                let mut low = [_mm256_set1_pd(f64::INFINITY); R];
                let mut next_low = low;
                let x = rows.as_ptr();
                for g in 0..t.groups {
                    // SAFETY: every pointer below stays inside `rows` (R × d values),
                    // `t.neg2t` (groups × d × 4) and `t.norms` (groups × 4), asserted above.
                    unsafe {
                        let norms = _mm256_loadu_pd(t.norms.as_ptr().add(g * 4));
                        let mut acc = [norms; R];
                        let cols = t.neg2t.as_ptr().add(g * d * 4);
                        for j in 0..d {
                            let c = _mm256_loadu_pd(cols.add(j * 4));
                            for (r, a) in acc.iter_mut().enumerate() {
                                *a =
                                    _mm256_fmadd_pd(_mm256_broadcast_sd(&*x.add(r * d + j)), c, *a);
                            }
                        }
                        for (r, a) in acc.iter().enumerate() {
                            if SECOND {
                                next_low[r] = _mm256_min_pd(next_low[r], _mm256_max_pd(*a, low[r]));
                                low[r] = _mm256_min_pd(low[r], *a);
                            }
                            _mm256_storeu_pd(lanes.as_mut_ptr(), *a);
                            for (l, v) in lanes.iter().enumerate() {
                                keep_best::<false>(&mut best[r], &mut 0.0, *v, g * 4 + l);
                            }
                        }
                    }
                }
                for (x, (_, c)) in rows.chunks_exact(d).zip(best) {
                    out.push((c, squared_distance_avx(x, &centers[c * d..(c + 1) * d])));
                }
                if SECOND {
                    for ((l, n), b) in low.iter().zip(&next_low).zip(&best) {
                        let (mut lows, mut nexts) = ([0.0f64; 4], [0.0f64; 4]);
                        // SAFETY: four lanes stored into four values.
                        unsafe {
                            _mm256_storeu_pd(lows.as_mut_ptr(), *l);
                            _mm256_storeu_pd(nexts.as_mut_ptr(), *n);
                        }
                        second.push(second_smallest(&lows, &nexts) - b.0);
                    }
                }
            }
            done
        }
    };
}

/// The second smallest of the values whose per-lane smallest are `lows` and per-lane second
/// smallest `nexts`: the smallest of `nexts` and of the `lows` but the smallest. Plain compares
/// and selects, no branches.
#[inline(always)]
fn second_smallest(lows: &[f64; 4], nexts: &[f64; 4]) -> f64 {
    let min = |a: f64, b: f64| if a < b { a } else { b };
    let max = |a: f64, b: f64| if a > b { a } else { b };
    let (a, b) = (min(lows[0], lows[1]), max(lows[0], lows[1]));
    let (c, e) = (min(lows[2], lows[3]), max(lows[2], lows[3]));
    let of_lows = min(max(a, c), min(b, e));
    let of_nexts = min(min(nexts[0], nexts[1]), min(nexts[2], nexts[3]));
    min(of_lows, of_nexts)
}

/// [`squared_distance`] in AVX registers, to the bit: the same four lanes (value `i` of each
/// four into lane `i`), multiplied then added (no FMA, as the scalar loop), summed as it sums
/// them. LLVM leaves the scalar loop partly scalar: this cut a Lloyd pass by 4–5%.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn squared_distance_avx(x: &[f64], c: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = x.len().min(c.len());
    let whole = n / 4 * 4;
    let mut lanes = [0.0f64; 4];
    // SAFETY: every load reads four values below `whole`, inside both slices.
    unsafe {
        let mut acc = _mm256_setzero_pd();
        for i in (0..whole).step_by(4) {
            let t = _mm256_sub_pd(
                _mm256_loadu_pd(x.as_ptr().add(i)),
                _mm256_loadu_pd(c.as_ptr().add(i)),
            );
            acc = _mm256_add_pd(acc, _mm256_mul_pd(t, t));
        }
        _mm256_storeu_pd(lanes.as_mut_ptr(), acc);
    }
    let tail: f64 = x[whole..n]
        .iter()
        .zip(&c[whole..n])
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

nearest_blocks!(nearest_blocks_avx2, "avx2,fma");
nearest_blocks!(nearest_blocks_avx512, "avx2,fma,avx512f,avx512dq,avx512vl");

/// Every row's distance to the one centre `c` (`(0, distance)`), compiled also for AVX2 (the
/// four partial sums one vector; no fused multiply-adds, so the same bits).
fn one_centre(c: &[f64], values: &[f64], out: &mut Vec<(usize, f64)>) {
    #[inline(always)]
    fn each(c: &[f64], values: &[f64], out: &mut Vec<(usize, f64)>) {
        out.extend(
            values
                .chunks_exact(c.len())
                .map(|x| (0, squared_distance(x, c))),
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(c: &[f64], values: &[f64], out: &mut Vec<(usize, f64)>) {
            each(c, values, out)
        }
        if quiver_engine::cpu::has_avx2_fma() {
            // SAFETY: the CPU reports AVX2.
            return unsafe { avx2(c, values, out) };
        }
    }
    each(c, values, out)
}

/// The squared distance, with four independent partial sums.
#[inline(always)]
pub(super) fn squared_distance(x: &[f64], c: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (xs, cs) = (x.chunks_exact(4), c.chunks_exact(4));
    let tail: f64 = xs
        .remainder()
        .iter()
        .zip(cs.remainder())
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    for (a4, b4) in xs.zip(cs) {
        for l in 0..4 {
            acc[l] += (a4[l] - b4[l]) * (a4[l] - b4[l]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

#[inline(always)]
pub(super) fn assign_all<const FMA: bool>(
    t: &CenterTable,
    centers: &[f64],
    values: &[f64],
    next: &[f64],
    out: &mut Vec<(usize, f64)>,
) {
    assign_rows::<FMA, false>(t, centers, values, next, out, &mut Vec::new())
}

/// [`assign_all`], also pushing into `second` each row's gap between its second smallest and
/// its smallest `‖c‖² − 2x·c` (+∞ with one centre): the same assignments and distances, to
/// the bit.
#[inline(always)]
pub(super) fn assign_second_all<const FMA: bool>(
    t: &CenterTable,
    centers: &[f64],
    values: &[f64],
    next: &[f64],
    out: &mut Vec<(usize, f64)>,
    second: &mut Vec<f64>,
) {
    assign_rows::<FMA, true>(t, centers, values, next, out, second)
}

#[inline(always)]
fn assign_rows<const FMA: bool, const SECOND: bool>(
    t: &CenterTable,
    centers: &[f64],
    values: &[f64],
    next: &[f64],
    out: &mut Vec<(usize, f64)>,
    second: &mut Vec<f64>,
) {
    let d = t.d;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is set only in the compilations with AVX2 and FMA, chosen at run time
        // where the CPU has them; the AVX-512 blocks only where it has those too.
        done = unsafe {
            // With SECOND, four rows a step: the per-lane minima of eight rows besides their
            // accumulators spilled registers.
            match (quiver_engine::cpu::has_avx512_fma(), SECOND) {
                (true, true) => {
                    nearest_blocks_avx512::<true, 4>(t, centers, values, next, out, second)
                }
                (true, false) => {
                    nearest_blocks_avx512::<false, ROWS>(t, centers, values, next, out, second)
                }
                (false, true) => {
                    nearest_blocks_avx2::<true, 4>(t, centers, values, next, out, second)
                }
                (false, false) => {
                    nearest_blocks_avx2::<false, ROWS>(t, centers, values, next, out, second)
                }
            }
        };
    }
    if !(cfg!(target_arch = "x86_64") && FMA) {
        let mut ahead = next.chunks(ROWS * d);
        for block in values.chunks_exact(ROWS * d) {
            if let Some(lines) = ahead.next() {
                for line in lines.chunks(8) {
                    quiver_engine::math::prefetch_l2(line.as_ptr());
                }
            }
            let mut best = [(f64::INFINITY, 0); ROWS];
            let mut next_best = [f64::INFINITY; ROWS];
            nearest_rows::<ROWS, FMA, SECOND>(t, block, &mut best, &mut next_best);
            for (x, (_, c)) in block.chunks_exact(d).zip(best) {
                out.push((c, squared_distance(x, &centers[c * d..(c + 1) * d])));
            }
            if SECOND {
                second.extend(next_best.iter().zip(&best).map(|(s, b)| s - b.0));
            }
            done += ROWS;
        }
    }
    for x in values[done * d..].chunks_exact(d) {
        let mut best = [(f64::INFINITY, 0); 1];
        let mut next_best = [f64::INFINITY; 1];
        nearest_rows::<1, FMA, SECOND>(t, x, &mut best, &mut next_best);
        let c = best[0].1;
        out.push((c, squared_distance(x, &centers[c * d..(c + 1) * d])));
        if SECOND {
            second.push(next_best[0] - best[0].0);
        }
    }
}

/// Adds each row of `values` (`d` features) with its `(centre, distance)` from `nearest` to
/// Lloyd's sums `s = [cost, counts (k), sums (k × d)]`, in row order: the same bits wherever it
/// is compiled (only one row's additions go side by side).
#[inline(always)]
pub(super) fn add_to_sums(values: &[f64], d: usize, nearest: &[(usize, f64)], s: &mut [f64]) {
    let k = (s.len() - 1) / (d + 1);
    let (head, sums) = s.split_at_mut(1 + k);
    for (x, &(c, dist)) in values.chunks_exact(d).zip(nearest) {
        head[0] += dist;
        head[1 + c] += 1.0;
        for (a, v) in sums[c * d..(c + 1) * d].iter_mut().zip(x) {
            *a += v;
        }
    }
}

/// [`assign_all`], then the rows added to Lloyd's sums `s` ([`add_to_sums`]) in the same
/// compilation — unless a row's distance is NaN: then `nan` is set and `s` left as it was.
#[inline(always)]
pub(super) fn assign_sum_all<const FMA: bool>(
    t: &CenterTable,
    centers: &[f64],
    values: &[f64],
    next: &[f64],
    out: &mut Vec<(usize, f64)>,
    s: &mut [f64],
    nan: &mut bool,
) {
    assign_all::<FMA>(t, centers, values, next, out);
    *nan = out.iter().fold(false, |a, (_, dist)| a | dist.is_nan());
    if !*nan {
        add_to_sums(values, t.d, out, s);
    }
}

// The kernel compiled for the baseline target and, chosen at run time, AVX2 with FMA or
// AVX-512.
quiver_engine::fma_kernels!(nearest => nearest_baseline, nearest_avx2, nearest_avx512;
    fn assign(t: &CenterTable, centers: &[f64], values: &[f64], next: &[f64], out: &mut Vec<(usize, f64)>) => assign_all;
    fn assign_sum(
        t: &CenterTable, centers: &[f64], values: &[f64], next: &[f64], out: &mut Vec<(usize, f64)>,
        s: &mut [f64], nan: &mut bool,
    ) => assign_sum_all;
    fn assign_second(
        t: &CenterTable, centers: &[f64], values: &[f64], next: &[f64],
        out: &mut Vec<(usize, f64)>, second: &mut Vec<f64>,
    ) => assign_second_all;
);

#[cfg(test)]
mod tests {
    use super::super::nearest;
    use super::*;

    /// The blocked kernel (both compilations) picks the same centre as the direct distance for
    /// every k from 1 to 13 (padding groups included) and row counts around the block size.
    #[test]
    fn kernel_agrees_with_direct_distances() {
        let d = 5;
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        for k in 1..=13 {
            let mut centers: Vec<f64> = (0..k * d).map(|i| value(i * 31 + 7)).collect();
            if k >= 6 {
                // Ties: the last centre repeats the second (another lane and group); the
                // first of equals must win, as in the scalar scan.
                let second = centers[d..2 * d].to_vec();
                centers[(k - 1) * d..].copy_from_slice(&second);
            }
            let table = CenterTable::new(&centers, d);
            for n in [1, 7, 8, 9, 17, 64] {
                let values: Vec<f64> = (0..n * d).map(value).collect();
                let mut kernels: Vec<Vec<(usize, f64)>> = Vec::new();
                let mut out = Vec::new();
                // SAFETY: the AVX2 variant only where the CPU has it.
                unsafe {
                    nearest_baseline::assign(&table, &centers, &values, &[], &mut out);
                    kernels.push(out.clone());
                    #[cfg(target_arch = "x86_64")]
                    if quiver_engine::cpu::has_avx2_fma() {
                        out.clear();
                        nearest_avx2::assign(&table, &centers, &values, &values, &mut out);
                        kernels.push(out.clone());
                    }
                    #[cfg(target_arch = "x86_64")]
                    if quiver_engine::cpu::has_avx512_fma() {
                        out.clear();
                        nearest_avx512::assign(&table, &centers, &values, &[1.0], &mut out);
                        // The same operations as AVX2: the same bits.
                        assert_eq!(out, kernels[1], "k {k} n {n}");
                        kernels.push(out.clone());
                        // Each compilation of the whole blocks, called directly.
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        let no = &mut Vec::new();
                        let done = nearest_blocks_avx2::<false, ROWS>(
                            &table, &centers, &values, &values, &mut a, no,
                        );
                        assert_eq!(done, n / ROWS * ROWS);
                        nearest_blocks_avx512::<false, ROWS>(
                            &table,
                            &centers,
                            &values,
                            &[],
                            &mut b,
                            no,
                        );
                        assert!(no.is_empty());
                        assert_eq!(a, b, "k {k} n {n}");
                        assert_eq!(a[..], out[..done]);
                    }
                    // The kernels' AVX distance is the scalar one to the bit, any length.
                    #[cfg(target_arch = "x86_64")]
                    if quiver_engine::cpu::has_avx2_fma() {
                        for len in 0..=values.len().min(centers.len()).min(13) {
                            let (x, c) = (&values[..len], &centers[..len]);
                            assert_eq!(
                                squared_distance_avx(x, c).to_bits(),
                                squared_distance(x, c).to_bits()
                            );
                        }
                    }
                }
                // With the gaps to the second nearest: the same assignments, to the bit, in
                // each compilation; the gap is the second nearest's squared distance less the
                // nearest's, up to rounding.
                let mut gaps = Vec::new();
                out.clear();
                // SAFETY: the baseline compilation runs on any CPU.
                unsafe {
                    nearest_baseline::assign_second(
                        &table,
                        &centers,
                        &values,
                        &[],
                        &mut out,
                        &mut gaps,
                    )
                };
                assert_eq!(out, kernels[0], "k {k} n {n}");
                table.assign_second(&centers, &values, &values, &mut out, &mut gaps);
                assert_eq!(Some(&out), kernels.last(), "k {k} n {n}");
                for ((x, (c, dist)), gap) in values.chunks_exact(d).zip(&out).zip(&gaps) {
                    let second = centers
                        .chunks_exact(d)
                        .enumerate()
                        .filter(|(j, _)| j != c)
                        .map(|(_, o)| squared_distance(x, o))
                        .fold(f64::INFINITY, f64::min);
                    if k == 1 {
                        assert_eq!(*gap, f64::INFINITY);
                    } else {
                        let scale = 1e-12 * (second + x.iter().map(|v| v * v).sum::<f64>());
                        assert!(
                            (second - dist - gap).abs() <= scale,
                            "{second} {dist} {gap}"
                        );
                    }
                }
                if k == 1 {
                    // One centre takes the direct distance: the kernels' bits.
                    table.assign(&centers, &values, &mut out);
                    assert_eq!(out, kernels[0], "n {n}");
                }
                for got in kernels {
                    assert_eq!(got.len(), n);
                    for (x, (c, dist)) in values.chunks_exact(d).zip(got) {
                        let (want, want_dist) = nearest(x, &centers, d);
                        assert_eq!(c, want, "k {k} n {n}");
                        assert!((dist - want_dist).abs() <= 1e-12 * want_dist.max(1.0));
                    }
                }
            }
        }
    }

    /// Assigning and summing in one compiled kernel gives the bits of the assignment followed
    /// by the sums added one row at a time, in every compilation; a NaN row leaves the sums.
    #[test]
    fn assign_and_sum_equals_assign_then_sum() {
        let d = 20;
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        let k = 10;
        let centers: Vec<f64> = (0..k * d).map(|i| value(i * 31 + 7)).collect();
        let table = CenterTable::new(&centers, d);
        for n in [1, 8, 13, 256] {
            let values: Vec<f64> = (0..n * d).map(|i| value(i + 3)).collect();
            let mut nearest = Vec::new();
            table.assign(&centers, &values, &mut nearest);
            let mut want = vec![0.5; 1 + k * (1 + d)];
            add_to_sums(&values, d, &nearest, &mut want);
            let mut got = vec![0.5; 1 + k * (1 + d)];
            assert!(table.assign_sum_ahead(&centers, &values, &values, &mut nearest, &mut got));
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "n {n}");
            // Each compilation's assign-and-sum against its own assignment, summed row by row.
            type Assign = unsafe fn(&CenterTable, &[f64], &[f64], &[f64], &mut Vec<(usize, f64)>);
            type AssignSum = unsafe fn(
                &CenterTable,
                &[f64],
                &[f64],
                &[f64],
                &mut Vec<(usize, f64)>,
                &mut [f64],
                &mut bool,
            );
            let mut variants: Vec<(Assign, AssignSum)> =
                vec![(nearest_baseline::assign, nearest_baseline::assign_sum)];
            #[cfg(target_arch = "x86_64")]
            if quiver_engine::cpu::has_avx2_fma() {
                variants.push((nearest_avx2::assign, nearest_avx2::assign_sum));
            }
            #[cfg(target_arch = "x86_64")]
            if quiver_engine::cpu::has_avx512_fma() {
                variants.push((nearest_avx512::assign, nearest_avx512::assign_sum));
            }
            for (assign, assign_sum) in variants {
                let mut nan = true;
                let mut v = vec![0.5; 1 + k * (1 + d)];
                let mut a = v.clone();
                // SAFETY: each variant only where the CPU has it (above).
                unsafe {
                    assign_sum(
                        &table,
                        &centers,
                        &values,
                        &[],
                        &mut nearest,
                        &mut v,
                        &mut nan,
                    );
                    assign(&table, &centers, &values, &[], &mut nearest);
                }
                assert!(!nan);
                add_to_sums(&values, d, &nearest, &mut a);
                assert_eq!(bits(&v), bits(&a));
            }
            let mut with_nan = values.clone();
            with_nan[n * d / 2] = f64::NAN;
            let mut left = vec![0.5; 1 + k * (1 + d)];
            assert!(!table.assign_sum_ahead(&centers, &with_nan, &[], &mut nearest, &mut left));
            assert!(left.iter().all(|v| *v == 0.5));
        }
    }
}
