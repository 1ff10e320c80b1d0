//! The S3 tier: any S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, s3s-fs),
//! spoken to with a synchronous HTTP client ([`ureq`]: no async runtime inside the
//! library, so embedders can fork, as with Redis) and our own SigV4 signer
//! ([`super::sigv4`]).
//!
//! `remote = s3://bucket/prefix?endpoint=http://host:port&region=eu-west-1`: path-style
//! requests (`endpoint/bucket/key`) to the endpoint, `https://s3.<region>.amazonaws.com`
//! by default. Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) under the profile
//! `AWS_PROFILE` (else `default`); without any, requests go unsigned (a public bucket).
//! They are never printed.
//!
//! Objects, under `<prefix>/xcache/1/<compiledir name>/` (the compiledir's name carries
//! the OS, kernel, arch, libc, runtime tag and layout, as Redis's key prefix does):
//!
//! - `m/<request key>`: the request's manifest, a small JSON object
//!   `{"v": 1, "results": {"<result key>": {"created", "headers", "mac"}}}`: the same
//!   result records as Redis's `m:<request>` hash ([`super::record`]), at most
//!   [`MAX_RESULTS`] (the oldest go). An upload reads it, adds its record and writes it
//!   back: two machines uploading two results of one request at once may lose one
//!   record (never a value, never a wrong one): the next request that misses compiles
//!   and records it again.
//! - `e/<result key>`: the packed entry ([`crate::store::pack`]), signed when a key is
//!   configured; content-addressed, so written with `If-None-Match: *` (a 412 means it
//!   is there already, AWS's 409 `ConditionalRequestConflict` that another machine is
//!   writing it at this moment; a server that refuses the header with 501 or 400 gets plain PUTs
//!   from then on). A value above `remote_s3_part_size` goes up as a multipart upload.
//!
//! S3 evicts nothing: a lifecycle rule on the prefix expires objects by age
//! (`docs/REMOTE.md` has one ready). Nothing fetched is trusted: records are checked
//! here (their MACs, before the store reads a path they name), values by the store
//! ([`crate::store::Store::import_result`]).
//!
//! Every request of one xcache request draws on its one deadline
//! ([`crate::store::remote::Budget`]): each HTTP call is given what is left (connect,
//! every read and write; ureq applies it to the socket), throttling (429, 503) and
//! server errors (5xx) are retried with exponential backoff and jitter only while the
//! wait fits before the deadline, and bodies are bounded before they are read. Small
//! requests reuse pooled connections; a body above [`POOLED_BODY`] goes on a fresh one
//! (ureq gives a fresh connection's writes the deadline, a pooled one's none). The
//! endpoint's name is looked up by the deadline too ([`super::resolve`]).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::breaker::Breaker;
use super::record::{check_field, ResultField, MAX_RESULTS};
use super::sigv4::{self, Credentials};
use super::{Probe, RemoteEntry};
use crate::clock::{unix_secs, Clock};
use crate::config::{redact, RemoteMode};
use crate::store::key::Key;
use crate::store::pack::{self, Packed, SignKey};
use crate::store::remote::{Remote, RemoteResult};
use crate::store::stats::{Recorder, RemoteEvent};

/// Default size of a multipart upload's parts (`remote_s3_part_size`); a value larger
/// than one part goes up in parts.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

/// The smallest part S3 (and s3s-fs) take, but for the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Largest manifest object read: 16 records of a few hundred headers are tens of KiB.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Bodies up to this size are sent on pooled connections.
pub const POOLED_BODY: usize = 64 << 10;

/// Tries of one HTTP call that the server answered with 429 or 5xx.
const TRIES: u32 = 4;

/// First backoff; doubled at each retry, up to [`BACKOFF_CAP`], with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Largest error or listing body read.
const MAX_SMALL_BODY: u64 = 4 << 20;

/// Largest shared credentials file read.
const MAX_CREDENTIALS_FILE: u64 = 1 << 20;

/// What `s3://bucket/prefix?endpoint=…&region=…` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside it, without slashes at either end ("" for none).
    pub prefix: String,
    /// `scheme://host[:port]`, no trailing slash.
    pub endpoint: String,
    /// The region that signs requests.
    pub region: String,
    /// The `Host` header: the endpoint's authority.
    pub host: String,
}

impl S3Url {
    /// Parses `url`; `default_region` (`AWS_REGION`, `AWS_DEFAULT_REGION`) when the URL
    /// names none, else `us-east-1`. Errors say what to write.
    pub fn parse(url: &str, default_region: Option<&str>) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("it does not start with s3://")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err("credentials do not go in the URL: give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials".into());
        }
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!(
                "{bucket:?} is not a bucket name (3 to 63 letters, digits, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..")
            || prefix.contains("//")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(format!("{prefix:?} is not a key prefix"));
        }
        let (mut endpoint, mut region) = (None, None);
        for item in query.split('&').filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(v.to_string()),
                Some(("region", v)) if !v.is_empty() => region = Some(v.to_string()),
                _ => {
                    return Err(format!(
                        "unknown parameter {:?} (known: endpoint, region)",
                        item.split_once('=').map_or(item, |(k, _)| k)
                    ))
                }
            }
        }
        let region = region
            .or_else(|| default_region.map(str::to_string))
            .unwrap_or_else(|| "us-east-1".into());
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("{region:?} is not a region"));
        }
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let authority = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .ok_or("the endpoint must start with http:// or https://")?;
        if authority.is_empty()
            || authority.contains('/')
            || authority.contains('@')
            || authority.contains('?')
        {
            return Err(
                "the endpoint is scheme://host[:port], with no path and no credentials".into(),
            );
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            host: authority.to_string(),
            endpoint,
            region,
        })
    }
}

/// The credentials the environment gives, in AWS's order: the variables, then the
/// shared credentials file's profile. `None`: none anywhere (requests go unsigned).
/// `get` reads an environment variable. Errors never contain a secret.
pub fn credentials(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Credentials>, String> {
    let var = |k: &str| get(k).filter(|v| !v.is_empty());
    if let (Some(access_key), Some(secret_key)) =
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Some(Credentials {
            access_key,
            secret_key,
            session_token: var("AWS_SESSION_TOKEN"),
        }));
    }
    let named = var("AWS_SHARED_CREDENTIALS_FILE");
    let path = match (&named, var("HOME")) {
        (Some(p), _) => std::path::PathBuf::from(p),
        (None, Some(home)) => std::path::Path::new(&home).join(".aws/credentials"),
        (None, None) => return Ok(None),
    };
    let profile = var("AWS_PROFILE");
    let text =
        match crate::fsx::read_named_file(&path, crate::fsx::Bounds::size(MAX_CREDENTIALS_FILE)) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(_) if named.is_none() && profile.is_none() && !path.exists() => return Ok(None),
            Err(e) => return Err(format!("the shared credentials file: {e}")),
        };
    let want = profile.as_deref().unwrap_or("default");
    match profile_in(&text, want) {
        Some(c) => Ok(Some(c)),
        None if profile.is_some() || named.is_some() => Err(format!(
            "no profile [{want}] with aws_access_key_id and aws_secret_access_key in {}",
            path.display()
        )),
        None => Ok(None),
    }
}

/// The keys of `[profile]` in a shared credentials file's text.
fn profile_in(text: &str, profile: &str) -> Option<Credentials> {
    let mut inside = false;
    let (mut access, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => access = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key: access?,
        secret_key: secret?,
        session_token: token,
    })
}

/// Settings of an [`S3Tier`].
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `s3://…`.
    pub url: String,
    /// The region when the URL names none (`AWS_REGION`).
    pub default_region: Option<String>,
    /// The credentials; `None`: unsigned requests.
    pub credentials: Option<Credentials>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// What one request may spend on the remote, in all.
    pub budget: Duration,
    /// Read, write or neither.
    pub mode: RemoteMode,
    /// The signing key (of values, not of requests).
    pub sign: Option<SignKey>,
    /// Refuse unsigned values.
    pub verify_required: bool,
    /// The most a fetched value may unpack to.
    pub max_entry: u64,
    /// The platform's namespace: the compiledir's name.
    pub namespace: String,
    /// Values above this go up in parts of this size.
    pub part_size: u64,
}

/// A failure, by kind (each has its own counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Timeout,
    Auth,
    Denied,
    Full,
    Other,
}

impl Failure {
    fn event(self) -> RemoteEvent {
        match self {
            Failure::Connect => RemoteEvent::ErrConnect,
            Failure::Timeout => RemoteEvent::ErrTimeout,
            Failure::Auth => RemoteEvent::ErrAuth,
            Failure::Denied => RemoteEvent::ErrDenied,
            Failure::Full => RemoteEvent::ErrFull,
            Failure::Other => RemoteEvent::ErrOther,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Failure::Connect => "cannot connect",
            Failure::Timeout => "timed out",
            Failure::Auth => "authentication refused",
            Failure::Denied => "access denied",
            Failure::Full => "refuses to store (throttled or full)",
            Failure::Other => "failed",
        }
    }

    /// Whether it says the server is unwell (the breaker counts it). A denial or a
    /// throttle came from a server that answered at once.
    fn trips(self) -> bool {
        matches!(
            self,
            Failure::Connect | Failure::Timeout | Failure::Auth | Failure::Other
        )
    }
}

/// A failed call: its kind and what was said.
#[derive(Debug)]
struct CallError {
    kind: Failure,
    what: String,
}

impl CallError {
    fn new(kind: Failure, what: impl Into<String>) -> CallError {
        CallError {
            kind,
            what: what.into(),
        }
    }
}

/// An HTTP reply.
struct Reply {
    status: u16,
    etag: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    /// The `<Code>` of an error body.
    fn code(&self) -> String {
        xml_values(&String::from_utf8_lossy(&self.body), "Code")
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// The failure this status and code mean.
    fn failure(&self) -> CallError {
        let code = self.code();
        let kind = classify(self.status, &code);
        let said = if code.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {} {code}", self.status)
        };
        CallError::new(kind, said)
    }
}

/// What an S3 error status and `<Code>` mean. 403 is told apart: credentials that do
/// not authenticate (a wrong key, a bad signature, an expired token, a skewed clock)
/// from a request they may not make (AccessDenied: a read-only policy).
fn classify(status: u16, code: &str) -> Failure {
    const AUTH: &[&str] = &[
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "MissingSecurityHeader",
        "InvalidSecurity",
    ];
    match status {
        401 => Failure::Auth,
        400 | 403 if AUTH.contains(&code) => Failure::Auth,
        403 => Failure::Denied,
        429 | 503 | 507 => Failure::Full,
        _ => Failure::Other,
    }
}

/// Whether a reply to a conditional PUT says the server does not take `If-None-Match`
/// (rather than that the object is there, or another error).
fn conditional_unsupported(status: u16, code: &str) -> bool {
    status == 501
        || (status == 400
            && (code == "NotImplemented" || code.is_empty() || code == "InvalidArgument"))
}

/// What a reply to `PUT If-None-Match: *` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conditional {
    /// Written (2xx).
    Written,
    /// Not written: the object is there (412), or another writer is putting the same
    /// key at this moment (409 `ConditionalRequestConflict`, which AWS S3 answers to
    /// concurrent conditional writes; its docs say to retry). For a content-addressed
    /// entry both mean the same bytes are (being) stored: no retry, no error. If that
    /// other upload fails, the next reader finds no entry (a miss) and compiles.
    There,
    /// The server does not take the header: plain PUTs from now on.
    Unsupported,
    /// Another failure.
    Failed,
}

fn conditional_reply(status: u16, code: &str) -> Conditional {
    match status {
        200..=299 => Conditional::Written,
        412 => Conditional::There,
        409 if code == "ConditionalRequestConflict" => Conditional::There,
        s if conditional_unsupported(s, code) => Conditional::Unsupported,
        _ => Conditional::Failed,
    }
}

/// The texts of every `<tag>…</tag>` in `xml`, unescaped.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(
            rest[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}

/// A manifest object.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    v: u32,
    results: BTreeMap<String, ResultField>,
}

/// A small pseudo-random number for jitter (no RNG crate: the standard library's
/// per-process random hasher keys).
fn jitter(n: u64) -> u64 {
    use std::hash::BuildHasher;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(SEQ.fetch_add(1, Ordering::Relaxed))
        % n.max(1)
}

/// How long to wait before try `attempt` (1, 2, …): full jitter under an exponential
/// cap.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    Duration::from_millis(jitter(cap.as_millis() as u64 + 1))
}

/// An S3 remote tier.
pub struct S3Tier {
    shown: String,
    url: S3Url,
    creds: Option<Credentials>,
    pooled: ureq::Agent,
    fresh: ureq::Agent,
    budget: Duration,
    mode: RemoteMode,
    sign: Option<SignKey>,
    verify_required: bool,
    max_entry: u64,
    /// `<prefix>/xcache/1/<compiledir>` (no leading or trailing slash).
    base: String,
    part_size: u64,
    breaker: Breaker,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
    slot: usize,
    warned: Mutex<HashSet<&'static str>>,
    /// Whether the server takes `If-None-Match: *` (until it says otherwise).
    conditional: AtomicBool,
    /// An upload was denied (a read-only bucket): this process uploads no more.
    uploads_denied: AtomicBool,
}

impl std::fmt::Debug for S3Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Tier({}, {})", self.shown, self.base)
    }
}

impl S3Tier {
    /// A tier for these settings. Connects lazily.
    pub fn new(
        s: S3Settings,
        clock: Arc<dyn Clock>,
        stats: Arc<Recorder>,
    ) -> crate::Result<S3Tier> {
        let shown = redact(&s.url);
        let url = S3Url::parse(&s.url, s.default_region.as_deref()).map_err(|e| {
            crate::Error::Config(format!(
                "remote {shown:?} is not a valid s3:// address: {e}. Fix: write s3://bucket/prefix?endpoint=http://host:port&region=REGION (endpoint and region optional)"
            ))
        })?;
        let agent = |idle: usize| {
            ureq::AgentBuilder::new()
                .timeout_connect(s.connect_timeout)
                .resolver(super::resolve::Bounded(super::resolve::system))
                .redirects(0)
                .max_idle_connections(idle)
                .max_idle_connections_per_host(idle)
                .user_agent(concat!("xcache/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        let base = if url.prefix.is_empty() {
            format!("xcache/1/{}", s.namespace)
        } else {
            format!("{}/xcache/1/{}", url.prefix, s.namespace)
        };
        let slot = stats.tier(&shown);
        Ok(S3Tier {
            shown,
            url,
            creds: s.credentials,
            pooled: agent(4),
            fresh: agent(0),
            budget: s.budget,
            mode: s.mode,
            sign: s.sign,
            verify_required: s.verify_required,
            max_entry: s.max_entry,
            base,
            part_size: s.part_size.max(MIN_PART_SIZE),
            breaker: Breaker::default(),
            clock,
            stats,
            slot,
            warned: Mutex::new(HashSet::new()),
            conditional: AtomicBool::new(true),
            uploads_denied: AtomicBool::new(false),
        })
    }

    /// The address, as shown (no secret in it).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn manifest_key(&self, request: &Key) -> String {
        format!("{}/m/{}", self.base, request.hex())
    }

    fn entry_key(&self, key: &Key) -> String {
        format!("{}/e/{}", self.base, key.hex())
    }

    /// Counts an event of this tier; whether it was counted ([`Recorder::remote_at`]).
    fn count(&self, event: RemoteEvent, bytes: u64, spent: Duration) -> bool {
        self.stats.remote_at(self.slot, event, bytes, spent)
    }

    /// Says something once per process per kind.
    fn warn_once(&self, kind: &'static str, text: impl FnOnce() -> String) {
        if self.warned.lock().unwrap().insert(kind) {
            log::warn!("{}", text());
        }
    }

    /// One HTTP exchange, signed, by the deadline: `key` is the object's key ("" for
    /// the bucket); the reply's body is read up to `limit` bytes (a longer one is an
    /// error, unread). Any status comes back as a reply; 429 and 5xx are retried while
    /// the backoff fits before the deadline.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = self.call_once(method, key, query, headers, body, limit, deadline)?;
            let retry = reply.status == 429 || (500..600).contains(&reply.status);
            if !retry || attempt >= TRIES {
                return Ok(reply);
            }
            let wait = backoff(attempt);
            if Instant::now() + wait >= deadline {
                return Ok(reply);
            }
            log::debug!(
                "remote {}: HTTP {} to {method}; again in {wait:?}",
                self.shown,
                reply.status
            );
            std::thread::sleep(wait);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_once(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallError::new(
                Failure::Timeout,
                "the request's deadline passed",
            ));
        }
        let path = if key.is_empty() {
            format!("/{}", self.url.bucket)
        } else {
            format!("/{}/{key}", self.url.bucket)
        };
        let qs = sigv4::canonical_query(query);
        let target = format!(
            "{}{}{}{qs}",
            self.url.endpoint,
            sigv4::uri_encode(&path, true),
            if qs.is_empty() { "" } else { "?" }
        );
        let payload = if body.is_empty() {
            sigv4::EMPTY_SHA256.to_string()
        } else {
            sigv4::sha256_hex(body)
        };
        let (amz_date, _) = sigv4::amz_date(SystemTime::now());
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", &self.url.host),
            ("x-amz-content-sha256", &payload),
            ("x-amz-date", &amz_date),
        ];
        if let Some(t) = self.creds.as_ref().and_then(|c| c.session_token.as_deref()) {
            signed.push(("x-amz-security-token", t));
        }
        signed.extend_from_slice(headers);
        let agent = if body.len() > POOLED_BODY {
            &self.fresh
        } else {
            &self.pooled
        };
        let mut req = agent.request(method, &target).timeout(left);
        for (k, v) in &signed {
            req = req.set(k, v);
        }
        if let Some(c) = &self.creds {
            let auth = sigv4::authorization(
                &sigv4::Request {
                    method,
                    path: &path,
                    query,
                    headers: &signed,
                    payload_sha256: &payload,
                    amz_date: &amz_date,
                    region: &self.url.region,
                },
                c,
            );
            req = req.set("authorization", &auth);
        }
        let _lookups = super::resolve::within(deadline);
        let resp = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(transport(t)),
        };
        let status = resp.status();
        let etag = resp.header("etag").map(str::to_string);
        let declared: Option<u64> = resp.header("content-length").and_then(|v| v.parse().ok());
        let limit = if status >= 300 {
            limit.min(MAX_SMALL_BODY)
        } else {
            limit
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(CallError::new(
                Failure::Other,
                format!("a reply of {} bytes, above {limit}", declared.unwrap_or(0)),
            ));
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| io_failure(&e))?;
        if body.len() as u64 > limit {
            return Err(CallError::new(
                Failure::Other,
                format!("a reply above {limit} bytes"),
            ));
        }
        Ok(Reply { status, etag, body })
    }

    /// Runs `op` by the deadline, with the breaker: `None` on any failure, which is
    /// counted, said once, and (for a failure of the server) told to the breaker. A
    /// deadline already passed asks nothing and counts nothing new.
    fn with_breaker<T>(
        &self,
        deadline: Instant,
        op: impl FnOnce(Instant) -> Result<T, CallError>,
    ) -> Option<T> {
        if Instant::now() >= deadline {
            return None;
        }
        if !self.breaker.allows(self.clock.now()) {
            self.count(RemoteEvent::Skipped, 0, Duration::ZERO);
            return None;
        }
        let start = Instant::now();
        match op(deadline) {
            Ok(v) => {
                self.breaker.success();
                Some(v)
            }
            Err(e) => {
                self.count(e.kind.event(), 0, start.elapsed());
                let opened = e.kind.trips() && self.breaker.failure(self.clock.now());
                if !e.kind.trips() {
                    self.breaker.success();
                }
                self.warn_once(e.kind.name(), || {
                    format!(
                        "remote {}: {} ({}); compiling locally{}",
                        self.shown,
                        e.kind.name(),
                        e.what,
                        match e.kind {
                            Failure::Auth => ". Fix: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile AWS_PROFILE in ~/.aws/credentials) and the machine's clock",
                            Failure::Denied => ". Fix: the credentials are valid but the bucket's policy refuses this; for a reader, set remote_mode = read-only",
                            _ => "",
                        }
                    )
                });
                if opened {
                    log::info!(
                        "remote {}: not asked again for {}s after repeated failures",
                        self.shown,
                        super::breaker::COOL_DOWN.as_secs()
                    );
                }
                None
            }
        }
    }

    /// GET `key`: `Ok(None)` for a 404 (NoSuchKey), the body within `limit`.
    fn get(&self, key: &str, limit: u64, deadline: Instant) -> Result<Option<Vec<u8>>, CallError> {
        let r = self.call("GET", key, &[], &[], &[], limit, deadline)?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 if r.code() != "NoSuchBucket" => Ok(None),
            _ => Err(r.failure()),
        }
    }

    /// PUT `key` (conditionally, where the server takes it); true when written, false
    /// when it was there already.
    fn put(
        &self,
        key: &str,
        body: &[u8],
        if_absent: bool,
        deadline: Instant,
    ) -> Result<bool, CallError> {
        if if_absent && self.conditional.load(Ordering::Relaxed) {
            let r = self.call(
                "PUT",
                key,
                &[],
                &[("if-none-match", "*")],
                body,
                MAX_SMALL_BODY,
                deadline,
            )?;
            match conditional_reply(r.status, &r.code()) {
                Conditional::Written => return Ok(true),
                Conditional::There => return Ok(false),
                Conditional::Unsupported => {
                    log::debug!(
                        "remote {}: the server refuses If-None-Match ({}); plain PUTs from now on",
                        self.shown,
                        r.failure().what
                    );
                    self.conditional.store(false, Ordering::Relaxed);
                }
                Conditional::Failed => return Err(r.failure()),
            }
        }
        let r = self.call("PUT", key, &[], &[], body, MAX_SMALL_BODY, deadline)?;
        match r.status {
            200..=299 => Ok(true),
            _ => Err(r.failure()),
        }
    }

    /// Uploads `body` to `key` in parts of `part_size`; aborts the upload on failure.
    fn put_multipart(&self, key: &str, body: &[u8], deadline: Instant) -> Result<(), CallError> {
        let r = self.call(
            "POST",
            key,
            &[("uploads", "")],
            &[],
            &[],
            MAX_SMALL_BODY,
            deadline,
        )?;
        if r.status != 200 {
            return Err(r.failure());
        }
        let upload_id = xml_values(&String::from_utf8_lossy(&r.body), "UploadId")
            .into_iter()
            .next()
            .ok_or_else(|| CallError::new(Failure::Other, "no UploadId in the reply"))?;
        let parts = || -> Result<(), CallError> {
            let mut done = String::from("<CompleteMultipartUpload>");
            for (i, chunk) in body.chunks(self.part_size as usize).enumerate() {
                let n = (i + 1).to_string();
                let r = self.call(
                    "PUT",
                    key,
                    &[("partNumber", &n), ("uploadId", &upload_id)],
                    &[],
                    chunk,
                    MAX_SMALL_BODY,
                    deadline,
                )?;
                if r.status != 200 {
                    return Err(r.failure());
                }
                let etag = r
                    .etag
                    .ok_or_else(|| CallError::new(Failure::Other, "a part without an ETag"))?;
                done.push_str(&format!(
                    "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                    etag.replace('&', "&amp;").replace('<', "&lt;")
                ));
            }
            done.push_str("</CompleteMultipartUpload>");
            let r = self.call(
                "POST",
                key,
                &[("uploadId", &upload_id)],
                &[],
                done.as_bytes(),
                MAX_SMALL_BODY,
                deadline,
            )?;
            // S3 may answer 200 with an error in the body.
            if r.status != 200 || String::from_utf8_lossy(&r.body).contains("<Error>") {
                return Err(r.failure());
            }
            Ok(())
        };
        let result = parts();
        if result.is_err() {
            // Best effort: parts of an abandoned upload cost storage until a lifecycle
            // rule (AbortIncompleteMultipartUpload) removes them.
            let _ = self.call(
                "DELETE",
                key,
                &[("uploadId", &upload_id)],
                &[],
                &[],
                MAX_SMALL_BODY,
                deadline,
            );
        }
        result
    }

    fn delete(&self, key: &str, deadline: Instant) -> Result<(), CallError> {
        let r = self.call("DELETE", key, &[], &[], &[], MAX_SMALL_BODY, deadline)?;
        match r.status {
            200..=299 | 404 => Ok(()),
            _ => Err(r.failure()),
        }
    }

    /// Reads the manifest of `request` (empty when there is none); a malformed one
    /// counts as empty, with the reason.
    fn read_manifest(
        &self,
        request: &Key,
        deadline: Instant,
    ) -> Result<(Manifest, bool), CallError> {
        let Some(bytes) = self.get(&self.manifest_key(request), MAX_MANIFEST, deadline)? else {
            return Ok((Manifest::default(), false));
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.v == 1 => Ok((m, false)),
            _ => Ok((Manifest::default(), true)),
        }
    }

    /// The records of `m` that pass the checks, newest first, and whether any did not.
    fn checked(&self, request: &Key, m: Manifest) -> (Vec<(u64, String, RemoteResult)>, bool) {
        let mut out = Vec::new();
        let mut refused = false;
        for (k, f) in m.results {
            match check_field(
                request,
                k.as_bytes(),
                f,
                self.sign.as_ref(),
                self.verify_required,
            ) {
                Ok((created, r)) => out.push((created, k, r)),
                Err(why) => {
                    refused = true;
                    self.warn_once("record", || {
                        format!(
                            "remote {}: left out a result record of {}… ({}); its headers were not read",
                            self.shown,
                            &request.hex()[..16],
                            why.describe()
                        )
                    });
                }
            }
        }
        out.sort_by_key(|(created, _, _)| std::cmp::Reverse(*created));
        (out, refused)
    }

    /// Rewrites the manifest of `request` through `edit` (read, change, write back).
    /// `edit` says whether it changed anything: a manifest that `edit` left as it was,
    /// and from which no record was dropped, is not written again (a machine that lost
    /// the race to upload a result finds its record there already).
    fn edit_manifest(
        &self,
        request: &Key,
        deadline: Instant,
        edit: impl FnOnce(&mut BTreeMap<String, ResultField>) -> bool,
    ) -> Result<(), CallError> {
        let (m, _) = self.read_manifest(request, deadline)?;
        // Only records that verify are carried over: a planted one is dropped here.
        let mut kept: BTreeMap<String, ResultField> = BTreeMap::new();
        let raw = m.results.clone();
        let (good, _) = self.checked(request, m);
        for (_, k, _) in good {
            if let Some(f) = raw.get(&k) {
                kept.insert(k, f.clone());
            }
        }
        let dropped = kept.len() != raw.len();
        if !edit(&mut kept) && !dropped {
            return Ok(());
        }
        if kept.len() > MAX_RESULTS {
            let mut by_age: Vec<(u64, String)> =
                kept.iter().map(|(k, f)| (f.created, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(kept.len() - MAX_RESULTS) {
                kept.remove(k);
            }
        }
        let key = self.manifest_key(request);
        if kept.is_empty() {
            return self.delete(&key, deadline);
        }
        let body = serde_json::to_vec(&Manifest {
            v: 1,
            results: kept,
        })
        .expect("serialises");
        self.put(&key, &body, false, deadline).map(|_| ())
    }

    /// Round trip of a listing, whether a probe object can be written (and removed),
    /// and the entries held for this platform: what `doctor` and `xcache list --remote`
    /// report. Errors are returned, worded.
    pub fn probe(&self, count_entries: bool) -> Result<Probe, String> {
        let worded = |e: CallError| format!("{}: {}", e.kind.name(), e.what);
        let step = || Instant::now() + self.budget;
        let start = Instant::now();
        let prefix = format!("{}/", self.base);
        let r = self
            .call(
                "GET",
                "",
                &[("list-type", "2"), ("max-keys", "1"), ("prefix", &prefix)],
                &[],
                &[],
                MAX_SMALL_BODY,
                step(),
            )
            .map_err(worded)?;
        if r.status != 200 {
            return Err(worded(r.failure()));
        }
        let latency = start.elapsed();
        let writable = if self.mode == RemoteMode::ReadWrite {
            let probe = format!("{}/probe-{}", self.base, std::process::id());
            let w = self.put(&probe, b"1", false, step()).map(|_| ());
            let _ = self.delete(&probe, step());
            Some(w.map_err(worded))
        } else {
            None
        };
        let mut entries = None;
        if count_entries {
            let prefix = format!("{}/e/", self.base);
            let mut rows = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut q: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", &prefix)];
                if let Some(t) = &token {
                    q.push(("continuation-token", t));
                }
                let r = self
                    .call("GET", "", &q, &[], &[], MAX_SMALL_BODY, step())
                    .map_err(worded)?;
                if r.status != 200 {
                    return Err(worded(r.failure()));
                }
                let xml = String::from_utf8_lossy(&r.body);
                for item in xml.split("<Contents>").skip(1) {
                    let key = xml_values(item, "Key")
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                    rows.push(RemoteEntry {
                        key: key.rsplit('/').next().unwrap_or_default().to_string(),
                        bytes: xml_values(item, "Size")
                            .first()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        ttl_secs: None,
                        last_modified: xml_values(item, "LastModified").into_iter().next(),
                    });
                }
                token = xml_values(&xml, "NextContinuationToken").into_iter().next();
                if token.is_none() || !xml.contains("<IsTruncated>true</IsTruncated>") {
                    break;
                }
            }
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            entries = Some(rows);
        }
        Ok(Probe {
            address: self.shown.clone(),
            namespace: prefix,
            mode: self.mode.name(),
            latency_ms: latency.as_secs_f64() * 1e3,
            writable,
            signing: self.sign.is_some(),
            verify_required: self.verify_required,
            entries,
        })
    }
}

fn io_failure(e: &std::io::Error) -> CallError {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            CallError::new(Failure::Timeout, e.to_string())
        }
        _ => CallError::new(Failure::Other, e.to_string()),
    }
}

fn transport(t: ureq::Transport) -> CallError {
    use std::error::Error as _;
    let text = t.to_string();
    let mut src = t.source();
    let mut timed_out = false;
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        src = s.source();
    }
    match t.kind() {
        ureq::ErrorKind::Dns if timed_out => CallError::new(Failure::Timeout, text),
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
            CallError::new(Failure::Connect, text)
        }
        _ if timed_out => CallError::new(Failure::Timeout, text),
        _ => CallError::new(Failure::Other, text),
    }
}

impl Remote for S3Tier {
    fn budget(&self) -> Duration {
        self.budget
    }

    fn results(&self, request: &Key, deadline: Instant) -> Vec<RemoteResult> {
        if self.mode == RemoteMode::Off {
            return Vec::new();
        }
        self.stats.remote_lookup_begins(self.slot);
        let Some((m, malformed)) = self.with_breaker(deadline, |d| self.read_manifest(request, d))
        else {
            return Vec::new();
        };
        if malformed {
            self.warn_once("manifest", || {
                format!(
                    "remote {}: the manifest of {}… is malformed; not used",
                    self.shown,
                    &request.hex()[..16]
                )
            });
        }
        let (good, refused) = self.checked(request, m);
        if refused || malformed {
            self.count(RemoteEvent::Rejected, 0, Duration::ZERO);
        }
        good.into_iter().map(|(_, _, r)| r).collect()
    }

    fn fetch(&self, key: &Key, deadline: Instant) -> Option<Packed> {
        let start = Instant::now();
        let ek = self.entry_key(key);
        let most = pack::packed_bound(self.max_entry);
        let got = self.with_breaker(deadline, |d| match self.get(&ek, most, d) {
            Err(e) if e.what.starts_with("a reply") => Ok(Err(())),
            r => r.map(Ok),
        })?;
        let bytes = match got {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(()) => {
                self.count(RemoteEvent::Rejected, 0, start.elapsed());
                self.warn_once("rejected", || {
                    format!(
                        "remote {}: refused a value for {}… (larger than max_entry_size allows); compiling locally",
                        self.shown,
                        &key.hex()[..16]
                    )
                });
                return None;
            }
        };
        match Packed::decode(
            &bytes,
            self.sign.as_ref(),
            self.verify_required,
            self.max_entry,
        ) {
            Ok(p) => {
                self.count(RemoteEvent::Hit, bytes.len() as u64, start.elapsed());
                Some(p)
            }
            Err(why) => {
                self.count(RemoteEvent::Rejected, 0, start.elapsed());
                self.warn_once("rejected", || {
                    format!(
                        "remote {}: refused a value for {}… ({why}); compiling locally",
                        self.shown,
                        &key.hex()[..16]
                    )
                });
                if self.mode == RemoteMode::ReadWrite {
                    let _ = self.with_breaker(deadline, |d| self.delete(&ek, d));
                }
                None
            }
        }
    }

    fn missed(&self, _request: &Key) -> bool {
        self.count(RemoteEvent::Miss, 0, Duration::ZERO)
    }

    fn refused(&self, request: &Key, key: &Key, why: &str, remove: bool, deadline: Instant) {
        self.count(RemoteEvent::Rejected, 0, Duration::ZERO);
        self.warn_once("refused", || {
            format!(
                "remote {}: a value for {}… does not hold what it claims ({why}); not used, compiling locally",
                self.shown,
                &key.hex()[..16]
            )
        });
        if self.mode == RemoteMode::ReadWrite && remove {
            let ek = self.entry_key(key);
            let field = key.hex();
            let _ = self.with_breaker(deadline, |d| {
                self.delete(&ek, d)?;
                self.edit_manifest(request, d, |m| m.remove(&field).is_some())
            });
        }
    }

    fn upload(
        &self,
        request: &Key,
        key: &Key,
        headers: &[(String, String)],
        value: &Packed,
        deadline: Instant,
    ) {
        if self.mode != RemoteMode::ReadWrite || self.uploads_denied.load(Ordering::Relaxed) {
            return;
        }
        let start = Instant::now();
        let bytes = value.encode(self.sign.as_ref());
        let created = unix_secs(SystemTime::now());
        let field = ResultField::new(request, key, created, headers, self.sign.as_ref());
        let ek = self.entry_key(key);
        let mut denied = false;
        let done = self.with_breaker(deadline, |d| {
            let r = if bytes.len() as u64 > self.part_size {
                self.put_multipart(&ek, &bytes, d).map(|_| ())
            } else {
                self.put(&ek, &bytes, true, d).map(|_| ())
            };
            r.and_then(|()| {
                self.edit_manifest(request, d, |m| {
                    // Recorded already (by whoever won the race to upload it): as is.
                    if m.contains_key(&key.hex()) {
                        return false;
                    }
                    m.insert(key.hex(), field);
                    true
                })
            })
            .inspect_err(|e| denied = e.kind == Failure::Denied)
        });
        if denied {
            self.uploads_denied.store(true, Ordering::Relaxed);
        }
        if done.is_some() {
            self.count(RemoteEvent::Upload, bytes.len() as u64, start.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse(
            "s3://team-cache/ci/x?endpoint=http://127.0.0.1:9000/&region=eu-west-1",
            None,
        )
        .unwrap();
        assert_eq!(
            u,
            S3Url {
                bucket: "team-cache".into(),
                prefix: "ci/x".into(),
                endpoint: "http://127.0.0.1:9000".into(),
                region: "eu-west-1".into(),
                host: "127.0.0.1:9000".into(),
            }
        );
        let u = S3Url::parse("s3://bucket", Some("ap-south-1")).unwrap();
        assert_eq!(u.endpoint, "https://s3.ap-south-1.amazonaws.com");
        assert_eq!((u.prefix.as_str(), u.region.as_str()), ("", "ap-south-1"));
        assert_eq!(
            S3Url::parse("s3://bucket/", None).unwrap().region,
            "us-east-1"
        );
        for bad in [
            "redis://x",
            "s3://b",
            "s3://AKIA:secret@bucket/p",
            "s3://bucket/../p",
            "s3://bucket/p?endpoint=ftp://h",
            "s3://bucket/p?endpoint=http://u:p@h",
            "s3://bucket/p?endpoint=http://h/path",
            "s3://bucket/p?secret=1",
        ] {
            let e = S3Url::parse(bad, None).unwrap_err();
            assert!(!e.contains("secret@"), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_in_aws_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n# c\n[ci]\naws_access_key_id=AKCI\naws_secret_access_key=s2\naws_session_token = tok\n",
        )
        .unwrap();
        let f = file.to_str().unwrap().to_string();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        // The variables win.
        let get = env(vec![
            ("AWS_ACCESS_KEY_ID", "AKENV".into()),
            ("AWS_SECRET_ACCESS_KEY", "s0".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", f.clone()),
        ]);
        assert_eq!(credentials(&get).unwrap().unwrap().access_key, "AKENV");
        let get = env(vec![("AWS_SHARED_CREDENTIALS_FILE", f.clone())]);
        assert_eq!(credentials(&get).unwrap().unwrap().access_key, "AKDEFAULT");
        let get = env(vec![
            ("AWS_SHARED_CREDENTIALS_FILE", f.clone()),
            ("AWS_PROFILE", "ci".into()),
        ]);
        let c = credentials(&get).unwrap().unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.session_token.as_deref()),
            ("AKCI", Some("tok"))
        );
        let get = env(vec![
            ("AWS_SHARED_CREDENTIALS_FILE", f.clone()),
            ("AWS_PROFILE", "nope".into()),
        ]);
        let e = credentials(&get).unwrap_err();
        assert!(e.contains("[nope]") && !e.contains("s2"), "{e}");
        // Nothing anywhere: unsigned.
        let get = env(vec![(
            "HOME",
            dir.path().join("none").display().to_string(),
        )]);
        assert_eq!(credentials(&get).unwrap(), None);
    }

    #[test]
    fn failures_tell_403_apart_and_conditional_put_falls_back() {
        assert_eq!(classify(403, "AccessDenied"), Failure::Denied);
        assert_eq!(classify(403, "InvalidAccessKeyId"), Failure::Auth);
        assert_eq!(classify(403, "SignatureDoesNotMatch"), Failure::Auth);
        assert_eq!(classify(503, "SlowDown"), Failure::Full);
        assert_eq!(classify(500, "InternalError"), Failure::Other);
        assert!(conditional_unsupported(501, "NotImplemented"));
        assert!(conditional_unsupported(400, "NotImplemented"));
        assert!(!conditional_unsupported(412, "PreconditionFailed"));
        assert!(!conditional_unsupported(403, "AccessDenied"));
        assert_eq!(conditional_reply(200, ""), Conditional::Written);
        assert_eq!(
            conditional_reply(412, "PreconditionFailed"),
            Conditional::There
        );
        // AWS S3, two machines uploading the same entry at the same moment.
        assert_eq!(
            conditional_reply(409, "ConditionalRequestConflict"),
            Conditional::There
        );
        assert_eq!(
            conditional_reply(409, "BucketNotEmpty"),
            Conditional::Failed
        );
        assert_eq!(conditional_reply(501, ""), Conditional::Unsupported);
        assert_eq!(conditional_reply(403, "AccessDenied"), Conditional::Failed);
        assert_eq!(
            xml_values("<a><Code>X&amp;Y</Code><Code>Z</Code></a>", "Code"),
            ["X&Y", "Z"]
        );
        for attempt in 1..10 {
            assert!(backoff(attempt) <= BACKOFF_CAP);
        }
    }
}
