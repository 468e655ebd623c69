//! The models SQL functions apply: loaded from the session's model store by name (`'m'`, the
//! latest version) or pinned (`'m@3'`), and kept per process so that a query loads each model
//! once, not once per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_engine::fanout::block_on;
use quiver_engine::{ModelMetadata, ModelStore, QuiverError};
use quiver_mllib::pipeline::DynModel;
use quiver_mllib::{RowPredictor, load_dyn};

use crate::error::{Result, SqlError};

/// How long "the latest version of m" is trusted before the store is asked again (another
/// process may have published a newer one). Statements of this session refresh it at once.
const LATEST_TTL: Duration = Duration::from_secs(2);

/// Most models kept loaded per process; the least recently used goes first.
const MAX_LOADED_MODELS: usize = 64;

/// A model as SQL functions use it.
#[derive(Debug)]
pub struct LoadedModel {
    pub metadata: ModelMetadata,
    pub model: Arc<dyn DynModel>,
    /// The model as functions of its input rows, or why it cannot be applied row by row.
    pub rows: std::result::Result<RowPredictor, String>,
}

impl LoadedModel {
    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.metadata.name, self.metadata.version)
    }

    pub fn rows(&self) -> Result<&RowPredictor> {
        self.rows.as_ref().map_err(|e| SqlError::Invalid(e.clone()))
    }
}

/// A model version: (name, version).
type ModelKey = (String, u64);

/// The model store of a SQL session and the models loaded from it.
#[derive(Debug)]
pub struct ModelCatalog {
    store: ModelStore,
    /// Loaded versions, with when the store last confirmed the version still exists.
    loaded: Mutex<HashMap<ModelKey, (Arc<LoadedModel>, Instant)>>,
    latest: Mutex<HashMap<String, (u64, Instant)>>,
}

/// `'name'` or `'name@version'`.
pub fn parse_reference(reference: &str) -> Result<(String, Option<u64>)> {
    match reference.rsplit_once('@') {
        None => Ok((reference.trim().to_string(), None)),
        Some((name, v)) => {
            let version = v.trim().parse::<u64>().map_err(|_| {
                SqlError::Invalid(format!(
                    "model reference '{reference}': the version after '@' must be a number"
                ))
            })?;
            Ok((name.trim().to_string(), Some(version)))
        }
    }
}

impl ModelCatalog {
    pub fn new(store: ModelStore) -> Arc<Self> {
        Arc::new(ModelCatalog {
            store,
            loaded: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Drops what is known of `name` (after this session created or dropped a version).
    pub fn forget(&self, name: &str) {
        self.latest.lock().expect("catalog lock").remove(name);
        self.loaded
            .lock()
            .expect("catalog lock")
            .retain(|(n, _), _| n != name);
    }

    /// How many model versions are loaded (bounded by the cache's size).
    pub fn loaded_count(&self) -> usize {
        self.loaded.lock().expect("catalog lock").len()
    }

    /// The model `reference` names, loading it on first use.
    pub async fn resolve(&self, reference: &str) -> Result<Arc<LoadedModel>> {
        let (name, pinned) = parse_reference(reference)?;
        let version = match pinned {
            Some(v) => v,
            None => {
                let fresh = self
                    .latest
                    .lock()
                    .expect("catalog lock")
                    .get(&name)
                    .filter(|(_, at)| at.elapsed() < LATEST_TTL)
                    .map(|(v, _)| *v);
                match fresh {
                    Some(v) => v,
                    None => {
                        let versions = self.store.versions(&name).await?;
                        let Some(&v) = versions.last() else {
                            return Err(QuiverError::ModelNotFound {
                                name: name.clone(),
                                store: self.store.url().to_string(),
                            }
                            .into());
                        };
                        self.latest
                            .lock()
                            .expect("catalog lock")
                            .insert(name.clone(), (v, Instant::now()));
                        v
                    }
                }
            }
        };
        let key = (name.clone(), version);
        let held = self.loaded.lock().expect("catalog lock").get(&key).cloned();
        if let Some((m, checked)) = held {
            if checked.elapsed() < LATEST_TTL || pinned.is_none() {
                // An unpinned name was just confirmed through its latest version.
                self.touch(&key);
                return Ok(m);
            }
            // A pinned version is confirmed again: it may have been dropped meanwhile.
            if self.store.versions(&name).await?.contains(&version) {
                self.touch(&key);
                return Ok(m);
            }
            self.loaded.lock().expect("catalog lock").remove(&key);
        }
        let (metadata, model) = load_dyn(&self.store, &name, Some(version)).await?;
        let rows = RowPredictor::from_stages(&name, std::slice::from_ref(&model))
            .map_err(|e| e.to_string());
        let loaded = Arc::new(LoadedModel {
            metadata,
            model,
            rows,
        });
        let mut held = self.loaded.lock().expect("catalog lock");
        held.insert(key, (Arc::clone(&loaded), Instant::now()));
        // Bounded: the model used least recently goes.
        while held.len() > MAX_LOADED_MODELS {
            let oldest = held
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
                .expect("a full cache has entries");
            held.remove(&oldest);
        }
        Ok(loaded)
    }

    /// Marks a loaded version as confirmed now.
    fn touch(&self, key: &ModelKey) {
        if let Some((_, at)) = self.loaded.lock().expect("catalog lock").get_mut(key) {
            *at = Instant::now();
        }
    }

    /// The model `reference` names if it is loaded (and, unpinned, its latest version is
    /// fresh): no I/O, no waiting.
    fn cached(&self, reference: &str) -> Option<Arc<LoadedModel>> {
        let (name, pinned) = parse_reference(reference).ok()?;
        let version = match pinned {
            Some(v) => v,
            None => {
                let latest = self.latest.lock().expect("catalog lock");
                let (v, at) = latest.get(&name)?;
                if at.elapsed() >= LATEST_TTL {
                    return None;
                }
                *v
            }
        };
        let held = self.loaded.lock().expect("catalog lock");
        let (m, checked) = held.get(&(name, version))?;
        // A pinned version is confirmed by the store again once in a while.
        (pinned.is_none() || checked.elapsed() < LATEST_TTL).then(|| Arc::clone(m))
    }

    /// [`ModelCatalog::resolve`] from synchronous code (function planning and execution).
    pub fn resolve_blocking(&self, reference: &str) -> Result<Arc<LoadedModel>> {
        match self.cached(reference) {
            Some(m) => Ok(m),
            None => block_on(self.resolve(reference)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_pin_versions() {
        assert_eq!(parse_reference("m").unwrap(), ("m".to_string(), None));
        assert_eq!(parse_reference("m@3").unwrap(), ("m".to_string(), Some(3)));
        let err = parse_reference("m@x").unwrap_err();
        assert!(err.to_string().contains("m@x"), "{err}");
    }
}
