//! The index of a compiledir: what `list`, `size`, `prune` and `basecompiledir list` read
//! instead of every entry's `entry.json` and `last-use`.
//!
//! # Format
//!
//! `index` is a log of lines, each a record of tab-separated fields (a tab, newline,
//! carriage return or backslash inside a field is escaped as `\t`, `\n`, `\r`, `\\`):
//!
//! - `A key created compile_ms size disk_size last_use handed_out language target source
//!   template [param value]...`: the entry `key` is published with these facts (a time is
//!   Unix seconds or `-`; `template` is `-` or `+name`, followed by its parameters);
//! - `U key secs`: its last use was recorded at `secs`;
//! - `H key secs`: its path was handed out at `secs`;
//! - `D key`: it was removed (or quarantined).
//!
//! Lines starting with `#` are comments (a compacted index starts with
//! `# xcache-index 1`). A line that is not complete (no final newline) or does not parse
//! is skipped and counted; records of an unknown kind likewise.
//!
//! # Protocol
//!
//! - Writers append one record per `write(2)` to a file opened `O_APPEND`, holding a
//!   shared lock on `index.lock`; compaction rewrites the whole file (a temporary file
//!   renamed over it) holding the exclusive lock, after reading the log and the entries
//!   again under it, so no appended record is lost.
//! - `A` is appended after the entry's rename into `entries/`, `D` after its rename out,
//!   `U` and `H` after the marker files they mirror are written — each while holding the
//!   key's lock, so the records of one key are in the order of the events.
//! - The entries are the truth; the index only spares reading them. A reader reads the
//!   index first and then the fan directories: an entry on disk without a record (a crash
//!   between the rename and the append, an index lost or deleted, an entry from a
//!   process that could not write the index) is read from its own files; a record
//!   without an entry on disk is dropped. Loading a library never consults the index.
//! - Readers mend what they find: records for entries they had to read are appended, and
//!   an index that is missing, has bad lines or has grown past twice its live records
//!   (plus 1024) is compacted. A cache the process cannot write is read all the same.
//! - `last_use` and `handed_out` in the index are as coarse as the markers' own
//!   resolution (`last_use_resolution`): `U` and `H` are appended only when the
//!   `last-use` marker is rewritten. The collectors re-read `handed-out` under the key's
//!   lock before removing anything.

use std::collections::HashMap;
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

/// The first line of a compacted index.
const HEADER: &str = "# xcache-index 1\n";

/// Extra records, beyond twice the live ones, that an index may carry before a reader
/// compacts it.
const SLACK: usize = 1024;

/// What a reader found about the index, beside the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexHealth {
    /// Whether the index file exists.
    pub present: bool,
    /// Records read (comments excluded).
    pub records: usize,
    /// Lines that could not be parsed, or were incomplete.
    pub bad_lines: usize,
    /// Entries on disk that the index lists.
    pub indexed: usize,
    /// Entries on disk that it does not list (read from their own files).
    pub unindexed: usize,
    /// Keys it lists that have no entry on disk.
    pub gone: usize,
}

impl IndexHealth {
    /// Whether a rewrite is due: missing, bad lines, or too many dead records.
    pub fn needs_compaction(&self) -> bool {
        let live = self.indexed + self.unindexed;
        !self.present || self.bad_lines > 0 || self.records > 2 * live + SLACK
    }

    /// Whether the index says exactly what is on disk (no bad lines, nothing missing,
    /// nothing extra). Dead records of removed entries are fine.
    pub fn consistent(&self) -> bool {
        self.present && self.bad_lines == 0 && self.unindexed == 0 && self.gone == 0
    }
}

/// The entries of a compiledir as the index and the fan directories give them.
#[derive(Debug)]
pub struct Listing {
    /// One row per entry on disk, sorted by key.
    pub rows: Vec<EntryRow>,
    /// What was found about the index.
    pub health: IndexHealth,
}

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

fn parse_opt_secs(s: &str) -> Option<Option<u64>> {
    if s == "-" {
        Some(None)
    } else {
        s.parse().ok().map(Some)
    }
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

/// A parsed `A` record, without the parts every row of a compiledir shares.
#[derive(Debug, Clone, PartialEq)]
struct Indexed {
    created: u64,
    compile_ms: u64,
    size: u64,
    disk_size: u64,
    last_use: Option<u64>,
    handed_out: Option<u64>,
    language: String,
    target: String,
    source: String,
    template: Option<String>,
    params: Option<Vec<(String, String)>>,
}

impl Indexed {
    fn of(row: &EntryRow) -> Indexed {
        Indexed {
            created: row.created,
            compile_ms: row.compile_ms,
            size: row.size,
            disk_size: row.disk_size,
            last_use: row.last_use,
            handed_out: row.handed_out,
            language: row.language.clone(),
            target: row.target.clone(),
            source: row.source.clone(),
            template: row.template.clone(),
            params: row.params.clone(),
        }
    }

    fn into_row(self, key: &Key, cd_path: &Path, compiledir: &str) -> EntryRow {
        EntryRow {
            key: key.hex(),
            source: self.source,
            language: self.language,
            target: self.target,
            template: self.template,
            params: self.params,
            size: self.size,
            disk_size: self.disk_size,
            created: self.created,
            last_use: self.last_use,
            handed_out: self.handed_out,
            compile_ms: self.compile_ms,
            compiledir: compiledir.to_string(),
            path: cd_path.join(layout::entry(key)),
            status: "ok".into(),
        }
    }
}

enum Record {
    Add(Key, Box<Indexed>),
    Use(Key, u64),
    HandOut(Key, u64),
    Remove(Key),
}

fn parse_line(line: &str) -> Option<Record> {
    let mut f = line.split('\t');
    let kind = f.next()?;
    let key: Key = f.next()?.parse().ok()?;
    let rec = match kind {
        "A" => {
            let created = f.next()?.parse().ok()?;
            let compile_ms = f.next()?.parse().ok()?;
            let size = f.next()?.parse().ok()?;
            let disk_size = f.next()?.parse().ok()?;
            let last_use = parse_opt_secs(f.next()?)?;
            let handed_out = parse_opt_secs(f.next()?)?;
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
            Record::Add(
                key,
                Box::new(Indexed {
                    created,
                    compile_ms,
                    size,
                    disk_size,
                    last_use,
                    handed_out,
                    language,
                    target,
                    source,
                    template,
                    params,
                }),
            )
        }
        "U" => Record::Use(key, f.next()?.parse().ok()?),
        "H" => Record::HandOut(key, f.next()?.parse().ok()?),
        "D" => Record::Remove(key),
        _ => return None,
    };
    // Trailing fields mean a format this reader does not know.
    if f.next().is_some() {
        return None;
    }
    Some(rec)
}

/// The index's state after replaying the log: `key` → facts, plus the counts.
fn replay(bytes: &[u8], health: &mut IndexHealth) -> HashMap<Key, Indexed> {
    let mut map: HashMap<Key, Indexed> = HashMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            health.bad_lines += 1; // an append cut short
            break;
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.first() == Some(&b'#') || line.is_empty() {
            continue;
        }
        health.records += 1;
        let Some(rec) = std::str::from_utf8(line).ok().and_then(parse_line) else {
            health.bad_lines += 1;
            continue;
        };
        match rec {
            Record::Add(key, facts) => {
                map.insert(key, *facts);
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
                map.remove(&key);
            }
        }
    }
    map
}

/// The index's bytes; `None` if there is none (or it is not a regular file of ours: a
/// planted link is never followed, and a reader then reads every entry).
fn read_index(cd: &Root) -> Option<Vec<u8>> {
    let mut f = cd.open_file(layout::INDEX, OpenHow::read()).ok()?;
    let st = f.metadata().ok()?;
    if !st.is_file() {
        return None;
    }
    let mut bytes = Vec::with_capacity(st.len() as usize);
    f.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn compiledir_name(cd: &Root) -> String {
    cd.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads the index and the fan directories (in that order: see the module doc) and
/// returns every entry on disk, and the keys of those the index does not list (read
/// from their own files, or taken from `known`, rows already read).
fn load_with(cd: &Root, known: &mut HashMap<Key, EntryRow>) -> Result<(Listing, Vec<Key>)> {
    let mut health = IndexHealth::default();
    let bytes = read_index(cd);
    health.present = bytes.is_some();
    let mut map = bytes.map(|b| replay(&b, &mut health)).unwrap_or_default();
    let keys = scan::entry_keys(cd)?;
    let compiledir = compiledir_name(cd);
    let mut rows = Vec::with_capacity(keys.len());
    let (mut unindexed, mut missing) = (Vec::new(), Vec::new());
    for key in keys {
        if let Some(facts) = map.remove(&key) {
            rows.push(facts.into_row(&key, cd.path(), &compiledir));
        } else if let Some(row) = known.remove(&key) {
            rows.push(row);
            unindexed.push(key);
        } else {
            missing.push(key);
        }
    }
    health.indexed = rows.len() - unindexed.len();
    health.gone = map.len();
    rows.extend(scan::parallel_map(&missing, |k| {
        scan::entry_row(cd, k, &compiledir)
    }));
    unindexed.extend(missing);
    health.unindexed = unindexed.len();
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok((Listing { rows, health }, unindexed))
}

/// Every entry of the compiledir `cd`, from its index reconciled with the fan
/// directories, mending the index on the way when it can (see the module doc).
pub fn load(cd: &Root) -> Result<Listing> {
    let (listing, unindexed) = load_with(cd, &mut HashMap::new())?;
    if listing.health.needs_compaction() {
        let unindexed: std::collections::HashSet<Key> = unindexed.into_iter().collect();
        let mut known: HashMap<Key, EntryRow> = listing
            .rows
            .iter()
            .filter_map(|r| {
                r.key()
                    .filter(|k| unindexed.contains(k))
                    .map(|k| (k, r.clone()))
            })
            .collect();
        match compact(cd, &mut known) {
            Ok(Some(fresh)) => return Ok(fresh),
            Ok(None) => {}
            Err(e) => log::debug!("index of {} not rewritten: {e}", cd.path().display()),
        }
    } else if !unindexed.is_empty() {
        let unindexed: std::collections::HashSet<Key> = unindexed.into_iter().collect();
        let records: String = listing
            .rows
            .iter()
            .filter(|r| r.status == "ok" && r.key().is_some_and(|k| unindexed.contains(&k)))
            .map(add_record)
            .collect();
        Writer::new(cd).append(&records);
    }
    Ok(listing)
}

/// Rewrites the index from the entries under the exclusive index lock; `known` holds
/// rows already read. Returns the listing it wrote, or `None` when the lock could not be
/// had (another process is compacting; a read-only cache).
fn compact(cd: &Root, known: &mut HashMap<Key, EntryRow>) -> Result<Option<Listing>> {
    let Some(_guard) = lock::try_lock_exclusive(cd, Path::new(layout::INDEX_LOCK))? else {
        return Ok(None);
    };
    // Again, under the lock: records appended since the first read are kept.
    let (listing, _) = load_with(cd, known)?;
    write_whole(cd, &listing.rows)?;
    Ok(Some(listing))
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

/// Rewrites the index of `cd` from the entries' own files, ignoring what it said
/// (`verify --repair`). Returns the number of entries it lists.
pub fn rebuild(cd: &Root) -> Result<usize> {
    let _guard = lock::lock_exclusive(cd, Path::new(layout::INDEX_LOCK), &mut |_| {})?;
    let compiledir = compiledir_name(cd);
    let keys = scan::entry_keys(cd)?;
    let mut rows = scan::parallel_map(&keys, |k| scan::entry_row(cd, k, &compiledir));
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    write_whole(cd, &rows)?;
    Ok(rows.iter().filter(|r| r.status == "ok").count())
}

/// How the index of `cd` differs from the entries' own files: `None` when it lists
/// exactly what is on disk with the same facts; else what is wrong, in words.
pub fn check(cd: &Root) -> Result<Option<String>> {
    let mut health = IndexHealth::default();
    let bytes = read_index(cd);
    let compiledir = compiledir_name(cd);
    let keys = scan::entry_keys(cd)?;
    let rows = scan::parallel_map(&keys, |k| scan::entry_row(cd, k, &compiledir));
    let Some(bytes) = bytes else {
        let n = rows.iter().filter(|r| r.status == "ok").count();
        return Ok((n > 0)
            .then(|| format!("there is no index (or it is not a regular file), and {n} entries")));
    };
    let mut map = replay(&bytes, &mut health);
    let (mut missing, mut differ) = (0, 0);
    for (key, row) in keys.iter().zip(&rows) {
        match map.remove(key) {
            None if row.status == "ok" => missing += 1,
            None => {}
            Some(mut facts) => {
                // Times move on between a marker's write and its record; sizes and
                // names do not.
                facts.last_use = row.last_use;
                facts.handed_out = row.handed_out;
                if facts != Indexed::of(row) {
                    differ += 1;
                }
            }
        }
    }
    let mut why = Vec::new();
    if health.bad_lines > 0 {
        why.push(format!("{} unreadable lines", health.bad_lines));
    }
    if missing > 0 {
        why.push(format!("{missing} entries not listed"));
    }
    if !map.is_empty() {
        why.push(format!("{} listed entries not on disk", map.len()));
    }
    if differ > 0 {
        why.push(format!("{differ} entries listed with other facts"));
    }
    Ok((!why.is_empty()).then(|| why.join(", ")))
}

/// Appends records to the index of one compiledir, holding the shared index lock from
/// the first append until dropped. Never fails its caller: a record that cannot be
/// written is found missing by the next reader, which reads that entry itself.
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
        let how = OpenHow {
            write: true,
            create: true,
            append: true,
            mode: super::trust::file_mode(),
            ..OpenHow::default()
        };
        let f = self
            .cd
            .open_file(layout::INDEX, how)
            .map_err(|e| Error::io("opening", self.cd.join(layout::INDEX), e))?;
        Ok((f, guard))
    }
}

/// Records that `key` was just published in `cd` (call it under the key's lock).
pub fn published(cd: &Root, key: &Key) {
    let row = scan::entry_row(cd, key, &compiledir_name(cd));
    if row.status == "ok" {
        Writer::new(cd).append(&add_record(&row));
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

    #[test]
    fn records_round_trip_with_awkward_names() {
        let k = key(1);
        let r = row(&k);
        let mut h = IndexHealth::default();
        let map = replay(add_record(&r).as_bytes(), &mut h);
        assert_eq!(h.bad_lines, 0);
        let back = map[&k].clone().into_row(&k, Path::new("/x/cd"), "cd");
        assert_eq!(format!("{back:?}"), format!("{r:?}"));
        let mut plain = row(&k);
        plain.template = None;
        plain.params = None;
        let map = replay(add_record(&plain).as_bytes(), &mut h);
        assert_eq!(map[&k].template, None);
        assert_eq!(map[&k].params, None);
    }

    #[test]
    fn replay_follows_the_records_in_order() {
        let (a, b) = (key(1), key(2));
        let log = [
            add_record(&row(&a)),
            add_record(&row(&b)),
            use_record(&a, 250),
            use_record(&a, 300), // the last one wins (an import may move it back)
            hand_out_record(&b, 400),
            hand_out_record(&b, 350), // hand-outs only move forward
            remove_record(&b),
            use_record(&b, 500), // of a removed entry: ignored
        ]
        .concat();
        let mut h = IndexHealth::default();
        let map = replay(log.as_bytes(), &mut h);
        assert_eq!(h.records, 8);
        assert_eq!(h.bad_lines, 0);
        assert_eq!(map.len(), 1);
        assert_eq!(map[&a].last_use, Some(300));
        let log2 = [
            add_record(&row(&b)),
            hand_out_record(&b, 400),
            hand_out_record(&b, 350),
        ]
        .concat();
        assert_eq!(replay(log2.as_bytes(), &mut h)[&b].handed_out, Some(400));
    }

    #[test]
    fn bad_and_cut_lines_are_counted_not_trusted() {
        let a = key(1);
        let full = add_record(&row(&a));
        let log = format!(
            "# xcache-index 1\nZ\t{}\t1\nU\tnot-a-key\t3\nU\t{}\t3\textra\n{}",
            a.hex(),
            a.hex(),
            &full[..full.len() - 5]
        );
        let mut h = IndexHealth::default();
        let map = replay(log.as_bytes(), &mut h);
        assert!(map.is_empty());
        assert_eq!(h.bad_lines, 4);
        assert_eq!(h.records, 3);
    }

    #[test]
    fn compaction_is_due_when_missing_bad_or_bloated() {
        let ok = IndexHealth {
            present: true,
            records: 10,
            indexed: 10,
            ..IndexHealth::default()
        };
        assert!(!ok.needs_compaction());
        assert!(ok.consistent());
        assert!(IndexHealth::default().needs_compaction());
        assert!(IndexHealth { bad_lines: 1, ..ok }.needs_compaction());
        assert!(IndexHealth {
            records: 20 + SLACK + 1,
            ..ok
        }
        .needs_compaction());
        assert!(!IndexHealth { unindexed: 1, ..ok }.consistent());
        assert!(!IndexHealth { gone: 1, ..ok }.consistent());
    }
}
