//! The CUDA side of [`super::affine_scores`]: one GEMM per chunk of rows through cuBLAS.
//!
//! A batch travels in chunks of at most [`CHUNK_VALUES`] values through two pinned staging
//! buffers: while the device copies chunk `i` in and multiplies it, the CPU converts chunk
//! `i + 1` into the other buffer and copies chunk `i − 1`'s scores out — so the bus, the device
//! and the host work at once. Buffers are allocated once per device and element type and kept
//! for the process (pinned allocations cost milliseconds); one batch at a time per device.
//!
//! Layouts: the rows are row-major `n × d`, which cuBLAS (column-major) reads as `Xᵀ` (`d × n`);
//! the weights `k × d` likewise read as `Wᵀ`. `S = op(Wᵀ)ᵀ · Xᵀ` with `transa = T` is `W · Xᵀ`,
//! `k × n` column-major — the scores row-major `n × k`, as the caller wants them.

use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use rayon::prelude::*;

use super::Precision;

/// Values per chunk (rows × max(d, k)): 32 MB of f64.
const CHUNK_VALUES: usize = 1 << 22;

/// Values converted per parallel task when staging a chunk.
const STAGE_GRAIN: usize = 1 << 16;

/// What the device calls fail with: the failing step and the driver's or cuBLAS's words.
type GpuResult<T> = std::result::Result<T, String>;

fn step<T, E: std::fmt::Display>(what: &str, r: std::result::Result<T, E>) -> GpuResult<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// An element type batches travel in.
trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn buffers(gpu: &mut Buffers2) -> &mut Option<Buffers<Self>>;
}

impl Elem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn buffers(gpu: &mut Buffers2) -> &mut Option<Buffers<Self>> {
        &mut gpu.f64s
    }
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn buffers(gpu: &mut Buffers2) -> &mut Option<Buffers<Self>> {
        &mut gpu.f32s
    }
}

/// The two slots of one element type: staging and result buffers on the host (pinned), rows
/// and scores on the device, and an event per slot and direction.
struct Buffers<T> {
    stage: Vec<PinnedHostSlice<T>>,
    back: Vec<PinnedHostSlice<T>>,
    rows: Vec<CudaSlice<T>>,
    scores: Vec<CudaSlice<T>>,
    uploaded: Vec<CudaEvent>,
    downloaded: Vec<CudaEvent>,
}

impl<T: Elem> Buffers<T> {
    fn new(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> GpuResult<Self> {
        let mut b = Buffers {
            stage: Vec::new(),
            back: Vec::new(),
            rows: Vec::new(),
            scores: Vec::new(),
            uploaded: Vec::new(),
            downloaded: Vec::new(),
        };
        for _ in 0..2 {
            // SAFETY: the staging buffer is written before it is read; results are read only
            // where a download wrote them. Write-combined: the CPU only writes staging.
            unsafe {
                b.stage.push(step(
                    "pinned staging buffer",
                    ctx.alloc_pinned(CHUNK_VALUES),
                )?);
                b.back.push(step(
                    "pinned result buffer",
                    ctx.alloc_pinned_with_flags(CHUNK_VALUES, 0),
                )?);
            }
            b.rows
                .push(step("device rows", stream.alloc_zeros(CHUNK_VALUES))?);
            b.scores
                .push(step("device scores", stream.alloc_zeros(CHUNK_VALUES))?);
            b.uploaded.push(step("event", ctx.new_event(None))?);
            b.downloaded.push(step("event", ctx.new_event(None))?);
        }
        Ok(b)
    }
}

/// Both element types' buffers, made at first use of each.
#[derive(Default)]
struct Buffers2 {
    f64s: Option<Buffers<f64>>,
    f32s: Option<Buffers<f32>>,
}

/// One device: its context, the stream the work goes on, the cuBLAS handle on that stream and
/// the kept buffers.
struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    buffers: Buffers2,
}

impl Gpu {
    fn open(ordinal: usize) -> GpuResult<Self> {
        let ctx = step("open the device", CudaContext::new(ordinal))?;
        let stream = step("create a stream", ctx.new_stream())?;
        let blas = step("create a cuBLAS handle", CudaBlas::new(Arc::clone(&stream)))?;
        Ok(Gpu {
            ctx,
            stream,
            blas,
            buffers: Buffers2::default(),
        })
    }
}

/// The devices this process has opened, one lock each (a device runs one batch at a time).
fn gpu(ordinal: usize) -> GpuResult<Arc<Mutex<Gpu>>> {
    static GPUS: Mutex<Vec<(usize, Arc<Mutex<Gpu>>)>> = Mutex::new(Vec::new());
    let mut gpus = GPUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, g)) = gpus.iter().find(|(n, _)| *n == ordinal) {
        return Ok(Arc::clone(g));
    }
    let g = Arc::new(Mutex::new(Gpu::open(ordinal)?));
    gpus.push((ordinal, Arc::clone(&g)));
    Ok(g)
}

/// See [`super::affine_scores`]; the caller has checked the shapes.
pub(super) fn affine_scores(
    ordinal: usize,
    precision: Precision,
    x: &[f64],
    d: usize,
    w: &[f64],
    b: &[f64],
) -> GpuResult<Vec<f64>> {
    let k = b.len();
    if d.max(k) > CHUNK_VALUES {
        return Err(format!(
            "rows of {d} features into {k} outputs exceed a transfer chunk of {CHUNK_VALUES} values"
        ));
    }
    let gpu = gpu(ordinal)?;
    let mut gpu = gpu.lock().unwrap_or_else(|e| e.into_inner());
    match precision {
        Precision::F64 => run::<f64>(&mut gpu, x, d, w, b),
        Precision::F32 => run::<f32>(&mut gpu, x, d, w, b),
    }
}

fn run<T: Elem>(gpu: &mut Gpu, x: &[f64], d: usize, w: &[f64], b: &[f64]) -> GpuResult<Vec<f64>>
where
    CudaBlas: Gemm<T>,
{
    let k = b.len();
    let n = x.len() / d;
    let mut out = vec![0.0f64; n * k];
    if n == 0 {
        return Ok(out);
    }
    let Gpu {
        ctx,
        stream,
        blas,
        buffers,
    } = gpu;
    step("bind the context", ctx.bind_to_thread())?;
    let bufs = T::buffers(buffers);
    if bufs.is_none() {
        *bufs = Some(Buffers::new(ctx, stream)?);
    }
    let bufs = bufs.as_mut().expect("made just above");
    let weights: Vec<T> = w.iter().map(|v| T::from_f64(*v)).collect();
    let dw = step("upload the weights", stream.clone_htod(&weights))?;
    let per = (CHUNK_VALUES / d.max(k)).max(1);
    let as_int = |v: usize| -> GpuResult<i32> {
        i32::try_from(v).map_err(|_| format!("{v} exceeds cuBLAS's 32-bit sizes"))
    };
    // The chunk whose scores are on their way back: (slot, first row, rows).
    let mut pending: Option<(usize, usize, usize)> = None;
    for (i, chunk) in x.chunks(per * d).enumerate() {
        let slot = i % 2;
        let rows = chunk.len() / d;
        // The slot's staging buffer is free once its last upload finished.
        step("wait for an upload", bufs.uploaded[slot].synchronize())?;
        let stage = step("staging buffer", bufs.stage[slot].as_mut_slice())?;
        let stage = &mut stage[..chunk.len()];
        stage
            .par_chunks_mut(STAGE_GRAIN)
            .zip(chunk.par_chunks(STAGE_GRAIN))
            .for_each(|(s, c)| {
                for (s, c) in s.iter_mut().zip(c) {
                    *s = T::from_f64(*c);
                }
            });
        let mut dx = bufs.rows[slot].slice_mut(..chunk.len());
        step(
            "copy rows to the device",
            stream.memcpy_htod(&*stage, &mut dx),
        )?;
        step("record an event", bufs.uploaded[slot].record(stream))?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: as_int(k)?,
            n: as_int(rows)?,
            k: as_int(d)?,
            alpha: T::from_f64(1.0),
            lda: as_int(d)?,
            ldb: as_int(d)?,
            beta: T::from_f64(0.0),
            ldc: as_int(k)?,
        };
        let dx = bufs.rows[slot].slice(..chunk.len());
        let mut ds = bufs.scores[slot].slice_mut(..rows * k);
        // SAFETY: `dw` holds k × d values, `dx` rows × d, `ds` rows × k: the sizes given.
        step("cuBLAS gemm", unsafe { blas.gemm(cfg, &dw, &dx, &mut ds) })?;
        // The slot's result buffer was read when its previous chunk was harvested.
        let back = step("result buffer", bufs.back[slot].as_mut_slice())?;
        step(
            "copy scores to the host",
            stream.memcpy_dtoh(&ds, &mut back[..rows * k]),
        )?;
        step("record an event", bufs.downloaded[slot].record(stream))?;
        if let Some(done) = pending.replace((slot, i * per, rows)) {
            harvest(bufs, done, b, &mut out)?;
        }
    }
    if let Some(done) = pending {
        harvest(bufs, done, b, &mut out)?;
    }
    // The weights' buffer is freed on the stream; wait so that errors surface here.
    step("finish the batch", stream.synchronize())?;
    drop(dw);
    Ok(out)
}

/// Copies a finished chunk's scores (plus the biases) into `out`.
fn harvest<T: Elem>(
    bufs: &mut Buffers<T>,
    (slot, first, rows): (usize, usize, usize),
    b: &[f64],
    out: &mut [f64],
) -> GpuResult<()> {
    let k = b.len();
    step("wait for scores", bufs.downloaded[slot].synchronize())?;
    let back = step("result buffer", bufs.back[slot].as_slice())?;
    let dst = &mut out[first * k..(first + rows) * k];
    // Whole rows per task.
    let grain = (STAGE_GRAIN / k).max(1) * k;
    dst.par_chunks_mut(grain)
        .zip(back[..rows * k].par_chunks(grain))
        .for_each(|(o, s)| {
            for (row_o, row_s) in o.chunks_exact_mut(k).zip(s.chunks_exact(k)) {
                for ((o, s), bias) in row_o.iter_mut().zip(row_s).zip(b) {
                    *o = s.to_f64() + bias;
                }
            }
        });
    Ok(())
}
