//! Pruners: stop trials that are unlikely to win while they train, from the values they report
//! at steps (iterations, boosting rounds, Lloyd passes) on their held-out split.
//!
//! - [`Pruner::Median`]: stop a trial whose best value so far is worse than the median of the
//!   finished trials' values at the same step (Optuna's `MedianPruner`, Google Vizier's
//!   median stopping rule).
//! - [`Pruner::SuccessiveHalving`]: asynchronous successive halving (ASHA, Li et al. 2020).
//!   Rung k sits at step `min_resource · η^(s + k)`; a trial reaching a rung continues only
//!   while its value there is among the best `⌊n / η⌋` of the `n` trials that reached it, so
//!   many cheap trials start and the best are promoted without waiting for a full rung (no
//!   trial is ever paused; the best one goes on while fewer than η are there, so the best so
//!   far at a rung is never stopped — and the first trials of a search pass rungs on little
//!   evidence: in the boosted-tree benchmark trials 0 and 1 ran all 81 rounds in most seeds).
//!   A trial that went on from a rung is *demoted* — stopped at its next step — when later
//!   arrivals there push it out of the best ⌊n/η⌋ before it has reached the next rung
//!   (`demote`, on by default; Optuna and Ray Tune let it run on): at most that many trials run
//!   on from a rung at a time, as in the paper's promotion-based ASHA, without pausing any. A
//!   pruned trial's extrapolation is TPE's estimate of the loss it would have ended with
//!   ([`PruneBoard::estimate`]). No report is asked at the budget (`max_resource`): nothing is
//!   judged there, and the trial's result is scored anyway.
//! - [`Pruner::Hyperband`]: brackets of ASHA with early-stopping rates 0, 1, …, each trial
//!   assigned to one (Li et al. 2018), trading how early trials are stopped against the risk of
//!   stopping a slow starter; a trial competes only within its bracket.
//!
//! Rungs judge what a trial's curve *extrapolates* to at the largest budget, not the value it
//! reached so far (unless `extrapolate` is off, Optuna's and Ray Tune's rule). Early values
//! favour whatever learns fastest, not what ends best: a boosted-tree search over the step size
//! sees the largest steps lead after 1, 3 or 9 rounds although a smaller step wins at round 81
//! (the short-horizon bias), so plain ASHA cuts the eventual winner while it is still behind.
//! The extrapolation takes the improvements over the two budget spans before the rung, `d₀` (from
//! `r/η²` to `r/η`) and `d₁` (from `r/η` to `r`), assumes each later η-fold span improves by
//! the same ratio `ρ = d₁/d₀` again (clamped to [0, 0.9]), and adds those spans up to the
//! largest budget: `v(r) − d₁·(ρ + ρ² + … + ρ^m)`, `m = log_η(max / r)`. A trial still
//! improving steeply keeps its chance; one that has flattened is judged on its value. A rung
//! without two earlier reports (a first rung at step 1 or 3 with η = 3) judges the value itself,
//! so the first rung's two lead-in steps (`r/η`, `r/η²`) are reported too.
//!
//! Losses are minimised: a trial reports the same loss its final result is (negated metrics
//! for higher-is-better ones). A board ([`PruneBoard`]) holds every trial's reports; the
//! fan-out's task context consults it at each report, so a trial stops at its next report once
//! it is pruned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use quiver_engine::fanout::Pruning;
use serde::{Deserialize, Serialize};

use crate::error::{MllibError, Result};

/// When a trial's reports are judged, and against what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "pruner")]
pub enum Pruner {
    /// Prune when the trial's best value so far is worse than the median of the finished
    /// trials' values at the same step.
    Median {
        /// Finished trials needed before any trial is pruned. Optuna's default: 5.
        n_startup_trials: usize,
        /// Steps before which a trial is never pruned.
        n_warmup_steps: u64,
        /// Judge every this many steps after the warm-up.
        interval_steps: u64,
    },
    /// Asynchronous successive halving.
    SuccessiveHalving {
        /// The step of the first rung.
        min_resource: u64,
        /// η: each rung keeps the best 1/η of the trials that reach it.
        reduction_factor: u64,
        /// s: the first rung sits at `min_resource · η^s`.
        min_early_stopping_rate: u32,
        /// The most steps a trial runs, the horizon of the extrapolation; `None`: the largest
        /// step a finished trial reported (one rung ahead until a trial has finished).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_resource: Option<u64>,
        /// Judge the value each trial's curve extrapolates to at `max_resource` (see the
        /// module); false: the value reached (Optuna's `SuccessiveHalvingPruner`).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        extrapolate: bool,
        /// Stop a trial that went on from a rung once later arrivals there push it out of the
        /// best `⌊n / η⌋` before it reaches the next rung (see the module); false: a trial that
        /// passed a rung keeps its place (Optuna's and Ray Tune's asynchronous rule).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        demote: bool,
    },
    /// Brackets of successive halving between `min_resource` and `max_resource`.
    Hyperband {
        min_resource: u64,
        /// The most steps a trial runs (its `max_iter`); `None`: the largest step a finished
        /// trial reported (no trial is pruned before one has finished).
        max_resource: Option<u64>,
        reduction_factor: u64,
        /// As for [`Pruner::SuccessiveHalving`].
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        extrapolate: bool,
        /// As for [`Pruner::SuccessiveHalving`].
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        demote: bool,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Pruner {
    /// Optuna's defaults: 5 startup trials, no warm-up, every step.
    pub fn median() -> Self {
        Pruner::Median {
            n_startup_trials: 5,
            n_warmup_steps: 0,
            interval_steps: 1,
        }
    }

    /// ASHA with η = 3 (Ray Tune's `reduction_factor`; Optuna uses 4, 3 halves less eagerly)
    /// from step 9 = η², the first rung with two earlier reports to extrapolate from, judging
    /// extrapolated values. Judging from step 1 (Ray Tune's `grace_period` 1) cut the eventual
    /// winners of a boosted-tree search at rounds 1 and 3, where the largest step sizes lead
    /// (see the module and `scripts/bench_pruning.py`).
    pub fn asha() -> Self {
        Pruner::SuccessiveHalving {
            min_resource: 9,
            reduction_factor: 3,
            min_early_stopping_rate: 0,
            max_resource: None,
            extrapolate: true,
            demote: true,
        }
    }

    /// Hyperband from step 1 with η = 3; the largest resource is learnt from the first
    /// finished trial.
    pub fn hyperband() -> Self {
        Pruner::Hyperband {
            min_resource: 1,
            max_resource: None,
            reduction_factor: 3,
            extrapolate: true,
            demote: true,
        }
    }

    /// A pruner by its name (`median`, `asha` / `successive_halving`, `hyperband`) with its
    /// defaults; `none` is `None`.
    pub fn from_name(name: &str) -> Result<Option<Self>> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(None),
            "median" => Ok(Some(Self::median())),
            "asha" | "successive_halving" => Ok(Some(Self::asha())),
            "hyperband" => Ok(Some(Self::hyperband())),
            other => Err(MllibError::InvalidParam {
                param: "pruner".to_string(),
                reason: format!("'{other}': use median, asha, hyperband or none"),
            }),
        }
    }

    /// Sets one setting by name (`min_resource`, `max_resource`, `reduction_factor`,
    /// `min_early_stopping_rate`, `extrapolate` and `demote` (0 or 1), `n_startup_trials`,
    /// `n_warmup_steps`, `interval_steps`); a setting this pruner does not have is an error
    /// naming both.
    pub fn set(&mut self, name: &str, value: u64) -> Result<()> {
        let unknown = |p: &Pruner| MllibError::InvalidParam {
            param: name.to_string(),
            reason: format!("not a setting of the {} pruner", p.name()),
        };
        let flag = || match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(MllibError::InvalidParam {
                param: name.to_string(),
                reason: format!("{value}: use true or false (1 or 0)"),
            }),
        };
        match (self, name) {
            (
                Pruner::Median {
                    n_startup_trials, ..
                },
                "n_startup_trials",
            ) => *n_startup_trials = value as usize,
            (Pruner::Median { n_warmup_steps, .. }, "n_warmup_steps") => *n_warmup_steps = value,
            (Pruner::Median { interval_steps, .. }, "interval_steps") => *interval_steps = value,
            (
                Pruner::SuccessiveHalving { min_resource, .. }
                | Pruner::Hyperband { min_resource, .. },
                "min_resource",
            ) => *min_resource = value,
            (
                Pruner::SuccessiveHalving {
                    reduction_factor, ..
                }
                | Pruner::Hyperband {
                    reduction_factor, ..
                },
                "reduction_factor",
            ) => *reduction_factor = value,
            (
                Pruner::SuccessiveHalving {
                    min_early_stopping_rate,
                    ..
                },
                "min_early_stopping_rate",
            ) => *min_early_stopping_rate = u32::try_from(value).unwrap_or(u32::MAX),
            (
                Pruner::SuccessiveHalving { max_resource, .. }
                | Pruner::Hyperband { max_resource, .. },
                "max_resource",
            ) => *max_resource = Some(value),
            (
                Pruner::SuccessiveHalving { extrapolate, .. }
                | Pruner::Hyperband { extrapolate, .. },
                "extrapolate",
            ) => *extrapolate = flag()?,
            (
                Pruner::SuccessiveHalving { demote, .. } | Pruner::Hyperband { demote, .. },
                "demote",
            ) => *demote = flag()?,
            (p, _) => return Err(unknown(p)),
        }
        Ok(())
    }

    /// This pruner with `max_resource` set to `steps`, every trial's budget when it is known
    /// (a fixed `max_iter`), unless it is set already or below `min_resource`: the rungs then
    /// know the horizon from the first trial on, not after the first has finished.
    pub fn with_budget(mut self, steps: u64) -> Self {
        if let Pruner::SuccessiveHalving {
            min_resource,
            max_resource,
            ..
        }
        | Pruner::Hyperband {
            min_resource,
            max_resource,
            ..
        } = &mut self
            && max_resource.is_none()
            && steps >= *min_resource
        {
            *max_resource = Some(steps);
        }
        self
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pruner::Median { .. } => "median",
            Pruner::SuccessiveHalving { .. } => "asha",
            Pruner::Hyperband { .. } => "hyperband",
        }
    }

    /// Settings that cannot work are errors naming them.
    pub fn check(&self) -> Result<()> {
        let bad = |param: &str, reason: &str| {
            Err(MllibError::InvalidParam {
                param: param.to_string(),
                reason: reason.to_string(),
            })
        };
        match self {
            Pruner::Median { interval_steps, .. } if *interval_steps == 0 => {
                bad("interval_steps", "must be at least 1")
            }
            Pruner::SuccessiveHalving {
                min_resource,
                reduction_factor,
                min_early_stopping_rate,
                max_resource,
                ..
            } => {
                if *min_resource == 0 {
                    return bad("min_resource", "must be at least 1 step");
                }
                if *reduction_factor < 2 {
                    return bad("reduction_factor", "must be at least 2");
                }
                if *min_early_stopping_rate > 40 {
                    return bad("min_early_stopping_rate", "must be at most 40");
                }
                if max_resource.is_some_and(|m| m < *min_resource) {
                    return bad("max_resource", "must be at least min_resource");
                }
                Ok(())
            }
            Pruner::Hyperband {
                min_resource,
                max_resource,
                reduction_factor,
                ..
            } => {
                if *min_resource == 0 {
                    return bad("min_resource", "must be at least 1 step");
                }
                if *reduction_factor < 2 {
                    return bad("reduction_factor", "must be at least 2");
                }
                if max_resource.is_some_and(|m| m < *min_resource) {
                    return bad("max_resource", "must be at least min_resource");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A short description (the trial log's header records it).
    pub fn describe(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.name().to_string())
    }
}

/// The step of rung `k` of a successive-halving schedule, saturating.
fn rung_step(min_resource: u64, eta: u64, rate: u32, k: u32) -> u64 {
    let mut step = min_resource;
    for _ in 0..rate.saturating_add(k) {
        step = step.saturating_mul(eta);
    }
    step
}

/// The number of Hyperband brackets between `min` and `max` resources: ⌊log_η(max/min)⌋ + 1.
fn brackets(min: u64, max: u64, eta: u64) -> u32 {
    let mut n = 1;
    let mut r = min;
    while r.saturating_mul(eta) <= max && n < 40 {
        r = r.saturating_mul(eta);
        n += 1;
    }
    n
}

/// Whether the median rule judges `step`: past the warm-up, on the interval.
fn median_due(step: u64, warmup: u64, interval: u64) -> bool {
    step >= warmup && (step - warmup).is_multiple_of(interval.max(1))
}

/// SplitMix64: a trial's bracket from its id, the same in every process.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bracket of trial `id` among `n` (bracket b stops trials earliest at rate b): brackets
/// are drawn in proportion to Hyperband's number of configurations per bracket, ⌈n/(n − b) ·
/// η^(n − 1 − b)⌉ for the most aggressive last, so each bracket spends a similar budget.
fn bracket_of(id: u64, n: u32, eta: u64) -> u32 {
    let weights: Vec<u64> = (0..n)
        .map(|b| {
            let s = n - 1 - b;
            let configs = (n as f64 / (n - b) as f64) * (eta as f64).powi(s as i32);
            configs.ceil().clamp(1.0, 1e12) as u64
        })
        .collect();
    // Bracket b has early-stopping rate b: the first weight (the most configurations) goes to
    // the bracket that stops earliest, rate 0.
    let total: u64 = weights.iter().sum();
    let mut u = mix(id) % total.max(1);
    for (b, w) in weights.iter().enumerate() {
        if u < *w {
            return b as u32;
        }
        u -= w;
    }
    0
}

/// Every trial's reports and what the pruner decided: the state a [`Pruner`] judges from.
#[derive(Debug)]
pub struct PruneBoard {
    pruner: Pruner,
    state: Mutex<BoardState>,
}

#[derive(Debug, Default)]
struct BoardState {
    /// Per trial, its reports by step.
    reports: HashMap<u64, BTreeMap<u64, f64>>,
    /// Trials that finished (their reports count for the median).
    finished: HashSet<u64>,
    /// Per (bracket, rung): the values recorded there, by trial.
    rungs: HashMap<(u32, u32), Vec<(u64, f64)>>,
    /// Per trial: the rungs it has reached.
    reached: HashMap<u64, u32>,
    /// The largest step a finished trial reported (Hyperband's automatic max_resource).
    max_finished_step: Option<u64>,
    /// Per trial, what its curve extrapolated to at the horizon at its last rung (extrapolating
    /// pruners with a known horizon only).
    estimates: HashMap<u64, f64>,
    /// Trials the pruner stopped.
    stopped: HashSet<u64>,
    /// Trials to stop at their next step: pushed out of the best at the last rung they passed.
    demoted: HashSet<u64>,
}

impl PruneBoard {
    pub fn new(pruner: Pruner) -> Self {
        PruneBoard {
            pruner,
            state: Mutex::new(BoardState::default()),
        }
    }

    pub fn pruner(&self) -> &Pruner {
        &self.pruner
    }

    /// The state, also after a panic while it was held (a report's bookkeeping is complete or
    /// harmless when cut short): one bad report must not turn pruning off for the search.
    fn state(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replays a trial of an earlier run (resume): its reports, and whether it finished.
    pub fn replay(&self, trial: u64, reports: &[(u64, f64)], finished: bool) {
        for &(step, value) in reports {
            self.judge(trial, step, value);
        }
        if finished {
            self.finish(trial);
        }
    }

    /// Marks `trial` finished (ran to its end): its reports join the median's reference.
    pub fn finish(&self, trial: u64) {
        let mut s = self.state();
        s.finished.insert(trial);
        if let Some(last) = s
            .reports
            .get(&trial)
            .and_then(|r| r.keys().next_back().copied())
        {
            s.max_finished_step = Some(s.max_finished_step.map_or(last, |m| m.max(last)));
        }
    }

    /// What `trial`'s curve extrapolated to at the largest step, judged at the last rung it
    /// reached: a pruned trial's estimate of the loss it would have ended with. `None` for
    /// pruners that do not extrapolate, before the horizon is known, and for trials that
    /// reached no rung.
    pub fn estimate(&self, trial: u64) -> Option<f64> {
        self.state().estimates.get(&trial).copied()
    }

    /// The reports of `trial` so far, by step.
    pub fn reports(&self, trial: u64) -> Vec<(u64, f64)> {
        self.state()
            .reports
            .get(&trial)
            .map(|r| r.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Records the report and decides: true when the trial should stop.
    fn judge(&self, trial: u64, step: u64, value: f64) -> bool {
        // A NaN value is the worst value there is.
        let value = if value.is_nan() { f64::INFINITY } else { value };
        let mut s = self.state();
        s.reports.entry(trial).or_default().insert(step, value);
        match &self.pruner {
            Pruner::Median {
                n_startup_trials,
                n_warmup_steps,
                interval_steps,
            } => {
                if !median_due(step, *n_warmup_steps, *interval_steps)
                    || s.finished.len() < *n_startup_trials
                {
                    return false;
                }
                let best = s.reports[&trial]
                    .values()
                    .copied()
                    .fold(f64::INFINITY, f64::min);
                let mut others: Vec<f64> = s
                    .finished
                    .iter()
                    .filter(|t| **t != trial)
                    .filter_map(|t| s.reports.get(t).and_then(|r| r.get(&step)).copied())
                    .collect();
                if others.is_empty() {
                    return false;
                }
                others.sort_by(f64::total_cmp);
                let n = others.len();
                let median = if n % 2 == 1 {
                    others[n / 2]
                } else {
                    (others[n / 2 - 1] + others[n / 2]) / 2.0
                };
                best > median
            }
            // Hyperband before its largest step is known: nothing is pruned.
            _ => match self.rungs(&s, trial) {
                Some(rungs) => {
                    let stop = halving(&mut s, trial, step, value, &rungs);
                    if stop {
                        s.stopped.insert(trial);
                    }
                    stop
                }
                None => false,
            },
        }
    }

    /// The successive-halving schedule `trial` is judged on (its bracket's, for Hyperband);
    /// `None` for the median rule, and for Hyperband while its largest step is unknown.
    fn rungs(&self, s: &BoardState, trial: u64) -> Option<Rungs> {
        match &self.pruner {
            Pruner::Median { .. } => None,
            Pruner::SuccessiveHalving {
                min_resource,
                reduction_factor,
                min_early_stopping_rate,
                max_resource,
                extrapolate,
                demote,
            } => Some(Rungs {
                bracket: 0,
                min_resource: *min_resource,
                eta: *reduction_factor,
                rate: *min_early_stopping_rate,
                horizon: max_resource.or(s.max_finished_step),
                extrapolate: *extrapolate,
                demote: *demote,
            }),
            Pruner::Hyperband {
                min_resource,
                max_resource,
                reduction_factor,
                extrapolate,
                demote,
            } => {
                let max = max_resource.or(s.max_finished_step)?;
                let n = brackets(*min_resource, max.max(*min_resource), *reduction_factor);
                let bracket = bracket_of(trial, n, *reduction_factor);
                Some(Rungs {
                    bracket,
                    min_resource: *min_resource,
                    eta: *reduction_factor,
                    rate: bracket,
                    horizon: Some(max),
                    extrapolate: *extrapolate,
                    demote: *demote,
                })
            }
        }
    }

    /// Whether a report of `trial` at `step` would be judged (its value is worth computing).
    fn due(&self, trial: u64, step: u64) -> bool {
        match &self.pruner {
            Pruner::Median {
                n_warmup_steps,
                interval_steps,
                ..
            } => median_due(step, *n_warmup_steps, *interval_steps),
            Pruner::SuccessiveHalving { max_resource, .. }
            | Pruner::Hyperband { max_resource, .. } => {
                // At its budget a trial ends: no rung judges it there, and its result is
                // scored anyway (a report would predict the whole ensemble once more).
                if max_resource.is_some_and(|m| step >= m) {
                    return false;
                }
                let s = self.state();
                if s.demoted.contains(&trial) {
                    return true;
                }
                match self.rungs(&s, trial) {
                    Some(r) => next_due(&s, trial, step, &r),
                    // Hyperband before its largest step is known: report at the rungs of the
                    // most aggressive bracket (min_resource · η^k), so the first finished trial
                    // teaches it.
                    None => match &self.pruner {
                        Pruner::Hyperband {
                            min_resource,
                            reduction_factor,
                            ..
                        } => is_rung(step, *min_resource, *reduction_factor),
                        _ => false,
                    },
                }
            }
        }
    }

    #[cfg(test)]
    fn rungs_reached(&self, trial: u64) -> u32 {
        self.state().reached.get(&trial).copied().unwrap_or(0)
    }
}

/// Whether `step` reaches the trial's next rung of `r` or, before its first rung and when
/// extrapolating, the next of the first rung's lead-in steps (`r/η²`, `r/η`).
fn next_due(s: &BoardState, trial: u64, step: u64, r: &Rungs) -> bool {
    let reached = s.reached.get(&trial).copied().unwrap_or(0);
    let rung = rung_step(r.min_resource, r.eta, r.rate, reached);
    if step >= rung {
        return true;
    }
    if !r.extrapolate || reached > 0 {
        return false;
    }
    let last = s
        .reports
        .get(&trial)
        .and_then(|reports| reports.keys().next_back().copied());
    lead_ins(rung, r.eta)
        .into_iter()
        .find(|p| last.is_none_or(|l| *p > l))
        .is_some_and(|p| step >= p)
}

/// The steps before a first rung at `rung` whose values its extrapolation needs: `⌊r/η²⌋` and
/// `⌊r/η⌋`, those that are at least 1, in order.
fn lead_ins(rung: u64, eta: u64) -> Vec<u64> {
    let eta = eta.max(2);
    let mut steps = vec![rung / (eta * eta), rung / eta];
    steps.retain(|p| *p >= 1);
    steps.dedup();
    steps
}

/// The largest ratio of successive improvements an extrapolation assumes.
const MAX_RATIO: f64 = 0.9;

/// What a curve extrapolates to at step `horizon` (see the module): `reports` hold its value at
/// `step` and earlier ones; the two earlier points are the last reports at or before `step/η`
/// and `step/η²`. Without both (or past the horizon), the value at `step`. `horizon` `None`:
/// one η-fold span ahead.
fn extrapolated(reports: &BTreeMap<u64, f64>, step: u64, eta: u64, horizon: Option<u64>) -> f64 {
    let eta = eta.max(2);
    let Some(&now) = reports.get(&step) else {
        return f64::INFINITY;
    };
    let at_or_before = |t: u64| {
        (t >= 1)
            .then(|| reports.range(1..=t).next_back())
            .flatten()
            .map(|(k, v)| (*k, *v))
    };
    let (Some((s1, v1)), Some((s2, v2))) =
        (at_or_before(step / eta), at_or_before(step / (eta * eta)))
    else {
        return now;
    };
    if s2 >= s1 || !now.is_finite() || !v1.is_finite() || !v2.is_finite() {
        return now;
    }
    let spans = match horizon {
        Some(h) if h <= step => return now,
        Some(h) => ((h as f64).ln() - (step as f64).ln()) / (eta as f64).ln(),
        None => 1.0,
    };
    let (d0, d1) = (v2 - v1, v1 - now);
    let ratio = if d0 > 0.0 {
        (d1 / d0).clamp(0.0, MAX_RATIO)
    } else {
        0.0
    };
    // ρ + ρ² + … + ρ^m, for a real number m of spans.
    let sum = if ratio == 0.0 {
        0.0
    } else {
        ratio * (1.0 - ratio.powf(spans)) / (1.0 - ratio)
    };
    now - d1 * sum
}

/// One successive-halving schedule: its bracket (the key of its rungs), rungs at
/// `min_resource · η^(rate + k)`, the most steps a trial runs when known (`max_resource`, or
/// learnt), and whether rungs compare extrapolated values.
struct Rungs {
    bracket: u32,
    min_resource: u64,
    eta: u64,
    rate: u32,
    horizon: Option<u64>,
    extrapolate: bool,
    demote: bool,
}

/// Whether `step` is `min_resource · η^k` for some k ≥ 0.
fn is_rung(step: u64, min_resource: u64, eta: u64) -> bool {
    let mut rung = min_resource.max(1);
    while rung < step {
        match rung.checked_mul(eta.max(2)) {
            Some(r) => rung = r,
            None => return false,
        }
    }
    rung == step
}

/// Successive halving on the schedule `r`: records the trial's value (or its extrapolation)
/// at every rung its `step` has passed and prunes it at the first where it is not among the
/// best ⌊n/η⌋ (the best one while fewer than η trials are there). A trial at its last step is
/// never pruned: its work is done, and its result may be the best. With `r.demote`, a trial
/// demoted at the last rung it passed stops now, and trials that went on from a rung with less
/// evidence than this one are demoted when this one pushes them out of the best ⌊n/η⌋ there.
fn halving(s: &mut BoardState, trial: u64, step: u64, value: f64, r: &Rungs) -> bool {
    if r.horizon.is_some_and(|h| step >= h) {
        return false;
    }
    if s.demoted.remove(&trial) {
        return true;
    }
    let value = match s.reports.get(&trial) {
        Some(reports) if r.extrapolate => extrapolated(reports, step, r.eta, r.horizon),
        _ => value,
    };
    let eta = r.eta;
    loop {
        let rung = s.reached.get(&trial).copied().unwrap_or(0);
        if step < rung_step(r.min_resource, eta, r.rate, rung) {
            return false;
        }
        s.reached.insert(trial, rung + 1);
        let at = s.rungs.entry((r.bracket, rung)).or_default();
        at.push((trial, value));
        let mut values: Vec<f64> = at.iter().map(|(_, v)| *v).collect();
        values.sort_by(f64::total_cmp);
        let keep = (values.len() / eta.max(2) as usize).max(1);
        let bar = values[keep - 1];
        if r.extrapolate && r.horizon.is_some() {
            s.estimates.insert(trial, value);
        }
        if r.demote {
            demote_below(s, (r.bracket, rung), bar, trial);
        }
        if value > bar {
            return true;
        }
    }
}

/// Demotes the trials other than `arrival` that went on from rung `key` (and have not reached
/// the next one, nor stopped or finished) whose value there is now worse than `bar`, the last
/// of the best ⌊n/η⌋: at most that many trials run on from a rung, and the best so far always
/// does.
fn demote_below(s: &mut BoardState, key: (u32, u32), bar: f64, arrival: u64) {
    let Some(at) = s.rungs.get(&key) else { return };
    let next = key.1 + 1;
    let out: Vec<u64> = at
        .iter()
        .filter(|(t, v)| {
            *t != arrival
                && *v > bar
                && s.reached.get(t) == Some(&next)
                && !s.stopped.contains(t)
                && !s.finished.contains(t)
        })
        .map(|(t, _)| *t)
        .collect();
    s.demoted.extend(out);
}

impl Pruning for PruneBoard {
    fn due(&self, trial: u64, step: u64) -> bool {
        PruneBoard::due(self, trial, step)
    }

    fn report(&self, trial: u64, step: u64, value: f64) -> bool {
        self.judge(trial, step, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_prunes_a_trial_worse_than_the_finished_ones() {
        let board = PruneBoard::new(Pruner::Median {
            n_startup_trials: 2,
            n_warmup_steps: 1,
            interval_steps: 1,
        });
        for (t, base) in [(0, 1.0), (1, 2.0)] {
            for step in 0..5 {
                assert!(!board.judge(t, step, base - step as f64 * 0.1));
            }
            board.finish(t);
        }
        // Step 0 is warm-up: never pruned there.
        assert!(!board.judge(2, 0, 10.0));
        // Median at step 1 of 0.9 and 1.9 is 1.4: 1.3 is better, 1.5 worse.
        assert!(!board.judge(3, 1, 1.3));
        assert!(board.judge(2, 1, 1.5));
        // Its best so far counts: a trial that was good once is judged on that.
        assert!(!board.judge(3, 2, 5.0));
    }

    #[test]
    fn asha_keeps_the_best_third_at_each_rung() {
        let mut p = Pruner::asha();
        p.set("min_resource", 1).unwrap();
        let board = PruneBoard::new(p);
        // Rungs at 1, 3, 9, …: the first trial is alone (kept), then each must be the best
        // while fewer than 3 are there, then in the best ⌊n/3⌋.
        assert!(board.due(0, 1) && !board.due(0, 0));
        assert!(!board.judge(0, 1, 0.5));
        assert!(!board.due(0, 2), "the next rung of trial 0 is at step 3");
        assert!(board.due(0, 3));
        assert!(
            board.judge(1, 1, 0.6),
            "second of two at rung 0: not the best"
        );
        assert!(!board.judge(2, 1, 0.4), "the best so far");
        // Four values at rung 0 (0.4, 0.5, 0.6, 0.45): keep ⌊4/3⌋ = 1, so 0.45 is pruned.
        assert!(board.judge(3, 1, 0.45));
        // A report past several rungs records each: trial 4 at step 9 passes rungs 0, 1, 2.
        assert!(!board.judge(4, 9, 0.1));
        assert_eq!(board.rungs_reached(4), 3);
        assert_eq!(rung_step(1, 3, 0, 3), 27);
    }

    /// A trial that went on from a rung with less evidence stops at its next step once a later
    /// arrival there pushes it out of the best ⌊n/η⌋; the best so far, a trial already past the
    /// next rung and a finished one are not touched; without `demote` none is.
    #[test]
    fn asha_demotes_a_trial_that_went_on_on_less_evidence() {
        for demote in [true, false] {
            let mut p = Pruner::asha();
            p.set("min_resource", 1).unwrap();
            p.set("max_resource", 27).unwrap();
            p.set("extrapolate", 0).unwrap();
            p.set("demote", u64::from(demote)).unwrap();
            let board = PruneBoard::new(p);
            // Trials 0, 1 and 2 each go on from rung 0 (step 1) as the best so far there.
            assert!(!board.judge(0, 1, 0.5));
            assert!(!board.judge(1, 1, 0.4));
            // Trial 1 reaches rung 1 (step 3) before trial 2 arrives; trial 3 finishes.
            assert!(!board.judge(1, 3, 0.3));
            assert_eq!(board.due(0, 2), demote, "trial 0: stop at its next step");
            assert_eq!(board.judge(0, 2, 0.45), demote);
            assert!(!board.judge(3, 1, 0.35) && !board.judge(3, 27, 0.1));
            board.finish(3);
            assert!(!board.judge(2, 1, 0.3), "three at rung 0: 0.3 is the best");
            // Trial 1 (past rung 1), trial 2 (the best) and the finished trial 3 go on.
            for t in [1, 2, 3] {
                assert!(!board.due(t, 2), "trial {t}");
            }
            assert!(!board.judge(1, 9, 0.25) && !board.judge(2, 2, 0.29));
            // A fourth at rung 0, better than trial 2: ⌊4/3⌋ = 1 goes on, trial 2 is demoted.
            assert!(!board.judge(4, 1, 0.28));
            assert_eq!(
                board.judge(2, 3, 0.1),
                demote,
                "demoted: its rung value counts"
            );
        }
        assert!(Pruner::asha().set("demote", 3).is_err());
        assert!(Pruner::median().set("demote", 0).is_err());
    }

    #[test]
    fn extrapolation_continues_the_ratio_of_successive_improvements() {
        let curve = |points: &[(u64, f64)]| points.iter().copied().collect::<BTreeMap<_, _>>();
        // Improvements halve every η-fold span: 1.0, 0.5, 0.25 at 1, 3, 9 go on to 0.125 at 27
        // and 0.0625 at 81.
        let r = curve(&[(1, 1.0), (3, 0.5), (9, 0.25)]);
        assert!((extrapolated(&r, 9, 3, Some(81)) - 0.0625).abs() < 1e-12);
        assert!((extrapolated(&r, 9, 3, Some(27)) - 0.125).abs() < 1e-12);
        assert!(
            (extrapolated(&r, 9, 3, None) - 0.125).abs() < 1e-12,
            "one span"
        );
        assert_eq!(extrapolated(&r, 9, 3, Some(9)), 0.25, "at the horizon");
        // Without two earlier points, or for a curve that got worse, the value itself.
        assert_eq!(extrapolated(&r, 3, 3, Some(81)), 0.5);
        assert_eq!(extrapolated(&r, 1, 3, Some(81)), 1.0);
        let worse = curve(&[(1, 1.0), (3, 1.2), (9, 1.1)]);
        assert_eq!(extrapolated(&worse, 9, 3, Some(81)), 1.1);
        // Reports between rungs: the last at or before r/η and r/η² count.
        let dense = curve(&[(1, 1.0), (2, 0.7), (3, 0.5), (5, 0.4), (9, 0.25)]);
        assert_eq!(
            extrapolated(&dense, 9, 3, Some(81)),
            extrapolated(&r, 9, 3, Some(81))
        );
        // The ratio is clamped: a curve whose improvements grow is not extrapolated to -∞.
        let steep = curve(&[(1, 1.0), (3, 0.9), (9, 0.5)]);
        let v = extrapolated(&steep, 9, 3, Some(81));
        assert!((v - (0.5 - 0.4 * (0.9 + 0.81))).abs() < 1e-12, "{v}");
        assert_eq!(lead_ins(9, 3), [1, 3]);
        assert_eq!(lead_ins(3, 3), [1]);
        assert!(lead_ins(1, 3).is_empty());
    }

    /// The short-horizon bias: a trial that starts fast and flattens leads at the first rung a
    /// steeper one that will end lower. Judging reached values prunes the steep one;
    /// extrapolating keeps it.
    #[test]
    fn extrapolating_asha_keeps_a_slow_starter_that_is_still_improving() {
        let flat = [(1, 0.60), (3, 0.55), (9, 0.50)];
        let fast = [(1, 0.50), (3, 0.40), (9, 0.38)];
        let slow = [(1, 0.90), (3, 0.60), (9, 0.40)];
        for extrapolate in [false, true] {
            let mut p = Pruner::asha();
            p.set("min_resource", 9).unwrap();
            p.set("max_resource", 81).unwrap();
            p.set("extrapolate", u64::from(extrapolate)).unwrap();
            p.check().unwrap();
            let board = PruneBoard::new(p);
            // The first rung's lead-in steps are reported only when extrapolating.
            assert_eq!(board.due(0, 1), extrapolate);
            assert!(board.due(0, 9));
            assert!(
                !board.due(0, 81),
                "at the budget: its result is scored anyway"
            );
            for (trial, curve) in [(0, flat), (1, fast), (2, slow)] {
                let mut pruned = false;
                for (step, value) in curve {
                    if board.due(trial, step) {
                        pruned = board.judge(trial, step, value);
                    }
                    if step == 1 && extrapolate {
                        assert!(!board.due(trial, 2) && board.due(trial, 3));
                    }
                }
                // The flat one is alone, the fast one the best of two. The slow one is not the
                // best of three by the values reached; extrapolated, it is headed lowest.
                let expected = trial == 2 && !extrapolate;
                assert_eq!(pruned, expected, "trial {trial}, extrapolate {extrapolate}");
            }
            // What the pruned trials would have ended with, for TPE: only an extrapolating
            // pruner that knows its horizon estimates it.
            match board.estimate(2) {
                Some(v) => {
                    assert!(extrapolate);
                    // ρ = 0.2 / 0.3, two spans to 81: 0.40 − 0.2 (ρ + ρ²).
                    let rho = 0.2 / 0.3;
                    assert!((v - (0.40 - 0.2 * (rho + rho * rho))).abs() < 1e-9, "{v}");
                }
                None => assert!(!extrapolate),
            }
        }
        // A trial at its last step is not pruned, however it compares.
        let mut p = Pruner::asha();
        p.set("min_resource", 1).unwrap();
        p.set("max_resource", 3).unwrap();
        let board = PruneBoard::new(p);
        assert!(!board.judge(0, 1, 0.1) && board.judge(1, 1, 0.2));
        assert!(!board.judge(2, 3, 0.9), "at max_resource");
        assert!(Pruner::asha().set("extrapolate", 2).is_err());
        let budget = |p: Pruner| match p {
            Pruner::SuccessiveHalving { max_resource, .. } => max_resource,
            _ => None,
        };
        assert_eq!(budget(Pruner::asha().with_budget(27)), Some(27));
        assert_eq!(
            budget(Pruner::asha().with_budget(5)),
            None,
            "below the first rung"
        );
        assert_eq!(Pruner::median().with_budget(27), Pruner::median());
        let mut bad = Pruner::asha();
        bad.set("min_resource", 9).unwrap();
        bad.set("max_resource", 3).unwrap();
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("max_resource")
        );
    }

    #[test]
    fn hyperband_brackets_cover_every_rate_and_wait_for_a_finished_trial() {
        assert_eq!(brackets(1, 81, 3), 5);
        assert_eq!(brackets(1, 80, 3), 4);
        assert_eq!(brackets(5, 5, 3), 1);
        let mut counts = [0usize; 5];
        for id in 0..10_000 {
            counts[bracket_of(id, 5, 3) as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
        assert!(
            counts[0] > counts[4],
            "the aggressive bracket gets most: {counts:?}"
        );
        let board = PruneBoard::new(Pruner::hyperband());
        // Before the largest step is known, reports are asked for at the rungs of the most
        // aggressive bracket only (a held-out pass each), not at every step.
        let due: Vec<u64> = (0..=30).filter(|s| board.due(0, *s)).collect();
        assert_eq!(due, [1, 3, 9, 27]);
        // No max_resource and nothing finished: nothing is pruned.
        assert!(!board.judge(0, 1, 1.0) && !board.judge(1, 1, 9.0));
        for step in [1, 3, 9, 27] {
            board.judge(2, step, 0.1);
        }
        board.finish(2);
        assert_eq!(board.state.lock().unwrap().max_finished_step, Some(27));
    }

    #[test]
    fn pruners_by_name_and_settings() {
        assert_eq!(Pruner::from_name("none").unwrap(), None);
        assert_eq!(Pruner::from_name("ASHA").unwrap(), Some(Pruner::asha()));
        let err = Pruner::from_name("bogus").unwrap_err().to_string();
        assert!(err.contains("median, asha, hyperband"), "{err}");
        let mut p = Pruner::asha();
        p.set("reduction_factor", 4).unwrap();
        assert!(
            p.set("n_warmup_steps", 1)
                .unwrap_err()
                .to_string()
                .contains("asha")
        );
        p.set("reduction_factor", 1).unwrap();
        assert!(
            p.check()
                .unwrap_err()
                .to_string()
                .contains("reduction_factor")
        );
    }
}
