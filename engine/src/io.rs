//! Data I/O on object_store URLs (`file://`, plain paths, `memory://`, `s3://`): Parquet, CSV,
//! Arrow IPC and JSON in; Parquet and Arrow IPC out, published atomically.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext,
};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::config::S3Config;
use crate::error::{QuiverError, Result};

/// A file format Quiver reads (and, for Parquet and Arrow IPC, writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Parquet,
    Csv,
    /// Arrow IPC file format (`.arrow`, `.ipc`, `.feather`).
    Arrow,
    /// Newline-delimited JSON (`.json`, `.jsonl`, `.ndjson`).
    Json,
}

impl DataFormat {
    /// Guesses the format from a file name's extension.
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path
            .rsplit('/')
            .next()?
            .rsplit_once('.')?
            .1
            .to_ascii_lowercase();
        Self::parse(&ext).ok()
    }

    /// Parses a format name (`parquet`, `csv`, `arrow`/`ipc`, `json`/`ndjson`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Ok(DataFormat::Parquet),
            "csv" => Ok(DataFormat::Csv),
            "arrow" | "ipc" | "feather" => Ok(DataFormat::Arrow),
            "json" | "jsonl" | "ndjson" => Ok(DataFormat::Json),
            other => Err(QuiverError::UnsupportedFormat {
                path: String::new(),
                format: other.to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DataFormat::Parquet => "parquet",
            DataFormat::Csv => "csv",
            DataFormat::Arrow => "arrow",
            DataFormat::Json => "json",
        }
    }
}

/// A resolved location: the URL, the object store serving it and the path inside that store.
#[derive(Debug, Clone)]
pub struct Location {
    pub url: Url,
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
}

impl Location {
    /// The URL as DataFusion's listing tables want it.
    pub fn table_url(&self) -> String {
        self.url.to_string()
    }
}

/// Turns a user's location (a URL or a plain path, relative or absolute) into a URL.
pub fn parse_location(location: &str) -> Result<Url> {
    let bad = |reason: String| QuiverError::InvalidUrl {
        url: location.to_string(),
        reason,
    };
    if location.trim().is_empty() {
        return Err(bad("empty location".to_string()));
    }
    if location.contains("://") {
        let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
        match url.scheme() {
            "file" | "memory" | "s3" => Ok(url),
            other => Err(bad(format!(
                "unsupported scheme '{other}' (expected file://, memory://, s3:// or a path)"
            ))),
        }
    } else {
        let abs = normalize(&std::path::absolute(location).map_err(|e| bad(e.to_string()))?);
        let dir = location.ends_with('/') || abs.is_dir();
        let url = if dir {
            Url::from_directory_path(&abs)
        } else {
            Url::from_file_path(&abs)
        };
        url.map_err(|_| bad("not an absolute path".to_string()))
    }
}

/// Removes `.` and `..` components lexically (the path need not exist yet).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Resolves `location` to a store registered in `ctx`'s runtime, registering an S3 store for
/// its bucket on first use.
pub fn resolve(ctx: &SessionContext, s3: &S3Config, location: &str) -> Result<Location> {
    let url = parse_location(location)?;
    let store = match ctx.runtime_env().object_store_registry.get_store(&url) {
        Ok(store) => store,
        Err(_) if url.scheme() == "s3" => {
            let store = build_s3(s3, &url)?;
            ctx.register_object_store(&url, Arc::clone(&store));
            store
        }
        Err(e) => {
            return Err(QuiverError::InvalidUrl {
                url: location.to_string(),
                reason: e.to_string(),
            });
        }
    };
    let path = Path::from_url_path(url.path()).map_err(|e| QuiverError::InvalidUrl {
        url: location.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Location { url, store, path })
}

pub(crate) fn build_s3(cfg: &S3Config, url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let bucket = url.host_str().ok_or_else(|| QuiverError::InvalidUrl {
        url: url.to_string(),
        reason: "an s3:// URL needs a bucket name".to_string(),
    })?;
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    let endpoint_is_http = cfg
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT").ok())
        .is_some_and(|e| e.starts_with("http://"));
    b = b.with_allow_http(cfg.allow_http.unwrap_or(endpoint_is_http));
    if let Some(r) = &cfg.region {
        b = b.with_region(r);
    } else if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    if let Some(k) = &cfg.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &cfg.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    let store = b.build().map_err(|e| QuiverError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(store))
}

/// What exists at a location: a single object, a "directory" of objects, or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    File,
    /// A prefix with objects under it; the first data file's name (hidden and `_` files skipped).
    Directory {
        first_file: Option<String>,
    },
}

/// Looks at what exists at `loc`; a missing location is [`QuiverError::FileNotFound`].
pub async fn probe(loc: &Location, display: &str) -> Result<Found> {
    if !loc.url.path().ends_with('/') && loc.store.head(&loc.path).await.is_ok() {
        return Ok(Found::File);
    }
    let mut listing = loc.store.list(Some(&loc.path));
    let mut any = false;
    let mut first_file = None;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| QuiverError::ObjectStore {
            path: display.to_string(),
            source,
        })?;
        any = true;
        let name = meta.location.filename().unwrap_or_default().to_string();
        if !name.starts_with('.') && !name.starts_with('_') {
            first_file = Some(name);
            break;
        }
    }
    if any {
        Ok(Found::Directory { first_file })
    } else {
        Err(QuiverError::FileNotFound {
            path: display.to_string(),
        })
    }
}

/// Reads `location` as a DataFrame. The format comes from `format` or the file extension.
/// The scheme of tables held in this process's memory ([`ProcessTable`]).
pub const PROCESS_SCHEME: &str = "process://";

fn process_tables() -> &'static std::sync::Mutex<HashMap<String, Vec<RecordBatch>>> {
    static TABLES: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Vec<RecordBatch>>>> =
        std::sync::OnceLock::new();
    TABLES.get_or_init(Default::default)
}

/// Rows held in this process's memory under a `process://…` URL for as long as this lives:
/// data handed to work that runs in this process only (the trials of a search on an embedded
/// session) without a round trip through a file. [`read`] reads it like any location; in
/// another process the URL names nothing.
#[derive(Debug)]
pub struct ProcessTable {
    url: String,
}

impl ProcessTable {
    pub fn new(batches: Vec<RecordBatch>) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if batches.is_empty() {
            return Err(QuiverError::EmptyDataset {
                context: "a process table".to_string(),
            });
        }
        let url = format!(
            "{PROCESS_SCHEME}{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        process_tables()
            .lock()
            .map_err(|_| QuiverError::internal("the process tables' lock is poisoned"))?
            .insert(url.clone(), batches);
        Ok(ProcessTable { url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ProcessTable {
    fn drop(&mut self) {
        if let Ok(mut t) = process_tables().lock() {
            t.remove(&self.url);
        }
    }
}

pub async fn read(
    ctx: &SessionContext,
    s3: &S3Config,
    location: &str,
    format: Option<DataFormat>,
) -> Result<DataFrame> {
    if location.starts_with(PROCESS_SCHEME) {
        let batches = process_tables()
            .lock()
            .ok()
            .and_then(|t| t.get(location).cloned())
            .ok_or_else(|| QuiverError::InvalidUrl {
                url: location.to_string(),
                reason: "no table of this process has this name (it is gone, or it lives in \
                         another process)"
                    .to_string(),
            })?;
        let schema = batches[0].schema();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        return Ok(ctx.read_table(Arc::new(table))?);
    }
    let mut loc = resolve(ctx, s3, location)?;
    let found = probe(&loc, location).await?;
    let file_name = match &found {
        Found::File => loc.path.filename().map(str::to_string),
        Found::Directory { first_file } => {
            if !loc.url.path().ends_with('/') {
                loc.url.set_path(&format!("{}/", loc.url.path()));
            }
            first_file.clone()
        }
    };
    let format = match format.or_else(|| file_name.as_deref().and_then(DataFormat::from_path)) {
        Some(f) => f,
        None => {
            return Err(QuiverError::UnsupportedFormat {
                path: location.to_string(),
                format: file_name
                    .as_deref()
                    .and_then(|f| f.rsplit_once('.').map(|(_, e)| e.to_string()))
                    .unwrap_or_else(|| "(no extension)".to_string()),
            });
        }
    };
    // Read exactly the file named, whatever its extension; for a directory, the files that
    // share the first data file's extension.
    let ext = file_name
        .as_deref()
        .and_then(|f| f.rsplit_once('.').map(|(_, e)| format!(".{e}")))
        .unwrap_or_default();
    let url = loc.table_url();
    let result = match format {
        DataFormat::Parquet => {
            ctx.read_parquet(url, ParquetReadOptions::default().file_extension(&ext))
                .await
        }
        DataFormat::Csv => {
            ctx.read_csv(
                url,
                CsvReadOptions::new().has_header(true).file_extension(&ext),
            )
            .await
        }
        DataFormat::Arrow => {
            // DataFusion 55 mis-reads the schema of an IPC file that an object store returns
            // as a stream (memory://, s3://): read it here from the file's first message.
            let schema = if loc.url.scheme() == "file" {
                None
            } else {
                let first = match &found {
                    Found::File => loc.path.clone(),
                    Found::Directory { .. } => loc
                        .path
                        .clone()
                        .join(file_name.as_deref().unwrap_or_default()),
                };
                Some(ipc_schema(loc.store.as_ref(), &first, location).await?)
            };
            let opts = ArrowReadOptions {
                file_extension: &ext,
                schema: schema.as_ref(),
                ..Default::default()
            };
            ctx.read_arrow(url, opts).await
        }
        DataFormat::Json => {
            ctx.read_json(url, JsonReadOptions::default().file_extension(&ext))
                .await
        }
    };
    result.map_err(|e| QuiverError::UnreadableFile {
        path: location.to_string(),
        format: format.name().to_string(),
        reason: e.to_string(),
    })
}

/// The schema of an Arrow IPC file (or stream) from its first message, reading only that.
async fn ipc_schema(
    store: &dyn ObjectStore,
    path: &Path,
    display: &str,
) -> Result<arrow::datatypes::Schema> {
    let unreadable = |reason: String| QuiverError::UnreadableFile {
        path: display.to_string(),
        format: "arrow".to_string(),
        reason,
    };
    let os = |source| QuiverError::ObjectStore {
        path: display.to_string(),
        source,
    };
    let size = store.head(path).await.map_err(os)?.size;
    if size < 16 {
        return Err(unreadable("file too short for Arrow IPC".to_string()));
    }
    let head = store.get_range(path, 0..8).await.map_err(os)?;
    if &head[0..6] == b"ARROW1" {
        // File format: the footer (its length and the magic end the file) holds the schema.
        let tail = store.get_range(path, size - 10..size).await.map_err(os)?;
        if &tail[4..10] != b"ARROW1" {
            return Err(unreadable("missing Arrow IPC footer".to_string()));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&tail[0..4]);
        let footer_len = i32::from_le_bytes(len);
        if footer_len <= 0 || footer_len as u64 + 10 > size {
            return Err(unreadable("invalid Arrow IPC footer length".to_string()));
        }
        let start = size - 10 - footer_len as u64;
        let footer_bytes = store.get_range(path, start..size - 10).await.map_err(os)?;
        let footer = arrow::ipc::root_as_footer(&footer_bytes)
            .map_err(|e| unreadable(format!("invalid IPC footer: {e}")))?;
        let schema = footer
            .schema()
            .ok_or_else(|| unreadable("the IPC footer has no schema".to_string()))?;
        return Ok(arrow::ipc::convert::fb_to_schema(schema));
    }
    // Stream format: the first message is the schema.
    const CONTINUATION: [u8; 4] = [0xff, 0xff, 0xff, 0xff];
    let preamble = if head[0..4] == CONTINUATION { 4 } else { 0 };
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[preamble..preamble + 4]);
    let meta_len = i32::from_le_bytes(len);
    let start = (preamble + 4) as u64;
    let end = start + meta_len.max(0) as u64;
    if meta_len <= 0 || end > size {
        return Err(unreadable("invalid IPC message length".to_string()));
    }
    let meta = store.get_range(path, start..end).await.map_err(os)?;
    let message = arrow::ipc::root_as_message(&meta)
        .map_err(|e| unreadable(format!("invalid IPC message: {e}")))?;
    let schema = message
        .header_as_schema()
        .ok_or_else(|| unreadable("the first IPC message is not a schema".to_string()))?;
    Ok(arrow::ipc::convert::fb_to_schema(schema))
}

/// Writes the result of `df` to `location` as one Parquet or Arrow IPC file. The data streams
/// to a hidden temporary object next to the target (`.<name>.<uuid>.tmp`, a multipart upload
/// where the store has them, memory bounded by a row group), which is renamed to `location`
/// only once complete: a failed query or write leaves nothing behind and an existing file
/// untouched.
pub async fn write(
    ctx: &SessionContext,
    s3: &S3Config,
    df: DataFrame,
    location: &str,
    format: DataFormat,
) -> Result<u64> {
    if !matches!(format, DataFormat::Parquet | DataFormat::Arrow) {
        return Err(QuiverError::UnsupportedFormat {
            path: location.to_string(),
            format: format!("{} (writes support parquet and arrow)", format.name()),
        });
    }
    let loc = resolve(ctx, s3, location)?;
    let name = loc.path.filename().ok_or_else(|| QuiverError::InvalidUrl {
        url: location.to_string(),
        reason: "a file name is needed to write to".to_string(),
    })?;
    let tmp_name = format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple());
    let parent: Path = loc
        .path
        .parts()
        .take(loc.path.parts().count().saturating_sub(1))
        .collect();
    let tmp = parent.join(tmp_name.as_str());
    let os = |source| QuiverError::ObjectStore {
        path: location.to_string(),
        source,
    };
    let mut out = BufWriter::new(Arc::clone(&loc.store), tmp.clone());
    match stream_encoded(df, format, location, &mut out).await {
        Ok(rows) => {
            out.shutdown().await.map_err(|e| QuiverError::Io {
                path: location.into(),
                source: e,
            })?;
            if let Err(e) = loc.store.rename(&tmp, &loc.path).await {
                let _ = loc.store.delete(&tmp).await;
                return Err(os(e));
            }
            Ok(rows)
        }
        Err(e) => {
            // Best effort: abandon the upload; the temporary object is hidden in any case.
            let _ = out.abort().await;
            let _ = loc.store.delete(&tmp).await;
            Err(e)
        }
    }
}

/// Runs `df` and encodes its batches into `out`, handing bytes over batch by batch.
async fn stream_encoded(
    df: DataFrame,
    format: DataFormat,
    location: &str,
    out: &mut BufWriter,
) -> Result<u64> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let io = |e: std::io::Error| QuiverError::Io {
        path: location.into(),
        source: e,
    };
    let encoding = |e: parquet::errors::ParquetError| {
        QuiverError::internal(format!("writing {location}: {e}"))
    };
    let mut rows = 0u64;
    match format {
        DataFormat::Parquet => {
            let mut w =
                parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, None).map_err(encoding)?;
            while let Some(batch) = stream.next().await {
                let batch: RecordBatch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch).map_err(encoding)?;
                let ready = std::mem::take(w.inner_mut());
                out.write_all(&ready).await.map_err(io)?;
            }
            let rest = w.into_inner().map_err(encoding)?;
            out.write_all(&rest).await.map_err(io)?;
        }
        _ => {
            let mut w = arrow::ipc::writer::FileWriter::try_new(Vec::new(), &schema)?;
            while let Some(batch) = stream.next().await {
                let batch: RecordBatch = batch?;
                rows += batch.num_rows() as u64;
                w.write(&batch)?;
                let ready = std::mem::take(w.get_mut());
                out.write_all(&ready).await.map_err(io)?;
            }
            w.finish()?;
            let rest = w.into_inner()?;
            out.write_all(&rest).await.map_err(io)?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            DataFormat::from_path("a/b.parquet"),
            Some(DataFormat::Parquet)
        );
        assert_eq!(DataFormat::from_path("b.CSV"), Some(DataFormat::Csv));
        assert_eq!(DataFormat::from_path("b.feather"), Some(DataFormat::Arrow));
        assert_eq!(DataFormat::from_path("b.jsonl"), Some(DataFormat::Json));
        assert_eq!(DataFormat::from_path("b.txt"), None);
        assert_eq!(DataFormat::from_path("noext"), None);
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_location("memory:///x/y.parquet").unwrap().scheme(),
            "memory"
        );
        assert_eq!(
            parse_location("s3://bucket/k.csv").unwrap().host_str(),
            Some("bucket")
        );
        let u = parse_location("relative/file.parquet").unwrap();
        assert_eq!(u.scheme(), "file");
        assert!(u.path().ends_with("/relative/file.parquet"));
        let u = parse_location("/a/b/../c/./d.csv").unwrap();
        assert_eq!(u.path(), "/a/c/d.csv");
        let err = parse_location("hdfs://nn/x").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'hdfs'"), "{err}");
    }
}
