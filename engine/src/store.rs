//! The model store: named, versioned models on an object store. A version is a directory
//! `<name>/v<N>/` holding its payload parts and, written last, `metadata.json`: a version is
//! visible only once its metadata exists, so readers never see half a model.
//!
//! Writers never share a version. A save first claims its version number with a create-only
//! marker `v<N>/_claim` (a conditional put on every store that has one: local files, memory,
//! S3), retrying with the next number when another writer got there first; its parts go under
//! the claimed version only, so a failed or concurrent save can never remove or overwrite
//! another writer's parts. A failed save removes its own parts and leaves a tombstone
//! `v<N>/_deleted`; `DROP` leaves tombstones too, so a version number is never reused. The
//! metadata records each part's size and SHA-256, checked when the part is read; on a local
//! filesystem the parts are synced to disk before the metadata that publishes them.

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
const CLAIM: &str = "_claim";
/// How many numbers a save tries before giving up (each conflict means another writer won).
const MAX_CLAIM_ATTEMPTS: usize = 256;

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
    /// SHA-256 (hex) of each part by name; absent in versions stored before checksums.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checksums: std::collections::BTreeMap<String, String>,
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One model of a store listing.
#[derive(Debug, Clone)]
pub struct ListedModel {
    pub name: String,
    /// The latest version's metadata, or why it cannot be read.
    pub model: std::result::Result<ModelMetadata, String>,
}

/// What [`ModelStore::save_new`] did.
#[derive(Debug, Clone)]
pub enum SaveNew {
    Saved(Box<ModelMetadata>),
    /// The model has a published version, or another writer is creating one (the reason says
    /// which).
    Exists(String),
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
        let size = self
            .metadata
            .parts
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, n)| *n);
        if size.is_some_and(|n| n != bytes.len() as u64) {
            return Err(corrupt(format!(
                "part '{name}' has {} bytes; the metadata records {}",
                bytes.len(),
                size.unwrap_or_default()
            )));
        }
        if let Some(want) = self.metadata.checksums.get(name) {
            let got = sha256_hex(&bytes);
            if *want != got {
                return Err(corrupt(format!(
                    "part '{name}' does not match its checksum (SHA-256 {got}, recorded {want})"
                )));
            }
        }
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

    /// An object's full location for messages: a local path, or `scheme://bucket/key` (object
    /// paths already hold the store's root).
    fn location(&self, path: &Path) -> String {
        match url::Url::parse(&self.absolute) {
            Ok(u) if u.scheme() == "file" => format!("/{path}"),
            Ok(u) => format!(
                "{}://{}/{path}",
                u.scheme(),
                u.host_str().unwrap_or_default()
            ),
            Err(_) => path.to_string(),
        }
    }

    fn os_err(&self, path: &Path) -> impl Fn(object_store::Error) -> QuiverError {
        let path = self.location(path);
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

    /// Saves a new version of `name`: claims the next version number, writes every part under
    /// it, then publishes `metadata.json`. If a part fails (the iterator yields an error, or a
    /// write fails) the parts written so far are removed, the number is left tombstoned and
    /// nothing is published; earlier versions and concurrent writers are untouched.
    pub async fn save(
        &self,
        name: &str,
        draft: ModelDraft,
        parts: impl IntoIterator<Item = Result<(String, Bytes)>>,
    ) -> Result<ModelMetadata> {
        validate_name(name)?;
        let version = self.claim(name).await?;
        self.write_version(name, version, draft, parts).await
    }

    /// Saves the first live version of `name` (`CREATE MODEL` without `OR REPLACE`): only when
    /// no version is published or being written, decided atomically against other writers
    /// (two of them racing: one saves, the other gets [`SaveNew::Exists`]).
    pub async fn save_new(
        &self,
        name: &str,
        draft: ModelDraft,
        parts: impl IntoIterator<Item = Result<(String, Bytes)>>,
    ) -> Result<SaveNew> {
        validate_name(name)?;
        let dirs = self.all_version_dirs(name).await?;
        let top = dirs.last().copied();
        // The highest number, when it had no claim and this writer won it.
        let mut owned = None;
        let verdict = async {
            for &v in dirs.iter().rev() {
                let mut state = self.state(name, v).await?;
                if let VersionState::Unclaimed = state {
                    // Contend for the number rather than assume it dead: a writer may be
                    // between creating the directory and its claim. Winning means no writer
                    // owns it: the highest number becomes this writer's, a lower one (leftovers)
                    // stays taken, dead. Losing means another writer claimed it first: look again.
                    if self.try_claim(name, v).await? {
                        if Some(v) == top {
                            owned = Some(v);
                            continue;
                        }
                        self.kill(name, v).await?;
                        state = VersionState::Dead;
                    } else {
                        state = self.state(name, v).await?;
                    }
                }
                match state {
                    VersionState::Dead | VersionState::Unclaimed => {}
                    VersionState::Published => {
                        return Ok(Some(format!("version {v} is published")));
                    }
                    // Its writer died on this machine without cleaning up (killed): the number
                    // stays taken (a tombstone), the name is free.
                    VersionState::Abandoned(by) => {
                        log::warn!(
                            "model '{name}' version {v} was {by}, a process that is gone: marked dead"
                        );
                        self.kill(name, v).await?;
                    }
                    VersionState::Claimed(by) => {
                        return Ok(Some(format!(
                            "version {v} is being written ({by}); if that writer is gone, use CREATE OR REPLACE"
                        )));
                    }
                }
            }
            Ok(None)
        }
        .await;
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                if let Some(v) = owned {
                    let _ = self.kill(name, v).await;
                }
                return Err(e);
            }
        };
        if let Some(why) = verdict {
            if let Some(v) = owned {
                self.kill(name, v).await?;
            }
            return Ok(SaveNew::Exists(why));
        }
        let version = match owned {
            Some(v) => v,
            None => {
                let version = top.unwrap_or(0) + 1;
                if !self.try_claim(name, version).await? {
                    return Ok(SaveNew::Exists(format!(
                        "another writer claimed version {version} first"
                    )));
                }
                version
            }
        };
        Ok(SaveNew::Saved(Box::new(
            self.write_version(name, version, draft, parts).await?,
        )))
    }

    /// Marks version `v` of `name` dead: its number stays taken.
    async fn kill(&self, name: &str, v: u64) -> Result<()> {
        let dir = self.model_dir(name).join(version_dir(v));
        self.store
            .put(&dir.join(TOMBSTONE), PutPayload::from_static(b""))
            .await
            .map_err(self.os_err(&self.model_dir(name)))?;
        Ok(())
    }

    /// Claims the next free version number: a create-only marker, retried upwards on conflict.
    async fn claim(&self, name: &str) -> Result<u64> {
        let mut version = self
            .all_version_dirs(name)
            .await?
            .last()
            .copied()
            .unwrap_or(0)
            + 1;
        for _ in 0..MAX_CLAIM_ATTEMPTS {
            if self.try_claim(name, version).await? {
                return Ok(version);
            }
            // Another writer holds it: take the next number past every directory now there.
            let highest = self
                .all_version_dirs(name)
                .await?
                .last()
                .copied()
                .unwrap_or(0);
            version = version.max(highest) + 1;
        }
        Err(QuiverError::InvalidParam {
            param: "model".to_string(),
            reason: format!(
                "could not claim a version of model '{name}' after {MAX_CLAIM_ATTEMPTS} attempts: too many concurrent writers"
            ),
        })
    }

    /// Creates `v<N>/_claim` unless it exists: true when this writer now owns version N.
    async fn try_claim(&self, name: &str, version: u64) -> Result<bool> {
        let path = self.model_dir(name).join(version_dir(version)).join(CLAIM);
        let mut who = serde_json::json!({
            "pid": std::process::id(),
            "claimed_at": chrono::Utc::now().to_rfc3339(),
        });
        // Enough to tell later, on this machine, whether the writer still runs.
        if let (Some(obj), Some(me)) = (who.as_object_mut(), writer::this_process()) {
            obj.extend(me);
        }
        let payload = PutPayload::from(who.to_string().into_bytes());
        match self
            .store
            .put_opts(&path, payload.clone(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            // A store without conditional writes: a plain write (the number may race).
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store
                    .put(&path, payload)
                    .await
                    .map_err(self.os_err(&path))?;
                Ok(true)
            }
            Err(e) => Err(self.os_err(&path)(e)),
        }
    }

    /// Whether a version directory holds a published version, a dead one (dropped, or a failed
    /// save) or one being written (who claimed it, and when).
    async fn state(&self, name: &str, v: u64) -> Result<VersionState> {
        if self.is_published(name, v).await? {
            return Ok(VersionState::Published);
        }
        let dir = self.model_dir(name).join(version_dir(v));
        if self.exists(&dir.clone().join(TOMBSTONE)).await? {
            return Ok(VersionState::Dead);
        }
        let claim = dir.join(CLAIM);
        match self.store.get(&claim).await {
            Ok(r) => {
                let text = r.bytes().await.map_err(self.os_err(&claim))?;
                let who: serde_json::Value =
                    serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null);
                let by = format!(
                    "claimed by process {} at {}",
                    who["pid"],
                    who["claimed_at"].as_str().unwrap_or("?")
                );
                if writer::is_gone(&who) {
                    return Ok(VersionState::Abandoned(by));
                }
                Ok(VersionState::Claimed(by))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(VersionState::Unclaimed),
            Err(e) => Err(self.os_err(&claim)(e)),
        }
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.os_err(path)(e)),
        }
    }

    /// Writes the parts and the metadata of a claimed version.
    async fn write_version(
        &self,
        name: &str,
        version: u64,
        draft: ModelDraft,
        parts: impl IntoIterator<Item = Result<(String, Bytes)>>,
    ) -> Result<ModelMetadata> {
        let dir = self.model_dir(name).join(version_dir(version));
        let mut written: Vec<Path> = Vec::new();
        let mut listed = Vec::new();
        let mut checksums = std::collections::BTreeMap::new();
        // Fault injection for crash tests: the process dies (as by kill -9) after writing this
        // many parts, before the metadata.
        let crash_after: Option<usize> = std::env::var("QUIVER_FAULT_ABORT_SAVE_AFTER_PARTS")
            .ok()
            .and_then(|v| v.parse().ok());
        let result: Result<()> = async {
            for part in parts {
                if crash_after == Some(written.len()) {
                    std::process::abort();
                }
                let (part_name, bytes) = part?;
                if part_name.is_empty()
                    || part_name.contains('/')
                    || part_name == METADATA
                    || listed.iter().any(|(p, _)| *p == part_name)
                {
                    return Err(QuiverError::InvalidParam {
                        param: "model part".to_string(),
                        reason: format!("invalid or repeated part name '{part_name}'"),
                    });
                }
                let path = dir.clone().join(PARTS).join(part_name.as_str());
                let len = bytes.len() as u64;
                checksums.insert(part_name.clone(), sha256_hex(&bytes));
                self.store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(self.os_err(&path))?;
                written.push(path);
                listed.push((part_name, len));
            }
            if crash_after.is_some_and(|n| n >= written.len()) {
                std::process::abort();
            }
            // Durable before the metadata that makes them visible.
            self.sync_local(&written, &dir).await
        }
        .await;
        if let Err(e) = result {
            self.abandon(&dir, &written).await;
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
            checksums,
        };
        let json = match serde_json::to_vec_pretty(&metadata) {
            Ok(j) => j,
            Err(source) => {
                self.abandon(&dir, &written).await;
                return Err(QuiverError::Json {
                    context: format!("metadata of model '{name}'"),
                    source,
                });
            }
        };
        let meta_path = dir.clone().join(METADATA);
        // Create-only where the store supports it: the claim already makes the version this
        // writer's own; this guards against a store without conditional claims.
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
            self.abandon(&dir, &written).await;
            return Err(self.os_err(&meta_path)(e));
        }
        self.sync_local(&[meta_path], &dir).await?;
        Ok(metadata)
    }

    /// A failed save: its own parts go, a tombstone keeps the number taken.
    async fn abandon(&self, dir: &Path, written: &[Path]) {
        self.remove_all(written).await;
        let _ = self
            .store
            .put(&dir.clone().join(TOMBSTONE), PutPayload::from_static(b""))
            .await;
    }

    /// On a local filesystem, syncs the files and their directories to disk (on a blocking
    /// thread: fsync must not hold up the async runtime).
    async fn sync_local(&self, files: &[Path], dir: &Path) -> Result<()> {
        if !self.absolute.starts_with("file:") || files.is_empty() {
            return Ok(());
        }
        let local = |p: &Path| std::path::PathBuf::from(format!("/{p}"));
        let files: Vec<std::path::PathBuf> = files.iter().map(local).collect();
        let dirs = [local(&dir.clone().join(PARTS)), local(dir)];
        tokio::task::spawn_blocking(move || {
            for path in files {
                if let Err(source) = std::fs::File::open(&path).and_then(|f| f.sync_all()) {
                    return Err(QuiverError::Io { path, source });
                }
            }
            // Best effort: directories cannot be opened for syncing on every platform, and a
            // version without parts has no parts directory.
            for d in dirs.iter().filter(|d| d.is_dir()) {
                let _ = std::fs::File::open(d).and_then(|f| f.sync_all());
            }
            Ok(())
        })
        .await
        .map_err(|e| QuiverError::internal(format!("syncing model files: {e}")))?
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
            path: self.location(&meta_path),
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

    /// The latest published version of every healthy model, by name (see
    /// [`ModelStore::list_entries`] for the ones that cannot be read).
    pub async fn list(&self) -> Result<Vec<ModelMetadata>> {
        Ok(self
            .list_entries()
            .await?
            .into_iter()
            .filter_map(|e| e.model.ok())
            .collect())
    }

    /// Every model with a published version, by name: its latest version's metadata, or why
    /// that cannot be read (one corrupt model does not hide the others).
    pub async fn list_entries(&self) -> Result<Vec<ListedModel>> {
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
            let model = match self.versions(&n).await {
                Ok(v) if v.is_empty() => continue,
                Ok(_) => self
                    .load(&n, None)
                    .await
                    .map(|m| m.metadata)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            out.push(ListedModel { name: n, model });
        }
        Ok(out)
    }

    /// Deletes one version, or every published version of `name` when `version` is `None`.
    /// The metadata goes first, so a version disappears whole even if the deletion stops
    /// midway; a tombstone keeps each number taken. Versions still being written are left to
    /// their writers.
    pub async fn delete(&self, name: &str, version: Option<u64>) -> Result<()> {
        let versions = self.versions(name).await?;
        if versions.is_empty() {
            return Err(QuiverError::ModelNotFound {
                name: name.to_string(),
                store: self.display.clone(),
            });
        }
        let targets: Vec<u64> = match version {
            None => versions.clone(),
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
            let tomb = dir.clone().join(TOMBSTONE);
            self.store
                .put(&tomb, PutPayload::from_static(b""))
                .await
                .map_err(self.os_err(&tomb))?;
            let parts = dir.join(PARTS);
            let mut listing = self.store.list(Some(&parts));
            let mut rest = Vec::new();
            while let Some(meta) = listing.next().await {
                rest.push(meta.map_err(self.os_err(&parts))?.location);
            }
            for p in rest {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.os_err(&p)(e)),
                }
            }
        }
        Ok(())
    }
}

/// What a version directory holds.
enum VersionState {
    Published,
    Dead,
    /// Being written, as far as this process can tell.
    Claimed(String),
    /// Claimed by a process of this machine that is gone (killed mid-save).
    Abandoned(String),
    /// A directory without a claim: a writer between creating the directory and its claim
    /// (a local filesystem stages the claim file in it first), or leftovers of an older format.
    Unclaimed,
}

/// Who claimed a version: on Linux the machine's boot, the host and the process's start time,
/// so another process of the same machine can tell a writer that was killed from one still
/// writing (a reused pid has another start time). Elsewhere nothing is known: a claim stays a
/// claim until `CREATE OR REPLACE` or a later version.
mod writer {
    use serde_json::{Map, Value};

    #[cfg(target_os = "linux")]
    fn start_ticks(pid: &str) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name's closing parenthesis: field 3 (state), …, 22 (start time).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // A killed process not yet reaped is gone too.
        if fields.first() == Some(&"Z") {
            return None;
        }
        fields.get(19).map(|s| s.to_string())
    }

    #[cfg(target_os = "linux")]
    fn machine() -> Option<(String, String)> {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Some((
            read("/proc/sys/kernel/hostname")?,
            read("/proc/sys/kernel/random/boot_id")?,
        ))
    }

    /// This process's identity for its claims.
    #[cfg(target_os = "linux")]
    pub(super) fn this_process() -> Option<Map<String, Value>> {
        let (host, boot) = machine()?;
        let start = start_ticks(&std::process::id().to_string())?;
        let mut m = Map::new();
        m.insert("host".into(), host.into());
        m.insert("boot_id".into(), boot.into());
        m.insert("start_ticks".into(), start.into());
        Some(m)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn this_process() -> Option<Map<String, Value>> {
        None
    }

    /// Whether the claim's writer ran on this machine, in this boot, and is gone.
    #[cfg(target_os = "linux")]
    pub(super) fn is_gone(claim: &Value) -> bool {
        let (Some((host, boot)), Some(pid), Some(start)) = (
            machine(),
            claim["pid"].as_u64(),
            claim["start_ticks"].as_str(),
        ) else {
            return false;
        };
        if claim["host"].as_str() != Some(host.as_str())
            || claim["boot_id"].as_str() != Some(boot.as_str())
        {
            return false;
        }
        start_ticks(&pid.to_string()).as_deref() != Some(start)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn is_gone(_claim: &Value) -> bool {
        false
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
