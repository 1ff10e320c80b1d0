//! Human and JSON output of the verbs that report more than a path.

use std::io::Write;

use anyhow::Result;
use serde_json::json;
use xcache::compile::template::Template;
use xcache::ops::clean::{Action, CleanReport, CompiledirRow, ItemKind, Mark, Reason, Skip};
use xcache::ops::demo::DemoReport;
use xcache::ops::doctor::{DoctorReport, Status};
use xcache::ops::list::EntryRow;
use xcache::store::gc::policy::{RemoveWhy, StaleWhy};

use super::human;
use xcache::ops::size::SizeReport;
use xcache::ops::stats::StatsRow;
use xcache::ops::unlock::UnlockReport;
use xcache::ops::verify::{ProblemKind, VerifyReport};
use xcache::{Config, Store};

/// `xcache templates`.
pub fn templates(out: &mut impl Write, templates: &[Template], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = templates
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "language": t.language.name(),
                    "description": t.description,
                    "entry": t.entry,
                    "flags": t.flags,
                    "origin": t.origin,
                    "params": t.params.iter().map(|p| json!({
                        "name": p.name,
                        "accepts": p.ty.describe(),
                        "default": p.default,
                        "doc": p.doc,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    for (i, t) in templates.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let origin = if t.origin == "embedded" {
            String::new()
        } else {
            format!("  [{}]", t.origin)
        };
        writeln!(out, "{}{origin}", t.name)?;
        writeln!(out, "  {}", t.description)?;
        for e in &t.entry {
            writeln!(out, "  entry: {e}")?;
        }
        let rows: Vec<Vec<String>> = t
            .params
            .iter()
            .map(|p| {
                vec![
                    format!("    {}", p.name),
                    p.ty.describe(),
                    p.default
                        .as_ref()
                        .map(|d| format!("default {d}"))
                        .unwrap_or_else(|| "required".into()),
                    p.doc.clone(),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            human::table(&["  params", "", "", ""], &rows, &[])
        )?;
    }
    Ok(())
}

/// `xcache demo`.
pub fn demo(out: &mut impl Write, r: &DemoReport, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, r)?;
        writeln!(out)?;
        return Ok(());
    }
    let cold = if r.cold_was_cached {
        format!(
            "{:.1} ms: already in the cache (it compiled in {} ms once), no compiler run",
            r.cold_ms, r.compile_ms
        )
    } else {
        format!(
            "{:.1} ms: rendered, compiled ({} ms in the compiler), published, loaded",
            r.cold_ms, r.compile_ms
        )
    };
    let warm = format!(
        "{:.2} ms: {} from a fresh runtime (hash checked, dlopened)",
        r.warm_ms,
        if r.warm_hit { "hit" } else { "MISS" }
    );
    let per_call_us = r.loop_s * 1e6 / r.iters.max(1) as f64;
    let rows = vec![
        vec![
            "kernel".into(),
            format!("{}  key {}", r.kernel, &r.key[..12]),
        ],
        vec!["cache".into(), r.compiledir.display().to_string()],
        vec!["cold".into(), cold],
        vec!["warm".into(), warm],
        vec![
            "loop".into(),
            format!(
                "{} calls in {:.3} s ({:.1} µs per call, {:.2} G elements/s)",
                r.iters,
                r.loop_s,
                per_call_us,
                r.elements_per_s / 1e9
            ),
        ],
        vec!["device".into(), r.device.clone()],
        vec![
            "check".into(),
            format!(
                "max relative error vs float64 exp: {:.1e} (limit {:.0e}): {}",
                r.max_rel_err,
                xcache::ops::demo::MAX_REL_ERR,
                if r.ok { "OK" } else { "FAILED" }
            ),
        ],
    ];
    writeln!(out, "xcache demo: {}", r.workload)?;
    let t = human::table(&["", ""], &rows, &[]);
    for line in t.lines().skip(1) {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "Looping {} times took {:.6} seconds",
        r.iters, r.loop_s
    )?;
    writeln!(out, "Result is {:?}...", r.result_head)?;
    writeln!(out, "Used the {}", r.used)?;
    Ok(())
}

fn json_out(out: &mut impl Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

fn now_secs(store: &Store) -> u64 {
    xcache::clock::unix_secs(store.clock().now())
}

fn age_or_dash(t: Option<u64>, now: u64) -> String {
    t.map(|t| human::age(t, now)).unwrap_or_else(|| "-".into())
}

/// `xcache list`.
pub fn entries(
    out: &mut impl Write,
    rows: &[EntryRow],
    store: &Store,
    all: bool,
    wide: bool,
    json: bool,
) -> Result<()> {
    if json {
        // Compact: a large cache lists 100,000 entries.
        serde_json::to_writer(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no entries in {}",
            if all {
                store.base_dir()
            } else {
                store.compiledir()
            }
            .display()
        )?;
        return Ok(());
    }
    let now = now_secs(store);
    let total: u64 = rows.iter().map(|r| r.size).sum();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.key[..12].to_string(),
                if r.status == "ok" {
                    r.source.clone()
                } else {
                    r.status.clone()
                },
                if r.language == "cuda" {
                    format!("cuda {}", r.target)
                } else {
                    r.language.clone()
                },
                human::size(r.size),
                human::age(r.created, now),
                age_or_dash(r.last_use, now),
                human::duration(std::time::Duration::from_millis(r.compile_ms)),
            ];
            if all {
                row.push(r.compiledir.clone());
            }
            row
        })
        .collect();
    let mut header = vec![
        "KEY", "SOURCE", "LANG", "SIZE", "CREATED", "LAST USE", "COMPILE",
    ];
    if all {
        header.push("COMPILEDIR");
    }
    // A template instance with a long expression would make every row as long: the
    // source column gives way to fit the terminal (--wide, a pipe or --json: all of it).
    if let Some(width) = human::output_width().filter(|_| !wide) {
        human::shrink_column(&header, &mut cells, 1, width);
    }
    write!(out, "{}", human::table(&header, &cells, &[3, 6]))?;
    writeln!(
        out,
        "{}, {} in {}",
        human::count(rows.len() as u64, "entry", "entries"),
        human::size(total),
        if all {
            store.base_dir()
        } else {
            store.compiledir()
        }
        .display()
    )?;
    Ok(())
}

/// `xcache size`.
pub fn size(out: &mut impl Write, r: &SizeReport, json: bool) -> Result<()> {
    if json {
        return json_out(out, r);
    }
    let mut cells: Vec<Vec<String>> = r
        .compiledirs
        .iter()
        .chain(std::iter::once(&r.total))
        .map(|s| {
            vec![
                format!(
                    "{}{}",
                    s.compiledir,
                    if s.current { " (current)" } else { "" }
                ),
                s.entries.to_string(),
                human::size(s.entries_bytes),
                human::size(s.apparent_bytes),
                human::size(s.disk_bytes),
            ]
        })
        .collect();
    if r.compiledirs.len() == 1 {
        cells.pop(); // the total of one is itself
    }
    write!(
        out,
        "{}",
        human::table(
            &["COMPILEDIR", "ENTRIES", "IN ENTRIES", "APPARENT", "ON DISK"],
            &cells,
            &[1, 2, 3, 4]
        )
    )?;
    Ok(())
}

/// What kind of thing an action is about, in a word.
fn item_kind(k: ItemKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A limit as the settings and options write it (`30d`, `7d`, `90s`).
fn setting_duration(secs: u64) -> String {
    xcache::config::format_duration(std::time::Duration::from_secs(secs))
}

/// Why a compiledir is stale, in words.
pub fn stale_words(w: &StaleWhy) -> String {
    match w {
        StaleWhy::Unused {
            unused_secs,
            limit_secs,
        } => format!(
            "unused for {} (stale_after is {})",
            human::span(*unused_secs),
            setting_duration(*limit_secs)
        ),
        StaleWhy::OlderRuntime { runtime, current } => {
            format!("older runtime {runtime} (current {current})")
        }
        StaleWhy::OlderKernel { kernel, current } => {
            format!("older kernel {kernel} (current {current})")
        }
        StaleWhy::OlderLayout { layout, current } => {
            format!("older layout xc{layout} (current xc{current})")
        }
    }
}

fn leftover_words(w: &RemoveWhy) -> String {
    match w {
        RemoveWhy::CrashedBuild => "left by a build that stopped".into(),
        RemoveWhy::InterruptedRemoval => "left by an interrupted removal".into(),
        RemoveWhy::TooManyFailures { keep } => {
            format!("failed build beyond the {keep} newest kept per key")
        }
        RemoveWhy::KeptLongEnough => "kept for inspection longer than stale_after".into(),
        RemoveWhy::AbandonedPrivate => "private build nobody uses".into(),
        RemoveWhy::Purged => "purge".into(),
    }
}

fn reason_words(a: &Action, now: u64) -> String {
    let used = || age_or_dash(a.last_use, now);
    match &a.reason {
        Reason::Clear => "clear".into(),
        Reason::Purge => "purge".into(),
        Reason::OlderThan { limit_secs } => format!(
            "unused since {}, limit {}",
            used(),
            setting_duration(*limit_secs)
        ),
        Reason::OverSize { max_size } => format!(
            "least recently used ({}), over {}",
            used(),
            human::size(*max_size)
        ),
        Reason::Stale { stale } => stale_words(stale),
        Reason::Leftover { leftover } => leftover_words(leftover),
    }
}

fn skip_words(s: &Skip, now: u64) -> String {
    match s {
        Skip::DryRun => "dry run".into(),
        Skip::InUse => "in use by another process (its lock is held)".into(),
        Skip::HandedOut { until } => format!(
            "its path was handed out: protected for {} more (--force removes it)",
            human::span(until.saturating_sub(now))
        ),
        Skip::EntriesInUse { count } => format!(
            "{count} {} in use or handed out",
            if *count == 1 { "entry" } else { "entries" }
        ),
        Skip::BuildInProgress => "a build is in progress in it".into(),
        Skip::NotOurs => "no compiledir.json: not made by xcache, left alone".into(),
        Skip::ForeignFiles { path } => {
            format!("files not made by xcache are left in {}", path.display())
        }
    }
}

/// `xcache clear`, `purge`, `prune`, `basecompiledir purge`.
pub fn clean(out: &mut impl Write, r: &CleanReport, store: &Store, json: bool) -> Result<()> {
    if json {
        return json_out(out, r);
    }
    let now = now_secs(store);
    let cells: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|a| {
            vec![
                match &a.skipped {
                    None => "removed".into(),
                    Some(Skip::DryRun) => "would remove".into(),
                    Some(_) => "kept".into(),
                },
                item_kind(a.kind),
                if a.kind == ItemKind::Entry {
                    a.name[..12.min(a.name.len())].to_string()
                } else {
                    a.name.clone()
                },
                a.source.clone(),
                human::size(a.bytes),
                match &a.skipped {
                    Some(Skip::DryRun) | None => reason_words(a, now),
                    Some(s) => format!("{}; {}", reason_words(a, now), skip_words(s, now)),
                },
            ]
        })
        .collect();
    if !cells.is_empty() {
        write!(
            out,
            "{}",
            human::table(&["", "WHAT", "NAME", "SOURCE", "SIZE", "WHY"], &cells, &[4])
        )?;
    }
    let verb = if r.dry_run { "would free" } else { "freed" };
    writeln!(
        out,
        "{} {}, {verb} {}{}",
        r.removed_entries,
        if r.removed_entries == 1 {
            "entry"
        } else {
            "entries"
        },
        human::size(r.freed_bytes),
        if r.skipped > 0 {
            format!("; {} left in place (see WHY)", r.skipped)
        } else {
            String::new()
        }
    )?;
    Ok(())
}

/// `xcache basecompiledir list`.
pub fn compiledirs(
    out: &mut impl Write,
    rows: &[CompiledirRow],
    store: &Store,
    json: bool,
) -> Result<()> {
    if json {
        return json_out(out, &rows);
    }
    let now = now_secs(store);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                match r.mark {
                    Mark::Current => "current",
                    Mark::Stale => "stale",
                    Mark::Other => "other",
                }
                .to_string(),
                r.name.clone(),
                r.entries.to_string(),
                human::size(r.bytes),
                age_or_dash(r.last_use, now),
                r.reason.as_ref().map(stale_words).unwrap_or_default(),
            ]
        })
        .collect();
    if cells.is_empty() {
        writeln!(out, "no compiledirs in {}", store.base_dir().display())?;
    } else {
        write!(
            out,
            "{}",
            human::table(
                &["", "COMPILEDIR", "ENTRIES", "SIZE", "LAST USE", "WHY STALE"],
                &cells,
                &[2, 3]
            )
        )?;
    }
    Ok(())
}

/// `xcache stats`.
pub fn stats(out: &mut impl Write, rows: &[StatsRow], zeroed: bool, json: bool) -> Result<()> {
    if json {
        return json_out(out, &rows);
    }
    if zeroed {
        writeln!(out, "counters reset")?;
        return Ok(());
    }
    let ms = |v: u64| human::duration(std::time::Duration::from_millis(v));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = &r.counters;
            let lookups = c.hits + c.memory_hits + c.misses;
            vec![
                format!(
                    "{}{}",
                    r.compiledir,
                    if r.current { " (current)" } else { "" }
                ),
                c.hits.to_string(),
                c.memory_hits.to_string(),
                c.misses.to_string(),
                c.compiles.to_string(),
                c.failed_compiles.to_string(),
                if lookups > 0 {
                    format!(
                        "{:.0}%",
                        100.0 * (c.hits + c.memory_hits) as f64 / lookups as f64
                    )
                } else {
                    "-".into()
                },
                ms(c.compile_ms),
                ms(c.saved_ms),
                ms(c.lock_wait_ms),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        human::table(
            &[
                "COMPILEDIR",
                "HITS",
                "IN MEMORY",
                "MISSES",
                "COMPILES",
                "FAILED",
                "HIT RATE",
                "COMPILE TIME",
                "SAVED",
                "LOCK WAIT"
            ],
            &cells,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9]
        )
    )?;
    Ok(())
}

/// `xcache verify`. The exit status follows [`VerifyReport::clean`]: a problem left
/// unrepaired fails it; files that are not xcache's are reported and left alone, and
/// do not.
pub fn verify(out: &mut impl Write, r: &VerifyReport, repair: bool, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["clean"] = json!(r.clean());
        return json_out(out, &v);
    }
    let foreign = |p: &&xcache::ops::verify::Problem| p.kind == ProblemKind::UnknownFile;
    for p in &r.problems {
        let fix = match &p.repaired {
            Some(what) => format!(" [{what}]"),
            None if foreign(&p) => String::new(),
            None if repair => {
                " [not repaired: in use by another process, or not repairable]".into()
            }
            None => String::new(),
        };
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(out, "{kind}: {}: {}{fix}", p.path.display(), p.detail)?;
    }
    let others = r.problems.iter().filter(foreign).count();
    let problems = r.problems.len() - others;
    let unrepaired = r
        .problems
        .iter()
        .filter(|p| !foreign(p) && p.repaired.is_none())
        .count();
    let mut summary = format!(
        "{}, {} ok, {}",
        human::count(r.entries, "entry", "entries") + " checked",
        r.ok,
        match problems {
            0 => "no problems".to_string(),
            n => human::count(n as u64, "problem", "problems"),
        }
    );
    if repair && problems > 0 {
        summary += &format!(", {} repaired", problems - unrepaired);
    }
    if others > 0 {
        summary += &format!(
            "; {} not made by xcache, left alone (remove by hand what is not yours to keep)",
            human::count(others as u64, "file", "files")
        );
    }
    if unrepaired > 0 && !repair {
        summary += " (run `xcache verify --repair` to mend them)";
    }
    writeln!(out, "{summary}")?;
    Ok(())
}

/// `xcache unlock`.
pub fn unlock(out: &mut impl Write, r: &UnlockReport, remove_free: bool, json: bool) -> Result<()> {
    if json {
        return json_out(out, r);
    }
    let cells: Vec<Vec<String>> = r
        .locks
        .iter()
        .map(|l| {
            let holder = match &l.last_holder {
                None => "-".to_string(),
                Some(h) => format!(
                    "pid {} on {}{}",
                    h.pid,
                    if h.host.is_empty() { "?" } else { &h.host },
                    match h.running {
                        Some(true) => " (running)",
                        Some(false) => " (exited)",
                        None => " (another host)",
                    }
                ),
            };
            vec![
                if l.removed {
                    "removed".to_string()
                } else {
                    serde_json::to_value(l.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                },
                l.key[..12].to_string(),
                match (l.has_entry, l.has_manifest) {
                    (true, _) => "entry",
                    (false, true) => "manifest",
                    _ => "none",
                }
                .to_string(),
                holder,
            ]
        })
        .collect();
    if !cells.is_empty() {
        write!(
            out,
            "{}",
            human::table(&["", "KEY", "GUARDS", "LAST EXCLUSIVE HOLDER"], &cells, &[])
        )?;
    }
    writeln!(
        out,
        "{}: {} held, {} free{}",
        human::count(r.locks.len() as u64, "lock file", "lock files"),
        r.held,
        r.free,
        if remove_free {
            format!(", {} removed", r.removed)
        } else {
            String::new()
        }
    )?;
    let mut note = "xcache's locks are per key and are freed by the kernel when their holder \
                    exits, so none is ever stale and nothing needs unlocking: a held lock \
                    belongs to a running process (a reader, or the holder named)."
        .to_string();
    if !remove_free && r.free > 0 {
        note += " `xcache unlock --remove-free` removes the free lock files.";
    }
    writeln!(out, "{note}")?;
    Ok(())
}

/// `xcache doctor`.
pub fn doctor(out: &mut impl Write, r: &DoctorReport, json: bool) -> Result<()> {
    if json {
        return json_out(out, r);
    }
    let cells: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                match c.status {
                    Status::Ok => "ok",
                    Status::Warn => "warn",
                    Status::Fail => "FAIL",
                    Status::Skip => "skip",
                }
                .to_string(),
                c.detail.clone(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        human::table(&["CHECK", "", "DETAIL"], &cells, &[])
    )?;
    Ok(())
}

/// `xcache config set` and `unset`.
pub fn config_written(
    out: &mut impl Write,
    file: &std::path::Path,
    key: &str,
    value: Option<&str>,
    shadowed_by: Option<&xcache::config::Origin>,
    json: bool,
) -> Result<()> {
    if json {
        let v = json!({
            "file": file,
            "name": key,
            "value": value,
            "overridden_by": shadowed_by.map(|o| o.to_string()),
        });
        return json_out(out, &v);
    }
    match value {
        Some(v) => writeln!(out, "{key} = {v:?} written to {}", file.display())?,
        None => writeln!(
            out,
            "{key} removed from {} (its default applies)",
            file.display()
        )?,
    }
    if let Some(origin) = shadowed_by {
        writeln!(
            out,
            "note: {origin} also sets {key}, and wins over the file (`xcache config` shows the value in force)"
        )?;
    }
    Ok(())
}

/// `xcache config`.
pub fn config(out: &mut impl Write, c: &Config, json: bool) -> Result<()> {
    let rows = c.effective();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(info, value, origin)| {
                json!({"name": info.name, "value": value, "origin": origin.to_string(), "default": info.default, "doc": info.doc})
            })
            .collect();
        return json_out(out, &v);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(info, value, origin)| vec![info.name.to_string(), value.clone(), origin.to_string()])
        .collect();
    write!(
        out,
        "{}",
        human::table(&["SETTING", "VALUE", "FROM"], &cells, &[])
    )?;
    Ok(())
}
