//! The aggregate primitive (Spark's `treeAggregate`): a [`Statistic`] computed per partition
//! and merged, run by the local runner ([`run_local`]) or as a DataFusion aggregate query
//! ([`run_embedded`], through [`StatisticUdaf`]).

mod local;
mod partials;
mod udaf;

pub use local::run_local;
pub use partials::{PartialsToClient, STATE_COLUMN};
pub(crate) use udaf::{StatisticAccumulator, binary_state_field};
pub use udaf::{StatisticUdaf, quoted_name, run_embedded};

use std::fmt::Debug;

use crate::error::{QuiverError, Result};
use crate::vector::FeatureBatch;

/// Which columns besides the features a statistic reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatInputs {
    pub label: bool,
    pub weight: bool,
}

/// A mergeable statistic over feature batches: gradients and loss for a weight vector,
/// k-means sums per centre, split histograms, a Gram matrix, a feature summary.
///
/// Parameters (weights, centres) live in the implementing value and travel with it, never as
/// query literals. `update` is the hot loop: it sees whole row-major slices and must not
/// allocate per row. Merging must be associative; the runners merge partial states in a
/// fixed order so a run is reproducible.
pub trait Statistic: Send + Sync + Debug + 'static {
    /// Mergeable partial result.
    type State: Send + Sync + Debug + 'static;
    /// What `finish` makes of the merged state.
    type Output;

    /// Kind name, e.g. `"feature_summary"`: also the name of its aggregate function and the key
    /// of its codec ([`crate::FunctionRegistry::add_statistic`]). Declared once, here.
    const NAME: &'static str;

    /// [`Statistic::NAME`].
    fn name(&self) -> &str {
        Self::NAME
    }

    /// The statistic's parameters as bytes: its identity in query plans and the payload a
    /// codec ships to executors.
    fn params(&self) -> Result<Vec<u8>>;

    /// Number of features expected per row.
    fn dim(&self) -> usize;

    /// Columns read besides the features (label, weight). Defaults to features only.
    fn inputs(&self) -> StatInputs {
        StatInputs::default()
    }

    fn init(&self) -> Self::State;

    fn update(&self, state: &mut Self::State, batch: &FeatureBatch<'_>) -> Result<()>;

    fn merge(&self, state: &mut Self::State, other: &Self::State) -> Result<()>;

    fn finish(&self, state: Self::State) -> Result<Self::Output>;

    /// Appends the state's serialised form to `out` (crosses partition and process boundaries).
    fn encode_state(&self, state: &Self::State, out: &mut Vec<u8>);

    fn decode_state(&self, bytes: &[u8]) -> Result<Self::State>;

    /// Approximate heap size of a state in bytes, reported to DataFusion's memory accounting
    /// (so a memory limit sees it). Required: a state that grows with the data must say so.
    fn state_size(&self, state: &Self::State) -> usize;
}

/// The heap bytes of a vector's buffer.
pub fn vec_size<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Approximate heap bytes of a B-tree map of `len` entries (nodes hold up to 11 entries and
/// run about two-thirds full).
pub fn btree_size<K, V>(len: usize) -> usize {
    len * (std::mem::size_of::<K>() + std::mem::size_of::<V>()) * 3 / 2
}

/// Appends `values` as little-endian `f64`s: the encoding most statistic states use.
pub fn encode_f64s(values: &[f64], out: &mut Vec<u8>) {
    out.reserve(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads exactly `n` little-endian `f64`s from the front of `bytes`, returning them and the rest.
pub fn decode_f64s(bytes: &[u8], n: usize) -> Result<(Vec<f64>, &[u8])> {
    if bytes.len() < n * 8 {
        return Err(QuiverError::internal(format!(
            "statistic state too short: {} bytes for {n} values",
            bytes.len()
        )));
    }
    let (head, rest) = bytes.split_at(n * 8);
    let values = head
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })
        .collect();
    Ok((values, rest))
}
