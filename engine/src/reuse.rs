//! What fits derive from rows that do not change, kept per process: trials and folds of a
//! search over the same split read and prepare those rows once, not once per fit.
//!
//! A dataset opts in with [`crate::Dataset::reusable`] (a key its rows stay the same under, as
//! the search objective's held-out splits do); a fit then keeps what it derives (the assembled
//! feature rows, a tree's binned codes) here under that key and what shaped it. At most
//! [`REUSE_BYTES`] are kept, the least recently used dropped first.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The most bytes kept.
pub const REUSE_BYTES: usize = 1 << 30;

type Entry = (Arc<dyn Any + Send + Sync>, usize, u64);

#[derive(Default)]
struct Kept {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

fn kept() -> &'static Mutex<Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

/// What is kept under `key`, if it is a `T`.
pub fn get<T: Send + Sync + 'static>(key: &str) -> Option<Arc<T>> {
    let mut k = kept().lock().ok()?;
    k.clock += 1;
    let clock = k.clock;
    let (value, _, used) = k.entries.get_mut(key)?;
    *used = clock;
    Arc::clone(value).downcast::<T>().ok()
}

/// Keeps `value` (about `bytes` bytes) under `key`, dropping the least recently used entries
/// beyond [`REUSE_BYTES`]; a value larger than that is not kept.
pub fn put<T: Send + Sync + 'static>(key: String, value: Arc<T>, bytes: usize) {
    if bytes > REUSE_BYTES {
        return;
    }
    let Ok(mut k) = kept().lock() else {
        return;
    };
    k.clock += 1;
    let clock = k.clock;
    if let Some((_, old, _)) = k.entries.insert(key, (value, bytes, clock)) {
        k.bytes -= old;
    }
    k.bytes += bytes;
    while k.bytes > REUSE_BYTES {
        let Some(oldest) = k
            .entries
            .iter()
            .min_by_key(|(_, (_, _, used))| *used)
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        if let Some((_, b, _)) = k.entries.remove(&oldest) {
            k.bytes -= b;
        }
    }
}

/// How many entries and bytes are kept.
pub fn usage() -> (usize, usize) {
    kept()
        .lock()
        .map(|k| (k.entries.len(), k.bytes))
        .unwrap_or_default()
}
