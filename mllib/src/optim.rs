//! L-BFGS for smooth objectives and OWL-QN (orthant-wise limited-memory quasi-Newton, Andrew
//! and Gao 2007) when an L1 term is added, for objectives whose value and gradient come from
//! one aggregate pass each (the distributed loop: the driver holds the iterate, every
//! evaluation is a data pass). Written here rather than taken from a crate because the
//! evaluation is async and remote.

use std::future::Future;
use std::sync::Arc;

use crate::error::Result;

/// Outcome of a minimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    pub x: Vec<f64>,
    /// Objective at `x`, the L1 term included.
    pub value: f64,
    /// Objective after each accepted iteration (the first entry is at the start point).
    pub history: Vec<f64>,
    pub iterations: usize,
    /// Evaluations of the objective (data passes, in the distributed loop).
    pub evaluations: usize,
    pub converged: bool,
    pub reason: String,
}

/// Relative changes of the objective this small are rounding noise (a few ulps).
const NOISE: f64 = 8.0 * f64::EPSILON;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises the smooth `f` (returning value and gradient) from `x0` with L-BFGS (memory `m`)
/// and a backtracking Armijo line search. Stops when the relative decrease of the value falls
/// below `tol`, the gradient vanishes, or after `max_iter` iterations.
pub async fn lbfgs<F, Fut>(
    f: F,
    x0: Vec<f64>,
    m: usize,
    max_iter: usize,
    tol: f64,
) -> Result<Minimum>
where
    F: FnMut(Vec<f64>) -> Fut,
    Fut: Future<Output = Result<(f64, Vec<f64>)>>,
{
    owlqn(f, x0, &[], m, max_iter, tol).await
}

/// The L1 weight of coordinate `i` (`l1` may be shorter than `x`: missing weights are 0).
fn l1_at(l1: &[f64], i: usize) -> f64 {
    l1.get(i).copied().unwrap_or(0.0)
}

/// `Σ l1ᵢ |xᵢ|`.
fn l1_norm(l1: &[f64], x: &[f64]) -> f64 {
    l1.iter().zip(x).map(|(c, v)| c * v.abs()).sum()
}

/// The pseudo-gradient of `f + Σ l1ᵢ|xᵢ|`: the gradient where the objective is differentiable,
/// else the one-sided derivative that descends, or 0 at a kink no direction improves.
fn pseudo_gradient(l1: &[f64], x: &[f64], g: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(g)
        .enumerate()
        .map(|(i, (&xi, &gi))| {
            let c = l1_at(l1, i);
            if c == 0.0 {
                gi
            } else if xi > 0.0 {
                gi + c
            } else if xi < 0.0 {
                gi - c
            } else if gi + c < 0.0 {
                gi + c
            } else if gi - c > 0.0 {
                gi - c
            } else {
                0.0
            }
        })
        .collect()
}

/// Minimises `f(x) + Σ l1ᵢ |xᵢ|` for smooth `f` (value and gradient) from `x0` with OWL-QN:
/// L-BFGS directions from the pseudo-gradient, kept in the orthant of the current point, and a
/// line search that projects every trial point back onto that orthant (coordinates that would
/// cross zero stop at zero). With no L1 weights this is plain L-BFGS.
pub async fn owlqn<F, Fut>(
    f: F,
    x0: Vec<f64>,
    l1: &[f64],
    m: usize,
    max_iter: usize,
    tol: f64,
) -> Result<Minimum>
where
    F: FnMut(Vec<f64>) -> Fut,
    Fut: Future<Output = Result<(f64, Vec<f64>)>>,
{
    owlqn_observed(f, x0, l1, m, max_iter, tol, None).await
}

/// The model of a point, for the fit's progress hook (see [`crate::progress`]).
pub type PointModel<'a> = &'a (dyn Fn(&[f64]) -> Result<Arc<dyn crate::Transformer>> + Send + Sync);

/// [`owlqn`], offering the model of each iterate to `progress` (iteration 1, 2, …).
pub async fn owlqn_observed<F, Fut>(
    mut f: F,
    x0: Vec<f64>,
    l1: &[f64],
    m: usize,
    max_iter: usize,
    tol: f64,
    progress: Option<(&Arc<dyn crate::progress::Progress>, PointModel<'_>)>,
) -> Result<Minimum>
where
    F: FnMut(Vec<f64>) -> Fut,
    Fut: Future<Output = Result<(f64, Vec<f64>)>>,
{
    let mut x = x0;
    let (smooth, mut g) = f(x.clone()).await?;
    let mut evaluations = 1;
    let mut fx = smooth + l1_norm(l1, &x);
    let mut history = vec![fx];
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let mut reason = format!("reached max_iter = {max_iter}");
    let mut converged = false;
    // The curvature scale `s·y / y·y` of the last kept pair: the initial inverse Hessian of the
    // two-loop recursion, and — as it outlives a restart — the scale of a steepest descent step
    // from one (rather than unit length, which near the minimum overshoots by orders of
    // magnitude and then backtracks a tenth per pass). Before any pair: unit length.
    let mut scale: Option<f64> = None;
    while iterations < max_iter {
        let pg = pseudo_gradient(l1, &x, &g);
        let gnorm = dot(&pg, &pg).sqrt();
        if gnorm <= 1e-12 * fx.abs().max(1.0) {
            reason = "gradient vanished".to_string();
            converged = true;
            break;
        }
        // Two-loop recursion: d = −H pg.
        let mut q = pg.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = scale.unwrap_or(1.0 / gnorm.max(1e-300));
        for v in q.iter_mut() {
            *v *= gamma;
        }
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alpha[i] - beta) * sj;
            }
        }
        // Keep only the components that descend along the pseudo-gradient.
        let mut d: Vec<f64> = q
            .iter()
            .zip(&pg)
            .enumerate()
            .map(|(i, (v, p))| {
                if l1_at(l1, i) > 0.0 && v * p <= 0.0 {
                    0.0
                } else {
                    -v
                }
            })
            .collect();
        if dot(&pg, &d) >= 0.0 {
            // Not a descent direction (curvature lost): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = pg.iter().map(|v| -v * gamma).collect();
        }
        // The orthant the step stays in: the sign of x, or of the descent where x is 0.
        let orthant: Vec<f64> = x
            .iter()
            .zip(&pg)
            .map(|(&xi, &p)| {
                if xi != 0.0 {
                    xi.signum()
                } else if p != 0.0 {
                    -p.signum()
                } else {
                    0.0 // f64::signum(0.0) is 1: a coordinate with no descent stays at zero
                }
            })
            .collect();
        let mut step = 1.0;
        let mut accepted = None;
        // Below this step the trial point equals x to rounding: nothing left to find.
        let x_norm = dot(&x, &x).sqrt();
        let min_step = 1e-15 * x_norm.max(1.0) / dot(&d, &d).sqrt().max(1e-300);
        while step >= min_step {
            let xn: Vec<f64> = x
                .iter()
                .zip(&d)
                .enumerate()
                .map(|(i, (a, b))| {
                    let v = a + step * b;
                    if l1_at(l1, i) > 0.0 && v * orthant[i] <= 0.0 {
                        0.0
                    } else {
                        v
                    }
                })
                .collect();
            let (smooth_n, gn) = f(xn.clone()).await?;
            evaluations += 1;
            let fn_ = smooth_n + l1_norm(l1, &xn);
            let moved: f64 = pg
                .iter()
                .zip(xn.iter().zip(&x))
                .map(|(p, (a, b))| p * (a - b))
                .sum();
            if fn_.is_finite() && fn_ <= fx + 1e-4 * moved && fn_ < fx {
                accepted = Some((xn, fn_, gn));
                break;
            }
            if (fn_ - fx).abs() <= NOISE * fx.abs() {
                // Indistinguishable from f(x) in floating point: shorter steps cannot show a
                // decrease either.
                break;
            }
            // Backtrack to the minimum of the quadratic through f(0), its slope and f(step),
            // kept within [0.1, 0.5] of the step: a long overshoot shrinks in a few passes
            // rather than one halving per pass.
            let slope = dot(&pg, &d);
            let curvature = fn_ - fx - slope * step;
            step = if fn_.is_finite() && curvature > 0.0 {
                (-slope * step * step / (2.0 * curvature)).clamp(0.1 * step, 0.5 * step)
            } else {
                0.1 * step
            };
        }
        let Some((xn, fn_, gn)) = accepted else {
            if !s_hist.is_empty() {
                // A stale curvature model (or, with L1, a direction the orthant constraints cut
                // down to nothing): retry once from steepest descent.
                s_hist.clear();
                y_hist.clear();
                continue;
            }
            reason = "line search found no decrease".to_string();
            converged = true;
            break;
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
            scale = Some(dot(&s, &y) / dot(&y, &y));
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > m {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let decrease = (fx - fn_) / fx.abs().max(1e-300);
        x = xn;
        fx = fn_;
        g = gn;
        iterations += 1;
        history.push(fx);
        if let Some((p, model)) = progress {
            crate::progress::offer(Some(p), iterations as u64, || model(&x)).await?;
        }
        if decrease < tol {
            reason = format!("relative decrease below tol = {tol}");
            converged = true;
            break;
        }
        if decrease <= NOISE {
            reason = "objective at machine precision".to_string();
            converged = true;
            break;
        }
    }
    Ok(Minimum {
        x,
        value: fx,
        history,
        iterations,
        evaluations,
        converged,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rosenbrock function: minimum 0 at (1, 1).
    #[tokio::test]
    async fn minimises_rosenbrock() {
        let f = |x: Vec<f64>| async move {
            let (a, b) = (x[0], x[1]);
            let v = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
            let g = vec![
                -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
                200.0 * (b - a * a),
            ];
            Ok((v, g))
        };
        let m = lbfgs(f, vec![-1.2, 1.0], 10, 500, 1e-15).await.unwrap();
        assert!(
            (m.x[0] - 1.0).abs() < 1e-5 && (m.x[1] - 1.0).abs() < 1e-5,
            "{m:?}"
        );
        assert!(m.history.windows(2).all(|w| w[1] <= w[0]));
    }

    /// At the minimum to rounding (tol 0: the fit runs until no step shows a decrease), the
    /// last evaluations find nothing: a restart from steepest descent then takes a step of the
    /// curvature's scale, not unit length, so it gives up within three passes rather than
    /// backtracking a tenth per pass from a point far up the objective (ten passes here).
    #[tokio::test]
    async fn at_the_minimum_a_restart_costs_a_few_passes() {
        // A logistic loss over 2000 rows of 4 features (x_j uniform in [j − 1, j + 1), the
        // class by a linear score with a jitter): smooth, strictly convex, minimum finite.
        let (n, d) = (2000, 4);
        let mut state = 12345u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let x: Vec<f64> = (0..d).map(|j| j as f64 - 1.0 + 2.0 * uniform()).collect();
            let score: f64 = x
                .iter()
                .enumerate()
                .map(|(j, v)| (j + 1) as f64 * (v - j as f64))
                .sum();
            rows.push((
                x,
                if score + 4.0 * (uniform() - 0.5) > 0.0 {
                    1.0
                } else {
                    0.0
                },
            ));
        }
        let rows = Arc::new(rows);
        let values = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, seen) = (Arc::clone(&rows), Arc::clone(&values));
        let f = move |w: Vec<f64>| {
            let (rows, seen) = (Arc::clone(&r), Arc::clone(&seen));
            async move {
                let mut v = 0.0;
                let mut g = vec![0.0; d + 1];
                for (x, y) in rows.iter() {
                    let m = w[d] + x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                    v += m.exp().ln_1p() - y * m;
                    let p = 1.0 / (1.0 + (-m).exp());
                    for (gj, xj) in g.iter_mut().zip(x.iter().chain([&1.0])) {
                        *gj += (p - y) * xj / n as f64;
                    }
                }
                seen.lock().unwrap().push(v / n as f64);
                Ok((v / n as f64, g))
            }
        };
        let m = lbfgs(f, vec![0.0; d + 1], 10, 200, 0.0).await.unwrap();
        let values = values.lock().unwrap();
        // The evaluations after the one that found the final point.
        let found = values.iter().position(|v| *v == m.value).unwrap();
        let trailing = values.len() - 1 - found;
        assert!(m.converged, "{m:?}");
        assert!(
            trailing <= 3,
            "{trailing} evaluations after the last accepted point: {m:?}"
        );
    }

    /// A coupled quadratic `½ xᵀAx − bᵀx` with an L1 term: the answer satisfies the lasso's
    /// optimality conditions (gᵢ = −cᵢ sign xᵢ where xᵢ ≠ 0, |gᵢ| ≤ cᵢ where xᵢ = 0), and a
    /// separable one matches the closed-form soft threshold.
    #[tokio::test]
    async fn owlqn_solves_lasso_problems() {
        let n = 6;
        // A = MᵀM + I for a fixed M: symmetric positive definite.
        let mm: Vec<f64> = (0..n * n)
            .map(|k| ((k * 7 % 11) as f64 - 5.0) / 4.0)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| mm[k * n + i] * mm[k * n + j]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let b = vec![3.0, -0.2, 1.5, 0.1, -2.5, 0.05];
        let c = vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.0];
        let (a2, b2) = (a.clone(), b.clone());
        let f = move |x: Vec<f64>| {
            let (a, b) = (a2.clone(), b2.clone());
            async move {
                let g: Vec<f64> = (0..n)
                    .map(|i| (0..n).map(|j| a[i * n + j] * x[j]).sum::<f64>() - b[i])
                    .collect();
                let v = 0.5 * (0..n).map(|i| x[i] * (g[i] + b[i])).sum::<f64>() - dot(&b, &x);
                Ok((v, g))
            }
        };
        let m = owlqn(f, vec![0.0; n], &c, 10, 1000, 1e-16).await.unwrap();
        let g: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * m.x[j]).sum::<f64>() - b[i])
            .collect();
        let zeros = m.x.iter().filter(|v| **v == 0.0).count();
        assert!(zeros >= 1, "the L1 term should zero a coordinate: {m:?}");
        for i in 0..n {
            if m.x[i] != 0.0 {
                assert!(
                    (g[i] + c[i] * m.x[i].signum()).abs() < 1e-7,
                    "{i}: {m:?} {g:?}"
                );
            } else {
                assert!(g[i].abs() <= c[i] + 1e-9, "{i}: {m:?} {g:?}");
            }
        }
        assert!(m.history.windows(2).all(|w| w[1] <= w[0]));

        // Separable: ½ Σ aᵢ(xᵢ − tᵢ)² + c Σ|xᵢ| has xᵢ = sign(tᵢ) max(|tᵢ| − c/aᵢ, 0).
        let (aa, t) = (vec![1.0, 2.0, 4.0, 0.5], vec![2.0, -0.1, -3.0, 0.4]);
        let (aa2, t2) = (aa.clone(), t.clone());
        let f = move |x: Vec<f64>| {
            let (aa, t) = (aa2.clone(), t2.clone());
            async move {
                let v = (0..4).map(|i| 0.5 * aa[i] * (x[i] - t[i]).powi(2)).sum();
                let g = (0..4).map(|i| aa[i] * (x[i] - t[i])).collect();
                Ok((v, g))
            }
        };
        let m = owlqn(f, vec![0.0; 4], &[0.3; 4], 10, 1000, 1e-16)
            .await
            .unwrap();
        for i in 0..4 {
            let want = t[i].signum() * (t[i].abs() - 0.3 / aa[i]).max(0.0);
            // The objective is flat to rounding within ~√ε of the minimum.
            assert!((m.x[i] - want).abs() < 1e-7, "{i}: {} vs {want}", m.x[i]);
        }
    }
}
