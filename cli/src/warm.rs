//! `xcache warm MANIFEST`: parallel compiles with a progress bar (plain lines when
//! stderr is not a terminal), then a summary.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

use super::human;
use xcache::ops::warm::{self, WarmItem};
use xcache::{CacheOutcome, Config, Jit};

/// Arguments of `xcache warm`.
#[derive(clap::Args, Debug)]
pub struct WarmArgs {
    /// The manifest: JSON, `{"requests": [{"template": ..., "params": {...}} | {"source": ..., "flags": [...]}]}`.
    manifest: PathBuf,
    /// Compiles in flight at once (default: the number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Run the manifest's Python entry points (`{"python": "module:function"}`: code
    /// that builds kernels through the integrations) after its compiles, with the
    /// interpreter $XCACHE_PYTHON (default python3). Without it, a manifest that names
    /// one is refused: a manifest is data, and this runs code.
    #[arg(long)]
    allow_python: bool,
    /// For CUDA templates: build for this GPU arch (`sm_90`; repeatable: CI without a
    /// GPU warms the cubins of each of the fleet's GPUs). Default: the `cuda_arch`
    /// setting, else the local GPU's.
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    arch: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// An arch, as the `cuda_arch` setting takes it.
fn parse_arch(s: &str) -> std::result::Result<String, String> {
    xcache::platform::check_cuda_arch(s).map(|()| s.to_string())
}

/// Runs `xcache warm`.
pub fn run(out: &mut impl Write, config: Config, args: &WarmArgs) -> Result<ExitCode> {
    let items = warm::load_manifest(&args.manifest, &config)?;
    let entries = warm::python_entries(&args.manifest)?;
    if let (Some(e), false) = (entries.first(), args.allow_python) {
        anyhow::bail!(xcache::Error::InvalidRequest(format!(
            "{} requests[{}] names a Python entry point ({}:{}), which runs code. Fix: pass --allow-python if you trust the manifest",
            args.manifest.display(),
            e.index,
            e.module,
            e.function
        )));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // One pass per arch asked for (CUDA templates are built for each; the rest hit
    // after the first pass).
    let configs: Vec<Config> = if args.arch.is_empty() {
        vec![config]
    } else {
        args.arch
            .iter()
            .map(|a| {
                let mut c = config.clone();
                c.cuda_arch = Some(a.clone());
                c
            })
            .collect()
    };
    let jits = configs
        .into_iter()
        .map(Jit::new)
        .collect::<xcache::Result<Vec<Jit>>>()?;
    let jit = &jits[0];
    let total = items.len() * jits.len();
    let done = AtomicUsize::new(0);
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {wide_msg}")
                .expect("valid template"),
        );
        b
    });
    let progress = |item: &WarmItem, r: &xcache::Result<CacheOutcome>| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        let what = match r {
            Ok(o) if o.hit => "hit".to_string(),
            Ok(o) => format!("compiled in {} ms", o.meta.compile_ms),
            Err(_) => "FAILED".to_string(),
        };
        let label = human::terminal_safe(&item.label);
        match &bar {
            Some(b) => {
                b.set_message(format!("{label}: {what}"));
                b.inc(1);
            }
            None => eprintln!("[{n}/{total}] {label}: {what}"),
        }
    };
    let mut report = warm::warm(jit, &items, jobs, &progress);
    for more in &jits[1..] {
        let r = warm::warm(more, &items, jobs, &progress);
        report.requests += r.requests;
        report.hits += r.hits;
        report.compiled += r.compiled;
        report.failed.extend(r.failed);
        report.elapsed_s += r.elapsed_s;
        report.compile_s += r.compile_s;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // The Python entry points, one after another, after the compiles.
    let python =
        std::env::var_os("XCACHE_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    for e in &entries {
        let r = warm::run_python_entry(
            e,
            &python,
            jit.store().base_dir(),
            jit.config().compile_timeout,
        );
        let (what, failed) = match &r {
            Ok(t) => (format!("ran in {:.2} s", t.as_secs_f64()), None),
            Err(why) => ("FAILED".to_string(), Some(why.clone())),
        };
        eprintln!("{}: {what}", human::terminal_safe(&e.label()));
        report.python_entries += 1;
        report.requests += 1;
        if let Some(error) = failed {
            report.failed.push(warm::WarmFailure {
                label: e.label(),
                error,
            });
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        for f in &report.failed {
            writeln!(out, "failed: {}\n{}\n", f.label, f.error)?;
        }
        writeln!(
            out,
            "{}: {}, {} compiled, {} failed in {:.2} s ({:.2} s in the compiler, {})",
            human::count(report.requests as u64, "request", "requests"),
            human::count(report.hits as u64, "hit", "hits"),
            report.compiled,
            report.failed.len(),
            report.elapsed_s,
            report.compile_s,
            human::count(jobs as u64, "job", "jobs"),
        )?;
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
