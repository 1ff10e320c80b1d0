//! Remote tiers: a cache shared by a team's machines, a CI fleet or a cluster's nodes,
//! beyond each one's `~/.cache`: Redis ([`redis`]), an S3-compatible object store
//! ([`s3`]), or both in a chain ([`chain`]: `remote = redis://…;s3://…`, fastest
//! first). The store decides what to take
//! and publishes it (see [`crate::store::remote`] and
//! [`crate::store::Store::import_result`]); a tier only moves bytes, within one deadline per request,
//! a circuit breaker ([`breaker`]) and a counter per kind of failure, and never fails a
//! request. `docs/REMOTE.md` says how to set one up, its security model and how it fails.

pub mod breaker;
pub mod bundle;
pub mod chain;
pub mod record;
pub mod redis;
pub mod resolve;
pub mod resp;
pub mod s3;
pub mod sigv4;

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Config, RemoteMode};
use crate::error::{Error, Result};
use crate::store::pack::SignKey;
use crate::store::remote::Remote;
use crate::store::stats::Recorder;

/// The environment variable a remote's password may come from (so that it need not be
/// in a config file or a command line).
pub const PASSWORD_ENV: &str = "XCACHE_REMOTE_PASSWORD";

/// Largest `remote_sign_key` file read: a secret is tens of bytes; the file is named by
/// a setting, so it is read as any file someone named (regular only, never blocking,
/// bounded: `/dev/zero` or a FIFO there is an error, not a hang).
pub const MAX_SIGN_KEY: u64 = 64 << 10;

/// The signing key of `remote_sign_key`, if set.
pub fn sign_key(config: &Config) -> Result<Option<SignKey>> {
    let Some(path) = &config.remote_sign_key else {
        return Ok(None);
    };
    let secret = crate::fsx::read_named_file(path, crate::fsx::Bounds::size(MAX_SIGN_KEY))
        .map_err(|e| {
            Error::Config(format!(
                "remote_sign_key: {e}. Fix: point remote_sign_key at a regular file holding the secret (16 bytes to 64 KiB, e.g. made by `head -c 32 /dev/urandom | base64 > FILE`)"
            ))
        })?;
    if secret.trim_ascii().len() < 16 {
        return Err(Error::Config(format!(
            "remote_sign_key {}: the secret is shorter than 16 bytes. Fix: put a long random secret there (e.g. `head -c 32 /dev/urandom | base64 > {}`)",
            path.display(),
            path.display()
        )));
    }
    Ok(Some(SignKey::from_secret(&secret)))
}

/// The tiers the `remote` setting names: `;`-separated, fastest first (spaces around
/// each are ignored).
pub fn tier_urls(remote: &str) -> Vec<&str> {
    remote
        .split(';')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// One tier, of either kind.
#[derive(Debug)]
pub enum AnyTier {
    /// A Redis server.
    Redis(redis::RedisTier),
    /// An S3-compatible bucket.
    S3(s3::S3Tier),
}

impl AnyTier {
    /// Its address, as shown (no secret in it).
    pub fn shown(&self) -> &str {
        match self {
            AnyTier::Redis(t) => t.shown(),
            AnyTier::S3(t) => t.shown(),
        }
    }

    /// What `doctor` and `xcache list --remote` report of it.
    pub fn probe(&self, count_entries: bool) -> std::result::Result<Probe, String> {
        match self {
            AnyTier::Redis(t) => t.probe(count_entries),
            AnyTier::S3(t) => t.probe(count_entries),
        }
    }

    /// The tier as the store uses it.
    pub fn into_remote(self) -> Arc<dyn Remote> {
        match self {
            AnyTier::Redis(t) => Arc::new(t),
            AnyTier::S3(t) => Arc::new(t),
        }
    }

    /// What to try when it fails, for `doctor`.
    pub fn fix_hint(&self) -> &'static str {
        match self {
            AnyTier::Redis(_) => "check the address and that the server runs (redis-cli -u URL ping), the password (XCACHE_REMOTE_PASSWORD)",
            AnyTier::S3(_) => "check the bucket, the endpoint and that it answers, and the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE in ~/.aws/credentials)",
        }
    }
}

/// The tiers the configuration asks for (for the compiledir named `namespace`), fastest
/// first; empty when there is none or the remote is off. Credentials and passwords
/// come from this process's environment.
pub fn tiers_from_config(
    config: &Config,
    namespace: &str,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
) -> Result<Vec<AnyTier>> {
    let Some(remote) = &config.remote else {
        return Ok(Vec::new());
    };
    if config.remote_mode == RemoteMode::Off {
        return Ok(Vec::new());
    }
    let sign = sign_key(config)?;
    if config.remote_verify_required() && sign.is_none() {
        return Err(Error::Config(
            "remote_verify = required needs remote_sign_key: without the key no signature can be checked. Fix: set remote_sign_key to the file holding the secret CI signs with".into(),
        ));
    }
    let env = |k: &str| std::env::var(k).ok();
    let mut tiers = Vec::new();
    for url in tier_urls(remote) {
        if url.starts_with("s3://") {
            let credentials = s3::credentials(&env).map_err(|e| {
                Error::Config(format!(
                    "remote {}: the S3 credentials: {e}",
                    crate::config::redact(url)
                ))
            })?;
            let settings = s3::S3Settings {
                url: url.to_string(),
                default_region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
                credentials,
                connect_timeout: config.remote_connect_timeout,
                budget: config.remote_timeout,
                mode: config.remote_mode,
                sign: sign.clone(),
                verify_required: config.remote_verify_required(),
                max_entry: config.entry_limit(),
                namespace: namespace.to_string(),
                part_size: config.remote_s3_part_size,
            };
            tiers.push(AnyTier::S3(s3::S3Tier::new(
                settings,
                clock.clone(),
                stats.clone(),
            )?));
        } else {
            let settings = redis::RedisSettings {
                url: url.to_string(),
                password: std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
                connect_timeout: config.remote_connect_timeout,
                budget: config.remote_timeout,
                ttl: Some(config.remote_ttl),
                mode: config.remote_mode,
                sign: sign.clone(),
                verify_required: config.remote_verify_required(),
                max_entry: config.entry_limit(),
                namespace: namespace.to_string(),
            };
            tiers.push(AnyTier::Redis(redis::RedisTier::new(
                settings,
                clock.clone(),
                stats.clone(),
            )?));
        }
    }
    Ok(tiers)
}

/// The remote the store uses: the configured tiers in a [`chain::Chain`] (one tier is a
/// chain of one), or `None` when there is none or it is off.
pub fn from_config(
    config: &Config,
    namespace: &str,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
) -> Result<Option<Arc<dyn Remote>>> {
    let tiers = tiers_from_config(config, namespace, clock, stats.clone())?;
    if tiers.is_empty() {
        return Ok(None);
    }
    let tiers = tiers.into_iter().map(AnyTier::into_remote).collect();
    Ok(Some(Arc::new(chain::Chain::new(
        tiers,
        config.remote_timeout,
        stats,
    ))))
}

/// What [`AnyTier::probe`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// The address, secrets hidden.
    pub address: String,
    /// The key prefix of this platform.
    pub namespace: String,
    /// The mode.
    pub mode: &'static str,
    /// Round trip of a first request (PING; an S3 listing), ms (connect included).
    pub latency_ms: f64,
    /// Whether a probe key could be written; `None` when not read-write.
    pub writable: Option<std::result::Result<(), String>>,
    /// Whether uploads are signed.
    pub signing: bool,
    /// Whether unsigned values are refused.
    pub verify_required: bool,
    /// The entries held for this platform, when asked for.
    pub entries: Option<Vec<RemoteEntry>>,
}

/// One entry on the remote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteEntry {
    /// The result key.
    pub key: String,
    /// Bytes of its packed value.
    pub bytes: u64,
    /// Seconds until it expires; `None`: never, or (S3) as the bucket's lifecycle
    /// rules say.
    pub ttl_secs: Option<u64>,
    /// When it was written (S3's `LastModified`), where the remote says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}
