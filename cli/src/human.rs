//! Human-readable sizes, ages and durations for the CLI's tables.

use std::time::Duration;

/// `1 entry`, `2 entries`, `0 entries`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1536` → `1.5 KiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// How long ago `then` was, seen from `now` (both Unix seconds): `just now`, `5m ago`,
/// `3h ago`, `2d ago`, `7w ago`.
pub fn age(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        86_400..=1_209_599 => format!("{}d ago", s / 86_400),
        _ => format!("{}w ago", s / 604_800),
    }
}

/// A span of time, as people say one: `45 s`, `12 min`, `5 h`, `40 days`.
pub fn span(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// `850ms`, `1.2s`, `2m05s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The width to fit tables into: `$COLUMNS` when set, else the terminal's when stdout
/// is one; `None` (no limit) when writing to a pipe or a file, so that scripts and
/// `grep` see every character.
pub fn output_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(n);
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_rows, cols)| cols as usize)
}

/// Shortens the cells of column `col` (with an ellipsis) so that the table of `header`
/// and `rows`, as [`table`] lays it out, fits in `width` characters; the column keeps
/// at least 12 characters whatever the width.
pub fn shrink_column(header: &[&str], rows: &mut [Vec<String>], col: usize, width: usize) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| console::measure_text_width(c)))
                .chain(std::iter::once(console::measure_text_width(header[i])))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let others: usize = widths
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != col)
        .map(|(_, w)| w)
        .sum::<usize>()
        + 2 * (header.len() - 1);
    let room = width.saturating_sub(others).max(12);
    if widths[col] <= room {
        return;
    }
    for r in rows.iter_mut() {
        if let Some(c) = r.get_mut(col) {
            *c = console::truncate_str(c, room, "…").into_owned();
        }
    }
}

/// Lays out rows in columns: each column as wide as its widest cell; columns listed in
/// `right` are right-aligned (numbers), the rest left-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < n {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(15 << 20), "15 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn counts() {
        assert_eq!(count(1, "entry", "entries"), "1 entry");
        assert_eq!(count(0, "entry", "entries"), "0 entries");
        assert_eq!(count(2, "hit", "hits"), "2 hits");
    }

    #[test]
    fn ages() {
        assert_eq!(age(100, 100), "just now");
        assert_eq!(age(0, 300), "5m ago");
        assert_eq!(age(0, 3 * 3600 + 5), "3h ago");
        assert_eq!(age(0, 2 * 86_400), "2d ago");
        assert_eq!(age(0, 70 * 86_400), "10w ago");
        assert_eq!(age(500, 100), "just now");
    }

    #[test]
    fn spans() {
        assert_eq!(span(45), "45 s");
        assert_eq!(span(12 * 60), "12 min");
        assert_eq!(span(5 * 3600), "5 h");
        assert_eq!(span(40 * 86_400 + 1), "40 days");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.2s");
        assert_eq!(duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn a_long_column_is_shortened_to_fit() {
        let header = ["KEY", "SOURCE", "SIZE"];
        let mut rows = vec![
            vec!["ab".into(), "x".repeat(100), "1 KiB".into()],
            vec!["cd".into(), "short.c".into(), "2 KiB".into()],
        ];
        shrink_column(&header, &mut rows, 1, 40);
        let t = table(&header, &rows, &[2]);
        assert!(t.lines().all(|l| l.chars().count() <= 40), "{t}");
        assert!(
            rows[0][1].ends_with('…') && rows[1][1] == "short.c",
            "{rows:?}"
        );
        // Never below 12 characters, however narrow.
        shrink_column(&header, &mut rows, 1, 5);
        assert_eq!(rows[0][1].chars().count(), 12);
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["KEY", "SIZE", "NAME"],
            &[
                vec!["ab".into(), "1.5 KiB".into(), "x.c".into()],
                vec!["abcdef".into(), "12 B".into(), "long_name.c".into()],
            ],
            &[1],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "KEY        SIZE  NAME");
        assert_eq!(lines[1], "ab      1.5 KiB  x.c");
        assert_eq!(lines[2], "abcdef     12 B  long_name.c");
    }
}
