//! `xcache compile`: a source file or a template instance through the cache.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use xcache::{Config, Jit, SourceRequest, TemplateRequest};

/// Arguments of `xcache compile`.
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The source file (.c for C; .cc, .cpp, .cxx for C++; .cu for CUDA, or any name
    /// with --cuda).
    #[arg(required_unless_present = "template", conflicts_with = "template")]
    source: Option<PathBuf>,
    /// Compile this op template instead of a file (see `xcache templates`).
    #[arg(long, short = 't', value_name = "NAME", value_parser = TemplateName, hide_possible_values = true)]
    template: Option<String>,
    /// A template parameter (repeatable).
    #[arg(
        long = "param",
        short = 'p',
        value_name = "KEY=VALUE",
        requires = "template",
        value_parser = parse_kv
    )]
    params: Vec<(String, String)>,
    /// A compiler flag, appended after xcache's own (repeatable).
    #[arg(
        long = "flag",
        short = 'f',
        value_name = "FLAG",
        allow_hyphen_values = true
    )]
    flags: Vec<String>,
    /// A header the source includes, made part of the key and copied beside it
    /// (repeatable).
    #[arg(
        long = "include",
        short = 'i',
        value_name = "HEADER",
        conflicts_with = "template"
    )]
    includes: Vec<PathBuf>,
    /// Load the result and check that it exports SYMBOL (repeatable).
    #[arg(long = "symbol", short = 's', value_name = "SYMBOL")]
    symbols: Vec<String>,
    /// Place a private copy of the library at FILE (a reflink where the file system has
    /// them, else a copy, never a hard link; atomically) and print FILE: the caller owns
    /// it, and no cache cleanup ever removes it. Without --out, the printed path is the cache's own, valid for
    /// handout_grace (60s by default) against clear, prune and purge.
    #[arg(long, value_name = "FILE", conflicts_with = "symbols")]
    out: Option<PathBuf>,
    /// Say on stderr whether the request hits, and for a miss why: the header that
    /// changed since the last build of this request (old and new hash), or what differs
    /// from the closest earlier build of a source of the same name (flags, compiler,
    /// source, target, runtime tag). With --json, also as "explain".
    #[arg(long)]
    explain: bool,
    /// For CUDA: the GPU arch to build for (`sm_90`, `sm_80`, `sm_90a`; `compute_90`
    /// for PTX), when it is not the local GPU's (a CI machine without one, warming for
    /// the fleet's): the `cuda_arch` setting for this request.
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    arch: Option<String>,
    /// For CUDA: what to build. `cubin` (or `ptx`): device code alone, by NVRTC, what
    /// xcache's GPU handles load (the default for `-t cuda/…` templates); `so`: a
    /// shared object by nvcc, host code included (the default for a .cu file).
    #[arg(long, value_name = "KIND", value_parser = ["cubin", "ptx", "so"])]
    emit: Option<String>,
    /// Compile SOURCE as CUDA whatever its name (as `nvcc -x cu`): device code by
    /// NVRTC with --emit cubin or ptx, a shared object by nvcc with --emit so (the
    /// default).
    #[arg(long, conflicts_with = "template")]
    cuda: bool,
    /// Print a JSON object instead of the path.
    #[arg(long)]
    pub json: bool,
    /// Compiler flags, everything after `--`, as a compiler's command line takes them
    /// (`-- -Iinc -DN=4 -O2`), after the --flag ones. Relative search paths (-I,
    /// -isystem, -iquote, -idirafter, -include, -imacros, -L), here and in --flag, are
    /// resolved against the current directory.
    #[arg(last = true, value_name = "COMPILER_FLAGS")]
    compiler_flags: Vec<String>,
}

/// An arch, as the `cuda_arch` setting takes it.
fn parse_arch(s: &str) -> std::result::Result<String, String> {
    xcache::platform::check_cuda_arch(s).map(|()| s.to_string())
}

impl CompileArgs {
    /// The arguments of the commonest call, `xcache compile FILE [--json]` (what scripts
    /// run on every request), recognised without building the whole command tree: the
    /// hit path of a fresh process then pays for none of it. `None` for anything else
    /// (clap then parses, and words any error, as always).
    pub fn plain(args: &[std::ffi::OsString]) -> Option<CompileArgs> {
        let (json, file) = match args {
            [verb, file] if verb == "compile" => (false, file),
            [verb, file, j] | [verb, j, file] if verb == "compile" && j == "--json" => (true, file),
            _ => return None,
        };
        // A leading '-' is an option (or a typo): clap's business.
        if file.is_empty() || file.as_encoded_bytes().starts_with(b"-") {
            return None;
        }
        Some(CompileArgs {
            source: Some(PathBuf::from(file)),
            template: None,
            params: Vec::new(),
            flags: Vec::new(),
            includes: Vec::new(),
            symbols: Vec::new(),
            out: None,
            explain: false,
            arch: None,
            emit: None,
            cuda: false,
            json,
            compiler_flags: Vec::new(),
        })
    }
}

/// A template name: any is accepted (`template_path` may add templates), and the
/// shipped ones are offered to shell completion.
#[derive(Clone)]
struct TemplateName;

impl clap::builder::TypedValueParser for TemplateName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        // `c/gemm.c` → `gemm` (C is the default device), `cuda/gemm.cu` → `cuda/gemm`.
        let names = xcache::compile::template::EMBEDDED.iter().map(|(rel, _)| {
            let stem = rel.rsplit_once('.').map_or(*rel, |(s, _)| s);
            stem.strip_prefix("c/").unwrap_or(stem)
        });
        Some(Box::new(names.map(clap::builder::PossibleValue::new)))
    }
}

/// `KEY=VALUE`, checked by clap so that a malformed one is bad usage (exit 2).
fn parse_kv(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("template parameter {s:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

/// What `xcache compile` reports, loaded or not.
struct CompileReport {
    key: xcache::Key,
    tier: xcache::store::remote::Tier,
    path: PathBuf,
    hit: bool,
    compile_ms: u64,
    elapsed: std::time::Duration,
    lock_wait: std::time::Duration,
    lock_waits: Vec<xcache::store::lock::LockWait>,
    compiler_output: String,
    warnings: Vec<String>,
    unrecorded: Option<String>,
    loaded: bool,
}

/// Runs `xcache compile`.
pub fn run(out: &mut impl Write, config: Config, args: &CompileArgs) -> Result<ExitCode> {
    let CompileArgs {
        source,
        template,
        params,
        flags,
        includes,
        symbols,
        out: out_file,
        explain,
        arch,
        emit,
        cuda,
        json,
        compiler_flags,
    } = args;

    let mut config = config;
    if let Some(a) = arch {
        // PTX is asked of NVRTC by a virtual arch.
        config.cuda_arch = Some(if emit.as_deref() == Some("ptx") {
            a.replacen("sm_", "compute_", 1)
        } else {
            a.clone()
        });
    }
    let jit = Jit::new(config)?;
    // The flags as the user's shell gave them, `--flag` ones first: relative search
    // paths are the user's, resolved here (the library refuses them, as it would look
    // them up in its build directory).
    let flags: Vec<String> = flags.iter().chain(compiler_flags).cloned().collect();
    let resolve = |flags: &[String], language| -> Result<Vec<String>> {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        Ok(xcache::compile::flags::absolute_search_paths(
            flags,
            xcache::compile::flags::Dialect::of(language),
            &cwd,
        ))
    };
    let mut template_req = None;
    let req = match (source, template) {
        (Some(source), _) => {
            let mut req = if *cuda {
                SourceRequest::from_file_as(source, xcache::Language::Cuda)?
            } else {
                SourceRequest::from_file(source)?
            };
            req.flags = resolve(&flags, req.language)?;
            for h in includes {
                let name = h
                    .file_name()
                    .with_context(|| format!("{} has no file name", h.display()))?
                    .to_string_lossy()
                    .into_owned();
                let bytes = std::fs::read(h).with_context(|| format!("reading {}", h.display()))?;
                req = req.extra_input(name, bytes);
            }
            req
        }
        (None, Some(name)) => {
            let mut t = TemplateRequest::new(name);
            for (k, v) in params {
                t = t.param(k, v);
            }
            t.flags = flags.clone();
            let mut rendered = jit.render(&t)?;
            if !flags.is_empty() {
                // The user's flags, with their search paths resolved as the template's
                // compiler reads them (its language is known once rendered).
                t.flags = resolve(&flags, rendered.language)?;
                rendered = jit.render(&t)?;
            }
            template_req = Some(t);
            rendered
        }
        (None, None) => unreachable!("clap requires a source or a template"),
    };
    // CUDA device code by NVRTC (a cubin, or PTX), as the GPU handles load it: the
    // default for a CUDA template under `cuda_compiler = nvrtc`, or when asked.
    let is_cuda = req.language == xcache::Language::Cuda;
    let nvrtc_default =
        template_req.is_some() && jit.config().cuda_compiler == xcache::config::CudaCompiler::Nvrtc;
    let device_code = is_cuda
        && match emit.as_deref() {
            Some("cubin") | Some("ptx") => true,
            Some(_) => false,
            None => nvrtc_default,
        };
    if emit.is_some() && !is_cuda {
        anyhow::bail!(xcache::Error::InvalidRequest(format!(
            "--emit is for CUDA sources; {} is {}",
            req.display_name(),
            req.language.name()
        )));
    }
    if device_code && !symbols.is_empty() {
        anyhow::bail!(xcache::Error::InvalidRequest(
            "--symbol loads a shared object: CUDA device code is loaded by the GPU handles. Fix: --emit so".into()
        ));
    }
    // Asked before the request is served: afterwards it would be a hit.
    let explanation = if *explain {
        let e = jit.explain(&req)?;
        let line = format!("{}: {e}", req.display_name());
        eprintln!(
            "xcache: explain: {}",
            super::human::terminal_safe_text(&line)
        );
        Some(e)
    } else {
        None
    };
    let mut valid_until = None;
    let report = if symbols.is_empty() {
        let r = match (out_file, device_code, &template_req) {
            (Some(dest), false, _) => jit.build_copy(&req, dest)?,
            (None, false, _) => jit.build(&req)?,
            (out, true, t) => {
                let mut r = match t {
                    Some(t) => jit.build_cuda_template(t)?,
                    None => jit.build_cuda_module(&req)?,
                };
                if let Some(dest) = out {
                    // A private copy, whole or not at all: written beside, renamed over.
                    let tmp = dest.with_file_name(format!(
                        ".{}.xcache-{}",
                        dest.file_name()
                            .map_or("out".into(), |n| n.to_string_lossy()),
                        std::process::id()
                    ));
                    std::fs::copy(&r.path, &tmp)
                        .and_then(|_| std::fs::rename(&tmp, dest))
                        .with_context(|| format!("copying the module to {}", dest.display()))?;
                    r.path = dest.clone();
                    r.valid_until = None;
                }
                r
            }
        };
        valid_until = r.valid_until;
        CompileReport {
            key: r.key,
            tier: r.tier,
            compile_ms: r.meta.compile_ms,
            compiler_output: if r.hit {
                String::new()
            } else {
                r.meta.compiler_output
            },
            path: r.path,
            hit: r.hit,
            elapsed: r.elapsed,
            lock_wait: r.lock_wait,
            lock_waits: r.lock_waits,
            warnings: r.warnings,
            unrecorded: r.unrecorded,
            loaded: false,
        }
    } else {
        let c = jit.compile(&req)?;
        for name in symbols {
            // SAFETY: only the address is looked up; nothing is called.
            unsafe { c.symbol::<*const std::ffi::c_void>(name)? };
        }
        CompileReport {
            key: c.key,
            tier: c.tier,
            path: c.path,
            hit: c.hit,
            compile_ms: c.compile_ms,
            elapsed: c.elapsed,
            lock_wait: c.lock_wait,
            lock_waits: c.lock_waits.clone(),
            compiler_output: c.compiler_output,
            warnings: c.warnings,
            unrecorded: c.unrecorded.clone(),
            loaded: true,
        }
    };
    // What the request waited for, after the explanation given before it.
    if *explain {
        for w in &report.lock_waits {
            eprintln!(
                "xcache: explain: waited {:.1} s for the lock {} (held by {})",
                w.waited_ms as f64 / 1e3,
                w.lock.display(),
                super::human::terminal_safe_text(&w.holder)
            );
        }
    }
    // Repaired cache faults were already logged as warnings by the library;
    // compiler warnings are shown when the compiler ran, as a compiler would.
    if !report.compiler_output.trim().is_empty() {
        eprint!(
            "{}",
            super::human::terminal_safe_text(&report.compiler_output)
        );
    }
    if *json {
        let mut v = json!({
            "key": report.key.hex(),
            "path": report.path,
            "hit": report.hit,
            "tier": report.tier,
            "compile_ms": report.compile_ms,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
            "lock_wait_ms": report.lock_wait.as_secs_f64() * 1e3,
            "lock_waits": report.lock_waits,
            "source": req.name,
            "loaded": report.loaded,
            "compiledir": jit.store().compiledir(),
            "warnings": report.warnings,
            "valid_until": valid_until.map(xcache::clock::unix_secs),
            "private_copy": out_file.is_some(),
            "unrecorded": report.unrecorded,
        });
        if let Some(e) = explanation {
            v["explain"] = serde_json::to_value(e)?;
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", report.path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(Into::into).collect()
    }

    /// Only the plainest calls skip clap; everything else is parsed (and checked) by it.
    #[test]
    fn plain_calls_are_recognised_and_nothing_else() {
        let a = CompileArgs::plain(&os(&["compile", "k.c"])).unwrap();
        assert_eq!(
            (a.source.as_deref(), a.json),
            (Some(std::path::Path::new("k.c")), false)
        );
        for v in [["compile", "k.c", "--json"], ["compile", "--json", "k.c"]] {
            let a = CompileArgs::plain(&os(&v)).unwrap();
            assert_eq!(
                (a.source.as_deref(), a.json),
                (Some(std::path::Path::new("k.c")), true)
            );
        }
        for v in [
            &["compile"][..],
            &["compile", "-t", "elemwise"],
            &["compile", "--json"],
            &["compile", "-k.c"],
            &["compile", "k.c", "--explain"],
            &["compile", "k.c", "-f", "-O2"],
            &["compile", "a.c", "b.c"],
            &["list", "k.c"],
            &["--dir", "/x", "compile", "k.c"],
        ] {
            assert!(CompileArgs::plain(&os(v)).is_none(), "{v:?}");
        }
        // Whatever clap would make of it, the plain form means the same. (`super::super`:
        // the command's root is the crate in the binary, `command` in the library.)
        let parsed = <super::super::Cli as clap::Parser>::try_parse_from([
            "xcache", "compile", "k.c", "--json",
        ])
        .unwrap();
        let Some(super::super::Command::Compile(c)) = parsed.command else {
            panic!()
        };
        let plain = CompileArgs::plain(&os(&["compile", "k.c", "--json"])).unwrap();
        assert_eq!(format!("{c:?}"), format!("{plain:?}"));
    }
}
