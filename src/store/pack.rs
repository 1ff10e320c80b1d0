//! One entry as one value, for the remote tier and for bundles: its `entry.json` and its
//! files, framed, compressed with zstd, and optionally signed.
//!
//! ```text
//! "XCE1"  flags:u8  [mac: 32 bytes, when flags & 1]  zstd( frame )
//! frame = meta_len:u32le  entry.json  count:u32le  { name_len:u16le name  len:u64le bytes }*
//! ```
//!
//! The MAC is blake3 in keyed mode, under a key derived from the signing secret, over
//! the compressed frame (which holds the entry's key, its key material and its artifact's
//! hash): whoever lacks the secret cannot make a value that verifies. Decoding checks
//! the framing and sizes only; what the entry claims is checked by
//! [`super::Store::import_result`] before anything is published.

use std::io::Read;

/// The magic and version of a packed entry.
pub const MAGIC: &[u8; 4] = b"XCE1";

/// Largest value decoded (after decompression): far above any kernel library, and a
/// bound on what a lying remote can make a reader allocate.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// A signing key, derived from a secret (the contents of `remote_sign_key`).
#[derive(Clone)]
pub struct SignKey([u8; 32]);

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignKey(…)")
    }
}

impl SignKey {
    /// The key for `secret` (any bytes; surrounding whitespace ignored).
    pub fn from_secret(secret: &[u8]) -> SignKey {
        let s = secret.trim_ascii();
        SignKey(blake3::derive_key("xcache remote signing v1", s))
    }

    /// The MAC of `body` (bundles sign their index with it, under a prefix of their own).
    pub(crate) fn mac(&self, body: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, body).as_bytes()
    }
}

/// An entry's metadata and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The bytes of its `entry.json`.
    pub meta: Vec<u8>,
    /// Its files (artifact, source, extra inputs), by plain name.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Not a packed entry, or damaged.
    Malformed(String),
    /// Signatures are required and it has none.
    Unsigned,
    /// Its signature does not verify under the key.
    BadSignature,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Malformed(why) => write!(f, "not a valid packed entry ({why})"),
            Reject::Unsigned => f.write_str("unsigned, and signatures are required"),
            Reject::BadSignature => f.write_str("its signature does not verify"),
        }
    }
}

impl Packed {
    /// The value: framed, compressed, signed when `sign` is given.
    pub fn encode(&self, sign: Option<&SignKey>) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        frame.extend_from_slice(&self.meta);
        frame.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for (name, bytes) in &self.files {
            frame.extend_from_slice(&(name.len() as u16).to_le_bytes());
            frame.extend_from_slice(name.as_bytes());
            frame.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            frame.extend_from_slice(bytes);
        }
        let body = zstd::bulk::compress(&frame, 3).expect("compressing into memory");
        let mut out = Vec::with_capacity(body.len() + 37);
        out.extend_from_slice(MAGIC);
        match sign {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(&k.mac(&body));
            }
            None => out.push(0),
        }
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a value, checking its signature with `sign` when it has one, and
    /// refusing an unsigned one when `require_signature`.
    pub fn decode(
        bytes: &[u8],
        sign: Option<&SignKey>,
        require_signature: bool,
    ) -> Result<Packed, Reject> {
        let bad = |why: &str| Reject::Malformed(why.to_string());
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(bad("no XCE1 header"));
        }
        let signed = match bytes[4] {
            0 => false,
            1 => true,
            _ => return Err(bad("unknown flags")),
        };
        let body = if signed {
            let mac: [u8; 32] = bytes
                .get(5..37)
                .ok_or_else(|| bad("truncated signature"))?
                .try_into()
                .expect("32 bytes");
            let body = &bytes[37..];
            match sign {
                Some(k) if blake3::Hash::from(k.mac(body)) != blake3::Hash::from(mac) => {
                    return Err(Reject::BadSignature)
                }
                Some(_) => {}
                None if require_signature => return Err(Reject::BadSignature),
                None => {}
            }
            body
        } else {
            if require_signature {
                return Err(Reject::Unsigned);
            }
            &bytes[5..]
        };
        // The size the frame declares (written by `encode`): one allocation of exactly
        // that, in one call, where a stream would grow and copy its buffer; a frame
        // that does not declare it (a foreign writer) is streamed, bounded alike.
        let frame = match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(n)) if n > MAX_UNPACKED => return Err(bad("larger than 1 GiB unpacked")),
            Ok(Some(n)) => {
                let frame =
                    zstd::bulk::decompress(body, n as usize).map_err(|e| bad(&e.to_string()))?;
                if frame.len() as u64 != n {
                    return Err(bad("shorter than the size it declares"));
                }
                frame
            }
            _ => {
                let mut frame = Vec::new();
                zstd::stream::read::Decoder::new(body)
                    .map_err(|e| bad(&e.to_string()))?
                    .take(MAX_UNPACKED + 1)
                    .read_to_end(&mut frame)
                    .map_err(|e| bad(&e.to_string()))?;
                if frame.len() as u64 > MAX_UNPACKED {
                    return Err(bad("larger than 1 GiB unpacked"));
                }
                frame
            }
        };
        let mut r = Reader(&frame);
        let meta_len = r.u32()? as usize;
        let meta = r.take(meta_len)?.to_vec();
        let count = r.u32()?;
        let mut files = Vec::new();
        for _ in 0..count {
            let n = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(n)?)
                .map_err(|_| bad("a file name that is not UTF-8"))?
                .to_string();
            let len = r.u64()?;
            let len = usize::try_from(len).map_err(|_| bad("a file too large"))?;
            files.push((name, r.take(len)?.to_vec()));
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Packed { meta, files })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if self.0.len() < n {
            return Err(Reject::Malformed("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Reject> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, Reject> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Reject> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packed {
        Packed {
            meta: br#"{"key":"ab"}"#.to_vec(),
            files: vec![
                ("lib.so".into(), vec![7u8; 10_000]),
                ("source.c".into(), b"int x;".to_vec()),
            ],
        }
    }

    #[test]
    fn round_trips_signed_and_unsigned() {
        let k = SignKey::from_secret(b"s3cret\n");
        let p = sample();
        assert_eq!(Packed::decode(&p.encode(None), None, false).unwrap(), p);
        assert_eq!(
            Packed::decode(&p.encode(Some(&k)), Some(&k), true).unwrap(),
            p
        );
        // A signed value read by someone without the key, signatures not required.
        assert_eq!(Packed::decode(&p.encode(Some(&k)), None, false).unwrap(), p);
    }

    #[test]
    fn signatures_are_required_when_asked_and_never_forged() {
        let k = SignKey::from_secret(b"s3cret");
        let other = SignKey::from_secret(b"guess");
        let p = sample();
        assert_eq!(
            Packed::decode(&p.encode(None), Some(&k), true),
            Err(Reject::Unsigned)
        );
        assert_eq!(
            Packed::decode(&p.encode(Some(&other)), Some(&k), true),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            Packed::decode(&p.encode(Some(&other)), Some(&k), false),
            Err(Reject::BadSignature),
            "a wrong signature is refused even where none is required"
        );
        // Any flipped byte of a signed value fails.
        let v = p.encode(Some(&k));
        for i in [0, 4, 10, 40, v.len() / 2, v.len() - 1] {
            let mut b = v.clone();
            b[i] ^= 0x10;
            assert!(Packed::decode(&b, Some(&k), true).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn damage_is_refused_not_panicked_on() {
        let v = sample().encode(None);
        for n in [0, 3, 5, 6, v.len() / 2, v.len() - 1] {
            assert!(
                Packed::decode(&v[..n], None, false).is_err(),
                "truncated at {n}"
            );
        }
        assert!(Packed::decode(b"hello world", None, false).is_err());
        // A frame that claims more than it holds.
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut v = b"XCE1\0".to_vec();
        v.extend_from_slice(&zstd::bulk::compress(&frame, 1).unwrap());
        assert!(Packed::decode(&v, None, false).is_err());
    }
}
