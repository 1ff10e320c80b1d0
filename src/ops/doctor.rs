//! `xcache doctor`: the platform, the cache directories and their permissions, the C
//! and C++ compilers (proved by building and loading a shared object), nvcc, and the
//! GPU — each with a one-line verdict, in the spirit of the `nvidia-smi` / `deviceQuery`
//! checks people run before trusting a setup.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::compile::{nvcc, Language};
use crate::config::Config;
use crate::error::Result;
use crate::runtime::LoadedLibrary;
use crate::store::{trust, Store};

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Missing or degraded, but xcache works without it.
    Warn,
    /// xcache cannot work until this is fixed.
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// One line: what was found, and the fix when it is not ok.
    pub detail: String,
}

/// All checks. `xcache doctor --json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// In order.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// True unless a check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid path and a zeroed out-struct.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}

fn dir_check(name: &'static str, dir: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    let md = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return Check {
                name,
                status: Status::Fail,
                detail: format!(
                    "{}: {e}. Fix: set XCACHE_DIR to a directory you can create",
                    dir.display()
                ),
            }
        }
    };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Some((reason, fix)) = trust::problem(
        dir,
        md.uid(),
        md.gid(),
        md.mode(),
        euid,
        trust::shared_group(),
    ) {
        return Check {
            name,
            status: Status::Fail,
            detail: format!("{}: {reason}. Fix: {fix}", dir.display()),
        };
    }
    let writable = tempfile::tempfile_in(dir).is_ok();
    let free = free_bytes(dir)
        .map(|b| format!("{} MiB", b >> 20))
        .unwrap_or_else(|| "?".into());
    Check {
        name,
        status: if writable { Status::Ok } else { Status::Warn },
        detail: format!(
            "{}: yours, mode {:03o}, {}, {free} free",
            dir.display(),
            md.mode() & 0o777,
            if writable {
                "writable"
            } else {
                "read-only (hits work; misses compile privately)"
            }
        ),
    }
}

fn compiler_check(name: &'static str, lang: Language, config: &Config, store: &Store) -> Check {
    let tool = match crate::compile::toolchain::resolve(lang, config, Some(store)) {
        Ok(t) => t,
        Err(e) => {
            return Check {
                name,
                status: if lang == Language::C {
                    Status::Fail
                } else {
                    Status::Warn
                },
                detail: e.to_string(),
            }
        }
    };
    // nvcc says its version on the line with "release"; compilers on their first line.
    let v = &tool.toolchain.version;
    let version = v
        .lines()
        .find(|l| lang == Language::Cuda && l.contains("release"))
        .or_else(|| v.lines().next())
        .unwrap_or("")
        .to_string();
    // Prove it: build a shared object in a private directory and load it.
    let proof = (|| -> std::result::Result<u128, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (src, body) = match lang {
            Language::C => ("probe.c", "int xc_probe(void) { return 42; }\n"),
            Language::Cxx => ("probe.cpp", "extern \"C\" int xc_probe() { return 42; }\n"),
            Language::Cuda => (
                "probe.cu",
                "__global__ void k() {}\nextern \"C\" int xc_probe() { return 42; }\n",
            ),
        };
        std::fs::write(dir.path().join(src), body).map_err(|e| e.to_string())?;
        let t = Instant::now();
        tool.compile(
            dir.path(),
            src,
            "probe.so",
            &tool.full_flags(&[]),
            config.compile_timeout,
        )
        .map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_millis();
        let lib = std::sync::Arc::new(
            LoadedLibrary::open(crate::Key::default_probe(), &dir.path().join("probe.so"))
                .map_err(|e| e.to_string())?,
        );
        // SAFETY: the probe has exactly this signature.
        let f =
            unsafe { crate::runtime::symbol::<unsafe extern "C" fn() -> i32>(&lib, "xc_probe") }
                .map_err(|e| e.to_string())?;
        if unsafe { f() } != 42 {
            return Err("the probe returned a wrong value".into());
        }
        Ok(ms)
    })();
    match proof {
        Ok(ms) => Check {
            name,
            status: Status::Ok,
            detail: format!(
                "{}: {version}; builds and loads a shared object ({ms} ms)",
                tool.toolchain.path
            ),
        },
        Err(e) => Check {
            name,
            status: if lang == Language::C {
                Status::Fail
            } else {
                Status::Warn
            },
            detail: format!(
                "{}: {version}; cannot build a shared object: {e}",
                tool.toolchain.path
            ),
        },
    }
}

/// Runs every check.
pub fn doctor(config: &Config, store: &Store) -> Result<DoctorReport> {
    let mut checks = Vec::new();
    let p = store.platform();
    checks.push(Check {
        name: "platform",
        status: Status::Ok,
        detail: format!(
            "{p} (os {}, kernel {}, arch {}, libc {}, runtime {}, layout {})",
            p.os,
            p.kernel,
            p.arch,
            p.libc,
            if p.runtime.is_empty() {
                "-"
            } else {
                &p.runtime
            },
            p.layout
        ),
    });
    checks.push(dir_check("base dir", store.base_dir()));
    let mut cd = dir_check("compiledir", store.compiledir());
    if cd.status == Status::Ok {
        let n = crate::store::scan::entry_keys(store.root())?.len();
        cd.detail.push_str(&format!(
            ", {n} {}",
            if n == 1 { "entry" } else { "entries" }
        ));
    }
    checks.push(cd);
    checks.push(compiler_check("C compiler", Language::C, config, store));
    checks.push(compiler_check("C++ compiler", Language::Cxx, config, store));
    let mut cuda = compiler_check("nvcc", Language::Cuda, config, store);
    if cuda.status == Status::Ok {
        cuda.detail = format!("{}; builds for {}", cuda.detail, nvcc::arch(config));
    } else {
        cuda.detail.push_str(": CUDA templates unavailable");
    }
    checks.push(cuda);
    checks.push(match crate::gpu::probe() {
        Ok(info) => Check {
            name: "GPU",
            status: Status::Ok,
            detail: format!(
                "driver supports CUDA {}; {}",
                info.cuda_version_text(),
                info.devices
                    .iter()
                    .map(|d| format!(
                        "#{} {} (compute capability {}.{}, {})",
                        d.index,
                        d.name,
                        d.major,
                        d.minor,
                        d.arch()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        },
        Err(why) => Check {
            name: "GPU",
            status: Status::Warn,
            detail: format!("{why}: kernels run on the CPU"),
        },
    });
    Ok(DoctorReport { checks })
}
