//! Finding `nvcc`: `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, `PATH`, then the `nvidia-cuda-nvcc`
//! wheel of the `python3` on `PATH` (`pip install nvidia-cuda-nvcc` gives a working nvcc
//! without a CUDA installation).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    let out = Command::new("python3")
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
    let out = Command::new(nvcc)
        .arg("--version")
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
