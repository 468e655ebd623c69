//! CPU feature detection and multiversioned kernels: the one place that knows which vector
//! extensions this process may use. A hot loop is written once as a function generic over
//! `const FMA: bool`; [`fma_kernels!`](crate::fma_kernels) compiles it for the baseline target
//! and, on x86-64, with AVX2 and FMA enabled (and, where asked, also with AVX-512), and the
//! caller picks one at run time with [`has_avx2_fma`] / [`has_avx512_fma`].

use std::sync::OnceLock;

/// Whether every one of `features` is detected on this CPU (never off x86-64), asked once per
/// process per `cell`.
#[allow(unused_variables)]
fn detected(cell: &OnceLock<bool>, features: &[&str]) -> bool {
    *cell.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            features.iter().all(|f| match *f {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
                "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                _ => false,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU runs AVX2 and FMA instructions (detected once per process). Only then may
/// the `avx2` variants of [`fma_kernels!`](crate::fma_kernels) be called.
pub fn has_avx2_fma() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    detected(&DETECTED, &["avx2", "fma"])
}

/// Whether this CPU runs AVX-512 F and DQ instructions (64-bit lanes, their multiplies),
/// detected once per process.
pub fn has_avx512dq() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    detected(&DETECTED, &["avx512f", "avx512dq"])
}

/// Whether this CPU runs what the `avx512` variants of [`fma_kernels!`](crate::fma_kernels)
/// are compiled for: AVX-512 F, DQ and VL (32 vector registers, also at 256 bits) besides
/// AVX2 and FMA. Detected once per process.
pub fn has_avx512_fma() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    detected(
        &DETECTED,
        &["avx2", "fma", "avx512f", "avx512dq", "avx512vl"],
    )
}

/// Compiles kernels twice, as two modules of the calling module: `$baseline` for the baseline
/// target and (x86-64 only) `$avx2` with AVX2 and FMA enabled. Each
/// `fn name(args) => target;` becomes `unsafe fn name(args)` in both, calling
/// `target::<false>` / `target::<true>` (a function of the calling module generic over
/// `const FMA: bool`, best `#[inline(always)]` so its body is compiled with the features).
/// The `$avx2` variants are sound to call only where [`has_avx2_fma`] holds; the baseline
/// ones always are (they are `unsafe` to share the signature).
///
/// With a third module name, `$avx512` is compiled as well, with AVX-512 F, DQ and VL enabled
/// besides AVX2 and FMA (callable where [`has_avx512_fma`] holds): the same `FMA` code, so the
/// same bits, with twice the vector registers (a kernel whose constants and temporaries spill
/// with sixteen keeps them in registers).
///
/// Written `fma_kernels!(name => $baseline, …; …)`, it also makes a module `name` whose safe
/// functions, one per kernel and of the same signature, run the best compilation this CPU has
/// (AVX-512, then AVX2, then the baseline): what callers use, leaving the compilations
/// themselves to tests that compare them.
#[macro_export]
macro_rules! fma_kernels {
    ($dispatch:ident => $baseline:ident, $avx2:ident, $avx512:ident; $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $target:ident;)+) => {
        $crate::fma_kernels!($baseline, $avx2, $avx512; $(fn $name($($arg: $ty),*) => $target;)+);
        $crate::fma_kernels!(@dispatch $dispatch; $baseline, $avx2, $avx512; $(fn $name($($arg: $ty),*);)+);
    };
    ($dispatch:ident => $baseline:ident, $avx2:ident; $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $target:ident;)+) => {
        $crate::fma_kernels!($baseline, $avx2; $(fn $name($($arg: $ty),*) => $target;)+);
        // Where the CPU has AVX-512 too, the AVX2 compilation.
        $crate::fma_kernels!(@dispatch $dispatch; $baseline, $avx2, $avx2; $(fn $name($($arg: $ty),*);)+);
    };
    (@dispatch $dispatch:ident; $baseline:ident, $avx2:ident, $avx512:ident; $(fn $name:ident($($arg:ident: $ty:ty),*);)+) => {
        /// Each kernel in the best compilation this CPU runs.
        mod $dispatch {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[inline]
                pub(super) fn $name($($arg: $ty),*) {
                    // SAFETY: each compilation runs only where the CPU reports its features.
                    unsafe {
                        #[cfg(target_arch = "x86_64")]
                        if $crate::cpu::has_avx512_fma() {
                            return super::$avx512::$name($($arg),*);
                        }
                        #[cfg(target_arch = "x86_64")]
                        if $crate::cpu::has_avx2_fma() {
                            return super::$avx2::$name($($arg),*);
                        }
                        super::$baseline::$name($($arg),*)
                    }
                }
            )+
        }
    };
    ($baseline:ident, $avx2:ident, $avx512:ident; $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $target:ident;)+) => {
        $crate::fma_kernels!($baseline, $avx2; $(fn $name($($arg: $ty),*) => $target;)+);
        #[cfg(target_arch = "x86_64")]
        mod $avx512 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx2,fma,avx512f,avx512dq,avx512vl")]
                pub(super) unsafe fn $name($($arg: $ty),*) {
                    super::$target::<true>($($arg),*)
                }
            )+
        }
    };
    ($baseline:ident, $avx2:ident; $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $target:ident;)+) => {
        mod $baseline {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[inline]
                pub(super) unsafe fn $name($($arg: $ty),*) {
                    super::$target::<false>($($arg),*)
                }
            )+
        }
        #[cfg(target_arch = "x86_64")]
        mod $avx2 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[target_feature(enable = "avx2,fma")]
                pub(super) unsafe fn $name($($arg: $ty),*) {
                    super::$target::<true>($($arg),*)
                }
            )+
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn sum_into<const FMA: bool>(xs: &[f64], out: &mut f64) {
        *out = xs.iter().fold(
            0.0,
            |acc, x| if FMA { x.mul_add(1.0, acc) } else { acc + x },
        );
    }

    crate::fma_kernels!(best => plain, fast; fn sum(xs: &[f64], out: &mut f64) => sum_into;);

    #[test]
    fn both_variants_compute_the_same() {
        let xs = [1.0, 2.5, -0.5];
        let (mut a, mut b) = (0.0, 0.0);
        // SAFETY: the baseline variant runs anywhere; the AVX2 one only where detected.
        unsafe {
            plain::sum(&xs, &mut a);
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                fast::sum(&xs, &mut b);
            } else {
                b = a;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            b = a;
        }
        assert_eq!(a, 3.0);
        assert_eq!(a, b);
        let mut c = 0.0;
        best::sum(&xs, &mut c);
        assert_eq!(c, a);
        assert_eq!(has_avx2_fma(), has_avx2_fma());
    }
}
