//! Human-readable sizes, ages and durations for the CLI's tables, and the one place
//! that makes text from data safe to show on a terminal ([`terminal_safe`]).

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::Duration;

/// True for a character a terminal would act on, or that would reorder what is shown,
/// rather than display: control characters (C0, DEL, C1: escape sequences start with
/// ESC or CSI) and the bidirectional formatting characters.
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| acts_on_terminal(c) && !keep.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !acts_on_terminal(c) || keep.contains(&c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Text from data (a source name, a path, a member of a bundle, a message that carries
/// them) as it may be shown on a terminal: every character a terminal would act on is
/// shown escaped (`\x1b`, `\x07`, `\u{202e}`), never emitted; a line break too, so
/// that one name stays one table cell. Everything xcache prints for people goes
/// through here (tables, [`TerminalSafe`], errors and warnings); `--json` does not
/// need to: JSON escapes control characters itself.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    escape(s, &[])
}

/// [`terminal_safe`] for text of several lines (compiler output, an error with its
/// causes): line breaks and tabs are kept, everything else is escaped alike.
pub fn terminal_safe_text(s: &str) -> Cow<'_, str> {
    escape(s, &['\n', '\t'])
}

/// A writer that shows what goes through it with [`terminal_safe_text`], a line at a
/// time (so that a character split between two writes is whole when it is looked at).
/// The human output of every command goes through one; with `active` false (JSON, or
/// a path printed for a script to use) it passes bytes through unchanged.
pub struct TerminalSafe<W: Write> {
    inner: W,
    active: bool,
    pending: Vec<u8>,
}

impl<W: Write> TerminalSafe<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, active: bool) -> TerminalSafe<W> {
        TerminalSafe {
            inner,
            active,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(bytes);
        self.inner.write_all(terminal_safe_text(&text).as_bytes())
    }
}

impl<W: Write> Write for TerminalSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.active {
            return self.inner.write(buf);
        }
        match buf.iter().rposition(|&b| b == b'\n') {
            None => self.pending.extend_from_slice(buf),
            Some(end) if self.pending.is_empty() => {
                self.emit(&buf[..=end])?;
                self.pending.extend_from_slice(&buf[end + 1..]);
            }
            Some(end) => {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(&buf[..=end]);
                self.emit(&line)?;
                self.pending.extend_from_slice(&buf[end + 1..]);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for TerminalSafe<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

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

/// Use against a limit, as ccache shows its cache size: `0.1 / 5.0 GiB (2.0%)`, both in
/// the limit's unit; a use too small to show in that unit keeps its own
/// (`102 KiB / 5.0 GiB (0.0%)`); a limit of 0 is none (`102 KiB, no limit`).
pub fn use_of_limit(used: u64, limit: u64) -> String {
    if limit == 0 {
        return format!("{}, no limit", size(used));
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit < UNITS.len() - 1 && limit >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = (1u64 << (10 * unit)) as f64;
    let pct = 100.0 * used as f64 / limit as f64;
    let (u, l) = (used as f64 / scale, limit as f64 / scale);
    if unit == 0 {
        format!("{used} / {limit} B ({pct:.1}%)")
    } else if u >= 0.05 {
        format!("{u:.1} / {l:.1} {} ({pct:.1}%)", UNITS[unit])
    } else {
        format!("{} / {l:.1} {} ({pct:.1}%)", size(used), UNITS[unit])
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

/// A time to come, rounded to its largest unit as settings are written: `30d`, `5h`,
/// `12m`, `45s` (a remote entry's expiry: `30d`, not `43199m55s`).
pub fn expiry(secs: u64) -> String {
    let round = |unit: u64| (secs + unit / 2) / unit;
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", round(60)),
        7200..=172_799 => format!("{}h", round(3600)),
        _ => format!("{}d", round(86_400)),
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
    // Measured as shown: an escape sequence in a name is shown escaped, not skipped.
    for c in rows.iter_mut().flatten() {
        if let Cow::Owned(safe) = terminal_safe(c) {
            *c = safe;
        }
    }
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
/// `right` are right-aligned (numbers), the rest left-aligned. Cells are shown with
/// [`terminal_safe`].
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let safe: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| terminal_safe(c)).collect())
        .collect();
    let rows = &safe;
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
        out.push_str(&line(r.iter().map(|c| c.as_ref()).collect()));
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
    fn use_against_a_limit() {
        assert_eq!(use_of_limit(107 << 20, 5 << 30), "0.1 / 5.0 GiB (2.1%)");
        assert_eq!(use_of_limit(104 << 10, 5 << 30), "104 KiB / 5.0 GiB (0.0%)");
        assert_eq!(use_of_limit(3 << 30, 2 << 30), "3.0 / 2.0 GiB (150.0%)");
        assert_eq!(use_of_limit(512, 1000), "512 / 1000 B (51.2%)");
        assert_eq!(use_of_limit(104 << 10, 0), "104 KiB, no limit");
    }

    #[test]
    fn expiries() {
        assert_eq!(expiry(43_199 * 60 + 55), "30d");
        assert_eq!(expiry(5 * 3600 - 10), "5h");
        assert_eq!(expiry(12 * 60 + 20), "12m");
        assert_eq!(expiry(45), "45s");
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
    fn what_a_terminal_would_act_on_is_shown_escaped() {
        let name = "k\x1b]0;pwned\x07\x1b[2J\u{202e}c.\u{9b}1m\tx\ny.c";
        assert_eq!(
            terminal_safe(name),
            "k\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}c.\\x9b1m\\x09x\\x0ay.c"
        );
        assert_eq!(
            terminal_safe_text(name),
            "k\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}c.\\x9b1m\tx\ny.c"
        );
        assert!(matches!(terminal_safe("plain é.c"), Cow::Borrowed(_)));
        // In a table, the escaped name is one cell and the columns still align.
        let t = table(
            &["SOURCE", "SIZE"],
            &[
                vec![name.into(), "1 B".into()],
                vec!["k.c".into(), "2 B".into()],
            ],
            &[1],
        );
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert_eq!(lines[1].chars().count(), lines[2].chars().count(), "{t}");
        // Through the writer, even when a write splits a line or a character.
        let mut out = TerminalSafe::new(Vec::new(), true);
        let bytes = format!("{name}\nnext \u{9b} line\n");
        let (a, b) = bytes.as_bytes().split_at(bytes.find('\u{9b}').unwrap() + 1);
        out.write_all(a).unwrap();
        out.write_all(b).unwrap();
        out.flush().unwrap();
        let shown = String::from_utf8(std::mem::take(&mut out.inner)).unwrap();
        assert_eq!(
            shown,
            format!("{}\nnext \\x9b line\n", terminal_safe_text(name))
        );
        // Inactive (JSON): unchanged.
        let mut raw = TerminalSafe::new(Vec::new(), false);
        raw.write_all(b"\x1b[2J").unwrap();
        assert_eq!(std::mem::take(&mut raw.inner), b"\x1b[2J");
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
