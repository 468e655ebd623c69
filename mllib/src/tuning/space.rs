//! Search spaces (hyperopt's vocabulary): `choice` with conditional sub-spaces, `uniform`,
//! `quniform`, `loguniform`, `qloguniform`, `normal`, `qnormal`, `lognormal`, `randint`.
//! Built in Rust with [`hp`] or parsed from JSON; a point is a map from parameter name to value
//! holding the active parameters only.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::{Value, json};

use crate::error::{MllibError, Result};

/// A sampled point: parameter name → value (numbers, or a choice's value).
pub type Point = BTreeMap<String, Value>;

/// One option of a `choice`, with the parameters that exist only when it is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOption {
    pub value: Value,
    pub space: Space,
}

/// A parameter's prior.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    Choice(Vec<ChoiceOption>),
    Uniform {
        low: f64,
        high: f64,
    },
    QUniform {
        low: f64,
        high: f64,
        q: f64,
    },
    LogUniform {
        low: f64,
        high: f64,
    },
    QLogUniform {
        low: f64,
        high: f64,
        q: f64,
    },
    Normal {
        mu: f64,
        sigma: f64,
    },
    QNormal {
        mu: f64,
        sigma: f64,
        q: f64,
    },
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    /// Integers in `[low, high)`.
    RandInt {
        low: i64,
        high: i64,
    },
}

/// A named parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub dist: Dist,
}

/// Parameters sampled together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    pub params: Vec<Param>,
}

/// Builders: `hp::loguniform("reg_param", 1e-4, 1.0)`.
pub mod hp {
    use super::*;

    fn p(name: &str, dist: Dist) -> Param {
        Param {
            name: name.to_string(),
            dist,
        }
    }
    pub fn uniform(name: &str, low: f64, high: f64) -> Param {
        p(name, Dist::Uniform { low, high })
    }
    pub fn quniform(name: &str, low: f64, high: f64, q: f64) -> Param {
        p(name, Dist::QUniform { low, high, q })
    }
    pub fn loguniform(name: &str, low: f64, high: f64) -> Param {
        p(name, Dist::LogUniform { low, high })
    }
    pub fn qloguniform(name: &str, low: f64, high: f64, q: f64) -> Param {
        p(name, Dist::QLogUniform { low, high, q })
    }
    pub fn normal(name: &str, mu: f64, sigma: f64) -> Param {
        p(name, Dist::Normal { mu, sigma })
    }
    pub fn qnormal(name: &str, mu: f64, sigma: f64, q: f64) -> Param {
        p(name, Dist::QNormal { mu, sigma, q })
    }
    pub fn lognormal(name: &str, mu: f64, sigma: f64) -> Param {
        p(name, Dist::LogNormal { mu, sigma })
    }
    pub fn randint(name: &str, low: i64, high: i64) -> Param {
        p(name, Dist::RandInt { low, high })
    }
    /// Options without sub-spaces.
    pub fn choice(name: &str, values: impl IntoIterator<Item = Value>) -> Param {
        p(
            name,
            Dist::Choice(
                values
                    .into_iter()
                    .map(|value| ChoiceOption {
                        value,
                        space: Space::default(),
                    })
                    .collect(),
            ),
        )
    }
    /// Options with their conditional sub-spaces.
    pub fn choice_with(name: &str, options: Vec<(Value, Space)>) -> Param {
        p(
            name,
            Dist::Choice(
                options
                    .into_iter()
                    .map(|(value, space)| ChoiceOption { value, space })
                    .collect(),
            ),
        )
    }
}

fn invalid(name: &str, reason: String) -> MllibError {
    MllibError::InvalidParam {
        param: format!("search space entry '{name}'"),
        reason,
    }
}

impl Dist {
    /// Checks the bounds.
    fn check(&self, name: &str) -> Result<()> {
        let bad = |r: &str| Err(invalid(name, r.to_string()));
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        match self {
            Dist::Choice(o) if o.is_empty() => bad("a choice needs at least one option"),
            Dist::Choice(o) => o.iter().try_for_each(|c| c.space.check()),
            Dist::Uniform { low, high } if !(finite(&[*low, *high, high - low]) && low < high) => {
                bad("needs finite low < high with a finite width high − low")
            }
            Dist::QUniform { low, high, q } | Dist::QLogUniform { low, high, q }
                if !(*q > 0.0
                    && q.is_finite()
                    && finite(&[*low, *high, high - low])
                    && low < high) =>
            {
                bad("needs finite low < high (with a finite width) and q > 0")
            }
            Dist::LogUniform { low, high } | Dist::QLogUniform { low, high, .. }
                if !(*low > 0.0 && low < high && high.is_finite()) =>
            {
                bad("a log-uniform range needs 0 < low < high")
            }
            Dist::Normal { mu, sigma }
            | Dist::QNormal { mu, sigma, .. }
            | Dist::LogNormal { mu, sigma }
                if !(mu.is_finite() && *sigma > 0.0 && sigma.is_finite()) =>
            {
                bad("needs a finite mu and sigma > 0")
            }
            Dist::QNormal { q, .. } if !(*q > 0.0 && q.is_finite()) => bad("needs q > 0"),
            Dist::RandInt { low, high } if low >= high => bad("needs low < high"),
            _ => Ok(()),
        }
    }

    /// Whether values live on a log scale (sampling, density and grids work on the log).
    pub fn is_log(&self) -> bool {
        matches!(
            self,
            Dist::LogUniform { .. } | Dist::QLogUniform { .. } | Dist::LogNormal { .. }
        )
    }

    /// The quantum, if the values are rounded to multiples of one.
    pub fn quantum(&self) -> Option<f64> {
        match self {
            Dist::QUniform { q, .. } | Dist::QLogUniform { q, .. } | Dist::QNormal { q, .. } => {
                Some(*q)
            }
            Dist::RandInt { .. } => Some(1.0),
            _ => None,
        }
    }

    /// The prior in the working space (log for log scales): (mean, sigma, bounds).
    pub fn prior(&self) -> (f64, f64, Option<(f64, f64)>) {
        match self {
            Dist::Uniform { low, high } | Dist::QUniform { low, high, .. } => {
                ((low + high) / 2.0, high - low, Some((*low, *high)))
            }
            Dist::LogUniform { low, high } | Dist::QLogUniform { low, high, .. } => {
                let (a, b) = (low.ln(), high.ln());
                ((a + b) / 2.0, b - a, Some((a, b)))
            }
            Dist::RandInt { low, high } => {
                let (a, b) = (*low as f64 - 0.5, *high as f64 - 0.5);
                ((a + b) / 2.0, b - a, Some((a, b)))
            }
            Dist::Normal { mu, sigma }
            | Dist::QNormal { mu, sigma, .. }
            | Dist::LogNormal { mu, sigma } => (*mu, *sigma, None),
            Dist::Choice(_) => (0.0, 1.0, None),
        }
    }

    /// From the working space to a parameter value (exp for log scales, then rounding).
    pub fn finish(&self, w: f64) -> Value {
        let mut v = if self.is_log() { w.exp() } else { w };
        if let Some(q) = self.quantum() {
            v = (v / q).round() * q;
        }
        match self {
            Dist::RandInt { low, high } => json!((v as i64).clamp(*low, *high - 1)),
            _ => json!(v),
        }
    }

    /// A parameter value in the working space.
    pub fn working(&self, v: &Value) -> Option<f64> {
        let x = v.as_f64()?;
        Some(if self.is_log() { x.max(1e-300).ln() } else { x })
    }

    /// A draw from the prior, in the working space.
    pub fn sample_working(&self, rng: &mut impl Rng) -> f64 {
        let (mu, sigma, bounds) = self.prior();
        match bounds {
            Some((a, b)) => rng.random_range(a..b),
            None => mu + sigma * standard_normal(rng),
        }
    }
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Space {
    pub fn new(params: Vec<Param>) -> Result<Self> {
        let s = Space { params };
        s.check()?;
        Ok(s)
    }

    /// Bounds valid, names unique across the whole space (sub-spaces included).
    pub fn check(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        self.check_names(&mut names)
    }

    fn check_names(&self, names: &mut std::collections::BTreeSet<String>) -> Result<()> {
        for p in &self.params {
            p.dist.check(&p.name)?;
            if !names.insert(p.name.clone()) {
                return Err(invalid(&p.name, "the name is used twice".to_string()));
            }
            if let Dist::Choice(options) = &p.dist {
                // Sibling sub-spaces may reuse a name (only one is ever active).
                let mut branch_names = Vec::new();
                for o in options {
                    let mut n = names.clone();
                    o.space.check_names(&mut n)?;
                    branch_names.extend(n);
                }
                names.extend(branch_names);
            }
        }
        Ok(())
    }

    /// A draw from the prior.
    pub fn sample(&self, rng: &mut impl Rng) -> Point {
        let mut point = Point::new();
        self.sample_into(rng, &mut point);
        point
    }

    fn sample_into(&self, rng: &mut impl Rng, point: &mut Point) {
        for p in &self.params {
            match &p.dist {
                Dist::Choice(options) => {
                    let k = rng.random_range(0..options.len());
                    point.insert(p.name.clone(), options[k].value.clone());
                    options[k].space.sample_into(rng, point);
                }
                d => {
                    let w = d.sample_working(rng);
                    point.insert(p.name.clone(), d.finish(w));
                }
            }
        }
    }

    /// How many points [`Space::grid`] makes, or `None` when that overflows (nothing is
    /// built).
    pub fn grid_size(&self, points: usize) -> Option<usize> {
        let mut total: usize = 1;
        for p in &self.params {
            let n = match &p.dist {
                Dist::Choice(options) => options
                    .iter()
                    .try_fold(0usize, |acc, o| acc.checked_add(o.space.grid_size(points)?))?,
                d => grid_count(d, points),
            };
            total = total.checked_mul(n)?;
        }
        Some(total)
    }

    /// Every point of a grid: all options of each choice (with their sub-spaces), all
    /// integers of a randint and all multiples of q of a bounded quantized range (when there are
    /// at most `points` × 4 of them), and `points` evenly spaced values (log-spaced on log
    /// scales; quantiles ±2σ for normals) of the others.
    pub fn grid(&self, points: usize) -> Vec<Point> {
        let mut out = vec![Point::new()];
        for p in &self.params {
            let mut next = Vec::new();
            for base in &out {
                match &p.dist {
                    Dist::Choice(options) => {
                        for o in options {
                            let mut with = base.clone();
                            with.insert(p.name.clone(), o.value.clone());
                            for sub in o.space.grid(points) {
                                let mut full = with.clone();
                                full.extend(sub);
                                next.push(full);
                            }
                        }
                    }
                    d => {
                        for v in grid_values(d, points) {
                            let mut with = base.clone();
                            with.insert(p.name.clone(), v);
                            next.push(with);
                        }
                    }
                }
            }
            out = next;
        }
        out
    }

    /// The space as JSON, in the form [`Space::from_json`] reads (parsing it gives this space
    /// back).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for p in &self.params {
            let spec = match &p.dist {
                Dist::Uniform { low, high } => json!({ "uniform": [low, high] }),
                Dist::QUniform { low, high, q } => json!({ "quniform": [low, high, q] }),
                Dist::LogUniform { low, high } => json!({ "loguniform": [low, high] }),
                Dist::QLogUniform { low, high, q } => json!({ "qloguniform": [low, high, q] }),
                Dist::Normal { mu, sigma } => json!({ "normal": [mu, sigma] }),
                Dist::QNormal { mu, sigma, q } => json!({ "qnormal": [mu, sigma, q] }),
                Dist::LogNormal { mu, sigma } => json!({ "lognormal": [mu, sigma] }),
                Dist::RandInt { low, high } => json!({ "randint": [low, high] }),
                Dist::Choice(options) => {
                    let options: Vec<Value> = options
                        .iter()
                        .map(|o| {
                            if o.space.params.is_empty() && !o.value.is_object() {
                                o.value.clone()
                            } else {
                                json!({ "value": o.value, "space": o.space.to_json() })
                            }
                        })
                        .collect();
                    json!({ "choice": options })
                }
            };
            out.insert(p.name.clone(), spec);
        }
        Value::Object(out)
    }

    /// Parses a space from JSON: `{"name": {"loguniform": [1e-4, 1]}, "kind": {"choice":
    /// ["a", {"value": "b", "space": {…}}]}}`. Errors name the entry.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("(root)", "a search space is a JSON object".to_string()))?;
        let mut params = Vec::new();
        for (name, spec) in obj {
            params.push(Param {
                name: name.clone(),
                dist: parse_dist(name, spec)?,
            });
        }
        Space::new(params)
    }
}

fn parse_dist(name: &str, spec: &Value) -> Result<Dist> {
    let obj = spec.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        invalid(
            name,
            format!("expected one distribution like {{\"uniform\": [0, 1]}}, got {spec}"),
        )
    })?;
    let (kind, args) = obj.iter().next().expect("one entry");
    let nums = |n: usize| -> Result<Vec<f64>> {
        let a = args
            .as_array()
            .filter(|a| a.len() == n)
            .ok_or_else(|| invalid(name, format!("'{kind}' takes {n} numbers, got {args}")))?;
        a.iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| invalid(name, format!("'{kind}': {x} is not a number")))
            })
            .collect()
    };
    Ok(match kind.as_str() {
        "uniform" => {
            let a = nums(2)?;
            Dist::Uniform {
                low: a[0],
                high: a[1],
            }
        }
        "quniform" => {
            let a = nums(3)?;
            Dist::QUniform {
                low: a[0],
                high: a[1],
                q: a[2],
            }
        }
        "loguniform" => {
            let a = nums(2)?;
            Dist::LogUniform {
                low: a[0],
                high: a[1],
            }
        }
        "qloguniform" => {
            let a = nums(3)?;
            Dist::QLogUniform {
                low: a[0],
                high: a[1],
                q: a[2],
            }
        }
        "normal" => {
            let a = nums(2)?;
            Dist::Normal {
                mu: a[0],
                sigma: a[1],
            }
        }
        "qnormal" => {
            let a = nums(3)?;
            Dist::QNormal {
                mu: a[0],
                sigma: a[1],
                q: a[2],
            }
        }
        "lognormal" => {
            let a = nums(2)?;
            Dist::LogNormal {
                mu: a[0],
                sigma: a[1],
            }
        }
        "randint" => {
            let a = nums(2)?;
            // Integers a float carries exactly, so sampling and grids stay exact.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if a.iter()
                .any(|x| !(x.is_finite() && x.abs() <= EXACT && x.fract() == 0.0))
            {
                return Err(invalid(
                    name,
                    format!("randint takes whole numbers of at most 2^53 in size, got {a:?}"),
                ));
            }
            Dist::RandInt {
                low: a[0] as i64,
                high: a[1] as i64,
            }
        }
        "choice" => {
            let options = args
                .as_array()
                .ok_or_else(|| invalid(name, format!("'choice' takes a list, got {args}")))?;
            let mut out = Vec::new();
            for o in options {
                match o.as_object() {
                    Some(m) if m.contains_key("value") => out.push(ChoiceOption {
                        value: m["value"].clone(),
                        space: match m.get("space") {
                            Some(s) => Space::from_json(s)?,
                            None => Space::default(),
                        },
                    }),
                    _ => out.push(ChoiceOption {
                        value: o.clone(),
                        space: Space::default(),
                    }),
                }
            }
            Dist::Choice(out)
        }
        other => {
            return Err(invalid(
                name,
                format!(
                    "unknown distribution '{other}'; use choice, uniform, quniform, loguniform, qloguniform, normal, qnormal, lognormal or randint"
                ),
            ));
        }
    })
}

/// The multiples of q a bounded quantized range puts on a grid (in value space, before
/// rounding), when there are at most `points` × 4 of them: (first, q, how many).
fn quantized_range(d: &Dist, points: usize) -> Option<(f64, f64, usize)> {
    let (Some(q), (_, _, Some((a, b)))) = (d.quantum(), d.prior()) else {
        return None;
    };
    let (lo, hi) = if d.is_log() {
        (a.exp(), b.exp())
    } else {
        (a, b)
    };
    let count = ((hi - lo) / q).floor();
    if !(count.is_finite() && count + 1.0 <= points.saturating_mul(4) as f64) {
        return None;
    }
    let first = (lo / q).ceil() * q;
    let n = if first <= hi + 1e-12 {
        (((hi + 1e-12 - first) / q).floor() as usize + 1).min(count as usize + 1)
    } else {
        0
    };
    Some((first, q, n))
}

/// How many values [`grid_values`] gives (an upper bound: rounding may merge some), computed,
/// not enumerated.
fn grid_count(d: &Dist, points: usize) -> usize {
    let points = points.max(2);
    quantized_range(d, points).map_or(points, |(_, _, n)| n)
}

fn grid_values(d: &Dist, points: usize) -> Vec<Value> {
    let points = points.max(2);
    if let Some((first, q, n)) = quantized_range(d, points) {
        let mut out: Vec<Value> = (0..n)
            .map(|i| first + i as f64 * q)
            .map(|v| d.finish(if d.is_log() { v.ln() } else { v }))
            .collect();
        out.dedup();
        return out;
    }
    let (mu, sigma, bounds) = d.prior();
    let (a, b) = bounds.unwrap_or((mu - 2.0 * sigma, mu + 2.0 * sigma));
    let mut out: Vec<Value> = (0..points)
        .map(|i| d.finish(a + (b - a) * i as f64 / (points - 1) as f64))
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn samples_respect_their_priors_and_conditions() {
        let space = Space::new(vec![
            hp::loguniform("reg", 1e-4, 1.0),
            hp::quniform("depth", 1.0, 10.0, 1.0),
            hp::randint("k", 2, 5),
            hp::choice_with(
                "model",
                vec![
                    (
                        json!("lr"),
                        Space::new(vec![hp::uniform("alpha", 0.0, 1.0)]).unwrap(),
                    ),
                    (json!("kmeans"), Space::default()),
                ],
            ),
        ])
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut saw_alpha = (false, false);
        for _ in 0..500 {
            let p = space.sample(&mut rng);
            let reg = p["reg"].as_f64().unwrap();
            assert!((1e-4..=1.0).contains(&reg));
            let depth = p["depth"].as_f64().unwrap();
            assert!(depth.fract() == 0.0 && (1.0..=10.0).contains(&depth));
            assert!((2..5).contains(&p["k"].as_i64().unwrap()));
            match p["model"].as_str().unwrap() {
                "lr" => {
                    saw_alpha.0 = true;
                    assert!(p.contains_key("alpha"));
                }
                _ => {
                    saw_alpha.1 = true;
                    assert!(!p.contains_key("alpha"));
                }
            }
        }
        assert_eq!(saw_alpha, (true, true));
        // Seeded: the same draws again.
        let a = space.sample(&mut ChaCha8Rng::seed_from_u64(9));
        let b = space.sample(&mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn json_spaces_parse_and_bad_entries_are_named() {
        let s = Space::from_json(&json!({
            "reg_param": {"loguniform": [1e-4, 1.0]},
            "family": {"choice": ["auto", {"value": "multinomial", "space": {"tol": {"uniform": [0, 1]}}}]},
            "k": {"randint": [2, 6]}
        }))
        .unwrap();
        assert_eq!(s.params.len(), 3);
        let err = Space::from_json(&json!({"x": {"uniform": [1, 0]}})).unwrap_err();
        assert!(
            err.to_string().contains("'x'") && err.to_string().contains("low < high"),
            "{err}"
        );
        let err = Space::from_json(&json!({"y": {"gamma": [1, 2]}})).unwrap_err();
        assert!(
            err.to_string().contains("'y'")
                && err.to_string().contains("unknown distribution 'gamma'"),
            "{err}"
        );
        let err = Space::from_json(&json!({"z": {"loguniform": [0, 1]}})).unwrap_err();
        assert!(err.to_string().contains("0 < low"), "{err}");
        let err = Space::from_json(&json!({"w": {"uniform": [0]}})).unwrap_err();
        assert!(err.to_string().contains("takes 2 numbers"), "{err}");
    }

    #[test]
    fn ranges_too_wide_or_inexact_are_refused() {
        let e = Space::from_json(&json!({"x": {"uniform": [-1e308, 1e308]}})).unwrap_err();
        assert!(e.to_string().contains("finite width"), "{e}");
        let e = Space::from_json(&json!({"k": {"randint": [2, 1e19]}})).unwrap_err();
        assert!(e.to_string().contains("2^53"), "{e}");
        assert!(Space::from_json(&json!({"k": {"randint": [2, 10]}})).is_ok());
    }

    #[test]
    fn grids_enumerate_choices_integers_and_spaced_values() {
        let s = Space::new(vec![
            hp::choice("a", [json!(1), json!(2)]),
            hp::randint("k", 0, 3),
            hp::loguniform("r", 1e-3, 1e-1),
        ])
        .unwrap();
        let g = s.grid(3);
        assert_eq!(g.len(), 2 * 3 * 3);
        assert_eq!(s.grid_size(3), Some(g.len()));
        // Sizes that overflow are None, not a panic, and nothing is built.
        let wide = Space::new(
            (0..8)
                .map(|i| hp::uniform(&format!("x{i}"), 0.0, 1.0))
                .collect(),
        )
        .unwrap();
        assert_eq!(wide.grid_size(1 << 20), None);
        let rs: std::collections::BTreeSet<String> = g
            .iter()
            .map(|p| format!("{:.4}", p["r"].as_f64().unwrap()))
            .collect();
        assert_eq!(
            rs.into_iter().collect::<Vec<_>>(),
            vec!["0.0010", "0.0100", "0.1000"]
        );
    }
}
