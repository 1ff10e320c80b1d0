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
//!
//! A value comes from elsewhere, and a few kilobytes of zstd can declare gigabytes: the
//! reader gives [`Packed::decode`] the most it may unpack (the `max_entry_size` setting,
//! [`crate::Config::entry_limit`]). Decoding streams the frame and checks each size
//! it declares (the frame's content size, then `meta_len` and every file's `len`)
//! against what is left of that cap *before* allocating for it, so a value never makes
//! the reader hold more than the cap, and a bomb is refused after reading its headers.

use std::io::Read;

/// The magic and version of a packed entry.
pub const MAGIC: &[u8; 4] = b"XCE1";

/// The ceiling of any cap given to [`Packed::decode`]: far above any kernel library,
/// and a bound on what a lying remote can make a reader allocate whatever the settings.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// The most a packed value may weigh when it unpacks to at most `unpacked`: its header
/// and MAC, and what zstd adds to data it cannot compress. A larger value unpacks to
/// more, and is refused before it is read whole.
pub fn packed_bound(unpacked: u64) -> u64 {
    unpacked + unpacked / 128 + (64 << 10)
}

/// Most files one value may hold: an entry has its artifact, its source and its extra
/// inputs; a count beyond this is a value made to cost bookkeeping, not an entry.
pub const MAX_FILES: u32 = 65_536;

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
    /// It unpacks to more than the cap the reader gave: refused before that much was
    /// read or allocated.
    TooLarge {
        /// What it unpacks to at least (declared, or reached when it was stopped).
        at_least: u64,
        /// The cap.
        max: u64,
    },
    /// Signatures are required and it has none.
    Unsigned,
    /// Its signature does not verify under the key.
    BadSignature,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Malformed(why) => write!(f, "not a valid packed entry ({why})"),
            Reject::TooLarge { at_least, max } => write!(
                f,
                "it unpacks to at least {at_least} bytes, more than the {max} allowed"
            ),
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
    /// refusing an unsigned one when `require_signature`. At most `max_unpacked` bytes
    /// (and never more than [`MAX_UNPACKED`]) are unpacked: a value that declares or
    /// holds more is [`Reject::TooLarge`], refused before that much is allocated.
    pub fn decode(
        bytes: &[u8],
        sign: Option<&SignKey>,
        require_signature: bool,
        max_unpacked: u64,
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
        let max = max_unpacked.min(MAX_UNPACKED);
        // The size the frame declares (`encode` writes it): a bomb says what it is
        // before anything is decompressed. A frame that declares none is held to the
        // same cap as it streams.
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(body) {
            if n > max {
                return Err(Reject::TooLarge { at_least: n, max });
            }
        }
        let decoder =
            zstd::stream::read::Decoder::with_buffer(body).map_err(|e| bad(&e.to_string()))?;
        let mut r = Frame {
            decoder,
            read: 0,
            max,
        };
        let meta_len = u64::from(r.u32()?);
        let meta = r.take(meta_len)?;
        let count = r.u32()?;
        if count > MAX_FILES {
            return Err(bad(&format!("{count} files (at most {MAX_FILES})")));
        }
        let mut files = Vec::new();
        for _ in 0..count {
            let n = u64::from(r.u16()?);
            let name =
                String::from_utf8(r.take(n)?).map_err(|_| bad("a file name that is not UTF-8"))?;
            let len = r.u64()?;
            files.push((name, r.take(len)?));
        }
        if r.at_end()? {
            Ok(Packed { meta, files })
        } else {
            Err(bad("trailing bytes"))
        }
    }

    /// Bytes it unpacks to: its metadata and its files (what a store writes of it).
    pub fn unpacked_size(&self) -> u64 {
        self.meta.len() as u64 + self.files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    }
}

/// The decompressed frame, read as it streams: each `take` is checked against what is
/// left of the cap before anything is allocated for it.
struct Frame<'a> {
    decoder: zstd::stream::read::Decoder<'a, &'a [u8]>,
    /// Bytes read so far.
    read: u64,
    /// The cap.
    max: u64,
}

impl Frame<'_> {
    fn take(&mut self, n: u64) -> Result<Vec<u8>, Reject> {
        let at_least = self.read.saturating_add(n);
        if at_least > self.max {
            return Err(Reject::TooLarge {
                at_least,
                max: self.max,
            });
        }
        // Within the cap: the capacity is what the frame declares, and pages are
        // only touched as the bytes arrive.
        let mut v = Vec::with_capacity(n as usize);
        (&mut self.decoder)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| Reject::Malformed(e.to_string()))?;
        if (v.len() as u64) < n {
            return Err(Reject::Malformed("truncated".into()));
        }
        self.read = at_least;
        Ok(v)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Reject> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }

    fn u16(&mut self) -> Result<u16, Reject> {
        Ok(u16::from_le_bytes(self.fixed()?))
    }

    fn u32(&mut self) -> Result<u32, Reject> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn u64(&mut self) -> Result<u64, Reject> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    /// True when the frame ends here (reading on also checks the frame's declared
    /// size and its end).
    fn at_end(&mut self) -> Result<bool, Reject> {
        let mut one = [0u8; 1];
        loop {
            match self.decoder.read(&mut one) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Reject::Malformed(e.to_string())),
            }
        }
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
        assert_eq!(
            Packed::decode(&p.encode(None), None, false, MAX_UNPACKED).unwrap(),
            p
        );
        assert_eq!(
            Packed::decode(&p.encode(Some(&k)), Some(&k), true, MAX_UNPACKED).unwrap(),
            p
        );
        // A signed value read by someone without the key, signatures not required.
        assert_eq!(
            Packed::decode(&p.encode(Some(&k)), None, false, MAX_UNPACKED).unwrap(),
            p
        );
    }

    #[test]
    fn signatures_are_required_when_asked_and_never_forged() {
        let k = SignKey::from_secret(b"s3cret");
        let other = SignKey::from_secret(b"guess");
        let p = sample();
        assert_eq!(
            Packed::decode(&p.encode(None), Some(&k), true, MAX_UNPACKED),
            Err(Reject::Unsigned)
        );
        assert_eq!(
            Packed::decode(&p.encode(Some(&other)), Some(&k), true, MAX_UNPACKED),
            Err(Reject::BadSignature)
        );
        assert_eq!(
            Packed::decode(&p.encode(Some(&other)), Some(&k), false, MAX_UNPACKED),
            Err(Reject::BadSignature),
            "a wrong signature is refused even where none is required"
        );
        // Any flipped byte of a signed value fails.
        let v = p.encode(Some(&k));
        for i in [0, 4, 10, 40, v.len() / 2, v.len() - 1] {
            let mut b = v.clone();
            b[i] ^= 0x10;
            assert!(
                Packed::decode(&b, Some(&k), true, MAX_UNPACKED).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn damage_is_refused_not_panicked_on() {
        let v = sample().encode(None);
        for n in [0, 3, 5, 6, v.len() / 2, v.len() - 1] {
            assert!(
                Packed::decode(&v[..n], None, false, MAX_UNPACKED).is_err(),
                "truncated at {n}"
            );
        }
        assert!(Packed::decode(b"hello world", None, false, MAX_UNPACKED).is_err());
        // A frame that claims more than it holds.
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut v = b"XCE1\0".to_vec();
        v.extend_from_slice(&zstd::bulk::compress(&frame, 1).unwrap());
        assert!(Packed::decode(&v, None, false, MAX_UNPACKED).is_err());
    }

    /// A value as a bomb is built: a small frame whose sizes say more than it may hold.
    fn value_of(frame: &[u8], declare_size: bool) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        if declare_size {
            enc.set_pledged_src_size(Some(frame.len() as u64)).unwrap();
        }
        enc.include_contentsize(declare_size).unwrap();
        std::io::Write::write_all(&mut enc, frame).unwrap();
        let mut v = b"XCE1\0".to_vec();
        v.extend_from_slice(&enc.finish().unwrap());
        v
    }

    #[test]
    fn the_cap_is_the_callers_and_checked_before_allocating() {
        let p = sample();
        let size = p.unpacked_size();
        assert_eq!(size, 12 + 10_000 + 6);
        let v = p.encode(None);
        // Exactly the bytes it unpacks to (plus its framing) passes; less does not.
        let framing = 4 + 4 + 2 * (2 + 8) + "lib.so".len() as u64 + "source.c".len() as u64;
        assert_eq!(Packed::decode(&v, None, false, size + framing).unwrap(), p);
        match Packed::decode(&v, None, false, size) {
            Err(Reject::TooLarge { at_least, max }) => {
                assert_eq!((at_least, max), (size + framing, size))
            }
            other => panic!("{other:?}"),
        }
        // Never above the ceiling, whatever the caller asks.
        let mut frame = Vec::new();
        frame.extend_from_slice(&2u32.to_le_bytes());
        frame.extend_from_slice(b"{}");
        frame.extend_from_slice(&1u32.to_le_bytes());
        frame.extend_from_slice(&6u16.to_le_bytes());
        frame.extend_from_slice(b"lib.so");
        // A file that declares 4 GiB and holds a few bytes: refused at its length,
        // with or without a declared frame size.
        frame.extend_from_slice(&(4u64 << 30).to_le_bytes());
        frame.extend_from_slice(&[0u8; 64]);
        for declared in [true, false] {
            let e = Packed::decode(&value_of(&frame, declared), None, false, u64::MAX);
            assert!(
                matches!(
                    e,
                    Err(Reject::TooLarge {
                        max: MAX_UNPACKED,
                        ..
                    })
                ),
                "{e:?}"
            );
        }
        // A declared frame size above the cap is refused before decompressing.
        let big = Packed {
            meta: b"{}".to_vec(),
            files: vec![("lib.so".into(), vec![0u8; 1 << 20])],
        }
        .encode(None);
        assert!(big.len() < 1 << 12, "zeros compress: {}", big.len());
        match Packed::decode(&big, None, false, 1 << 16) {
            Err(Reject::TooLarge { at_least, max }) => {
                assert!(at_least > 1 << 20 && max == 1 << 16)
            }
            other => panic!("{other:?}"),
        }
        // A count of files beyond any entry.
        let mut frame = Vec::new();
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = Packed::decode(&value_of(&frame, false), None, false, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("files"), "{e}");
        // A frame that declares more than it holds.
        let mut frame = sample().encode(None);
        frame.truncate(frame.len() - 3);
        assert!(Packed::decode(&frame, None, false, MAX_UNPACKED).is_err());
    }
}
