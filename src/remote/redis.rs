//! The Redis tier: a synchronous client (no async runtime: embedders fork), short
//! timeouts, a circuit breaker, and one counter per kind of failure.
//!
//! Keys, under `xcache:1:<compiledir name>:` (the compiledir's name carries the OS,
//! kernel, arch, libc, runtime tag and layout; CUDA entries have their GPU arch in their
//! key material, hence in their keys):
//!
//! - `m:<request key>`: a hash, one field per result (its key), whose value is the JSON
//!   `{"created": secs, "headers": [[path, blake3], …]}`; at most [`MAX_RESULTS`] fields.
//! - `e:<result key>`: the packed entry ([`crate::store::pack`]), signed when a key is
//!   configured.
//!
//! Both expire after `remote_ttl` (renewed by each upload). Nothing fetched is trusted:
//! the store checks every value ([`crate::store::Store::import_result`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ::redis::{Commands, ErrorKind, RedisError};
use serde::{Deserialize, Serialize};

use super::breaker::Breaker;
use crate::clock::{unix_secs, Clock};
use crate::config::{redact, RemoteMode};
use crate::store::key::Key;
use crate::store::pack::{self, Packed, SignKey};
use crate::store::remote::Remote;
use crate::store::stats::{Recorder, RemoteEvent};

/// The (path, blake3) of the headers a result was built from.
type Headers = Vec<(String, String)>;

/// Results kept per request key on the remote (the oldest go).
pub const MAX_RESULTS: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct ResultField {
    created: u64,
    headers: Vec<(String, String)>,
}

/// A Redis remote tier.
pub struct RedisTier {
    shown: String,
    client: ::redis::Client,
    conn: Mutex<Option<::redis::Connection>>,
    connect_timeout: Duration,
    op_timeout: Duration,
    ttl: Option<u64>,
    mode: RemoteMode,
    sign: Option<SignKey>,
    verify_required: bool,
    max_entry: u64,
    prefix: String,
    breaker: Breaker,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
    warned: Mutex<HashSet<&'static str>>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTier({}, {})", self.shown, self.prefix)
    }
}

/// Settings of a [`RedisTier`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` (its password, if any, is never shown).
    pub url: String,
    /// A password to use when the URL has none (`XCACHE_REMOTE_PASSWORD`).
    pub password: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Expiry of uploads; `None`: none.
    pub ttl: Option<Duration>,
    /// Read, write or neither.
    pub mode: RemoteMode,
    /// The signing key.
    pub sign: Option<SignKey>,
    /// Refuse unsigned values.
    pub verify_required: bool,
    /// The most a fetched value may unpack to ([`crate::Config::entry_limit`]).
    pub max_entry: u64,
    /// The platform's namespace: the compiledir's name.
    pub namespace: String,
}

/// A failure, by kind (each has its own counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Timeout,
    Auth,
    Full,
    Other,
}

impl Failure {
    fn of(e: &RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH") | Some("WRONGPASS"))
        {
            Failure::Auth
        } else if matches!(e.code(), Some("OOM") | Some("READONLY") | Some("NOPERM")) {
            Failure::Full
        } else if e.is_connection_refusal() {
            Failure::Connect
        } else {
            Failure::Other
        }
    }

    fn event(self) -> RemoteEvent {
        match self {
            Failure::Connect => RemoteEvent::ErrConnect,
            Failure::Timeout => RemoteEvent::ErrTimeout,
            Failure::Auth => RemoteEvent::ErrAuth,
            Failure::Full => RemoteEvent::ErrFull,
            Failure::Other => RemoteEvent::ErrOther,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Failure::Connect => "cannot connect",
            Failure::Timeout => "timed out",
            Failure::Auth => "authentication refused",
            Failure::Full => "refuses to store",
            Failure::Other => "failed",
        }
    }
}

impl RedisTier {
    /// A tier for these settings. Connects lazily, on first use.
    pub fn new(
        s: RedisSettings,
        clock: Arc<dyn Clock>,
        stats: Arc<Recorder>,
    ) -> crate::Result<RedisTier> {
        use ::redis::IntoConnectionInfo;
        let shown = redact(&s.url);
        let mut info = s.url.as_str().into_connection_info().map_err(|e| {
            crate::Error::Config(format!(
                "remote {shown:?} is not a valid redis:// address ({e}). Fix: write redis://[user:password@]host:port/db"
            ))
        })?;
        if info.redis_settings().password().is_none() {
            if let Some(p) = &s.password {
                let settings = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(settings);
            }
        }
        // No `CLIENT SETINFO` on connect: a round trip per process that servers before
        // 7.2 answer with an error, and nothing here uses it.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        info = info.set_redis_settings(settings);
        let client = ::redis::Client::open(info)
            .map_err(|e| crate::Error::Config(format!("remote {shown:?}: {e}")))?;
        Ok(RedisTier {
            shown,
            client,
            conn: Mutex::new(None),
            connect_timeout: s.connect_timeout,
            op_timeout: s.op_timeout,
            ttl: s.ttl.filter(|d| !d.is_zero()).map(|d| d.as_secs().max(1)),
            mode: s.mode,
            sign: s.sign,
            verify_required: s.verify_required,
            max_entry: s.max_entry,
            prefix: format!("xcache:1:{}:", s.namespace),
            breaker: Breaker::default(),
            clock,
            stats,
            warned: Mutex::new(HashSet::new()),
        })
    }

    fn manifest_key(&self, request: &Key) -> String {
        format!("{}m:{}", self.prefix, request.hex())
    }

    fn entry_key(&self, key: &Key) -> String {
        format!("{}e:{}", self.prefix, key.hex())
    }

    /// Says something once per process per kind.
    fn warn_once(&self, kind: &'static str, text: impl FnOnce() -> String) {
        if self.warned.lock().unwrap().insert(kind) {
            log::warn!("{}", text());
        }
    }

    /// Runs `op` on a connection (made if needed), with the timeouts and the breaker;
    /// `None` on any failure, which is counted, said once, and drops the connection.
    fn with_conn<T>(
        &self,
        op: impl FnOnce(&mut ::redis::Connection) -> Result<T, RedisError>,
    ) -> Option<T> {
        let now = self.clock.now();
        if !self.breaker.allows(now) {
            self.stats.remote(RemoteEvent::Skipped, 0, Duration::ZERO);
            return None;
        }
        let start = Instant::now();
        let mut slot = self.conn.lock().unwrap();
        let result = (|| {
            if slot.is_none() {
                let c = self
                    .client
                    .get_connection_with_timeout(self.connect_timeout)?;
                c.set_read_timeout(Some(self.op_timeout))?;
                c.set_write_timeout(Some(self.op_timeout))?;
                *slot = Some(c);
            }
            op(slot.as_mut().expect("connected"))
        })();
        match result {
            Ok(v) => {
                self.breaker.success();
                Some(v)
            }
            Err(e) => {
                let f = Failure::of(&e);
                *slot = None;
                self.stats.remote(f.event(), 0, start.elapsed());
                let opened = self.breaker.failure(self.clock.now());
                self.warn_once(f.name(), || {
                    format!(
                        "remote {}: {} ({e}); compiling locally{}",
                        self.shown,
                        f.name(),
                        if f == Failure::Auth {
                            ". Fix: check the password (XCACHE_REMOTE_PASSWORD or the remote setting)"
                        } else {
                            ""
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

    /// Round-trip time of a PING, whether a probe key can be written (and removed), and
    /// the number of entries and their bytes for this platform: what `doctor` and
    /// `xcache remote` report. Errors are returned, worded.
    pub fn probe(&self, count_entries: bool) -> Result<Probe, String> {
        let start = Instant::now();
        let mut c = self
            .client
            .get_connection_with_timeout(self.connect_timeout)
            .map_err(|e| format!("{}: {e}", Failure::of(&e).name()))?;
        c.set_read_timeout(Some(self.op_timeout))
            .map_err(|e| e.to_string())?;
        c.set_write_timeout(Some(self.op_timeout))
            .map_err(|e| e.to_string())?;
        let _: String = ::redis::cmd("PING")
            .query(&mut c)
            .map_err(|e| format!("{}: {e}", Failure::of(&e).name()))?;
        let latency = start.elapsed();
        let writable = if self.mode == RemoteMode::ReadWrite {
            let probe = format!("{}probe:{}", self.prefix, std::process::id());
            let r: Result<(), RedisError> = c.set_ex(&probe, 1, 10);
            let _: Result<(), RedisError> = c.del(&probe);
            Some(r.map_err(|e| format!("{}: {e}", Failure::of(&e).name())))
        } else {
            None
        };
        let mut entries = None;
        if count_entries {
            let pattern = format!("{}e:*", self.prefix);
            let keys: Vec<String> = c
                .scan_match::<_, String>(&pattern)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let mut rows = Vec::new();
            for k in keys {
                let len: u64 = c.strlen(&k).unwrap_or(0);
                let ttl: i64 = c.ttl(&k).unwrap_or(-1);
                rows.push(RemoteEntry {
                    key: k.rsplit(':').next().unwrap_or_default().to_string(),
                    bytes: len,
                    ttl_secs: (ttl >= 0).then_some(ttl as u64),
                });
            }
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            entries = Some(rows);
        }
        Ok(Probe {
            address: self.shown.clone(),
            namespace: self.prefix.clone(),
            mode: self.mode.name(),
            latency_ms: latency.as_secs_f64() * 1e3,
            writable,
            signing: self.sign.is_some(),
            verify_required: self.verify_required,
            entries,
        })
    }
}

/// What [`RedisTier::probe`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The address, password hidden.
    pub address: String,
    /// The key prefix of this platform.
    pub namespace: String,
    /// The mode.
    pub mode: &'static str,
    /// PING round trip, ms (connect included).
    pub latency_ms: f64,
    /// Whether a probe key could be written; `None` when not read-write.
    pub writable: Option<Result<(), String>>,
    /// Whether uploads are signed.
    pub signing: bool,
    /// Whether unsigned values are refused.
    pub verify_required: bool,
    /// The entries held for this platform, when asked for.
    pub entries: Option<Vec<RemoteEntry>>,
}

/// One entry on the remote.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteEntry {
    /// The result key.
    pub key: String,
    /// Bytes of its packed value.
    pub bytes: u64,
    /// Seconds until it expires; `None`: never.
    pub ttl_secs: Option<u64>,
}

impl Remote for RedisTier {
    fn results(&self, request: &Key) -> Vec<(Key, Vec<(String, String)>)> {
        if self.mode == RemoteMode::Off {
            return Vec::new();
        }
        let start = Instant::now();
        let mk = self.manifest_key(request);
        let Some(fields) = self.with_conn(|c| c.hgetall::<_, Vec<(String, String)>>(&mk)) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, Key, Headers)> = fields
            .into_iter()
            .filter_map(|(k, v)| {
                let key: Key = k.parse().ok()?;
                let f: ResultField = serde_json::from_str(&v).ok()?;
                Some((f.created, key, f.headers))
            })
            .collect();
        let _ = start;
        out.sort_by_key(|r| std::cmp::Reverse(r.0));
        out.into_iter().map(|(_, k, h)| (k, h)).collect()
    }

    fn fetch(&self, key: &Key) -> Option<Packed> {
        let start = Instant::now();
        let ek = self.entry_key(key);
        // Never more than a value within the entry limit can weigh (and one byte to
        // tell a larger one): a huge value is refused unread, not held first.
        let most = pack::packed_bound(self.max_entry);
        let bytes = self.with_conn(|c| c.getrange::<_, Vec<u8>>(&ek, 0, most as isize))?;
        if bytes.is_empty() {
            return None; // no such value
        }
        let decoded = if bytes.len() as u64 > most {
            Err(pack::Reject::TooLarge {
                at_least: self.max_entry + 1,
                max: self.max_entry,
            })
        } else {
            Packed::decode(
                &bytes,
                self.sign.as_ref(),
                self.verify_required,
                self.max_entry,
            )
        };
        match decoded {
            Ok(p) => {
                self.stats
                    .remote(RemoteEvent::Hit, bytes.len() as u64, start.elapsed());
                Some(p)
            }
            Err(why) => {
                self.stats.remote(RemoteEvent::Rejected, 0, start.elapsed());
                self.warn_once("rejected", || {
                    format!(
                        "remote {}: refused a value for {}… ({why}); compiling locally",
                        self.shown,
                        &key.hex()[..16]
                    )
                });
                if self.mode == RemoteMode::ReadWrite {
                    let _ = self.with_conn(|c| c.del::<_, ()>(&ek));
                }
                None
            }
        }
    }

    fn missed(&self, _request: &Key) {
        self.stats.remote(RemoteEvent::Miss, 0, Duration::ZERO);
    }

    fn refused(&self, request: &Key, key: &Key, why: &str) {
        self.stats.remote(RemoteEvent::Rejected, 0, Duration::ZERO);
        self.warn_once("refused", || {
            format!(
                "remote {}: a value for {}… does not hold what it claims ({why}); not used, compiling locally",
                self.shown,
                &key.hex()[..16]
            )
        });
        if self.mode == RemoteMode::ReadWrite && !why.contains("differs on this machine") {
            let (ek, mk, field) = (self.entry_key(key), self.manifest_key(request), key.hex());
            let _ = self.with_conn(|c| {
                c.del::<_, ()>(&ek)?;
                c.hdel::<_, _, ()>(&mk, &field)
            });
        }
    }

    fn upload(&self, request: &Key, key: &Key, headers: &[(String, String)], value: &Packed) {
        if self.mode != RemoteMode::ReadWrite {
            return;
        }
        let start = Instant::now();
        let bytes = value.encode(self.sign.as_ref());
        let field = serde_json::to_string(&ResultField {
            created: unix_secs(SystemTime::now()),
            headers: headers.to_vec(),
        })
        .expect("serialises");
        let (ek, mk, fk) = (self.entry_key(key), self.manifest_key(request), key.hex());
        let ttl = self.ttl;
        let done = self.with_conn(|c| {
            let mut p = ::redis::pipe();
            match ttl {
                Some(t) => p.set_ex(&ek, &bytes, t).ignore(),
                None => p.set(&ek, &bytes).ignore(),
            };
            p.hset(&mk, &fk, &field).ignore();
            if let Some(t) = ttl {
                p.expire(&mk, t as i64).ignore();
            }
            p.hlen(&mk);
            let (n,): (usize,) = p.query(c)?;
            if n > MAX_RESULTS {
                // Bounded: the oldest results go (their values expire on their own).
                let all: Vec<(String, String)> = c.hgetall(&mk)?;
                let mut by_age: Vec<(u64, String)> = all
                    .into_iter()
                    .map(|(k, v)| {
                        let created = serde_json::from_str::<ResultField>(&v)
                            .map(|f| f.created)
                            .unwrap_or(0);
                        (created, k)
                    })
                    .collect();
                by_age.sort();
                for (_, k) in by_age.iter().take(n - MAX_RESULTS) {
                    c.hdel::<_, _, ()>(&mk, k)?;
                }
            }
            Ok(())
        });
        if done.is_some() {
            self.stats
                .remote(RemoteEvent::Upload, bytes.len() as u64, start.elapsed());
        }
    }
}
