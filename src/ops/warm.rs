//! `xcache warm MANIFEST`: compile a list of requests in parallel, so that CI jobs (or
//! a fresh machine) start with a warm cache.
//!
//! A manifest is JSON: an object with a `requests` array (or the array itself). Each
//! request is either a template instance or a source file:
//!
//! ```json
//! {"requests": [
//!   {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "exp(a)"}},
//!   {"source": "kernels/saxpy.c", "flags": ["-O2"], "include": ["kernels/defs.h"]}
//! ]}
//! ```
//!
//! Paths are relative to the manifest's directory and may not leave it (no absolute
//! paths, no `..`): a manifest handed around between machines must not read files
//! outside its own tree. What it names is read as a file someone else named
//! ([`crate::fsx::read_named_file`]): a regular file of at most [`MAX_LISTED_FILE`],
//! opened without blocking, so that a FIFO or a device listed as a source or an include
//! is an error naming it, not a hang.
//!
//! A manifest is data, not instructions: its `flags` pass by an allow-list
//! ([`crate::compile::flags::check_data_flags`]: optimisation, code generation and
//! warning flags, macros, the language standard, debug info, plain library names, and
//! include directories inside the manifest's tree), never a deny-list, which could not
//! be complete. Anything else is refused, naming the flag and the `allowed_flags`
//! setting, with which the user vouches for flags of their own.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::compile::flags::Dialect;
use crate::compile::{named_file_refusal, Language, Request, SourceRequest, TemplateRequest};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsx::{read_named_file, Bounds};
use crate::runtime::{CacheOutcome, Jit};

/// Largest source or include a manifest may name: far beyond any kernel's source, and
/// a bound on what a manifest from elsewhere can make `warm` read into memory.
pub const MAX_LISTED_FILE: u64 = 64 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestRequest {
    template: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    source: Option<String>,
    /// `module:function`: a Python entry point that builds kernels itself (through the
    /// integrations: Numba, Triton, CuPy), run only with `--allow-python`.
    python: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
}

/// A request of the manifest, with a label for progress and errors.
#[derive(Debug, Clone)]
pub struct WarmItem {
    /// `template elemwise(dtype=…)` or the source path.
    pub label: String,
    /// What to compile.
    pub request: Request,
}

/// `rel` below the manifest's directory `base`, or why not (the caller names the
/// manifest and the request).
fn inside(base: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let p = Path::new(rel);
    let refuse = || {
        format!(
            "path {rel:?} must be relative to the manifest's directory and stay inside it (no absolute paths, no `..`, no symbolic links out of it)"
        )
    };
    let escapes = p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if escapes || rel.is_empty() {
        return Err(refuse());
    }
    // Symbolic links are followed, then the result must still be inside.
    let root = base
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", base.display()))?;
    let full = base.join(p);
    let real = full
        .canonicalize()
        .map_err(|e| format!("{rel:?} ({}): {e}", full.display()))?;
    if !real.starts_with(&root) {
        return Err(refuse());
    }
    Ok(real)
}

/// The manifest's flags for a request compiled by `dialect`, through the library's
/// allow-list for flags from data ([`crate::compile::flags::check_data_flags`]): include
/// directories inside the manifest's tree (made absolute), the documented families,
/// and what `allowed_flags` vouches for. A refusal names the flag, the manifest and
/// the request.
fn data_flags(
    flags: &[String],
    dialect: Dialect,
    (manifest, i): (&Path, usize),
    config: &Config,
) -> Result<Vec<String>> {
    crate::compile::flags::check_data_flags(
        flags,
        dialect,
        manifest_dir(manifest),
        &config.allowed_flags,
    )
    .map_err(|r| Error::RefusedFlag {
        flag: r.flag,
        reason: format!("{} (in {} requests[{i}])", r.reason, manifest.display()),
        fix: r.fix,
    })
}

const MANIFEST_SHAPE: &str = "Expected {\"requests\": [{\"template\": NAME, \"params\": {...}} or {\"source\": PATH, \"include\": [...], \"flags\": [...]}]}, or the array alone";

/// The manifest's requests, each still JSON: read one by one, so that an error names
/// the request it is in (an untagged enum would only say that nothing matched).
fn manifest_requests(path: &Path, text: &str) -> Result<Vec<serde_json::Value>> {
    let bad = |m: String| {
        Error::InvalidRequest(format!(
            "{} is not a valid manifest: {m}. {MANIFEST_SHAPE}",
            path.display()
        ))
    };
    match serde_json::from_str(text).map_err(|e| bad(e.to_string()))? {
        serde_json::Value::Array(list) => Ok(list),
        serde_json::Value::Object(mut top) => {
            let requests = top
                .remove("requests")
                .ok_or_else(|| bad("it has no `requests`".into()))?;
            if let Some(other) = top.keys().next() {
                return Err(bad(format!(
                    "unknown field `{other}` at the top (only `requests` is known)"
                )));
            }
            match requests {
                serde_json::Value::Array(list) => Ok(list),
                other => Err(bad(format!("`requests` must be an array, not {other}"))),
            }
        }
        other => Err(bad(format!(
            "it must be an object or an array, not {other}"
        ))),
    }
}

/// The directory that paths in the manifest are relative to: a manifest named without
/// a directory (`warm.json`) has an empty parent, which is the current directory.
fn manifest_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Reads a manifest into requests. Every problem names the manifest and the request
/// (`requests[3]`, counted from 0 as in the JSON), and the field when it is about one.
/// Flags pass by the allow-list for data (see the module doc), with `config`'s
/// `allowed_flags`; a template's language (from `config`'s template path) says whose
/// flags they are.
pub fn load_manifest(path: &Path, config: &Config) -> Result<Vec<WarmItem>> {
    let text = std::fs::read_to_string(path).ctx("reading", path)?;
    let base = manifest_dir(path);
    let mut out = Vec::new();
    for (i, value) in manifest_requests(path, &text)?.into_iter().enumerate() {
        let at =
            |m: String| Error::InvalidRequest(format!("{} requests[{i}]: {m}", path.display()));
        // serde names the field: "unknown field `sorce`, expected one of `template`, ...".
        let r: ManifestRequest = serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
        if r.python.is_some() {
            if r.template.is_some() || r.source.is_some() {
                return Err(at(
                    "give exactly one of `template`, `source` and `python`".into()
                ));
            }
            continue; // read by `python_entries`
        }
        let item = match (r.template, r.source) {
            (Some(name), None) => {
                if !r.include.is_empty() {
                    return Err(at("`include` is for source requests".into()));
                }
                let mut t = TemplateRequest::new(name);
                for (k, v) in r.params {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(at(format!(
                                "parameter `{k}` must be a string, number or bool, not {other}"
                            )))
                        }
                    };
                    t = t.param(k, v);
                }
                // An unknown template fails when it is built, as a failed request; its
                // flags are then checked as the C compiler's, the strictest reading.
                let language = crate::compile::template::find(&t.name, config)
                    .map_or(Language::C, |found| found.language);
                t.flags = data_flags(&r.flags, Dialect::of(language), (path, i), config)?;
                let ps: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                WarmItem {
                    label: format!("{}({})", t.name, ps.join(", ")),
                    request: Request::Template(t),
                }
            }
            (None, Some(src)) => {
                if !r.params.is_empty() {
                    return Err(at("`params` are for template requests".into()));
                }
                let file = inside(base, &src).map_err(at)?;
                let mut s = SourceRequest::from_named_file(&file, Bounds::size(MAX_LISTED_FILE))
                    .map_err(|e| at(e.to_string()))?;
                s.flags = data_flags(&r.flags, Dialect::of(s.language), (path, i), config)?;
                for h in &r.include {
                    let hp = inside(base, h).map_err(at)?;
                    let name = hp
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let bytes = read_named_file(&hp, Bounds::size(MAX_LISTED_FILE))
                        .map_err(|e| at(format!("include {h:?}: {}", named_file_refusal(e))))?;
                    s = s.extra_input(name, bytes);
                }
                WarmItem {
                    label: src,
                    request: Request::Source(s),
                }
            }
            _ => {
                return Err(at(
                    "give exactly one of `template`, `source` and `python`".into()
                ))
            }
        };
        out.push(item);
    }
    Ok(out)
}

/// A Python entry point of a manifest (`{"python": "module:function"}`): a function
/// that builds kernels through the integrations (Numba, Triton, CuPy), run by `warm
/// --allow-python` in a Python process with the cache's settings, from the manifest's
/// directory (where the module is imported from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PythonEntry {
    /// `requests[i]` of the manifest.
    pub index: usize,
    /// The module to import.
    pub module: String,
    /// The function to call, without arguments.
    pub function: String,
    /// The directory it runs in.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl PythonEntry {
    /// `module:function`.
    pub fn label(&self) -> String {
        format!("python {}:{}", self.module, self.function)
    }
}

/// The Python entry points of a manifest, checked: dotted module names and a function
/// name of identifiers only (they are passed to Python as data, never as code).
pub fn python_entries(path: &Path) -> Result<Vec<PythonEntry>> {
    let text = std::fs::read_to_string(path).ctx("reading", path)?;
    let mut out = Vec::new();
    for (i, value) in manifest_requests(path, &text)?.into_iter().enumerate() {
        let at =
            |m: String| Error::InvalidRequest(format!("{} requests[{i}]: {m}", path.display()));
        let r: ManifestRequest = serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
        let Some(entry) = r.python else { continue };
        let ident = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let (module, function) = entry.split_once(':').unwrap_or((&entry, ""));
        if !module.split('.').all(ident) || !ident(function) {
            return Err(at(format!(
                "`python` {entry:?}: expected module:function (a dotted module name and a function name, such as kernels.warm:build)"
            )));
        }
        out.push(PythonEntry {
            index: i,
            module: module.into(),
            function: function.into(),
            dir: manifest_dir(path).to_path_buf(),
        });
    }
    Ok(out)
}

/// Runs a Python entry point with `python` (an interpreter), in its directory, with
/// `XCACHE_DIR` set to the cache's base dir (the other settings come from the
/// environment, as for any process), killed after `timeout`. `Err` says why it failed,
/// with what it printed.
pub fn run_python_entry(
    entry: &PythonEntry,
    python: &Path,
    base_dir: &Path,
    timeout: Duration,
) -> std::result::Result<Duration, String> {
    use std::io::Read;
    let start = Instant::now();
    let script = "import importlib, sys\nm = importlib.import_module(sys.argv[1])\ngetattr(m, sys.argv[2])()\n";
    let mut cmd = std::process::Command::new(python);
    crate::compile::host::dies_with_xcache(&mut cmd);
    let mut child = cmd
        .args(["-c", script, &entry.module, &entry.function])
        .current_dir(&entry.dir)
        .env("XCACHE_DIR", base_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    let mut err_pipe = child.stderr.take().expect("piped");
    let mut out_pipe = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        let mut more = String::new();
        let _ = out_pipe.read_to_string(&mut more);
        text + &more
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed = reader.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(start.elapsed()),
        Some(st) => Err(format!("it exited with {st}:\n{}", printed.trim_end())),
        None => Err(format!(
            "it ran longer than compile_timeout ({}) and was killed:\n{}",
            crate::config::format_duration(timeout),
            printed.trim_end()
        )),
    }
}

/// One failed request.
#[derive(Debug, Clone, Serialize)]
pub struct WarmFailure {
    /// The request's label.
    pub label: String,
    /// The error, with the compiler's diagnostics.
    pub error: String,
}

/// The summary. `xcache warm --json` prints this.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WarmReport {
    /// Requests in the manifest.
    pub requests: usize,
    /// Already in the cache.
    pub hits: usize,
    /// Compiled now.
    pub compiled: usize,
    /// Failed.
    pub failed: Vec<WarmFailure>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Time the compiler ran, summed over the compiles, seconds.
    pub compile_s: f64,
    /// Python entry points run (`--allow-python`); their failures are in `failed`.
    pub python_entries: usize,
}

/// Compiles every item, at most `jobs` at a time. `progress` is called after each
/// request finishes, from the worker that ran it.
pub fn warm(
    jit: &Jit,
    items: &[WarmItem],
    jobs: usize,
    progress: &(dyn Fn(&WarmItem, &Result<CacheOutcome>) + Sync),
) -> WarmReport {
    let start = Instant::now();
    let reqs: Vec<Request> = items.iter().map(|i| i.request.clone()).collect();
    let results = jit.build_many_with(&reqs, jobs, &|i, r| progress(&items[i], r));
    let mut report = WarmReport {
        requests: items.len(),
        ..WarmReport::default()
    };
    let mut compile = Duration::ZERO;
    for (item, r) in items.iter().zip(results) {
        match r {
            Ok(o) if o.hit => report.hits += 1,
            Ok(o) => {
                report.compiled += 1;
                compile += Duration::from_millis(o.meta.compile_ms);
            }
            Err(e) => report.failed.push(WarmFailure {
                label: item.label.clone(),
                error: e.to_string(),
            }),
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.compile_s = compile.as_secs_f64();
    report
}
