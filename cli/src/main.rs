//! The `xcache` command: a thin clap layer over `xcache::ops` and the library. Each
//! verb's logic lives in the library module of the same name (`xcache::ops::prune`
//! for `xcache prune`); this crate parses arguments and prints.
//!
//! Exit status: 0 on success, 1 on failure, 2 on bad usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;
use xcache::ops;
use xcache::{Config, Jit, Store};

mod compile;
mod human;
mod progress;
mod show;
mod warm;

/// Compile cache and JIT runtime for generated C and CUDA.
///
/// With no command, prints the current compiledir (as `theano-cache` does). ccache's
/// and sccache's habits work too: `xcache -s` (--show-stats), `-z` (--zero-stats),
/// `-M SIZE` (--max-size), `-C` (--clear), in the order given.
#[derive(Parser, Debug)]
#[command(name = "xcache", version, about, long_about = None)]
pub struct Cli {
    /// Base dir to use instead of $XCACHE_DIR / the config / ~/.cache/xcache.
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Show the statistics and the size against max_size (ccache's -s, sccache's
    /// --show-stats): `xcache stats`.
    #[arg(short = 's', long = "show-stats")]
    show_stats: bool,

    /// Reset the statistics (ccache's -z, sccache's --zero-stats): `xcache stats --zero`.
    #[arg(short = 'z', long = "zero-stats")]
    zero_stats: bool,

    /// Set max_size in the config file (ccache's -M SIZE; 0: no limit): `xcache config set
    /// max_size SIZE`. SIZE needs a unit: 5GiB, 500MiB, 5G (powers of 1000, as ccache).
    #[arg(short = 'M', long = "max-size", value_name = "SIZE")]
    max_size: Option<String>,

    /// Clear the current compiledir (ccache's -C): `xcache clear` (entries in use and
    /// paths just handed out stay).
    #[arg(short = 'C', long = "clear")]
    clear: bool,

    #[command(subcommand)]
    command: Option<Command>,

    /// The command line as given (without the program's name), for what clap does not
    /// keep: the order of ccache's options, the word a command was called by.
    #[arg(skip)]
    raw: Vec<String>,
}

impl Cli {
    /// Whether one of ccache's top-level options was given.
    fn has_habit(&self) -> bool {
        self.show_stats || self.zero_stats || self.max_size.is_some() || self.clear
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the base dir; list its compiledirs; or purge everything xcache owns in it.
    Basecompiledir {
        #[command(subcommand)]
        action: Option<BaseAction>,
        /// Print JSON (also after `list` or `purge`).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Compile a C or C++ source, or a template with parameters, through the cache and
    /// print the shared object's path.
    Compile(compile::CompileArgs),
    /// List the entries of the current compiledir (or of all compiledirs).
    List {
        /// Entries of every compiledir under the base dir.
        #[arg(long)]
        all: bool,
        /// Order: age (newest first), size (largest first), use (least recently used
        /// first), name.
        #[arg(long, value_name = "KEY", default_value = "name", value_parser = sort_keys())]
        sort: ops::list::SortBy,
        /// Show whole sources, however wide (by default the SOURCE column is shortened
        /// to fit the terminal).
        #[arg(long)]
        wide: bool,
        /// List what the remote tier holds for this platform instead (keys, sizes,
        /// expiry), with its address and round trip.
        #[arg(long, conflicts_with_all = ["all", "wide"])]
        remote: bool,
        /// Only what PRODUCER made: `xcache` (what it compiled), or the compiler whose
        /// artifacts it keeps (`numba`, `triton`, `cupy`, `pytensor`). Looks in every
        /// compiledir (each producer version has its own).
        #[arg(long, value_name = "PRODUCER", conflicts_with = "remote")]
        producer: Option<String>,
        /// Print a JSON array (always complete).
        #[arg(long)]
        json: bool,
    },
    /// Apparent and on-disk bytes and entry counts per compiledir, and the total.
    Size {
        /// Every compiledir under the base dir.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete every entry of the current compiledir. Entries in use by another process
    /// are skipped, and so are entries whose path was handed out (printed by `xcache
    /// compile`) within handout_grace, unless --force.
    Clear {
        /// Also remove entries whose path was handed out recently (entries in use by
        /// another process, a pinned one included, are still skipped).
        #[arg(long)]
        force: bool,
        /// Only list what would be removed and the bytes it would free.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the current compiledir.
    Purge {
        /// Also remove entries whose path was handed out recently (entries in use by
        /// another process, a pinned one included, are still skipped).
        #[arg(long)]
        force: bool,
        /// Only list what would be removed and the bytes it would free.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evict entries by last use down to a low-water mark and by age; remove stale
    /// compiledirs; collect crashed builds. `xcache cleanup` (theano-cache's word) is
    /// this command.
    #[command(visible_alias = "cleanup")]
    Prune {
        /// Evict least recently used entries while the compiledir is larger than this
        /// (e.g. 500MiB, 1.5GiB, 2GB; 0: no size limit, as for the max_size setting).
        /// Default: the max_size setting, unless --older-than is given.
        #[arg(long, value_name = "SIZE", value_parser = xcache::config::parse_size)]
        max_size: Option<u64>,
        /// Evict entries unused for longer than this (e.g. 7d, 12h, 1.5d).
        #[arg(long, value_name = "AGE", value_parser = xcache::config::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Also remove stale compiledirs (old runtimes or kernels, or unused for stale_after).
        #[arg(long)]
        stale: bool,
        /// Also remove entries whose path was handed out recently (entries in use by
        /// another process, a pinned one included, are still skipped).
        #[arg(long)]
        force: bool,
        /// Only list what would be removed and the bytes it would free.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile every request of a JSON manifest, in parallel (for CI cache warming).
    Warm(warm::WarmArgs),
    /// Write the cache's entries to one portable file (a bundle), for CI caches.
    ///
    /// A bundle is a zstd-compressed tar of packed entries with an index of their keys,
    /// platforms (compiledirs) and hashes; it is signed when remote_sign_key is set.
    /// In CI: restore the file, `xcache import` it, build, `xcache export` it again.
    Export {
        /// The bundle to write (e.g. cache.tar.zst); written to a temporary file beside
        /// it, then renamed over it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Only entries used (or built) within this age (e.g. 7d, 12h).
        #[arg(long, value_name = "AGE", value_parser = xcache::config::parse_duration)]
        since: Option<std::time::Duration>,
        /// Export this compiledir instead of the current one (`xcache basecompiledir
        /// list` names them).
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        compiledir: Option<String>,
        /// Export every compiledir under the base dir.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a bundle written by `xcache export`, checking every entry.
    ///
    /// Every entry for this platform is checked (its hash against the index, its keys,
    /// the headers it was built from, signatures as remote_verify says) and published;
    /// entries for other platforms are skipped with a note. Exit status 1 if an entry
    /// was refused or corrupt (the others are imported all the same).
    Import {
        /// The bundle.
        file: PathBuf,
        /// Also import the entries of the bundle's other compiledirs for this machine:
        /// same OS, kernel, arch, libc and layout, another runtime tag (the groups of
        /// Numba, Triton or CuPy, whose versions are runtime tags), each into its own
        /// compiledir. With --json, prints an array of reports.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hits, misses, compiles, compile time spent and saved, lock waits.
    Stats {
        /// Reset the counters.
        #[arg(long)]
        zero: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every entry (metadata, artifact hash, permissions), orphan locks and stale
    /// staging.
    Verify {
        /// Quarantine corrupt entries, remove orphan locks and stale staging.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an entry (its key material, the headers it was built from and whether they
    /// changed since) or a request's manifest (its results), by key or key prefix.
    Show {
        /// The key, or its first digits (at least 2), as `list` shows it.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the lock files of the current compiledir: held or free, and who last held
    /// each. xcache's locks are OS file locks, freed by the kernel when their holder
    /// exits: none is ever stale, and nothing needs unlocking by hand.
    Unlock {
        /// Remove the lock files nobody holds (each under a try-lock; they are recreated
        /// when needed).
        #[arg(long)]
        remove_free: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the platform, the cache directories, the compilers, nvcc and the GPU.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the effective settings and where each came from; or set one in the config
    /// file (`xcache config set max_size 5GiB`, as `ccache -M 5G`).
    Config {
        #[command(subcommand)]
        action: Option<ConfigAction>,
        /// Print JSON.
        #[arg(long, global = true)]
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
        /// Where to run it: cpu, or cuda (needs nvcc and an NVIDIA GPU).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell: bash, zsh, fish, elvish, powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of xcache, or of one command (`xcache man prune`).
    Man {
        /// The command whose page to print.
        command: Option<String>,
    },
}

/// The keys of `list --sort`, listed to clap so that help and completions offer them.
fn sort_keys() -> impl clap::builder::TypedValueParser<Value = ops::list::SortBy> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["name", "age", "size", "use"]).map(|s| {
        s.parse::<ops::list::SortBy>()
            .expect("every listed key parses")
    })
}

impl Command {
    /// Whether the command was asked for JSON: its failures are then JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Compile(a) => a.json,
            Command::Warm(a) => a.json,
            Command::Basecompiledir { json, .. }
            | Command::List { json, .. }
            | Command::Size { json, .. }
            | Command::Clear { json, .. }
            | Command::Purge { json, .. }
            | Command::Prune { json, .. }
            | Command::Export { json, .. }
            | Command::Import { json, .. }
            | Command::Stats { json, .. }
            | Command::Verify { json, .. }
            | Command::Unlock { json, .. }
            | Command::Show { json, .. }
            | Command::Doctor { json }
            | Command::Config { json, .. }
            | Command::Templates { json }
            | Command::Demo { json, .. } => *json,
            Command::Completions { .. } | Command::Man { .. } => false,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Write KEY = VALUE into the config file ($XCACHE_CONFIG, else
    /// ~/.config/xcache/config.toml), keeping its other keys; the value is checked first.
    Set {
        /// The setting (`xcache config` lists them).
        key: String,
        /// Its value, as in the file or XCACHE_FLAGS (sizes and durations with a unit).
        value: String,
    },
    /// Remove KEY from the config file: its default applies again.
    Unset {
        /// The setting.
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum BaseAction {
    /// List the compiledirs with current / stale / other marks, size, entries, last use.
    List,
    /// Remove every compiledir and the CACHEDIR.TAG (refused without xcache's tag).
    Purge {
        /// Also remove entries whose path was handed out recently (entries in use by
        /// another process, a pinned one included, are still skipped).
        #[arg(long)]
        force: bool,
        /// Only list what would be removed and the bytes it would free.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    run_command_line(std::env::args_os().collect())
}

/// The whole command for `args` (the first is the program's name): what `main` runs,
/// and, through the library target (`src/lib.rs`), `python -m xcache`.
pub fn run_command_line(args: Vec<std::ffi::OsString>) -> ExitCode {
    init_logging();
    // `xcache compile FILE [--json]`: straight to the verb, without the command tree.
    let rest: Vec<std::ffi::OsString> = args.iter().skip(1).cloned().collect();
    if let Some(plain) = compile::CompileArgs::plain(&rest) {
        let json = plain.json;
        let cli = Cli {
            dir: None,
            show_stats: false,
            zero_stats: false,
            max_size: None,
            clear: false,
            command: Some(Command::Compile(plain)),
            raw: Vec::new(),
        };
        return finish(run(cli), json);
    }
    let parsed = Cli::try_parse_from(&args).and_then(|c| {
        if c.command.is_some() && c.has_habit() {
            Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "-s, -z, -M and -C (--show-stats, --zero-stats, --max-size, --clear) stand alone, as in ccache: `xcache -s`, or the command (`xcache stats`)",
            ))
        } else {
            Ok(c)
        }
    });
    let cli = match parsed {
        Ok(mut c) => {
            c.raw = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            c
        }
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS; // --help, --version
            }
            // Bad usage of a command asked for JSON: still JSON on stdout.
            if args.iter().any(|a| a == "--json") {
                let message = e.render().to_string();
                let message = message.trim().trim_start_matches("error: ");
                println!(
                    "{}",
                    json!({"error": {"kind": "usage", "message": message, "compiler_output": null}})
                );
            }
            return ExitCode::from(2);
        }
    };
    let json = cli.command.as_ref().is_some_and(Command::json);
    finish(run(cli), json)
}

/// The exit status of a run, with its error (if any) printed, as JSON too when asked.
fn finish(result: Result<ExitCode>, json: bool) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let causes = error_chain(&e);
            eprintln!("xcache: error: {}", human::terminal_safe_text(&causes[0]));
            for cause in &causes[1..] {
                eprintln!("  caused by: {}", human::terminal_safe_text(cause));
            }
            if json {
                println!("{}", json_error(&e));
            }
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each once (a message that already contains its cause
/// does not repeat it).
fn error_chain(e: &anyhow::Error) -> Vec<String> {
    let top = e.to_string();
    let mut out = vec![top.clone()];
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !top.contains(&cause) {
            out.push(cause);
        }
    }
    out
}

/// A failure as `--json` prints it: `{"error": {"kind", "message", "compiler_output"}}`,
/// with the command and the kept source too when the compiler failed, and the flag
/// when one was refused.
fn json_error(e: &anyhow::Error) -> serde_json::Value {
    let lib = e.chain().find_map(|c| c.downcast_ref::<xcache::Error>());
    let kind = match lib {
        Some(l) => l.kind(),
        None if e.chain().any(|c| c.is::<std::io::Error>()) => "io",
        None => "error",
    };
    let mut error = json!({
        "kind": kind,
        "message": error_chain(e).join(": "),
        "compiler_output": null,
    });
    if let Some(xcache::Error::Compile(ce)) = lib {
        error["message"] = json!(ce.to_string().lines().next().unwrap_or_default());
        error["compiler_output"] = json!(ce.output);
        error["command"] = json!(ce.command);
        error["kept_source"] = json!(ce.kept_source);
    }
    if let Some(xcache::Error::RefusedFlag { flag, .. }) = lib {
        error["flag"] = json!(flag);
    }
    json!({ "error": error })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

fn config(cli: &Cli) -> xcache::Result<Config> {
    let mut c = Config::load()?;
    if let Some(d) = &cli.dir {
        c.set_base_dir(d);
    }
    Ok(c)
}

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Human output is shown terminal-safe (names from data carry no escape sequence to
    // the terminal); JSON is exact already, and so is a path printed for a script.
    let exact = match &cli.command {
        None
        | Some(Command::Compile(_))
        | Some(Command::Completions { .. })
        | Some(Command::Man { .. })
        | Some(Command::Basecompiledir { action: None, .. }) => true,
        Some(c) => c.json(),
    };
    if matches!(cli.command, Some(Command::Prune { .. })) && verb(&cli.raw) == Some("cleanup") {
        eprintln!(
            "xcache: note: `xcache cleanup` is `xcache prune` (theano-cache's cleanup): it evicts by age and size and collects crashed builds; `xcache verify --repair` mends broken entries, and `xcache clear` removes every entry"
        );
    }
    let mut out = human::TerminalSafe::new(std::io::stdout().lock(), !exact);
    let code = match &cli.command {
        None if cli.has_habit() => {
            for habit in ccache_habits(&cli) {
                match habit {
                    Habit::ShowStats | Habit::ZeroStats => {
                        let zero = habit == Habit::ZeroStats;
                        let store = Store::open(&config(&cli)?)?;
                        let rows = ops::stats::stats(&store, zero)?;
                        show::stats(&mut out, &rows, zero, false)?;
                    }
                    Habit::MaxSize(size) => {
                        set_setting(&mut out, &cli, "max_size", Some(&size), false)?
                    }
                    Habit::Clear => {
                        let store = Store::open(&config(&cli)?)?;
                        let report = ops::clean::clear(&store, false, false)?;
                        show::clean(&mut out, &report, &store, false)?;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        None => {
            let store = Store::open(&config(&cli)?)?;
            writeln!(out, "{}", store.compiledir().display())?;
            ExitCode::SUCCESS
        }
        Some(Command::Basecompiledir { action, json }) => {
            let config = config(&cli)?;
            match action {
                None if *json => {
                    writeln!(out, "{}", json!({"base_dir": config.base_dir()?}))?;
                }
                None => {
                    writeln!(out, "{}", config.base_dir()?.display())?;
                }
                Some(BaseAction::List) => {
                    let store = Store::open(&config)?;
                    let rows = ops::clean::list_compiledirs(&store)?;
                    show::compiledirs(&mut out, &rows, &store, *json)?;
                }
                Some(BaseAction::Purge { force, dry_run }) => {
                    // Check before opening: opening would create (and tag) the directory.
                    let base = config.base_dir()?;
                    if !ops::clean::is_xcache_base(&base) {
                        anyhow::bail!(ops::clean::not_an_xcache_base(&base));
                    }
                    let store = Store::open(&config)?;
                    let report = ops::clean::purge_base(&store, *force, *dry_run)?;
                    show::clean(&mut out, &report, &store, *json)?;
                }
            }
            ExitCode::SUCCESS
        }
        Some(Command::Compile(args)) => compile::run(&mut out, config(&cli)?, args)?,
        Some(Command::List {
            remote: true, json, ..
        }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let namespace = store
                .compiledir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stats =
                std::sync::Arc::new(xcache::store::stats::Recorder::new(store.root().clone()));
            let tiers = xcache::remote::tiers_from_config(
                &config,
                &namespace,
                std::sync::Arc::new(xcache::clock::SystemClock),
                stats,
            )?;
            if tiers.is_empty() {
                anyhow::bail!(
                    "no remote tier is configured (the `remote` setting); see docs/REMOTE.md"
                );
            }
            let probes = tiers
                .iter()
                .map(|t| {
                    t.probe(true)
                        .map_err(|e| anyhow::anyhow!("remote {}: {e}", t.shown()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            show::remote_entries(&mut out, &probes, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::List {
            all,
            sort,
            wide,
            json,
            producer,
            ..
        }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            // A producer's entries live in compiledirs of their own (its version is
            // their runtime tag): look in all of them.
            let every = *all || producer.is_some();
            let mut rows = ops::list::list(&store, every, *sort)?;
            if let Some(p) = producer {
                rows.retain(|r| r.producer == *p);
            }
            show::entries(&mut out, &rows, &store, every, *wide, *json)?;
            // The process ends here: freeing a million rows one by one would cost more
            // than printing them.
            std::mem::forget(rows);
            ExitCode::SUCCESS
        }
        Some(Command::Size { all, json }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let report = ops::size::size(&store, *all)?;
            show::size(&mut out, &report, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Clear {
            force,
            dry_run,
            json,
        }) => {
            let store = Store::open(&config(&cli)?)?;
            let report = ops::clean::clear(&store, *force, *dry_run)?;
            show::clean(&mut out, &report, &store, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Purge {
            force,
            dry_run,
            json,
        }) => {
            let store = Store::open(&config(&cli)?)?;
            show::clean(
                &mut out,
                &ops::clean::purge(&store, *force, *dry_run)?,
                &store,
                *json,
            )?;
            ExitCode::SUCCESS
        }
        Some(Command::Prune {
            max_size,
            older_than,
            stale,
            force,
            dry_run,
            json,
        }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let opts = ops::clean::PruneOptions {
                max_size: *max_size,
                older_than: *older_than,
                stale: *stale,
                force: *force,
                dry_run: *dry_run,
            };
            let bar = progress::Progress::new("pruning");
            let report = ops::clean::prune_with_progress(&store, &opts, &|d, t| bar.update(d, t))?;
            drop(bar);
            show::clean(&mut out, &report, &store, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Warm(args)) => warm::run(&mut out, config(&cli)?, args)?,
        Some(Command::Export {
            out: file,
            since,
            compiledir,
            all,
            json,
        }) => {
            use xcache::remote::bundle::{self, Compiledirs};
            let store = Store::open(&config(&cli)?)?;
            let which = match (compiledir, all) {
                (Some(name), _) => Compiledirs::Named(name.clone()),
                (None, true) => Compiledirs::All,
                (None, false) => Compiledirs::Current,
            };
            let report = bundle::export_bundle(&store, file, *since, &which)?;
            show::exported(&mut out, &report, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Import {
            file,
            all: false,
            json,
        }) => {
            let store = Store::open(&config(&cli)?)?;
            let report = xcache::remote::bundle::import_bundle(&store, file)?;
            show::imported(&mut out, &report, *json)?;
            status(report.clean())
        }
        Some(Command::Import {
            file,
            all: true,
            json,
        }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let first = xcache::remote::bundle::import_bundle(&store, file)?;
            let mut reports = vec![first];
            for tag in xcache::remote::bundle::runtime_tags_for_here(&store, &reports[0])? {
                let mut c = config.clone();
                c.runtime_tag = tag;
                let there = Store::open(&c)?;
                reports.push(xcache::remote::bundle::import_bundle(&there, file)?);
            }
            if *json {
                writeln!(out, "{}", serde_json::to_string(&reports)?)?;
            } else {
                for r in &reports {
                    show::imported(&mut out, r, false)?;
                }
            }
            status(reports.iter().all(|r| r.clean()))
        }
        Some(Command::Stats { zero, json }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let rows = ops::stats::stats(&store, *zero)?;
            show::stats(&mut out, &rows, *zero, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Verify { repair, json }) => {
            let config = config(&cli)?;
            let bar = progress::Progress::new("verifying");
            let report = ops::verify::open_and_verify(&config, *repair, &|d, t| bar.update(d, t))?;
            drop(bar);
            show::verify(&mut out, &report, *repair, *json)?;
            status(report.clean())
        }
        Some(Command::Show { key, json }) => {
            let config = config(&cli)?;
            let store = Store::open(&config)?;
            let (store, report) = match store.show(key) {
                Ok(r) => (store, r),
                // Not here: the compiledirs of this machine under other runtime tags
                // (the artifact groups of a producer version, which `list --producer`
                // lists); the first error stands if none has it.
                Err(e) => {
                    let mut found = None;
                    for tag in ops::list::runtime_tags_here(&store)? {
                        let mut c = config.clone();
                        c.runtime_tag = tag;
                        let there = Store::open(&c)?;
                        if let Ok(r) = there.show(key) {
                            found = Some((there, r));
                            break;
                        }
                    }
                    found.ok_or(e)?
                }
            };
            show::shown(&mut out, &report, &store, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Unlock { remove_free, json }) => {
            let store = Store::open(&config(&cli)?)?;
            let report = ops::unlock::unlock(&store, *remove_free)?;
            show::unlock(&mut out, &report, *remove_free, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Doctor { json }) => {
            // Not `?`: the doctor reports settings it cannot read, and goes on.
            let report = ops::doctor::doctor(config(&cli));
            show::doctor(&mut out, &report, *json)?;
            status(report.ok())
        }
        Some(Command::Config { action: None, json }) => {
            show::config(&mut out, &config(&cli)?, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Config {
            action: Some(action),
            json,
        }) => {
            let (key, value) = match action {
                ConfigAction::Set { key, value } => (key, Some(value.as_str())),
                ConfigAction::Unset { key } => (key, None),
            };
            set_setting(&mut out, &cli, key, value, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Templates { json }) => {
            let templates = xcache::compile::template::all(&config(&cli)?)?;
            show::templates(&mut out, &templates, *json)?;
            ExitCode::SUCCESS
        }
        Some(Command::Demo {
            iters,
            device,
            json,
        }) => {
            let jit = Jit::new(config(&cli)?)?;
            let report = if device == "cuda" {
                ops::demo::check1_cuda(&jit, *iters)?
            } else {
                ops::demo::check1(&jit, *iters)?
            };
            show::demo(&mut out, &report, *json)?;
            status(report.ok)
        }
        Some(Command::Completions { shell }) => {
            // Into a buffer, then written as every other output is: clap_complete panics
            // on a closed pipe (`xcache completions bash | true`).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "xcache", &mut script);
            out.write_all(&script)?;
            ExitCode::SUCCESS
        }
        Some(Command::Man { command }) => {
            let top = Cli::command();
            let page = match command {
                None => top,
                Some(name) => {
                    let sub = top.find_subcommand(name).cloned().ok_or_else(|| {
                        anyhow::anyhow!("no command `{name}`; see `xcache --help`")
                    })?;
                    // The page is xcache-NAME(1), as SEE ALSO of xcache(1) names it, of
                    // this version of xcache (its header says which).
                    let full: &'static str = Box::leak(format!("xcache-{name}").into_boxed_str());
                    sub.name(full).version(env!("CARGO_PKG_VERSION"))
                }
            };
            clap_mangen::Man::new(page).render(&mut out)?;
            ExitCode::SUCCESS
        }
    };
    out.flush()?;
    Ok(code)
}

/// `xcache config set KEY VALUE` (`value` None: `unset KEY`), also `xcache -M SIZE`:
/// writes the config file and says where, and whether another source wins over it.
fn set_setting(
    out: &mut impl Write,
    cli: &Cli,
    key: &str,
    value: Option<&str>,
    json: bool,
) -> Result<()> {
    let env: xcache::config::EnvSnapshot = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let file = xcache::config::file_path(&env).ok_or_else(|| {
        anyhow::anyhow!(
            "no config file to write: HOME is not set. Fix: set XCACHE_CONFIG to a path"
        )
    })?;
    xcache::config::write_setting(&file, key, value)?;
    // Say so when another source wins over the file for this key.
    let effective = config(cli)?;
    let origin = effective.origin(key);
    let shadowed = !matches!(
        origin,
        xcache::config::Origin::File(_) | xcache::config::Origin::Default
    );
    show::config_written(out, &file, key, value, shadowed.then_some(&origin), json)
}

/// The word the command was called by (`cleanup` for `prune`), past the global
/// `--dir DIR`.
fn verb(raw: &[String]) -> Option<&str> {
    let mut args = raw.iter();
    while let Some(a) = args.next() {
        if a == "--dir" {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// One of ccache's (and sccache's) top-level options.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Habit {
    /// `-s`, `--show-stats`.
    ShowStats,
    /// `-z`, `--zero-stats`.
    ZeroStats,
    /// `-M SIZE`, `--max-size SIZE`.
    MaxSize(String),
    /// `-C`, `--clear`.
    Clear,
}

/// The ccache options given, in the order given (as ccache runs them: `xcache -z -s`
/// zeroes, then shows), read again from the command line that clap accepted.
fn ccache_habits(cli: &Cli) -> Vec<Habit> {
    let size = || Habit::MaxSize(cli.max_size.clone().unwrap_or_default());
    let mut out = Vec::new();
    let mut args = cli.raw.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--show-stats" => out.push(Habit::ShowStats),
            "--zero-stats" => out.push(Habit::ZeroStats),
            "--clear" => out.push(Habit::Clear),
            "--max-size" => {
                args.next();
                out.push(size());
            }
            "--dir" => {
                args.next();
            }
            a if a.starts_with("--max-size=") => out.push(size()),
            a if a.starts_with('-') && !a.starts_with("--") => {
                // A cluster of short options (`-sz`); `-M` takes the rest, or the next.
                for (i, c) in a.char_indices().skip(1) {
                    match c {
                        's' => out.push(Habit::ShowStats),
                        'z' => out.push(Habit::ZeroStats),
                        'C' => out.push(Habit::Clear),
                        'M' => {
                            if i + 1 == a.len() {
                                args.next();
                            }
                            out.push(size());
                            break;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // Parsed from elsewhere (a test): a fixed order.
    if out.is_empty() {
        if cli.max_size.is_some() {
            out.push(size());
        }
        if cli.clear {
            out.push(Habit::Clear);
        }
        if cli.zero_stats {
            out.push(Habit::ZeroStats);
        }
        if cli.show_stats {
            out.push(Habit::ShowStats);
        }
    }
    out
}

/// Logs to stderr as `xcache: warning: ...`, at the level named by XCACHE_LOG (error,
/// warn, info, debug, trace, off; default warn), or per module in env_logger's syntax
/// (`warn,xcache::store=debug`).
/// Warnings and `XCACHE_LOG` output on stderr, as `xcache: warning: …` (once per
/// process; later calls do nothing).
pub fn init_logging() {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_filters(&std::env::var("XCACHE_LOG").unwrap_or_default())
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let message = record.args().to_string();
            writeln!(
                buf,
                "xcache: {level}: {}",
                human::terminal_safe_text(&message)
            )
        })
        .try_init()
        .ok();
}
