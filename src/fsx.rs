//! File-system helpers at the bottom of the import graph: everything xcache creates,
//! writes, renames or removes under the base dir goes through a [`Root`], and is reached
//! without following a symbolic link in any component below it.
//!
//! Why: a link planted inside the cache (`locks/ab` → `/home/you`, or
//! `locks/ab/<key>.lock` → `~/.bashrc`) must never make xcache write, truncate or remove
//! something outside the cache. The base dir's own path is the user's choice (it may
//! pass through links, as `/home` sometimes does); everything beneath it is opened
//! relative to the base dir's descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (Linux 5.6+), or, where that system call is missing or
//! filtered, one component at a time with `O_NOFOLLOW`. A link met on the way is an
//! error ([`is_link_refusal`]), never followed. Files are opened with `O_NONBLOCK` as
//! well, so that a FIFO planted where a file should be cannot stall a process, and a
//! file opened for writing must be a regular file.
//!
//! Removal ([`Root::remove_tree`]) descends by descriptor and unlinks links as links.
//! Renames and unlinks act on the last component without following it (as `rename(2)`
//! and `unlink(2)` always do) inside a parent opened the same careful way.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// `openat2` is missing (ENOSYS) or filtered by a seccomp profile (EPERM): walk instead.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// True when `e` means "a symbolic link (or a path escaping the root) was refused".
pub fn is_link_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
}

/// An error saying that `path` is not the kind of file xcache made there.
pub fn not_regular(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is not a regular file: xcache only writes files it made",
        path.display()
    ))
}

/// A directory held open by descriptor; paths below it are resolved without links.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// How to open a file below a [`Root`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenHow {
    /// Open for writing (else read-only).
    pub write: bool,
    /// Also for reading, when writing.
    pub read: bool,
    /// Create it if missing.
    pub create: bool,
    /// Fail if it exists (implies create).
    pub create_new: bool,
    /// Truncate it.
    pub truncate: bool,
    /// Append.
    pub append: bool,
    /// Mode of a created file (before the umask; see [`Root::create_file`]).
    pub mode: u32,
}

impl OpenHow {
    /// Read-only.
    pub fn read() -> OpenHow {
        OpenHow::default()
    }

    /// Read-write, created with `mode` if missing.
    pub fn read_write_create(mode: u32) -> OpenHow {
        OpenHow {
            write: true,
            read: true,
            create: true,
            mode,
            ..OpenHow::default()
        }
    }

    fn flags(&self) -> OFlags {
        let mut f = OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK;
        f |= match (self.write, self.read) {
            (false, _) => OFlags::RDONLY,
            (true, false) => OFlags::WRONLY,
            (true, true) => OFlags::RDWR,
        };
        if self.create || self.create_new {
            f |= OFlags::CREATE;
        }
        if self.create_new {
            f |= OFlags::EXCL;
        }
        if self.truncate {
            f |= OFlags::TRUNC;
        }
        if self.append {
            f |= OFlags::APPEND;
        }
        f
    }
}

/// One name in a directory, as [`Root::read_dir`] returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The name.
    pub name: OsString,
    /// What it is (never resolved through a link: a link is a link).
    pub kind: Kind,
}

impl DirEntry {
    /// The name as UTF-8, if it is.
    pub fn name_str(&self) -> Option<&str> {
        self.name.to_str()
    }
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Link,
    /// Anything else (FIFO, socket, device).
    Other,
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Link,
            _ => Kind::Other,
        }
    }

    /// The kind of a `stat` result.
    pub fn of_stat(st: &Stat) -> Kind {
        Kind::of(FileType::from_raw_mode(st.st_mode))
    }
}

/// Checks that `rel` is a relative path of plain names (no `..`, no root, no `.`).
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut v = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => v.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", rel.display()),
                ))
            }
        }
    }
    Ok(v)
}

fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn openat2_or_walk(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let parts = components(rel)?;
    if parts.is_empty() {
        return rustix::fs::openat(dir, ".", flags & !OFlags::NOFOLLOW, mode).map_err(to_io);
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
            Ok(fd) => return Ok(fd),
            // O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR: say ELOOP, as for any
            // other link on the way.
            Err(rustix::io::Errno::NOTDIR) if any_link(dir, &parts) => {
                return Err(io::Error::from_raw_os_error(libc::ELOOP))
            }
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            // EAGAIN: a concurrent rename raced the kernel's check; walk instead.
            Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(to_io(e)),
        }
    }
    // One component at a time, none of them a link.
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (last, parents) = parts.split_last().expect("not empty");
    let mut owned: Option<OwnedFd> = None;
    for p in parents {
        let cur = owned.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(cur, *p, dir_flags, Mode::empty()).map_err(|e| {
            // A link where a directory should be reads as ENOTDIR under O_DIRECTORY |
            // O_NOFOLLOW on some kernels: say ELOOP, as openat2 would.
            if e == rustix::io::Errno::NOTDIR && is_link_at(cur, p) {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                to_io(e)
            }
        })?;
        owned = Some(next);
    }
    let cur = owned.as_ref().map_or(dir, |f| f.as_fd());
    rustix::fs::openat(cur, *last, flags | OFlags::NOFOLLOW, mode).map_err(|e| {
        if e == rustix::io::Errno::NOTDIR && is_link_at(cur, last) {
            io::Error::from_raw_os_error(libc::ELOOP)
        } else {
            to_io(e)
        }
    })
}

/// True when a component of `parts` (relative to `dir`) is a symbolic link.
fn any_link(dir: BorrowedFd<'_>, parts: &[&OsStr]) -> bool {
    let mut cur = PathBuf::new();
    parts.iter().any(|p| {
        cur.push(p);
        rustix::fs::statat(dir, &cur, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| Kind::of_stat(&st) == Kind::Link)
    })
}

fn is_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| Kind::of_stat(&st) == Kind::Link)
}

impl Root {
    /// Opens `path` as a root. Its last component must not be a link (the path before
    /// it is the user's choice and is followed).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::NOTDIR || e == rustix::io::Errno::LOOP {
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        io::Error::from_raw_os_error(libc::ELOOP)
                    }
                    _ => to_io(e),
                }
            } else {
                to_io(e)
            }
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened at (for messages, and for tools that need a path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second descriptor of the root, as a `File` (to lock the directory itself with
    /// `flock`, which locks the open file description both descriptors share).
    pub fn dup_file(&self) -> io::Result<File> {
        Ok(File::from(
            rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(to_io)?,
        ))
    }

    /// `fstat` of the root itself.
    pub fn stat(&self) -> io::Result<Stat> {
        rustix::fs::fstat(&self.fd).map_err(to_io)
    }

    /// Opens a directory below the root.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> io::Result<Root> {
        let rel = rel.as_ref();
        let fd = openat2_or_walk(
            self.fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Opens a file below the root. A file opened for writing must be a regular file.
    pub fn open_file(&self, rel: impl AsRef<Path>, how: OpenHow) -> io::Result<File> {
        let rel = rel.as_ref();
        let fd = openat2_or_walk(self.fd(), rel, how.flags(), Mode::from_raw_mode(how.mode))?;
        if how.write {
            let st = rustix::fs::fstat(&fd).map_err(to_io)?;
            if Kind::of_stat(&st) != Kind::File {
                return Err(not_regular(&self.path.join(rel)));
            }
        }
        Ok(File::from(fd))
    }

    /// Creates (or truncates) a regular file with exactly `mode`, whatever the umask.
    pub fn create_file(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<File> {
        let f = self.open_file(
            rel,
            OpenHow {
                write: true,
                create: true,
                truncate: true,
                mode,
                ..OpenHow::default()
            },
        )?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(to_io)?;
        Ok(f)
    }

    /// Splits `rel` into its parent directory (opened) and its last name.
    fn parent_of<'a>(&self, rel: &'a Path) -> io::Result<(Option<Root>, &'a OsStr)> {
        let parts = components(rel)?;
        let Some(name) = parts.last().copied() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty relative path",
            ));
        };
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        Ok((parent.map(|p| self.open_dir(p)).transpose()?, name))
    }

    fn with_parent<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        let (parent, name) = self.parent_of(rel)?;
        let fd = parent.as_ref().map_or(self.fd(), |p| p.fd());
        f(fd, name).map_err(to_io)
    }

    /// `lstat` of something below the root (a link is reported as a link).
    pub fn lstat(&self, rel: impl AsRef<Path>) -> io::Result<Stat> {
        self.with_parent(rel.as_ref(), |d, n| {
            rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// The first component of `rel` that is a symbolic link (or not a directory where
    /// one is needed), for naming it in an error after a refusal.
    pub fn first_link(&self, rel: impl AsRef<Path>) -> Option<PathBuf> {
        let mut cur = PathBuf::new();
        for c in components(rel.as_ref()).ok()? {
            cur.push(c);
            match rustix::fs::statat(self.fd(), &cur, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if Kind::of_stat(&st) == Kind::Link => return Some(self.join(&cur)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// `lstat` in one system call, resolving the parents the kernel's way: for reads
    /// whose result is checked afterwards (the same-inode check of a lock), never for
    /// deciding where to write.
    pub fn lstat_fast(&self, rel: impl AsRef<Path>) -> io::Result<Stat> {
        rustix::fs::statat(self.fd(), rel.as_ref(), AtFlags::SYMLINK_NOFOLLOW).map_err(to_io)
    }

    /// Creates one directory with exactly `mode`; an existing directory is success, an
    /// existing link or file is an error.
    pub fn mkdir(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_of(rel)?;
        let fd = parent.as_ref().map_or(self.fd(), |p| p.fd());
        match rustix::fs::mkdirat(fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                // The umask may have taken bits (the group's write bit in shared mode).
                let d = rustix::fs::openat(
                    fd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(to_io)?;
                rustix::fs::fchmod(&d, Mode::from_raw_mode(mode)).map_err(to_io)
            }
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(to_io)?;
                match Kind::of_stat(&st) {
                    Kind::Dir => Ok(()),
                    Kind::Link => Err(io::Error::from_raw_os_error(libc::ELOOP)),
                    _ => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                }
            }
            Err(e) => Err(to_io(e)),
        }
    }

    /// Creates the symbolic link `rel` (a plain name in the root) pointing at `target`.
    /// The one link xcache makes: a load name in the user's private directory (see
    /// [`crate::store::private::LoadName`]); never below the base dir.
    pub fn symlink(&self, target: &Path, rel: impl AsRef<Path>) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel.as_ref())?;
        let fd = parent.as_ref().map_or(self.fd(), |p| p.fd());
        rustix::fs::symlinkat(target, fd, name).map_err(to_io)
    }

    /// Creates a directory and its missing parents below the root, each with `mode`.
    pub fn mkdir_all(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let mut cur = PathBuf::new();
        for c in components(rel)? {
            cur.push(c);
            self.mkdir(&cur, mode)?;
        }
        Ok(())
    }

    /// Renames `from` to `to` (both below the root). Never follows either last name.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (fp, fname) = self.parent_of(from.as_ref())?;
        let (tp, tname) = self.parent_of(to.as_ref())?;
        rustix::fs::renameat(
            fp.as_ref().map_or(self.fd(), |p| p.fd()),
            fname,
            tp.as_ref().map_or(self.fd(), |p| p.fd()),
            tname,
        )
        .map_err(to_io)
    }

    /// Removes a file or a link (a link itself, never what it points to).
    pub fn remove_file(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        self.with_parent(rel.as_ref(), |d, n| {
            rustix::fs::unlinkat(d, n, AtFlags::empty())
        })
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        self.with_parent(rel.as_ref(), |d, n| {
            rustix::fs::unlinkat(d, n, AtFlags::REMOVEDIR)
        })
    }

    /// Removes whatever is at `rel`: a file or link is unlinked, a directory emptied
    /// by descriptor (links inside are unlinked as links) and removed. Missing is
    /// success.
    pub fn remove_tree(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_of(rel)?;
        let fd = parent.as_ref().map_or(self.fd(), |p| p.fd());
        remove_tree_at(fd, name)
    }

    /// The names in a directory below the root (`""` for the root itself), without
    /// `.` and `..`, in no particular order.
    pub fn read_dir(&self, rel: impl AsRef<Path>) -> io::Result<Vec<DirEntry>> {
        let rel = rel.as_ref();
        let dir = if rel.as_os_str().is_empty() {
            rustix::fs::openat(
                self.fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(to_io)?
        } else {
            self.open_dir(rel)?.fd
        };
        list_fd(dir)
    }

    /// Sets the modification (and access) time of something below the root, without
    /// following a link.
    pub fn set_mtime(&self, rel: impl AsRef<Path>, t: SystemTime) -> io::Result<()> {
        let ts = timespec(t);
        let times = rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        self.with_parent(rel.as_ref(), |d, n| {
            rustix::fs::utimensat(d, n, &times, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// Writes a file whole or not at all, with exactly `mode`: a temporary file beside
    /// it, fsync, rename over it (a link there is replaced, not followed), fsync the
    /// directory.
    pub fn write_atomic(&self, rel: impl AsRef<Path>, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.write_whole(rel.as_ref(), bytes, mode, true)
    }

    /// As [`Root::write_atomic`] without the fsyncs: readers see the old file or the
    /// new one, never a mix, but after a crash the file may be the old one, missing,
    /// or empty. Only for files whose readers check them (a hash, a format line) and
    /// whose loss costs work, never a wrong answer.
    pub fn write_replace(&self, rel: impl AsRef<Path>, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.write_whole(rel.as_ref(), bytes, mode, false)
    }

    fn write_whole(&self, rel: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let pfd = parent.as_ref().map_or(self.fd(), |p| p.fd());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}-{n}", std::process::id()));
        let r = (|| {
            let fd = rustix::fs::openat(
                pfd,
                tmp_name.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
            .map_err(to_io)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(to_io)?;
            let mut f = File::from(fd);
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
            rustix::fs::renameat(pfd, tmp_name.as_os_str(), pfd, name).map_err(to_io)
        })();
        if r.is_err() {
            let _ = rustix::fs::unlinkat(pfd, tmp_name.as_os_str(), AtFlags::empty());
        }
        r?;
        if durable {
            rustix::fs::fsync(pfd).map_err(to_io)?;
        }
        Ok(())
    }

    /// fsyncs a directory below the root (`""`: the root).
    pub fn sync_dir(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        if rel.as_os_str().is_empty() {
            return rustix::fs::fsync(&self.fd).map_err(to_io);
        }
        rustix::fs::fsync(&self.open_dir(rel)?.fd).map_err(to_io)
    }
}

fn timespec(t: SystemTime) -> rustix::fs::Timespec {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    rustix::fs::Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

fn list_fd(fd: OwnedFd) -> io::Result<Vec<DirEntry>> {
    let mut dir = rustix::fs::Dir::new(fd).map_err(to_io)?;
    let mut out = Vec::new();
    while let Some(e) = dir.read() {
        let e = e.map_err(to_io)?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let mut kind = Kind::of(e.file_type());
        if e.file_type() == FileType::Unknown {
            kind = dir
                .fd()
                .and_then(|fd| rustix::fs::statat(fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW))
                .map(|st| Kind::of_stat(&st))
                .unwrap_or(Kind::Other);
        }
        out.push(DirEntry { name, kind });
    }
    Ok(out)
}

fn remove_tree_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(to_io(e)),
    };
    if Kind::of_stat(&st) != Kind::Dir {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(to_io(e)),
        };
    }
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(to_io(e)),
    };
    // The directory we opened must be the one we stat'ed (not swapped meanwhile).
    let st2 = rustix::fs::fstat(&fd).map_err(to_io)?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(io::Error::other(
            "a directory was replaced while it was being removed",
        ));
    }
    let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0).map_err(to_io)?;
    for e in list_fd(dup)? {
        if e.kind == Kind::Dir {
            remove_tree_at(fd.as_fd(), &e.name)?;
        } else {
            match rustix::fs::unlinkat(&fd, e.name.as_os_str(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
    }
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(to_io(e)),
    }
}

/// Limits on reading a file that xcache did not make and someone else named (a header
/// listed by a remote's manifest or a bundle, a key file, a warm manifest's include):
/// at most `max_bytes`, and no later than `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Largest size accepted (a larger file is refused before anything is read).
    pub max_bytes: u64,
    /// When reading must stop; `None`: no deadline.
    pub deadline: Option<std::time::Instant>,
}

impl Bounds {
    /// At most `max_bytes`, no deadline.
    pub fn size(max_bytes: u64) -> Bounds {
        Bounds {
            max_bytes,
            deadline: None,
        }
    }
}

/// Why a named file was refused, or the I/O error met reading it.
#[derive(Debug)]
pub enum NamedFileError {
    /// It is not a regular file (a FIFO, a device, a directory, a socket): opening or
    /// reading it could block forever or never end.
    NotRegular(PathBuf),
    /// It is larger than the bound.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The deadline passed while reading it.
    Deadline(PathBuf),
    /// Opening or reading it failed.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for NamedFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamedFileError::NotRegular(p) => write!(f, "{} is not a regular file", p.display()),
            NamedFileError::TooLarge { path, size, max } => write!(
                f,
                "{} is {size} bytes, more than the {max} allowed",
                path.display()
            ),
            NamedFileError::Deadline(p) => {
                write!(f, "reading {} did not finish in time", p.display())
            }
            NamedFileError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for NamedFileError {}

impl NamedFileError {
    /// As an `io::Error` (for callers that report I/O errors).
    pub fn into_io(self) -> io::Error {
        match self {
            NamedFileError::Io(_, e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Opens a file someone else named, following links as any reader would, without
/// blocking (`O_NONBLOCK`: a FIFO or a tty cannot stall the open) and without becoming
/// its controlling terminal; it must be a regular file of at most `max_bytes`. Returns
/// the file and its size.
pub fn open_named_file(path: &Path, max_bytes: u64) -> Result<(File, u64), NamedFileError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NamedFileError::Io(path.to_path_buf(), to_io(e)))?;
    let st =
        rustix::fs::fstat(&fd).map_err(|e| NamedFileError::Io(path.to_path_buf(), to_io(e)))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(NamedFileError::NotRegular(path.to_path_buf()));
    }
    let size = st.st_size as u64;
    if size > max_bytes {
        return Err(NamedFileError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: max_bytes,
        });
    }
    Ok((File::from(fd), size))
}

/// Feeds at most `bounds.max_bytes` of `file` to `sink`, checking the deadline between
/// chunks; a file that grew past the bound while being read is refused as well.
fn stream_bounded(
    path: &Path,
    mut file: File,
    bounds: Bounds,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<u64, NamedFileError> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        if bounds
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            return Err(NamedFileError::Deadline(path.to_path_buf()));
        }
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NamedFileError::Io(path.to_path_buf(), e)),
        };
        total += n as u64;
        if total > bounds.max_bytes {
            return Err(NamedFileError::TooLarge {
                path: path.to_path_buf(),
                size: total,
                max: bounds.max_bytes,
            });
        }
        sink(&buf[..n]);
    }
}

/// Reads a file someone else named, whole: a regular file only, opened without
/// blocking, within `bounds` (see [`open_named_file`]).
pub fn read_named_file(path: &Path, bounds: Bounds) -> Result<Vec<u8>, NamedFileError> {
    let (file, size) = open_named_file(path, bounds.max_bytes)?;
    let mut out = Vec::with_capacity(size as usize);
    stream_bounded(path, file, bounds, &mut |b| out.extend_from_slice(b))?;
    Ok(out)
}

/// blake3 (hex) and size of a file someone else named: a regular file only, opened
/// without blocking, within `bounds` (see [`open_named_file`]).
pub fn hash_named_file(path: &Path, bounds: Bounds) -> Result<(String, u64), NamedFileError> {
    let (file, _) = open_named_file(path, bounds.max_bytes)?;
    let mut h = blake3::Hasher::new();
    let n = stream_bounded(path, file, bounds, &mut |b| {
        h.update(b);
    })?;
    Ok((h.finalize().to_hex().to_string(), n))
}

/// Resolves a group name or number to a gid.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name).map_err(|_| "a group name".to_string())?;
    // SAFETY: getgrnam returns NULL or a pointer to a static struct, read at once.
    let gid = unsafe {
        let g = libc::getgrnam(c.as_ptr());
        if g.is_null() {
            None
        } else {
            Some((*g).gr_gid)
        }
    };
    gid.ok_or_else(|| format!("an existing group (no group named {name:?})"))
}

/// Starts writing `f`'s dirty pages back without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`): a hint that lets several files' later fsyncs share one
/// journal commit. Durability still comes from each file's own fsync; a failure here
/// changes nothing and is ignored.
pub fn start_writeback(f: &File) {
    // SAFETY: a valid open descriptor; the call only schedules I/O on it.
    let _ = unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
            0,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Root, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "precious").unwrap();
        let r = Root::open(&root).unwrap();
        (t, r, outside)
    }

    fn both_ways(f: impl Fn()) {
        NO_OPENAT2.store(false, Ordering::Relaxed);
        f();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        f();
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn links_below_the_root_are_refused_everywhere() {
        both_ways(|| {
            let (_t, r, outside) = setup();
            // A link as the last component, and as a directory on the way.
            symlink(outside.join("victim"), r.join("file.lock")).unwrap();
            symlink(&outside, r.join("dir")).unwrap();
            let how = OpenHow::read_write_create(0o644);
            for rel in ["file.lock", "dir/victim", "dir/new"] {
                let e = r.open_file(rel, how).unwrap_err();
                assert!(is_link_refusal(&e), "{rel}: {e}");
            }
            assert!(is_link_refusal(&r.open_dir("dir").unwrap_err()));
            assert!(r.mkdir_all("dir/sub", 0o755).is_err());
            assert!(r.write_atomic("dir/x", b"x", 0o644).is_err());
            assert!(r.set_mtime("dir/victim", SystemTime::UNIX_EPOCH).is_err());
            // Removing a link removes the link, never the target.
            r.remove_tree("dir").unwrap();
            r.remove_file("file.lock").unwrap();
            assert_eq!(
                std::fs::read_to_string(outside.join("victim")).unwrap(),
                "precious"
            );
            assert!(outside.join("victim").exists());
        });
    }

    #[test]
    fn remove_tree_does_not_descend_into_links() {
        let (_t, r, outside) = setup();
        r.mkdir_all("a/b/c", 0o755).unwrap();
        std::fs::write(r.join("a/b/c/f"), "x").unwrap();
        symlink(&outside, r.join("a/b/link")).unwrap();
        r.remove_tree("a").unwrap();
        assert!(!r.join("a").exists());
        assert!(outside.join("victim").exists());
        r.remove_tree("a").unwrap(); // missing is success
    }

    #[test]
    fn fifos_and_escapes_are_refused() {
        let (_t, r, _outside) = setup();
        let fifo = std::ffi::CString::new(r.join("f").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = r
            .open_file("f", OpenHow::read_write_create(0o644))
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(r.open_file("../x", OpenHow::read()).is_err());
        assert!(r.open_file("/etc/passwd", OpenHow::read()).is_err());
    }

    #[test]
    fn named_files_are_regular_bounded_and_never_block() {
        let (t, _r, outside) = setup();
        let victim = outside.join("victim");
        let (h, n) = hash_named_file(&victim, Bounds::size(100)).unwrap();
        assert_eq!((h, n), (blake3::hash(b"precious").to_hex().to_string(), 8));
        assert_eq!(
            read_named_file(&victim, Bounds::size(8)).unwrap(),
            b"precious"
        );
        assert!(matches!(
            read_named_file(&victim, Bounds::size(7)),
            Err(NamedFileError::TooLarge {
                size: 8,
                max: 7,
                ..
            })
        ));
        // Devices and FIFOs are refused before a byte is read: /dev/zero never ends,
        // and a FIFO without a writer would block a plain open forever.
        for p in ["/dev/zero", "/dev/null", "/dev/tty"] {
            if Path::new(p).exists() {
                let e = hash_named_file(Path::new(p), Bounds::size(1 << 30)).unwrap_err();
                assert!(
                    matches!(e, NamedFileError::NotRegular(_) | NamedFileError::Io(..)),
                    "{p}: {e}"
                );
            }
        }
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            read_named_file(&fifo, Bounds::size(10)),
            Err(NamedFileError::NotRegular(_))
        ));
        assert!(matches!(
            read_named_file(outside.as_path(), Bounds::size(10)),
            Err(NamedFileError::NotRegular(_))
        ));
        // A deadline already passed stops before the first chunk.
        let past = Bounds {
            max_bytes: 100,
            deadline: Some(std::time::Instant::now()),
        };
        assert!(matches!(
            hash_named_file(&victim, past),
            Err(NamedFileError::Deadline(_))
        ));
    }

    #[test]
    fn modes_are_exact_and_atomic_writes_replace() {
        let (_t, r, _) = setup();
        use std::os::unix::fs::PermissionsExt;
        r.mkdir_all("x/y", 0o755).unwrap();
        let m = std::fs::metadata(r.join("x/y"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o755);
        r.write_atomic("x/y/f", b"one", 0o644).unwrap();
        r.write_atomic("x/y/f", b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(r.join("x/y/f")).unwrap(), b"two");
        let names: Vec<_> = r
            .read_dir("x/y")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec![OsString::from("f")]);
    }
}
