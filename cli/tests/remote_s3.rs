//! The S3 tier against real S3 servers, and Redis → S3 chains against a real
//! `redis-server`: two machines (base dirs) share hits through S3 alone and through
//! Redis in front of S3 (a flushed Redis is refilled from S3); forged, truncated and
//! misfiled objects are never loaded; an entry already there is not written again
//! (`If-None-Match: *`); wrong credentials cost one warning; a killed or stopped server
//! costs at most the deadline; signed objects under `remote_verify = required`; bundles
//! with S3 configured; a multipart upload.
//!
//! Two independent S3 implementations, one server per test on a free loopback port:
//!
//! - `s3s_fs::*`: `s3s-fs` (Rust, the `s3s` crate: S3's HTTP API over a directory);
//!   `XCACHE_TEST_S3S_FS`, else `s3s-fs` on PATH.
//! - `moto::*`: moto's server (Python, the mock AWS that botocore's own users test
//!   against), with authentication on: requests are checked by botocore's SigV4 code
//!   against an IAM user's keys and policy, so a signing bug of ours is a failure here.
//!   It also has what s3s-fs lacks: a bucket policy that refuses writes (403
//!   AccessDenied). `XCACHE_TEST_MOTO` (the `moto_server` script), else `moto_server`
//!   on PATH.
//!
//! Each test is `#[ignore]`d with the reason where its server is missing;
//! `scripts/test.sh` runs each server's where that server is found (CI installs both).
//! The tests reach the objects through S3's API (our own signer, std's TCP), not the
//! server's storage, so one body serves both servers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{stdout, Env};
use serde_json::Value;
use xcache::remote::sigv4::{self, Credentials};

const BUCKET: &str = "xc-bucket";
/// s3s-fs's keys (it takes the pair it is started with).
const ACCESS: &str = "AKXCACHETEST";
const SECRET: &str = "xcache-test-secret-key";

/// Which S3 server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3sFs,
    Moto,
}

/// A program named by an environment variable, else found on PATH by this name.
fn program(var: &str, name: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): the status and
/// the body (de-chunked).
fn http(port: u16, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP reply");
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut rest = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = String::from_utf8_lossy(&rest[..eol]);
            let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest.drain(..eol + 2 + n + 2);
        }
        rest = out;
    }
    (status, rest)
}

/// The texts of every `<tag>…</tag>` in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}

/// A real S3 server for one test, with the bucket made; killed when dropped. Its
/// objects are read and written through S3's API, signed with `creds`.
struct S3 {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    /// s3s-fs's objects; moto's log.
    root: tempfile::TempDir,
    /// Keys allowed everything on the bucket.
    creds: Credentials,
    /// moto: keys allowed to read and list only (s3s-fs has no policies).
    reader: Option<Credentials>,
    /// moto: a role's temporary keys, with a session token.
    role: Option<Credentials>,
}

impl S3 {
    fn start(kind: Kind) -> S3 {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = match kind {
            Kind::S3sFs => {
                std::fs::create_dir(root.path().join(BUCKET)).unwrap();
                let bin = program("XCACHE_TEST_S3S_FS", "s3s-fs");
                Command::new(&bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", ACCESS, "--secret-key", SECRET])
                    .arg(root.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("needs s3s-fs ({bin}): {e}"))
            }
            Kind::Moto => {
                let bin = program("XCACHE_TEST_MOTO", "moto_server");
                let log = std::fs::File::create(root.path().join("moto.log")).unwrap();
                Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("needs moto_server ({bin}): {e}"))
            }
        };
        let mut s = S3 {
            kind,
            child: Some(child),
            port,
            root,
            creds: Credentials {
                access_key: ACCESS.into(),
                secret_key: SECRET.into(),
                session_token: None,
            },
            reader: None,
            role: None,
        };
        // Ready when it accepts connections (a server starting, not a test sleeping).
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "{kind:?} did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        if kind == Kind::Moto {
            s.set_up_moto();
        }
        s
    }

    /// moto starts open to anyone: make a writer and a reader (IAM users with keys and
    /// policies) and the bucket, then turn authentication on, so that every request
    /// after is checked (botocore's SigV4, then the user's policy).
    fn set_up_moto(&mut self) {
        // Unsigned requests are routed by the service in a SigV4 scope; before
        // authentication is on, the signature is not checked.
        let query = |service: &str, version: &str, params: &str| {
            let head = format!("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKSETUP/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n");
            let body = format!("{params}&Version={version}");
            let (status, reply) = http(self.port, &head, body.as_bytes());
            let reply = String::from_utf8_lossy(&reply).into_owned();
            assert_eq!(status, 200, "moto {service} {params}: {reply}");
            reply
        };
        let iam = |params: &str| query("iam", "2010-05-08", params);
        let policy = |actions: &str| {
            sigv4::uri_encode(
                &format!(
                    r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
                ),
                false,
            )
        };
        let user = |name: &str, actions: &str| {
            iam(&format!("Action=CreateUser&UserName={name}"));
            iam(&format!(
                "Action=PutUserPolicy&UserName={name}&PolicyName=xcache&PolicyDocument={}",
                policy(actions)
            ));
            let keys = iam(&format!("Action=CreateAccessKey&UserName={name}"));
            Credentials {
                access_key: xml_values(&keys, "AccessKeyId").remove(0),
                secret_key: xml_values(&keys, "SecretAccessKey").remove(0),
                session_token: None,
            }
        };
        self.creds = user("writer", r#""s3:*""#);
        // AWS's reader needs s3:GetObject and s3:ListBucket; moto 5.2 refuses a listing
        // with s3:ListBucket alone, and takes s3:List*.
        self.reader = Some(user("reader", r#"["s3:GetObject","s3:List*"]"#));
        // Temporary keys (what CI on AWS mostly has: a role's, with a session token).
        let trust = sigv4::uri_encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#,
            false,
        );
        iam(&format!(
            "Action=CreateRole&RoleName=ci&AssumeRolePolicyDocument={trust}"
        ));
        iam(&format!(
            "Action=PutRolePolicy&RoleName=ci&PolicyName=xcache&PolicyDocument={}",
            policy(r#""s3:*""#)
        ));
        let keys = query(
            "sts",
            "2011-06-15",
            "Action=AssumeRole&RoleArn=arn:aws:iam::123456789012:role/ci&RoleSessionName=xc",
        );
        self.role = Some(Credentials {
            access_key: xml_values(&keys, "AccessKeyId").remove(0),
            secret_key: xml_values(&keys, "SecretAccessKey").remove(0),
            session_token: Some(xml_values(&keys, "SessionToken").remove(0)),
        });
        let (status, reply) = http(
            self.port,
            &format!("PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            b"",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let (status, reply) = http(
            self.port,
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n",
            b"0",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
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

    /// A signed request for `key` of the bucket ("" for the bucket itself).
    fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let path = if key.is_empty() {
            format!("/{BUCKET}")
        } else {
            format!("/{BUCKET}/{key}")
        };
        let host = format!("127.0.0.1:{}", self.port);
        let payload = sigv4::sha256_hex(body);
        let (date, _) = sigv4::amz_date(SystemTime::now());
        let headers = [
            ("host", host.as_str()),
            ("x-amz-content-sha256", payload.as_str()),
            ("x-amz-date", date.as_str()),
        ];
        let auth = sigv4::authorization(
            &sigv4::Request {
                method,
                path: &path,
                query,
                headers: &headers,
                payload_sha256: &payload,
                amz_date: &date,
                region: "us-east-1",
            },
            &self.creds,
        );
        let qs = sigv4::canonical_query(query);
        let head = format!(
            "{method} {}{}{qs} HTTP/1.1\r\nHost: {host}\r\nx-amz-content-sha256: {payload}\r\nx-amz-date: {date}\r\nAuthorization: {auth}\r\n",
            sigv4::uri_encode(&path, true),
            if qs.is_empty() { "" } else { "?" },
        );
        http(self.port, &head, body)
    }

    /// The object `key` (relative to the bucket).
    fn get(&self, key: &str) -> Vec<u8> {
        let (status, body) = self.request("GET", key, &[], &[]);
        assert_eq!(status, 200, "GET {key}: {}", String::from_utf8_lossy(&body));
        body
    }

    /// Writes the object `key`, as anyone who can write the bucket can.
    fn put(&self, key: &str, bytes: &[u8]) {
        let (status, body) = self.request("PUT", key, &[], bytes);
        assert_eq!(status, 200, "PUT {key}: {}", String::from_utf8_lossy(&body));
    }

    fn delete(&self, key: &str) {
        let (status, body) = self.request("DELETE", key, &[], &[]);
        assert!(
            status == 204 || status == 200,
            "DELETE {key}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The keys of the objects under `team/xcache/1/`, sorted (relative to the bucket).
    fn keys(&self) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            "",
            &[("list-type", "2"), ("prefix", "team/xcache/1/")],
            &[],
        );
        let xml = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "LIST: {xml}");
        assert!(!xml.contains("<IsTruncated>true"), "{xml}");
        let mut keys = xml_values(&xml, "Key");
        keys.sort();
        keys
    }

    /// The key of the object holding the entry `key`.
    fn entry(&self, key: &str) -> String {
        self.keys()
            .into_iter()
            .find(|k| k.ends_with(&format!("/e/{key}")))
            .unwrap_or_else(|| panic!("no entry {key} in {:?}", self.keys()))
    }

    /// The keys of the manifests.
    fn manifests(&self) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| k.contains("/m/"))
            .collect()
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
        if std::thread::panicking() && self.kind == Kind::Moto {
            let log = std::fs::read_to_string(self.root.path().join("moto.log"));
            eprintln!("moto's log:\n{}", log.unwrap_or_default());
        }
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
/// server's credentials.
struct Machine<'a> {
    env: &'a Env,
    base: PathBuf,
    flags: String,
    extra_env: Vec<(String, String)>,
}

impl<'a> Machine<'a> {
    /// A machine of `s3`'s (its credentials) whose remote is `remote`.
    fn new(env: &'a Env, name: &str, s3: &S3, remote: &str, more: &str) -> Machine<'a> {
        Machine::with_creds(env, name, &s3.creds, remote, more)
    }

    fn with_creds(
        env: &'a Env,
        name: &str,
        creds: &Credentials,
        remote: &str,
        more: &str,
    ) -> Machine<'a> {
        let cc = counting_cc(env);
        Machine {
            env,
            base: env.dir.path().join(name),
            flags: format!("handout_grace=0s,cc={},remote={remote}{more}", cc.display()),
            extra_env: vec![
                ("AWS_ACCESS_KEY_ID".into(), creds.access_key.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), creds.secret_key.clone()),
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

fn two_machines_share_hits_through_s3(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let a = Machine::new(&env, "a", &s3, &s3.url(), "");
    let b = Machine::new(&env, "b", &s3, &s3.url(), "");
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

fn redis_in_front_of_s3_is_refilled_from_s3(kind: Kind) {
    use redis::Commands;
    let env = Env::new();
    let s3 = S3::start(kind);
    let redis = Redis::start();
    let chain = format!("{};{}", redis.url(), s3.url());
    let a = Machine::new(&env, "a", &s3, &chain, "");
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
    let b = Machine::new(&env, "b", &s3, &chain, "");
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
    let cm = Machine::new(&env, "c", &s3, &chain, "");
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

fn forged_truncated_and_misfiled_objects_are_never_loaded(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let a = Machine::new(&env, "a", &s3, &s3.url(), "");
    let (k1, k2) = (source(&env, "one.c", 1), source(&env, "two.c", 2));
    let (v1, _) = a.compile(&k1);
    let (v2, _) = a.compile(&k2);
    let (e1, e2) = (
        s3.entry(v1["key"].as_str().unwrap()),
        s3.entry(v2["key"].as_str().unwrap()),
    );
    let one = s3.get(&e1);

    // A value filed under another key: two.c's object holds one.c's library.
    s3.put(&e2, &one);
    let b = Machine::new(&env, "b", &s3, &s3.url(), "");
    let (v, err) = b.compile(&k2);
    assert_eq!(v["tier"], "local", "{v}");
    assert_eq!(
        call(v["path"].as_str().unwrap()),
        2,
        "never one.c's function"
    );
    assert!(err.contains("does not hold what it claims"), "{err}");
    assert_ne!(s3.get(&e2), one, "deleted, then B's own upload");

    // A flipped byte.
    let mut bad = one.clone();
    let n = bad.len() - 10;
    bad[n] ^= 0x40;
    s3.put(&e1, &bad);
    let b2 = Machine::new(&env, "b2", &s3, &s3.url(), "");
    let (v, _) = b2.compile(&k1);
    assert_eq!(v["tier"], "local");
    assert_eq!(call(v["path"].as_str().unwrap()), 1);

    // Truncated.
    let k3 = source(&env, "three.c", 3);
    let (v3, _) = a.compile(&k3);
    let e3 = s3.entry(v3["key"].as_str().unwrap());
    let whole = s3.get(&e3);
    s3.put(&e3, &whole[..whole.len() / 2]);
    let b3 = Machine::new(&env, "b3", &s3, &s3.url(), "");
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
    for m in &s3.manifests() {
        s3.put(m, b"{not json");
    }
    let b4 = Machine::new(&env, "b4", &s3, &s3.url(), "");
    let (v, err) = b4.compile(&k4);
    assert_eq!(v["tier"], "local");
    assert!(err.contains("malformed"), "{err}");

    // Another platform's objects (another runtime tag: another compiledir) are never
    // asked for.
    let mut other = Machine::new(&env, "other", &s3, &s3.url(), "");
    other.set_env("XCACHE_RUNTIME", "cpython-0.1");
    let (v, _) = other.compile(&k1);
    assert_eq!(v["tier"], "local");
    assert!(
        s3.keys().iter().any(|k| k.contains("cpython-0.1")),
        "{:?}",
        s3.keys()
    );
}

fn wrong_credentials_warn_once_and_fall_back(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let mut m = Machine::new(&env, "wrong", &s3, &s3.url(), "");
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
    // A lookup that failed is counted as its failure, never also as a miss.
    assert_eq!(s["remote_misses"], 0, "{s}");
    assert_eq!(s["remote_tiers"][0]["misses"], 0, "{s}");
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
    let d = m.cmd(&["doctor"]).output().unwrap();
    let d = String::from_utf8_lossy(&d.stdout);
    assert!(d.contains("authentication refused"), "{d}");
    assert!(!d.contains("guessed-secret"), "{d}");

    // Credentials from the shared file's profile work.
    let file = env.file(
        "aws/credentials",
        &format!("[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n", s3.creds.access_key, s3.creds.secret_key),
    );
    let mut p = Machine::new(&env, "profile", &s3, &s3.url(), "");
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

fn a_killed_or_stopped_server_costs_at_most_the_deadline(kind: Kind) {
    let env = Env::new();
    // Killed: nothing listens any more.
    let mut s3 = S3::start(kind);
    let m = Machine::new(&env, "killed", &s3, &s3.url(), ",remote_timeout=3s");
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
    let s = m.stats();
    assert!(s["remote_err_connect"].as_u64().unwrap() >= 1, "{s}");
    // a.c missed (the server answered); b.c's lookup failed: not a miss too.
    assert_eq!(s["remote_misses"], 1, "{s}");

    // Stopped (SIGSTOP): the kernel accepts connections, nobody answers.
    let s3 = S3::start(kind);
    let m = Machine::new(&env, "stopped", &s3, &s3.url(), ",remote_timeout=3s");
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
    let s = m.stats();
    assert_eq!(
        s["remote_err_timeout"], 1,
        "the upload was not tried again: {s}"
    );
    assert_eq!(s["remote_misses"], 1, "c.c missed; d.c timed out: {s}");

    // Redis stopped in front of S3: S3 still answers within the deadline.
    let redis = Redis::start();
    let chain = format!("{};{}", redis.url(), s3.url());
    let a = Machine::new(&env, "a", &s3, &chain, "");
    let src = source(&env, "e.c", 5);
    a.compile(&src);
    signal(redis.child.id(), libc::SIGSTOP);
    let b = Machine::new(&env, "b", &s3, &chain, ",remote_timeout=4s");
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

fn signed_objects_under_verify_required(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let key = env.file(
        "sign.key",
        "a long random secret, shared by CI and developers\n",
    );
    let signed = format!(",remote_sign_key={},remote_verify=required", key.display());
    // An unsigned upload is refused by a reader that requires signatures.
    let plain = Machine::new(&env, "plain", &s3, &s3.url(), "");
    let k1 = source(&env, "one.c", 1);
    plain.compile(&k1);
    let strict = Machine::new(&env, "strict", &s3, &s3.url(), &signed);
    let (v, err) = strict.compile(&k1);
    assert_eq!(v["tier"], "local", "{v}");
    assert!(err.contains("unsigned"), "{err}");
    // CI signs; a read-only developer with the key takes it.
    let ci = Machine::new(&env, "ci", &s3, &s3.url(), &signed);
    let k2 = source(&env, "two.c", 2);
    ci.compile(&k2);
    let dev = Machine::new(
        &env,
        "dev",
        &s3,
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
                && String::from_utf8_lossy(&s3.get(k)).contains(v["key"].as_str().unwrap())
        })
        .unwrap();
    let mut j: Value = serde_json::from_slice(&s3.get(&m)).unwrap();
    for (_, r) in j["results"].as_object_mut().unwrap() {
        r.as_object_mut().unwrap().remove("mac");
    }
    s3.put(&m, &serde_json::to_vec(&j).unwrap());
    let dev2 = Machine::new(&env, "dev2", &s3, &s3.url(), &signed);
    let (v, err) = dev2.compile(&k2);
    assert_eq!(v["tier"], "local", "{err}");
    assert!(err.contains("left out a result record"), "{err}");
}

fn a_bundle_moves_between_machines_with_s3_configured(kind: Kind) {
    let env = Env::new();
    let s3a = S3::start(kind);
    let s3b = S3::start(kind);
    let a = Machine::new(&env, "a", &s3a, &s3a.url(), "");
    let src = source(&env, "k.c", 9);
    a.compile(&src);
    let bundle = env.dir.path().join("ci.tar.zst");
    let o = a
        .cmd(&["export", "--out", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // B's bucket is empty: its hit can only come from the bundle.
    let b = Machine::new(&env, "b", &s3b, &s3b.url(), "");
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

fn a_large_entry_goes_up_in_parts_and_comes_back(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
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
        &s3,
        &s3.url(),
        ",remote_s3_part_size=5MiB,remote_timeout=30s",
    );
    let (va, err) = a.compile(&src);
    assert_eq!(a.stats()["remote_uploads"], 1, "{err}");
    let e = s3.entry(va["key"].as_str().unwrap());
    assert!(s3.get(&e).len() > 6 << 20);
    let b = Machine::new(&env, "b", &s3, &s3.url(), ",remote_timeout=30s");
    let (vb, err) = b.compile(&src);
    assert_eq!(vb["tier"], "remote", "{vb} {err}");
    assert_eq!(call(vb["path"].as_str().unwrap()), i32::from(blob[123457]));
    assert_eq!(compiles(&env).len(), 1);
}

fn an_entry_already_there_is_not_written_again(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let a = Machine::new(&env, "a", &s3, &s3.url(), "");
    let src = source(&env, "k.c", 6);
    let (va, _) = a.compile(&src);
    let e = s3.entry(va["key"].as_str().unwrap());
    // The manifest goes (B misses, compiles and uploads), and the entry's object is
    // marked: an upload that rewrote it would take the mark away.
    for m in s3.manifests() {
        s3.delete(&m);
    }
    s3.put(&e, b"marked: written by A");
    let b = Machine::new(&env, "b", &s3, &s3.url(), "");
    let (vb, err) = b.compile(&src);
    assert_eq!(vb["tier"], "local", "{vb}");
    assert_eq!(b.stats()["remote_uploads"], 1, "{err}");
    assert_eq!(
        s3.get(&e),
        b"marked: written by A",
        "PUT If-None-Match: * of an existing object is refused (412), not a rewrite"
    );
    assert_eq!(
        s3.manifests().len(),
        1,
        "the record was written: {:?}",
        s3.keys()
    );
    // The mark is no value: the next reader refuses it, deletes it, compiles and
    // uploads a good one (the cache heals).
    let c = Machine::new(&env, "c", &s3, &s3.url(), "");
    let (vc, err) = c.compile(&src);
    assert_eq!(vc["tier"], "local", "{err}");
    assert_eq!(call(vc["path"].as_str().unwrap()), 6);
    let d = Machine::new(&env, "d", &s3, &s3.url(), "");
    let (vd, err) = d.compile(&src);
    assert_eq!(vd["tier"], "remote", "{err}");
    assert_eq!(compiles(&env).len(), 3, "A, B and C compiled; D did not");
}

/// moto only (s3s-fs has no policies): keys that may read but not write.
fn a_bucket_that_refuses_writes_is_denied_not_broken(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let reader = s3.reader.clone().expect("a server with policies");
    let ci = Machine::new(&env, "ci", &s3, &s3.url(), "");
    let k1 = source(&env, "one.c", 1);
    ci.compile(&k1);
    let before = s3.keys();
    // Read-write by mistake, with keys the bucket lets read only.
    let dev = Machine::with_creds(&env, "dev", &reader, &s3.url(), "");
    let (v, err) = dev.compile(&k1);
    assert_eq!(v["tier"], "remote", "reads go on: {err}");
    let (v, err) = dev.compile(&source(&env, "two.c", 2));
    assert_eq!(call(v["path"].as_str().unwrap()), 2);
    assert_eq!(err.matches("access denied").count(), 1, "{err}");
    assert!(err.contains("remote_mode = read-only"), "the fix: {err}");
    let s = dev.stats();
    assert!(s["remote_err_denied"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        s["remote_err_auth"], 0,
        "valid keys, not an auth failure: {s}"
    );
    assert_eq!(
        s["remote_skipped"], 0,
        "a denial does not open the breaker: {s}"
    );
    assert_eq!(s3.keys(), before, "nothing written");
    // doctor warns, and says what to do.
    let d = stdout(&dev.cmd(&["doctor"]).output().unwrap());
    let line = d.lines().find(|l| l.starts_with("remote")).unwrap();
    assert!(line.contains("warn") && line.contains("reachable"), "{d}");
    assert!(
        line.contains("NOT writable (access denied") && line.contains("remote_mode = read-only"),
        "{d}"
    );
}

/// moto only (s3s-fs takes one fixed key pair): a role's temporary keys, whose
/// session token is sent (`x-amz-security-token`, signed) and checked.
fn temporary_credentials_with_a_session_token(kind: Kind) {
    let env = Env::new();
    let s3 = S3::start(kind);
    let role = s3.role.clone().expect("a server with roles");
    let mut a = Machine::with_creds(&env, "a", &role, &s3.url(), "");
    a.set_env("AWS_SESSION_TOKEN", role.session_token.as_deref().unwrap());
    let src = source(&env, "k.c", 8);
    let (_, err) = a.compile(&src);
    assert!(err.is_empty(), "{err}");
    assert_eq!(a.stats()["remote_uploads"], 1);
    let mut b = Machine::with_creds(&env, "b", &role, &s3.url(), "");
    b.set_env("AWS_SESSION_TOKEN", role.session_token.as_deref().unwrap());
    let (v, err) = b.compile(&src);
    assert_eq!(v["tier"], "remote", "{err}");
    // The token left out, or another: refused as credentials, said once.
    let c = Machine::with_creds(&env, "c", &role, &s3.url(), "");
    let (v, err) = c.compile(&src);
    assert_eq!(v["tier"], "local");
    assert_eq!(err.matches("authentication refused").count(), 1, "{err}");
    let mut d = Machine::with_creds(&env, "d", &role, &s3.url(), "");
    d.set_env("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXPIRED");
    let (v, err) = d.compile(&src);
    assert_eq!(v["tier"], "local");
    assert_eq!(err.matches("authentication refused").count(), 1, "{err}");
    assert!(!err.contains("FQoGZXIvYXdzEXPIRED"), "never printed: {err}");
}

/// Each test, once per server: `s3s_fs::NAME` and `moto::NAME`, `#[ignore]`d with the
/// reason (`scripts/test.sh` runs those whose server it finds).
macro_rules! against {
    ($kind:expr, $why:literal: $($name:ident),* $(,)?) => {
        $(
            #[test]
            #[ignore = $why]
            fn $name() {
                super::$name($kind)
            }
        )*
    };
}

mod s3s_fs {
    use super::Kind;
    against!(Kind::S3sFs, "needs s3s-fs (XCACHE_TEST_S3S_FS): scripts/test.sh runs it where found":
        two_machines_share_hits_through_s3,
        redis_in_front_of_s3_is_refilled_from_s3,
        forged_truncated_and_misfiled_objects_are_never_loaded,
        an_entry_already_there_is_not_written_again,
        wrong_credentials_warn_once_and_fall_back,
        a_killed_or_stopped_server_costs_at_most_the_deadline,
        signed_objects_under_verify_required,
        a_bundle_moves_between_machines_with_s3_configured,
        a_large_entry_goes_up_in_parts_and_comes_back,
    );
}

/// The same protocol against a second implementation; not repeated here: what does
/// not depend on the server (a killed or stopped one, bundles).
mod moto {
    use super::Kind;
    against!(Kind::Moto, "needs moto_server (XCACHE_TEST_MOTO): scripts/test.sh runs it where found":
        two_machines_share_hits_through_s3,
        redis_in_front_of_s3_is_refilled_from_s3,
        forged_truncated_and_misfiled_objects_are_never_loaded,
        an_entry_already_there_is_not_written_again,
        wrong_credentials_warn_once_and_fall_back,
        a_bucket_that_refuses_writes_is_denied_not_broken,
        temporary_credentials_with_a_session_token,
        signed_objects_under_verify_required,
        a_large_entry_goes_up_in_parts_and_comes_back,
    );
}
