//! The CUDA toolchain. `nvcc` is the `nvcc` setting, else `$CUDA_HOME/bin`,
//! `$CUDA_PATH/bin`, `PATH`, then the `nvidia-cuda-nvcc` wheel of the `python3` on `PATH`
//! (`pip install nvidia-cuda-nvcc` gives a working nvcc without a CUDA installation).
//! Its host compiler (`-ccbin`) is the C++ compiler xcache uses; both versions enter
//! the key. The GPU arch is the `cuda_arch` setting, else the local GPU's (through the
//! driver), else [`DEFAULT_ARCH`]; objects carry SASS for it and PTX for newer GPUs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::host::{self, HostTool};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::key::Toolchain;

/// The arch built for when neither the setting nor a GPU says: Ampere, whose PTX every
/// later GPU can JIT-compile.
pub const DEFAULT_ARCH: &str = "sm_80";

/// The arch to build for (see the module doc).
pub fn arch(config: &Config) -> String {
    if let Some(a) = &config.cuda_arch {
        return a.clone();
    }
    detected_arch().unwrap_or_else(|| DEFAULT_ARCH.to_string())
}

/// The local GPU's arch (`sm_90`), asked of the driver once per process; `None`
/// without a usable GPU.
pub fn detected_arch() -> Option<String> {
    static DETECTED: OnceLock<Option<String>> = OnceLock::new();
    // Through the driver this process loads once anyway (no second dlopen, which would
    // wait on the loader's lock while another thread loads a library).
    DETECTED
        .get_or_init(|| crate::cuda::driver::Driver::get().ok()?.arch(0).ok())
        .clone()
}

/// Finds and fingerprints nvcc and its host compiler.
/// `host` is the resolved C++ compiler, which nvcc runs for host code (`-ccbin`).
pub fn resolve_fresh(config: &Config, host: &HostTool) -> Result<HostTool> {
    let found = match &config.nvcc {
        Some(p) => Found {
            path: PathBuf::from(p),
            how: "setting",
        },
        None => discover().ok_or_else(|| Error::NoCompiler {
            compiler: "nvcc".into(),
            message: "not found in the `nvcc` setting, CUDA_HOME, CUDA_PATH, PATH or a pip wheel. Fix: install the CUDA toolkit, or `pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl`, or set nvcc=/path/to/nvcc".into(),
        })?,
    };
    let no_nvcc = |message: String| Error::NoCompiler {
        compiler: found.path.display().to_string(),
        message,
    };
    let canonical = found
        .path
        .canonicalize()
        .map_err(|e| no_nvcc(e.to_string()))?;
    let out = host::dies_with_xcache(Command::new(&found.path).arg("--version"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| no_nvcc(e.to_string()))?;
    if !out.status.success() {
        return Err(no_nvcc(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let version = format!(
        "{}\nhost compiler {}: {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        host.toolchain.path,
        host.toolchain.version
    );
    let binary =
        host::binary_id(&canonical, config.compiler_check).map_err(|e| no_nvcc(e.to_string()))?;
    Ok(HostTool {
        program: found.path.clone(),
        args: vec![
            "-shared".into(),
            "-Xcompiler".into(),
            "-fPIC".into(),
            format!("-O{}", config.opt_level.replace(['s', 'z'], "2")),
            "-ccbin".into(),
            host.program.display().to_string(),
        ],
        search_dirs: toolkit_include_dirs(&canonical)
            .into_iter()
            .chain(host.search_dirs.iter().cloned())
            .collect(),
        toolchain: Toolchain {
            path: canonical.display().to_string(),
            version,
            binary,
        },
        cuda_arch: None,
        removed_env_flags: Vec::new(),
    })
}

/// The CUDA toolkit's header directories beside `nvcc` (`bin/../include`, and
/// `targets/*/include` in a toolkit install), which nvcc searches by itself.
fn toolkit_include_dirs(nvcc: &Path) -> Vec<PathBuf> {
    let Some(top) = nvcc.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let mut dirs = vec![top.join("include")];
    if let Ok(targets) = std::fs::read_dir(top.join("targets")) {
        dirs.extend(targets.flatten().map(|t| t.path().join("include")));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Where nvcc was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The binary.
    pub path: PathBuf,
    /// `CUDA_HOME`, `CUDA_PATH`, `PATH` or `pip wheel`.
    pub how: &'static str,
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Searches the places above, in order.
pub fn discover() -> Option<Found> {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if executable(&p) {
                return Some(Found {
                    path: p,
                    how: if var == "CUDA_HOME" {
                        "CUDA_HOME"
                    } else {
                        "CUDA_PATH"
                    },
                });
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("nvcc");
            if executable(&p) {
                return Some(Found {
                    path: p,
                    how: "PATH",
                });
            }
        }
    }
    pip_wheel().map(|path| Found {
        path,
        how: "pip wheel",
    })
}

/// nvcc inside the `nvidia` namespace package of `python3`, if installed.
fn pip_wheel() -> Option<PathBuf> {
    let out = host::dies_with_xcache(&mut Command::new("python3"))
        .args([
            "-c",
            "import nvidia, sys; print('\\n'.join(nvidia.__path__))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .flat_map(|d| {
            ["cu13", "cu12", "cuda_nvcc"].map(|sub| Path::new(d).join(sub).join("bin").join("nvcc"))
        })
        .find(|p| executable(p))
}

/// The last line of `nvcc --version` (`Cuda compilation tools, release 13.0, V13.0.88`).
pub fn version(nvcc: &Path) -> Result<String, String> {
    let out = host::dies_with_xcache(Command::new(nvcc).arg("--version"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .lines()
        .rev()
        .find(|l| l.contains("release"))
        .or(text.lines().last())
        .unwrap_or("")
        .trim()
        .to_string())
}
