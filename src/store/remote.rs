//! What the store asks of a remote tier (a shared cache beyond this machine; Redis is in
//! [`crate::remote`]). The store stays the only writer of its directory: a remote only
//! lists results and hands over packed values ([`super::pack`]), which the store checks
//! and publishes through [`super::Store::import_result`], and it receives what this
//! machine compiled. Every method is best effort: a remote that fails, stalls or lies
//! costs at most its timeouts, and never fails a request.

use super::key::Key;
use super::pack::Packed;

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// This machine's cache (or this request's own compile).
    Local,
    /// Fetched from the remote tier on a local miss.
    Remote,
}

/// A remote tier, as the store uses it.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// The results the remote knows for `request`, most recent first: each result key
    /// with the (path, blake3) of the headers it was built from. Empty on any failure.
    fn results(&self, request: &Key) -> Vec<(Key, Vec<(String, String)>)>;

    /// The value of the result `key`, decoded (and its signature checked); `None` on a
    /// miss or any failure.
    fn fetch(&self, key: &Key) -> Option<Packed>;

    /// A fetched value failed the store's checks (`why`): count it, say it once, and
    /// delete it from the remote where this machine may write.
    fn refused(&self, request: &Key, key: &Key, why: &str);

    /// Nothing the remote holds for `request` could be used: counted as a remote miss.
    fn missed(&self, request: &Key);

    /// Uploads a result compiled here, with the headers it was built from. Bounded by
    /// the remote's timeout; failures are counted, never returned.
    fn upload(&self, request: &Key, key: &Key, headers: &[(String, String)], value: &Packed);
}
