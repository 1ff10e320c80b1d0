//! Result records, the same for every tier: what a remote knows of one result built
//! under a request — its key, when it was made, the (path, blake3) of the headers it
//! was built from and, when the writer holds the signing key, a MAC over all of that.
//! Redis keeps them as the fields of the hash `m:<request>`; S3 as the members of the
//! JSON object `m/<request>`. Either way a record is authenticated ([`check_field`])
//! before the store reads any path it names.

use serde::{Deserialize, Serialize};

use crate::store::key::Key;
use crate::store::pack::SignKey;
use crate::store::remote::RemoteResult;

/// Results kept per request key on the remote (the oldest go).
pub const MAX_RESULTS: usize = 16;

/// Most headers one result record may name (far above any real translation unit).
pub const MAX_HEADERS: usize = 16_384;

/// What a result record's MAC is taken over, first: never the start of a packed value
/// (a zstd frame) or of a bundle's index, so that no MAC can stand for another.
const RESULT_MAC_CONTEXT: &[u8] = b"xcache remote result v1\n";

/// One result record, as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultField {
    pub(crate) created: u64,
    pub(crate) headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mac: Option<String>,
}

impl ResultField {
    /// The record of `key` under `request`, made now (`created`), with its MAC when
    /// `sign` is set.
    pub(crate) fn new(
        request: &Key,
        key: &Key,
        created: u64,
        headers: &[(String, String)],
        sign: Option<&SignKey>,
    ) -> ResultField {
        let mac = sign.map(|k| {
            blake3::Hash::from(k.mac(&result_mac_input(request, key, created, headers)))
                .to_hex()
                .to_string()
        });
        ResultField {
            created,
            headers: headers.to_vec(),
            mac,
        }
    }
}

/// The bytes a result record's MAC covers.
pub(crate) fn result_mac_input(
    request: &Key,
    key: &Key,
    created: u64,
    headers: &[(String, String)],
) -> Vec<u8> {
    let mut b = RESULT_MAC_CONTEXT.to_vec();
    b.extend_from_slice(request.as_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&created.to_le_bytes());
    b.extend_from_slice(&(headers.len() as u64).to_le_bytes());
    for (p, h) in headers {
        for s in [p, h] {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// Why a result record was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordReject {
    /// Not a record of this format.
    Malformed,
    /// Signatures are required and it has none.
    Unsigned,
    /// Its MAC does not verify.
    BadSignature,
}

impl RecordReject {
    /// In words, for a warning.
    pub fn describe(self) -> &'static str {
        match self {
            RecordReject::Malformed => "malformed",
            RecordReject::Unsigned => "unsigned, and signatures are required",
            RecordReject::BadSignature => "its signature does not verify",
        }
    }
}

/// Checks one result record (field `k`, value `v`) of `request`'s hash: its key, its
/// JSON, its size, and its MAC as the signing settings ask. Public for the fuzzer.
pub fn check_record(
    request: &Key,
    k: &[u8],
    v: &[u8],
    sign: Option<&SignKey>,
    required: bool,
) -> Result<(u64, RemoteResult), RecordReject> {
    let f: ResultField = serde_json::from_slice(v).map_err(|_| RecordReject::Malformed)?;
    check_field(request, k, f, sign, required)
}

/// [`check_record`] of a record already parsed.
pub(crate) fn check_field(
    request: &Key,
    k: &[u8],
    f: ResultField,
    sign: Option<&SignKey>,
    required: bool,
) -> Result<(u64, RemoteResult), RecordReject> {
    let key: Key = std::str::from_utf8(k)
        .ok()
        .and_then(|k| k.parse().ok())
        .ok_or(RecordReject::Malformed)?;
    if f.headers.len() > MAX_HEADERS {
        return Err(RecordReject::Malformed);
    }
    match (sign, &f.mac) {
        (Some(sk), Some(mac)) => {
            let want =
                blake3::Hash::from(sk.mac(&result_mac_input(request, &key, f.created, &f.headers)));
            let got = blake3::Hash::from_hex(mac).map_err(|_| RecordReject::BadSignature)?;
            if want != got {
                return Err(RecordReject::BadSignature);
            }
        }
        (Some(_), None) if required => return Err(RecordReject::Unsigned),
        (None, Some(_)) if required => return Err(RecordReject::BadSignature),
        _ => {}
    }
    Ok((
        f.created,
        RemoteResult {
            key,
            headers: f.headers,
        },
    ))
}
