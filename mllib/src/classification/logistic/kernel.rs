//! The binomial logistic loss and gradient over a batch, in cache-sized blocks of rows: the
//! block's margins (fetching the next block's rows into L2 meanwhile, so the memory stream
//! overlaps the arithmetic), then its losses and residuals as arrays (exp and ln1p written to
//! vectorise, see `quiver_engine::math`), then the gradient as one `Xᵀ·r` over the block, four
//! rows per step. A NaN feature value makes its row's margin NaN, so only a block with a NaN
//! margin is searched for one. Compiled for the baseline target, for AVX2 with FMA and for
//! AVX-512 (the same bits as AVX2; chosen at run time).

use quiver_engine::math::{dot, dot4, madd, prefetch_l2, softplus_sigmoid};
use quiver_engine::vector::first_nan;

/// Rows per block (20 features: 40 KB, in L1/L2 while the block is worked on).
pub(super) const BLOCK: usize = 256;

/// Sums into `acc = [Σw, Σ w·loss, gradient (d coefficients, then the intercept)]` for the rows
/// of `values` (`d` per row) with labels `y` (0 or 1) and weights `w` (all 1 when `None`), at
/// coefficients `coef` (d, then the intercept). Rows of weight 0 contribute nothing. `next`
/// (the rows after these, any length) is fetched into L2 while the margins are computed.
/// Returns the offset in `values` of a NaN value, leaving `acc` as it was, if there is one.
#[inline(always)]
pub(super) fn binomial_block<const FMA: bool>(
    coef: &[f64],
    values: &[f64],
    next: &[f64],
    y: &[f64],
    w: Option<&[f64]>,
    acc: &mut [f64],
) -> Option<usize> {
    let d = coef.len() - 1;
    let n = y.len();
    debug_assert!(n <= BLOCK && values.len() == n * d && acc.len() == d + 3);
    let (c, intercept) = coef.split_at(d);
    let mut margin = [0.0f64; BLOCK];
    // Four rows at a time (independent chains of multiply-adds), then the rest one by one;
    // each step asks for as many of the next rows' cache lines as it reads itself.
    let fours = values.chunks_exact(4 * d);
    let done = n / 4 * 4;
    let mut ahead = next.chunks(4 * d);
    for (m4, x4) in margin[..done].chunks_exact_mut(4).zip(fours) {
        if let Some(lines) = ahead.next() {
            for line in lines.chunks(8) {
                prefetch_l2(line.as_ptr());
            }
        }
        for (m, v) in m4.iter_mut().zip(dot4::<FMA>(c, x4)) {
            *m = intercept[0] + v;
        }
    }
    for (m, x) in margin[done..n]
        .iter_mut()
        .zip(values[done * d..].chunks_exact(d))
    {
        *m = intercept[0] + dot::<FMA>(c, x);
    }
    // A NaN value makes its margin NaN (so does ∞ · 0, which is not one: then the block goes
    // on as before, its loss not finite).
    if margin[..n].iter().fold(false, |a, m| a | m.is_nan())
        && let Some(i) = first_nan(values)
    {
        return Some(i);
    }
    // Per row loss and residual, as arrays (iterators of equal length, no reductions: the loop
    // vectorises), summed afterwards in four lanes.
    const ONES: [f64; BLOCK] = [1.0; BLOCK];
    let w_block = w.unwrap_or(&ONES[..n]);
    let mut loss = [0.0f64; BLOCK];
    let mut resid = [0.0f64; BLOCK];
    for ((((m, t), wr), l), g) in margin[..n]
        .iter()
        .zip(y)
        .zip(w_block)
        .zip(&mut loss[..n])
        .zip(&mut resid[..n])
    {
        let (m, wr) = (*m, *wr);
        let t = if *t == 1.0 { 1.0 } else { 0.0 };
        let (softplus, sigmoid) = softplus_sigmoid::<FMA>(m);
        let live = wr != 0.0;
        *l = if live { wr * (softplus - t * m) } else { 0.0 };
        *g = if live { wr * (sigmoid - t) } else { 0.0 };
    }
    acc[0] += sum4(w_block);
    acc[1] += sum4(&loss[..n]);
    let (grad, icpt) = acc[2..].split_at_mut(d);
    icpt[0] += sum4(&resid[..n]);
    // Xᵀ·r, four rows per step; a group holding a zero-weight row goes one row at a time
    // (skipping it: 0 · ∞ would be NaN).
    let mut r = 0;
    while r + 4 <= n {
        let rs = &resid[r..r + 4];
        let skip = w.is_some_and(|w| w[r..r + 4].contains(&0.0));
        if skip {
            for q in r..r + 4 {
                if w.is_some_and(|w| w[q] != 0.0) {
                    axpy::<FMA>(resid[q], &values[q * d..(q + 1) * d], grad);
                }
            }
        } else {
            let x = &values[r * d..(r + 4) * d];
            let (x0, rest) = x.split_at(d);
            let (x1, rest) = rest.split_at(d);
            let (x2, x3) = rest.split_at(d);
            for ((((g, a), b), c), e) in grad.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
                let s = madd::<FMA>(rs[0], *a, rs[1] * *b);
                let s = madd::<FMA>(rs[2], *c, s);
                *g += madd::<FMA>(rs[3], *e, s);
            }
        }
        r += 4;
    }
    for q in r..n {
        if w.is_none_or(|w| w[q] != 0.0) {
            axpy::<FMA>(resid[q], &values[q * d..(q + 1) * d], grad);
        }
    }
    None
}

/// A sum in four lanes (a fixed order), so that it vectorises.
#[inline(always)]
fn sum4(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = v.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..4 {
            acc[l] += c[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

#[inline(always)]
fn axpy<const FMA: bool>(a: f64, x: &[f64], y: &mut [f64]) {
    for (yj, xj) in y.iter_mut().zip(x) {
        *yj = madd::<FMA>(a, *xj, *yj);
    }
}

/// The whole batch, block by block; stops at a block holding a NaN feature value and sets
/// `nan` to its row.
#[inline(always)]
pub(super) fn binomial<const FMA: bool>(
    coef: &[f64],
    values: &[f64],
    y: &[f64],
    w: Option<&[f64]>,
    acc: &mut [f64],
    nan: &mut Option<usize>,
) {
    let d = coef.len() - 1;
    for (b, ys) in y.chunks(BLOCK).enumerate() {
        let rows = b * BLOCK..b * BLOCK + ys.len();
        let block = &values[rows.start * d..rows.end * d];
        let next = &values[rows.end * d..(rows.end + BLOCK).min(y.len()) * d];
        if let Some(i) =
            binomial_block::<FMA>(coef, block, next, ys, w.map(|w| &w[rows.clone()]), acc)
        {
            *nan = Some(rows.start + i / d);
            return;
        }
    }
}

quiver_engine::fma_kernels!(loss => loss_baseline, loss_avx2, loss_avx512;
    fn binomial_loss(
        coef: &[f64], values: &[f64], y: &[f64], w: Option<&[f64]>, acc: &mut [f64], nan: &mut Option<usize>,
    ) => binomial;
);

/// [`binomial`] with the best compilation this CPU runs.
pub(super) fn binomial_loss_gradient(
    coef: &[f64],
    values: &[f64],
    y: &[f64],
    w: Option<&[f64]>,
    acc: &mut [f64],
    nan: &mut Option<usize>,
) {
    loss::binomial_loss(coef, values, y, w, acc, nan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked kernel (both compilations) agrees with the loss and gradient summed row by
    /// row with the standard library's exp and ln1p: batches around the block and step sizes,
    /// large margins, weights with zeros (and an infinite feature in a zero-weight row).
    #[test]
    fn blocked_kernel_agrees_with_rows_one_at_a_time() {
        let d = 7;
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        let coef: Vec<f64> = (0..=d).map(|j| value(j * 13 + 5) / 3.0).collect();
        for n in [1, 3, 4, 5, 255, 256, 257, 1030] {
            let mut values: Vec<f64> = (0..n * d).map(value).collect();
            let y: Vec<f64> = (0..n).map(|r| (r * 31 % 7 < 3) as u8 as f64).collect();
            let w: Vec<f64> = (0..n)
                .map(|r| {
                    if r % 5 == 2 {
                        0.0
                    } else {
                        0.5 + (r % 3) as f64
                    }
                })
                .collect();
            if n > 2 {
                values[2 * d] = f64::INFINITY; // row 2 has weight 0
            }
            for weights in [None, Some(&w[..])] {
                let mut want = vec![0.0; d + 3];
                for r in 0..n {
                    let wr = weights.map_or(1.0, |w| w[r]);
                    if wr == 0.0 || (weights.is_none() && r == 2 && n > 2) {
                        continue;
                    }
                    let x = &values[r * d..(r + 1) * d];
                    let m = coef[d] + x.iter().zip(&coef).map(|(a, b)| a * b).sum::<f64>();
                    let p = 1.0 / (1.0 + (-m).exp());
                    want[0] += wr;
                    want[1] += wr * (m.max(0.0) + (-m.abs()).exp().ln_1p() - y[r] * m);
                    for j in 0..d {
                        want[2 + j] += wr * (p - y[r]) * x[j];
                    }
                    want[2 + d] += wr * (p - y[r]);
                }
                let mut outs = Vec::new();
                // SAFETY: the AVX2 variant only where the CPU has it.
                unsafe {
                    let mut acc = vec![0.0; d + 3];
                    let mut nan = None;
                    loss_baseline::binomial_loss(&coef, &values, &y, weights, &mut acc, &mut nan);
                    outs.push(acc);
                    #[cfg(target_arch = "x86_64")]
                    if quiver_engine::cpu::has_avx2_fma() {
                        let mut acc = vec![0.0; d + 3];
                        loss_avx2::binomial_loss(&coef, &values, &y, weights, &mut acc, &mut nan);
                        outs.push(acc);
                    }
                    #[cfg(target_arch = "x86_64")]
                    if quiver_engine::cpu::has_avx512_fma() {
                        let mut acc = vec![0.0; d + 3];
                        loss_avx512::binomial_loss(&coef, &values, &y, weights, &mut acc, &mut nan);
                        // The same FMA code with more registers: the AVX2 variant's bits.
                        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&acc), bits(&outs[1]), "n {n}");
                        outs.push(acc);
                    }
                    assert_eq!(nan, None);
                }
                for got in outs {
                    if weights.is_none() && n > 2 {
                        // The unweighted infinite row makes the sums infinite or NaN.
                        assert!(!got[1].is_finite() || !got[2].is_finite());
                        continue;
                    }
                    for (g, v) in got.iter().zip(&want) {
                        assert!(
                            (g - v).abs() <= 1e-12 * v.abs().max(1.0),
                            "n {n}: {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
        // A NaN value is found whatever its coefficient (NaN · 0 is NaN), in the block after
        // one that had to be searched: ∞ · 0 makes a NaN margin without a NaN value.
        for column in [0, 1] {
            let mut nan = None;
            let mut values = vec![1.0; 600 * 2];
            values[2 * 7] = f64::INFINITY;
            values[2 * 300 + column] = f64::NAN;
            let mut acc = [0.0; 5];
            binomial_loss_gradient(
                &[0.0, 0.2, 0.0],
                &values,
                &[0.0; 600],
                None,
                &mut acc,
                &mut nan,
            );
            assert_eq!(nan, Some(300), "column {column}");
            assert_eq!(acc[0], 256.0, "the first block was summed, not the second");
        }
    }
}
