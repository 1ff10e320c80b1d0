//! Human and JSON output of the verbs that report more than a path.

use std::io::Write;

use anyhow::Result;
use serde_json::json;
use xcache::compile::template::Template;
use xcache::ops::demo::DemoReport;
use xcache::ops::human;

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
    writeln!(out, "Used the cpu")?;
    Ok(())
}
