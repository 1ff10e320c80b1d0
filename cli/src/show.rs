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
    // Every kernel the first request compiled or found, with its compiler.
    let builds: Vec<String> = r
        .cold_builds
        .iter()
        .map(|b| {
            if b.cached {
                format!(
                    "found in the cache ({} compiled it once in {} ms)",
                    b.compiler, b.compile_ms
                )
            } else {
                format!(
                    "compiled by {} in {} ms, published",
                    b.compiler, b.compile_ms
                )
            }
        })
        .collect();
    let cold = format!(
        "{:.1} ms: rendered, {}, loaded{}",
        r.cold_ms,
        builds.join("; "),
        if r.context_ms.is_some() {
            ", launched once"
        } else {
            ""
        }
    );
    let warm = format!(
        "{:.2} ms: {} from a fresh runtime (hash checked, {})",
        r.warm_ms,
        if r.warm_hit { "hit" } else { "MISS" },
        r.load
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
        vec![
            "device".into(),
            match r.context_ms {
                Some(ms) => format!(
                    "{} (context set up in {ms:.1} ms, before the cold request)",
                    r.device
                ),
                None => r.device.clone(),
            },
        ],
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
    let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut *out);
    serde_json::to_writer_pretty(&mut w, v)?;
    writeln!(w)?;
    w.flush()?;
    Ok(())
}

fn now_secs(store: &Store) -> u64 {
    xcache::clock::unix_secs(store.clock().now())
}

fn age_or_dash(t: Option<u64>, now: u64) -> String {
    t.map(|t| human::age(t, now)).unwrap_or_else(|| "-".into())
}

/// `rows` as one compact JSON array; a large listing is encoded on every CPU, in
/// chunks written in order.
fn json_rows(out: &mut impl Write, rows: &[EntryRow]) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(workers).max(4096);
    let encode = |part: &[EntryRow]| -> serde_json::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(part.len() * 512);
        for r in part {
            buf.push(b',');
            serde_json::to_writer(&mut buf, r)?;
        }
        Ok(buf)
    };
    let parts: Vec<serde_json::Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| s.spawn(move || encode(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("JSON encoder"))
            .collect()
    });
    out.write_all(b"[")?;
    let mut first = true;
    for part in parts {
        let part = part?;
        if part.is_empty() {
            continue;
        }
        // Each chunk starts with a comma; the first one's is dropped.
        out.write_all(if first { &part[1..] } else { &part[..] })?;
        first = false;
    }
    out.write_all(b"]\n")?;
    Ok(())
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
        // Compact, and buffered: a large cache lists a million entries, and a locked
        // stdout writes line by line.
        return json_rows(out, rows);
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
    out.write_all(human::table(&header, &cells, &[3, 6]).as_bytes())?;
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
    let resolution = store.config().last_use_resolution;
    if !resolution.is_zero() {
        writeln!(
            out,
            "LAST USE is written at most once per {} (last_use_resolution): hits since may not show in it",
            xcache::config::format_duration(resolution)
        )?;
    }
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
    if let Some(current) = r.compiledirs.iter().find(|c| c.current) {
        use_line(out, current.entries_bytes, r.max_size)?;
    }
    Ok(())
}

/// The current compiledir's entries against `max_size`, as ccache's `-s` shows its
/// cache size: `max_size: 0.1 / 5.0 GiB (2.0%) in the current compiledir`.
fn use_line(out: &mut impl Write, used: u64, max_size: u64) -> Result<()> {
    writeln!(
        out,
        "max_size: {} in the current compiledir",
        human::use_of_limit(used, max_size)
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
        Skip::UsedSince { last_use } => format!(
            "used {} ago, after it was chosen: kept",
            human::span(now.saturating_sub(*last_use))
        ),
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
    // The remote tier, for the compiledirs that used one: the totals, then each tier.
    let failures = |pairs: &[(&str, u64)]| {
        let errors = pairs
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if errors.is_empty() {
            "-".to_string()
        } else {
            errors
        }
    };
    let mut remote: Vec<Vec<String>> = Vec::new();
    for r in rows.iter().filter(|r| {
        let c = &r.counters;
        c.remote_hits + c.remote_misses + c.remote_uploads + c.remote_skipped > 0
            || remote_errors(c) > 0
    }) {
        let c = &r.counters;
        remote.push(vec![
            r.compiledir.clone(),
            c.remote_hits.to_string(),
            c.remote_misses.to_string(),
            c.remote_uploads.to_string(),
            human::size(c.remote_bytes_in),
            human::size(c.remote_bytes_out),
            ms(c.remote_ms),
            failures(&[
                ("connect", c.remote_err_connect),
                ("timeout", c.remote_err_timeout),
                ("auth", c.remote_err_auth),
                ("denied", c.remote_err_denied),
                ("full", c.remote_err_full),
                ("refused values", c.remote_rejected),
                ("other", c.remote_err_other),
                ("skipped (breaker open)", c.remote_skipped),
            ]),
        ]);
        for t in &r.remote_tiers {
            remote.push(vec![
                format!("  {}", t.tier),
                t.hits.to_string(),
                t.misses.to_string(),
                t.uploads.to_string(),
                human::size(t.bytes_in),
                human::size(t.bytes_out),
                ms(t.ms),
                failures(&[
                    ("connect", t.err_connect),
                    ("timeout", t.err_timeout),
                    ("auth", t.err_auth),
                    ("denied", t.err_denied),
                    ("full", t.err_full),
                    ("refused values", t.rejected),
                    ("other", t.err_other),
                    ("skipped (breaker open)", t.skipped),
                ]),
            ]);
        }
    }
    if let Some(current) = rows.iter().find(|r| r.current) {
        use_line(out, current.entries_bytes, current.max_size)?;
    }
    if !remote.is_empty() {
        writeln!(out)?;
        write!(
            out,
            "{}",
            human::table(
                &["REMOTE", "HITS", "MISSES", "UPLOADS", "IN", "OUT", "TIME", "FAILURES"],
                &remote,
                &[1, 2, 3, 4, 5, 6]
            )
        )?;
    }
    Ok(())
}

fn remote_errors(c: &xcache::store::stats::Counters) -> u64 {
    c.remote_err_connect
        + c.remote_err_timeout
        + c.remote_err_auth
        + c.remote_err_denied
        + c.remote_err_full
        + c.remote_rejected
        + c.remote_err_other
}

/// `xcache list --remote`: each tier's entries, fastest tier first. `--json`: the first
/// tier's report (as when there was only one kind of tier), and every tier's under
/// `tiers`.
pub fn remote_entries(
    out: &mut impl Write,
    probes: &[xcache::remote::Probe],
    json: bool,
) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(probes.first())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("tiers".into(), serde_json::to_value(probes)?);
        }
        return json_out(out, &v);
    }
    for (i, p) in probes.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        remote_tier_entries(out, p)?;
    }
    Ok(())
}

fn remote_tier_entries(out: &mut impl Write, p: &xcache::remote::Probe) -> Result<()> {
    let rows = p.entries.as_deref().unwrap_or_default();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.key[..12.min(e.key.len())].to_string(),
                human::size(e.bytes),
                match (e.ttl_secs, &e.last_modified) {
                    (Some(t), _) => human::expiry(t),
                    (None, Some(_)) => "lifecycle".into(),
                    (None, None) => "never".into(),
                },
            ]
        })
        .collect();
    if !cells.is_empty() {
        write!(
            out,
            "{}",
            human::table(&["KEY", "SIZE", "EXPIRES IN"], &cells, &[1])
        )?;
    }
    let total: u64 = rows.iter().map(|e| e.bytes).sum();
    writeln!(
        out,
        "{} {}, {} on {} for {} ({}, {} {:.1} ms)",
        rows.len(),
        if rows.len() == 1 { "entry" } else { "entries" },
        human::size(total),
        p.address,
        p.namespace.trim_end_matches([':', '/']),
        p.mode,
        if p.address.starts_with("s3://") {
            "LIST"
        } else {
            "PING"
        },
        p.latency_ms
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
            let holder = match (&l.held_by, &l.last_holder) {
                (Some(now), _) => now.clone(),
                (None, None) => "-".to_string(),
                (None, Some(h)) => format!(
                    "last: pid {} on {}{}",
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
            human::table(&["", "KEY", "GUARDS", "HOLDER"], &cells, &[])
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

/// `xcache show KEY`.
pub fn shown(
    out: &mut impl Write,
    r: &xcache::store::explain::ShowReport,
    store: &Store,
    json: bool,
) -> Result<()> {
    use xcache::store::explain::HeaderNow;
    if json {
        return json_out(out, r);
    }
    let now = now_secs(store);
    for e in &r.entries {
        let m = &e.meta;
        let k = &m.key_material;
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        writeln!(out, "entry     {}", m.key)?;
        writeln!(out, "path      {}", e.path.display())?;
        writeln!(
            out,
            "source    {} ({}), built {}, compiled in {} ms",
            m.source_name,
            k.language,
            human::age(m.created, now),
            m.compile_ms
        )?;
        writeln!(
            out,
            "artifact  {}, {}, blake3 {}",
            m.artifact.file,
            human::size(m.artifact.size),
            m.artifact.blake3
        )?;
        writeln!(
            out,
            "request   {}",
            m.request_key
                .as_deref()
                .unwrap_or("- (not dependency-tracked)")
        )?;
        if let Some(g) = &m.group {
            // Files another compiler built: who, under what key material, which files.
            writeln!(out, "producer  {}", m.producer())?;
            writeln!(out, "material  {}", human::terminal_safe_text(&g.material))?;
            for f in &g.members {
                writeln!(
                    out,
                    "file      {}, {}, blake3 {}",
                    human::terminal_safe_text(&f.file),
                    human::size(f.size),
                    f.blake3
                )?;
            }
            writeln!(out)?;
            continue;
        }
        writeln!(out, "key material")?;
        writeln!(out, "  source        blake3 {}", k.source_blake3)?;
        writeln!(out, "  compiler      {}", k.toolchain.path)?;
        writeln!(
            out,
            "  version       {}",
            k.toolchain.version.lines().next().unwrap_or("")
        )?;
        writeln!(out, "  binary        {}", k.toolchain.binary)?;
        writeln!(out, "  flags         {}", k.flags.join(" "))?;
        writeln!(
            out,
            "  target        {}{}",
            k.target.triple,
            k.target
                .cpu
                .as_deref()
                .map(|c| format!(" (cpu: {c})"))
                .unwrap_or_default()
        )?;
        let inputs: Vec<String> = k
            .extra_inputs
            .iter()
            .map(|x| format!("{} {}", x.name, &x.blake3[..16.min(x.blake3.len())]))
            .collect();
        writeln!(out, "  extra inputs  {}", dash(&inputs.join(", ")))?;
        writeln!(out, "  runtime tag   {}", dash(&k.runtime_tag))?;
        writeln!(
            out,
            "  template      {}",
            k.template
                .as_ref()
                .map(|t| t.display())
                .unwrap_or_else(|| "-".into())
        )?;
        let changed = e
            .headers
            .iter()
            .filter(|h| h.now != HeaderNow::Same)
            .count();
        writeln!(
            out,
            "headers   {} read by the compiler{}",
            e.headers.len(),
            if changed > 0 {
                format!(", {changed} changed since")
            } else {
                String::new()
            }
        )?;
        for h in &e.headers {
            let state = match h.now {
                HeaderNow::Same => "",
                HeaderNow::Changed => "  CHANGED",
                HeaderNow::Missing => "  MISSING",
            };
            writeln!(
                out,
                "  {}  {}{state}",
                &h.blake3[..16.min(h.blake3.len())],
                h.path
            )?;
        }
        writeln!(out)?;
    }
    for m in &r.manifests {
        writeln!(out, "request   {}", m.request_key)?;
        writeln!(out, "manifest  {}", m.path.display())?;
        let cells: Vec<Vec<String>> = m
            .results
            .iter()
            .map(|x| {
                vec![
                    x.key[..12].to_string(),
                    x.headers.to_string(),
                    human::age(x.created, now),
                    human::age(x.last_used, now),
                    if x.entry_exists { "yes" } else { "removed" }.to_string(),
                    if x.matches_now { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            human::table(
                &[
                    "RESULT",
                    "HEADERS",
                    "BUILT",
                    "LAST USED",
                    "ENTRY",
                    "MATCHES NOW"
                ],
                &cells,
                &[1]
            )
        )?;
        writeln!(out)?;
    }
    Ok(())
}

/// A table whose last column may be empty in some rows, without trailing spaces.
fn table_trimmed(header: &[&str], cells: &[Vec<String>], right: &[usize]) -> String {
    human::table(header, cells, right)
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// Drops the last column of a table when no row has anything in it.
fn drop_empty_last(header: &mut Vec<&str>, cells: &mut [Vec<String>]) {
    if cells.iter().all(|r| r.last().is_none_or(|c| c.is_empty())) {
        header.pop();
        for r in cells.iter_mut() {
            r.pop();
        }
    }
}

/// `xcache export`.
pub fn exported(
    out: &mut impl Write,
    r: &xcache::remote::bundle::ExportReport,
    json: bool,
) -> Result<()> {
    use xcache::remote::bundle::ExportOutcome;
    if json {
        return json_out(out, r);
    }
    let several = r
        .entries
        .iter()
        .map(|e| &e.compiledir)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    let mut cells: Vec<Vec<String>> = r
        .entries
        .iter()
        .map(|e| {
            let mut row = vec![
                match e.outcome {
                    ExportOutcome::Exported => "exported",
                    ExportOutcome::Skipped { .. } => "skipped",
                }
                .to_string(),
                e.key[..12].to_string(),
                e.source.clone(),
            ];
            if several {
                row.push(e.compiledir.clone());
            }
            row.push(if e.bytes > 0 {
                human::size(e.bytes)
            } else {
                "-".into()
            });
            row.push(match &e.outcome {
                ExportOutcome::Skipped { reason } => reason.clone(),
                ExportOutcome::Exported => String::new(),
            });
            row
        })
        .collect();
    let mut header = vec!["", "KEY", "SOURCE"];
    if several {
        header.push("COMPILEDIR");
    }
    header.extend(["SIZE", "NOTE"]);
    let size_col = header.len() - 2;
    drop_empty_last(&mut header, &mut cells);
    if !cells.is_empty() {
        write!(out, "{}", table_trimmed(&header, &cells, &[size_col]))?;
    }
    let exported = r.exported().count() as u64;
    let skipped = r.entries.len() as u64 - exported;
    let mut total = format!(
        "{} exported to {} ({}, {})",
        human::count(exported, "entry", "entries"),
        r.path.display(),
        human::size(r.bytes),
        if r.signed { "signed" } else { "unsigned" }
    );
    if skipped > 0 {
        total += &format!("; {skipped} skipped (see NOTE)");
    }
    if let (Some(since), true) = (r.since_secs, r.older > 0) {
        total += &format!(
            "; {} unused for longer than {} left out",
            human::count(r.older, "entry", "entries"),
            setting_duration(since)
        );
    }
    writeln!(out, "{total}")?;
    Ok(())
}

/// `xcache import`. The exit status follows [`ImportReport::clean`].
///
/// [`ImportReport::clean`]: xcache::remote::bundle::ImportReport::clean
pub fn imported(
    out: &mut impl Write,
    r: &xcache::remote::bundle::ImportReport,
    json: bool,
) -> Result<()> {
    use xcache::remote::bundle::{ImportOutcome as O, Signature};
    if json {
        let mut v = serde_json::to_value(r)?;
        v["clean"] = json!(r.clean());
        return json_out(out, &v);
    }
    let mut cells: Vec<Vec<String>> = r
        .entries
        .iter()
        .map(|e| {
            let (word, note) = match &e.outcome {
                O::Imported => ("imported", String::new()),
                O::AlreadyHere => ("already here", String::new()),
                O::OtherPlatform => ("skipped", format!("for another platform: {}", e.compiledir)),
                O::Refused { reason, .. } => ("REFUSED", reason.clone()),
                O::Corrupt { reason } => ("CORRUPT", reason.clone()),
            };
            vec![
                word.to_string(),
                e.key[..12].to_string(),
                e.source.clone(),
                human::size(e.bytes),
                note,
            ]
        })
        .collect();
    let mut header = vec!["", "KEY", "SOURCE", "SIZE", "NOTE"];
    drop_empty_last(&mut header, &mut cells);
    if !cells.is_empty() {
        write!(out, "{}", table_trimmed(&header, &cells, &[3]))?;
    }
    let counts: Vec<String> = [
        (r.count(|o| *o == O::Imported), "imported"),
        (r.count(|o| *o == O::AlreadyHere), "already here"),
        (
            r.count(|o| *o == O::OtherPlatform),
            "skipped (another platform)",
        ),
        (r.count(|o| matches!(o, O::Refused { .. })), "refused"),
        (r.count(|o| matches!(o, O::Corrupt { .. })), "corrupt"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    writeln!(
        out,
        "{} in {} ({}){}{}",
        human::count(r.entries.len() as u64, "entry", "entries"),
        r.path.display(),
        match r.signature {
            Signature::Verified => "signature verified",
            Signature::Unsigned => "unsigned",
            Signature::NotChecked => "signed; not checked: no remote_sign_key here",
        },
        if counts.is_empty() { "" } else { ": " },
        counts.join(", ")
    )?;
    if r.count(|o| *o == O::OtherPlatform) > 0 {
        writeln!(
            out,
            "note: entries for another platform (OS, kernel, arch, libc or runtime tag) are skipped: this machine imports into {}",
            r.compiledir
        )?;
    }
    if let Some(d) = &r.damaged {
        writeln!(
            out,
            "the bundle is damaged ({d}): the entries after the damage were not read"
        )?;
    }
    if r.unexpected_count > 0 {
        writeln!(
            out,
            "note: {} that the index does not list ignored",
            human::count(r.unexpected_count, "member", "members")
        )?;
    }
    Ok(())
}
