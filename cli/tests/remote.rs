//! The Redis tier against a real `redis-server` (one per test, on a free loopback port):
//! two machines (base dirs) share hits; a dead, silent, killed or password-protected
//! remote never fails a request; the breaker opens and closes; corrupt, foreign and
//! unsigned values are never loaded; read-only uploads nothing; 8 processes on 2 base
//! dirs race over 20 keys.
//!
//! `#[ignore]`d with the reason where `redis-server` is missing; `scripts/test.sh` runs
//! them where it is (CI installs it).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{stdout, Env};
use serde_json::Value;

const NEEDS_REDIS: &str = "needs redis-server: scripts/test.sh runs it where found";

/// A real redis-server for one test, killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start(extra: &[&str]) -> Redis {
        Redis::start_on(free_port(), extra)
    }

    /// Starts one on `port`; returns once it says it accepts connections.
    fn start_on(port: u16, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir", dir.path().to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{NEEDS_REDIS}: {e}"));
        let mut seen = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Ready to accept connections") {
                return Redis {
                    child: Some(child),
                    port,
                    _dir: dir,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}:\n{seen}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A compiler that logs `<base dir> <file>` for every real compile, then runs `cc`.
fn counting_cc(env: &Env) -> PathBuf {
    let p = env.dir.path().join("cc-count.sh");
    if p.exists() {
        // Written once: its size and mtime are the compiler's identity, in every key.
        return p;
    }
    std::fs::write(
        &p,
        // The staging directory is `build-<request key>-<unique>`: its first 70
        // characters name the request.
        "#!/bin/sh\ncase \" $* \" in *\" -shared \"*) echo \"$XCACHE_DIR $(basename \"$PWD\" | cut -c1-70)\" >> \"$XC_COUNT\";; esac\nexec cc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// One machine: its own base dir, the shared remote, the counting compiler.
struct Machine<'a> {
    env: &'a Env,
    base: PathBuf,
    flags: String,
    extra_env: Vec<(String, String)>,
}

impl<'a> Machine<'a> {
    fn new(env: &'a Env, name: &str, remote: &str, more: &str) -> Machine<'a> {
        let cc = counting_cc(env);
        Machine {
            env,
            base: env.dir.path().join(name),
            flags: format!("handout_grace=0s,cc={},remote={remote}{more}", cc.display()),
            extra_env: Vec::new(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("XCACHE_DIR", &self.base)
            .env("XCACHE_FLAGS", &self.flags)
            .env("XC_COUNT", self.env.dir.path().join("compiles.log"));
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// `xcache compile SRC --json`, which must succeed; (json, stderr).
    fn compile(&self, src: &Path) -> (Value, String) {
        let o = self
            .cmd(&["compile", src.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "compile failed: {err}");
        (serde_json::from_slice(&o.stdout).unwrap(), err)
    }

    fn stats(&self) -> Value {
        let v: Value =
            serde_json::from_str(&stdout(&self.cmd(&["stats", "--json"]).output().unwrap()))
                .unwrap();
        v[0].clone()
    }
}

fn source(env: &Env, name: &str, value: i32) -> PathBuf {
    env.file(name, &format!("int f(void) {{ return {value}; }}\n"))
}

fn compiles(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.dir.path().join("compiles.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn call(path: &str) -> i32 {
    // SAFETY: test libraries built from known sources.
    unsafe {
        let l = libloading::Library::new(path).unwrap();
        let f: libloading::Symbol<unsafe extern "C" fn() -> i32> = l.get(b"f").unwrap();
        f()
    }
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn two_machines_share_hits_through_redis() {
    let env = Env::new();
    let redis = Redis::start(&[]);
    let a = Machine::new(&env, "a", &redis.url(), "");
    let b = Machine::new(&env, "b", &redis.url(), "");
    let src = source(&env, "k.c", 42);
    let (va, _) = a.compile(&src);
    assert_eq!(
        (va["hit"].clone(), va["tier"].clone()),
        (false.into(), "local".into())
    );
    let (vb, _) = b.compile(&src);
    assert_eq!(vb["hit"], true, "{vb}");
    assert_eq!(vb["tier"], "remote", "{vb}");
    assert_eq!(vb["key"], va["key"]);
    assert_eq!(compiles(&env).len(), 1, "B did not run the compiler");
    assert_eq!(call(vb["path"].as_str().unwrap()), 42);
    // B published it locally: the next request hits its own cache.
    let (again, _) = b.compile(&src);
    assert_eq!(
        (again["hit"].clone(), again["tier"].clone()),
        (true.into(), "local".into())
    );
    assert_eq!(a.stats()["remote_uploads"], 1);
    let s = b.stats();
    assert_eq!(s["remote_hits"], 1, "{s}");
    assert!(s["remote_bytes_in"].as_u64().unwrap() > 1000, "{s}");
    // What the remote holds for this platform.
    let l = a.cmd(&["list", "--remote", "--json"]).output().unwrap();
    let l: Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(l["entries"][0]["key"], va["key"], "{l}");
    // Its expiry as settings are written (remote_ttl is 30d by default), not 43199m55s.
    let table = stdout(&a.cmd(&["list", "--remote"]).output().unwrap());
    let row = table
        .lines()
        .find(|r| r.starts_with(&va["key"].as_str().unwrap()[..12]))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        table.starts_with("KEY") && table.contains("EXPIRES IN") && row.ends_with(" 30d"),
        "{table}"
    );
    let d = stdout(&a.cmd(&["doctor"]).output().unwrap());
    assert!(d.contains("reachable") && d.contains("writable"), "{d}");
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn a_dead_silent_or_killed_remote_never_fails_a_request() {
    let env = Env::new();
    // Nothing listening.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let m = Machine::new(&env, "dead", &dead, "");
    let t = Instant::now();
    let (v, err) = m.compile(&source(&env, "a.c", 1));
    assert_eq!(v["hit"], false);
    assert!(
        err.contains("cannot connect"),
        "one warning says why: {err}"
    );
    assert!(m.stats()["remote_err_connect"].as_u64().unwrap() >= 1);
    // Listening, answering nothing: bounded by the timeouts.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "redis://127.0.0.1:{}/0",
        silent.local_addr().unwrap().port()
    );
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(4) {
            held.push(s);
        }
        held
    });
    let m = Machine::new(
        &env,
        "silent",
        &silent_url,
        ",remote_connect_timeout=300ms,remote_timeout=300ms",
    );
    let (v, err) = m.compile(&source(&env, "b.c", 2));
    assert_eq!(v["hit"], false);
    assert!(err.contains("timed out"), "{err}");
    assert!(m.stats()["remote_err_timeout"].as_u64().unwrap() >= 1);
    drop(held);
    // Killed mid-run.
    let mut redis = Redis::start(&[]);
    let m = Machine::new(&env, "killed", &redis.url(), "");
    m.compile(&source(&env, "c.c", 3));
    redis.kill();
    let (v, _) = m.compile(&source(&env, "d.c", 4));
    assert_eq!(call(v["path"].as_str().unwrap()), 4);
    let other = Machine::new(&env, "other", &redis.url(), "");
    let (v, _) = other.compile(&source(&env, "c.c", 3));
    assert_eq!(
        (v["hit"].clone(), v["tier"].clone()),
        (false.into(), "local".into())
    );
    // A hang guard, not a speed target: each request above waited at most its timeouts.
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn the_breaker_opens_after_failures_and_closes_when_the_remote_is_back() {
    let env = Env::new();
    let port = free_port();
    let mut config = xcache::Config::defaults();
    config.set_base_dir(env.dir.path().join("lib"));
    config
        .set("remote", &format!("redis://127.0.0.1:{port}/0"))
        .unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let clock = Arc::new(xcache::clock::ManualClock::new(t0));
    let jit = xcache::Jit::with_clock(config, clock.clone()).unwrap();
    let req = |n: i32| {
        xcache::SourceRequest::new(
            xcache::Language::C,
            format!("int f(void) {{ return {n}; }}\n"),
        )
    };
    for n in 0..5 {
        jit.build(&req(n)).unwrap();
    }
    let s = jit.stats().snapshot();
    assert_eq!(
        s.remote_err_connect,
        xcache::remote::breaker::TRIP_AFTER as u64,
        "{s:?}"
    );
    assert!(s.remote_skipped >= 2, "open: not asked: {s:?}");
    // The remote comes back; after the cool-down, the next request asks and uploads.
    let _redis = Redis::start_on(port, &[]);
    clock.advance(xcache::remote::breaker::COOL_DOWN);
    jit.build(&req(10)).unwrap();
    jit.build(&req(11)).unwrap();
    let s = jit.stats().snapshot();
    assert_eq!(s.remote_uploads, 2, "closed again: {s:?}");
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn corrupt_foreign_and_unsigned_values_are_never_loaded() {
    use redis::Commands;
    let env = Env::new();
    let redis = Redis::start(&[]);
    let a = Machine::new(&env, "a", &redis.url(), "");
    let (k1, k2) = (source(&env, "one.c", 1), source(&env, "two.c", 2));
    let (v1, _) = a.compile(&k1);
    let (v2, _) = a.compile(&k2);
    let mut c = redis.client();
    let keys: Vec<String> = c.keys("xcache:*:e:*").unwrap();
    let value_of = |k: &Value| {
        keys.iter()
            .find(|x| x.ends_with(k.as_str().unwrap()))
            .unwrap()
            .clone()
    };
    let (e1, e2) = (value_of(&v1["key"]), value_of(&v2["key"]));

    // A value for another key: two.c's entry holds one.c's library.
    let one: Vec<u8> = c.get(&e1).unwrap();
    let _: () = c.set(&e2, &one).unwrap();
    let b = Machine::new(&env, "b", &redis.url(), "");
    let (v, err) = b.compile(&k2);
    assert_eq!(v["tier"], "local", "{v}");
    assert_eq!(
        call(v["path"].as_str().unwrap()),
        2,
        "never one.c's function"
    );
    assert!(err.contains("does not hold what it claims"), "{err}");
    // Deleted from the remote, and replaced by B's own upload.
    let now: Vec<u8> = c.get(&e2).unwrap();
    assert_ne!(now, one, "the foreign value is gone");

    // A flipped byte.
    let mut bad: Vec<u8> = c.get(&e1).unwrap();
    let n = bad.len() - 10;
    bad[n] ^= 0x40;
    let _: () = c.set(&e1, &bad).unwrap();
    let b2 = Machine::new(&env, "b2", &redis.url(), "");
    let (v, _) = b2.compile(&k1);
    assert_eq!(v["tier"], "local");
    assert_eq!(call(v["path"].as_str().unwrap()), 1);
    assert!(b.stats()["remote_rejected"].as_u64().unwrap() >= 1);
    assert!(b2.stats()["remote_rejected"].as_u64().unwrap() >= 1);

    // Unsigned values where signatures are required; signed ones are taken.
    let key = env.file(
        "sign.key",
        "a long random secret, shared by CI and developers\n",
    );
    let signed = format!(",remote_sign_key={},remote_verify=required", key.display());
    let k3 = source(&env, "three.c", 3);
    a.compile(&k3); // unsigned upload
    let strict = Machine::new(&env, "strict", &redis.url(), &signed);
    let (v, err) = strict.compile(&k3);
    assert_eq!(v["tier"], "local", "{v}");
    assert!(err.contains("unsigned"), "{err}");
    let ci = Machine::new(&env, "ci", &redis.url(), &signed);
    let k4 = source(&env, "four.c", 4);
    ci.compile(&k4);
    let dev = Machine::new(&env, "dev", &redis.url(), &signed);
    let (v, _) = dev.compile(&k4);
    assert_eq!(
        v["tier"], "remote",
        "signed by CI, verified by the developer: {v}"
    );
    assert_eq!(call(v["path"].as_str().unwrap()), 4);
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn read_only_uploads_nothing_and_a_wrong_password_falls_back_once() {
    use redis::Commands;
    let env = Env::new();
    let redis = Redis::start(&[]);
    let ro = Machine::new(&env, "ro", &redis.url(), ",remote_mode=read-only");
    ro.compile(&source(&env, "a.c", 1));
    let n: usize = redis::cmd("DBSIZE").query(&mut redis.client()).unwrap();
    assert_eq!(n, 0, "read-only uploads nothing");

    let locked = Redis::start(&["--requirepass", "s3cret"]);
    let mut wrong = Machine::new(&env, "wrong", &locked.url(), "");
    wrong
        .extra_env
        .push(("XCACHE_REMOTE_PASSWORD".into(), "guess".into()));
    let (v, err) = wrong.compile(&source(&env, "b.c", 2));
    assert_eq!(v["hit"], false);
    assert_eq!(err.matches("authentication refused").count(), 1, "{err}");
    assert!(
        !err.contains("guess"),
        "the password is never printed: {err}"
    );
    assert!(wrong.stats()["remote_err_auth"].as_u64().unwrap() >= 1);
    let mut right = Machine::new(&env, "right", &locked.url(), "");
    right
        .extra_env
        .push(("XCACHE_REMOTE_PASSWORD".into(), "s3cret".into()));
    right.compile(&source(&env, "c.c", 3));
    let mut c = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/0", locked.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = c.keys("xcache:*").unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let shown = stdout(&right.cmd(&["config"]).output().unwrap());
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn eight_processes_on_two_machines_race_over_twenty_keys() {
    let env = Env::new();
    let redis = Redis::start(&[]);
    let secs: u64 = std::env::var("XC_REMOTE_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let sources: Vec<PathBuf> = (0..20)
        .map(|i| source(&env, &format!("k{i}.c"), i))
        .collect();
    let machines = [
        Machine::new(&env, "m1", &redis.url(), ""),
        Machine::new(&env, "m2", &redis.url(), ""),
    ];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let failures = std::sync::Mutex::new(Vec::new());
    let requests = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..8usize {
            let (m, sources, failures, requests) =
                (&machines[w % 2], &sources, &failures, &requests);
            s.spawn(move || {
                let mut i = w * 7;
                while Instant::now() < deadline {
                    i = (i * 31 + 17) % 20;
                    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let o = m
                        .cmd(&["compile", sources[i].to_str().unwrap(), "--json"])
                        .output()
                        .unwrap();
                    let v: Option<Value> = serde_json::from_slice(&o.stdout).ok();
                    let ok = o.status.success()
                        && v.as_ref()
                            .and_then(|v| v["path"].as_str())
                            .is_some_and(|p| call(p) == i as i32);
                    if !ok {
                        failures
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&o.stderr).into_owned());
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(requests.into_inner() > 40);
    // Each key compiled at most once per machine.
    let mut seen = std::collections::HashSet::new();
    for line in compiles(&env) {
        assert!(
            seen.insert(line.clone()),
            "compiled twice on one machine: {line}"
        );
    }
    let total: usize = seen.len();
    assert!(total <= 40, "{total}");
}

/// A fake server on loopback that answers every connection with the start of a bulk
/// string and then one byte every `gap`, forever: a dripping or throttled peer. Stops
/// when dropped.
struct Dripper {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Dripper {
    fn start(gap: Duration) -> Dripper {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<std::net::TcpStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok((s, _)) = l.accept() {
                    s.set_nonblocking(true).unwrap();
                    let mut s = s;
                    let _ = s.write_all(b"*2\r\n$1000000\r\n");
                    conns.push(s);
                }
                for s in &mut conns {
                    let mut sink = [0u8; 4096];
                    let _ = s.read(&mut sink);
                    let _ = s.write_all(b"x");
                }
                // The drip itself: this is the fake peer's pace, not a test waiting.
                std::thread::sleep(gap);
            }
        });
        Dripper { port, stop }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Dripper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Slack for process start and the compile itself, above the remote's deadline (a hang
/// guard: the figures before the fix were 5 times the deadline, and unbounded).
const SLACK: Duration = Duration::from_secs(2);

fn signal(pid: u32, sig: i32) {
    // SAFETY: signals a child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn a_stopped_or_dripping_remote_costs_a_request_at_most_its_deadline() {
    let env = Env::new();
    // A real redis-server, stopped with SIGSTOP: it accepts connections (the kernel
    // does) and never answers.
    let redis = Redis::start(&[]);
    let pid = redis.child.as_ref().unwrap().id();
    let limit = Duration::from_secs(3);
    let m = Machine::new(&env, "stopped", &redis.url(), ",remote_timeout=3s");
    signal(pid, libc::SIGSTOP);
    let t = Instant::now();
    let (v, err) = m.compile(&source(&env, "a.c", 1));
    let spent = t.elapsed();
    signal(pid, libc::SIGCONT);
    assert_eq!(call(v["path"].as_str().unwrap()), 1);
    assert!(err.contains("timed out"), "{err}");
    assert!(
        spent < limit + SLACK,
        "read-through and upload share one deadline: {spent:?}"
    );
    assert_eq!(
        m.stats()["remote_err_timeout"],
        1,
        "the upload was not tried again"
    );

    // A peer that drips one byte every 50 ms: each read succeeds, the deadline still ends it.
    let drip = Dripper::start(Duration::from_millis(50));
    let m = Machine::new(&env, "dripped", &drip.url(), ",remote_timeout=1s");
    let t = Instant::now();
    let (v, err) = m.compile(&source(&env, "b.c", 2));
    let spent = t.elapsed();
    assert_eq!(call(v["path"].as_str().unwrap()), 2);
    assert!(err.contains("timed out"), "{err}");
    assert!(spent < Duration::from_secs(1) + SLACK, "{spent:?}");
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn a_remote_deadline_holds_through_the_rust_api() {
    let env = Env::new();
    let drip = Dripper::start(Duration::from_millis(50));
    let mut config = xcache::Config::defaults();
    config.set_base_dir(env.dir.path().join("lib"));
    config.set("remote", &drip.url()).unwrap();
    config.set("remote_timeout", "1s").unwrap();
    let jit = xcache::Jit::new(config).unwrap();
    let t = Instant::now();
    let req = xcache::SourceRequest::new(xcache::Language::C, "int f(void) { return 5; }\n");
    let c = jit.compile(&req).unwrap();
    let spent = t.elapsed();
    // SAFETY: the source above defines `int f(void)`.
    let f = unsafe { c.symbol::<unsafe extern "C" fn() -> i32>("f").unwrap() };
    assert_eq!(unsafe { f() }, 5);
    assert!(spent < Duration::from_secs(1) + SLACK, "{spent:?}");
    assert_eq!(jit.stats().snapshot().remote_err_timeout, 1);
}

/// `INFO commandstats`' count of a command since the last `CONFIG RESETSTAT`.
fn calls(c: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn a_remote_record_cannot_make_a_reader_read_or_probe_other_files() {
    use redis::Commands;
    let env = Env::new();
    let redis = Redis::start(&[]);
    env.file("h.h", "#define V 7\n");
    let src = env.file("k.c", "#include \"h.h\"\nint f(void) { return V; }\n");
    let a = Machine::new(&env, "a", &redis.url(), "");
    let (va, _) = a.compile(&src);
    let mut c = redis.client();
    let mk: Vec<String> = c.keys("xcache:*:m:*").unwrap();
    let mk = &mk[0];
    // Forged results, newer than the real one so a reader tries them first: one names
    // /dev/zero (hashing it never ends), one names /etc/passwd with its true hash (a
    // probe: the reader would fetch the forged entry only if the guess is right).
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let guess = blake3::hash(&passwd).to_hex().to_string();
    let later = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 100;
    for (field, path, hash) in [
        ("ab".repeat(32), "/dev/zero", "00".repeat(32)),
        ("cd".repeat(32), "/etc/passwd", guess.clone()),
        ("ef".repeat(32), "/etc/../etc/passwd", guess),
    ] {
        let v = serde_json::json!({"created": later, "headers": [[path, hash]]}).to_string();
        let _: () = c.hset(mk, field, v).unwrap();
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let b = Machine::new(&env, "b", &redis.url(), ",remote_timeout=5s");
    let t = Instant::now();
    let (vb, err) = b.compile(&src);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(vb["tier"], "remote", "the real result is still taken: {vb}");
    assert_eq!(vb["key"], va["key"]);
    assert_eq!(call(vb["path"].as_str().unwrap()), 7);
    assert_eq!(
        calls(&mut c, "getrange"),
        1,
        "only the real entry was fetched"
    );
    assert!(
        err.contains("outside this request's include search"),
        "{err}"
    );
    assert!(b.stats()["remote_rejected"].as_u64().unwrap() >= 1);

    // With a signing key and remote_verify = required, unsigned records are left out
    // before any path they name is looked at: not even the real (unsigned) one is used.
    let key = env.file(
        "sign.key",
        "a long random secret, shared by CI and developers\n",
    );
    let strict = format!(",remote_sign_key={},remote_verify=required", key.display());
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let s = Machine::new(&env, "strict", &redis.url(), &strict);
    let (vs, err) = s.compile(&src);
    assert_eq!(vs["tier"], "local", "{vs}");
    assert_eq!(calls(&mut c, "getrange"), 0, "{err}");
    assert!(err.contains("unsigned"), "{err}");
    // A signed record whose path was changed afterwards does not verify.
    let ci = Machine::new(&env, "ci", &redis.url(), &strict);
    let src2 = env.file("k2.c", "#include \"h.h\"\nint f(void) { return V + 1; }\n");
    ci.compile(&src2);
    let mks: Vec<String> = c.keys("xcache:*:m:*").unwrap();
    for m in &mks {
        let all: Vec<(String, String)> = c.hgetall(m).unwrap();
        for (field, v) in all {
            let mut v: Value = serde_json::from_str(&v).unwrap();
            if v.get("mac").is_some() {
                v["headers"][0][0] = "/etc/passwd".into();
                let _: () = c.hset(m, &field, v.to_string()).unwrap();
            }
        }
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let dev = Machine::new(&env, "dev", &redis.url(), &strict);
    let (vd, err) = dev.compile(&src2);
    assert_eq!(vd["tier"], "local", "{vd}");
    assert_eq!(calls(&mut c, "getrange"), 0, "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
#[ignore = "needs redis-server: scripts/test.sh runs it where found"]
fn a_remote_value_beyond_the_entry_limit_is_refused_before_it_is_unpacked() {
    use common::{zstd_frame, Part};
    use redis::Commands;
    let env = Env::new();
    let redis = Redis::start(&[]);
    let a = Machine::new(&env, "a", &redis.url(), "");
    let src = source(&env, "k.c", 7);
    let (va, _) = a.compile(&src);
    let mut c = redis.client();
    let keys: Vec<String> = c.keys("xcache:*:e:*").unwrap();
    let ek = keys
        .iter()
        .find(|k| k.ends_with(va["key"].as_str().unwrap()))
        .unwrap()
        .clone();

    // A bomb: a few kilobytes that declare a library of 512 MiB.
    let meta = b"{}";
    let mut head = Vec::new();
    head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    head.extend_from_slice(meta);
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&6u16.to_le_bytes());
    head.extend_from_slice(b"lib.so");
    head.extend_from_slice(&(512u64 << 20).to_le_bytes());
    let mut bomb = b"XCE1\0".to_vec();
    bomb.extend_from_slice(&zstd_frame(
        &[Part::Bytes(head), Part::Zeros(512 << 20)],
        true,
    ));
    assert!(bomb.len() < 64 << 10);
    let _: () = c.set(&ek, &bomb).unwrap();
    let b = Machine::new(&env, "b", &redis.url(), "");
    let r = common::run_bounded(
        b.cmd(&["compile", src.to_str().unwrap(), "--json"]),
        env.dir.path(),
        Duration::from_secs(120),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["tier"], "local", "compiled here: {v}");
    assert!(
        r.stderr.contains("more than the 268435456 allowed"),
        "{}",
        r.stderr
    );
    assert!(r.max_rss_kib < 64 << 10, "peak RSS {} KiB", r.max_rss_kib);
    assert!(b.stats()["remote_rejected"].as_u64().unwrap() >= 1);

    // A value larger than any within the limit can weigh: refused unread.
    let big: Vec<u8> = (0..(3u32 << 18))
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    let _: () = c.set(&ek, &big).unwrap();
    let small = Machine::new(&env, "small", &redis.url(), ",max_entry_size=1MiB");
    let (v, err) = small.compile(&src);
    assert_eq!(v["tier"], "local", "{v}");
    assert!(err.contains("more than the 1048576 allowed"), "{err}");
    assert_eq!(call(v["path"].as_str().unwrap()), 7);
}
