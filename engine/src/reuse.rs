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

/// Values by key with their sizes in bytes, the least recently used dropped first beyond a
/// byte limit: this module's store and the executors' partition cache
/// ([`crate::cluster::cache`]).
pub(crate) struct Lru<V> {
    entries: HashMap<String, (V, usize, u64)>,
    bytes: usize,
    clock: u64,
}

impl<V> Default for Lru<V> {
    fn default() -> Self {
        Lru {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
        }
    }
}

impl<V: Clone> Lru<V> {
    /// The value under `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        let (value, _, used) = self.entries.get_mut(key)?;
        *used = clock;
        Some(value.clone())
    }

    /// Keeps `value` (`bytes` bytes) under `key`, then drops the least recently used entries
    /// until at most `limit` bytes are kept.
    pub(crate) fn put(&mut self, key: String, value: V, bytes: usize, limit: usize) {
        self.clock += 1;
        if let Some((_, old, _)) = self.entries.insert(key, (value, bytes, self.clock)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.shrink_to(limit);
    }

    /// Drops the least recently used entries until at most `limit` bytes are kept.
    pub(crate) fn shrink_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((_, b, _)) = self.entries.remove(&oldest) {
                self.bytes -= b;
            }
        }
    }

    /// Drops the entries whose key `drop` selects; returns how many and their bytes.
    pub(crate) fn remove_where(&mut self, drop: impl Fn(&str) -> bool) -> (usize, usize) {
        let before = (self.entries.len(), self.bytes);
        let mut freed = 0;
        self.entries.retain(|key, (_, bytes, _)| {
            let gone = drop(key);
            if gone {
                freed += *bytes;
            }
            !gone
        });
        self.bytes -= freed;
        (before.0 - self.entries.len(), freed)
    }

    /// Entries and bytes kept.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}

fn kept() -> &'static Mutex<Lru<Arc<dyn Any + Send + Sync>>> {
    static KEPT: OnceLock<Mutex<Lru<Arc<dyn Any + Send + Sync>>>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

/// What is kept under `key`, if it is a `T`.
pub fn get<T: Send + Sync + 'static>(key: &str) -> Option<Arc<T>> {
    kept().lock().ok()?.get(key)?.downcast::<T>().ok()
}

/// Keeps `value` (about `bytes` bytes) under `key`, dropping the least recently used entries
/// beyond [`REUSE_BYTES`]; a value larger than that is not kept.
pub fn put<T: Send + Sync + 'static>(key: String, value: Arc<T>, bytes: usize) {
    if bytes > REUSE_BYTES {
        return;
    }
    if let Ok(mut k) = kept().lock() {
        k.put(key, value, bytes, REUSE_BYTES);
    }
}

/// Removes what is kept under `key` and returns it, if it is a `T`.
pub fn take<T: Send + Sync + 'static>(key: &str) -> Option<Arc<T>> {
    let mut k = kept().lock().ok()?;
    let value = k.get(key)?.downcast::<T>().ok()?;
    k.remove_where(|other| other == key);
    Some(value)
}

/// Drops every entry whose key starts with `prefix` (what one search kept, say); returns how
/// many went.
pub fn forget(prefix: &str) -> usize {
    kept()
        .lock()
        .map(|mut k| k.remove_where(|key| key.starts_with(prefix)).0)
        .unwrap_or_default()
}

/// How many entries and bytes are kept.
pub fn usage() -> (usize, usize) {
    kept().lock().map(|k| k.usage()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_go_first_and_bytes_add_up() {
        let mut lru = Lru::default();
        lru.put("a".to_string(), 1, 40, 100);
        lru.put("b".to_string(), 2, 40, 100);
        assert_eq!(lru.get("a"), Some(1)); // a is now more recent than b
        lru.put("c".to_string(), 3, 40, 100); // 120 > 100: b goes
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.usage(), (2, 80));
        // Replacing a key replaces its size.
        lru.put("a".to_string(), 4, 10, 100);
        assert_eq!((lru.get("a"), lru.usage()), (Some(4), (2, 50)));
        lru.shrink_to(20); // c (40 bytes, older) goes, a (10) stays
        assert_eq!((lru.get("c"), lru.usage()), (None, (1, 10)));
        lru.shrink_to(0);
        assert_eq!(lru.usage(), (0, 0));
    }
}
