//! What the processes of a cluster let remote sessions touch through their object stores.
//!
//! A scheduler or executor serves whoever reaches it (with the cluster's token): by default
//! they read local files only under the data roots they were started with and write nothing
//! (no `COPY … TO`, no `INSERT INTO` an external table, with local or S3 credentials alike).
//! The check sits in the object stores every query, model load and trial of the process goes
//! through, so it holds whatever plan reached the process. Client and embedded processes are
//! unrestricted: the user already has their own files.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::error::{QuiverError, Result};

/// What remote sessions may do through a process's object stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Local directories that may be read (canonical); `None`: any local path.
    local_roots: Option<Vec<PathBuf>>,
    /// Whether anything may be written (local files and object stores).
    writes: bool,
}

impl Default for Access {
    /// Unrestricted: what a user's own process has.
    fn default() -> Self {
        Access {
            local_roots: None,
            writes: true,
        }
    }
}

impl Access {
    /// Local reads under `roots` only (each must be an existing directory), writes when
    /// `writes`.
    pub fn restricted(roots: &[PathBuf], writes: bool) -> Result<Self> {
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            let c = std::fs::canonicalize(root).map_err(|source| QuiverError::Io {
                path: root.clone(),
                source,
            })?;
            if !c.is_dir() {
                return Err(QuiverError::InvalidParam {
                    param: "--data-root".to_string(),
                    reason: format!("{} is not a directory", root.display()),
                });
            }
            canonical.push(c);
        }
        Ok(Access {
            local_roots: Some(canonical),
            writes,
        })
    }

    /// Any local path, writes when `writes`.
    pub fn any_local_path(writes: bool) -> Self {
        Access {
            local_roots: None,
            writes,
        }
    }

    /// Whether remote sessions may write.
    pub fn writes(&self) -> bool {
        self.writes
    }

    pub fn is_unrestricted(&self) -> bool {
        *self == Access::default()
    }

    /// `store` (the local file system when `local`) under this policy.
    pub fn guard(&self, store: Arc<dyn ObjectStore>, local: bool) -> Arc<dyn ObjectStore> {
        if self.is_unrestricted() || (!local && self.writes) {
            return store;
        }
        Arc::new(Guarded {
            inner: store,
            roots: if local {
                self.local_roots.as_ref().map(|roots| {
                    roots
                        .iter()
                        .map(|r| Path::from(r.to_string_lossy().trim_start_matches('/')))
                        .collect()
                })
            } else {
                None
            },
            writes: self.writes,
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.local_roots {
            None => write!(f, "any local path")?,
            Some(r) if r.is_empty() => write!(f, "no local paths")?,
            Some(r) => write!(
                f,
                "local paths under {}",
                r.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?,
        }
        write!(f, ", {}", if self.writes { "writes" } else { "no writes" })
    }
}

/// Refuses plans that write (`COPY … TO`, `INSERT INTO`), at planning: a scheduler whose
/// processes write nothing says so before any task runs (the object stores refuse the writes
/// themselves too, but DataFusion's writers report that only as "error while finalizing
/// writes").
#[derive(Debug, Default)]
pub struct RefuseWrites;

impl datafusion::optimizer::AnalyzerRule for RefuseWrites {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::LogicalPlan;
        let mut writes = None;
        plan.apply(|node| {
            writes = match node {
                LogicalPlan::Copy(c) => Some(format!("COPY … TO '{}'", c.output_url)),
                LogicalPlan::Dml(d) => Some(format!("{} {}", d.op, d.table_name)),
                _ => None,
            };
            Ok(if writes.is_some() {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        match writes {
            Some(what) => Err(datafusion::error::DataFusionError::Plan(format!(
                "{what} is not allowed: this cluster's processes write nothing for remote \
                 sessions; its operator can allow it with --allow-writes"
            ))),
            None => Ok(plan),
        }
    }

    fn name(&self) -> &str {
        "quiver_refuse_writes"
    }
}

static PROCESS_ACCESS: OnceLock<Access> = OnceLock::new();

/// Sets this process's policy (a scheduler or executor at start); the first call wins.
pub fn set_process_access(access: Access) {
    let _ = PROCESS_ACCESS.set(access);
}

/// This process's policy: unrestricted unless [`set_process_access`] said otherwise.
pub fn process_access() -> Access {
    PROCESS_ACCESS.get().cloned().unwrap_or_default()
}

/// A store whose reads stay under `roots` (when set) and which writes only when `writes`.
#[derive(Debug)]
struct Guarded {
    inner: Arc<dyn ObjectStore>,
    /// Object paths of the local roots; `None`: reads anywhere.
    roots: Option<Vec<Path>>,
    writes: bool,
}

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Guarded {
    fn refused(path: &Path, why: String) -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: format!("/{path}"),
            source: Box::new(Refused(why)),
        }
    }

    fn check_read(&self, location: &Path) -> object_store::Result<()> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        if roots.iter().any(|r| location.prefix_matches(r)) {
            return Ok(());
        }
        let named = if roots.is_empty() {
            "this cluster reads no local paths".to_string()
        } else {
            format!(
                "it is outside this cluster's data roots ({})",
                roots
                    .iter()
                    .map(|r| format!("/{r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Self::refused(
            location,
            format!(
                "reading /{location} is not allowed: {named}; the cluster's operator can add \
                 one with --data-root DIR on the scheduler and executors"
            ),
        ))
    }

    fn check_write(&self, location: &Path) -> object_store::Result<()> {
        if self.writes {
            return Ok(());
        }
        Err(Self::refused(
            location,
            format!(
                "writing {location} is not allowed: this cluster's processes write nothing for \
                 remote sessions (COPY, INSERT); its operator can allow it with --allow-writes"
            ),
        ))
    }
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guarded({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Guarded {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check_write(location)?;
        self.check_read(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_write(location)?;
        self.check_read(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check_read(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.check_read(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.writes {
            let roots = self.roots.clone();
            let checked = locations.map(move |p| {
                let p = p?;
                match &roots {
                    Some(r) if !r.iter().any(|root| p.prefix_matches(root)) => Err(
                        Guarded::refused(&p, format!("deleting /{p} is not allowed")),
                    ),
                    _ => Ok(p),
                }
            });
            return self.inner.delete_stream(checked.boxed());
        }
        locations
            .map(|p| {
                let p = p?;
                Err(Guarded::refused(
                    &p,
                    format!("deleting {p} is not allowed: this cluster writes nothing for remote sessions (--allow-writes)"),
                ))
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = Path::default();
        if let Err(e) = self.check_read(prefix.unwrap_or(&root)) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = Path::default();
        if let Err(e) = self.check_read(prefix.unwrap_or(&root)) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check_read(prefix.unwrap_or(&Path::default()))?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.check_read(from)?;
        self.check_write(to)?;
        self.check_read(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.check_write(from)?;
        self.check_read(from)?;
        self.check_read(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn reads_stay_under_the_roots_and_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "inside").unwrap();
        std::fs::write(dir.path().join("b.txt"), "outside").unwrap();
        let access = Access::restricted(std::slice::from_ref(&root), false).unwrap();
        let store = access.guard(Arc::new(LocalFileSystem::new()), true);
        let path = |p: &std::path::Path| {
            Path::from(
                std::fs::canonicalize(p)
                    .unwrap()
                    .to_string_lossy()
                    .trim_start_matches('/'),
            )
        };
        let inside = path(&root.join("a.txt"));
        let outside = path(&dir.path().join("b.txt"));
        assert_eq!(
            store.get(&inside).await.unwrap().bytes().await.unwrap(),
            "inside"
        );
        let e = store.get(&outside).await.unwrap_err().to_string();
        assert!(
            e.contains("is not allowed") && e.contains("--data-root"),
            "{e}"
        );
        assert!(store.list(None).next().await.unwrap().is_err());
        let listed: Vec<_> = store.list(Some(&path(&root))).collect().await;
        assert_eq!(listed.len(), 1);
        let e = store
            .put(&path(&root).join("c.txt"), PutPayload::from("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-writes"), "{e}");
        assert!(!root.join("c.txt").exists());
        // A root that is not a directory is named.
        let e = Access::restricted(&[dir.path().join("b.txt")], false).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(Access::default().is_unrestricted());
        assert_eq!(
            Access::any_local_path(false).to_string(),
            "any local path, no writes"
        );
    }
}
