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
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr,
    LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::compile_ptx;
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
    /// The tree kernel, compiled (NVRTC) at first use; the error if it could not be.
    forest: Option<GpuResult<CudaFunction>>,
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
            forest: None,
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
    let gpu = gpu(ordinal)?;
    let mut gpu = gpu.lock().unwrap_or_else(|e| e.into_inner());
    match precision {
        Precision::F64 => gemm::<f64>(&mut gpu, x, d, w, b),
        Precision::F32 => gemm::<f32>(&mut gpu, x, d, w, b),
    }
}

fn gemm<T: Elem>(gpu: &mut Gpu, x: &[f64], d: usize, w: &[f64], b: &[f64]) -> GpuResult<Vec<f64>>
where
    CudaBlas: Gemm<T>,
{
    let k = b.len();
    let Gpu {
        ctx,
        stream,
        blas,
        buffers,
        ..
    } = gpu;
    step("bind the context", ctx.bind_to_thread())?;
    let weights: Vec<T> = w.iter().map(|v| T::from_f64(*v)).collect();
    let dw = step("upload the weights", stream.clone_htod(&weights))?;
    let as_int = |v: usize| -> GpuResult<i32> {
        i32::try_from(v).map_err(|_| format!("{v} exceeds cuBLAS's 32-bit sizes"))
    };
    let out = run::<T>(
        ctx,
        stream,
        T::buffers(buffers),
        x,
        d,
        k,
        &mut |dx, ds, rows| {
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
            // SAFETY: `dw` holds k × d values, `dx` rows × d, `ds` rows × k: the sizes given.
            step("cuBLAS gemm", unsafe { blas.gemm(cfg, &dw, dx, ds) })
        },
        Some(b),
    )?;
    drop(dw);
    Ok(out)
}

/// What a chunk's rows (`d` values each, on the device) become: `k` values per row.
type ChunkCompute<'c, T> =
    dyn FnMut(&CudaView<'_, T>, &mut CudaViewMut<'_, T>, usize) -> GpuResult<()> + 'c;

/// Runs `compute` over `x` in chunks of rows: each chunk staged (converted to `T`) into a
/// pinned buffer, copied to the device, computed into `k` values per row, copied back and —
/// plus `bias` per output, if given — written into the result, two chunks in flight.
#[allow(clippy::too_many_arguments)]
fn run<T: Elem>(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    bufs: &mut Option<Buffers<T>>,
    x: &[f64],
    d: usize,
    k: usize,
    compute: &mut ChunkCompute<'_, T>,
    bias: Option<&[f64]>,
) -> GpuResult<Vec<f64>> {
    let n = x.len() / d;
    let mut out = vec![0.0f64; n * k];
    if n == 0 {
        return Ok(out);
    }
    if d.max(k) > CHUNK_VALUES {
        return Err(format!(
            "rows of {d} features into {k} outputs exceed a transfer chunk of {CHUNK_VALUES} values"
        ));
    }
    if bufs.is_none() {
        *bufs = Some(Buffers::new(ctx, stream)?);
    }
    let bufs = bufs.as_mut().expect("made just above");
    let per = (CHUNK_VALUES / d.max(k)).max(1);
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
        let dx = bufs.rows[slot].slice(..chunk.len());
        let mut ds = bufs.scores[slot].slice_mut(..rows * k);
        compute(&dx, &mut ds, rows)?;
        // The slot's result buffer was read when its previous chunk was harvested.
        let back = step("result buffer", bufs.back[slot].as_mut_slice())?;
        step(
            "copy scores to the host",
            stream.memcpy_dtoh(&ds, &mut back[..rows * k]),
        )?;
        step("record an event", bufs.downloaded[slot].record(stream))?;
        if let Some(done) = pending.replace((slot, i * per, rows)) {
            harvest(bufs, done, k, bias, &mut out)?;
        }
    }
    if let Some(done) = pending {
        harvest(bufs, done, k, bias, &mut out)?;
    }
    // Wait for the stream, so that errors surface here.
    step("finish the batch", stream.synchronize())?;
    Ok(out)
}

/// The tree kernel: one thread per row walks every tree (a missing value, NaN, goes its
/// node's default way) and adds the leaf's values to the row's outputs in tree order, from
/// the base scores; forests then divide by the number of trees. Only additions, in the CPU's
/// order: the device's outputs equal the CPU's bit for bit.
const FOREST_SRC: &str = r#"
extern "C" __global__ void quiver_forest(
    const double* __restrict__ x, int n, int d,
    const unsigned int* __restrict__ feature, const double* __restrict__ threshold,
    const unsigned int* __restrict__ left, const unsigned int* __restrict__ right,
    const unsigned char* __restrict__ default_left, const double* __restrict__ values,
    const unsigned int* __restrict__ roots, const unsigned int* __restrict__ slots,
    int trees, int width, int k, const double* __restrict__ base, double divisor,
    double* __restrict__ out)
{
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const double* row = x + r * d;
    double* o = out + r * k;
    for (int c = 0; c < k; ++c) o[c] = base[c];
    for (int t = 0; t < trees; ++t) {
        unsigned int i = roots[t];
        while (left[i] != 0xffffffffu) {
            double v = row[feature[i]];
            bool go_left = (v != v) ? (default_left[i] != 0) : (v <= threshold[i]);
            i = go_left ? left[i] : right[i];
        }
        const double* leaf = values + (size_t)i * width;
        double* dst = o + slots[t];
        for (int w = 0; w < width; ++w) dst[w] += leaf[w];
    }
    if (divisor != 1.0) {
        for (int c = 0; c < k; ++c) o[c] /= divisor;
    }
}
"#;

/// Whether this device can run the tree kernel: NVRTC loads and compiles it (once).
pub(super) fn forest_ready(ordinal: usize) -> GpuResult<()> {
    let gpu = gpu(ordinal)?;
    let mut gpu = gpu.lock().unwrap_or_else(|e| e.into_inner());
    forest_function(&mut gpu).map(|_| ())
}

fn forest_function(gpu: &mut Gpu) -> GpuResult<CudaFunction> {
    if gpu.forest.is_none() {
        gpu.forest = Some((|| {
            // SAFETY: only tries to open the shared library.
            if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Err(
                    "NVRTC (libnvrtc.so) could not be loaded: install the CUDA runtime libraries to score trees on the device"
                        .to_string(),
                );
            }
            step("bind the context", gpu.ctx.bind_to_thread())?;
            let ptx = step("compile the tree kernel (NVRTC)", compile_ptx(FOREST_SRC))?;
            let module = step("load the tree kernel", gpu.ctx.load_module(ptx))?;
            step(
                "find the tree kernel",
                module.load_function("quiver_forest"),
            )
        })());
    }
    gpu.forest.clone().expect("set just above")
}

/// See [`super::forest_outputs`].
pub(super) fn forest_outputs(
    ordinal: usize,
    x: &[f64],
    d: usize,
    f: &super::Forest,
) -> GpuResult<Vec<f64>> {
    let gpu = gpu(ordinal)?;
    let mut gpu = gpu.lock().unwrap_or_else(|e| e.into_inner());
    let func = forest_function(&mut gpu)?;
    let Gpu {
        ctx,
        stream,
        buffers,
        ..
    } = &mut *gpu;
    step("bind the context", ctx.bind_to_thread())?;
    let feature = step("upload the trees", stream.clone_htod(&f.feature))?;
    let threshold = step("upload the trees", stream.clone_htod(&f.threshold))?;
    let left = step("upload the trees", stream.clone_htod(&f.left))?;
    let right = step("upload the trees", stream.clone_htod(&f.right))?;
    let default_left = step("upload the trees", stream.clone_htod(&f.default_left))?;
    let values = step("upload the trees", stream.clone_htod(&f.values))?;
    let roots = step("upload the trees", stream.clone_htod(&f.roots))?;
    let slots = step("upload the trees", stream.clone_htod(&f.slots))?;
    let base = step("upload the trees", stream.clone_htod(&f.base))?;
    let int = |v: usize| -> GpuResult<i32> {
        i32::try_from(v).map_err(|_| format!("{v} exceeds the kernel's 32-bit sizes"))
    };
    let (d_i, trees, width, k) = (
        int(d)?,
        int(f.roots.len())?,
        int(f.width)?,
        int(f.base.len())?,
    );
    let divisor = f.divisor;
    let stream: &Arc<CudaStream> = stream;
    run::<f64>(
        ctx,
        stream,
        &mut buffers.f64s,
        x,
        d,
        f.base.len(),
        &mut |dx, ds, rows| {
            let n = int(rows)?;
            let mut launch = stream.launch_builder(&func);
            launch
                .arg(dx)
                .arg(&n)
                .arg(&d_i)
                .arg(&feature)
                .arg(&threshold)
                .arg(&left)
                .arg(&right)
                .arg(&default_left)
                .arg(&values)
                .arg(&roots)
                .arg(&slots)
                .arg(&trees)
                .arg(&width)
                .arg(&k)
                .arg(&base)
                .arg(&divisor)
                .arg(ds);
            // SAFETY: the arguments match the kernel's signature, in order; `dx` holds
            // rows × d values and `ds` rows × k; node indices were checked when the model
            // was loaded (children inside their tree, features below d).
            step("launch the tree kernel", unsafe {
                launch.launch(LaunchConfig {
                    grid_dim: ((rows as u32).div_ceil(256), 1, 1),
                    // 256 threads a block: well inside any device's registers per block.
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                })
            })
            .map(|_| ())
        },
        None,
    )
}

/// Copies a finished chunk's scores (plus the biases) into `out`.
fn harvest<T: Elem>(
    bufs: &mut Buffers<T>,
    (slot, first, rows): (usize, usize, usize),
    k: usize,
    bias: Option<&[f64]>,
    out: &mut [f64],
) -> GpuResult<()> {
    step("wait for scores", bufs.downloaded[slot].synchronize())?;
    let back = step("result buffer", bufs.back[slot].as_slice())?;
    let dst = &mut out[first * k..(first + rows) * k];
    // Whole rows per task.
    let grain = (STAGE_GRAIN / k).max(1) * k;
    dst.par_chunks_mut(grain)
        .zip(back[..rows * k].par_chunks(grain))
        .for_each(|(o, s)| {
            for (row_o, row_s) in o.chunks_exact_mut(k).zip(s.chunks_exact(k)) {
                match bias {
                    Some(b) => {
                        for ((o, s), bias) in row_o.iter_mut().zip(row_s).zip(b) {
                            *o = s.to_f64() + bias;
                        }
                    }
                    None => {
                        for (o, s) in row_o.iter_mut().zip(row_s) {
                            *o = s.to_f64();
                        }
                    }
                }
            }
        });
    Ok(())
}
