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
//! the store checks every value ([`crate::store::Store::import_result`]). With a signing
//! key, each result field carries a MAC too (`"mac"`: over the request key, the result
//! key, its creation time and its headers), checked here before the store reads any
//! path it names: a writer without the key cannot make a reader hash its files.
//!
//! The client is [`super::resp`]: every call of a request draws on that request's one
//! deadline ([`crate::store::remote::Budget`]), connections are pooled (never held while
//! another thread waits for one), and replies are bounded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::breaker::Breaker;
use super::resp::{Address, Conn, Limits, RespError, Value};
use crate::clock::{unix_secs, Clock};
use crate::config::{redact, RemoteMode};
use crate::store::key::Key;
use crate::store::pack::{self, Packed, SignKey};
use crate::store::remote::{Remote, RemoteResult};

#[cfg(test)]
use super::record::result_mac_input;
use super::record::ResultField;
pub use super::record::{check_record, RecordReject, MAX_HEADERS, MAX_RESULTS};
pub use super::{Probe, RemoteEntry};

/// Connections kept open for reuse.
const POOL: usize = 4;
use crate::store::stats::{Recorder, RemoteEvent};

/// A Redis remote tier.
pub struct RedisTier {
    shown: String,
    addr: Address,
    pool: Mutex<Vec<Conn>>,
    connect_timeout: Duration,
    budget: Duration,
    ttl: Option<u64>,
    mode: RemoteMode,
    sign: Option<SignKey>,
    verify_required: bool,
    max_entry: u64,
    prefix: String,
    breaker: Breaker,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
    slot: usize,
    warned: Mutex<HashSet<&'static str>>,
    limits: Limits,
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
    /// What one request may spend on the remote, in all.
    pub budget: Duration,
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
    fn of(e: &RespError) -> Failure {
        match e {
            RespError::Timeout => Failure::Timeout,
            RespError::Connect(_) => Failure::Connect,
            RespError::Server(m) => match e.code() {
                Some("NOAUTH") | Some("WRONGPASS") => Failure::Auth,
                Some("OOM") | Some("READONLY") | Some("NOPERM") => Failure::Full,
                _ if m.contains("AUTH") || m.contains("password") => Failure::Auth,
                _ => Failure::Other,
            },
            RespError::Io(_) | RespError::Protocol(_) => Failure::Other,
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

fn cmd(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// A hash's (field, value) pairs, as HGETALL answers them.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn bulk_pairs(v: Value) -> Result<Pairs, RespError> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(RespError::Protocol(
                "HGETALL did not answer an array".into(),
            )),
        };
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match (k.into_bytes(), v.into_bytes()) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => return Err(RespError::Protocol("HGETALL answered a non-string".into())),
        }
    }
    Ok(out)
}

impl RedisTier {
    /// A tier for these settings. Connects lazily, on first use.
    pub fn new(
        s: RedisSettings,
        clock: Arc<dyn Clock>,
        stats: Arc<Recorder>,
    ) -> crate::Result<RedisTier> {
        let shown = redact(&s.url);
        let mut addr = Address::parse(&s.url).map_err(|e| {
            crate::Error::Config(format!(
                "remote {shown:?} is not a valid redis:// address: {e}. Fix: write redis://[user:password@]host:port/db"
            ))
        })?;
        if addr.password.is_none() {
            addr.password = s.password.clone();
        }
        let slot = stats.tier(&shown);
        Ok(RedisTier {
            slot,
            shown,
            addr,
            pool: Mutex::new(Vec::new()),
            connect_timeout: s.connect_timeout,
            budget: s.budget,
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
            limits: Limits {
                // A value is read with GETRANGE up to what the entry limit allows.
                max_bulk: usize::try_from(pack::packed_bound(s.max_entry) + 1)
                    .unwrap_or(usize::MAX),
                max_array: 4 * MAX_RESULTS.max(1024),
            },
        })
    }

    fn manifest_key(&self, request: &Key) -> String {
        format!("{}m:{}", self.prefix, request.hex())
    }

    fn entry_key(&self, key: &Key) -> String {
        format!("{}e:{}", self.prefix, key.hex())
    }

    /// The address, as shown (no password in it).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Says something once per process per kind.
    fn warn_once(&self, kind: &'static str, text: impl FnOnce() -> String) {
        if self.warned.lock().unwrap().insert(kind) {
            log::warn!("{}", text());
        }
    }

    fn connect(&self, deadline: Instant) -> Result<Conn, RespError> {
        Conn::connect(&self.addr, self.connect_timeout, deadline, self.limits)
    }

    /// Runs `op` on a connection (a pooled one, or a new one), by the deadline, with the
    /// breaker; `None` on any failure, which is counted, said once, and drops the
    /// connection. A deadline already passed (the request's budget is spent) asks
    /// nothing and counts nothing new.
    fn with_conn<T>(
        &self,
        deadline: Instant,
        op: impl FnOnce(&mut Conn, Instant) -> Result<T, RespError>,
    ) -> Option<T> {
        if Instant::now() >= deadline {
            return None;
        }
        let now = self.clock.now();
        if !self.breaker.allows(now) {
            self.stats
                .remote_at(self.slot, RemoteEvent::Skipped, 0, Duration::ZERO);
            return None;
        }
        let start = Instant::now();
        // Never held during I/O: a thread stuck on a slow server keeps its connection,
        // not the pool.
        let pooled = self.pool.lock().unwrap().pop();
        let result = match pooled {
            Some(c) => Ok(c),
            None => self.connect(deadline),
        }
        .and_then(|mut c| op(&mut c, deadline).map(|v| (v, c)));
        match result {
            Ok((v, c)) => {
                let mut pool = self.pool.lock().unwrap();
                if pool.len() < POOL {
                    pool.push(c);
                }
                drop(pool);
                self.breaker.success();
                Some(v)
            }
            Err(e) => {
                let f = Failure::of(&e);
                self.stats
                    .remote_at(self.slot, f.event(), 0, start.elapsed());
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
    /// `xcache list --remote` report. Each command is bounded by `remote_timeout`.
    /// Errors are returned, worded.
    pub fn probe(&self, count_entries: bool) -> Result<Probe, String> {
        let worded = |e: RespError| format!("{}: {e}", Failure::of(&e).name());
        let start = Instant::now();
        let mut c = self
            .connect(start + self.connect_timeout + self.budget)
            .map_err(worded)?;
        let step = || Instant::now() + self.budget;
        c.query(&[b"PING"], step()).map_err(worded)?;
        let latency = start.elapsed();
        let writable = if self.mode == RemoteMode::ReadWrite {
            let probe = format!("{}probe:{}", self.prefix, std::process::id());
            let r = c
                .query(&[b"SET", probe.as_bytes(), b"1", b"EX", b"10"], step())
                .map(|_| ());
            let _ = c.query(&[b"DEL", probe.as_bytes()], step());
            Some(r.map_err(worded))
        } else {
            None
        };
        let mut entries = None;
        if count_entries {
            let pattern = format!("{}e:*", self.prefix);
            let mut rows = Vec::new();
            let mut cursor = b"0".to_vec();
            loop {
                let reply = c
                    .query(
                        &[
                            b"SCAN",
                            &cursor,
                            b"MATCH",
                            pattern.as_bytes(),
                            b"COUNT",
                            b"1000",
                        ],
                        step(),
                    )
                    .map_err(worded)?;
                let Value::Array(mut parts) = reply else {
                    return Err("SCAN did not answer an array".into());
                };
                let keys = match parts.pop() {
                    Some(Value::Array(k)) => k,
                    _ => return Err("SCAN answered no key list".into()),
                };
                cursor = parts
                    .pop()
                    .and_then(Value::into_bytes)
                    .ok_or("SCAN answered no cursor")?;
                for k in keys.into_iter().filter_map(Value::into_bytes) {
                    let len = c
                        .query(&[b"STRLEN", &k], step())
                        .ok()
                        .and_then(|v| v.as_int())
                        .unwrap_or(0);
                    let ttl = c
                        .query(&[b"TTL", &k], step())
                        .ok()
                        .and_then(|v| v.as_int())
                        .unwrap_or(-1);
                    let k = String::from_utf8_lossy(&k).into_owned();
                    rows.push(RemoteEntry {
                        key: k.rsplit(':').next().unwrap_or_default().to_string(),
                        bytes: len.max(0) as u64,
                        ttl_secs: (ttl >= 0).then_some(ttl as u64),
                        last_modified: None,
                    });
                }
                if cursor == b"0" {
                    break;
                }
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

impl Remote for RedisTier {
    fn budget(&self) -> Duration {
        self.budget
    }

    fn results(&self, request: &Key, deadline: Instant) -> Vec<RemoteResult> {
        if self.mode == RemoteMode::Off {
            return Vec::new();
        }
        self.stats.remote_lookup_begins(self.slot);
        let mk = self.manifest_key(request);
        let Some(fields) = self.with_conn(deadline, |c, d| {
            bulk_pairs(c.query(&[b"HGETALL", mk.as_bytes()], d)?)
        }) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut refused = None;
        for (k, v) in fields {
            match check_record(request, &k, &v, self.sign.as_ref(), self.verify_required) {
                Ok(r) => out.push(r),
                Err(why) => refused = Some((why, k)),
            }
        }
        if let Some((why, field)) = refused {
            self.stats
                .remote_at(self.slot, RemoteEvent::Rejected, 0, Duration::ZERO);
            self.warn_once("record", || {
                format!(
                    "remote {}: left out a result record of {}… ({}); its headers were not read",
                    self.shown,
                    &request.hex()[..16],
                    why.describe()
                )
            });
            if self.mode == RemoteMode::ReadWrite {
                let _ = self.with_conn(deadline, |c, d| {
                    c.query(&[b"HDEL", mk.as_bytes(), &field], d)
                });
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.0));
        out.into_iter().map(|(_, r)| r).collect()
    }

    fn fetch(&self, key: &Key, deadline: Instant) -> Option<Packed> {
        let start = Instant::now();
        let ek = self.entry_key(key);
        // Never more than a value within the entry limit can weigh (and one byte to
        // tell a larger one): a huge value is refused unread, not held first.
        let most = pack::packed_bound(self.max_entry);
        let end = most.to_string();
        let bytes = self
            .with_conn(deadline, |c, d| {
                c.query(&[b"GETRANGE", ek.as_bytes(), b"0", end.as_bytes()], d)
            })?
            .into_bytes()?;
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
                self.stats.remote_at(
                    self.slot,
                    RemoteEvent::Hit,
                    bytes.len() as u64,
                    start.elapsed(),
                );
                Some(p)
            }
            Err(why) => {
                self.stats
                    .remote_at(self.slot, RemoteEvent::Rejected, 0, start.elapsed());
                self.warn_once("rejected", || {
                    format!(
                        "remote {}: refused a value for {}… ({why}); compiling locally",
                        self.shown,
                        &key.hex()[..16]
                    )
                });
                if self.mode == RemoteMode::ReadWrite {
                    let _ = self.with_conn(deadline, |c, d| c.query(&[b"DEL", ek.as_bytes()], d));
                }
                None
            }
        }
    }

    fn missed(&self, _request: &Key) -> bool {
        self.stats
            .remote_at(self.slot, RemoteEvent::Miss, 0, Duration::ZERO)
    }

    fn refused(&self, request: &Key, key: &Key, why: &str, remove: bool, deadline: Instant) {
        self.stats
            .remote_at(self.slot, RemoteEvent::Rejected, 0, Duration::ZERO);
        self.warn_once("refused", || {
            format!(
                "remote {}: a value for {}… does not hold what it claims ({why}); not used, compiling locally",
                self.shown,
                &key.hex()[..16]
            )
        });
        if self.mode == RemoteMode::ReadWrite && remove {
            let (ek, mk, field) = (self.entry_key(key), self.manifest_key(request), key.hex());
            let _ = self.with_conn(deadline, |c, d| {
                c.pipeline(
                    &[
                        cmd(&[b"DEL", ek.as_bytes()]),
                        cmd(&[b"HDEL", mk.as_bytes(), field.as_bytes()]),
                    ],
                    d,
                )
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
        if self.mode != RemoteMode::ReadWrite {
            return;
        }
        let start = Instant::now();
        let bytes = value.encode(self.sign.as_ref());
        let created = unix_secs(SystemTime::now());
        let field = serde_json::to_vec(&ResultField::new(
            request,
            key,
            created,
            headers,
            self.sign.as_ref(),
        ))
        .expect("serialises");
        let (ek, mk, fk) = (self.entry_key(key), self.manifest_key(request), key.hex());
        let ttl = self.ttl.map(|t| t.to_string());
        let done = self.with_conn(deadline, |c, d| {
            let mut p = Vec::new();
            match &ttl {
                Some(t) => p.push(cmd(&[b"SET", ek.as_bytes(), &bytes, b"EX", t.as_bytes()])),
                None => p.push(cmd(&[b"SET", ek.as_bytes(), &bytes])),
            }
            p.push(cmd(&[b"HSET", mk.as_bytes(), fk.as_bytes(), &field]));
            if let Some(t) = &ttl {
                p.push(cmd(&[b"EXPIRE", mk.as_bytes(), t.as_bytes()]));
            }
            p.push(cmd(&[b"HLEN", mk.as_bytes()]));
            let replies = c.pipeline(&p, d)?;
            if let Some(Value::Error(e)) = replies.iter().find(|v| matches!(v, Value::Error(_))) {
                return Err(RespError::Server(e.clone()));
            }
            let n = replies.last().and_then(Value::as_int).unwrap_or(0) as usize;
            if n > MAX_RESULTS {
                // Bounded: the oldest results go (their values expire on their own).
                let all = bulk_pairs(c.query(&[b"HGETALL", mk.as_bytes()], d)?)?;
                let mut by_age: Vec<(u64, Vec<u8>)> = all
                    .into_iter()
                    .map(|(k, v)| {
                        let created = serde_json::from_slice::<ResultField>(&v)
                            .map(|f| f.created)
                            .unwrap_or(0);
                        (created, k)
                    })
                    .collect();
                by_age.sort();
                let mut del: Vec<&[u8]> = vec![b"HDEL", mk.as_bytes()];
                del.extend(
                    by_age
                        .iter()
                        .take(n - MAX_RESULTS)
                        .map(|(_, k)| k.as_slice()),
                );
                c.query(&del, d)?;
            }
            Ok(())
        });
        if done.is_some() {
            self.stats.remote_at(
                self.slot,
                RemoteEvent::Upload,
                bytes.len() as u64,
                start.elapsed(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(c: char) -> Key {
        c.to_string().repeat(64).parse().unwrap()
    }

    #[test]
    fn result_records_are_authenticated_before_their_paths_are_read() {
        let sk = SignKey::from_secret(b"0123456789abcdef-secret");
        let other = SignKey::from_secret(b"someone else's secret!!");
        let (req, key) = (k('a'), k('b'));
        let headers = vec![("/usr/include/stdio.h".to_string(), "00".repeat(32))];
        let signed = |by: &SignKey, req: &Key| {
            serde_json::to_vec(&ResultField {
                created: 7,
                headers: headers.clone(),
                mac: Some(
                    blake3::Hash::from(by.mac(&result_mac_input(req, &key, 7, &headers)))
                        .to_hex()
                        .to_string(),
                ),
            })
            .unwrap()
        };
        let unsigned = serde_json::to_vec(&ResultField {
            created: 7,
            headers: headers.clone(),
            mac: None,
        })
        .unwrap();
        let field = key.hex();
        let f = field.as_bytes();
        assert!(check_record(&req, f, &signed(&sk, &req), Some(&sk), true).is_ok());
        assert_eq!(
            check_record(&req, f, &unsigned, Some(&sk), true).unwrap_err(),
            RecordReject::Unsigned
        );
        assert!(check_record(&req, f, &unsigned, Some(&sk), false).is_ok());
        assert_eq!(
            check_record(&req, f, &signed(&other, &req), Some(&sk), false).unwrap_err(),
            RecordReject::BadSignature
        );
        // A signed record moved to another request does not verify there.
        assert_eq!(
            check_record(&k('c'), f, &signed(&sk, &req), Some(&sk), false).unwrap_err(),
            RecordReject::BadSignature
        );
        // Changing one header path breaks the MAC.
        let mut tampered: serde_json::Value = serde_json::from_slice(&signed(&sk, &req)).unwrap();
        tampered["headers"][0][0] = "/dev/zero".into();
        let tampered = serde_json::to_vec(&tampered).unwrap();
        assert_eq!(
            check_record(&req, f, &tampered, Some(&sk), false).unwrap_err(),
            RecordReject::BadSignature
        );
        assert_eq!(
            check_record(&req, b"nope", &unsigned, None, false).unwrap_err(),
            RecordReject::Malformed
        );
    }
}
