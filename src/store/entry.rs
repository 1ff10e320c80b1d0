//! One entry: the artifact (`lib.so`, or `kernel.cubin` / `kernel.ptx` from NVRTC), the source, `entry.json` (written last), `last-use` and
//! `handed-out`. Everything is read through the entry directory's descriptor, without
//! following links (see [`crate::fsx`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::key::{Key, KeyMaterial};
use super::layout;
use crate::error::{Error, Result};
use crate::fsx::{OpenHow, Root};

/// Metadata file of an entry; its presence marks a complete entry.
pub const ENTRY_FILE: &str = layout::ENTRY_META;
/// The compiled shared object.
pub const ARTIFACT_FILE: &str = layout::ARTIFACT;
/// Empty file whose mtime is the entry's last use.
pub const LAST_USE_FILE: &str = layout::LAST_USE;

/// The artifact's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside the entry directory.
    pub file: String,
    /// blake3 of its bytes, hex.
    pub blake3: String,
    /// Size in bytes.
    pub size: u64,
}

/// Contents of `entry.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Layout version that wrote it.
    pub format: u32,
    /// The key, hex; equals the directory name.
    pub key: String,
    /// What the user called the source (`saxpy.c`, or a template name).
    pub source_name: String,
    /// The source file inside the entry directory.
    pub source_file: String,
    /// The compiled artifact.
    pub artifact: Artifact,
    /// When it was compiled, seconds since the Unix epoch.
    pub created: u64,
    /// How long the compiler ran, in milliseconds.
    pub compile_ms: u64,
    /// What the compiler printed on success (warnings), if anything.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compiler_output: String,
    /// Bytes of the entry's other files (all but `entry.json`), recorded when it was
    /// sealed, so that listing a large cache needs no stat of each file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileBytes>,
    /// Everything the request key was derived from.
    pub key_material: KeyMaterial,
    /// For a dependency-tracked result: the request key it was built under (the key
    /// of `key_material`); the entry's own key is [`super::key::result_key`] of it and
    /// `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// For a dependency-tracked result: the headers the compiler read, with the hash
    /// each had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderDigest>,
    /// Who made it: `xcache` when absent (it compiled it), else the compiler whose
    /// artifacts it keeps (`numba`, `triton`, `cupy`, `pytensor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    /// For an artifact group (files another compiler built): its key material and its
    /// files. The artifact is then its first file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupMeta>,
}

impl EntryMeta {
    /// Who made it: `xcache`, or the producer of a group.
    pub fn producer(&self) -> &str {
        self.producer.as_deref().unwrap_or("xcache")
    }
}

/// What an artifact group holds besides what every entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The producer's own key material, as it gave it (what the group is keyed by,
    /// with the producer and the compiledir: [`super::key::group_key`]).
    pub material: String,
    /// Every file, by its name under `files/` in the entry, with its size and hash.
    pub members: Vec<Artifact>,
}

/// A header a result was built from, by path and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderDigest {
    /// Absolute path.
    pub path: String,
    /// blake3 of its contents when the result was built, hex.
    pub blake3: String,
}

/// Apparent and allocated bytes of a set of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBytes {
    /// Sum of their lengths.
    pub apparent: u64,
    /// Sum of their allocated blocks, in bytes.
    pub disk: u64,
}

/// Why an entry cannot be used. Every variant means the entry itself is bad (it is
/// quarantined and rebuilt); a failure to *read* it for reasons of this process
/// (EMFILE, EIO, ...) is a [`VerifyError::Io`] instead, and leaves the entry alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// `entry.json` is missing.
    MissingMetadata,
    /// `entry.json` is not valid metadata.
    BadMetadata(String),
    /// Metadata names another key than the directory.
    WrongKey(String),
    /// The artifact is missing.
    MissingArtifact,
    /// The artifact's size or hash differs from the metadata.
    HashMismatch {
        /// What metadata says.
        expected: String,
        /// What the file has.
        actual: String,
    },
    /// The entry or its artifact is owned by another user or writable by others:
    /// someone else could have put code there.
    Untrusted(String),
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::MissingMetadata => write!(f, "{ENTRY_FILE} is missing"),
            Corruption::BadMetadata(e) => write!(f, "{ENTRY_FILE} is not valid: {e}"),
            Corruption::WrongKey(k) => write!(f, "{ENTRY_FILE} belongs to key {k}"),
            Corruption::MissingArtifact => write!(f, "{ARTIFACT_FILE} is missing"),
            Corruption::HashMismatch { expected, actual } => write!(
                f,
                "{ARTIFACT_FILE} does not match its recorded hash (expected {expected}, found {actual})"
            ),
            Corruption::Untrusted(why) => write!(f, "{why}"),
        }
    }
}

/// The outcome of checking an entry that is not a clean pass.
#[derive(Debug)]
pub enum VerifyError {
    /// The entry is bad.
    Corrupt(Corruption),
    /// It could not be read (the error is this process's, not the entry's).
    Io(std::path::PathBuf, std::io::Error),
    /// A directory on the way to it (its fan directory) fails the trust rules: someone
    /// else could swap entries there. Not the entry's fault, and not to be repaired by
    /// rebuilding into the same directory: the cache is untrusted until it is fixed.
    UntrustedDir(std::path::PathBuf, String),
}

impl VerifyError {
    /// As the error a request reports: an untrusted directory is a cache fault (the
    /// request compiles privately), an I/O error is this process's.
    pub fn into_error(self) -> crate::Error {
        match self {
            VerifyError::Io(p, e) => crate::Error::io("reading", p, e),
            VerifyError::UntrustedDir(p, why) => crate::Error::Untrusted {
                path: p,
                reason: why,
                fix: "`chmod go-w` it if it is yours, or `xcache verify --repair`, which removes it (its entries are rebuilt)".into(),
            },
            VerifyError::Corrupt(c) => crate::Error::io(
                "checking",
                std::path::PathBuf::new(),
                std::io::Error::other(c.to_string()),
            ),
        }
    }
}

impl From<Corruption> for VerifyError {
    fn from(c: Corruption) -> Self {
        VerifyError::Corrupt(c)
    }
}

/// blake3 and size of a file (a compiler binary; not for files in the cache).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    hash_open_file(&File::open(path)?)
}

/// blake3 and size of an open file, read from its start.
pub fn hash_open_file(f: &File) -> std::io::Result<(String, u64)> {
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut &*f, &mut h)?;
    Ok((h.finalize().to_hex().to_string(), n))
}

/// Why a file or directory must not be trusted (see [`super::trust`]).
pub use super::trust::untrusted;

/// Opens a file of an entry for reading without following a link; a link or a missing
/// file is the entry's fault (`missing`), anything else this process's.
fn open_in_entry(
    entry: &Root,
    name: &str,
    missing: Corruption,
) -> std::result::Result<File, VerifyError> {
    match entry.open_file(name, OpenHow::read()) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing.into()),
        Err(e) if crate::fsx::is_link_refusal(&e) => Err(Corruption::Untrusted(format!(
            "{name} is a symbolic link, which xcache never makes or follows"
        ))
        .into()),
        Err(e) => Err(VerifyError::Io(entry.join(name), e)),
    }
}

fn read_all(
    mut f: File,
    path: impl FnOnce() -> std::path::PathBuf,
) -> std::result::Result<Vec<u8>, VerifyError> {
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| VerifyError::Io(path(), e))?;
    Ok(bytes)
}

/// Reads and parses an entry's metadata, checking it names `key`.
pub fn read_meta(entry: &Root, key: &Key) -> std::result::Result<EntryMeta, VerifyError> {
    let f = open_in_entry(entry, ENTRY_FILE, Corruption::MissingMetadata)?;
    let bytes = read_all(f, || entry.join(ENTRY_FILE))?;
    Ok(parse_meta(&bytes, key)?)
}

/// Parses `entry.json`'s bytes and checks them against the key they are filed under.
pub fn parse_meta(bytes: &[u8], key: &Key) -> std::result::Result<EntryMeta, Corruption> {
    let meta: EntryMeta =
        serde_json::from_slice(bytes).map_err(|e| Corruption::BadMetadata(e.to_string()))?;
    if meta.key != key.hex() {
        return Err(Corruption::WrongKey(meta.key));
    }
    // A plain name in the entry, or, for a group, `files/<plain name>` of a member.
    let plain = |n: &str| !n.is_empty() && !n.contains('/') && !n.starts_with('.');
    let artifact_ok = match &meta.group {
        Some(g) => {
            meta.artifact
                .file
                .strip_prefix(&format!("{}/", layout::GROUP_FILES))
                .is_some_and(|m| plain(m) && g.members.iter().any(|x| x.file == m))
                && g.members.iter().all(|m| plain(&m.file))
        }
        None => plain(&meta.artifact.file),
    };
    if !artifact_ok {
        return Err(Corruption::BadMetadata(format!(
            "artifact file name {:?} is not a plain name",
            meta.artifact.file
        )));
    }
    Ok(meta)
}

/// What `list` shows of an entry: `entry.json` read without the fields it does not
/// show (the toolchain's version text, the flags), which is most of the parsing work
/// over a large cache.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedMeta {
    /// The key, hex.
    pub key: String,
    /// Source name.
    pub source_name: String,
    /// Creation time.
    pub created: u64,
    /// Compile time, ms.
    pub compile_ms: u64,
    /// Bytes of the other files, when recorded.
    #[serde(default)]
    pub files: Option<FileBytes>,
    /// The parts of the key material that are shown.
    pub key_material: ListedKeyMaterial,
    /// Length of `entry.json` itself (not in the file: measured when read).
    #[serde(skip)]
    pub json_len: u64,
}

/// See [`ListedMeta`].
#[derive(Debug, Clone, Deserialize)]
pub struct ListedKeyMaterial {
    /// Language.
    pub language: String,
    /// Target.
    pub target: super::key::Target,
    /// Template, if any.
    #[serde(default)]
    pub template: Option<super::key::TemplateRef>,
}

/// Reads the parts of `entry.json` that `list` shows, checking it names `key`.
/// `compiledir` is the compiledir's root; the entry is found by its key.
pub fn read_listed(compiledir: &Root, key: &Key) -> std::result::Result<ListedMeta, VerifyError> {
    let rel = layout::entry(key).join(ENTRY_FILE);
    let f = match compiledir.open_file(&rel, OpenHow::read()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Corruption::MissingMetadata.into())
        }
        Err(e) if crate::fsx::is_link_refusal(&e) => {
            return Err(Corruption::Untrusted(format!(
                "{ENTRY_FILE} or its entry is a symbolic link, which xcache never makes or follows"
            ))
            .into())
        }
        Err(e) => return Err(VerifyError::Io(compiledir.join(&rel), e)),
    };
    let bytes = read_all(f, || compiledir.join(&rel))?;
    let mut meta: ListedMeta =
        serde_json::from_slice(&bytes).map_err(|e| Corruption::BadMetadata(e.to_string()))?;
    if meta.key != key.hex() {
        return Err(Corruption::WrongKey(meta.key).into());
    }
    meta.json_len = bytes.len() as u64;
    Ok(meta)
}

/// Full check of an entry: metadata, the artifact's owner and mode, its size and blake3.
///
/// Unless `full`, the blake3 is skipped when the entry's `verified` record says that this
/// very file — same inode, same ctime, same size — was hashed before and matched (see
/// [`record_verified`]): any write to the file, a chmod, a rename over it or a
/// replacement changes its inode or ctime, which user programs cannot set back. `full`
/// (what `xcache verify` asks) always hashes: it is also what finds bits rotted on disk
/// without a write.
pub fn verify(
    entry: &Root,
    key: &Key,
    full: bool,
) -> std::result::Result<(EntryMeta, File), VerifyError> {
    let meta = read_meta(entry, key)?;
    let file = open_in_entry(entry, &meta.artifact.file, Corruption::MissingArtifact)?;
    let path = || entry.join(&meta.artifact.file);
    let md = file.metadata().map_err(|e| VerifyError::Io(path(), e))?;
    if !md.is_file() {
        return Err(
            Corruption::Untrusted(format!("{} is not a regular file", meta.artifact.file)).into(),
        );
    }
    if let Some(why) = untrusted(&meta.artifact.file, &md) {
        return Err(Corruption::Untrusted(why).into());
    }
    let identity = FileIdentity::of(&md);
    let recorded = read_verified(entry)
        .is_some_and(|(id, hash)| id == identity && hash == meta.artifact.blake3);
    if !full && recorded {
        if let Some(g) = &meta.group {
            verify_members(
                entry,
                &meta,
                g,
                full,
                (&identity, &meta.artifact.blake3, false),
            )?;
        }
        return Ok((meta, file));
    }
    let (hash, size) = hash_open_file(&file).map_err(|e| VerifyError::Io(path(), e))?;
    if size != meta.artifact.size || hash != meta.artifact.blake3 {
        return Err(Corruption::HashMismatch {
            expected: format!(
                "{} bytes, {}",
                meta.artifact.size,
                &meta.artifact.blake3[..16.min(meta.artifact.blake3.len())]
            ),
            actual: format!("{size} bytes, {}", &hash[..16]),
        }
        .into());
    }
    // Matched: record it (unless that is what the record says already), so that the
    // next hit of this same file need not hash it. A read-only cache keeps hashing,
    // which is correct, only slower. A group's members are checked (and recorded) too.
    match &meta.group {
        Some(g) => verify_members(entry, &meta, g, full, (&identity, &hash, !recorded))?,
        None if !recorded => record_verified(entry, &identity, &hash),
        None => {}
    }
    Ok((meta, file))
}

/// What identifies one state of a file: inode, device, ctime and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    ctime_ns: i128,
    size: u64,
}

impl FileIdentity {
    /// The identity of the file `md` describes.
    pub fn of(md: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
            size: md.size(),
        }
    }
}

/// The entry's `verified` record: the identity of each file when it was last hashed and
/// found to match, and that hash, by file name (the artifact's line names none).
fn read_verified_all(entry: &Root) -> std::collections::HashMap<String, (FileIdentity, String)> {
    let mut out = std::collections::HashMap::new();
    let Ok(f) = entry.open_file(layout::VERIFIED, OpenHow::read()) else {
        return out;
    };
    let mut text = String::new();
    if f.take(1 << 20).read_to_string(&mut text).is_err() {
        return out;
    }
    for line in text.lines() {
        let mut w = line.split_ascii_whitespace();
        let name = match (w.next(), w.next()) {
            (Some("xcache-verified"), Some("1")) => String::new(),
            (Some("xcache-verified-member"), Some(name)) => name.to_string(),
            _ => continue,
        };
        let mut num = || w.next()?.parse::<i128>().ok();
        let (Some(dev), Some(ino), Some(ctime_ns), Some(size)) = (num(), num(), num(), num())
        else {
            continue;
        };
        let Some(hash) = w.next() else { continue };
        out.insert(
            name,
            (
                FileIdentity {
                    dev: dev as u64,
                    ino: ino as u64,
                    ctime_ns,
                    size: size as u64,
                },
                hash.to_string(),
            ),
        );
    }
    out
}

/// The artifact's line of the `verified` record.
fn read_verified(entry: &Root) -> Option<(FileIdentity, String)> {
    read_verified_all(entry).remove("")
}

/// Records that the artifact, as `identity` describes it, hashed to `hash`, which its
/// metadata records. Written whole (a temporary file renamed into place), not synced:
/// it is advice, and one lost or damaged by a crash costs a hash; a failure (a
/// read-only cache) is ignored.
pub fn record_verified(entry: &Root, identity: &FileIdentity, hash: &str) {
    let text = verified_record(identity, hash);
    let _ = entry.write_replace(layout::VERIFIED, text.as_bytes(), super::trust::file_mode());
}

/// The contents of a `verified` record.
pub fn verified_record(identity: &FileIdentity, hash: &str) -> String {
    format!(
        "xcache-verified 1 {} {} {} {} {hash}\n",
        identity.dev, identity.ino, identity.ctime_ns, identity.size
    )
}

/// The line of a `verified` record for the group member `name`.
pub fn verified_member_record(name: &str, identity: &FileIdentity, hash: &str) -> String {
    format!(
        "xcache-verified-member {name} {} {} {} {} {hash}\n",
        identity.dev, identity.ino, identity.ctime_ns, identity.size
    )
}

/// Checks every member of a group but the artifact (checked already): each a regular
/// file of ours under `files/`, of the size and hash its metadata records (by the
/// `verified` record's identity unless `full`). Rewrites the record when a member was
/// hashed and matched.
fn verify_members(
    entry: &Root,
    meta: &EntryMeta,
    group: &GroupMeta,
    full: bool,
    artifact: (&FileIdentity, &str, bool),
) -> std::result::Result<(), VerifyError> {
    let recorded = read_verified_all(entry);
    let mut lines = verified_record(artifact.0, artifact.1);
    // The artifact was hashed now: its line is new.
    let mut hashed = artifact.2;
    for m in &group.members {
        let rel = format!("{}/{}", layout::GROUP_FILES, m.file);
        if rel == meta.artifact.file {
            continue;
        }
        let file = open_in_entry(entry, &rel, Corruption::MissingArtifact)?;
        let md = file
            .metadata()
            .map_err(|e| VerifyError::Io(entry.join(&rel), e))?;
        if !md.is_file() {
            return Err(Corruption::Untrusted(format!("{rel} is not a regular file")).into());
        }
        if let Some(why) = untrusted(&rel, &md) {
            return Err(Corruption::Untrusted(why).into());
        }
        let identity = FileIdentity::of(&md);
        let vouched = !full
            && recorded
                .get(&m.file)
                .is_some_and(|(id, h)| *id == identity && *h == m.blake3);
        if !vouched {
            let (hash, size) =
                hash_open_file(&file).map_err(|e| VerifyError::Io(entry.join(&rel), e))?;
            if size != m.size || hash != m.blake3 {
                return Err(Corruption::HashMismatch {
                    expected: format!(
                        "{rel}: {} bytes, {}",
                        m.size,
                        &m.blake3[..16.min(m.blake3.len())]
                    ),
                    actual: format!("{size} bytes, {}", &hash[..16]),
                }
                .into());
            }
            hashed = true;
        }
        lines.push_str(&verified_member_record(&m.file, &identity, &m.blake3));
    }
    if hashed {
        let _ = entry.write_replace(
            layout::VERIFIED,
            lines.as_bytes(),
            super::trust::file_mode(),
        );
    }
    Ok(())
}

/// Writes `entry.json` into a staging directory and returns it open, not yet synced
/// (the caller fsyncs it with the entry's other files).
pub fn write_meta(staging: &Root, meta: &EntryMeta) -> Result<std::fs::File> {
    let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
    let path = staging.join(ENTRY_FILE);
    let mut f = staging
        .create_file(ENTRY_FILE, super::trust::file_mode())
        .map_err(|e| Error::io("creating", &path, e))?;
    f.write_all(&json)
        .map_err(|e| Error::io("writing", &path, e))?;
    Ok(f)
}

/// The mtime of `root/rel` (not following a link), if it exists.
pub fn mtime(root: &Root, rel: impl AsRef<Path>) -> Option<SystemTime> {
    let st = root.lstat_fast(rel).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(st.st_mtime as u64, st.st_mtime_nsec as u32))
}

/// The last-use time of the directory `dir` below `root` (the mtime of its `last-use`).
pub fn last_use(root: &Root, dir: impl AsRef<Path>) -> Option<SystemTime> {
    mtime(root, dir.as_ref().join(LAST_USE_FILE))
}

/// Sets the mtime of the marker file `root/rel` to `now`, creating the file if it is
/// missing. Never follows a link; never fails the caller (a read-only cache keeps
/// its old record): returns whether it was written.
pub fn touch(root: &Root, rel: impl AsRef<Path>, now: SystemTime) -> bool {
    let rel = rel.as_ref();
    match root.set_mtime(rel, now) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => root
            .create_file(rel, super::trust::file_mode())
            .and_then(|f| f.set_modified(now))
            .is_ok(),
        Err(_) => false,
    }
}

/// Records a use of the directory `dir` below `root` at `now` if the recorded one is
/// older than `resolution`. Never fails: a read-only cache just keeps its old record.
pub fn touch_last_use(
    root: &Root,
    dir: impl AsRef<Path>,
    now: SystemTime,
    resolution: Duration,
) -> bool {
    let dir = dir.as_ref();
    if let Some(prev) = last_use(root, dir) {
        match now.duration_since(prev) {
            Ok(age) if age < resolution => return false,
            Err(_) => return false, // recorded in the future (clock skew): leave it
            Ok(_) => {}
        }
    }
    touch(root, dir.join(LAST_USE_FILE), now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_use_is_coarse() {
        let dir = tempfile::tempdir().unwrap();
        let r = Root::open(dir.path()).unwrap();
        let here = Path::new("");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        assert!(touch_last_use(&r, here, t0, hour));
        assert_eq!(last_use(&r, here), Some(t0));
        // 30 minutes later: no write.
        assert!(!touch_last_use(&r, here, t0 + hour / 2, hour));
        assert_eq!(last_use(&r, here), Some(t0));
        // Two hours later: written.
        assert!(touch_last_use(&r, here, t0 + 2 * hour, hour));
        assert_eq!(last_use(&r, here), Some(t0 + 2 * hour));
        // A clock that went backwards does not rewind the record.
        assert!(!touch_last_use(&r, here, t0, hour));
        assert_eq!(last_use(&r, here), Some(t0 + 2 * hour));
    }

    #[test]
    fn a_planted_marker_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("v");
        std::fs::write(&victim, "x").unwrap();
        let before = std::fs::metadata(&victim).unwrap().modified().unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LAST_USE_FILE)).unwrap();
        let r = Root::open(dir.path()).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        touch_last_use(&r, Path::new(""), t, Duration::ZERO);
        assert_eq!(
            std::fs::metadata(&victim).unwrap().modified().unwrap(),
            before
        );
    }

    /// The `verified` record spares the hash of the very file it names, and of nothing
    /// else: any write changes the ctime; a record that lies about the hash is ignored.
    #[test]
    fn the_verified_record_spares_the_hash_of_the_same_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = Root::open(dir.path()).unwrap();
        let key: Key = "ab".repeat(32).parse().unwrap();
        let lib = b"a shared object".to_vec();
        std::fs::write(dir.path().join(ARTIFACT_FILE), &lib).unwrap();
        let meta = EntryMeta {
            format: crate::platform::LAYOUT_VERSION,
            key: key.hex(),
            source_name: "k.c".into(),
            source_file: "source.c".into(),
            artifact: Artifact {
                file: ARTIFACT_FILE.into(),
                blake3: blake3::hash(&lib).to_hex().to_string(),
                size: lib.len() as u64,
            },
            created: 0,
            compile_ms: 0,
            compiler_output: String::new(),
            files: None,
            key_material: KeyMaterial {
                encoding: 0,
                layout: 2,
                language: "c".into(),
                source_blake3: String::new(),
                toolchain: crate::store::key::Toolchain {
                    path: "/bin/cc".into(),
                    version: String::new(),
                    binary: String::new(),
                },
                flags: vec![],
                target: crate::store::key::Target {
                    triple: "t".into(),
                    cpu: None,
                },
                extra_inputs: vec![],
                runtime_tag: String::new(),
                template: None,
            },
            request_key: None,
            headers: Vec::new(),
            producer: None,
            group: None,
        };
        write_meta(&r, &meta).unwrap();
        let record = || std::fs::read_to_string(dir.path().join(layout::VERIFIED));
        assert!(record().is_err());
        verify(&r, &key, false).unwrap();
        let first = record().unwrap();
        assert!(first.starts_with("xcache-verified 1 "), "{first}");
        // Same file: verified without hashing (the record is not rewritten).
        verify(&r, &key, false).unwrap();
        assert_eq!(record().unwrap(), first);
        // Same size, other bytes: the write moved the ctime; the hash runs and fails.
        std::fs::write(dir.path().join(ARTIFACT_FILE), b"A shared object").unwrap();
        assert!(matches!(
            verify(&r, &key, false),
            Err(VerifyError::Corrupt(Corruption::HashMismatch { .. }))
        ));
        // A record claiming this file's state with the right hash, forged after the
        // write: `full` (what `xcache verify` does) still hashes, and finds it.
        let md = std::fs::metadata(dir.path().join(ARTIFACT_FILE)).unwrap();
        record_verified(&r, &FileIdentity::of(&md), &meta.artifact.blake3);
        assert!(matches!(
            verify(&r, &key, true),
            Err(VerifyError::Corrupt(Corruption::HashMismatch { .. }))
        ));
        // A record whose hash is not the metadata's is ignored.
        std::fs::write(dir.path().join(ARTIFACT_FILE), &lib).unwrap();
        let md = std::fs::metadata(dir.path().join(ARTIFACT_FILE)).unwrap();
        record_verified(&r, &FileIdentity::of(&md), &"0".repeat(64));
        verify(&r, &key, false).unwrap();
        assert!(record()
            .unwrap()
            .ends_with(&format!("{}\n", meta.artifact.blake3)));
    }
}
