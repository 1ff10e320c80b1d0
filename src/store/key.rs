//! Keys: blake3 over a canonical, versioned encoding of everything that changes the
//! compiled output.
//!
//! The encoding is deliberately not serde: a field added to a struct must never change
//! existing keys by accident. It is a sequence of `(tag byte, value)` pairs in a fixed
//! order, after the magic `xcache-key\0` and [`KEY_ENCODING`]; strings are a u64
//! little-endian length then bytes; lists are a u64 count then items; an absent option
//! is byte 0, a present one byte 1 then the value. Changing any of this means bumping
//! [`KEY_ENCODING`]; the golden test below fails otherwise.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Version of the key encoding. Part of every key.
pub const KEY_ENCODING: u32 = 1;

/// A cache key: 32 bytes of blake3, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

impl Key {
    /// The key as hex.
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
        String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
    }

    /// The fan-out directory name: the first two hex digits.
    pub fn fan(&self) -> String {
        format!("{:02x}", self.0[0])
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key made of a digest computed elsewhere (a blake3 hash).
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The all-zero key, for libraries loaded outside the cache (probes).
    pub fn default_probe() -> Key {
        Key([0; 32])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.hex()[..16])
    }
}

impl FromStr for Key {
    type Err = String;

    fn from_str(s: &str) -> Result<Key, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "a key has 64 hex digits, {s:?} has {}",
                bytes.len()
            ));
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0xff,
        };
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (h, l) = (hex(pair[0]), hex(pair[1]));
            bad |= (h | l) & 0xf0;
            *o = h << 4 | l;
        }
        if bad != 0 {
            return Err(format!("{s:?} is not lowercase hex"));
        }
        Ok(Key(out))
    }
}

/// The compiler that produced an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    /// Absolute path of the compiler binary (symlinks resolved).
    pub path: String,
    /// What `compiler --version` printed.
    pub version: String,
    /// Identity of the binary: `size=N,mtime=S.NS` or `blake3=HEX`.
    pub binary: String,
}

/// What the code was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Target triple (`x86_64-unknown-linux-gnu`) or GPU arch (`sm_90`).
    pub triple: String,
    /// The host CPU's model and features, present when a flag such as `-march=native`
    /// makes the output depend on them.
    pub cpu: Option<String>,
}

/// An explicit extra input (a header), by name and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraInput {
    /// File name as the source includes it.
    pub name: String,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

/// The template an entry was rendered from: name, hash of its text, and the
/// parameters in canonical form, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Qualified name (`c/elemwise`).
    pub name: String,
    /// blake3 of the template's text, hex.
    pub blake3: String,
    /// (name, canonical value) pairs.
    pub params: Vec<(String, String)>,
}

impl TemplateRef {
    /// `elemwise(arity=3, dtype=float32, expr=a * exp(b) + c)`: how `list` shows it.
    pub fn display(&self) -> String {
        let short = self.name.strip_prefix("c/").unwrap_or(&self.name);
        let ps: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{short}({})", ps.join(", "))
    }
}

/// Everything a key is derived from. Stored in `entry.json` so a miss can be explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMaterial {
    /// [`KEY_ENCODING`] at the time the key was made.
    pub encoding: u32,
    /// On-disk layout version.
    pub layout: u32,
    /// Source language: `c`, `c++` or `cuda`.
    pub language: String,
    /// blake3 of the rendered source, hex.
    pub source_blake3: String,
    /// The compiler.
    pub toolchain: Toolchain,
    /// Every compiler argument but the input and output paths, in order.
    pub flags: Vec<String>,
    /// The target.
    pub target: Target,
    /// Explicit extra inputs, in the order given.
    pub extra_inputs: Vec<ExtraInput>,
    /// Runtime tag of the embedding program, empty when none.
    pub runtime_tag: String,
    /// The template the source was rendered from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
}

struct Enc(blake3::Hasher);

impl Enc {
    fn tag(&mut self, t: u8) -> &mut Self {
        self.0.update(&[t]);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.update(s.as_bytes());
        self
    }
    fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => {
                self.0.update(&[0]);
            }
            Some(s) => {
                self.0.update(&[1]);
                self.str(s);
            }
        }
        self
    }
}

impl KeyMaterial {
    /// Derives the key. The `encoding` field itself is ignored: the current
    /// [`KEY_ENCODING`] is always what is hashed, so a stored material from an older
    /// encoding yields a different key and can never alias a new entry.
    pub fn key(&self) -> Key {
        let mut e = Enc(blake3::Hasher::new());
        e.0.update(b"xcache-key\0");
        e.u64(KEY_ENCODING as u64);
        e.tag(1).u64(self.layout as u64);
        e.tag(2).str(&self.language);
        e.tag(3).str(&self.source_blake3);
        e.tag(4)
            .str(&self.toolchain.path)
            .str(&self.toolchain.version)
            .str(&self.toolchain.binary);
        e.tag(5).u64(self.flags.len() as u64);
        for f in &self.flags {
            e.str(f);
        }
        e.tag(6)
            .str(&self.target.triple)
            .opt(self.target.cpu.as_deref());
        e.tag(7).u64(self.extra_inputs.len() as u64);
        for x in &self.extra_inputs {
            e.str(&x.name).str(&x.blake3);
        }
        e.tag(8).str(&self.runtime_tag);
        // Present only for template requests: keys of plain sources are unchanged.
        if let Some(t) = &self.template {
            e.tag(9)
                .str(&t.name)
                .str(&t.blake3)
                .u64(t.params.len() as u64);
            for (k, v) in &t.params {
                e.str(k).str(v);
            }
        }
        Key(*e.0.finalize().as_bytes())
    }

    /// What differs from `was` (an earlier request's material), field by field, with
    /// the old and new values in short form: why this request got another key.
    pub fn differences(&self, was: &KeyMaterial) -> Vec<Difference> {
        let mut d = Vec::new();
        let mut put = |field: &'static str, old: String, new: String| {
            if old != new {
                d.push(Difference {
                    field,
                    was: old,
                    now: new,
                })
            }
        };
        let short = |h: &str| h.get(..16).unwrap_or(h).to_string();
        let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
        put("layout", was.layout.to_string(), self.layout.to_string());
        put("language", was.language.clone(), self.language.clone());
        put(
            "source",
            short(&was.source_blake3),
            short(&self.source_blake3),
        );
        put(
            "compiler",
            was.toolchain.path.clone(),
            self.toolchain.path.clone(),
        );
        put(
            "compiler version",
            first_line(&was.toolchain.version),
            first_line(&self.toolchain.version),
        );
        put(
            "compiler binary",
            was.toolchain.binary.clone(),
            self.toolchain.binary.clone(),
        );
        if was.flags != self.flags {
            let gone: Vec<&str> = was
                .flags
                .iter()
                .filter(|f| !self.flags.contains(f))
                .map(String::as_str)
                .collect();
            let new: Vec<&str> = self
                .flags
                .iter()
                .filter(|f| !was.flags.contains(f))
                .map(String::as_str)
                .collect();
            if gone.is_empty() && new.is_empty() {
                put("flags (order)", was.flags.join(" "), self.flags.join(" "));
            } else {
                put("flags", gone.join(" "), new.join(" "));
            }
        }
        put(
            "target",
            was.target.triple.clone(),
            self.target.triple.clone(),
        );
        put(
            "target cpu",
            was.target.cpu.clone().unwrap_or_default(),
            self.target.cpu.clone().unwrap_or_default(),
        );
        let inputs = |m: &KeyMaterial| {
            m.extra_inputs
                .iter()
                .map(|x| format!("{}:{}", x.name, short(&x.blake3)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        put("extra inputs", inputs(was), inputs(self));
        put(
            "runtime tag",
            was.runtime_tag.clone(),
            self.runtime_tag.clone(),
        );
        let template =
            |m: &KeyMaterial| m.template.as_ref().map(|t| t.display()).unwrap_or_default();
        put("template", template(was), template(self));
        d
    }

    /// Names the fields that differ from `other`: why two requests got different keys.
    pub fn diff(&self, other: &KeyMaterial) -> Vec<&'static str> {
        let mut d = Vec::new();
        let mut check = |name, same: bool| {
            if !same {
                d.push(name)
            }
        };
        check("layout", self.layout == other.layout);
        check("language", self.language == other.language);
        check("source", self.source_blake3 == other.source_blake3);
        check("compiler path", self.toolchain.path == other.toolchain.path);
        check(
            "compiler version",
            self.toolchain.version == other.toolchain.version,
        );
        check(
            "compiler binary",
            self.toolchain.binary == other.toolchain.binary,
        );
        check("flags", self.flags == other.flags);
        check("target", self.target == other.target);
        check("extra inputs", self.extra_inputs == other.extra_inputs);
        check("runtime tag", self.runtime_tag == other.runtime_tag);
        check("template", self.template == other.template);
        d
    }
}

/// One ingredient of a key that differs between two requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Which (`flags`, `source`, `compiler version`, …).
    pub field: &'static str,
    /// Its value in the earlier request (for flags: the ones it had that are gone).
    pub was: String,
    /// Its value now (for flags: the ones added).
    pub now: String,
}

/// The request key of an artifact group: the compiledir it lives in (its platform,
/// runtime tag and layout), the producer, and the producer's own key material. Its one
/// result is keyed by [`result_key`] of this and no headers.
pub fn group_key(compiledir: &str, producer: &str, material: &str) -> Key {
    let mut e = Enc(blake3::Hasher::new());
    e.0.update(b"xcache-group\0");
    e.u64(KEY_ENCODING as u64);
    e.str(compiledir).str(producer).str(material);
    Key(*e.0.finalize().as_bytes())
}

/// The key of a dependency-tracked result: the request key and the (path, blake3) of
/// every header the compiler read, in the order it reported them.
pub fn result_key(request: &Key, headers: &[(&str, &str)]) -> Key {
    let mut e = Enc(blake3::Hasher::new());
    e.0.update(b"xcache-result\0");
    e.0.update(request.as_bytes());
    e.u64(headers.len() as u64);
    for (path, hash) in headers {
        e.str(path).str(hash);
    }
    Key(*e.0.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyMaterial {
        KeyMaterial {
            encoding: KEY_ENCODING,
            layout: 1,
            language: "c".into(),
            source_blake3: blake3::hash(b"int f(void){return 1;}").to_hex().to_string(),
            toolchain: Toolchain {
                path: "/usr/bin/x86_64-linux-gnu-gcc-12".into(),
                version: "gcc (Debian 12.2.0-14) 12.2.0".into(),
                binary: "size=1000,mtime=1700000000.0".into(),
            },
            flags: vec!["-O3".into(), "-fPIC".into(), "-shared".into()],
            target: Target {
                triple: "x86_64-unknown-linux-gnu".into(),
                cpu: None,
            },
            extra_inputs: vec![],
            runtime_tag: String::new(),
            template: None,
        }
    }

    /// If this fails, the key encoding changed: every key on every user's disk would
    /// silently stop matching. Bump KEY_ENCODING and update the value on purpose.
    #[test]
    fn golden_key() {
        assert_eq!(
            sample().key().hex(),
            "34f0dac9228335534c02bf51c5d552c06c5508b7e6f0d0bad36e811d489e68bb"
        );
        let mut m = sample();
        m.target.cpu = Some("GenuineIntel 6/85 avx2,avx512f".into());
        m.extra_inputs.push(ExtraInput {
            name: "defs.h".into(),
            blake3: blake3::hash(b"#define N 4").to_hex().to_string(),
        });
        m.runtime_tag = "cpython-3.11".into();
        let with_runtime = m.key();
        m.template = Some(TemplateRef {
            name: "c/elemwise".into(),
            blake3: blake3::hash(b"template").to_hex().to_string(),
            params: vec![("dtype".into(), "float32".into())],
        });
        assert_eq!(
            m.key().hex(),
            "c19c65b8fc0bd1ac2cb1edb045bbe5233457b47737e7153363746fc82f19f66d"
        );
        m.template = None;
        assert_eq!(with_runtime, m.key());
        assert_eq!(
            m.key().hex(),
            "cba344054a2927e5b444c9eba748c46d77fa1f0137bda8a5f504f027d9f5ead1"
        );
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = sample();
        let k = base.key();
        type Mutation = Box<dyn Fn(&mut KeyMaterial)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|m| m.layout = 2),
            Box::new(|m| m.language = "c++".into()),
            Box::new(|m| m.source_blake3 = "00".into()),
            Box::new(|m| m.toolchain.path = "/usr/bin/clang".into()),
            Box::new(|m| m.toolchain.version.push('x')),
            Box::new(|m| m.toolchain.binary = "size=1001,mtime=1700000000.0".into()),
            Box::new(|m| m.flags.swap(0, 1)),
            Box::new(|m| m.flags.push("-g".into())),
            Box::new(|m| m.target.triple = "aarch64-unknown-linux-gnu".into()),
            Box::new(|m| m.target.cpu = Some(String::new())),
            Box::new(|m| {
                m.extra_inputs.push(ExtraInput {
                    name: "a.h".into(),
                    blake3: "00".into(),
                })
            }),
            Box::new(|m| m.runtime_tag = "cpython-3.12".into()),
            Box::new(|m| {
                m.template = Some(TemplateRef {
                    name: "c/x".into(),
                    blake3: String::new(),
                    params: vec![],
                })
            }),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut m = base.clone();
            mutate(&mut m);
            assert_ne!(m.key(), k, "mutation {i} did not change the key");
            assert!(!m.diff(&base).is_empty(), "mutation {i} not explained");
        }
    }

    #[test]
    fn length_prefixes_prevent_ambiguity() {
        let mut a = sample();
        a.flags = vec!["-O".into(), "3".into()];
        let mut b = sample();
        b.flags = vec!["-O3".into()];
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn hex_round_trip() {
        let k = sample().key();
        assert_eq!(k.hex().parse::<Key>().unwrap(), k);
        assert_eq!(k.fan(), &k.hex()[..2]);
        assert!("zz".parse::<Key>().is_err());
        assert!("G".repeat(64).parse::<Key>().is_err());
    }
}
