//! Usage counters, kept without making the hit path wait or the cache grow.
//!
//! Each [`Jit`](crate::Jit) counts in atomics. It adds what it counted since its last
//! write into one file per compiledir, `stats/counters.json`, read, summed and rewritten
//! in place under an exclusive `flock` on that file: after every compile, at most once
//! a second on hits, and when the `Jit` is dropped. A process that only hits writes the
//! file once, when it ends; the file never multiplies (earlier versions kept one file
//! per process, which grew by one per fresh-process hit until `xcache stats` ran).
//!
//! The file is a fixed-width record (JSON padded with spaces), so one `pwrite` replaces
//! it whole. One that does not parse (a torn write after a crash) is reported and
//! counted from zero: statistics never fail a request. `xcache stats --zero` writes
//! zeros under the lock; a live process then adds only what it counts afterwards.
//!
//! The file is opened below the compiledir's descriptor without following links, must
//! be a regular file, and must pass the trust rules (see [`super::trust`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::layout;
use crate::error::{Error, Result};
use crate::fsx::{Kind, OpenHow, Root};

/// Declares [`Counters`] and the index of each field, from one list.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident = $idx:ident),* $(,)?) => {
        /// The counters. `xcache stats --json` reports these per compiledir.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        enum Field { $($idx,)* }

        const FIELDS: usize = [$(Field::$idx),*].len();

        impl Counters {
            fn fields(&mut self) -> [&mut u64; FIELDS] {
                [$(&mut self.$field,)*]
            }

            fn from_slots(v: &[u64; FIELDS]) -> Counters {
                Counters { $($field: v[Field::$idx as usize],)* }
            }
        }
    };
}

counters! {
    /// Requests served from the disk cache.
    hits = HITS,
    /// Requests served by a library already loaded in the process.
    memory_hits = MEMORY_HITS,
    /// Requests that had to compile.
    misses = MISSES,
    /// Compiles that succeeded.
    compiles = COMPILES,
    /// Compiles that failed.
    failed_compiles = FAILED,
    /// Time spent in the compiler, ms.
    compile_ms = COMPILE_MS,
    /// Compile time that hits saved (the recorded compile time of each entry hit), ms.
    saved_ms = SAVED_MS,
    /// Time spent waiting for other processes' locks, ms.
    lock_wait_ms = LOCK_WAIT_MS,
    /// Local misses served by the remote tier (fetched, checked, published here).
    remote_hits = REMOTE_HITS,
    /// Local misses the remote tier could not serve (then compiled here).
    remote_misses = REMOTE_MISSES,
    /// Results uploaded to the remote tier.
    remote_uploads = REMOTE_UPLOADS,
    /// Bytes fetched from the remote tier.
    remote_bytes_in = REMOTE_BYTES_IN,
    /// Bytes uploaded to the remote tier.
    remote_bytes_out = REMOTE_BYTES_OUT,
    /// Time spent talking to the remote tier, ms.
    remote_ms = REMOTE_MS,
    /// Remote failures: could not connect (refused, unreachable, connect timeout).
    remote_err_connect = REMOTE_ERR_CONNECT,
    /// Remote failures: an operation ran past `remote_timeout`.
    remote_err_timeout = REMOTE_ERR_TIMEOUT,
    /// Remote failures: authentication refused (wrong password, wrong S3 credentials).
    remote_err_auth = REMOTE_ERR_AUTH,
    /// Remote failures: authenticated, but not allowed (S3's 403 AccessDenied: a bucket
    /// policy that forbids this read or write).
    remote_err_denied = REMOTE_ERR_DENIED,
    /// Remote failures: the remote refused to store (full, out of memory, read-only replica).
    remote_err_full = REMOTE_ERR_FULL,
    /// Values refused: corrupt, unsigned, wrongly signed, for another key or platform.
    remote_rejected = REMOTE_REJECTED,
    /// Remote failures of any other kind (protocol, I/O after connecting).
    remote_err_other = REMOTE_ERR_OTHER,
    /// Requests that did not ask the remote because its circuit breaker was open.
    remote_skipped = REMOTE_SKIPPED,
}

impl Counters {
    /// Adds `o` field by field.
    pub fn add(&mut self, o: &Counters) {
        let mut o = *o;
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a = a.saturating_add(*b);
        }
    }

    fn minus(&self, o: &Counters) -> Counters {
        let mut r = *self;
        let mut o = *o;
        for (a, b) in r.fields().into_iter().zip(o.fields()) {
            *a = a.saturating_sub(*b);
        }
        r
    }
}

/// A remote tier event, counted by [`Recorder::remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteEvent {
    /// A result fetched and taken.
    Hit,
    /// Asked, and nothing usable.
    Miss,
    /// A result uploaded.
    Upload,
    /// Could not connect.
    ErrConnect,
    /// An operation timed out.
    ErrTimeout,
    /// Authentication refused.
    ErrAuth,
    /// Authenticated, and not allowed (HTTP 403 AccessDenied).
    ErrDenied,
    /// The remote refused to store.
    ErrFull,
    /// A value refused by the checks.
    Rejected,
    /// Any other failure.
    ErrOther,
    /// Not asked: the breaker is open.
    Skipped,
}

impl RemoteEvent {
    /// A failure to ask or to store (the remote did not answer as asked), as opposed to
    /// an answer: a hit, a miss, an upload or a refused value.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            RemoteEvent::ErrConnect
                | RemoteEvent::ErrTimeout
                | RemoteEvent::ErrAuth
                | RemoteEvent::ErrDenied
                | RemoteEvent::ErrFull
                | RemoteEvent::ErrOther
                | RemoteEvent::Skipped
        )
    }
}

thread_local! {
    /// The remote tiers (a bit per slot) that counted a failure on this thread since a
    /// lookup of theirs began ([`Recorder::remote_lookup_begins`]).
    static LOOKUP_FAILED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The bit of tier `slot` in [`LOOKUP_FAILED`] (none past the 64th tier).
fn lookup_bit(slot: usize) -> u64 {
    1u64.checked_shl(slot as u32).unwrap_or(0)
}

/// One remote tier's counters, kept beside the totals in the same record: with tiers in
/// a chain (`remote = redis://…;s3://…`), each says what it served, missed, took in and
/// failed. `xcache stats --json` reports them as `remote_tiers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierCounters {
    /// The tier, as shown (`redis://host:6379/0`, `s3://bucket/prefix`; secrets hidden).
    pub tier: String,
    /// Local misses this tier served.
    pub hits: u64,
    /// Times this tier was asked and had nothing usable.
    pub misses: u64,
    /// Results uploaded to it (compiled here, or written back from a lower tier).
    pub uploads: u64,
    /// Bytes fetched from it.
    pub bytes_in: u64,
    /// Bytes uploaded to it.
    pub bytes_out: u64,
    /// Time spent talking to it, ms.
    pub ms: u64,
    /// Could not connect.
    pub err_connect: u64,
    /// An operation ran past the request's deadline.
    pub err_timeout: u64,
    /// Authentication refused (wrong password, wrong credentials).
    pub err_auth: u64,
    /// Authenticated, and not allowed (HTTP 403 AccessDenied).
    pub err_denied: u64,
    /// Refused to store (full, read-only, throttled).
    pub err_full: u64,
    /// Values or records refused by the checks.
    pub rejected: u64,
    /// Any other failure.
    pub err_other: u64,
    /// Not asked: its breaker was open.
    pub skipped: u64,
}

impl TierCounters {
    fn slots(&mut self) -> [&mut u64; 14] {
        [
            &mut self.hits,
            &mut self.misses,
            &mut self.uploads,
            &mut self.bytes_in,
            &mut self.bytes_out,
            &mut self.ms,
            &mut self.err_connect,
            &mut self.err_timeout,
            &mut self.err_auth,
            &mut self.err_denied,
            &mut self.err_full,
            &mut self.rejected,
            &mut self.err_other,
            &mut self.skipped,
        ]
    }

    fn count(&mut self, event: RemoteEvent, bytes: u64, spent: Duration) {
        let slot = match event {
            RemoteEvent::Hit => {
                self.bytes_in += bytes;
                &mut self.hits
            }
            RemoteEvent::Miss => &mut self.misses,
            RemoteEvent::Upload => {
                self.bytes_out += bytes;
                &mut self.uploads
            }
            RemoteEvent::ErrConnect => &mut self.err_connect,
            RemoteEvent::ErrTimeout => &mut self.err_timeout,
            RemoteEvent::ErrAuth => &mut self.err_auth,
            RemoteEvent::ErrDenied => &mut self.err_denied,
            RemoteEvent::ErrFull => &mut self.err_full,
            RemoteEvent::Rejected => &mut self.rejected,
            RemoteEvent::ErrOther => &mut self.err_other,
            RemoteEvent::Skipped => &mut self.skipped,
        };
        *slot += 1;
        self.ms += spent.as_millis() as u64;
    }

    fn add(&mut self, o: &TierCounters) {
        let mut o = o.clone();
        for (a, b) in self.slots().into_iter().zip(o.slots()) {
            *a = a.saturating_add(*b);
        }
    }

    fn minus(&self, o: &TierCounters) -> TierCounters {
        let mut r = self.clone();
        let mut o = o.clone();
        for (a, b) in r.slots().into_iter().zip(o.slots()) {
            *a = a.saturating_sub(*b);
        }
        r
    }

    fn is_zero(&self) -> bool {
        self.clone().slots().iter().all(|v| **v == 0)
    }

    /// Failures of every kind (refused values included; skips not).
    pub fn errors(&self) -> u64 {
        self.err_connect
            + self.err_timeout
            + self.err_auth
            + self.err_denied
            + self.err_full
            + self.rejected
            + self.err_other
    }
}

/// Most tiers one record keeps (a configuration changed often keeps the latest).
const MAX_TIER_ROWS: usize = 8;

/// Longest tier name kept.
const MAX_TIER_NAME: usize = 256;

/// What `stats/counters.json` holds: the totals, and each remote tier's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The totals.
    #[serde(flatten)]
    pub totals: Counters,
    /// Each remote tier's, in the order they were first counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_tiers: Vec<TierCounters>,
}

impl Record {
    fn add(&mut self, o: &Record) {
        self.totals.add(&o.totals);
        for t in &o.remote_tiers {
            match self.remote_tiers.iter_mut().find(|m| m.tier == t.tier) {
                Some(mine) => mine.add(t),
                None => self.remote_tiers.push(t.clone()),
            }
        }
        if self.remote_tiers.len() > MAX_TIER_ROWS {
            let extra = self.remote_tiers.len() - MAX_TIER_ROWS;
            self.remote_tiers.drain(..extra);
        }
    }
}

/// Width of the record, so that one `pwrite` replaces it whole (the totals take about
/// 600 bytes, each tier about 300).
const RECORD_LEN: usize = 4096;

/// True for the names xcache keeps (or kept, in earlier versions) under `stats/`.
pub fn is_stats_file(name: &str) -> bool {
    name == layout::STATS_COUNTERS
        || name == "total.json"
        || name == "stats.lock"
        || legacy_process_file(name)
}

/// `<pid>-<nanos>.json`: one process's file, as earlier versions kept them.
fn legacy_process_file(name: &str) -> bool {
    name.strip_suffix(".json")
        .and_then(|s| s.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// A process's counters for one compiledir.
#[derive(Debug)]
pub struct Recorder {
    cd: Arc<Root>,
    live: [AtomicU64; FIELDS],
    /// Each remote tier's, by the slot [`Recorder::tier`] gave it.
    tiers: Mutex<Vec<TierCounters>>,
    /// What was already added to the file.
    written: Mutex<Record>,
    last_flush_ms: AtomicU64,
    start: Instant,
}

impl Recorder {
    /// Counters for the compiledir `cd`.
    pub fn new(cd: Arc<Root>) -> Recorder {
        Recorder {
            cd,
            live: Default::default(),
            tiers: Mutex::new(Vec::new()),
            written: Mutex::new(Record::default()),
            last_flush_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn bump(&self, f: Field, by: u64) {
        self.live[f as usize].fetch_add(by, Ordering::Relaxed);
    }

    /// A slot for the remote tier `name` (as shown: no secret in it), for
    /// [`Recorder::remote_at`]. The same name gets the same slot.
    pub fn tier(&self, name: &str) -> usize {
        let mut name = name.to_string();
        if name.len() > MAX_TIER_NAME {
            let mut end = MAX_TIER_NAME;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        let mut tiers = self.tiers.lock().unwrap();
        if let Some(i) = tiers.iter().position(|t| t.tier == name) {
            return i;
        }
        tiers.push(TierCounters {
            tier: name,
            ..TierCounters::default()
        });
        tiers.len() - 1
    }

    /// An event of the tier in `slot`: counted for that tier, and in the totals —
    /// except hits and misses, which the totals count per request
    /// ([`Recorder::remote`], from the chain of tiers), not per tier asked.
    ///
    /// A miss of a tier whose lookup on this thread failed (a failure counted since
    /// [`Recorder::remote_lookup_begins`]) is not counted: that lookup counted its failure,
    /// and a failure is never also a miss. Returns whether the event was counted.
    pub fn remote_at(&self, slot: usize, event: RemoteEvent, bytes: u64, spent: Duration) -> bool {
        let bit = lookup_bit(slot);
        let failed_lookup = LOOKUP_FAILED.with(|f| {
            let was = f.get() & bit != 0;
            match event {
                RemoteEvent::Miss => f.set(f.get() & !bit),
                e if e.is_failure() => f.set(f.get() | bit),
                _ => {}
            }
            was
        });
        if event == RemoteEvent::Miss && failed_lookup {
            return false;
        }
        if let Some(t) = self.tiers.lock().unwrap().get_mut(slot) {
            t.count(event, bytes, spent);
        }
        match event {
            RemoteEvent::Hit => {
                self.bump(Field::REMOTE_BYTES_IN, bytes);
                self.bump(Field::REMOTE_MS, spent.as_millis() as u64);
            }
            RemoteEvent::Miss => self.bump(Field::REMOTE_MS, spent.as_millis() as u64),
            _ => self.remote(event, bytes, spent),
        }
        true
    }

    /// A lookup of tier `slot` begins on this thread: failures counted before it no
    /// longer stand for it (see [`Recorder::remote_at`]).
    pub fn remote_lookup_begins(&self, slot: usize) {
        let bit = lookup_bit(slot);
        LOOKUP_FAILED.with(|f| f.set(f.get() & !bit));
    }

    /// Each tier's counters, counted so far by this process.
    pub fn tier_snapshot(&self) -> Vec<TierCounters> {
        self.tiers.lock().unwrap().clone()
    }

    /// A remote tier event; `bytes` moved and time spent with it.
    pub fn remote(&self, event: RemoteEvent, bytes: u64, spent: Duration) {
        let (field, bytes_field) = match event {
            RemoteEvent::Hit => (Field::REMOTE_HITS, Some(Field::REMOTE_BYTES_IN)),
            RemoteEvent::Miss => (Field::REMOTE_MISSES, None),
            RemoteEvent::Upload => (Field::REMOTE_UPLOADS, Some(Field::REMOTE_BYTES_OUT)),
            RemoteEvent::ErrConnect => (Field::REMOTE_ERR_CONNECT, None),
            RemoteEvent::ErrTimeout => (Field::REMOTE_ERR_TIMEOUT, None),
            RemoteEvent::ErrAuth => (Field::REMOTE_ERR_AUTH, None),
            RemoteEvent::ErrDenied => (Field::REMOTE_ERR_DENIED, None),
            RemoteEvent::ErrFull => (Field::REMOTE_ERR_FULL, None),
            RemoteEvent::Rejected => (Field::REMOTE_REJECTED, None),
            RemoteEvent::ErrOther => (Field::REMOTE_ERR_OTHER, None),
            RemoteEvent::Skipped => (Field::REMOTE_SKIPPED, None),
        };
        self.bump(field, 1);
        if let Some(b) = bytes_field {
            self.bump(b, bytes);
        }
        self.bump(Field::REMOTE_MS, spent.as_millis() as u64);
    }

    /// A request served from disk.
    pub fn hit(&self, saved_ms: u64, lock_wait: Duration) {
        self.bump(Field::HITS, 1);
        self.bump(Field::SAVED_MS, saved_ms);
        self.bump(Field::LOCK_WAIT_MS, lock_wait.as_millis() as u64);
        self.flush_if_due();
    }

    /// A request served from memory.
    pub fn memory_hit(&self) {
        self.bump(Field::MEMORY_HITS, 1);
        self.flush_if_due();
    }

    /// A request that compiled.
    pub fn miss(&self, compile_ms: u64, lock_wait: Duration) {
        self.bump(Field::MISSES, 1);
        self.bump(Field::COMPILES, 1);
        self.bump(Field::COMPILE_MS, compile_ms);
        self.bump(Field::LOCK_WAIT_MS, lock_wait.as_millis() as u64);
        self.flush();
    }

    /// A compile that failed.
    pub fn failed(&self) {
        self.bump(Field::MISSES, 1);
        self.bump(Field::FAILED, 1);
        self.flush();
    }

    /// What this process counted so far.
    pub fn snapshot(&self) -> Counters {
        let mut v = [0u64; FIELDS];
        for (slot, a) in v.iter_mut().zip(&self.live) {
            *slot = a.load(Ordering::Relaxed);
        }
        Counters::from_slots(&v)
    }

    fn flush_if_due(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_flush_ms.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .last_flush_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.flush();
        }
    }

    /// Adds what was counted since the last write to the compiledir's file. Failures
    /// (a read-only cache, a planted file) are logged, never returned: statistics never
    /// fail a request.
    pub fn flush(&self) {
        // Another thread flushing will write the same numbers: don't wait for it.
        let Ok(mut written) = self.written.try_lock() else {
            return;
        };
        let now = Record {
            totals: self.snapshot(),
            remote_tiers: self.tier_snapshot(),
        };
        let delta = Record {
            totals: now.totals.minus(&written.totals),
            remote_tiers: now
                .remote_tiers
                .iter()
                .map(
                    |t| match written.remote_tiers.iter().find(|w| w.tier == t.tier) {
                        Some(w) => TierCounters {
                            tier: t.tier.clone(),
                            ..t.minus(w)
                        },
                        None => t.clone(),
                    },
                )
                .filter(|t| !t.is_zero())
                .collect(),
        };
        if delta == Record::default() {
            return;
        }
        match update(&self.cd, |c| c.add(&delta)) {
            Ok(_) => *written = now,
            Err(e) => log::debug!("not recording statistics: {e}"),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Opens `stats/counters.json` of `cd` for update, creating it (and `stats/`) if
/// missing; a link or a foreign file there is refused.
fn open_counters(cd: &Root) -> Result<File> {
    let rel = layout::stats_counters();
    let how = OpenHow::read_write_create(super::trust::file_mode());
    let file = match cd.open_file(&rel, how) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => cd
            .mkdir(layout::STATS, super::trust::dir_mode())
            .and_then(|()| cd.open_file(&rel, how)),
        r => r,
    }
    .map_err(|e| super::io_below("opening", cd, &rel, e))?;
    let md = file
        .metadata()
        .map_err(|e| Error::io("inspecting", cd.join(&rel), e))?;
    if let Some(why) = super::trust::untrusted("the statistics file", &md) {
        return Err(super::trust::refused(&cd.join(&rel), &why));
    }
    Ok(file)
}

fn read_record(file: &File, path: &Path) -> Record {
    let mut text = String::new();
    if (&*file).read_to_string(&mut text).is_err() || text.trim().is_empty() {
        return Record::default();
    }
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        log::warn!("{} is damaged ({e}); counting from zero", path.display());
        Record::default()
    })
}

fn write_record(file: &File, c: &Record) -> std::io::Result<()> {
    let mut text = serde_json::to_string(c).expect("serialises");
    if text.len() < RECORD_LEN {
        text.push_str(&" ".repeat(RECORD_LEN - 1 - text.len()));
        text.push('\n');
    }
    file.write_all_at(text.as_bytes(), 0)?;
    file.set_len(text.len() as u64)
}

/// Applies `f` to the counters of `cd` under the file's exclusive lock; returns the
/// result.
fn update(cd: &Root, f: impl FnOnce(&mut Record)) -> Result<Record> {
    let path = cd.join(layout::stats_counters());
    let file = open_counters(cd)?;
    file.lock().map_err(|e| Error::io("locking", &path, e))?;
    let mut c = read_record(&file, &path);
    f(&mut c);
    write_record(&file, &c).map_err(|e| Error::io("writing", &path, e))?;
    Ok(c)
}

/// The counters of the compiledir `cd`; with `zero`, resets them first. Files that
/// earlier versions left (one per process, `total.json`) are folded in and removed.
pub fn collect(cd: &Root, zero: bool) -> Result<Counters> {
    collect_record(cd, zero).map(|r| r.totals)
}

/// [`collect`], with each remote tier's counters.
pub fn collect_record(cd: &Root, zero: bool) -> Result<Record> {
    let legacy: Vec<String> = cd
        .read_dir(layout::STATS)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.kind == Kind::File)
        .filter_map(|e| e.name_str().map(str::to_string))
        .filter(|n| n == "total.json" || n == "stats.lock" || legacy_process_file(n))
        .collect();
    if legacy.is_empty() && !zero {
        // A plain read: under a shared lock, creating nothing (the cache may be
        // read-only).
        let rel = layout::stats_counters();
        let path = cd.join(&rel);
        let file = match cd.open_file(&rel, OpenHow::read()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => return Err(super::io_below("opening", cd, &rel, e)),
        };
        file.lock_shared()
            .map_err(|e| Error::io("locking", &path, e))?;
        return Ok(read_record(&file, &path));
    }
    update(cd, |c| {
        if zero {
            *c = Record::default();
        }
        for name in &legacy {
            let rel = Path::new(layout::STATS).join(name);
            if !zero && name != "stats.lock" {
                // Lock first, then read: a process of an earlier version still
                // running keeps its file (and its counts until it ends).
                let Ok(file) = cd.open_file(&rel, OpenHow::read()) else {
                    continue;
                };
                if file.try_lock().is_err() {
                    continue;
                }
                c.add(&read_record(&file, &cd.join(&rel)));
            }
            let _ = cd.remove_file(&rel);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Arc<Root>) {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Root::open(dir.path()).unwrap());
        (dir, r)
    }

    #[test]
    fn counts_survive_the_process_and_zero_resets() {
        let (_d, cd) = root();
        {
            let r = Recorder::new(cd.clone());
            r.miss(120, Duration::from_millis(3));
            r.hit(120, Duration::ZERO);
            r.hit(120, Duration::ZERO);
            r.memory_hit();
            r.failed();
            // Compiles and failures are written at once.
            let c = collect(&cd, false).unwrap();
            assert_eq!((c.misses, c.compiles, c.failed_compiles), (2, 1, 1));
            assert_eq!((c.compile_ms, c.lock_wait_ms), (120, 3));
        } // dropped: final flush
        let c = collect(&cd, false).unwrap();
        assert_eq!((c.hits, c.memory_hits, c.saved_ms), (2, 1, 240));
        assert_eq!(collect(&cd, false).unwrap(), c, "reading changes nothing");

        // Zero with a live process: only what it counts afterwards remains.
        let r = Recorder::new(cd.clone());
        r.miss(10, Duration::ZERO);
        assert_eq!(collect(&cd, true).unwrap(), Counters::default());
        r.miss(5, Duration::ZERO);
        drop(r);
        let c = collect(&cd, false).unwrap();
        assert_eq!((c.misses, c.compile_ms), (1, 5));
    }

    #[test]
    fn a_failed_lookup_is_not_also_a_miss() {
        let (_d, cd) = root();
        let r = Recorder::new(cd.clone());
        let (a, b) = (r.tier("redis://a"), r.tier("s3://b"));
        let t = |slot: usize| r.tier_snapshot()[slot].clone();
        // Tier a times out, tier b answers that it has nothing.
        r.remote_lookup_begins(a);
        r.remote_lookup_begins(b);
        r.remote_at(a, RemoteEvent::ErrTimeout, 0, Duration::ZERO);
        assert!(!r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
        assert!(r.remote_at(b, RemoteEvent::Miss, 0, Duration::ZERO));
        assert_eq!((t(a).misses, t(a).err_timeout, t(b).misses), (0, 1, 1));
        // The next lookup of a starts afresh: its miss counts.
        r.remote_lookup_begins(a);
        assert!(r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
        // A skipped tier (breaker open) failed to ask too; an upload's failure after the
        // miss belongs to no lookup.
        r.remote_lookup_begins(a);
        r.remote_at(a, RemoteEvent::Skipped, 0, Duration::ZERO);
        assert!(!r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
        r.remote_at(a, RemoteEvent::ErrFull, 0, Duration::ZERO);
        r.remote_lookup_begins(a);
        assert!(r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
        assert_eq!(t(a).misses, 2);
        // Other threads' lookups are their own.
        r.remote_lookup_begins(a);
        r.remote_at(a, RemoteEvent::ErrConnect, 0, Duration::ZERO);
        std::thread::scope(|s| {
            s.spawn(|| {
                r.remote_lookup_begins(a);
                assert!(r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
            });
        });
        assert!(!r.remote_at(a, RemoteEvent::Miss, 0, Duration::ZERO));
    }

    #[test]
    fn one_file_however_many_processes() {
        let (_d, cd) = root();
        for _ in 0..50 {
            let r = Recorder::new(cd.clone());
            r.hit(1, Duration::ZERO);
        }
        let names: Vec<_> = cd.read_dir(layout::STATS).unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(collect(&cd, false).unwrap().hits, 50);
    }

    #[test]
    fn legacy_files_are_folded_and_damage_counts_from_zero() {
        let (d, cd) = root();
        let stats = d.path().join(layout::STATS);
        std::fs::create_dir(&stats).unwrap();
        std::fs::write(stats.join("total.json"), r#"{"hits":5}"#).unwrap();
        std::fs::write(stats.join("123-456.json"), r#"{"misses":2}"#).unwrap();
        std::fs::write(stats.join("stats.lock"), "").unwrap();
        std::fs::write(stats.join("notes.txt"), "mine").unwrap();
        let c = collect(&cd, false).unwrap();
        assert_eq!((c.hits, c.misses), (5, 2));
        let mut left: Vec<_> = std::fs::read_dir(&stats)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["counters.json", "notes.txt"]);
        std::fs::write(stats.join("counters.json"), "{\"hits\":").unwrap();
        assert_eq!(collect(&cd, false).unwrap(), Counters::default());
        assert!(is_stats_file("123-456.json") && !is_stats_file("notes.txt"));
    }

    #[test]
    fn a_planted_link_is_refused_and_its_target_untouched() {
        let (d, cd) = root();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::create_dir(d.path().join(layout::STATS)).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join(layout::stats_counters())).unwrap();
        let e = collect(&cd, false).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        Recorder::new(cd.clone()).miss(1, Duration::ZERO);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
