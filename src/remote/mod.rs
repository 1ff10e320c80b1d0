//! Remote tiers: a cache shared by a team's machines, a CI fleet or a cluster's nodes,
//! beyond each one's `~/.cache`. Redis first ([`redis`]). The store decides what to take
//! and publishes it (see [`crate::store::remote`] and
//! [`crate::store::Store::import_result`]); a tier only moves bytes, within one deadline per request,
//! a circuit breaker ([`breaker`]) and a counter per kind of failure, and never fails a
//! request. `docs/REMOTE.md` says how to set one up, its security model and how it fails.

pub mod breaker;
pub mod bundle;
pub mod redis;
pub mod resp;

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

/// The Redis tier the configuration asks for (for the compiledir named `namespace`), or
/// `None` when there is none or it is off.
pub fn redis_from_config(
    config: &Config,
    namespace: &str,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
) -> Result<Option<redis::RedisTier>> {
    let Some(url) = &config.remote else {
        return Ok(None);
    };
    if config.remote_mode == RemoteMode::Off {
        return Ok(None);
    }
    let sign = sign_key(config)?;
    if config.remote_verify_required() && sign.is_none() {
        return Err(Error::Config(
            "remote_verify = required needs remote_sign_key: without the key no signature can be checked. Fix: set remote_sign_key to the file holding the secret CI signs with".into(),
        ));
    }
    let settings = redis::RedisSettings {
        url: url.clone(),
        password: std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        connect_timeout: config.remote_connect_timeout,
        budget: config.remote_timeout,
        ttl: Some(config.remote_ttl),
        mode: config.remote_mode,
        sign,
        verify_required: config.remote_verify_required(),
        max_entry: config.entry_limit(),
        namespace: namespace.to_string(),
    };
    Ok(Some(redis::RedisTier::new(settings, clock, stats)?))
}

/// [`redis_from_config`], as the store's trait object.
pub fn from_config(
    config: &Config,
    namespace: &str,
    clock: Arc<dyn Clock>,
    stats: Arc<Recorder>,
) -> Result<Option<Arc<dyn Remote>>> {
    Ok(redis_from_config(config, namespace, clock, stats)?.map(|t| Arc::new(t) as Arc<dyn Remote>))
}
