//! The local file system as an object store whose large range reads are memory maps.
//!
//! A Parquet scan asks the store for the column chunks of a row group (`get_ranges`: tens of
//! megabytes at a time). `object_store`'s [`LocalFileSystem`] answers each range with a fresh,
//! zeroed buffer and a `pread` into it: the kernel zeroes the buffer's new pages, then copies
//! the file's pages out of the page cache. [`MappedLocalFiles`] maps the file instead and hands
//! out slices of the mapping: the decoder reads the page cache's own pages, with no zeroing and
//! no copy. Small reads (footers, metadata, short ranges) and everything else — writes, lists,
//! deletes, conditional gets — go to the [`LocalFileSystem`] it wraps, as do reads it cannot
//! serve from a map (a missing file, a range past the end), so their errors are the usual ones.
//!
//! A mapping lives as long as the bytes handed out from it. Truncating a file in place while a
//! query reads it stops the process (`SIGBUS`) instead of failing the query; Quiver's own
//! writes never do it (they write a new file and rename it over the old one, which leaves an
//! open map reading the old file), and `quiver.io.mmap = false` reads with system calls.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// A read of fewer bytes than this (all of a call's ranges together) is a `pread`: a map, its
/// page-table entries and its unmapping cost more than copying a small range.
pub const MIN_MAPPED_BYTES: u64 = 256 * 1024;

/// The local file system (`file://`), its large range reads served from memory maps.
#[derive(Debug)]
pub struct MappedLocalFiles {
    inner: Arc<LocalFileSystem>,
}

impl MappedLocalFiles {
    pub fn new() -> Self {
        MappedLocalFiles {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }
}

impl Default for MappedLocalFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MappedLocalFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MappedLocalFiles({})", self.inner)
    }
}

/// `ranges` of the file at `path` as slices of one read-only map of the span they cover, or
/// `None` when the file cannot be opened or mapped or a range does not lie inside it (the
/// caller then reads through [`LocalFileSystem`], which reports why).
fn mapped_ranges(path: &std::path::Path, ranges: &[Range<u64>]) -> Option<Vec<Bytes>> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if ranges.iter().any(|r| r.start > r.end || r.end > len) {
        return None;
    }
    let start = ranges.iter().map(|r| r.start).min()?;
    let end = ranges.iter().map(|r| r.end).max()?;
    if end == start {
        return Some(ranges.iter().map(|_| Bytes::new()).collect());
    }
    // SAFETY: the map is read-only and private to this process, and nothing here writes the
    // file. Its contents can still change under it if another process rewrites the file in
    // place (the module's documentation says so and how to turn maps off); the bytes are only
    // ever read as plain data (Parquet pages are checked as they are decoded), never trusted
    // as Rust values.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(usize::try_from(end - start).ok()?)
            .map(&file)
    }
    .ok()?;
    let whole = Bytes::from_owner(map);
    Some(
        ranges
            .iter()
            .map(|r| whole.slice((r.start - start) as usize..(r.end - start) as usize))
            .collect(),
    )
}

#[async_trait]
impl ObjectStore for MappedLocalFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let requested: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if requested >= MIN_MAPPED_BYTES {
            let path = self.inner.path_to_filesystem(location)?;
            // Opening and mapping are file system calls: off the async workers, as
            // `LocalFileSystem` does its reads (a slow or remote mount would stall them).
            let wanted = ranges.to_vec();
            let mapped = match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt
                    .spawn_blocking(move || mapped_ranges(&path, &wanted))
                    .await
                    .ok()
                    .flatten(),
                Err(_) => mapped_ranges(&path, &wanted),
            };
            if let Some(parts) = mapped {
                return Ok(parts);
            }
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn store_and_file(bytes: &[u8]) -> (tempfile::TempDir, MappedLocalFiles, Path) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, bytes).unwrap();
        let path = Path::from_filesystem_path(&file).unwrap();
        (dir, MappedLocalFiles::new(), path)
    }

    #[tokio::test]
    async fn large_ranges_come_from_a_map_equal_to_the_files_bytes() {
        let data: Vec<u8> = (0..3 * MIN_MAPPED_BYTES)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let (_dir, store, path) = store_and_file(&data);
        let ranges = [
            5000..MIN_MAPPED_BYTES + 17,
            MIN_MAPPED_BYTES * 2..MIN_MAPPED_BYTES * 2,
            10..20,
            MIN_MAPPED_BYTES * 2 + 1..MIN_MAPPED_BYTES * 3,
        ];
        let parts = store.get_ranges(&path, &ranges).await.unwrap();
        let plain = LocalFileSystem::new()
            .get_ranges(&path, &ranges)
            .await
            .unwrap();
        assert_eq!(parts, plain);
        for (part, r) in parts.iter().zip(&ranges) {
            assert_eq!(&part[..], &data[r.start as usize..r.end as usize]);
        }
        // The large read is a slice of a map, not a copy in a fresh buffer of its own.
        let mapped = mapped_ranges(&store.inner.path_to_filesystem(&path).unwrap(), &ranges);
        assert_eq!(mapped.unwrap(), plain);
    }

    #[tokio::test]
    async fn bad_reads_fail_as_the_local_file_system_does() {
        let data = vec![7u8; 2 * MIN_MAPPED_BYTES as usize];
        let (dir, store, path) = store_and_file(&data);
        let beyond_the_end = 0..3 * MIN_MAPPED_BYTES;
        let past = [beyond_the_end];
        let err = store
            .get_ranges(&path, &past)
            .await
            .unwrap_err()
            .to_string();
        let plain = LocalFileSystem::new()
            .get_ranges(&path, &past)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, plain);
        assert!(err.contains("data.bin"), "{err}");

        let missing = Path::from_filesystem_path(dir.path())
            .unwrap()
            .join("gone.bin");
        let first = 0..MIN_MAPPED_BYTES;
        let err = store.get_ranges(&missing, &[first]).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_file_replaced_by_rename_leaves_handed_out_bytes_as_they_were() {
        let old = vec![1u8; MIN_MAPPED_BYTES as usize];
        let (dir, store, path) = store_and_file(&old);
        let whole = 0..MIN_MAPPED_BYTES;
        let parts = store.get_ranges(&path, &[whole]).await.unwrap();
        let staged = dir.path().join("staged.bin");
        std::fs::write(&staged, vec![2u8; 10]).unwrap();
        std::fs::rename(&staged, dir.path().join("data.bin")).unwrap();
        assert!(parts[0].iter().all(|&b| b == 1));
        assert_eq!(
            store.get(&path).await.unwrap().bytes().await.unwrap().len(),
            10
        );
    }
}
