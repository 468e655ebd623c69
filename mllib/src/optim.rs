//! L-BFGS for smooth objectives whose value and gradient come from one aggregate pass each
//! (the distributed loop: the driver holds the iterate, every evaluation is a data pass).
//! Written here rather than taken from a crate because the evaluation is async and remote.

use std::future::Future;

use crate::error::Result;

/// Outcome of a minimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    /// Objective after each accepted iteration (the first entry is at the start point).
    pub history: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    pub reason: String,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `f` (returning value and gradient) from `x0` with L-BFGS (memory `m`) and a
/// backtracking Armijo line search. Stops when the relative decrease of the value falls below
/// `tol`, the gradient vanishes, or after `max_iter` iterations.
pub async fn lbfgs<F, Fut>(
    mut f: F,
    x0: Vec<f64>,
    m: usize,
    max_iter: usize,
    tol: f64,
) -> Result<Minimum>
where
    F: FnMut(Vec<f64>) -> Fut,
    Fut: Future<Output = Result<(f64, Vec<f64>)>>,
{
    let mut x = x0;
    let (mut fx, mut g) = f(x.clone()).await?;
    let mut history = vec![fx];
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    let mut reason = format!("reached max_iter = {max_iter}");
    let mut converged = false;
    while iterations < max_iter {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm <= 1e-12 * fx.abs().max(1.0) {
            reason = "gradient vanished".to_string();
            converged = true;
            break;
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0 / gnorm.max(1e-300),
        };
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
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (curvature lost): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = g.iter().map(|v| -v / gnorm).collect();
            slope = dot(&g, &d);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..40 {
            let xn: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + step * b).collect();
            let (fn_, gn) = f(xn.clone()).await?;
            if fn_.is_finite() && fn_ <= fx + 1e-4 * step * slope {
                accepted = Some((xn, fn_, gn));
                break;
            }
            step *= 0.5;
        }
        let Some((xn, fn_, gn)) = accepted else {
            reason = "line search found no decrease".to_string();
            converged = true;
            break;
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() {
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
        if decrease < tol {
            reason = format!("relative decrease below tol = {tol}");
            converged = true;
            break;
        }
    }
    Ok(Minimum {
        x,
        value: fx,
        history,
        iterations,
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
}
