//! `xcache doctor`: the platform, the cache directories and their permissions, the C
//! and C++ compilers (proved by building and loading a shared object), nvcc, NVRTC
//! (proved by compiling a kernel for the GPU's arch), and the
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
    /// Not checked: something it depends on failed.
    Skip,
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
    let fail = |detail: String| Check {
        name,
        status: Status::Fail,
        detail,
    };
    let md = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return fail(format!(
                "{}: {e}. Fix: set XCACHE_DIR (or --dir) to a directory you can create",
                dir.display()
            ))
        }
    };
    if !md.is_dir() {
        return fail(format!(
            "{}: it is not a directory. Fix: remove it, or set XCACHE_DIR (or --dir) to a directory",
            dir.display()
        ));
    }
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
        return fail(format!("{}: {reason}. Fix: {fix}", dir.display()));
    }
    let writable = tempfile::tempfile_in(dir).is_ok();
    let free = match free_bytes(dir) {
        Some(b) if b >= 10 << 30 => format!("{} GiB", b >> 30),
        Some(b) => format!("{} MiB", b >> 20),
        None => "?".into(),
    };
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

fn compiler_check(
    name: &'static str,
    lang: Language,
    config: &Config,
    store: Option<&Store>,
) -> Check {
    let tool = match crate::compile::toolchain::resolve(lang, config, store) {
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
            None,
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

/// libnvrtc, proved by compiling an empty kernel for the arch the templates would get.
fn nvrtc_check(config: &Config, store: Option<&Store>) -> Check {
    use crate::compile::nvrtc;
    let used = config.cuda_compiler == crate::config::CudaCompiler::Nvrtc;
    let warn = |detail: String| Check {
        name: "NVRTC",
        status: if used { Status::Warn } else { Status::Ok },
        detail: if used {
            format!("CUDA templates unavailable with cuda_compiler=nvrtc: {detail}")
        } else {
            format!("{detail} (not used: cuda_compiler=nvcc)")
        },
    };
    let tool = match nvrtc::resolve(config, store) {
        Ok(t) => t,
        Err(e) => return warn(e.to_string()),
    };
    let (arch, output) = nvrtc::target(config);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return warn(e.to_string()),
    };
    let t = Instant::now();
    let r = tool.compile(
        dir.path(),
        "probe.cu",
        b"extern \"C\" __global__ void xc_probe(float *x) { x[threadIdx.x] += 1.0f; }\n",
        &[],
        &tool.options(&arch, &[]),
        output,
        config.compile_timeout,
    );
    let ms = t.elapsed().as_millis();
    match r {
        Ok(_) => Check {
            name: "NVRTC",
            status: Status::Ok,
            detail: format!(
                "{}: NVRTC {} ({}); compiles {} for {arch} ({ms} ms){}",
                tool.library.display(),
                tool.version_text(),
                tool.how,
                match output {
                    nvrtc::Output::Cubin => "a cubin",
                    nvrtc::Output::Ptx => "PTX",
                },
                if used {
                    "; builds the CUDA templates (cuda_compiler=nvrtc)"
                } else {
                    ""
                }
            ),
        },
        Err(e) => warn(format!("{}: {e}", tool.library.display())),
    }
}

fn skip(name: &'static str, why: &str) -> Check {
    Check {
        name,
        status: Status::Skip,
        detail: format!("not checked: {why}"),
    }
}

/// Where the settings came from, in a line.
fn settings_check(config: &Config) -> Check {
    let mut from: Vec<String> = Vec::new();
    for (_, _, origin) in config.effective() {
        let o = origin.to_string();
        if o != "default" && !from.contains(&o) {
            from.push(o);
        }
    }
    Check {
        name: "settings",
        status: Status::Ok,
        detail: if from.is_empty() {
            "all defaults (`xcache config` shows them)".into()
        } else {
            format!(
                "defaults, and from {} (`xcache config` shows each)",
                from.join(", ")
            )
        },
    }
}

/// Runs every check, whatever fails: the settings as loaded (`config` is what loading
/// them gave), the platform, the base dir and the compiledir, the compilers, nvcc and
/// the GPU. A check that depends on a failed one is skipped, saying so; the others run.
pub fn doctor(config: Result<Config>) -> DoctorReport {
    let mut checks = Vec::new();
    let (config, usable) = match config {
        Ok(c) => {
            checks.push(settings_check(&c));
            (c, true)
        }
        Err(e) => {
            checks.push(Check {
                name: "settings",
                status: Status::Fail,
                detail: e.to_string(),
            });
            // The compilers are checked as the defaults would find them.
            (Config::defaults(), false)
        }
    };
    trust::set_shared_group(config.shared_gid);
    let p = crate::platform::Platform::detect(&config.runtime_tag);
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
    let store = if usable {
        Store::open(&config).map_err(|e| e.to_string())
    } else {
        Err(String::new())
    };
    match (usable, config.base_dir()) {
        (false, _) => {
            checks.push(skip("base dir", "the settings cannot be read"));
            checks.push(skip("compiledir", "the settings cannot be read"));
        }
        (true, Err(e)) => {
            checks.push(Check {
                name: "base dir",
                status: Status::Fail,
                detail: e.to_string(),
            });
            checks.push(skip("compiledir", "there is no base dir"));
        }
        (true, Ok(base)) => {
            let b = dir_check("base dir", &base);
            let base_ok = b.status != Status::Fail;
            checks.push(b);
            checks.push(match &store {
                _ if !base_ok => skip("compiledir", "the base dir fails its check"),
                Err(e) => Check {
                    name: "compiledir",
                    status: Status::Fail,
                    detail: e.clone(),
                },
                Ok(store) => {
                    let mut cd = dir_check("compiledir", store.compiledir());
                    if cd.status == Status::Ok {
                        let n = crate::store::scan::entry_keys(&store.root())
                            .map(|k| k.len())
                            .unwrap_or(0);
                        cd.detail.push_str(&format!(
                            ", {n} {}",
                            if n == 1 { "entry" } else { "entries" }
                        ));
                    }
                    cd
                }
            });
        }
    }
    let store = store.ok();
    let store = store.as_ref();
    checks.push(compiler_check("C compiler", Language::C, &config, store));
    checks.push(compiler_check(
        "C++ compiler",
        Language::Cxx,
        &config,
        store,
    ));
    let mut cuda = compiler_check("nvcc", Language::Cuda, &config, store);
    if cuda.status == Status::Ok {
        cuda.detail = format!("{}; builds for {}", cuda.detail, nvcc::arch(&config));
    } else {
        cuda.detail = format!("CUDA templates unavailable: {}", cuda.detail);
    }
    checks.push(cuda);
    checks.push(nvrtc_check(&config, store));
    checks.push(match crate::cuda::probe::probe() {
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
    for c in remote_check(&config, store) {
        checks.push(c);
    }
    DoctorReport { checks }
}

/// The remote tiers, when some are configured, one check each: reachable,
/// authenticated, writable (in read-write mode), its round trip, and the signing key.
fn remote_check(config: &Config, store: Option<&Store>) -> Vec<Check> {
    if config.remote.is_none() {
        return Vec::new();
    }
    let fail = |detail: String| Check {
        name: "remote",
        status: Status::Fail,
        detail,
    };
    let namespace = store
        .and_then(|s| s.compiledir().file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stats = std::sync::Arc::new(crate::store::stats::Recorder::new(match store {
        Some(s) => s.root().clone(),
        None => {
            return vec![fail(
                "the compiledir fails its check: cannot name this platform's remote keys".into(),
            )]
        }
    }));
    let tiers = match crate::remote::tiers_from_config(
        config,
        &namespace,
        std::sync::Arc::new(crate::clock::SystemClock),
        stats,
    ) {
        Ok(t) if t.is_empty() => {
            return vec![Check {
                name: "remote",
                status: Status::Ok,
                detail: "remote_mode = off: not used".into(),
            }]
        }
        Ok(t) => t,
        Err(e) => return vec![fail(e.to_string())],
    };
    tiers
        .iter()
        .map(|tier| match tier.probe(false) {
            Ok(p) => {
                let writable = match &p.writable {
                    None => "read-only mode".to_string(),
                    Some(Ok(())) => "writable".to_string(),
                    Some(Err(e)) => format!(
                        "NOT writable ({e}: uploads are skipped; fix: allow these credentials to write, or set remote_mode = read-only)"
                    ),
                };
                let signing = match (p.signing, p.verify_required) {
                    (true, true) => "uploads signed, unsigned values refused",
                    (true, false) => "uploads signed, signatures checked where present",
                    (false, _) => "no signing key: values are checked, not authenticated",
                };
                let first = match tier {
                    crate::remote::AnyTier::Redis(_) => "PING",
                    crate::remote::AnyTier::S3(_) => "LIST",
                };
                Check {
                    name: "remote",
                    status: if matches!(p.writable, Some(Err(_))) {
                        Status::Warn
                    } else {
                        Status::Ok
                    },
                    detail: format!(
                        "{} ({}): reachable, {first} {:.1} ms, {writable}; {signing}",
                        p.address, p.mode, p.latency_ms
                    ),
                }
            }
            Err(e) => fail(format!(
                "{}: {e}. Requests compile locally while it fails. Fix: {}, or set remote_mode = off",
                tier.shown(),
                tier.fix_hint()
            )),
        })
        .collect()
}
