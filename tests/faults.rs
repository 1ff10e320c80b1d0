//! Cache faults on real file systems: a read-only cache and a full disk, each on its own
//! small tmpfs. Mounting needs root (CI runs as root); elsewhere these tests say they
//! are skipped.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use common::*;
use xcache::{Jit, Language, SourceRequest};

/// The tests here run one at a time: a remount read-only fails with EBUSY while any
/// file on it is open for writing, and a compiler forked by a parallel test briefly
/// holds copies of this process's descriptors.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tmpfs mounted for one test, detached when dropped (even on panic).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let target = CString::new(path.to_str().unwrap()).unwrap();
        let opts = CString::new(format!("size={size},mode=0755")).unwrap();
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "skipped: mounting a tmpfs failed ({}); run as root with mount permission",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs { path, _dir: dir })
    }

    fn remount_read_only(&self) {
        let target = CString::new(self.path.to_str().unwrap()).unwrap();
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.to_str().unwrap()).unwrap();
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn config_at(base: &Path) -> xcache::Config {
    let mut c = xcache::Config::defaults();
    c.set_base_dir(base);
    c
}

fn saxpy(tag: &str) -> SourceRequest {
    SourceRequest::new(Language::C, saxpy_source(tag)).named("saxpy.c")
}

/// Every path under `root` with its size and mtime: what "nothing was written" compares.
fn snapshot(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            (e.path().to_path_buf(), md.len(), md.modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn read_only_cache_hits_load_and_misses_compile_privately() {
    let _serial = serial();
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let base = fs.path.join("cache");
    let built = Jit::new(config_at(&base))
        .unwrap()
        .build(&saxpy("ro-hit"))
        .unwrap();
    fs.remount_read_only();
    let before = snapshot(&fs.path);

    let jit = Jit::new(config_at(&base)).unwrap();
    let hit = jit.compile(&saxpy("ro-hit")).unwrap();
    assert!(hit.hit && hit.warnings.is_empty(), "{:?}", hit.warnings);
    assert_eq!(hit.path, built.path);
    check_saxpy(*unsafe { hit.symbol::<SaxpyFn>("saxpy") }.unwrap());

    let miss = jit.compile(&saxpy("ro-miss")).unwrap();
    assert!(!miss.hit);
    assert_eq!(miss.warnings.len(), 1, "{:?}", miss.warnings);
    assert!(
        miss.warnings[0].contains("cannot be written") && miss.warnings[0].contains("private"),
        "{}",
        miss.warnings[0]
    );
    assert!(!miss.path.starts_with(&fs.path), "{}", miss.path.display());
    check_saxpy(*unsafe { miss.symbol::<SaxpyFn>("saxpy") }.unwrap());

    assert_eq!(
        snapshot(&fs.path),
        before,
        "nothing is written to a read-only cache"
    );
}

#[test]
fn full_disk_compiles_privately_then_recovers() {
    let _serial = serial();
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let base = fs.path.join("cache");
    Jit::new(config_at(&base))
        .unwrap()
        .build(&saxpy("first"))
        .unwrap();

    // Fill the file system.
    let filler = fs.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
    }

    let jit = Jit::new(config_at(&base)).unwrap();
    let c = jit.compile(&saxpy("full")).unwrap();
    assert!(!c.hit);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("private"), "{}", c.warnings[0]);
    check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
    // No partial entry: every entry directory is complete.
    let cd = glob_dirs(&base, "compiledir_").pop().unwrap();
    let mut entries = 0;
    for fan in subdirs(&cd.join("entries")) {
        for e in subdirs(&fan) {
            assert!(
                e.join("entry.json").is_file() && e.join("lib.so").is_file(),
                "{}",
                e.display()
            );
            entries += 1;
        }
    }
    assert_eq!(entries, 1, "only the entry made before the disk filled");

    // When the private fallback is full too (TMPDIR on the same disk), the error says
    // the disk is full, names the directory and the fix; nothing partial appears.
    let private_tmp = fs.path.join("tmp");
    let _ = std::fs::create_dir(&private_tmp);
    std::env::set_var("TMPDIR", &private_tmp);
    let err = Jit::new(config_at(&base))
        .unwrap()
        .compile(&saxpy("full-everywhere"))
        .map(|c| c.path)
        .unwrap_err()
        .to_string();
    std::env::remove_var("TMPDIR");
    assert!(err.contains("is full") || err.contains("No space"), "{err}");
    assert!(
        err.contains(fs.path.to_str().unwrap()),
        "names the directory: {err}"
    );
    assert!(err.contains("Fix"), "{err}");

    // Space freed: the next request publishes into the cache.
    std::fs::remove_file(&filler).unwrap();
    let again = Jit::new(config_at(&base))
        .unwrap()
        .compile(&saxpy("full"))
        .unwrap();
    assert!(
        !again.hit && again.warnings.is_empty(),
        "{:?}",
        again.warnings
    );
    assert!(again.path.starts_with(&base));
    check_saxpy(*unsafe { again.symbol::<SaxpyFn>("saxpy") }.unwrap());
}
