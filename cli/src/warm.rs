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
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `xcache warm`.
pub fn run(out: &mut impl Write, config: Config, args: &WarmArgs) -> Result<ExitCode> {
    let items = warm::load_manifest(&args.manifest, &config)?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let jit = Jit::new(config)?;
    let total = items.len();
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
    let report = warm::warm(&jit, &items, jobs, &progress);
    if let Some(b) = bar {
        b.finish_and_clear();
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
