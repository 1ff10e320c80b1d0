//! The host C/C++ compiler: found by the `cc` crate (outside a build script, so target,
//! host and opt level are set here), fingerprinted, and run to build shared objects.
//!
//! Finding the compiler with the `cc` crate runs it once (to tell gcc from clang), and
//! `--version` runs it again: two process spawns that a cache hit must not pay, so
//! [`super::toolchain`] records the resolution in the compiledir.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Language;
use crate::config::{CompilerCheck, Config};
use crate::error::{CompileError, Error, Result};
use crate::store::key::{Target, Toolchain};

/// The target triple this library was built for; host compiles target it.
pub const HOST_TARGET: &str = env!("XCACHE_HOST_TARGET");

/// A resolved compiler: how to run it and its fingerprint. For C and C++ it is the
/// host compiler; for CUDA it is nvcc (see [`super::nvcc`]), with the GPU arch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTool {
    /// The program to run (absolute).
    pub program: PathBuf,
    /// Arguments before the user's: for C/C++ what the `cc` crate chose (opt level,
    /// -fPIC, target flags, $CFLAGS); for nvcc `-shared -Xcompiler -fPIC -O3 -ccbin …`.
    pub args: Vec<String>,
    /// The fingerprint that enters keys.
    pub toolchain: Toolchain,
    /// For nvcc: the GPU arch (`sm_90`) that SASS and PTX are built for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_arch: Option<String>,
    /// The directories the compiler searches for headers by itself, without a user `-I`
    /// (what `cc -E -v` lists; for nvcc, the toolkit's and the host compiler's). With the
    /// user's include flags they bound which files a header list from elsewhere (a
    /// remote, a bundle) may make xcache read ([`crate::store::manifest::SearchScope`]).
    #[serde(default)]
    pub search_dirs: Vec<PathBuf>,
    /// Dependency flags the `cc` crate read from the environment (`CFLAGS`,
    /// `CXXFLAGS`) and xcache removed from [`HostTool::args`]: it writes its own
    /// dependency file (see [`super::flags`]). Whoever uses the tool warns about them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_env_flags: Vec<String>,
}

/// Environment variables the `cc` crate consults when it picks a compiler and flags.
pub(crate) fn relevant_env() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| {
            k == "PATH"
                || [
                    "CC", "CXX", "CFLAGS", "CXXFLAGS", "TARGET_", "HOST_", "CRATE_CC", "CUDA_",
                ]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    v.sort();
    v
}

fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

pub(crate) fn binary_id(path: &Path, check: CompilerCheck) -> std::io::Result<String> {
    match check {
        CompilerCheck::Mtime => {
            let md = std::fs::metadata(path)?;
            Ok(format!(
                "size={},mtime={}.{:09}",
                md.len(),
                md.mtime(),
                md.mtime_nsec()
            ))
        }
        CompilerCheck::Content => {
            let (hash, _) = crate::store::entry::hash_file(path)?;
            Ok(format!("blake3={hash}"))
        }
    }
}

pub(crate) fn resolve_fresh(lang: Language, config: &Config) -> Result<HostTool> {
    let mut build = cc::Build::new();
    build
        .target(HOST_TARGET)
        .host(HOST_TARGET)
        .opt_level_str(&config.opt_level)
        .debug(false)
        .pic(true)
        .cpp(lang == Language::Cxx)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .cargo_output(false)
        .emit_rerun_if_env_changed(false)
        // -Wall: warnings are kept in the entry's metadata and shown on a miss.
        .warnings(true)
        .extra_warnings(false);
    let chosen = match lang {
        Language::C => config.cc.as_ref(),
        Language::Cxx | Language::Cuda => config.cxx.as_ref(),
    };
    if let Some(c) = chosen {
        build.compiler(c);
    }
    let cc_tool = build.try_get_compiler().map_err(|e| Error::NoCompiler {
        compiler: chosen.cloned().unwrap_or_else(|| "cc".into()),
        message: e.to_string(),
    })?;
    let named = cc_tool.path().to_path_buf();
    let no_compiler = |message: String| Error::NoCompiler {
        compiler: named.display().to_string(),
        message,
    };
    let program = find_in_path(&named).ok_or_else(|| no_compiler("not found in PATH".into()))?;
    let canonical = program
        .canonicalize()
        .map_err(|e| no_compiler(e.to_string()))?;
    let out = dies_with_xcache(Command::new(&program).arg("--version"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| no_compiler(e.to_string()))?;
    if !out.status.success() {
        return Err(no_compiler(format!(
            "`{} --version` failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version.is_empty() {
        version = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    let binary =
        binary_id(&canonical, config.compiler_check).map_err(|e| no_compiler(e.to_string()))?;
    let args: Vec<String> = cc_tool
        .args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (args, removed_env_flags) = super::flags::strip_dependency_flags(&args);
    Ok(HostTool {
        search_dirs: search_dirs(&program, lang),
        program,
        args,
        toolchain: Toolchain {
            path: canonical.display().to_string(),
            version,
            binary,
        },
        cuda_arch: None,
        removed_env_flags,
    })
}

/// The directories `program` searches for headers by itself: the lists between
/// `search starts here:` and `End of search list.` that gcc and clang print for
/// `-E -v`. Empty when the compiler does not say (then only the user's include flags
/// bound what a header list from elsewhere may name).
pub fn search_dirs(program: &Path, lang: Language) -> Vec<PathBuf> {
    let x = if lang == Language::Cxx { "c++" } else { "c" };
    let out = Command::new(program)
        .args(["-E", "-v", "-x", x, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match out {
        Ok(o) => parse_search_dirs(&String::from_utf8_lossy(&o.stderr)),
        Err(_) => Vec::new(),
    }
}

/// The search list of a `cc -E -v` log.
pub fn parse_search_dirs(log: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in log.lines() {
        if line.starts_with("#include ") && line.ends_with("search starts here:") {
            inside = true;
        } else if line.starts_with("End of search list.") {
            inside = false;
        } else if inside {
            let d = line.trim().trim_end_matches(" (framework directory)");
            if d.starts_with('/') {
                out.push(PathBuf::from(d));
            }
        }
    }
    out
}

/// Libraries every host artifact links, placed after the source on the command line.
/// libm: generated kernels call `exp`, `tanh`, ...; without a DT_NEEDED entry they only
/// load into processes that happen to have libm already.
pub const LINK_LIBS: &[&str] = &["-lm"];

/// The compiler's arguments: `flags` with `-o output source` inserted before the
/// trailing [`LINK_LIBS`].
pub fn command_args(flags: &[String], output: &str, source: &str) -> Vec<String> {
    let split = flags.len() - LINK_LIBS.len().min(flags.len());
    let (before, libs) = if flags[split..]
        .iter()
        .map(String::as_str)
        .eq(LINK_LIBS.iter().copied())
    {
        flags.split_at(split)
    } else {
        (flags, &[][..])
    };
    let mut v = before.to_vec();
    v.extend(["-o", output, source].map(String::from));
    v.extend(libs.iter().cloned());
    v
}

impl HostTool {
    /// Every argument but input and output, in order. C/C++: the `cc` crate's,
    /// `-shared`, the user's, then [`LINK_LIBS`]. CUDA: nvcc's, SASS for the arch plus
    /// PTX for forward compatibility, then the user's. This exact list is in the key.
    pub fn full_flags(&self, user_flags: &[String]) -> Vec<String> {
        let mut v = self.args.clone();
        match &self.cuda_arch {
            Some(arch) => {
                let compute = arch.replacen("sm_", "compute_", 1);
                v.extend([
                    "-gencode".to_string(),
                    format!("arch={compute},code={arch}"),
                    "-gencode".to_string(),
                    format!("arch={compute},code={compute}"),
                ]);
                v.extend(user_flags.iter().cloned());
            }
            None => {
                v.push("-shared".into());
                v.extend(user_flags.iter().cloned());
                v.extend(LINK_LIBS.iter().map(|s| s.to_string()));
            }
        }
        v
    }

    /// The target: the host triple (with the host CPU when a flag asks for it), or the
    /// GPU arch for CUDA.
    pub fn target(&self, flags: &[String]) -> Target {
        match &self.cuda_arch {
            Some(arch) => Target {
                triple: arch.clone(),
                cpu: None,
            },
            None => Target {
                triple: HOST_TARGET.into(),
                cpu: wants_host_cpu(flags).then(|| host_cpu().to_string()),
            },
        }
    }

    /// Runs the compiler in `dir` on `source_file`, producing `output`. With
    /// `deps_file`, the compiler also writes there (`-MD -MF`, after every other
    /// argument: clang's driver takes the last of each; gcc's `-MMD` would win from anywhere,
    /// which is why [`super::flags`] keeps the user's out) the files it read; these
    /// arguments do not change the output and are not in the key. Returns the compile
    /// time and whatever it printed on success.
    ///
    /// The compiler runs in its own process group (a timeout kills it with its
    /// children) and dies with xcache ([`dies_with_xcache`]).
    pub fn compile(
        &self,
        dir: &Path,
        source_file: &str,
        output: &str,
        flags: &[String],
        deps_file: Option<&str>,
        timeout: Duration,
    ) -> Result<(Duration, String)> {
        use std::os::unix::process::CommandExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut args = command_args(flags, output, source_file);
        if let Some(d) = deps_file {
            args.extend(["-MD".to_string(), "-MF".to_string(), d.to_string()]);
        }
        let mut cmd = Command::new(&self.program);
        dies_with_xcache(&mut cmd);
        // Its own process group: a compiler that hangs is killed with its children
        // (cc1, as, ld), and stops holding the key's lock.
        cmd.args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let start = Instant::now();
        let child = cmd.spawn().map_err(|e| Error::NoCompiler {
            compiler: self.program.display().to_string(),
            message: e.to_string(),
        })?;
        let pgid = child.id() as i32;
        let timed_out = std::sync::Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = {
            let timed_out = timed_out.clone();
            std::thread::spawn(move || {
                if done_rx.recv_timeout(timeout).is_err() {
                    timed_out.store(true, Ordering::SeqCst);
                    // SAFETY: signals the compiler's own process group.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
            })
        };
        let out = child.wait_with_output();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        let out = out.map_err(|e| Error::NoCompiler {
            compiler: self.program.display().to_string(),
            message: e.to_string(),
        })?;
        let elapsed = start.elapsed();
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        if timed_out.load(Ordering::SeqCst) {
            text.push_str(&format!(
                "\nxcache: the compiler ran longer than compile_timeout ({}) and was killed. Fix: raise compile_timeout (XCACHE_FLAGS=compile_timeout=30m), or find what makes it hang",
                crate::config::format_duration(timeout)
            ));
        }
        if !out.status.success() || timed_out.load(Ordering::SeqCst) || !dir.join(output).is_file()
        {
            return Err(CompileError {
                command: shell_line(&self.program, args.iter().map(String::as_str)),
                workdir: dir.to_path_buf(),
                status: out.status.code(),
                output: text,
                kept_source: dir.join(source_file),
            }
            .into());
        }
        Ok((elapsed, text))
    }
}

/// Makes a child xcache spawns (a compiler, or a probe of one) die with xcache: the
/// kernel sends it SIGKILL when its parent goes (`PR_SET_PDEATHSIG`), so a SIGKILLed
/// `xcache compile` (or a crashed embedding process) leaves no compiler behind holding
/// CPU, or writing into a staging directory nobody will publish.
///
/// Caveats, from the kernel's rules: the signal follows the *thread* that spawned the
/// child, so the spawning thread must outlive the child (xcache's do: each waits for
/// its compiler); it is sent to the child only, so grandchildren (`cc1`, `as`, `ld`,
/// nvcc's `cicc` and `ptxas`) finish the step they are in, find their pipe or parent
/// gone, and exit; it survives `exec` (not of set-user-ID programs). A parent that died
/// before the child asked is caught by comparing `getppid()` with the parent's pid
/// afterwards, and the child then exits at once.
pub fn dies_with_xcache(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before prctl: nobody will wait for this compile.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// A command line as a shell would need it quoted.
pub fn shell_line<'a>(program: &Path, args: impl IntoIterator<Item = &'a str>) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=+./,:@%".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let mut line = quote(&program.to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line
}

/// True when a flag makes the output depend on the CPU the compiler runs on (gcc's
/// long forms, `--machine-arch=native`, included).
pub fn wants_host_cpu(flags: &[String]) -> bool {
    const CPU_FLAGS: &[&str] = &[
        "-march=",
        "-mcpu=",
        "-mtune=",
        "--machine-arch=",
        "--machine-cpu=",
        "--machine-tune=",
    ];
    flags
        .iter()
        .any(|f| CPU_FLAGS.iter().any(|p| f.starts_with(p)) && f.ends_with("=native"))
}

/// A short human name for the host CPU: the model name and the widest vector ISA.
pub fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    let isa = if std::arch::is_x86_feature_detected!("avx512f") {
        " (AVX-512)"
    } else if std::arch::is_x86_feature_detected!("avx2") {
        " (AVX2)"
    } else {
        " (SSE2)"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let isa = "";
    format!("{model}{isa}")
}

/// The host CPU's model and features, as one line: what `-march=native` resolves from.
pub fn host_cpu() -> &'static str {
    static CPU: OnceLock<String> = OnceLock::new();
    CPU.get_or_init(detect_cpu)
}

#[cfg(target_arch = "x86_64")]
fn detect_cpu() -> String {
    use std::arch::x86_64::__cpuid;
    // cpuid exists on every x86_64 CPU; leaves above the maximum return zeros.
    let (vendor, signature, brand) = {
        let l0 = __cpuid(0);
        let mut vendor = Vec::new();
        for r in [l0.ebx, l0.edx, l0.ecx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        let l1 = __cpuid(1);
        let mut brand = Vec::new();
        if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                let r = __cpuid(leaf);
                for v in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        (vendor, l1.eax, brand)
    };
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_matches(char::from(0))
            .trim()
            .to_string()
    };
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    let model = ((signature >> 4) & 0xf) | ((signature >> 12) & 0xf0);
    let mut features = Vec::new();
    macro_rules! feat {
        ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { features.push($f); } )* };
    }
    feat!(
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi1",
        "bmi2",
        "lzcnt",
        "movbe",
        "aes",
        "pclmulqdq",
        "sha",
        "adx",
        "rdrand",
        "rdseed",
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avx512fp16",
        "avx512ifma",
        "avx512vbmi",
        "avx512vbmi2",
        "avx512bitalg",
        "avx512vpopcntdq",
        "gfni",
        "vaes",
        "vpclmulqdq",
        "avxvnni",
        "xsave",
        "xsaveopt",
        "xsavec"
    );
    format!(
        "{} family {family} model {model} ({}) {}",
        text(&vendor),
        text(&brand),
        features.join(",")
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_cpu() -> String {
    // Elsewhere, the first processor block of /proc/cpuinfo minus what changes at run
    // time (frequencies, bogomips) identifies the core and its features.
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let keep = [
        "model name",
        "Features",
        "flags",
        "CPU implementer",
        "CPU architecture",
        "CPU variant",
        "CPU part",
        "isa",
        "uarch",
        "cpu model",
        "cpu",
    ];
    let mut out = vec![std::env::consts::ARCH.to_string()];
    for line in info.lines() {
        if line.trim().is_empty() && out.len() > 1 {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if keep.contains(&k.trim()) {
                out.push(format!("{}={}", k.trim(), v.trim()));
            }
        }
    }
    out.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_flags_want_the_cpu() {
        let f = |v: &[&str]| wants_host_cpu(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(f(&["-O2", "-march=native"]));
        assert!(f(&["-mcpu=native"]));
        assert!(f(&["-mtune=native"]));
        assert!(f(&["--machine-arch=native"]));
        assert!(!f(&["-march=x86-64-v3"]));
        assert!(!f(&["-O2"]));
    }

    #[test]
    fn host_cpu_is_stable_and_specific() {
        assert_eq!(host_cpu(), detect_cpu());
        assert!(host_cpu().len() > 8, "{}", host_cpu());
    }

    #[test]
    fn outputs_and_sources_go_before_the_link_libraries() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_args(&f(&["-O3", "-shared", "-lm"]), "lib.so", "source.c"),
            f(&["-O3", "-shared", "-o", "lib.so", "source.c", "-lm"])
        );
        assert_eq!(
            command_args(&f(&["-O3"]), "lib.so", "s.c"),
            f(&["-O3", "-o", "lib.so", "s.c"])
        );
        assert_eq!(command_args(&[], "o", "s"), f(&["-o", "o", "s"]));
    }

    #[test]
    fn search_lists_are_read_from_the_verbose_log() {
        let log = "ignoring nonexistent directory \"/usr/local/include/x86_64-linux-gnu\"\n#include \"...\" search starts here:\n#include <...> search starts here:\n /usr/lib/gcc/x86_64-linux-gnu/12/include\n /usr/local/include\n /usr/include\nEnd of search list.\n";
        assert_eq!(
            parse_search_dirs(log),
            [
                "/usr/lib/gcc/x86_64-linux-gnu/12/include",
                "/usr/local/include",
                "/usr/include"
            ]
            .map(PathBuf::from)
        );
        // The real compiler says where stdio.h comes from.
        let cc = find_in_path(Path::new("cc")).unwrap();
        assert!(
            search_dirs(&cc, Language::C)
                .iter()
                .any(|d| d.join("stdio.h").exists()),
            "{:?}",
            search_dirs(&cc, Language::C)
        );
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        assert_eq!(
            shell_line(Path::new("/usr/bin/cc"), ["-O2", "-DX=a b", "it's"]),
            "/usr/bin/cc -O2 '-DX=a b' 'it'\\''s'"
        );
    }
}
