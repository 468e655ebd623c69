//! Random forests and single trees: each tree grows on its own row sample (Poisson counts
//! for bootstrap, as Spark draws them) with a random feature subset per node; trees grow in
//! parallel and are averaged.

use rayon::prelude::*;

use super::Training;
use super::bins::splitmix;
use super::ensemble::{Combine, Ensemble, Tree};
use super::grow::{Criterion, GrowConfig, Rng64, RowStats, grow};
use super::params::{ForestParams, Impurity, features_per_node};
use crate::error::Result;

/// A Poisson(λ) draw (Knuth's product of uniforms; λ ≤ 1 here).
fn poisson(rng: &mut Rng64, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let mut k = 0;
    let mut p = rng.uniform();
    while p > limit {
        k += 1;
        p *= rng.uniform();
    }
    k
}

pub(super) fn fit(p: &ForestParams, t: &Training) -> Result<Ensemble> {
    let data = &t.binned;
    let n = data.n;
    let num_trees = p.num_trees as usize;
    let classifier = t.classes.is_some();
    let m = features_per_node(&p.feature_subset_strategy, data.d, classifier, num_trees)?;
    let k = t.classes.as_ref().map_or(0, |c| c.1);
    let criterion = match p.impurity {
        Impurity::Gini => Criterion::Gini { k },
        Impurity::Entropy => Criterion::Entropy { k },
        Impurity::Variance => Criterion::Variance,
    };
    // Unweighted, the weights (with bootstrap multiplicity) are the counts.
    let counted = p.weighted;
    let sampled = p.bootstrap || p.subsampling_rate < 1.0;
    let trees: Vec<Tree> = (0..num_trees)
        .into_par_iter()
        .map(|i| {
            let seed = splitmix(p.seed ^ splitmix(i as u64 + 1));
            let mut rng = Rng64::new(seed);
            let (rows, count) = if sampled {
                let mut rows = Vec::with_capacity(n);
                let mut count = vec![0.0; n];
                for (r, c) in count.iter_mut().enumerate() {
                    let k = if p.bootstrap {
                        poisson(&mut rng, p.subsampling_rate)
                    } else {
                        u32::from(rng.uniform() < p.subsampling_rate)
                    };
                    if k > 0 {
                        rows.push(r as u32);
                        *c = k as f64;
                    }
                }
                (rows, Some(count))
            } else {
                ((0..n as u32).collect(), None)
            };
            let mut rows = rows;
            let w: Vec<f64> = match &count {
                Some(c) => t.weight.iter().zip(c).map(|(w, c)| w * c).collect(),
                None => t.weight.clone(),
            };
            let cfg = GrowConfig {
                criterion,
                max_depth: p.max_depth as usize,
                min_size: p.min_instances_per_node as f64,
                min_info_gain: p.min_info_gain,
                features_per_node: m,
                seed: splitmix(seed ^ 0x5eed),
            };
            let all: Vec<usize> = (0..data.d).collect();
            match &t.classes {
                Some((class, k)) => {
                    let cw: Vec<[f64; 2]> =
                        class.iter().zip(&w).map(|(c, w)| [*c as f64, *w]).collect();
                    let stats = RowStats::Classes {
                        cw: &cw,
                        k: *k,
                        counted,
                    };
                    grow(data, &stats, count.as_deref(), &mut rows, &all, &cfg).tree
                }
                None => {
                    let gh: Vec<[f64; 2]> =
                        w.iter().zip(&t.label).map(|(w, y)| [w * y, *w]).collect();
                    let stats = RowStats::GradHess { gh: &gh, counted };
                    grow(data, &stats, count.as_deref(), &mut rows, &all, &cfg).tree
                }
            }
        })
        .collect();
    let groups = t.classes.as_ref().map_or(1, |c| c.1);
    Ok(Ensemble {
        dim: data.d,
        combine: Combine::Average,
        groups,
        base: vec![0.0; groups],
        trees,
    })
}
