//! Real `xcache` processes racing on one cache: single flight across processes,
//! independence of distinct keys, and SIGKILL in the middle of a compile.
//!
//! The compiler is a wrapper script around `cc` that can count its compiles and, when
//! asked, stop in the middle of one until the test releases it through a FIFO. So the
//! tests know exactly when a process is mid-compile, without sleeping.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const WRAPPER: &str = r#"#!/bin/sh
# Test compiler: counts and optionally holds compiles (not --version or probes), before
# the compiler runs (XC_TEST_HOLD) or after it has read its inputs (XC_TEST_HOLD_AFTER).
case " $* " in
  *" -shared "*)
    if [ -n "$XC_TEST_COUNT" ]; then echo compile >> "$XC_TEST_COUNT"; fi
    if [ -n "$XC_TEST_HOLD" ]; then
      echo started > "$XC_TEST_HOLD/started"
      read line < "$XC_TEST_HOLD/release"
    fi
    if [ -n "$XC_TEST_HOLD_AFTER" ]; then
      cc "$@"; status=$?
      echo started > "$XC_TEST_HOLD_AFTER/started"
      read line < "$XC_TEST_HOLD_AFTER/release"
      exit $status
    fi ;;
esac
exec cc "$@"
"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::Builder::new()
                .prefix("xcache-cli-")
                .tempdir()
                .unwrap(),
        };
        let w = env.path("cc-wrapper.sh");
        std::fs::write(&w, WRAPPER).unwrap();
        std::fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for fifo in ["started", "release"] {
            let p = std::ffi::CString::new(env.path(fifo).to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o600) }, 0);
        }
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn base(&self) -> PathBuf {
        self.path("cache")
    }

    fn source(&self, name: &str, tag: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(
            &p,
            format!(
                "#include <stdint.h>\n/* {tag} */\n\
                 int saxpy(int64_t n, float a, const float *x, float *y) {{\n\
                 for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + y[i];\n return 0;\n}}\n"
            ),
        )
        .unwrap();
        p
    }

    /// `xcache ARGS` against this cache, with the wrapper as compiler.
    fn xcache(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xcache"));
        c.args(args)
            .env("XCACHE_DIR", self.base())
            .env(
                "XCACHE_FLAGS",
                format!("cc={}", self.path("cc-wrapper.sh").display()),
            )
            .env_remove("XCACHE_CONFIG")
            .env_remove("XC_TEST_HOLD")
            .env_remove("XC_TEST_HOLD_AFTER")
            .env_remove("XC_TEST_COUNT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Starts a compile that stops inside the compiler; returns once it is there.
    fn start_held_compile(&self, src: &Path) -> Child {
        let child = self
            .xcache(&["compile", src.to_str().unwrap(), "--json"])
            .env("XC_TEST_HOLD", self.dir.path())
            .process_group(0)
            .spawn()
            .unwrap();
        // Blocks until the wrapper writes: the child is then mid-compile, holding the
        // key's exclusive lock.
        assert_eq!(self.read_started(), "started");
        child
    }

    /// Blocks until a paused process writes its line to the `started` FIFO.
    fn read_started(&self) -> String {
        let mut line = String::new();
        BufReader::new(File::open(self.path("started")).unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_string()
    }

    fn release_held_compile(&self) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path("release"))
            .unwrap();
        writeln!(f, "go").unwrap();
    }

    fn entry_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for cd in dirs(&self.base()) {
            for fan in dirs(&cd.join("entries")) {
                out.extend(dirs(&fan));
            }
        }
        out
    }
}

fn dirs(p: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "xcache failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn call_saxpy(path: &Path) {
    type Saxpy = unsafe extern "C" fn(i64, f32, *const f32, *mut f32) -> i32;
    let lib = unsafe { libloading::Library::new(path) }.unwrap();
    let f = unsafe { lib.get::<Saxpy>(b"saxpy\0") }.unwrap();
    let x = [1.0f32, 2.0, 3.0];
    let mut y = [10.0f32, 20.0, 30.0];
    assert_eq!(unsafe { f(3, 2.0, x.as_ptr(), y.as_mut_ptr()) }, 0);
    assert_eq!(y, [12.0, 24.0, 36.0]);
}

fn assert_complete(entry: &Path) {
    for f in ["entry.json", "lib.so", "source.c", "last-use"] {
        assert!(
            entry.join(f).is_file(),
            "partial entry {}: no {f}",
            entry.display()
        );
    }
}

/// dlopens `lib` and returns what `sym()` returns.
fn call_int(lib: &str, sym: &str) -> i32 {
    // SAFETY: test libraries built from known sources.
    unsafe {
        let l = libloading::Library::new(lib).unwrap();
        let f: libloading::Symbol<unsafe extern "C" fn() -> i32> = l.get(sym.as_bytes()).unwrap();
        f()
    }
}

/// Two processes on one request key while its header changes under them: each gets a
/// library built from the header it read, and a result whose header changed during its
/// build is never recorded (a later request could otherwise get it for the new header).
#[test]
fn racing_processes_with_different_header_contents_each_get_their_own() {
    let env = Env::new();
    let inc = env.path("inc");
    std::fs::create_dir(&inc).unwrap();
    let h = inc.join("h.h");
    std::fs::write(&h, "#define VAL 1\n").unwrap();
    let k = env.path("k.c");
    std::fs::write(&k, "#include \"h.h\"\nint val(void) { return VAL; }\n").unwrap();
    let flag = format!("--flag=-I{}", inc.display());
    let args = ["compile", k.to_str().unwrap(), flag.as_str(), "--json"];
    // P1 compiles with VAL 1 and stops right after the compiler read it.
    let p1 = env
        .xcache(&args)
        .env("XC_TEST_HOLD_AFTER", env.dir.path())
        .spawn()
        .unwrap();
    assert_eq!(env.read_started(), "started");
    // The header changes while P1 is in its build; P2 asks for the same request.
    std::fs::write(&h, "#define VAL 2\n").unwrap();
    let p2 = env.xcache(&args).spawn().unwrap();
    env.release_held_compile();
    let r1 = json_of(&p1.wait_with_output().unwrap());
    let r2 = json_of(&p2.wait_with_output().unwrap());
    assert_eq!(call_int(r1["path"].as_str().unwrap(), "val"), 1, "{r1}");
    assert_eq!(call_int(r2["path"].as_str().unwrap(), "val"), 2, "{r2}");
    assert_ne!(r1["key"], r2["key"]);
    // Later requests see the header as it is: 2, never P1's result.
    let r3 = json_of(&env.xcache(&args).output().unwrap());
    assert_eq!(call_int(r3["path"].as_str().unwrap(), "val"), 2, "{r3}");
    let shown = json_of(
        &env.xcache(&["show", r1["key"].as_str().unwrap(), "--json"])
            .output()
            .unwrap(),
    );
    let request = shown["entries"][0]["meta"]["request_key"]
        .as_str()
        .unwrap()
        .to_string();
    let m = json_of(&env.xcache(&["show", &request, "--json"]).output().unwrap());
    let recorded: Vec<&Value> = m["manifests"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["key"])
        .collect();
    assert!(
        !recorded.contains(&&r1["key"]),
        "P1's result was recorded: {m}"
    );
}

#[test]
fn eight_processes_one_key_one_compile() {
    let env = Env::new();
    let src = env.source("k.c", "eight");
    let count = env.path("compiles.txt");
    let children: Vec<Child> = (0..8)
        .map(|_| {
            env.xcache(&[
                "compile",
                src.to_str().unwrap(),
                "--symbol",
                "saxpy",
                "--json",
            ])
            .env("XC_TEST_COUNT", &count)
            .spawn()
            .unwrap()
        })
        .collect();
    let results: Vec<Value> = children
        .into_iter()
        .map(|c| json_of(&c.wait_with_output().unwrap()))
        .collect();
    let misses = results.iter().filter(|r| r["hit"] == false).count();
    assert_eq!(misses, 1, "exactly one process compiles: {results:#?}");
    let compiles = std::fs::read_to_string(&count).unwrap();
    assert_eq!(compiles.lines().count(), 1, "the compiler ran once");
    let path = results[0]["path"].as_str().unwrap();
    assert!(results
        .iter()
        .all(|r| r["path"] == path && r["loaded"] == true));
    call_saxpy(Path::new(path));
    assert_eq!(env.entry_dirs().len(), 1);
}

#[test]
fn distinct_keys_do_not_wait_for_each_other() {
    let env = Env::new();
    let x = env.source("x.c", "held");
    let y = env.source("y.c", "free");
    let mut held = env.start_held_compile(&x);

    // `held` is inside the compiler for x.c. A compile of y.c must finish regardless.
    let (tx, rx) = mpsc::channel();
    let mut cmd = env.xcache(&["compile", y.to_str().unwrap(), "--json"]);
    std::thread::spawn(move || tx.send(cmd.output().unwrap()).unwrap());
    // A watchdog, not a wait for time to pass: a blocked y.c would hang the test.
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out,
        Err(_) => {
            env.release_held_compile();
            panic!("compiling y.c waited for the unrelated compile of x.c");
        }
    };
    let r = json_of(&out);
    assert_eq!(r["hit"], false);
    assert!(r["lock_wait_ms"].as_f64().unwrap() == 0.0, "{r}");
    assert!(held.try_wait().unwrap().is_none(), "x.c is still compiling");

    env.release_held_compile();
    let r = json_of(&held.wait_with_output().unwrap());
    assert_eq!(r["hit"], false);
    assert_eq!(env.entry_dirs().len(), 2);
}

#[test]
fn sigkill_mid_compile_leaves_no_partial_entry() {
    let env = Env::new();
    let src = env.source("k.c", "killed");
    let child = env.start_held_compile(&src);

    // Mid-compile: staging exists, nothing under entries/.
    assert!(env.entry_dirs().is_empty());
    let cd = dirs(&env.base()).pop().unwrap();
    let staging: Vec<PathBuf> = dirs(&cd.join("tmp"));
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert!(staging[0].join("source.c").is_file());

    // Kill xcache and its compiler (the whole process group).
    let pgid = child.id() as i32;
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGKILL) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        env.entry_dirs().is_empty(),
        "a killed build published something"
    );

    // The next request takes the (dead process's) lock and compiles cleanly.
    let r = json_of(
        &env.xcache(&[
            "compile",
            src.to_str().unwrap(),
            "--symbol",
            "saxpy",
            "--json",
        ])
        .output()
        .unwrap(),
    );
    assert_eq!(r["hit"], false);
    assert!(r["warnings"].as_array().unwrap().is_empty());
    let entries = env.entry_dirs();
    assert_eq!(entries.len(), 1);
    assert_complete(&entries[0]);
    call_saxpy(Path::new(r["path"].as_str().unwrap()));
    // The crashed staging directory is left for garbage collection, never read.
    assert!(staging[0].exists());
}

#[test]
fn a_waiting_process_gets_the_published_entry() {
    let env = Env::new();
    let src = env.source("k.c", "waiter");
    let held = env.start_held_compile(&src);
    let waiter = env
        .xcache(&["compile", src.to_str().unwrap(), "--json"])
        .env("XCACHE_LOG", "info")
        .spawn()
        .unwrap();
    env.release_held_compile();
    let first = json_of(&held.wait_with_output().unwrap());
    let out = waiter.wait_with_output().unwrap();
    let second = json_of(&out);
    assert_eq!(first["hit"], false);
    assert_eq!(second["hit"], true);
    assert_eq!(first["path"], second["path"]);
    assert_complete(Path::new(first["path"].as_str().unwrap()).parent().unwrap());
}

/// SIGKILL at each step of the publish protocol (debug builds stop there on request):
/// never a partial entry, and the next request succeeds.
#[test]
fn sigkill_at_every_protocol_step() {
    for (point, published) in [("compiled", false), ("sealed", false), ("published", true)] {
        let env = Env::new();
        let src = env.source("k.c", point);
        let child = env
            .xcache(&["compile", src.to_str().unwrap(), "--json"])
            .env(
                "__XCACHE_TEST_PAUSE",
                format!("{point}:{}", env.dir.path().display()),
            )
            .process_group(0)
            .spawn()
            .unwrap();
        assert_eq!(env.read_started(), point);
        assert_eq!(
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) },
            0
        );
        assert!(!child.wait_with_output().unwrap().status.success());

        let entries = env.entry_dirs();
        assert_eq!(
            entries.len(),
            usize::from(published),
            "{point}: {entries:?}"
        );
        for e in &entries {
            assert_complete(e);
        }
        let r = json_of(
            &env.xcache(&[
                "compile",
                src.to_str().unwrap(),
                "--symbol",
                "saxpy",
                "--json",
            ])
            .output()
            .unwrap(),
        );
        assert_eq!(r["hit"], published, "{point}");
        assert!(r["warnings"].as_array().unwrap().is_empty(), "{point}: {r}");
        call_saxpy(Path::new(r["path"].as_str().unwrap()));
        assert_eq!(env.entry_dirs().len(), 1);
    }
}

/// A umask of 0 must not leave anything writable by others (the trust checks would
/// refuse the cache, or worse, accept it).
#[test]
fn a_loose_umask_does_not_loosen_modes() {
    let env = Env::new();
    let src = env.source("k.c", "umask");
    let mut cmd = env.xcache(&["compile", src.to_str().unwrap(), "--json"]);
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let r = json_of(&cmd.output().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    for e in walk(&env.base()) {
        let mode = std::fs::symlink_metadata(&e).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o022,
            0,
            "{} has mode {:o}",
            e.display(),
            mode & 0o777
        );
        checked += 1;
    }
    assert!(checked > 10);
    // And the cache is still accepted.
    let again = json_of(
        &env.xcache(&["compile", src.to_str().unwrap(), "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["hit"], true);
    assert_eq!(again["path"], r["path"]);
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// A compiler that never finishes is killed after `compile_timeout`, with a clear
/// error, and the key's lock is free again.
#[test]
fn a_hung_compiler_is_killed_after_compile_timeout() {
    let env = Env::new();
    let src = env.source("k.c", "hung");
    let wrapper = env.path("cc-wrapper.sh");
    // The wrapper blocks on its FIFO forever: nobody reads `started` here.
    let out = env
        .xcache(&["compile", src.to_str().unwrap()])
        .env("XC_TEST_HOLD", env.dir.path())
        .env(
            "XCACHE_FLAGS",
            format!("cc={},compile_timeout=300ms", wrapper.display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compile_timeout (300ms)") && err.contains("killed"),
        "{err}"
    );
    assert!(env.entry_dirs().is_empty());
    // Nothing holds the key any more: the next request compiles.
    let r = json_of(
        &env.xcache(&["compile", src.to_str().unwrap(), "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(r["hit"], false);
}

/// Whether `pid` is still a running process (a zombie, waiting for its new parent to
/// reap it, has stopped running).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Kills a process left behind by a failing test, so that it does not outlive the run.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if running(self.0) {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// A SIGKILLed `xcache compile` takes its compiler with it (PR_SET_PDEATHSIG), although
/// the compiler runs in a process group of its own. The compiler is a wrapper that
/// reports its pid, then becomes `sleep 60`.
#[test]
fn a_killed_xcache_leaves_no_compiler_running() {
    let env = Env::new();
    let src = env.source("k.c", "orphan");
    let wrapper = env.path("sleepy-cc.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \" $* \" in *\" -shared \"*) echo $$ > \"$XC_TEST_PID\"; exec sleep 60 ;; esac\nexec cc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = env
        .xcache(&["compile", src.to_str().unwrap()])
        .env("XCACHE_FLAGS", format!("cc={}", wrapper.display()))
        .env("XC_TEST_PID", env.path("started"))
        .spawn()
        .unwrap();
    // Blocks until the wrapper has written its pid: xcache is then waiting for it.
    let pid: i32 = env.read_started().parse().unwrap();
    let _cleanup = KillOnDrop(pid);
    assert!(running(pid));

    // Only xcache is killed, not its process group (the compiler has its own anyway).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    assert!(!child.wait().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the compiler (pid {pid}) still runs 10 s after xcache was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
