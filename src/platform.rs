//! The platform string: what makes compiled code ABI-compatible, and the compiledir
//! name built from it.
//!
//! Fields: OS (`uname -s`), short kernel release (major.minor, as Theano's
//! `short_platform`), machine arch, libc and its version, an optional runtime tag given
//! by the embedding program, and the on-disk layout version. The name of a compiledir
//! is `compiledir_` followed by the `compiledir_format` setting rendered with those
//! fields; [`CompiledirFormat::parse_name`] turns a name back into its fields, which is
//! how `prune --stale` recognises old runtimes and kernels.
//!
//! Format syntax: `{field}` is replaced by the field's value; `[...]` is an optional
//! group, rendered only when every field inside it is non-empty; everything else is
//! literal and limited to `A-Z a-z 0-9 . _ + -`, so a name is always one safe path
//! component.

use std::ffi::CStr;
use std::fmt;

/// Version of the on-disk layout (directory structure and `entry.json` format).
/// Bump it when an older xcache could misread what a newer one writes.
pub const LAYOUT_VERSION: u32 = 3;

/// Prefix of every compiledir name; `purge` and `prune` only touch names with it.
pub const COMPILEDIR_PREFIX: &str = "compiledir_";

/// The fields of a platform string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    /// Operating system, as `uname -s` says (`Linux`).
    pub os: String,
    /// Short kernel release, major.minor (`6.1`).
    pub kernel: String,
    /// Machine architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// libc and its version (`glibc2.36`, `musl`).
    pub libc: String,
    /// Runtime tag of the embedding program (`cpython-3.11`), empty when none.
    pub runtime: String,
    /// On-disk layout version.
    pub layout: u32,
}

impl Platform {
    /// The platform this process runs on, with the given runtime tag.
    pub fn detect(runtime_tag: &str) -> Platform {
        // SAFETY: uname fills a zeroed struct of fixed-size NUL-terminated arrays.
        let uts = unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            if libc::uname(&mut u) != 0 {
                None
            } else {
                Some(u)
            }
        };
        let field = |f: &[libc::c_char]| -> String {
            // SAFETY: uname NUL-terminates each field within its array.
            unsafe { CStr::from_ptr(f.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        let (os, release, arch) = match &uts {
            Some(u) => (field(&u.sysname), field(&u.release), field(&u.machine)),
            None => (
                std::env::consts::OS.to_string(),
                String::new(),
                std::env::consts::ARCH.to_string(),
            ),
        };
        Platform {
            os: sanitize(&os, |c| c.is_ascii_alphanumeric()),
            kernel: short_kernel_release(&release),
            arch: sanitize(&arch, |c| c.is_ascii_alphanumeric() || c == '_'),
            libc: libc_version(),
            runtime: runtime_tag.to_string(),
            layout: LAYOUT_VERSION,
        }
    }

    fn get(&self, f: Field) -> String {
        match f {
            Field::Os => self.os.clone(),
            Field::Kernel => self.kernel.clone(),
            Field::Arch => self.arch.clone(),
            Field::Libc => self.libc.clone(),
            Field::Runtime => self.runtime.clone(),
            Field::Layout => self.layout.to_string(),
        }
    }
}

fn sanitize(s: &str, ok: impl Fn(char) -> bool) -> String {
    let out: String = s.chars().filter(|&c| ok(c)).collect();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// `6.1.0-18-amd64` → `6.1`; `5.15.153.1-microsoft-standard-WSL2` → `5.15`.
pub fn short_kernel_release(release: &str) -> String {
    let nums: Vec<&str> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .take_while(|s| !s.is_empty())
        .collect();
    if nums.is_empty() {
        "0".into()
    } else {
        nums.join(".")
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn libc_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
    format!(
        "glibc{}",
        sanitize(&v.to_string_lossy(), |c| c.is_ascii_digit() || c == '.')
    )
}

#[cfg(all(target_os = "linux", target_env = "musl"))]
fn libc_version() -> String {
    "musl".into()
}

#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
fn libc_version() -> String {
    "libc".into()
}

/// Checks a runtime tag: empty, or 1-64 characters of `A-Z a-z 0-9 . _ + -`.
pub fn check_runtime_tag(tag: &str) -> Result<(), String> {
    if tag.len() > 64 || !tag.chars().all(|c| Field::Runtime.allows(c)) {
        return Err(
            "a runtime tag of at most 64 characters from A-Z a-z 0-9 . _ + - (e.g. cpython-3.11)"
                .into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Os,
    Kernel,
    Arch,
    Libc,
    Runtime,
    Layout,
}

impl Field {
    const ALL: [(Field, &'static str); 6] = [
        (Field::Os, "os"),
        (Field::Kernel, "kernel"),
        (Field::Arch, "arch"),
        (Field::Libc, "libc"),
        (Field::Runtime, "runtime"),
        (Field::Layout, "layout"),
    ];

    fn allows(self, c: char) -> bool {
        match self {
            Field::Os => c.is_ascii_alphanumeric(),
            Field::Kernel => c.is_ascii_digit() || c == '.',
            Field::Arch => c.is_ascii_alphanumeric() || c == '_',
            Field::Libc => c.is_ascii_alphanumeric() || c == '.' || c == '_',
            Field::Runtime => c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'),
            Field::Layout => c.is_ascii_digit(),
        }
    }
}

/// Continuation of the backtracking name parser: the rest of the name and the fields
/// matched so far → whether the whole name matched.
type Cont<'a, 'k> = dyn FnMut(&'a str, &mut Vec<(Field, &'a str)>) -> bool + 'k;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(String),
    Field(Field),
    Optional(Vec<Token>),
}

/// A parsed `compiledir_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledirFormat {
    tokens: Vec<Token>,
}

impl CompiledirFormat {
    /// Parses a format. It must name `{os}`, `{arch}`, `{libc}`, `{runtime}` and
    /// `{layout}` (code for one of them must never load on another); `{kernel}` may be
    /// left out by people who share a cache across kernel updates.
    pub fn parse(fmt: &str) -> Result<CompiledirFormat, String> {
        fn parse_seq(
            chars: &mut std::iter::Peekable<std::str::Chars>,
            in_opt: bool,
        ) -> Result<Vec<Token>, String> {
            let mut out = Vec::new();
            let mut lit = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '{' => {
                        let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                        let f = Field::ALL
                            .iter()
                            .find(|(_, n)| *n == name)
                            .ok_or_else(|| format!("unknown field {{{name}}}"))?
                            .0;
                        if !lit.is_empty() {
                            out.push(Token::Lit(std::mem::take(&mut lit)));
                        }
                        if matches!(out.last(), Some(Token::Field(_))) {
                            return Err("two fields must be separated by a literal".into());
                        }
                        out.push(Token::Field(f));
                    }
                    '[' if !in_opt => {
                        if !lit.is_empty() {
                            out.push(Token::Lit(std::mem::take(&mut lit)));
                        }
                        out.push(Token::Optional(parse_seq(chars, true)?));
                    }
                    ']' if in_opt => {
                        if !lit.is_empty() {
                            out.push(Token::Lit(lit));
                        }
                        return Ok(out);
                    }
                    c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') => {
                        lit.push(c)
                    }
                    c => return Err(format!("character {c:?} is not allowed")),
                }
            }
            if in_opt {
                return Err("unclosed `[`".into());
            }
            if !lit.is_empty() {
                out.push(Token::Lit(lit));
            }
            Ok(out)
        }
        let tokens = parse_seq(&mut fmt.chars().peekable(), false)?;
        let mut seen = Vec::new();
        fn collect(ts: &[Token], seen: &mut Vec<Field>) {
            for t in ts {
                match t {
                    Token::Field(f) => seen.push(*f),
                    Token::Optional(inner) => collect(inner, seen),
                    Token::Lit(_) => {}
                }
            }
        }
        collect(&tokens, &mut seen);
        for (f, name) in Field::ALL {
            let n = seen.iter().filter(|&&s| s == f).count();
            if n > 1 {
                return Err(format!("{{{name}}} appears twice"));
            }
            if n == 0 && f != Field::Kernel {
                return Err(format!("{{{name}}} is required"));
            }
        }
        Ok(CompiledirFormat { tokens })
    }

    /// The directory name (with the `compiledir_` prefix) for a platform.
    pub fn render(&self, p: &Platform) -> String {
        fn go(ts: &[Token], p: &Platform, out: &mut String) {
            for t in ts {
                match t {
                    Token::Lit(s) => out.push_str(s),
                    Token::Field(f) => out.push_str(&p.get(*f)),
                    Token::Optional(inner) => {
                        let all_set = inner.iter().all(|t| match t {
                            Token::Field(f) => !p.get(*f).is_empty(),
                            _ => true,
                        });
                        if all_set {
                            go(inner, p, out)
                        }
                    }
                }
            }
        }
        let mut out = String::from(COMPILEDIR_PREFIX);
        go(&self.tokens, p, &mut out);
        out
    }

    /// Parses a compiledir name back into its fields; `None` if the name was not made
    /// by this format. A field the format leaves out comes back empty.
    pub fn parse_name(&self, name: &str) -> Option<Platform> {
        let rest = name.strip_prefix(COMPILEDIR_PREFIX)?;
        // Flatten into a list of alternatives is exponential in the number of optional
        // groups; formats have one or two, so plain backtracking is fine.
        fn go<'a>(
            ts: &[Token],
            s: &'a str,
            got: &mut Vec<(Field, &'a str)>,
            k: &mut Cont<'a, '_>,
        ) -> bool {
            let Some((first, more)) = ts.split_first() else {
                return k(s, got);
            };
            match first {
                Token::Lit(l) => match s.strip_prefix(l.as_str()) {
                    Some(r) => go(more, r, got, k),
                    None => false,
                },
                Token::Field(f) => {
                    let max = s.find(|c| !f.allows(c)).unwrap_or(s.len());
                    for end in (1..=max).rev() {
                        got.push((*f, &s[..end]));
                        if go(more, &s[end..], got, k) {
                            return true;
                        }
                        got.pop();
                    }
                    false
                }
                Token::Optional(inner) => {
                    let mark = got.len();
                    let with = go(inner, s, got, &mut |r, g| go(more, r, g, k));
                    if with {
                        return true;
                    }
                    got.truncate(mark);
                    go(more, s, got, k)
                }
            }
        }
        let mut got = Vec::new();
        if !go(&self.tokens, rest, &mut got, &mut |r, _| r.is_empty()) {
            return None;
        }
        let mut p = Platform {
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            libc: String::new(),
            runtime: String::new(),
            layout: 0,
        };
        for (f, v) in got {
            match f {
                Field::Os => p.os = v.into(),
                Field::Kernel => p.kernel = v.into(),
                Field::Arch => p.arch = v.into(),
                Field::Libc => p.libc = v.into(),
                Field::Runtime => p.runtime = v.into(),
                // Canonical numbers only: "xc01" is not a name xcache makes.
                Field::Layout if v.len() > 1 && v.starts_with('0') => return None,
                Field::Layout => p.layout = v.parse().ok()?,
            }
        }
        Some(p)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}-{}", self.os, self.kernel, self.arch, self.libc)?;
        if !self.runtime.is_empty() {
            write!(f, "-{}", self.runtime)?;
        }
        write!(f, "-xc{}", self.layout)
    }
}

/// Checks a `cuda_arch` value: `sm_` (or `compute_`, PTX only) then digits, optionally a
/// letter (`sm_90a`).
pub fn check_cuda_arch(a: &str) -> std::result::Result<(), String> {
    let rest = a
        .strip_prefix("sm_")
        .or_else(|| a.strip_prefix("compute_"))
        .ok_or("an arch such as sm_80 or sm_90a")?;
    let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
    if digits.len() >= 2
        && digits.chars().all(|c| c.is_ascii_digit())
        && rest.len() - digits.len() <= 1
    {
        Ok(())
    } else {
        Err("an arch such as sm_80 or sm_90a".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "{os}-{kernel}-{arch}-{libc}[-{runtime}]-xc{layout}";

    fn p(os: &str, k: &str, arch: &str, libc: &str, rt: &str, layout: u32) -> Platform {
        Platform {
            os: os.into(),
            kernel: k.into(),
            arch: arch.into(),
            libc: libc.into(),
            runtime: rt.into(),
            layout,
        }
    }

    #[test]
    fn render_and_parse_round_trip() {
        let f = CompiledirFormat::parse(DEFAULT).unwrap();
        let table = [
            (
                p("Linux", "6.1", "x86_64", "glibc2.36", "", 1),
                "compiledir_Linux-6.1-x86_64-glibc2.36-xc1",
            ),
            (
                p("Linux", "6.1", "x86_64", "glibc2.36", "cpython-3.11", 1),
                "compiledir_Linux-6.1-x86_64-glibc2.36-cpython-3.11-xc1",
            ),
            (
                p("Linux", "5.15", "aarch64", "musl", "node-20.1+abi.115", 2),
                "compiledir_Linux-5.15-aarch64-musl-node-20.1+abi.115-xc2",
            ),
            (
                p("Darwin", "23.4", "arm64", "libc", "xc1", 12),
                "compiledir_Darwin-23.4-arm64-libc-xc1-xc12",
            ),
        ];
        for (plat, name) in table {
            assert_eq!(f.render(&plat), name);
            assert_eq!(f.parse_name(name).as_ref(), Some(&plat), "{name}");
        }
    }

    #[test]
    fn foreign_names_do_not_parse() {
        let f = CompiledirFormat::parse(DEFAULT).unwrap();
        for name in [
            "compiledir_Linux-4.5--amd64-x86_64-with-debian-stretch-sid--2.7.11+-64",
            "Linux-6.1-x86_64-glibc2.36-xc1",
            "compiledir_Linux-6.1-x86_64-glibc2.36-xc",
            "compiledir_",
            "compiledir_Linux-6.1-x86_64-glibc2.36-xc1/..",
        ] {
            assert_eq!(f.parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn custom_formats() {
        let f = CompiledirFormat::parse("{arch}_{os}_{libc}_{runtime}_v{layout}").unwrap();
        let plat = p("Linux", "", "x86_64", "glibc2.36", "py3", 1);
        let name = f.render(&plat);
        assert_eq!(name, "compiledir_x86_64_Linux_glibc2.36_py3_v1");
        assert_eq!(f.parse_name(&name), Some(plat));
    }

    #[test]
    fn bad_formats_are_rejected() {
        for (fmt, why) in [
            ("{os}-{arch}-{libc}-xc{layout}", "{runtime} is required"),
            (
                "{os}-{kernel}-{arch}-{libc}-{runtime}-{bogus}-{layout}",
                "unknown field",
            ),
            ("{os}/{arch}-{libc}-{runtime}-{layout}", "not allowed"),
            ("{os}-{arch}-{libc}[-{runtime}-{layout}", "unclosed"),
            ("{os}{arch}-{libc}-{runtime}-{layout}", "separated"),
            ("{os}-{os}-{arch}-{libc}-{runtime}-{layout}", "twice"),
        ] {
            let e = CompiledirFormat::parse(fmt).unwrap_err();
            assert!(e.contains(why), "{fmt}: {e}");
        }
    }

    #[test]
    fn short_kernel_releases() {
        for (rel, short) in [
            ("6.1.0-18-amd64", "6.1"),
            ("5.15.153.1-microsoft-standard-WSL2", "5.15"),
            ("4.5", "4.5"),
            ("23.4.0", "23.4"),
            ("6", "6"),
            ("", "0"),
        ] {
            assert_eq!(short_kernel_release(rel), short, "{rel}");
        }
    }

    #[test]
    fn detected_platform_renders_to_a_parsable_name() {
        let f = CompiledirFormat::parse(DEFAULT).unwrap();
        let plat = Platform::detect("cpython-3.11");
        let name = f.render(&plat);
        assert_eq!(f.parse_name(&name), Some(plat));
    }

    #[test]
    fn runtime_tags() {
        assert!(check_runtime_tag("").is_ok());
        assert!(check_runtime_tag("cpython-3.11").is_ok());
        assert!(check_runtime_tag("a/b").is_err());
        assert!(check_runtime_tag("py 3").is_err());
        assert!(check_runtime_tag(&"x".repeat(65)).is_err());
    }
}
