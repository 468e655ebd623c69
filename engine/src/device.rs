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
use std::sync::Mutex;

use crate::error::{QuiverError, Result};

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
