//! Private builds: where a miss compiles when the cache cannot be written (read-only,
//! full, or something planted in it). They live under one directory per user in the
//! temporary directory, `$TMPDIR/xcache-private-<uid>/` (mode 0700, refused if it is a
//! link or someone else's), one `build-<key>-<unique>/` each.
//!
//! A build holds an exclusive `flock` on its own directory for as long as it lives. A
//! build whose library was only loaded is removed when it is dropped (a loaded library
//! survives the unlink); one whose path was handed out is kept, and collected by a
//! later private build or by `prune` once its lock is free and it is older than
//! `handout_grace` (see [`super::gc`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::key::Key;
use super::layout::{self, TmpKind, TmpName};
use crate::error::{Error, Result};
use crate::fsx::{self, Root};

/// `$TMPDIR/xcache-private-<uid>`.
pub fn root_path() -> PathBuf {
    std::env::temp_dir().join(format!("{}{}", layout::PRIVATE_ROOT_PREFIX, fsx::euid()))
}

/// Opens (creating if needed) this user's private root, refusing a link, a directory
/// owned by someone else, or one that others can write.
pub fn open_root() -> Result<Root> {
    use std::os::unix::fs::DirBuilderExt;
    let path = root_path();
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("creating a private build directory", &path, e)),
    }
    let root = Root::open(&path).map_err(|e| {
        if fsx::is_link_refusal(&e) || e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::Untrusted {
                path: path.clone(),
                reason: "it is not a directory of yours (a link or a file)".into(),
                fix: "remove it, or set TMPDIR to a private directory".into(),
            }
        } else {
            Error::io("opening a private build directory", &path, e)
        }
    })?;
    let st = root.stat().map_err(|e| Error::io("inspecting", &path, e))?;
    if st.st_uid != fsx::euid() || st.st_mode & 0o022 != 0 {
        return Err(Error::Untrusted {
            path,
            reason: format!(
                "it is owned by uid {} with mode {:03o}: another user could plant code in it",
                st.st_uid,
                st.st_mode & 0o777
            ),
            fix: "remove it, or set TMPDIR to a private directory".into(),
        });
    }
    Ok(root)
}

/// A name under which a dynamic loader opens exactly one open file: a fresh symbolic
/// link `load-<pid>-<n>` in this user's private root pointing at `/proc/self/fd/N`.
///
/// Why not `/proc/self/fd/N` itself: glibc's `dlopen` first compares the name with those
/// of the libraries already loaded, before it opens anything, and descriptor numbers are
/// reused: a second library loaded through a reused `/proc/self/fd/N` would be handed
/// the first one. A link name is never used twice in a process. The private root is
/// the user's own (0700, checked), so nobody else can replace the link; it is removed
/// when this is dropped, and the file it names must stay open until then.
#[derive(Debug)]
pub struct LoadName {
    root: Arc<Root>,
    name: String,
    path: PathBuf,
}

impl LoadName {
    /// A load name for `file`.
    pub fn new(file: &File) -> Result<LoadName> {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static ROOT: std::sync::Mutex<Option<Arc<Root>>> = std::sync::Mutex::new(None);
        let root = {
            let mut slot = ROOT.lock().unwrap();
            match &*slot {
                // Still there (a cleaner of the temporary directory may have removed it).
                Some(r) if r.stat().is_ok_and(|st| st.st_nlink > 0) => r.clone(),
                _ => {
                    let r = Arc::new(open_root()?);
                    *slot = Some(r.clone());
                    r
                }
            }
        };
        let name = format!(
            "load-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let target = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        // A leftover of a crashed process with a recycled pid: replace it.
        let _ = root.remove_file(&name);
        root.symlink(&target, &name)
            .map_err(|e| Error::io("creating a load name in", root.join(&name), e))?;
        Ok(LoadName {
            path: root.join(&name),
            root,
            name,
        })
    }

    /// The name to open.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoadName {
    fn drop(&mut self) {
        let _ = self.root.remove_file(&self.name);
    }
}

/// One private build directory, locked while this lives.
#[derive(Debug)]
pub struct PrivateBuild {
    root: Arc<Root>,
    name: TmpName,
    dir: Root,
    _lock: File,
    kept: bool,
}

impl PrivateBuild {
    /// A fresh, locked build directory for `key`.
    pub fn create(key: &Key) -> Result<PrivateBuild> {
        let root = Arc::new(open_root()?);
        let name = TmpName::new(TmpKind::Staging, key);
        let file_name = name.format();
        let dir = root
            .mkdir(&file_name, 0o700)
            .and_then(|()| root.open_dir(&file_name))
            .map_err(|e| Error::io("creating a private build directory in", root.path(), e))?;
        let lock = dir
            .dup_file()
            .map_err(|e| Error::io("locking", dir.path(), e))?;
        lock.lock()
            .map_err(|e| Error::io("locking", dir.path(), e))?;
        Ok(PrivateBuild {
            root,
            name,
            dir,
            _lock: lock,
            kept: false,
        })
    }

    /// The build directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The build directory's descriptor.
    pub fn root(&self) -> &Root {
        &self.dir
    }

    /// Keeps the directory after this is dropped (its path was handed out, or it holds
    /// a failed build's source); its age for collection starts at `now`.
    pub fn keep(&mut self, now: SystemTime) {
        self.kept = true;
        let _ = self.root.set_mtime(self.name.format(), now);
    }
}

impl Drop for PrivateBuild {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.root.remove_tree(self.name.format());
        }
    }
}

/// Whether the private build directory `root/rel` is locked by a live builder.
pub fn probe(root: &Root, rel: &Path) -> super::lock::LockState {
    use super::lock::LockState;
    let Ok(dir) = root.open_dir(rel) else {
        return LockState::Absent;
    };
    let Ok(f) = dir.dup_file() else {
        return LockState::Held;
    };
    match f.try_lock() {
        Ok(()) => {
            let _ = f.unlock();
            LockState::Free
        }
        Err(_) => LockState::Held,
    }
}
