//! Where batch work may run: `quiver.device = auto | cpu | cuda | cuda:N`.
//!
//! Builds with the `cuda` feature (on by default in the `quiver` and `quiver-executor`
//! binaries) link no CUDA library: cudarc loads the driver and cuBLAS at run time, so the same
//! binary starts and runs everything on a machine without them. Before anything calls into
//! cudarc — which panics when a library it needs is absent — [`probe`] checks that the libraries
//! load and that the device exists. `auto` then uses the device when there is one and says once
//! (in the log) why it runs on the CPU when there is not; `cuda` is an error naming what is
//! missing.

use std::fmt;
use std::sync::{Mutex, RwLock};

use crate::error::{QuiverError, Result};

#[cfg(feature = "cuda")]
mod gpu;

/// What `quiver.device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The device when one is usable, else the CPU (the default).
    #[default]
    Auto,
    Cpu,
    /// A CUDA device (ordinal 0 unless given): an error when it cannot be used.
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err("expected auto, cpu, cuda or cuda:N (N a device ordinal)".to_string()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where work runs after `quiver.device` is resolved against this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    /// A usable CUDA device: its ordinal and name.
    Cuda {
        ordinal: usize,
        name: String,
    },
}

/// Whether this build can use CUDA at all.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Checks that CUDA device `ordinal` can be used here: the driver library loads, the driver
/// initialises, the device exists, cuBLAS loads. Never calls cudarc before its library is
/// known to load. The error says what is missing. Probed once per ordinal and process.
pub fn probe(ordinal: usize) -> std::result::Result<Placement, String> {
    static PROBED: Mutex<Vec<(usize, std::result::Result<Placement, String>)>> =
        Mutex::new(Vec::new());
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, known)) = probed.iter().find(|(n, _)| *n == ordinal) {
        return known.clone();
    }
    let found = probe_now(ordinal);
    probed.push((ordinal, found.clone()));
    found
}

fn probe_now(ordinal: usize) -> std::result::Result<Placement, String> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(
            "this build of Quiver has no CUDA support (built without the `cuda` feature)"
                .to_string(),
        )
    }
    #[cfg(feature = "cuda")]
    {
        // SAFETY: only tries to open the shared library (no CUDA call).
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(
                "no CUDA driver library (libcuda.so) could be loaded: no NVIDIA driver on this machine, or it is not on the library path (LD_LIBRARY_PATH)"
                    .to_string(),
            );
        }
        let count = cudarc::driver::CudaContext::device_count()
            .map_err(|e| format!("the CUDA driver did not initialise: {e}"))?;
        if count <= 0 {
            return Err("the CUDA driver reports no device".to_string());
        }
        if ordinal >= count as usize {
            return Err(format!(
                "device cuda:{ordinal} asked for, but the driver reports {count} device(s) (cuda:0 … cuda:{})",
                count - 1
            ));
        }
        // SAFETY: as above, only opens the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(
                "the CUDA driver is present but cuBLAS (libcublas.so) could not be loaded: install the CUDA runtime libraries or add them to LD_LIBRARY_PATH"
                    .to_string(),
            );
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| format!("device cuda:{ordinal} could not be opened: {e}"))?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        Ok(Placement::Cuda { ordinal, name })
    }
}

/// Resolves a choice on this machine: `cpu` is the CPU; `auto` the device when [`probe`]
/// finds it usable, else the CPU (logged once per process with the reason); `cuda[:N]` the
/// device or an error naming what is missing.
pub fn resolve(choice: DeviceChoice) -> Result<Placement> {
    match choice {
        DeviceChoice::Cpu => Ok(Placement::Cpu),
        DeviceChoice::Auto => match probe(0) {
            Ok(p) => Ok(p),
            Err(why) => {
                log_once(&format!("quiver.device = auto: running on the CPU ({why})"));
                Ok(Placement::Cpu)
            }
        },
        DeviceChoice::Cuda(n) => probe(n).map_err(|reason| QuiverError::InvalidConfigValue {
            key: "quiver.device".to_string(),
            value: choice.to_string(),
            reason,
        }),
    }
}

/// The element type batches travel in to the device (`quiver.device.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Exact: the device computes what the CPU computes, up to the order of the sums.
    #[default]
    F64,
    /// Opt-in throughput: half the bytes over the bus; about 7 significant digits.
    F32,
}

impl Precision {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f64" | "double" => Ok(Precision::F64),
            "f32" | "float" | "single" => Ok(Precision::F32),
            _ => Err("expected f64 or f32".to_string()),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        })
    }
}

/// Rows a batch needs before `auto` sends it to the device: below it the transfer and launch
/// latency cost more than the CPU's work (`quiver.device.min_rows`).
pub const DEFAULT_MIN_ROWS: usize = 131_072;

/// How batch work of this process uses a device. Sessions set it from their configuration
/// when they start (the last one started wins); an executor from its `--device` options —
/// the device is the executor's, so a cluster client's setting does not travel with tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePolicy {
    pub choice: DeviceChoice,
    /// Under `auto`, batches of fewer rows stay on the CPU. An explicit `cuda` sends every
    /// batch to the device.
    pub min_rows: usize,
    pub precision: Precision,
}

impl DevicePolicy {
    /// `auto`, [`DEFAULT_MIN_ROWS`], f64.
    pub const DEFAULT: DevicePolicy = DevicePolicy {
        choice: DeviceChoice::Auto,
        min_rows: DEFAULT_MIN_ROWS,
        precision: Precision::F64,
    };
}

impl Default for DevicePolicy {
    fn default() -> Self {
        DevicePolicy::DEFAULT
    }
}

static POLICY: RwLock<DevicePolicy> = RwLock::new(DevicePolicy::DEFAULT);

/// Sets this process's policy (see [`DevicePolicy`]).
pub fn set_policy(policy: DevicePolicy) {
    *POLICY.write().unwrap_or_else(|e| e.into_inner()) = policy;
}

/// This process's policy.
pub fn policy() -> DevicePolicy {
    *POLICY.read().unwrap_or_else(|e| e.into_inner())
}

impl DevicePolicy {
    /// The device ordinal a batch of `rows` rows goes to, or `None` for the CPU: never under
    /// `cpu`; always under `cuda[:N]` (when it cannot be used the caller gets the error);
    /// under `auto`, from `min_rows` rows on and only when a device is usable.
    pub fn device_for(&self, rows: usize) -> Result<Option<usize>> {
        match self.choice {
            DeviceChoice::Cpu => Ok(None),
            DeviceChoice::Cuda(n) => {
                resolve(self.choice)?;
                Ok(Some(n))
            }
            DeviceChoice::Auto => {
                if rows < self.min_rows.max(1) {
                    return Ok(None);
                }
                Ok(match resolve(DeviceChoice::Auto)? {
                    Placement::Cuda { ordinal, .. } => Some(ordinal),
                    Placement::Cpu => None,
                })
            }
        }
    }
}

/// Affine scores of a batch, where this process's policy sends it to a device:
/// `out[r·k + c] = Σⱼ x[r·d + j] · w[c·d + j] + b[c]` for the `n = x.len() / d` rows of `x`
/// (row-major) and the `k = b.len()` rows of `w` — one GEMM per chunk of rows on the device
/// (cuBLAS), transfers pipelined with it. `Ok(None)`: the batch stays on the CPU and the
/// caller computes it there. Linear and logistic predictions, k-means distances and the
/// multinomial naive Bayes likelihoods are all of this form.
pub fn affine_scores(x: &[f64], d: usize, w: &[f64], b: &[f64]) -> Result<Option<Vec<f64>>> {
    let k = b.len();
    if d == 0 || k == 0 || w.len() != k * d || !x.len().is_multiple_of(d) {
        return Err(QuiverError::internal(format!(
            "affine scores of {} values in rows of {d} against {} weights for {k} outputs",
            x.len(),
            w.len()
        )));
    }
    let policy = policy();
    let Some(ordinal) = policy.device_for(x.len() / d)? else {
        return Ok(None);
    };
    on_device(ordinal, policy.precision, x, d, w, b).map(Some)
}

#[cfg(feature = "cuda")]
fn on_device(
    ordinal: usize,
    precision: Precision,
    x: &[f64],
    d: usize,
    w: &[f64],
    b: &[f64],
) -> Result<Vec<f64>> {
    gpu::affine_scores(ordinal, precision, x, d, w, b)
        .map_err(|e| batch_failed(ordinal, x.len() / d, &e))
}

/// A device call that failed mid-batch.
#[cfg(feature = "cuda")]
fn batch_failed(ordinal: usize, rows: usize, why: &str) -> QuiverError {
    QuiverError::internal(format!(
        "device cuda:{ordinal} failed on a batch of {rows} rows: {why}"
    ))
}

/// A device asked of a build without the feature (`device_for` resolves the choice first,
/// which fails there: not reached).
#[cfg(not(feature = "cuda"))]
fn no_cuda(ordinal: usize) -> QuiverError {
    QuiverError::internal(format!(
        "cuda:{ordinal}: this build of Quiver has no CUDA support"
    ))
}

#[cfg(not(feature = "cuda"))]
fn on_device(
    ordinal: usize,
    _precision: Precision,
    _x: &[f64],
    _d: usize,
    _w: &[f64],
    _b: &[f64],
) -> Result<Vec<f64>> {
    Err(no_cuda(ordinal))
}

/// A tree ensemble flattened for the device: every tree's nodes in one set of arrays, child
/// indices global (a leaf's `left` is `u32::MAX`), `width` values per node. A row's outputs
/// start at `base`; tree `t` adds its leaf's values to outputs `slots[t] …`; all are then
/// divided by `divisor` (a forest's tree count; 1 for boosting) — what the CPU computes, in
/// its order.
#[derive(Debug, Clone, Default)]
pub struct Forest {
    pub feature: Vec<u32>,
    pub threshold: Vec<f64>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// 1 where a missing (NaN) value goes left.
    pub default_left: Vec<u8>,
    pub values: Vec<f64>,
    pub width: usize,
    pub roots: Vec<u32>,
    pub slots: Vec<u32>,
    pub base: Vec<f64>,
    pub divisor: f64,
}

/// The outputs of a tree ensemble for the rows of `x` (`base.len()` per row), where this
/// process's policy sends the batch to a device: one thread per row, the kernel compiled with
/// NVRTC at first use. `Ok(None)`: the batch stays on the CPU — also under `auto` when NVRTC
/// is missing (said once in the log). `forest` is built only when the device takes the batch.
pub fn forest_outputs(
    x: &[f64],
    d: usize,
    forest: impl FnOnce() -> Forest,
) -> Result<Option<Vec<f64>>> {
    let policy = policy();
    let Some(ordinal) = policy.device_for(x.len() / d.max(1))? else {
        return Ok(None);
    };
    forest_on_device(ordinal, policy.choice, x, d, forest)
}

#[cfg(feature = "cuda")]
fn forest_on_device(
    ordinal: usize,
    choice: DeviceChoice,
    x: &[f64],
    d: usize,
    forest: impl FnOnce() -> Forest,
) -> Result<Option<Vec<f64>>> {
    if let Err(why) = gpu::forest_ready(ordinal) {
        if choice == DeviceChoice::Auto {
            log_once(&format!(
                "quiver.device = auto: tree ensembles run on the CPU ({why})"
            ));
            return Ok(None);
        }
        return Err(QuiverError::InvalidConfigValue {
            key: "quiver.device".to_string(),
            value: choice.to_string(),
            reason: why,
        });
    }
    gpu::forest_outputs(ordinal, x, d, &forest())
        .map(Some)
        .map_err(|e| batch_failed(ordinal, x.len() / d.max(1), &e))
}

#[cfg(not(feature = "cuda"))]
fn forest_on_device(
    ordinal: usize,
    _choice: DeviceChoice,
    _x: &[f64],
    _d: usize,
    _forest: impl FnOnce() -> Forest,
) -> Result<Option<Vec<f64>>> {
    Err(no_cuda(ordinal))
}

/// Logs `message` the first time this process sees it.
fn log_once(message: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|m| m == message) {
        log::info!("{message}");
        seen.push(message.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(DeviceChoice::parse("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::parse(" CPU "), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x"] {
            let err = DeviceChoice::parse(bad).unwrap_err();
            assert!(err.contains("auto, cpu, cuda or cuda:N"), "{bad}: {err}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    /// `cpu` keeps every batch; `auto` keeps batches below `min_rows` without asking the
    /// driver, and larger ones where there is no device; `cuda` goes to the device or names
    /// what is missing.
    #[test]
    fn the_policy_places_batches_by_choice_and_size() {
        let with = |choice, min_rows| DevicePolicy {
            choice,
            min_rows,
            precision: Precision::F64,
        };
        assert_eq!(
            with(DeviceChoice::Cpu, 1).device_for(1 << 30).unwrap(),
            None
        );
        assert_eq!(
            with(DeviceChoice::Auto, 1000).device_for(999).unwrap(),
            None
        );
        let big = with(DeviceChoice::Auto, 1000).device_for(1000).unwrap();
        let forced = with(DeviceChoice::Cuda(0), 1000).device_for(1);
        match probe(0) {
            Ok(_) => {
                assert_eq!(big, Some(0));
                assert_eq!(forced.unwrap(), Some(0));
            }
            Err(why) => {
                assert_eq!(big, None);
                let err = forced.unwrap_err().to_string();
                assert!(err.contains("quiver.device") && err.contains(&why), "{err}");
            }
        }
        assert_eq!(Precision::parse(" F32 "), Ok(Precision::F32));
        assert_eq!(Precision::parse("f64"), Ok(Precision::F64));
        assert!(Precision::parse("f16").unwrap_err().contains("f64 or f32"));
    }

    /// Without a usable device (every CI machine), `auto` is the CPU and `cuda` an error that
    /// names the key and what is missing — and nothing panics, whether or not the build has
    /// the `cuda` feature. With a device, `cuda` resolves to it.
    #[test]
    fn auto_falls_back_and_cuda_names_what_is_missing() {
        assert_eq!(resolve(DeviceChoice::Cpu).unwrap(), Placement::Cpu);
        match probe(0) {
            Ok(device) => {
                assert_eq!(resolve(DeviceChoice::Auto).unwrap(), device);
                assert_eq!(resolve(DeviceChoice::Cuda(0)).unwrap(), device);
                eprintln!("a CUDA device is present: {device:?}");
            }
            Err(why) => {
                assert_eq!(resolve(DeviceChoice::Auto).unwrap(), Placement::Cpu);
                let err = resolve(DeviceChoice::Cuda(0)).unwrap_err().to_string();
                assert!(err.contains("quiver.device") && err.contains(&why), "{err}");
                if CUDA_BUILD {
                    assert!(!why.contains("feature"), "{why}");
                } else {
                    assert!(why.contains("`cuda` feature"), "{why}");
                }
                eprintln!("no CUDA device here (skipping the device checks): {why}");
            }
        }
        // An ordinal past the devices there are is refused whatever the machine has.
        let err = resolve(DeviceChoice::Cuda(4096)).unwrap_err().to_string();
        assert!(err.contains("cuda:4096"), "{err}");
    }
}
