//! AWS Signature Version 4, header-based, for S3 (path-style requests): the
//! `Authorization` header of one request, from its method, path, query, the headers it
//! signs and the SHA-256 of its payload. Pure functions over strings, tested against
//! the examples AWS publishes; the S3 tier ([`super::s3`]) adds the headers and sends.
//!
//! The steps (AWS's "Signature Version 4 signing process"):
//!
//! 1. the canonical request: method, the URI-encoded path, the sorted and encoded
//!    query, the signed headers (lower-case names, trimmed values, sorted), their names
//!    joined by `;`, the payload's SHA-256 in hex;
//! 2. the string to sign: `AWS4-HMAC-SHA256`, the time (`YYYYMMDDTHHMMSSZ`), the scope
//!    (`date/region/s3/aws4_request`) and the canonical request's SHA-256;
//! 3. the signing key: HMAC-SHA256 of the date, region, service and `aws4_request`,
//!    chained from `AWS4` + the secret key; the signature is the HMAC of the string to
//!    sign under it.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SHA-256 of the empty payload (GET, HEAD, DELETE).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Access keys, from the environment or the shared credentials file. Never printed:
/// `Debug` shows the access key id's first four characters only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.access_key.chars().take(4).collect();
        write!(f, "Credentials({shown}…, secret ***)")
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The SHA-256 of `data`, in hex (`x-amz-content-sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// URI-encodes `s` as SigV4 asks: every byte but `A-Za-z0-9-._~` as `%XX`, and `/`
/// too unless `keep_slash` (paths keep theirs).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string, encoded and sorted as the canonical request has it (and as it
/// is sent: the same string then signs and addresses the request).
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `(YYYYMMDDTHHMMSSZ, YYYYMMDD)` of `t`, UTC.
pub fn amz_date(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    let time = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    (time, date)
}

/// One request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The path, not yet encoded (`/bucket/key`).
    pub path: &'a str,
    /// The query, as (name, value) pairs, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// The headers to sign, `host` and the `x-amz-*` ones among them (names in any
    /// case).
    pub headers: &'a [(&'a str, &'a str)],
    /// The payload's SHA-256, hex (the same as `x-amz-content-sha256`).
    pub payload_sha256: &'a str,
    /// `x-amz-date`.
    pub amz_date: &'a str,
    /// The region (`us-east-1`).
    pub region: &'a str,
}

/// The canonical request (step 1) and the signed header names.
pub fn canonical_request(r: &Request<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    (
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            r.method,
            uri_encode(r.path, true),
            canonical_query(r.query),
            canonical_headers,
            signed,
            r.payload_sha256
        ),
        signed,
    )
}

/// The `Authorization` header of `r` under `creds`.
pub fn authorization(r: &Request<'_>, creds: &Credentials) -> String {
    let (canonical, signed) = canonical_request(r);
    let date = &r.amz_date[..8.min(r.amz_date.len())];
    let scope = format!("{date}/{}/s3/aws4_request", r.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        r.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac(
        format!("AWS4{}", creds.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [r.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        // AWS's documented example keys (not a secret).
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// S3's "Example: GET Object" (Authenticating Requests: Using the Authorization
    /// Header, sig-v4-header-based-auth).
    #[test]
    fn aws_get_object_example() {
        let r = Request {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
        };
        let (canonical, _) = canonical_request(&r);
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&r, &example_creds()),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// S3's "Example: GET Bucket (List Objects)": the query is sorted and encoded.
    #[test]
    fn aws_list_objects_example() {
        let r = Request {
            method: "GET",
            path: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            payload_sha256: EMPTY_SHA256,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
        };
        assert!(authorization(&r, &example_creds()).ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    #[test]
    fn dates_and_encoding() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600); // 2013-05-24
        assert_eq!(amz_date(t).0, "20130524T000000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_827_696); // 2000-02-29 12:34:56
        assert_eq!(amz_date(t), ("20000229T123456Z".into(), "20000229".into()));
        assert_eq!(uri_encode("a b/c+d~", true), "a%20b/c%2Bd~");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(canonical_query(&[("uploads", "")]), "uploads=");
        assert!(!format!("{:?}", example_creds()).contains("EXAMPLEKEY"));
    }
}
