//! Elementary functions written so that a loop over an array of them vectorises: no branches
//! (selects only), no calls, integer work that AVX2 has. Accurate to a few units in the last
//! place over their documented ranges (tested against the standard library), for kernels that
//! evaluate them once per row (the logistic loss, sigmoids). `FMA` picks fused multiply-adds
//! (for the AVX2 + FMA compilation of a kernel, see [`crate::fma_kernels`]) or plain ones.

/// `a · b + c`, fused where the kernel is compiled with FMA.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Asks the CPU to bring the cache line holding `p` into its L2 cache (not L1, where it would
/// push out the block a kernel is working on): a hint for a kernel that streams its rows in
/// blocks to have the next block's lines fetched while it computes on this one, so the loads
/// and the arithmetic overlap. No effect on any result; nothing off x86-64.
#[inline(always)]
pub fn prefetch_l2(p: *const f64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T1)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `a · b` with four independent partial sums (so the multiply-adds pipeline and vectorise),
/// in a fixed order: the same inputs give the same bits everywhere.
#[inline(always)]
pub fn dot<const FMA: bool>(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (xs, ys) = (a.chunks_exact(4), b.chunks_exact(4));
    let mut tail = 0.0;
    for (x, y) in xs.remainder().iter().zip(ys.remainder()) {
        tail = madd::<FMA>(*x, *y, tail);
    }
    for (x, y) in xs.zip(ys) {
        for l in 0..4 {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// [`dot`] of `a` with each of four rows of `rows` (`a.len()` values each, one after another),
/// the rows' multiply-adds interleaved so that four independent chains fill the pipeline
/// instead of one row's chain waiting on itself. Each result has exactly [`dot`]'s bits.
#[inline(always)]
pub fn dot4<const FMA: bool>(a: &[f64], rows: &[f64]) -> [f64; 4] {
    let d = a.len();
    let (x0, rest) = rows.split_at(d);
    let (x1, rest) = rest.split_at(d);
    let (x2, x3) = rest.split_at(d);
    let xs = [x0, x1, x2, x3];
    let whole = d / 4 * 4;
    let mut tail = [0.0f64; 4];
    for (t, x) in tail.iter_mut().zip(xs) {
        for (ai, xi) in a[whole..].iter().zip(&x[whole..]) {
            *t = madd::<FMA>(*ai, *xi, *t);
        }
    }
    let mut acc = [[0.0f64; 4]; 4];
    let chunks = a[..whole]
        .chunks_exact(4)
        .zip(x0[..whole].chunks_exact(4))
        .zip(x1[..whole].chunks_exact(4))
        .zip(x2[..whole].chunks_exact(4))
        .zip(x3[..whole].chunks_exact(4));
    for ((((c, r0), r1), r2), r3) in chunks {
        for l in 0..4 {
            acc[0][l] = madd::<FMA>(c[l], r0[l], acc[0][l]);
            acc[1][l] = madd::<FMA>(c[l], r1[l], acc[1][l]);
            acc[2][l] = madd::<FMA>(c[l], r2[l], acc[2][l]);
            acc[3][l] = madd::<FMA>(c[l], r3[l], acc[3][l]);
        }
    }
    std::array::from_fn(|q| (acc[q][0] + acc[q][1]) + (acc[q][2] + acc[q][3]) + tail[q])
}

/// 1.5 · 2⁵²: adding it rounds a value below 2⁵¹ in magnitude to an integer, which then sits
/// in the low bits of the sum's representation.
const ROUNDER: f64 = 6_755_399_441_055_744.0;
const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// ln 2 split so that `k · LN2_HI` is exact for |k| < 2¹¹.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

/// `eˣ` for `x ≤ 0` (0 below −708, where it would leave the normal range; NaN stays NaN).
/// Range reduction `x = k·ln 2 + r` with |r| ≤ ln 2 / 2, then the Taylor polynomial of degree
/// 13 (truncation below 10⁻¹⁷) and the scale 2ᵏ built in the exponent bits.
#[inline(always)]
pub fn exp_nonpositive<const FMA: bool>(x: f64) -> f64 {
    let xc = if x < -708.0 { -708.0 } else { x };
    let t = madd::<FMA>(xc, LOG2_E, ROUNDER);
    let k = t - ROUNDER;
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, xc));
    // Σ rⁿ/n! for n ≤ 13 in Estrin's scheme: pairs, then powers r², r⁴, r⁸ (a dependency
    // chain of 5 multiply-adds instead of Horner's 13, so rows overlap in the pipeline).
    const C: [f64; 14] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let pair = |i: usize| madd::<FMA>(C[i + 1], r, C[i]);
    let q0 = madd::<FMA>(pair(2), r2, pair(0));
    let q1 = madd::<FMA>(pair(6), r2, pair(4));
    let q2 = madd::<FMA>(pair(10), r2, pair(8));
    let q3 = pair(12);
    let p = madd::<FMA>(madd::<FMA>(q3, r4, q2), r8, madd::<FMA>(q1, r4, q0));
    // The low bits of `t` hold k (two's complement); k + 1023 ∈ [1, 1023] is the exponent.
    let scale = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    let v = p * scale;
    if x < -708.0 { 0.0 } else { v }
}

/// `ln(1 + e)` for `0 ≤ e ≤ 1`, accurate also for tiny `e`: `u = 1 + e` rounded, with the
/// rounding's correction `(e − (u − 1)) / u` added back; `ln u` as `k·ln 2 + 2·atanh(s)` with
/// `s = (f − 1)/(f + 1)`, `f = u` or `u/2` in [√½, √2] (|s| ≤ 0.172, series to s²¹).
#[inline(always)]
pub fn ln_1p_unit<const FMA: bool>(e: f64) -> f64 {
    ln_1p_with::<FMA>(e, 1.0 / (1.0 + e))
}

/// [`ln_1p_unit`] given `1 / (1 + e)` (a caller that needs it anyway saves a division).
#[inline(always)]
pub fn ln_1p_with<const FMA: bool>(e: f64, inv_u: f64) -> f64 {
    let u = 1.0 + e;
    let correction = (e - (u - 1.0)) * inv_u;
    let high = u > std::f64::consts::SQRT_2;
    let f = if high { 0.5 * u } else { u };
    let s = (f - 1.0) / (f + 1.0);
    let z = s * s;
    // 1/(2n + 1) for n = 10 down to 0, Horner in z (short: z ≤ 0.03).
    const C: [f64; 11] = [
        1.0 / 21.0,
        1.0 / 19.0,
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
        1.0,
    ];
    let mut p = C[0];
    for c in &C[1..] {
        p = madd::<FMA>(p, z, *c);
    }
    let k = if high { 1.0 } else { 0.0 };
    madd::<FMA>(
        k,
        LN2_HI,
        madd::<FMA>(k, LN2_LO, madd::<FMA>(2.0 * s, p, correction)),
    )
}

/// `(ln(1 + eᵐ), σ(m))` — the logistic loss's softplus and the sigmoid — from one exponential
/// `e = exp(−|m|)` and one reciprocal `1/(1 + e)`: softplus = max(m, 0) + ln(1 + e), and
/// σ(m) = 1/(1 + e) for m ≥ 0, e/(1 + e) below.
#[inline(always)]
pub fn softplus_sigmoid<const FMA: bool>(m: f64) -> (f64, f64) {
    let e = exp_nonpositive::<FMA>(-m.abs());
    let inv_u = 1.0 / (1.0 + e);
    let softplus = m.max(0.0) + ln_1p_with::<FMA>(e, inv_u);
    let sigmoid = if m >= 0.0 { inv_u } else { e * inv_u };
    (softplus, sigmoid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four rows at once give each row exactly `dot`'s bits, for widths around the lanes.
    #[test]
    fn dot4_has_dots_bits_row_by_row() {
        let value = |i: usize| ((i * 7919 % 1009) as f64 - 500.0) / 37.0;
        for d in [1, 3, 4, 5, 8, 13, 20, 21] {
            let a: Vec<f64> = (0..d).map(|j| value(j * 17 + 3) / 7.0).collect();
            let rows: Vec<f64> = (0..4 * d).map(value).collect();
            for fma in [false, true] {
                let got = if fma {
                    dot4::<true>(&a, &rows)
                } else {
                    dot4::<false>(&a, &rows)
                };
                for (q, x) in rows.chunks_exact(d).enumerate() {
                    let want = if fma {
                        dot::<true>(&a, x)
                    } else {
                        dot::<false>(&a, x)
                    };
                    assert_eq!(got[q].to_bits(), want.to_bits(), "d {d} row {q} fma {fma}");
                }
            }
        }
    }

    fn ulps(a: f64, b: f64) -> f64 {
        if a == b {
            return 0.0;
        }
        (a - b).abs() / (b.abs() * f64::EPSILON)
    }

    fn grid() -> impl Iterator<Item = f64> {
        // Dense near 0, then out to the ends of the ranges, plus a pseudo-random sweep.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let randoms = (0..200_000).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        });
        (0..2000)
            .map(|i| i as f64 * 1e-3)
            .chain((0..400).map(|i| 10f64.powf(-(i as f64) / 10.0)))
            .chain(randoms)
    }

    #[test]
    fn exp_matches_the_standard_library() {
        for fma in [false, true] {
            let mut worst: f64 = 0.0;
            for u in grid() {
                let u = u.min(1.0);
                for x in [-u, -u * 40.0, -u * 708.0] {
                    let got = if fma {
                        exp_nonpositive::<true>(x)
                    } else {
                        exp_nonpositive::<false>(x)
                    };
                    worst = worst.max(ulps(got, x.exp()));
                }
            }
            assert!(worst <= 4.0, "fma {fma}: {worst} ulps");
        }
        assert_eq!(exp_nonpositive::<false>(0.0), 1.0);
        assert_eq!(exp_nonpositive::<false>(-709.0), 0.0);
        assert_eq!(exp_nonpositive::<false>(f64::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive::<false>(f64::NAN).is_nan());
    }

    #[test]
    fn ln_1p_matches_the_standard_library() {
        for fma in [false, true] {
            let mut worst: f64 = 0.0;
            for e in grid() {
                let e = e.min(1.0);
                let got = if fma {
                    ln_1p_unit::<true>(e)
                } else {
                    ln_1p_unit::<false>(e)
                };
                worst = worst.max(ulps(got, e.ln_1p()));
            }
            assert!(worst <= 4.0, "fma {fma}: {worst} ulps");
        }
        assert_eq!(ln_1p_unit::<false>(0.0), 0.0);
        for m in [-800.0, -40.0, -3.5, -1e-9, 0.0, 1e-9, 0.7, 12.0, 800.0] {
            let (softplus, sigmoid) = softplus_sigmoid::<false>(m);
            let want = if m > 0.0 {
                m + (-m).exp().ln_1p()
            } else {
                m.exp().ln_1p()
            };
            assert!(
                ulps(softplus, want) <= 4.0,
                "softplus({m}) = {softplus} vs {want}"
            );
            let want = 1.0 / (1.0 + (-m).exp());
            assert!(
                (sigmoid - want).abs() <= 4.0 * f64::EPSILON * want,
                "σ({m}) = {sigmoid}"
            );
        }
        assert_eq!(ln_1p_unit::<false>(1e-300), 1e-300);
    }
}
