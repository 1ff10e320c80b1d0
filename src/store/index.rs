//! The index of a compiledir: what `list`, `size`, `prune`, `clear` and `basecompiledir
//! list` read instead of every entry's `entry.json` and `last-use`.
//!
//! # Format
//!
//! `index` starts with the line `# xcache-index 1`, then holds a log of lines, each a
//! record of tab-separated fields (a tab, newline, carriage return or backslash inside a
//! field is escaped as `\t`, `\n`, `\r`, `\\`):
//!
//! - `I key`: the entry `key` is about to appear or go (an intent; see below);
//! - `A key created compile_ms size disk_size last_use handed_out language target source
//!   template [param value]...`: the entry `key` is published with these facts (a time is
//!   Unix seconds or `-`; `template` is `-` or `+name`, followed by its parameters);
//! - `U key secs`: its last use was recorded at `secs`;
//! - `H key secs`: its path was handed out at `secs`;
//! - `D key`: it was removed (or quarantined).
//!
//! Other lines starting with `#` are comments. A line that is not complete (no final
//! newline) or does not parse is skipped and counted; records of an unknown kind
//! likewise.
//!
//! # Protocol
//!
//! - Only a rewrite creates the file (with its first line); writers append to the file
//!   that exists, one `write(2)` per batch of whole records, `O_APPEND`, holding a shared
//!   lock on `index.lock`. A rewrite takes the exclusive lock, reads the log and the fan
//!   directories again under it, writes a temporary file and renames it over `index`:
//!   no appended record is lost. A new compiledir gets an empty index when it is made.
//! - Publishing `key`: `I`, the rename into `entries/`, `A`. Removing it: `I`, the
//!   rename out, `D`. Both under the key's lock, so the records of one key are in the
//!   order of the events. `U` and `H` follow the markers they mirror, under the key's
//!   lock as well.
//! - A reader replays the log. A key whose last record is `I` (a writer died between
//!   the intent and its outcome, or is between them now) is settled by looking at the
//!   entry directory itself: there, it is listed (from the earlier `A`, or read from its
//!   own files); not there, not listed. So a crash at any step leaves an index that says
//!   what is on disk.
//! - What the index cannot see: entries copied in or deleted by hand, or by a process
//!   that could not write the index. A missing or unreadable index is rebuilt from the
//!   entries by the next reader; a rewrite (when bad lines appear, or the log outgrows
//!   twice its live records plus 1024) reconciles with the fan directories; `xcache
//!   verify` compares the index with every entry and `--repair` rebuilds it. Loading a
//!   library never consults the index: the entries are the truth.
//! - `last_use` and `handed_out` in the index are as coarse as the markers' own
//!   resolution (`last_use_resolution`): `U` and `H` are appended only when the
//!   `last-use` marker is rewritten. The collectors re-read both markers under the key's
//!   lock before removing anything.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::key::Key;
use super::layout;
use super::lock::{self, LockGuard};
use super::scan::{self, EntryRow};
use crate::error::{Error, Result};
use crate::fsx::{OpenHow, Root};

/// The first line of an index.
const HEADER: &str = "# xcache-index 1\n";

/// Extra records, beyond twice the live ones, that an index may carry before a reader
/// rewrites it.
const SLACK: usize = 1024;

/// What a reader found about the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexHealth {
    /// Whether a usable index was there (a regular file starting with its header).
    pub present: bool,
    /// Records read.
    pub records: usize,
    /// Lines that could not be parsed, or were incomplete.
    pub bad_lines: usize,
    /// Keys whose last record was an intent, settled by looking at the entry.
    pub settled: usize,
    /// Entries listed.
    pub live: usize,
    /// Whether this read rewrote the index (from the entries and the log).
    pub rewritten: bool,
}

impl IndexHealth {
    /// Whether a rewrite is due: missing, bad lines, or too many dead records.
    pub fn needs_rewrite(&self) -> bool {
        !self.present || self.bad_lines > 0 || self.records > 2 * self.live + SLACK
    }
}

/// The entries of a compiledir as the index gives them.
#[derive(Debug)]
pub struct Listing {
    /// One row per entry, sorted by key.
    pub rows: Vec<EntryRow>,
    /// What was found about the index.
    pub health: IndexHealth,
}

/// One entry in a [`Snapshot`]: the numbers, parsed; the names, parsed on demand.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key.
    pub key: Key,
    /// Apparent bytes.
    pub size: u64,
    /// Bytes on disk.
    pub disk_size: u64,
    /// Creation, Unix seconds.
    pub created: u64,
    /// Last use, Unix seconds.
    pub last_use: Option<u64>,
    /// Last hand-out, Unix seconds.
    pub handed_out: Option<u64>,
    /// Compile time, ms.
    pub compile_ms: u64,
    body: Body,
}

impl Item {
    /// Last use, or creation when never used since: what age decisions go by.
    pub fn last_touch(&self) -> u64 {
        self.last_use.unwrap_or(self.created)
    }
}

#[derive(Debug, Clone)]
enum Body {
    /// The names of an `A` record: bytes `start..end` of the snapshot's buffer.
    Line(usize, usize),
    /// An entry read from its own files.
    Row(Box<EntryRow>),
}

/// The entries of a compiledir as its index says, with their numbers parsed and their
/// names left in the index's bytes until asked for: what `size` and `prune` need.
#[derive(Debug)]
pub struct Snapshot {
    buf: Vec<u8>,
    items: Vec<Item>,
    cd_path: PathBuf,
    compiledir: String,
    /// What was found about the index.
    pub health: IndexHealth,
}

impl Snapshot {
    /// The entries, sorted by key.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The full row of `items()[i]`.
    pub fn row(&self, i: usize) -> EntryRow {
        let it = &self.items[i];
        let names = match &it.body {
            Body::Row(row) => return (**row).clone(),
            Body::Line(s, e) => std::str::from_utf8(&self.buf[*s..*e])
                .ok()
                .and_then(parse_names),
        };
        // Checked when the log was read: a record that does not parse is never an item.
        let n = names.unwrap_or_default();
        EntryRow {
            key: it.key.hex(),
            source: n.source,
            producer: super::group::producer_of_language(&n.language).to_string(),
            language: n.language,
            target: n.target,
            template: n.template,
            params: n.params,
            size: it.size,
            disk_size: it.disk_size,
            created: it.created,
            last_use: it.last_use,
            handed_out: it.handed_out,
            compile_ms: it.compile_ms,
            compiledir: self.compiledir.clone(),
            path: self.cd_path.join(layout::entry(&it.key)),
            status: "ok".into(),
        }
    }

    /// Every row, sorted by key.
    pub fn into_rows(self) -> Vec<EntryRow> {
        let idx: Vec<usize> = (0..self.items.len()).collect();
        scan::parallel_map(&idx, |&i| self.row(i))
    }

    fn of_rows(cd: &Root, rows: Vec<EntryRow>, health: IndexHealth) -> Snapshot {
        let items = rows
            .into_iter()
            .filter_map(|r| {
                Some(Item {
                    key: r.key()?,
                    size: r.size,
                    disk_size: r.disk_size,
                    created: r.created,
                    last_use: r.last_use,
                    handed_out: r.handed_out,
                    compile_ms: r.compile_ms,
                    body: Body::Row(Box::new(r)),
                })
            })
            .collect();
        Snapshot {
            buf: Vec::new(),
            items,
            cd_path: cd.path().to_path_buf(),
            compiledir: compiledir_name(cd),
            health,
        }
    }
}

// ---- records ----

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    if !s.contains('\\') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match it.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

fn opt_secs(t: Option<u64>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}

/// The `A` record of a row (only rows whose status is `ok` are recorded).
pub fn add_record(row: &EntryRow) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "A\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        row.key,
        row.created,
        row.compile_ms,
        row.size,
        row.disk_size,
        opt_secs(row.last_use),
        opt_secs(row.handed_out)
    );
    for f in [&row.language, &row.target, &row.source] {
        escape(f, &mut s);
        s.push('\t');
    }
    match &row.template {
        None => s.push('-'),
        Some(t) => {
            s.push('+');
            escape(t, &mut s);
            for (k, v) in row.params.iter().flatten() {
                s.push('\t');
                escape(k, &mut s);
                s.push('\t');
                escape(v, &mut s);
            }
        }
    }
    s.push('\n');
    s
}

/// The `I` record: `key` is about to appear or go.
pub fn intent_record(key: &Key) -> String {
    format!("I\t{}\n", key.hex())
}

/// The `U` record: last use of `key` at `secs`.
pub fn use_record(key: &Key, secs: u64) -> String {
    format!("U\t{}\t{secs}\n", key.hex())
}

/// The `H` record: `key` handed out at `secs`.
pub fn hand_out_record(key: &Key, secs: u64) -> String {
    format!("H\t{}\t{secs}\n", key.hex())
}

/// The `D` record: `key` removed.
pub fn remove_record(key: &Key) -> String {
    format!("D\t{}\n", key.hex())
}

/// The names of an `A` record, parsed.
#[derive(Debug, Default)]
struct Names {
    language: String,
    target: String,
    source: String,
    template: Option<String>,
    params: Option<Vec<(String, String)>>,
}

fn parse_names(s: &str) -> Option<Names> {
    let mut f = s.split('\t');
    let language = unescape(f.next()?)?;
    let target = unescape(f.next()?)?;
    let source = unescape(f.next()?)?;
    let t = f.next()?;
    let (template, params) = if t == "-" {
        (None, None)
    } else {
        let name = unescape(t.strip_prefix('+')?)?;
        let mut params = Vec::new();
        while let Some(k) = f.next() {
            params.push((unescape(k)?, unescape(f.next()?)?));
        }
        (Some(name), Some(params))
    };
    if f.next().is_some() {
        return None;
    }
    Some(Names {
        language,
        target,
        source,
        template,
        params,
    })
}

/// Whether the names of an `A` record parse, without building them.
fn names_ok(s: &[u8]) -> bool {
    let mut fields = 0usize;
    let mut escaped = false;
    for &b in s {
        if escaped {
            if !matches!(b, b'\\' | b't' | b'n' | b'r') {
                return false;
            }
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'\t' {
            fields += 1;
        }
    }
    if escaped || std::str::from_utf8(s).is_err() {
        return false;
    }
    let fields = fields + 1;
    // language, target, source, then `-` alone or `+name` with pairs.
    let tail_start = s
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\t')
        .nth(2)
        .map(|(i, _)| i + 1);
    match tail_start.map(|i| &s[i..]) {
        Some(t) if t == b"-" => fields == 4,
        Some(t) if t.first() == Some(&b'+') => fields >= 4 && (fields - 4).is_multiple_of(2),
        _ => false,
    }
}

fn hex_key(s: &[u8]) -> Option<Key> {
    if s.len() != 64 {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn opt_num(s: &[u8]) -> Option<Option<u64>> {
    if s == b"-" {
        Some(None)
    } else {
        num(s).map(Some)
    }
}

enum Record {
    Intent(Key),
    Add(Box<Item>),
    Use(Key, u64),
    HandOut(Key, u64),
    Remove(Key),
}

/// Parses the line at `buf[start..end]` (without its newline).
fn parse_line(buf: &[u8], start: usize, end: usize) -> Option<Record> {
    let line = &buf[start..end];
    let mut cut = line.splitn(9, |&b| b == b'\t');
    let kind = cut.next()?;
    let key = hex_key(cut.next()?)?;
    let rec = match kind {
        b"A" => {
            let created = num(cut.next()?)?;
            let compile_ms = num(cut.next()?)?;
            let size = num(cut.next()?)?;
            let disk_size = num(cut.next()?)?;
            let last_use = opt_num(cut.next()?)?;
            let handed_out = opt_num(cut.next()?)?;
            let names = cut.next()?;
            if !names_ok(names) {
                return None;
            }
            let names_start = end - names.len();
            Record::Add(Box::new(Item {
                key,
                size,
                disk_size,
                created,
                last_use,
                handed_out,
                compile_ms,
                body: Body::Line(names_start, end),
            }))
        }
        b"U" | b"H" => {
            let t = num(cut.next()?)?;
            if cut.next().is_some() {
                return None;
            }
            if kind == b"U" {
                Record::Use(key, t)
            } else {
                Record::HandOut(key, t)
            }
        }
        b"I" | b"D" => {
            if cut.next().is_some() {
                return None;
            }
            if kind == b"I" {
                Record::Intent(key)
            } else {
                Record::Remove(key)
            }
        }
        _ => return None,
    };
    Some(rec)
}

/// Hashes a key by its bytes with a cheap mix: keys are blake3 output, already uniform.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;
type KeySet = HashSet<Key, std::hash::BuildHasherDefault<KeyHasher>>;

/// Parses the lines of `buf[from..]`, on every CPU for a large log; order is kept.
fn parse_all(buf: &[u8], from: usize, health: &mut IndexHealth) -> Vec<Record> {
    let body = &buf[from..];
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Chunk boundaries just after a newline.
    let mut bounds = vec![from];
    if body.len() > 1 << 20 && workers > 1 {
        for w in 1..workers {
            let guess = from + body.len() * w / workers;
            if let Some(nl) = buf[guess..].iter().position(|&b| b == b'\n') {
                let at = guess + nl + 1;
                if at > *bounds.last().unwrap_or(&from) && at < buf.len() {
                    bounds.push(at);
                }
            }
        }
    }
    bounds.push(buf.len());
    let chunks: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    let parse = |&(s, e): &(usize, usize)| {
        let mut out = Vec::new();
        let (mut records, mut bad) = (0usize, 0usize);
        let mut at = s;
        while at < e {
            let Some(nl) = buf[at..e].iter().position(|&b| b == b'\n') else {
                bad += 1; // an append cut short
                break;
            };
            let end = at + nl;
            if end > at && buf[at] != b'#' {
                records += 1;
                match parse_line(buf, at, end) {
                    Some(r) => out.push(r),
                    None => bad += 1,
                }
            }
            at = end + 1;
        }
        (out, records, bad)
    };
    let parsed: Vec<_> = if chunks.len() == 1 {
        chunks.iter().map(parse).collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|c| s.spawn(move || parse(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("index parser"))
                .collect()
        })
    };
    let mut all = Vec::new();
    for (out, records, bad) in parsed {
        health.records += records;
        health.bad_lines += bad;
        all.extend(out);
    }
    all
}

/// The index's state after replaying the log: the entries it lists, and the keys whose
/// last record is an intent.
fn replay(buf: &[u8], from: usize, health: &mut IndexHealth) -> (KeyMap<Item>, KeySet) {
    let mut map = KeyMap::default();
    let mut pending = KeySet::default();
    for rec in parse_all(buf, from, health) {
        match rec {
            Record::Intent(key) => {
                pending.insert(key);
            }
            Record::Add(item) => {
                pending.remove(&item.key);
                map.insert(item.key, *item);
            }
            // The last record wins: a bundle's import moves a last use back.
            Record::Use(key, t) => {
                if let Some(e) = map.get_mut(&key) {
                    e.last_use = Some(t);
                }
            }
            Record::HandOut(key, t) => {
                if let Some(e) = map.get_mut(&key) {
                    e.handed_out = Some(e.handed_out.map_or(t, |p| p.max(t)));
                }
            }
            Record::Remove(key) => {
                pending.remove(&key);
                map.remove(&key);
            }
        }
    }
    (map, pending)
}

/// The index's bytes, if it is a regular file that starts with its header (a planted
/// link is never followed).
fn read_index(cd: &Root) -> Option<Vec<u8>> {
    let mut f = cd.open_file(layout::INDEX, OpenHow::read()).ok()?;
    let st = f.metadata().ok()?;
    if !st.is_file() {
        return None;
    }
    let mut bytes = Vec::with_capacity(st.len() as usize);
    f.read_to_end(&mut bytes).ok()?;
    bytes.starts_with(HEADER.as_bytes()).then_some(bytes)
}

fn compiledir_name(cd: &Root) -> String {
    cd.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads the index alone: `None` if there is no usable one.
fn read_snapshot(cd: &Root) -> Option<Snapshot> {
    let buf = read_index(cd)?;
    let mut health = IndexHealth {
        present: true,
        ..IndexHealth::default()
    };
    let (mut map, pending) = replay(&buf, HEADER.len(), &mut health);
    let compiledir = compiledir_name(cd);
    for key in pending {
        health.settled += 1;
        let there = cd
            .lstat_fast(layout::entry(&key))
            .is_ok_and(|st| crate::fsx::Kind::of_stat(&st) == crate::fsx::Kind::Dir);
        if !there {
            map.remove(&key);
        } else if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
            let row = scan::entry_row(cd, &key, &compiledir);
            slot.insert(Item {
                key,
                size: row.size,
                disk_size: row.disk_size,
                created: row.created,
                last_use: row.last_use,
                handed_out: row.handed_out,
                compile_ms: row.compile_ms,
                body: Body::Row(Box::new(row)),
            });
        }
    }
    let mut items: Vec<Item> = map.into_values().collect();
    items.sort_unstable_by_key(|it| it.key);
    health.live = items.len();
    Some(Snapshot {
        buf,
        items,
        cd_path: cd.path().to_path_buf(),
        compiledir,
        health,
    })
}

/// The entries of the compiledir `cd` as its index says (see the module doc),
/// rewriting the index first when it is missing, damaged or bloated.
pub fn snapshot(cd: &Root) -> Result<Snapshot> {
    let snap = read_snapshot(cd);
    let health = snap.as_ref().map(|s| s.health).unwrap_or_default();
    if !health.needs_rewrite() {
        if let Some(s) = snap {
            return Ok(s);
        }
    }
    let mut known = KeyMap::default();
    if let Some(s) = &snap {
        // Rows already read from their own files need not be read again.
        for it in &s.items {
            if let Body::Row(r) = &it.body {
                known.insert(it.key, (**r).clone());
            }
        }
    }
    match rewrite(cd, &mut known) {
        Ok(Some(rows)) => {
            let health = IndexHealth {
                present: true,
                live: rows.len(),
                rewritten: true,
                ..health
            };
            Ok(Snapshot::of_rows(cd, rows, health))
        }
        other => {
            if let Err(e) = other {
                log::debug!("index of {} not rewritten: {e}", cd.path().display());
            }
            match snap {
                Some(s) => Ok(s),
                // No index, and it cannot be written now: read every entry.
                None => {
                    let rows = reconcile(cd, &mut known)?;
                    let live = rows.len();
                    Ok(Snapshot::of_rows(cd, rows, IndexHealth { live, ..health }))
                }
            }
        }
    }
}

/// Every entry of the compiledir `cd`, with its names, sorted by key (see
/// [`snapshot`]).
pub fn load(cd: &Root) -> Result<Listing> {
    let snap = snapshot(cd)?;
    let health = snap.health;
    Ok(Listing {
        rows: snap.into_rows(),
        health,
    })
}

/// What the index lists, reconciled with the fan directories: every entry on disk, from
/// the index when it lists it, else from `known`, else read from its own files.
fn reconcile(cd: &Root, known: &mut KeyMap<EntryRow>) -> Result<Vec<EntryRow>> {
    let listed = read_snapshot(cd);
    let mut by_key: KeyMap<usize> = KeyMap::default();
    if let Some(s) = &listed {
        for (i, it) in s.items.iter().enumerate() {
            by_key.insert(it.key, i);
        }
    }
    let mut keys = scan::entry_keys(cd)?;
    keys.sort_unstable();
    let compiledir = compiledir_name(cd);
    let mut rows: Vec<Option<EntryRow>> = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        rows.push(match (&listed, by_key.get(key)) {
            (Some(s), Some(&j)) => Some(s.row(j)),
            _ => match known.remove(key) {
                Some(r) => Some(r),
                None => {
                    missing.push((i, *key));
                    None
                }
            },
        });
    }
    let read = scan::parallel_map(&missing, |(_, k)| scan::entry_row(cd, k, &compiledir));
    for ((i, _), row) in missing.into_iter().zip(read) {
        rows[i] = Some(row);
    }
    Ok(rows.into_iter().flatten().collect())
}

/// Rewrites the index from the log and the entries under the exclusive index lock;
/// returns the rows it wrote, or `None` when the lock is busy (another process is
/// rewriting it, or appending) or the cache cannot be written.
fn rewrite(cd: &Root, known: &mut KeyMap<EntryRow>) -> Result<Option<Vec<EntryRow>>> {
    let guard = lock::try_lock_exclusive(cd, Path::new(layout::INDEX_LOCK))?;
    let Some(_guard) = guard else {
        return Ok(None);
    };
    // Under the lock: what was appended since the caller's read is kept.
    let rows = reconcile(cd, known)?;
    write_whole(cd, &rows)?;
    Ok(Some(rows))
}

fn write_whole(cd: &Root, rows: &[EntryRow]) -> Result<()> {
    let mut text = String::with_capacity(HEADER.len() + rows.len() * 200);
    text.push_str(HEADER);
    for r in rows.iter().filter(|r| r.status == "ok") {
        text.push_str(&add_record(r));
    }
    cd.write_atomic(layout::INDEX, text.as_bytes(), super::trust::file_mode())
        .map_err(|e| Error::io("writing", cd.join(layout::INDEX), e))
}

/// Gives a new compiledir its empty index (never replacing one: another process may be
/// appending to it already).
pub fn create(cd: &Root) {
    let how = OpenHow {
        write: true,
        create_new: true,
        mode: super::trust::file_mode(),
        ..OpenHow::default()
    };
    if let Ok(mut f) = cd.open_file(layout::INDEX, how) {
        let _ = f.write_all(HEADER.as_bytes());
    }
}

/// Rewrites the index of `cd` from the entries' own files, ignoring what it said
/// (`verify --repair`). Returns the number of entries it lists.
pub fn rebuild(cd: &Root) -> Result<usize> {
    let _guard = lock::lock_exclusive(cd, Path::new(layout::INDEX_LOCK), &mut |_| {})?;
    let compiledir = compiledir_name(cd);
    let mut keys = scan::entry_keys(cd)?;
    keys.sort_unstable();
    let rows = scan::parallel_map(&keys, |k| scan::entry_row(cd, k, &compiledir));
    write_whole(cd, &rows)?;
    Ok(rows.iter().filter(|r| r.status == "ok").count())
}

/// How the index of `cd` differs from the entries' own files: `None` when it lists
/// exactly the entries on disk, with their facts; else what is wrong, in words.
pub fn check(cd: &Root) -> Result<Option<String>> {
    let compiledir = compiledir_name(cd);
    let keys = scan::entry_keys(cd)?;
    let rows: Vec<EntryRow> = scan::parallel_map(&keys, |k| scan::entry_row(cd, k, &compiledir))
        .into_iter()
        .filter(|r| r.status == "ok")
        .collect();
    let Some(snap) = read_snapshot(cd) else {
        return Ok((!rows.is_empty()).then(|| {
            format!(
                "there is no usable index (missing, not a regular file, or without its first line), and {} entries",
                rows.len()
            )
        }));
    };
    let mut listed: KeyMap<EntryRow> = (0..snap.items.len())
        .map(|i| (snap.items[i].key, snap.row(i)))
        .collect();
    let (mut missing, mut differ) = (0, 0);
    for row in &rows {
        let Some(key) = row.key() else { continue };
        match listed.remove(&key) {
            None => missing += 1,
            Some(mut l) => {
                // Times move on between a marker's write and its record; sizes and
                // names do not.
                l.last_use = row.last_use;
                l.handed_out = row.handed_out;
                if format!("{l:?}") != format!("{row:?}") {
                    differ += 1;
                }
            }
        }
    }
    let mut why = Vec::new();
    if snap.health.bad_lines > 0 {
        why.push(format!("{} unreadable lines", snap.health.bad_lines));
    }
    if missing > 0 {
        why.push(format!("{missing} entries not listed"));
    }
    if !listed.is_empty() {
        why.push(format!("{} listed entries not on disk", listed.len()));
    }
    if differ > 0 {
        why.push(format!("{differ} entries listed with other facts"));
    }
    Ok((!why.is_empty()).then(|| why.join(", ")))
}

/// Appends records to the index of one compiledir, holding the shared index lock from
/// the first append until dropped. Never fails its caller: a record that cannot be
/// written (no index yet, a read-only cache) is made up for by the next rewrite, which
/// reads the entries themselves.
pub struct Writer<'a> {
    cd: &'a Root,
    open: Option<(std::fs::File, LockGuard)>,
    failed: bool,
}

impl<'a> Writer<'a> {
    /// A writer for the compiledir `cd`; nothing is opened until the first record.
    pub fn new(cd: &'a Root) -> Writer<'a> {
        Writer {
            cd,
            open: None,
            failed: false,
        }
    }

    /// Appends `records` (whole lines) in one write.
    pub fn append(&mut self, records: &str) {
        if self.failed || records.is_empty() {
            return;
        }
        if self.open.is_none() {
            match self.open() {
                Ok(o) => self.open = Some(o),
                Err(e) => {
                    log::debug!("index of {} not updated: {e}", self.cd.path().display());
                    self.failed = true;
                    return;
                }
            }
        }
        if let Some((f, _)) = &mut self.open {
            if let Err(e) = f.write_all(records.as_bytes()) {
                log::debug!("index of {} not updated: {e}", self.cd.path().display());
                self.failed = true;
            }
        }
    }

    fn open(&self) -> Result<(std::fs::File, LockGuard)> {
        let guard = lock::lock_shared(self.cd, Path::new(layout::INDEX_LOCK))?;
        if guard.is_unlocked() {
            return Err(Error::InvalidRequest("the cache is read-only".into()));
        }
        // Never created here: an index made of appends alone would not list the
        // entries published before it.
        let how = OpenHow {
            write: true,
            append: true,
            ..OpenHow::default()
        };
        let f = self
            .cd
            .open_file(layout::INDEX, how)
            .map_err(|e| Error::io("opening", self.cd.join(layout::INDEX), e))?;
        Ok((f, guard))
    }

    /// Appends the `A` record of the entry `key`, just published (read back from it).
    pub fn published(&mut self, key: &Key) {
        let row = scan::entry_row(self.cd, key, &compiledir_name(self.cd));
        if row.status == "ok" {
            self.append(&add_record(&row));
        }
    }
}

/// The index's path, for messages.
pub fn path(cd: &Root) -> PathBuf {
    cd.join(layout::INDEX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &Key) -> EntryRow {
        EntryRow {
            key: key.hex(),
            source: "a\tb\\c\nd.c".into(),
            language: "c".into(),
            producer: "xcache".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            template: Some("reduce".into()),
            params: Some(vec![
                ("dtype".into(), "float32".into()),
                ("k".into(), "".into()),
            ]),
            size: 12,
            disk_size: 4096,
            created: 100,
            last_use: Some(200),
            handed_out: None,
            compile_ms: 7,
            compiledir: "cd".into(),
            path: PathBuf::from("/x/cd").join(layout::entry(key)),
            status: "ok".into(),
        }
    }

    fn key(n: u8) -> Key {
        format!("{n:02x}").repeat(32).parse().unwrap()
    }

    fn snap_of(log: &str) -> (KeyMap<Item>, KeySet, IndexHealth, Vec<u8>) {
        let buf = format!("{HEADER}{log}").into_bytes();
        let mut h = IndexHealth::default();
        let (m, p) = replay(&buf, HEADER.len(), &mut h);
        (m, p, h, buf)
    }

    fn row_of(buf: Vec<u8>, item: Item) -> EntryRow {
        Snapshot {
            buf,
            items: vec![item],
            cd_path: PathBuf::from("/x/cd"),
            compiledir: "cd".into(),
            health: IndexHealth::default(),
        }
        .row(0)
    }

    #[test]
    fn records_round_trip_with_awkward_names() {
        let k = key(1);
        for r in [row(&k), {
            let mut plain = row(&k);
            plain.template = None;
            plain.params = None;
            plain
        }] {
            let (mut m, _, h, buf) = snap_of(&add_record(&r));
            assert_eq!(h.bad_lines, 0);
            let back = row_of(buf, m.remove(&k).unwrap());
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn replay_follows_the_records_in_order() {
        let (a, b) = (key(1), key(2));
        let log = [
            intent_record(&a),
            add_record(&row(&a)),
            intent_record(&b),
            add_record(&row(&b)),
            use_record(&a, 250),
            use_record(&a, 300), // the last one wins (an import may move it back)
            hand_out_record(&b, 400),
            hand_out_record(&b, 350), // hand-outs only move forward
        ]
        .concat();
        let (m, p, h, _) = snap_of(&log);
        assert_eq!((h.records, h.bad_lines), (8, 0));
        assert!(p.is_empty());
        assert_eq!(m[&a].last_use, Some(300));
        assert_eq!(m[&b].handed_out, Some(400));

        // An intent with no outcome is pending; a removal ends the entry.
        let more = [intent_record(&b), remove_record(&b), intent_record(&a)].concat();
        let (m, p, _, _) = snap_of(&format!("{log}{more}"));
        assert!(!m.contains_key(&b));
        assert!(m.contains_key(&a), "facts kept until settled");
        assert_eq!(p.into_iter().collect::<Vec<_>>(), vec![a]);
    }

    #[test]
    fn bad_and_cut_lines_are_counted_not_trusted() {
        let a = key(1);
        let full = add_record(&row(&a));
        let h = a.hex();
        let log = format!(
            "# a comment\nZ\t{h}\t1\nU\tnot-a-key\t3\nU\t{h}\t3\textra\nA\t{h}\t1\t2\t3\t4\t-\t-\tc\tt\ts\t+tpl\todd\nA\t{h}\t1\t2\t3\t4\t-\t-\tc\tt\ts\\q\t-\n{}",
            &full[..full.len() - 5]
        );
        let (m, _, h, _) = snap_of(&log);
        assert!(m.is_empty());
        assert_eq!((h.records, h.bad_lines), (5, 6));
    }

    #[test]
    fn a_rewrite_is_due_when_missing_bad_or_bloated() {
        let ok = IndexHealth {
            present: true,
            records: 10,
            live: 10,
            ..IndexHealth::default()
        };
        assert!(!ok.needs_rewrite());
        assert!(IndexHealth::default().needs_rewrite());
        assert!(IndexHealth { bad_lines: 1, ..ok }.needs_rewrite());
        assert!(IndexHealth {
            records: 20 + SLACK + 1,
            ..ok
        }
        .needs_rewrite());
    }
}
