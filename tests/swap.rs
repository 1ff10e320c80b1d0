//! A library is loaded from exactly the file that was checked: directories swapped on
//! the way between the hit's check and the dlopen never get another library loaded
//! (the load goes through the checked descriptor, `/proc/self/fd/N`), and a hit refuses
//! a fan directory that someone else may write.
//!
//! The race with a second real user (`nobody`, swapping with `renameat2(RENAME_EXCHANGE)`
//! while hits run) needs root to act as that user: it is `#[ignore]`d with the reason,
//! and `scripts/test.sh` runs it where the tests run as root (CI does).

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestCache;
use xcache::{Jit, Language, SourceRequest};

fn request() -> SourceRequest {
    SourceRequest::new(Language::C, "int f(void) { return 1; }\n").named("ours.c")
}

/// Compiles (or hits) and calls `f`; the library is unloaded again on return, so that
/// the next call's load opens a file again.
fn call(jit: &Jit) -> (i32, bool) {
    let c = jit.compile(&request()).unwrap();
    // SAFETY: `int f(void)` in every library of these tests.
    let f = unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("f") }.unwrap();
    (unsafe { f() }, c.hit)
}

/// A library whose constructor appends to `marker`, and whose `f` returns 666.
fn evil_library(dir: &Path, marker: &Path) -> PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {{ FILE *f = fopen(\"{}\", \"a\"); if (f) {{ fputs(\"loaded\\n\", f); fclose(f); }} }}\nint f(void) {{ return 666; }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let out = dir.join("evil.so");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// An entry directory for `ours`'s key holding the evil library under our metadata.
fn evil_entry(ours: &Path, evil_lib: &Path, at: &Path) {
    std::fs::create_dir(at).unwrap();
    std::fs::copy(ours.join("entry.json"), at.join("entry.json")).unwrap();
    std::fs::copy(evil_lib, at.join("lib.so")).unwrap();
}

fn fifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_directory_swapped_between_check_and_load_is_never_loaded() {
    if !cfg!(debug_assertions) {
        panic!("the pause points exist in debug builds only: run this test in a debug build");
    }
    let tc = TestCache::new();
    let entry = {
        let first = Jit::new(tc.config()).unwrap().compile(&request()).unwrap();
        first.path.parent().unwrap().to_path_buf()
    }; // unloaded here: the hit below must load it again
    let marker = tc.dir.path().join("marker");
    let evil = evil_library(tc.dir.path(), &marker);
    let swapped_in = entry.with_extension("evil");
    evil_entry(&entry, &evil, &swapped_in);
    // The hit stops between its check and its dlopen; the directory is swapped there.
    let ctl = tc.dir.path().join("ctl");
    std::fs::create_dir(&ctl).unwrap();
    fifo(&ctl.join("started"));
    fifo(&ctl.join("release"));
    // SAFETY: this test binary's other test only runs with --ignored; nothing else
    // reads the environment concurrently.
    std::env::set_var("__XCACHE_TEST_PAUSE", format!("checked:{}", ctl.display()));
    let config = tc.config();
    let hit = std::thread::spawn(move || call(&Jit::new(config).unwrap()));
    let point = std::fs::read_to_string(ctl.join("started")).unwrap();
    assert_eq!(point.trim(), "checked");
    let aside = entry.with_extension("ours");
    std::fs::rename(&entry, &aside).unwrap();
    std::fs::rename(&swapped_in, &entry).unwrap();
    std::fs::write(ctl.join("release"), "go\n").unwrap();
    let (got, was_hit) = hit.join().unwrap();
    std::env::remove_var("__XCACHE_TEST_PAUSE");
    assert!(was_hit);
    assert_eq!(
        got, 1,
        "the checked library was loaded, not the one swapped in"
    );
    assert!(!marker.exists(), "the swapped-in library never ran");
}

#[test]
fn a_hit_refuses_a_fan_directory_others_may_write() {
    use std::os::unix::fs::PermissionsExt;
    let tc = TestCache::new();
    let fan = {
        let first = Jit::new(tc.config()).unwrap().compile(&request()).unwrap();
        first.path.parent().unwrap().parent().unwrap().to_path_buf()
    };
    std::fs::set_permissions(&fan, std::fs::Permissions::from_mode(0o777)).unwrap();
    let c = Jit::new(tc.config()).unwrap().compile(&request()).unwrap();
    assert!(!c.hit, "never loaded from a directory others may write");
    assert!(
        !c.path.starts_with(tc.base()),
        "compiled privately: {}",
        c.path.display()
    );
    let w = c.warnings.join("\n");
    assert!(
        w.contains(&fan.display().to_string()) && w.contains("verify --repair"),
        "{w}"
    );
}

/// A process of the second user, killed if the test ends early.
struct Attacker(std::process::Child);

impl Attacker {
    fn wait(&mut self) {
        self.0.wait().unwrap();
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `exe args` as `nobody` (uid and gid 65534).
fn as_nobody(exe: &Path, args: &[&Path]) -> Attacker {
    let mut c = Command::new(exe);
    c.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Attacker(c.spawn().unwrap())
}

/// A program that exchanges two directories with `renameat2(RENAME_EXCHANGE)` as fast
/// as it can until `stop` exists, counting its swaps into `count`.
fn swapper(dir: &Path) -> PathBuf {
    let src = dir.join("swap.c");
    std::fs::write(
        &src,
        r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
int main(int argc, char **argv) {
    long n = 0;
    while (access(argv[3], F_OK) != 0) {
        if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) == 0) n++;
    }
    FILE *f = fopen(argv[4], "w");
    if (f) { fprintf(f, "%ld\n", n); fclose(f); }
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("swap");
    assert!(Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    exe
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
}

/// Makes `p` and everything below it belong to nobody.
fn chown_tree(p: &Path) {
    chown_nobody(p);
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chown_tree(&e.path());
        } else {
            chown_nobody(&e.path());
        }
    }
}

#[test]
#[ignore = "needs root to act as a second user (nobody): scripts/test.sh runs it as root"]
fn a_second_user_swapping_entries_during_hits_never_gets_a_library_loaded() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (see the ignore reason)"
    );
    let tc = TestCache::new();
    let work = tc.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    chmod(tc.dir.path(), 0o755);
    chmod(&work, 0o777);
    let entry = {
        let first = Jit::new(tc.config()).unwrap().compile(&request()).unwrap();
        first.path.parent().unwrap().to_path_buf()
    };
    let fan = entry.parent().unwrap().to_path_buf();
    let entries = fan.parent().unwrap().to_path_buf();
    let marker = work.join("marker");
    let evil = evil_library(&work, &marker);
    let exe = swapper(&work);
    // Hits wanted while the attacker swaps (requests that meet their directory instead
    // are refused and compile privately: more requests than hits are made).
    let wanted_hits = 300;
    let rounds = 1200;

    // 1. The entry's fan directory is writable by nobody, who swaps our entry with
    //    theirs. Every request refuses the directory (and compiles privately).
    chmod(&fan, 0o777);
    let theirs = fan.join(format!(
        "{}.evil",
        entry.file_name().unwrap().to_string_lossy()
    ));
    evil_entry(&entry, &evil, &theirs);
    chown_tree(&theirs);
    let stop = work.join("stop1");
    let count = work.join("count1");
    let mut attacker = as_nobody(&exe, &[&entry, &theirs, &stop, &count]);
    for _ in 0..100 {
        let (got, hit) = call(&Jit::new(tc.config()).unwrap());
        assert_eq!(got, 1);
        assert!(!hit, "a fan directory others may write is never read");
    }
    std::fs::write(&stop, "").unwrap();
    attacker.wait();
    let swaps: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(swaps > 0, "the attacker swapped");
    assert!(!marker.exists(), "their library never ran");
    // Put the cache back as it was: ours in place, theirs gone, the fan ours alone.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(&entry).unwrap().uid() != 0 {
        let tmp = work.join("tmp");
        std::fs::rename(&entry, &tmp).unwrap();
        std::fs::rename(&theirs, &entry).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
    } else {
        std::fs::remove_dir_all(&theirs).unwrap();
    }
    chmod(&fan, 0o755);

    // 2. Stores opened while the cache was sound; then `entries/` becomes writable by
    //    nobody, who swaps our fan directory with theirs as fast as they can. A hit
    //    checks through descriptors and loads through the checked one: whatever is
    //    swapped in between the two is never loaded.
    let jits: Vec<Jit> = (0..rounds)
        .map(|_| Jit::new(tc.config()).unwrap())
        .collect();
    chmod(&entries, 0o777);
    let their_fan = entries.join("zz");
    std::fs::create_dir(&their_fan).unwrap();
    evil_entry(&entry, &evil, &their_fan.join(entry.file_name().unwrap()));
    chown_tree(&their_fan);
    let stop = work.join("stop2");
    let count = work.join("count2");
    let mut attacker = as_nobody(&exe, &[&fan, &their_fan, &stop, &count]);
    let mut hits = 0;
    // Each Jit is dropped after its request, unloading the library: the next load
    // opens a file again (a loaded library would be found by name, opening nothing).
    let mut requests = 0;
    for jit in jits {
        let (got, hit) = call(&jit);
        assert_eq!(got, 1, "never their function");
        hits += hit as usize;
        requests += 1;
        if hits == wanted_hits {
            break;
        }
    }
    std::fs::write(&stop, "").unwrap();
    attacker.wait();
    let swaps: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(swaps > 0, "the attacker swapped");
    assert!(!marker.exists(), "their library never ran");
    assert_eq!(hits, wanted_hits, "{hits} hits in {requests} requests");
    eprintln!("{requests} requests, {hits} hits, {swaps} swaps, 0 foreign loads");
}
