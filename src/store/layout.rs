//! Every name xcache gives a file or directory, in one place: the base dir, a
//! compiledir, an entry, the kinds of `tmp/` directories, quarantine, locks, stats and
//! the private fallback directory. Each kind of name that carries data (a key, a time)
//! has a parser and a formatter here; nothing else in xcache spells a name out.
//!
//! Relative paths are relative to the compiledir. The test at the end pins every name:
//! changing one changes the on-disk format (bump [`crate::platform::LAYOUT_VERSION`]).

use std::path::{Path, PathBuf};

use super::key::Key;

/// Marks the base dir as a cache for backup tools (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";

/// The contents xcache writes into [`CACHEDIR_TAG`]; `basecompiledir purge` refuses a
/// directory whose tag is not exactly this.
pub const CACHEDIR_TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by xcache.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// Platform fields, creation time and creator of a compiledir; marks it as xcache's.
pub const COMPILEDIR_META: &str = "compiledir.json";
/// Empty file whose mtime is the last use (of an entry, or of anything in a compiledir).
pub const LAST_USE: &str = "last-use";
/// Empty file whose mtime is when the last automatic prune ran.
pub const AUTO_PRUNE_MARK: &str = "auto-prune";
/// Lock file taken (with a try) by the automatic prune, so that one process prunes.
pub const GC_LOCK: &str = "gc.lock";
/// The compiledir's index of its entries (see [`super::index`]).
pub const INDEX: &str = "index";
/// Lock file of the index: shared by appenders, exclusive for a rewrite.
pub const INDEX_LOCK: &str = "index.lock";

/// One directory per key, published whole by rename.
pub const ENTRIES: &str = "entries";
/// Per-key lock files.
pub const LOCKS: &str = "locks";
/// Staging, kept failures, removals in progress.
pub const TMP: &str = "tmp";
/// Corrupt entries moved aside.
pub const QUARANTINE: &str = "quarantine";
/// Resolved compiler command lines and versions.
pub const TOOLCHAINS: &str = "toolchains";
/// Usage counters.
pub const STATS: &str = "stats";
/// Per-request-key manifests of dependency-tracked results.
pub const MANIFESTS: &str = "manifests";

/// The files at the top of a compiledir, in the order a removal deletes them
/// ([`COMPILEDIR_META`] last: it is what marks the directory as xcache's).
pub const COMPILEDIR_FILES: &[&str] = &[
    AUTO_PRUNE_MARK,
    GC_LOCK,
    INDEX,
    INDEX_LOCK,
    LAST_USE,
    COMPILEDIR_META,
];
/// The directories of a compiledir, each trust-checked like the compiledir itself.
pub const COMPILEDIR_SUBDIRS: &[&str] = &[
    ENTRIES, MANIFESTS, LOCKS, TMP, QUARANTINE, TOOLCHAINS, STATS,
];

/// An entry's metadata; its presence marks a complete entry (written last).
pub const ENTRY_META: &str = "entry.json";
/// The compiled shared object.
pub const ARTIFACT: &str = "lib.so";
/// A CUDA module compiled by NVRTC for one GPU arch, loaded through the driver.
pub const CUBIN: &str = "kernel.cubin";
/// A CUDA module as PTX (NVRTC, for a virtual arch), compiled by the driver at load.
pub const PTX: &str = "kernel.ptx";
/// Every artifact an entry can hold (exactly one of them): `entry.json` names it.
pub const ARTIFACTS: &[&str] = &[ARTIFACT, CUBIN, PTX];
/// The directory of an artifact group's files inside its entry (`files/<name>`): the
/// names are the producer's own, kept apart from the entry's.
pub const GROUP_FILES: &str = "files";
/// Empty file whose mtime is when the entry's path was last handed out to a caller
/// that does not hold the key's lock (`xcache compile`, `Jit::build`).
pub const HANDED_OUT: &str = "handed-out";
/// The identity (inode, ctime, size) of the artifact when it was last hashed and matched
/// its metadata: a hit of the very same file need not hash it again.
pub const VERIFIED: &str = "verified";
/// The source file of each language, inside an entry or a staging directory.
pub const SOURCE_FILES: &[&str] = &["source.c", "source.cpp", "source.cu"];
/// What the compiler printed, kept in a failed build's directory.
pub const COMPILER_OUTPUT: &str = "compiler-output.txt";
/// Names an entry holds besides the source and extra inputs: extra inputs may not use
/// them.
pub const ENTRY_FILES: &[&str] = &[
    ENTRY_META,
    ARTIFACT,
    CUBIN,
    PTX,
    LAST_USE,
    HANDED_OUT,
    VERIFIED,
    COMPILER_OUTPUT,
];

/// The counters of every process, under the file's own lock.
pub const STATS_COUNTERS: &str = "counters.json";

/// Prefix of the private fallback root in the temporary directory, followed by the
/// user id: `$TMPDIR/xcache-private-<uid>/`.
pub const PRIVATE_ROOT_PREFIX: &str = "xcache-private-";

/// `entries/<fan>`.
pub fn entry_fan(key: &Key) -> PathBuf {
    Path::new(ENTRIES).join(key.fan())
}

/// `entries/<fan>/<key>`.
pub fn entry(key: &Key) -> PathBuf {
    entry_fan(key).join(key.hex())
}

/// `locks/<fan>`.
pub fn lock_fan(key: &Key) -> PathBuf {
    Path::new(LOCKS).join(key.fan())
}

/// `locks/<fan>/<key>.lock`.
pub fn lock(key: &Key) -> PathBuf {
    lock_fan(key).join(lock_file_name(key))
}

/// `<key>.lock`.
pub fn lock_file_name(key: &Key) -> String {
    format!("{}.lock", key.hex())
}

/// The key of a lock file's name.
pub fn parse_lock_file_name(name: &str) -> Option<Key> {
    name.strip_suffix(".lock")?.parse().ok()
}

/// `manifests/<fan>`.
pub fn manifest_fan(key: &Key) -> PathBuf {
    Path::new(MANIFESTS).join(key.fan())
}

/// `manifests/<fan>/<key>.manifest`.
pub fn manifest(key: &Key) -> PathBuf {
    manifest_fan(key).join(format!("{}.manifest", key.hex()))
}

/// The key of a manifest file's name.
pub fn parse_manifest_file_name(name: &str) -> Option<Key> {
    name.strip_suffix(".manifest")?.parse().ok()
}

/// The name of a rendered template request's memo in `toolchains/`:
/// `render-<digest>.json` (see [`crate::store::Store::read_rendered`]).
pub fn rendered_record_name(digest: &Key) -> String {
    format!("{RENDERED_PREFIX}{}.json", digest.hex())
}

/// What a rendered memo's name starts with.
pub const RENDERED_PREFIX: &str = "render-";

/// The digest of a `toolchains/render-<digest>.json` name.
pub fn parse_rendered_record_name(name: &str) -> Option<Key> {
    name.strip_prefix(RENDERED_PREFIX)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// `toolchains/<name>`.
pub fn toolchain_record(name: &str) -> PathBuf {
    Path::new(TOOLCHAINS).join(name)
}

/// `stats/counters.json`.
pub fn stats_counters() -> PathBuf {
    Path::new(STATS).join(STATS_COUNTERS)
}

/// True for a fan directory's name: two lowercase hex digits.
pub fn is_fan(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The kinds of directory under `tmp/` (and under the private root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TmpKind {
    /// `build-<key>-<unique>`: a build in progress; its builder holds the key's lock.
    Staging,
    /// `failed-<key>-<unique>`: a failed build kept for inspection.
    Failed,
    /// `delete-<key>-<unique>`: an entry being removed (renamed out of `entries/`
    /// first); its remover holds the key's lock.
    Removal,
}

impl TmpKind {
    fn prefix(self) -> &'static str {
        match self {
            TmpKind::Staging => "build-",
            TmpKind::Failed => "failed-",
            TmpKind::Removal => "delete-",
        }
    }

    /// Every kind.
    pub const ALL: [TmpKind; 3] = [TmpKind::Staging, TmpKind::Failed, TmpKind::Removal];
}

/// A parsed `tmp/` name: its kind, the key it is about and a unique tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpName {
    /// What it is.
    pub kind: TmpKind,
    /// The key. `None` only for staging and removals named by an older xcache with a
    /// shortened key (`build-<16 hex>-…`, `delete-<16 hex>-…`), whose lock cannot be
    /// found (they are judged by age alone).
    pub key: Option<Key>,
    /// What makes the name unique.
    pub unique: String,
}

impl TmpName {
    /// A fresh name of `kind` for `key`.
    pub fn new(kind: TmpKind, key: &Key) -> TmpName {
        TmpName {
            kind,
            key: Some(*key),
            unique: unique(),
        }
    }

    /// Parses a name under `tmp/`; `None` for names xcache does not make.
    pub fn parse(name: &str) -> Option<TmpName> {
        let (kind, rest) = TmpKind::ALL
            .iter()
            .find_map(|k| name.strip_prefix(k.prefix()).map(|r| (*k, r)))?;
        let (key_text, unique) = rest.split_once('-')?;
        if unique.is_empty()
            || !unique
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return None;
        }
        let key = match key_text.parse::<Key>() {
            Ok(k) => Some(k),
            Err(_)
                if kind != TmpKind::Failed
                    && key_text.len() == 16
                    && key_text.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                None
            }
            Err(_) => return None,
        };
        Some(TmpName {
            kind,
            key,
            unique: unique.to_string(),
        })
    }

    /// The name.
    pub fn format(&self) -> String {
        let key = self.key.map(|k| k.hex()).unwrap_or_default();
        format!("{}{key}-{}", self.kind.prefix(), self.unique)
    }

    /// `tmp/<name>`.
    pub fn rel(&self) -> PathBuf {
        Path::new(TMP).join(self.format())
    }
}

/// A parsed `quarantine/` name: `<key>-<unix secs>-<unique>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineName {
    /// The corrupt entry's key.
    pub key: Key,
    /// When it was moved aside.
    pub secs: u64,
    /// What makes the name unique.
    pub unique: String,
}

impl QuarantineName {
    /// A fresh name for `key`, quarantined at `secs`.
    pub fn new(key: &Key, secs: u64) -> QuarantineName {
        QuarantineName {
            key: *key,
            secs,
            unique: unique(),
        }
    }

    /// Parses a name under `quarantine/`.
    pub fn parse(name: &str) -> Option<QuarantineName> {
        let key = name.get(..64)?.parse().ok()?;
        let rest = name.get(64..)?.strip_prefix('-')?;
        let (secs, unique) = rest.split_once('-')?;
        Some(QuarantineName {
            key,
            secs: secs.parse().ok()?,
            unique: unique.to_string(),
        })
    }

    /// The name.
    pub fn format(&self) -> String {
        format!("{}-{}-{}", self.key.hex(), self.secs, self.unique)
    }

    /// `quarantine/<name>`.
    pub fn rel(&self) -> PathBuf {
        Path::new(QUARANTINE).join(self.format())
    }
}

/// A unique tail for a name: the process id and a per-process counter (unique on one
/// host), plus the time in nanoseconds (unique across hosts sharing a file system).
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ (d.as_secs() << 30))
        .unwrap_or(0);
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff_ffff_ffff
    )
}

/// Absolute paths inside one compiledir (any compiledir, not only the current one),
/// for messages and for the tools that need a path (the compiler, `dlopen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    root: PathBuf,
}

impl Dirs {
    /// The layout of the compiledir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Dirs {
        Dirs { root: root.into() }
    }

    /// The compiledir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<rel>`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `entries/`.
    pub fn entries(&self) -> PathBuf {
        self.root.join(ENTRIES)
    }

    /// `entries/<fan>/<key>`.
    pub fn entry(&self, key: &Key) -> PathBuf {
        self.root.join(entry(key))
    }

    /// `locks/`.
    pub fn locks(&self) -> PathBuf {
        self.root.join(LOCKS)
    }

    /// `locks/<fan>/<key>.lock`.
    pub fn lock(&self, key: &Key) -> PathBuf {
        self.root.join(lock(key))
    }

    /// `tmp/`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// `quarantine/`.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join(QUARANTINE)
    }

    /// `toolchains/`.
    pub fn toolchains(&self) -> PathBuf {
        self.root.join(TOOLCHAINS)
    }

    /// `stats/`.
    pub fn stats(&self) -> PathBuf {
        self.root.join(STATS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        "ab".repeat(32).parse().unwrap()
    }

    /// The names are the on-disk format: this test changes only with LAYOUT_VERSION.
    #[test]
    fn names_are_pinned() {
        let k = key();
        let h = k.hex();
        assert_eq!(entry(&k), Path::new(&format!("entries/ab/{h}")));
        assert_eq!(lock(&k), Path::new(&format!("locks/ab/{h}.lock")));
        assert_eq!(
            manifest(&k),
            Path::new(&format!("manifests/ab/{h}.manifest"))
        );
        assert_eq!(parse_manifest_file_name(&format!("{h}.manifest")), Some(k));
        assert_eq!(stats_counters(), Path::new("stats/counters.json"));
        assert_eq!(toolchain_record("x.json"), Path::new("toolchains/x.json"));
        assert_eq!(rendered_record_name(&k), format!("render-{h}.json"));
        assert_eq!(
            parse_rendered_record_name(&format!("render-{h}.json")),
            Some(k)
        );
        assert_eq!(parse_rendered_record_name("nvrtc-ab.json"), None);
        assert_eq!(
            COMPILEDIR_SUBDIRS,
            &[
                "entries",
                "manifests",
                "locks",
                "tmp",
                "quarantine",
                "toolchains",
                "stats"
            ]
        );
        assert_eq!(
            COMPILEDIR_FILES,
            &[
                "auto-prune",
                "gc.lock",
                "index",
                "index.lock",
                "last-use",
                "compiledir.json"
            ]
        );
        assert_eq!(
            ENTRY_FILES,
            &[
                "entry.json",
                "lib.so",
                "kernel.cubin",
                "kernel.ptx",
                "last-use",
                "handed-out",
                "verified",
                "compiler-output.txt"
            ]
        );
        assert_eq!(ARTIFACTS, &["lib.so", "kernel.cubin", "kernel.ptx"]);
        assert_eq!(CACHEDIR_TAG, "CACHEDIR.TAG");
        assert!(CACHEDIR_TAG_TEXT.starts_with("Signature: 8a477f597d28d172789f06886806bc55\n"));
        assert_eq!(PRIVATE_ROOT_PREFIX, "xcache-private-");
        for (kind, prefix) in [
            (TmpKind::Staging, "build-"),
            (TmpKind::Failed, "failed-"),
            (TmpKind::Removal, "delete-"),
        ] {
            let n = TmpName {
                kind,
                key: Some(k),
                unique: "12-3-abc".into(),
            };
            assert_eq!(n.format(), format!("{prefix}{h}-12-3-abc"));
            assert_eq!(n.rel(), Path::new("tmp").join(n.format()));
        }
        let q = QuarantineName {
            key: k,
            secs: 1_800_000_000,
            unique: "7-0-ff".into(),
        };
        assert_eq!(q.format(), format!("{h}-1800000000-7-0-ff"));
    }

    #[test]
    fn names_parse_back_and_strangers_do_not() {
        let k = key();
        for kind in TmpKind::ALL {
            let n = TmpName::new(kind, &k);
            assert_eq!(TmpName::parse(&n.format()), Some(n));
        }
        let q = QuarantineName::new(&k, 42);
        assert_eq!(QuarantineName::parse(&q.format()), Some(q));
        // Staging and removals named by the previous format (a 16-digit key) are still
        // recognised.
        let old = TmpName::parse("delete-abababababababab-123-4").unwrap();
        assert_eq!((old.kind, old.key), (TmpKind::Removal, None));
        let old = TmpName::parse("build-abababababababab-123-4").unwrap();
        assert_eq!((old.kind, old.key), (TmpKind::Staging, None));
        for stranger in [
            "notes.txt",
            "build-",
            "build-xyz-1",
            &format!("build-{}", k.hex()),
            &format!("build-{}-", k.hex()),
            &format!("build-{}-a/b", k.hex()),
            "failed-abababababababab-1",
            ".build-x",
        ] {
            assert_eq!(TmpName::parse(stranger), None, "{stranger}");
        }
        assert_eq!(QuarantineName::parse("abc"), None);
        assert_eq!(parse_lock_file_name(&lock_file_name(&k)), Some(k));
        assert_eq!(parse_lock_file_name("ab.lock"), None);
        assert!(is_fan("0f") && !is_fan("0F") && !is_fan("abc") && !is_fan("g0"));
        assert_ne!(unique(), unique());
    }
}
