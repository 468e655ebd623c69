//! The model store: named, versioned models on an object store. A version is a directory
//! `<name>/v<N>/` holding its payload parts and, written last, `metadata.json`: a version is
//! visible only once its metadata exists, so readers never see half a model.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{QuiverError, Result};
use crate::io::Location;

/// Current version of the on-store model format. Readers refuse newer formats.
pub const MODEL_FORMAT_VERSION: u32 = 1;

const METADATA: &str = "metadata.json";
const PARTS: &str = "parts";
const TOMBSTONE: &str = "_deleted";

/// One feature of a model's input schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureField {
    pub name: String,
    pub data_type: String,
}

/// What a model writer supplies; the store adds name, version, time and part list.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelDraft {
    /// Model kind, e.g. `"logistic_regression"`, `"pipeline"`.
    pub kind: String,
    /// Format version of this kind's payload.
    pub format_version: u32,
    pub params: serde_json::Value,
    pub features: Vec<FeatureField>,
    pub label: Option<String>,
    pub metrics: serde_json::Value,
    pub training_summary: serde_json::Value,
}

/// `metadata.json` of a stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub version: u64,
    pub kind: String,
    pub format_version: u32,
    pub params: serde_json::Value,
    pub features: Vec<FeatureField>,
    pub label: Option<String>,
    pub metrics: serde_json::Value,
    pub training_summary: serde_json::Value,
    /// RFC 3339 time of publication.
    pub created_at: String,
    /// Payload part names with their sizes in bytes.
    pub parts: Vec<(String, u64)>,
    pub quiver_version: String,
}

/// A model store rooted at an object-store location.
#[derive(Debug, Clone)]
pub struct ModelStore {
    display: String,
    absolute: String,
    store: Arc<dyn ObjectStore>,
    root: Path,
}

/// A loaded version: its metadata and access to its parts.
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub metadata: ModelMetadata,
    store: Arc<dyn ObjectStore>,
    dir: Path,
}

impl StoredModel {
    /// Reads one payload part.
    pub async fn part(&self, name: &str) -> Result<Bytes> {
        let path = self.dir.clone().join(PARTS).join(name);
        let corrupt = |reason: String| QuiverError::CorruptModel {
            name: self.metadata.name.clone(),
            version: self.metadata.version,
            path: path.to_string(),
            reason,
        };
        if !self.metadata.parts.iter().any(|(p, _)| p == name) {
            return Err(corrupt(format!(
                "no part '{name}'; parts: {}",
                self.metadata
                    .parts
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(|e| corrupt(format!("cannot read part: {e}")))?
            .bytes()
            .await
            .map_err(|e| corrupt(format!("cannot read part: {e}")))?;
        Ok(bytes)
    }
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| QuiverError::InvalidModelName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 128 {
        return Err(bad("must have 1 to 128 characters"));
    }
    if name.starts_with('.') || name.starts_with('_') {
        return Err(bad("must not start with '.' or '_'"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(bad("only letters, digits, '_', '-' and '.' are allowed"));
    }
    Ok(())
}

fn version_dir(v: u64) -> String {
    format!("v{v:06}")
}

fn parse_version_dir(s: &str) -> Option<u64> {
    s.strip_prefix('v')?.parse().ok()
}

impl ModelStore {
    /// A store at a resolved location (see `QuiverSession::model_store`).
    pub fn new(location: Location, display: impl Into<String>) -> Self {
        ModelStore {
            display: display.into(),
            absolute: location.url.to_string(),
            store: location.store,
            root: location.path,
        }
    }

    /// Opens the store at `location` outside any session (what executors do with the store a
    /// plan names), with the given S3 settings.
    pub fn open(location: &str, s3: &crate::config::S3Config) -> Result<Self> {
        let ctx = datafusion::prelude::SessionContext::new_with_config_rt(
            datafusion::prelude::SessionConfig::new(),
            crate::cluster::runtime_env(s3)?,
        );
        let loc = crate::io::resolve(&ctx, s3, location)?;
        Ok(ModelStore::new(loc, location))
    }

    /// The store's location as the user gave it.
    pub fn url(&self) -> &str {
        &self.display
    }

    /// The store's location as an absolute URL (what another process opens).
    pub fn absolute_url(&self) -> &str {
        &self.absolute
    }

    fn model_dir(&self, name: &str) -> Path {
        self.root.clone().join(name)
    }

    fn os_err(&self, path: &Path) -> impl Fn(object_store::Error) -> QuiverError {
        let path = format!("{}/{}", self.display.trim_end_matches('/'), path);
        move |source| QuiverError::ObjectStore {
            path: path.clone(),
            source,
        }
    }

    fn version_not_found(&self, name: &str, version: u64, versions: &[u64]) -> QuiverError {
        QuiverError::ModelVersionNotFound {
            name: name.to_string(),
            version,
            store: self.display.clone(),
            available: versions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Every version directory of `name`, published or not.
    async fn all_version_dirs(&self, name: &str) -> Result<Vec<u64>> {
        let dir = self.model_dir(name);
        let listing = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(self.os_err(&dir))?;
        let mut v: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_version_dir))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn is_published(&self, name: &str, v: u64) -> Result<bool> {
        let path = self.model_dir(name).join(version_dir(v)).join(METADATA);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.os_err(&path)(e)),
        }
    }

    /// Published versions of `name`, ascending. Empty when the model does not exist.
    pub async fn versions(&self, name: &str) -> Result<Vec<u64>> {
        validate_name(name)?;
        let mut out = Vec::new();
        for v in self.all_version_dirs(name).await? {
            if self.is_published(name, v).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Saves a new version of `name`: writes every part, then publishes `metadata.json`. If a
    /// part fails (the iterator yields an error, or a write fails) the parts written so far are
    /// removed and nothing is published; earlier versions stay as they were.
    pub async fn save(
        &self,
        name: &str,
        draft: ModelDraft,
        parts: impl IntoIterator<Item = Result<(String, Bytes)>>,
    ) -> Result<ModelMetadata> {
        validate_name(name)?;
        // Never reuse the number of an unfinished version: its leftovers must not mix in.
        let version = self
            .all_version_dirs(name)
            .await?
            .last()
            .copied()
            .unwrap_or(0)
            + 1;
        let dir = self.model_dir(name).join(version_dir(version));
        let mut written: Vec<Path> = Vec::new();
        let mut listed = Vec::new();
        let result: Result<()> = async {
            for part in parts {
                let (part_name, bytes) = part?;
                if part_name.is_empty() || part_name.contains('/') || part_name == METADATA {
                    return Err(QuiverError::InvalidParam {
                        param: "model part".to_string(),
                        reason: format!("invalid part name '{part_name}'"),
                    });
                }
                let path = dir.clone().join(PARTS).join(part_name.as_str());
                let len = bytes.len() as u64;
                self.store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(self.os_err(&path))?;
                written.push(path);
                listed.push((part_name, len));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.remove_all(&written).await;
            return Err(e);
        }
        let metadata = ModelMetadata {
            name: name.to_string(),
            version,
            kind: draft.kind,
            format_version: draft.format_version,
            params: draft.params,
            features: draft.features,
            label: draft.label,
            metrics: draft.metrics,
            training_summary: draft.training_summary,
            created_at: chrono::Utc::now().to_rfc3339(),
            parts: listed,
            quiver_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let json = serde_json::to_vec_pretty(&metadata).map_err(|source| QuiverError::Json {
            context: format!("metadata of model '{name}'"),
            source,
        })?;
        let meta_path = dir.clone().join(METADATA);
        // Create-only where the store supports it: two writers never publish the same version.
        let put = self
            .store
            .put_opts(
                &meta_path,
                PutPayload::from(json.clone()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        let put = match put {
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.put(&meta_path, PutPayload::from(json)).await
            }
            other => other,
        };
        if let Err(e) = put {
            self.remove_all(&written).await;
            return Err(self.os_err(&meta_path)(e));
        }
        Ok(metadata)
    }

    async fn remove_all(&self, paths: &[Path]) {
        for p in paths {
            // Best effort: an unpublished leftover is invisible anyway.
            let _ = self.store.delete(p).await;
        }
    }

    /// Loads version `version` of `name`, or its latest published version.
    pub async fn load(&self, name: &str, version: Option<u64>) -> Result<StoredModel> {
        let versions = self.versions(name).await?;
        let Some(&latest) = versions.last() else {
            return Err(QuiverError::ModelNotFound {
                name: name.to_string(),
                store: self.display.clone(),
            });
        };
        let v = match version {
            None => latest,
            Some(v) if versions.contains(&v) => v,
            Some(v) => {
                return Err(self.version_not_found(name, v, &versions));
            }
        };
        let dir = self.model_dir(name).join(version_dir(v));
        let meta_path = dir.clone().join(METADATA);
        let corrupt = |reason: String| QuiverError::CorruptModel {
            name: name.to_string(),
            version: v,
            path: format!("{}/{}", self.display.trim_end_matches('/'), meta_path),
            reason,
        };
        let bytes = self
            .store
            .get(&meta_path)
            .await
            .map_err(self.os_err(&meta_path))?
            .bytes()
            .await
            .map_err(self.os_err(&meta_path))?;
        let metadata: ModelMetadata = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("invalid metadata JSON: {e}")))?;
        if metadata.name != name || metadata.version != v {
            return Err(corrupt(format!(
                "metadata describes '{}' version {}",
                metadata.name, metadata.version
            )));
        }
        Ok(StoredModel {
            metadata,
            store: Arc::clone(&self.store),
            dir,
        })
    }

    /// The latest published version of every model, by name.
    pub async fn list(&self) -> Result<Vec<ModelMetadata>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(self.os_err(&self.root))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if !self.versions(&n).await?.is_empty() {
                out.push(self.load(&n, None).await?.metadata);
            }
        }
        Ok(out)
    }

    /// Deletes one version, or every version of `name` when `version` is `None`. The
    /// metadata goes first, so a version disappears whole even if the deletion stops midway.
    pub async fn delete(&self, name: &str, version: Option<u64>) -> Result<()> {
        let versions = self.versions(name).await?;
        if versions.is_empty() {
            return Err(QuiverError::ModelNotFound {
                name: name.to_string(),
                store: self.display.clone(),
            });
        }
        let targets: Vec<u64> = match version {
            None => self.all_version_dirs(name).await?,
            Some(v) if versions.contains(&v) => vec![v],
            Some(v) => {
                return Err(self.version_not_found(name, v, &versions));
            }
        };
        for v in targets {
            let dir = self.model_dir(name).join(version_dir(v));
            let meta = dir.clone().join(METADATA);
            match self.store.delete(&meta).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.os_err(&meta)(e)),
            }
            let mut listing = self.store.list(Some(&dir));
            let mut rest = Vec::new();
            while let Some(meta) = listing.next().await {
                rest.push(meta.map_err(self.os_err(&dir))?.location);
            }
            for p in rest {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.os_err(&p)(e)),
                }
            }
            if version.is_some() {
                // A tombstone keeps the number taken: a later save never reuses it.
                let tomb = dir.join(TOMBSTONE);
                self.store
                    .put(&tomb, PutPayload::from_static(b""))
                    .await
                    .map_err(self.os_err(&tomb))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("digits_lr-2.0").is_ok());
        for bad in ["", ".hidden", "_x", "a/b", "a b", &"x".repeat(200)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid model name"), "{bad}: {err}");
        }
    }

    #[test]
    fn version_dirs_sort_and_parse() {
        assert_eq!(version_dir(7), "v000007");
        assert_eq!(parse_version_dir("v000007"), Some(7));
        assert_eq!(parse_version_dir("tmp"), None);
    }
}
