//! The `xcache` command: a thin clap layer over `xcache::ops` and the library.
//!
//! Exit status: 0 on success, 1 on failure, 2 on bad usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use xcache::ops::{self, human};
use xcache::{Config, Jit, SourceRequest, Store, TemplateRequest};

mod show;

/// Compile cache and JIT runtime for generated C and CUDA.
///
/// With no command, prints the current compiledir (as `theano-cache` does).
#[derive(Parser, Debug)]
#[command(name = "xcache", version, about, long_about = None)]
struct Cli {
    /// Base dir to use instead of $XCACHE_DIR / the config / ~/.cache/xcache.
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the base dir that holds every compiledir.
    Basecompiledir,
    /// Compile a C or C++ source, or a template with parameters, through the cache and
    /// print the shared object's path.
    Compile {
        /// The source file (.c for C; .cc, .cpp, .cxx for C++).
        #[arg(required_unless_present = "template", conflicts_with = "template")]
        source: Option<PathBuf>,
        /// Compile this op template instead of a file (see `xcache templates`).
        #[arg(long, short = 't', value_name = "NAME")]
        template: Option<String>,
        /// A template parameter (repeatable).
        #[arg(
            long = "param",
            short = 'p',
            value_name = "KEY=VALUE",
            requires = "template"
        )]
        params: Vec<String>,
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
        /// Print a JSON object instead of the path.
        #[arg(long)]
        json: bool,
    },
    /// List the entries of the current compiledir.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// List the op templates with their parameters, types and entry points.
    Templates {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Run the seed workload: Theano's check1 (exp over 10*30*768 float32 values,
    /// 1000 times) through the JIT, on the default cache dir.
    Demo {
        /// How many times to run the kernel.
        #[arg(long, default_value_t = 1000)]
        iters: usize,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// What `xcache compile` reports, loaded or not.
struct CompileReport {
    key: xcache::Key,
    path: PathBuf,
    hit: bool,
    compile_ms: u64,
    elapsed: std::time::Duration,
    lock_wait: std::time::Duration,
    compiler_output: String,
    warnings: Vec<String>,
    loaded: bool,
}

fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let top = e.to_string();
            eprintln!("xcache: error: {top}");
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !top.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn config(cli: &Cli) -> Result<Config> {
    let mut c = Config::load()?;
    if let Some(d) = &cli.dir {
        c.set_base_dir(d);
    }
    Ok(c)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        None => {
            let store = Store::open(&config(&cli)?)?;
            writeln!(out, "{}", store.compiledir().display())?;
        }
        Some(Command::Basecompiledir) => {
            writeln!(out, "{}", config(&cli)?.base_dir()?.display())?;
        }
        Some(Command::Compile {
            source,
            template,
            params,
            flags,
            includes,
            symbols,
            json,
        }) => {
            let jit = Jit::new(config(&cli)?)?;
            let req = match (source, template) {
                (Some(source), _) => {
                    let mut req = SourceRequest::from_file(source)?;
                    req.flags = flags.clone();
                    for h in includes {
                        let name = h
                            .file_name()
                            .with_context(|| format!("{} has no file name", h.display()))?
                            .to_string_lossy()
                            .into_owned();
                        let bytes =
                            std::fs::read(h).with_context(|| format!("reading {}", h.display()))?;
                        req = req.extra_input(name, bytes);
                    }
                    req
                }
                (None, Some(name)) => {
                    let mut t = TemplateRequest::new(name);
                    for kv in params {
                        let (k, v) = kv.split_once('=').with_context(|| {
                            format!("template parameter {kv:?} is not KEY=VALUE")
                        })?;
                        t = t.param(k.trim(), v);
                    }
                    t.flags = flags.clone();
                    jit.render(&t)?
                }
                (None, None) => unreachable!("clap requires a source or a template"),
            };
            let report = if symbols.is_empty() {
                let r = jit.build(&req)?;
                CompileReport {
                    key: r.key,
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
                    warnings: r.warnings,
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
                    path: c.path,
                    hit: c.hit,
                    compile_ms: c.compile_ms,
                    elapsed: c.elapsed,
                    lock_wait: c.lock_wait,
                    compiler_output: c.compiler_output,
                    warnings: c.warnings,
                    loaded: true,
                }
            };
            // Repaired cache faults were already logged as warnings by the library;
            // compiler warnings are shown when the compiler ran, as a compiler would.
            if !report.compiler_output.trim().is_empty() {
                eprint!("{}", report.compiler_output);
            }
            if *json {
                let v = json!({
                    "key": report.key.hex(),
                    "path": report.path,
                    "hit": report.hit,
                    "compile_ms": report.compile_ms,
                    "elapsed_ms": report.elapsed.as_secs_f64() * 1e3,
                    "lock_wait_ms": report.lock_wait.as_secs_f64() * 1e3,
                    "source": req.name,
                    "loaded": report.loaded,
                    "compiledir": jit.store().compiledir(),
                    "warnings": report.warnings,
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}", report.path.display())?;
            }
        }
        Some(Command::Templates { json }) => {
            let templates = xcache::compile::template::all(&config(&cli)?)?;
            show::templates(&mut out, &templates, *json)?;
        }
        Some(Command::Demo { iters, json }) => {
            let jit = Jit::new(config(&cli)?)?;
            let report = ops::demo::check1(&jit, *iters)?;
            show::demo(&mut out, &report, *json)?;
            if !report.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Some(Command::List { json }) => {
            let store = Store::open(&config(&cli)?)?;
            let rows = ops::list::list(&store)?;
            if *json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else if rows.is_empty() {
                writeln!(out, "no entries in {}", store.compiledir().display())?;
            } else {
                let now = xcache::clock::unix_secs(store.clock().now());
                let total: u64 = rows.iter().map(|r| r.size).sum();
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.key[..12].to_string(),
                            if r.status == "ok" {
                                r.source.clone()
                            } else {
                                r.status.clone()
                            },
                            r.language.clone(),
                            human::size(r.size),
                            human::age(r.created, now),
                            r.last_use
                                .map(|t| human::age(t, now))
                                .unwrap_or_else(|| "-".into()),
                            human::duration(std::time::Duration::from_millis(r.compile_ms)),
                        ]
                    })
                    .collect();
                let t = human::table(
                    &[
                        "KEY", "SOURCE", "LANG", "SIZE", "CREATED", "LAST USE", "COMPILE",
                    ],
                    &cells,
                    &[3, 6],
                );
                write!(out, "{t}")?;
                writeln!(
                    out,
                    "{} entries, {} in {}",
                    rows.len(),
                    human::size(total),
                    store.compiledir().display()
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr at the level named by XCACHE_LOG (error, warn, info, debug, trace;
/// default warn).
fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let level = match r.level() {
                    log::Level::Error => "error",
                    log::Level::Warn => "warning",
                    log::Level::Info => "info",
                    log::Level::Debug => "debug",
                    log::Level::Trace => "trace",
                };
                eprintln!("xcache: {level}: {}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = match std::env::var("XCACHE_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
