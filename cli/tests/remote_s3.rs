//! The S3 tier against a real S3 server (`s3s-fs`: S3's HTTP API over a directory; one
//! per test, on a free loopback port), and Redis → S3 chains against a real
//! `redis-server`: two machines (base dirs) share hits through S3 alone and through
//! Redis in front of S3 (a flushed Redis is refilled from S3); forged, truncated and
//! misfiled objects are never loaded; wrong credentials cost one warning; a killed or
//! stopped server costs at most the deadline; signed objects under
//! `remote_verify = required`; bundles with S3 configured; a multipart upload.
//!
//! `#[ignore]`d with the reason where `s3s-fs` is missing; `scripts/test.sh` runs them
//! where it is (`XCACHE_TEST_S3S_FS`, else `s3s-fs` on PATH; CI installs it).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stdout, Env};
use serde_json::Value;

const BUCKET: &str = "xc-bucket";
const ACCESS: &str = "AKXCACHETEST";
const SECRET: &str = "xcache-test-secret-key";

/// The s3s-fs binary: `XCACHE_TEST_S3S_FS`, else `s3s-fs` on PATH.
fn s3s_fs() -> String {
    std::env::var("XCACHE_TEST_S3S_FS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "s3s-fs".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real s3s-fs for one test, its objects in a directory of its own; killed when
/// dropped.
struct S3 {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("needs s3s-fs ({}): {e}", s3s_fs()));
        let s = S3 {
            child: Some(child),
            port,
            root,
        };
        // Ready when it accepts connections (a server starting, not a test sleeping).
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "s3s-fs did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn url(&self) -> String {
        format!(
            "s3://{BUCKET}/team?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.port
        )
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Where s3s-fs keeps the object `key` (under the bucket).
    fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The keys of the objects under `team/xcache/1/`, relative to the bucket.
    fn keys(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let base = self.root.path().join(BUCKET);
        let mut out = Vec::new();
        walk(&base.join("team/xcache/1"), &base, &mut out);
        out.retain(|k| !k.rsplit('/').next().unwrap().starts_with('.'));
        out.sort();
        out
    }

    /// The object holding the entry `key`.
    fn entry(&self, key: &str) -> PathBuf {
        let k = self
            .keys()
            .into_iter()
            .find(|k| k.ends_with(&format!("/e/{key}")))
            .unwrap_or_else(|| panic!("no entry {key} in {:?}", self.keys()));
        self.object(&k)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real redis-server, for the chains.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
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
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("needs redis-server: {e}"));
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if line.unwrap().contains("Ready to accept connections") {
                return Redis {
                    child,
                    port,
                    _dir: dir,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start");
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A compiler that logs `<base dir> <file>` for every real compile, then runs `cc`.
fn counting_cc(env: &Env) -> PathBuf {
    let p = env.dir.path().join("cc-count.sh");
    if p.exists() {
        return p;
    }
    std::fs::write(
        &p,
        "#!/bin/sh\ncase \" $* \" in *\" -shared \"*) echo \"$XCACHE_DIR $(basename \"$PWD\" | cut -c1-70)\" >> \"$XC_COUNT\";; esac\nexec cc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// One machine: its own base dir, the shared remote, the counting compiler, the
/// credentials.
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
            extra_env: vec![
                ("AWS_ACCESS_KEY_ID".into(), ACCESS.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ],
        }
    }

    fn set_env(&mut self, k: &str, v: &str) {
        self.extra_env.retain(|(n, _)| n != k);
        self.extra_env.push((k.into(), v.into()));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("XCACHE_DIR", &self.base)
            .env("XCACHE_FLAGS", &self.flags)
            .env("XC_COUNT", self.env.dir.path().join("compiles.log"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
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

fn signal(pid: u32, sig: i32) {
    // SAFETY: signals a child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Slack for process start and the compile itself, above the remote's deadline.
const SLACK: Duration = Duration::from_secs(2);

const NEEDS: &str = "needs s3s-fs: scripts/test.sh runs it where found";

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn two_machines_share_hits_through_s3() {
    let _ = NEEDS;
    let env = Env::new();
    let s3 = S3::start();
    let a = Machine::new(&env, "a", &s3.url(), "");
    let b = Machine::new(&env, "b", &s3.url(), "");
    let src = source(&env, "k.c", 42);
    let (va, err) = a.compile(&src);
    assert_eq!(
        (va["hit"].clone(), va["tier"].clone()),
        (false.into(), "local".into()),
        "{err}"
    );
    // Laid out as documented: one manifest per request, one entry per result.
    let keys = s3.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("team/xcache/1/compiledir_")
                && k.ends_with(&format!("/e/{}", va["key"].as_str().unwrap()))),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains("/m/")), "{keys:?}");
    let (vb, err) = b.compile(&src);
    assert_eq!(vb["tier"], "remote", "{vb} {err}");
    assert_eq!(vb["hit"], true);
    assert_eq!(vb["key"], va["key"]);
    assert_eq!(compiles(&env).len(), 1, "B did not run the compiler");
    assert_eq!(call(vb["path"].as_str().unwrap()), 42);
    let (again, _) = b.compile(&src);
    assert_eq!(again["tier"], "local");
    let sa = a.stats();
    assert_eq!(sa["remote_uploads"], 1, "{sa}");
    let sb = b.stats();
    assert_eq!(sb["remote_hits"], 1, "{sb}");
    assert!(sb["remote_bytes_in"].as_u64().unwrap() > 1000, "{sb}");
    let tiers = sb["remote_tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 1, "{sb}");
    assert!(tiers[0]["tier"]
        .as_str()
        .unwrap()
        .starts_with("s3://xc-bucket/team"));
    assert_eq!(tiers[0]["hits"], 1);
    // What the bucket holds for this platform.
    let l = a.cmd(&["list", "--remote", "--json"]).output().unwrap();
    let l: Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(l["entries"][0]["key"], va["key"], "{l}");
    assert_eq!(l["tiers"].as_array().unwrap().len(), 1, "{l}");
    let table = stdout(&a.cmd(&["list", "--remote"]).output().unwrap());
    assert!(
        table.contains("lifecycle") && table.contains("1 entry"),
        "{table}"
    );
    let d = stdout(&a.cmd(&["doctor"]).output().unwrap());
    assert!(
        d.contains("s3://xc-bucket/team") && d.contains("reachable") && d.contains("writable"),
        "{d}"
    );
    let s = stdout(&b.cmd(&["stats"]).output().unwrap());
    assert!(s.contains("  s3://xc-bucket/team"), "{s}");
    // The secret is never shown.
    let shown = stdout(&a.cmd(&["config"]).output().unwrap());
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn redis_in_front_of_s3_is_refilled_from_s3() {
    use redis::Commands;
    let env = Env::new();
    let s3 = S3::start();
    let redis = Redis::start();
    let chain = format!("{};{}", redis.url(), s3.url());
    let a = Machine::new(&env, "a", &chain, "");
    let src = source(&env, "k.c", 7);
    let (va, _) = a.compile(&src);
    assert_eq!(va["tier"], "local");
    let mut c = redis.client();
    let in_redis: Vec<String> = c.keys("xcache:*").unwrap();
    assert_eq!(
        in_redis.len(),
        2,
        "written back to every tier: {in_redis:?}"
    );
    assert_eq!(s3.keys().len(), 2, "{:?}", s3.keys());
    let sa = a.stats();
    assert_eq!(sa["remote_tiers"][0]["uploads"], 1, "{sa}");
    assert_eq!(sa["remote_tiers"][1]["uploads"], 1, "{sa}");

    // Redis loses everything: B is served by S3, and Redis is refilled.
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let b = Machine::new(&env, "b", &chain, "");
    let (vb, err) = b.compile(&src);
    assert_eq!(vb["tier"], "remote", "{vb} {err}");
    assert_eq!(call(vb["path"].as_str().unwrap()), 7);
    let sb = b.stats();
    assert_eq!(sb["remote_hits"], 1, "one request, one hit: {sb}");
    assert_eq!(sb["remote_misses"], 0, "{sb}");
    let (rt, st) = (&sb["remote_tiers"][0], &sb["remote_tiers"][1]);
    assert!(rt["tier"].as_str().unwrap().starts_with("redis://"), "{sb}");
    assert_eq!(
        (rt["misses"].clone(), rt["hits"].clone()),
        (1.into(), 0.into()),
        "{sb}"
    );
    assert_eq!(
        (st["hits"].clone(), st["uploads"].clone()),
        (1.into(), 0.into()),
        "{sb}"
    );
    assert_eq!(rt["uploads"], 1, "the S3 hit refilled Redis: {sb}");
    let in_redis: Vec<String> = c.keys("xcache:*").unwrap();
    assert_eq!(in_redis.len(), 2, "{in_redis:?}");

    // C is served by Redis now, S3 not even asked.
    let cm = Machine::new(&env, "c", &chain, "");
    let (vc, _) = cm.compile(&src);
    assert_eq!(vc["tier"], "remote");
    let sc = cm.stats();
    assert_eq!(sc["remote_tiers"][0]["hits"], 1, "{sc}");
    assert_eq!(
        sc["remote_tiers"].as_array().unwrap().len(),
        1,
        "S3 untouched: {sc}"
    );
    assert_eq!(compiles(&env).len(), 1);
    let table = stdout(&cm.cmd(&["list", "--remote"]).output().unwrap());
    assert!(
        table.contains("on redis://") && table.contains("on s3://"),
        "{table}"
    );
    let d = stdout(&cm.cmd(&["doctor"]).output().unwrap());
    assert_eq!(d.matches("reachable").count(), 2, "{d}");
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn forged_truncated_and_misfiled_objects_are_never_loaded() {
    let env = Env::new();
    let s3 = S3::start();
    let a = Machine::new(&env, "a", &s3.url(), "");
    let (k1, k2) = (source(&env, "one.c", 1), source(&env, "two.c", 2));
    let (v1, _) = a.compile(&k1);
    let (v2, _) = a.compile(&k2);
    let (e1, e2) = (
        s3.entry(v1["key"].as_str().unwrap()),
        s3.entry(v2["key"].as_str().unwrap()),
    );
    let one = std::fs::read(&e1).unwrap();

    // A value filed under another key: two.c's object holds one.c's library.
    std::fs::write(&e2, &one).unwrap();
    let b = Machine::new(&env, "b", &s3.url(), "");
    let (v, err) = b.compile(&k2);
    assert_eq!(v["tier"], "local", "{v}");
    assert_eq!(
        call(v["path"].as_str().unwrap()),
        2,
        "never one.c's function"
    );
    assert!(err.contains("does not hold what it claims"), "{err}");
    assert_ne!(
        std::fs::read(&e2).unwrap(),
        one,
        "deleted, then B's own upload"
    );

    // A flipped byte.
    let mut bad = one.clone();
    let n = bad.len() - 10;
    bad[n] ^= 0x40;
    std::fs::write(&e1, &bad).unwrap();
    let b2 = Machine::new(&env, "b2", &s3.url(), "");
    let (v, _) = b2.compile(&k1);
    assert_eq!(v["tier"], "local");
    assert_eq!(call(v["path"].as_str().unwrap()), 1);

    // Truncated.
    let k3 = source(&env, "three.c", 3);
    let (v3, _) = a.compile(&k3);
    let e3 = s3.entry(v3["key"].as_str().unwrap());
    let whole = std::fs::read(&e3).unwrap();
    std::fs::write(&e3, &whole[..whole.len() / 2]).unwrap();
    let b3 = Machine::new(&env, "b3", &s3.url(), "");
    let (v, _) = b3.compile(&k3);
    assert_eq!(v["tier"], "local");
    assert_eq!(call(v["path"].as_str().unwrap()), 3);
    for m in [&b, &b2, &b3] {
        let s = m.stats();
        assert!(s["remote_rejected"].as_u64().unwrap() >= 1, "{s}");
        assert!(
            s["remote_tiers"][0]["rejected"].as_u64().unwrap() >= 1,
            "{s}"
        );
    }

    // A manifest planted by hand (not JSON): left out, counted.
    let k4 = source(&env, "four.c", 4);
    a.compile(&k4);
    let manifests: Vec<String> = s3
        .keys()
        .into_iter()
        .filter(|k| k.contains("/m/"))
        .collect();
    for m in &manifests {
        std::fs::write(s3.object(m), b"{not json").unwrap();
    }
    let b4 = Machine::new(&env, "b4", &s3.url(), "");
    let (v, err) = b4.compile(&k4);
    assert_eq!(v["tier"], "local");
    assert!(err.contains("malformed"), "{err}");

    // Another platform's objects (another runtime tag: another compiledir) are never
    // asked for.
    let mut other = Machine::new(&env, "other", &s3.url(), "");
    other.set_env("XCACHE_RUNTIME", "cpython-0.1");
    let (v, _) = other.compile(&k1);
    assert_eq!(v["tier"], "local");
    assert!(
        s3.keys().iter().any(|k| k.contains("cpython-0.1")),
        "{:?}",
        s3.keys()
    );
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn wrong_credentials_warn_once_and_fall_back() {
    let env = Env::new();
    let s3 = S3::start();
    let mut m = Machine::new(&env, "wrong", &s3.url(), "");
    m.set_env("AWS_SECRET_ACCESS_KEY", "guessed-secret");
    let (v, err) = m.compile(&source(&env, "a.c", 1));
    assert_eq!(call(v["path"].as_str().unwrap()), 1);
    assert_eq!(err.matches("authentication refused").count(), 1, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("remote")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("guessed-secret"), "never printed: {err}");
    let s = m.stats();
    assert!(s["remote_err_auth"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["remote_err_denied"], 0, "{s}");
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
    let d = m.cmd(&["doctor"]).output().unwrap();
    let d = String::from_utf8_lossy(&d.stdout);
    assert!(d.contains("authentication refused"), "{d}");
    assert!(!d.contains("guessed-secret"), "{d}");

    // Credentials from the shared file's profile work.
    let file = env.file(
        "aws/credentials",
        &format!("[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n[ci]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n"),
    );
    let mut p = Machine::new(&env, "profile", &s3.url(), "");
    p.extra_env.clear();
    p.set_env("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap());
    p.set_env("AWS_PROFILE", "ci");
    let mut c = p.cmd(&[
        "compile",
        source(&env, "b.c", 2).to_str().unwrap(),
        "--json",
    ]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    for (k, v) in &p.extra_env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(s3.keys().len(), 2, "{:?}", s3.keys());
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn a_killed_or_stopped_server_costs_at_most_the_deadline() {
    let env = Env::new();
    // Killed: nothing listens any more.
    let mut s3 = S3::start();
    let m = Machine::new(&env, "killed", &s3.url(), ",remote_timeout=3s");
    m.compile(&source(&env, "a.c", 1));
    s3.kill();
    let t = Instant::now();
    let (v, err) = m.compile(&source(&env, "b.c", 2));
    assert_eq!(call(v["path"].as_str().unwrap()), 2);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3) + SLACK,
        "{:?}",
        t.elapsed()
    );
    assert!(m.stats()["remote_err_connect"].as_u64().unwrap() >= 1);

    // Stopped (SIGSTOP): the kernel accepts connections, nobody answers.
    let s3 = S3::start();
    let m = Machine::new(&env, "stopped", &s3.url(), ",remote_timeout=3s");
    m.compile(&source(&env, "c.c", 3)); // a pooled connection would be warm
    signal(s3.pid(), libc::SIGSTOP);
    let t = Instant::now();
    let (v, err) = m.compile(&source(&env, "d.c", 4));
    let spent = t.elapsed();
    signal(s3.pid(), libc::SIGCONT);
    assert_eq!(call(v["path"].as_str().unwrap()), 4);
    assert!(err.contains("timed out"), "{err}");
    assert!(
        spent < Duration::from_secs(3) + SLACK,
        "read-through and upload share one deadline: {spent:?}"
    );
    assert_eq!(
        m.stats()["remote_err_timeout"],
        1,
        "the upload was not tried again"
    );

    // Redis stopped in front of S3: S3 still answers within the deadline.
    let redis = Redis::start();
    let chain = format!("{};{}", redis.url(), s3.url());
    let a = Machine::new(&env, "a", &chain, "");
    let src = source(&env, "e.c", 5);
    a.compile(&src);
    signal(redis.child.id(), libc::SIGSTOP);
    let b = Machine::new(&env, "b", &chain, ",remote_timeout=4s");
    let t = Instant::now();
    let (v, err) = b.compile(&src);
    let spent = t.elapsed();
    signal(redis.child.id(), libc::SIGCONT);
    assert_eq!(
        v["tier"], "remote",
        "served by S3 after Redis's share ran out: {err}"
    );
    assert!(spent < Duration::from_secs(4) + SLACK, "{spent:?}");
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn signed_objects_under_verify_required() {
    let env = Env::new();
    let s3 = S3::start();
    let key = env.file(
        "sign.key",
        "a long random secret, shared by CI and developers\n",
    );
    let signed = format!(",remote_sign_key={},remote_verify=required", key.display());
    // An unsigned upload is refused by a reader that requires signatures.
    let plain = Machine::new(&env, "plain", &s3.url(), "");
    let k1 = source(&env, "one.c", 1);
    plain.compile(&k1);
    let strict = Machine::new(&env, "strict", &s3.url(), &signed);
    let (v, err) = strict.compile(&k1);
    assert_eq!(v["tier"], "local", "{v}");
    assert!(err.contains("unsigned"), "{err}");
    // CI signs; a read-only developer with the key takes it.
    let ci = Machine::new(&env, "ci", &s3.url(), &signed);
    let k2 = source(&env, "two.c", 2);
    ci.compile(&k2);
    let dev = Machine::new(
        &env,
        "dev",
        &s3.url(),
        &format!("{signed},remote_mode=read-only"),
    );
    let before = s3.keys();
    let (v, err) = dev.compile(&k2);
    assert_eq!(
        v["tier"], "remote",
        "signed by CI, verified by the developer: {v} {err}"
    );
    assert_eq!(call(v["path"].as_str().unwrap()), 2);
    dev.compile(&source(&env, "three.c", 3));
    assert_eq!(s3.keys(), before, "read-only uploads nothing");
    // A signed value whose record lost its MAC is not taken.
    let m = s3
        .keys()
        .into_iter()
        .find(|k| {
            k.contains("/m/")
                && std::fs::read_to_string(s3.object(k))
                    .unwrap()
                    .contains(v["key"].as_str().unwrap())
        })
        .unwrap();
    let text = std::fs::read_to_string(s3.object(&m)).unwrap();
    let mut j: Value = serde_json::from_str(&text).unwrap();
    for (_, r) in j["results"].as_object_mut().unwrap() {
        r.as_object_mut().unwrap().remove("mac");
    }
    std::fs::write(s3.object(&m), serde_json::to_vec(&j).unwrap()).unwrap();
    let dev2 = Machine::new(&env, "dev2", &s3.url(), &signed);
    let (v, err) = dev2.compile(&k2);
    assert_eq!(v["tier"], "local", "{err}");
    assert!(err.contains("left out a result record"), "{err}");
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn a_bundle_moves_between_machines_with_s3_configured() {
    let env = Env::new();
    let s3a = S3::start();
    let s3b = S3::start();
    let a = Machine::new(&env, "a", &s3a.url(), "");
    let src = source(&env, "k.c", 9);
    a.compile(&src);
    let bundle = env.dir.path().join("ci.tar.zst");
    let o = a
        .cmd(&["export", "--out", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // B's bucket is empty: its hit can only come from the bundle.
    let b = Machine::new(&env, "b", &s3b.url(), "");
    let o = b
        .cmd(&["import", bundle.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (v, err) = b.compile(&src);
    assert_eq!(
        (v["hit"].clone(), v["tier"].clone()),
        (true.into(), "local".into()),
        "{err}"
    );
    assert_eq!(call(v["path"].as_str().unwrap()), 9);
    assert_eq!(compiles(&env).len(), 1);
    assert!(
        s3b.keys().is_empty(),
        "a local hit asks no remote: {:?}",
        s3b.keys()
    );
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.sh runs it where found"]
fn a_large_entry_goes_up_in_parts_and_comes_back() {
    let env = Env::new();
    let s3 = S3::start();
    // 6 MiB that zstd cannot shrink, in the library: two parts of 5 MiB and 1 MiB.
    let mut blob = vec![0u8; 6 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let blob_path = env.dir.path().join("blob.bin");
    std::fs::write(&blob_path, &blob).unwrap();
    let src = env.file(
        "big.c",
        &format!(
            "__asm__(\".section .rodata\\n.globl xc_blob\\nxc_blob:\\n.incbin \\\"{}\\\"\\n.previous\");\nextern const unsigned char xc_blob[];\nint f(void) {{ return xc_blob[123457]; }}\n",
            blob_path.display()
        ),
    );
    let a = Machine::new(
        &env,
        "a",
        &s3.url(),
        ",remote_s3_part_size=5MiB,remote_timeout=30s",
    );
    let (va, err) = a.compile(&src);
    assert_eq!(a.stats()["remote_uploads"], 1, "{err}");
    let e = s3.entry(va["key"].as_str().unwrap());
    assert!(std::fs::metadata(&e).unwrap().len() > 6 << 20);
    let b = Machine::new(&env, "b", &s3.url(), ",remote_timeout=30s");
    let (vb, err) = b.compile(&src);
    assert_eq!(vb["tier"], "remote", "{vb} {err}");
    assert_eq!(call(vb["path"].as_str().unwrap()), i32::from(blob[123457]));
    assert_eq!(compiles(&env).len(), 1);
}
