//! Settings: each one named once, with its default and the reason for it.
//!
//! Sources, lowest to highest precedence:
//!
//! 1. the defaults in [`SETTINGS`];
//! 2. the TOML file `$XCACHE_CONFIG`, else `~/.config/xcache/config.toml` (or
//!    `$XDG_CONFIG_HOME/xcache/config.toml`); a missing default file is fine, a missing
//!    `$XCACHE_CONFIG` is an error;
//! 3. dedicated environment variables: `XCACHE_DIR` (base dir) and `XCACHE_RUNTIME`
//!    (runtime tag);
//! 4. `XCACHE_FLAGS`, `k=v,k=v` like `THEANO_FLAGS`;
//! 5. values set through the API ([`Config::set`]).
//!
//! `XCACHE_DIR` is the exception to that order for the base dir: when it is set it wins
//! over everything but the API, because scripts and tests use it to point at a private cache.
//!
//! An unknown key from any source is an error that lists the known ones. Durations
//! and sizes need a unit, as people write them (`30s`, `15m`, `1.5h`, `7d`, `2w`;
//! `512MiB`, `1.5GiB`, `2GB`, `4096B`): a bare number other than `0` is an error that
//! says how to write it, since `max_size=5` or `stale_after=30` is never five bytes or
//! thirty seconds on purpose. A `max_size` of `0` means no limit, everywhere.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// One setting: its name, default (as text, in the form the user would write it) and
/// why that default was chosen. This table is the single source of truth; `docs/` mirrors it.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// The key, as written in the file and in `XCACHE_FLAGS`.
    pub name: &'static str,
    /// The default value as text ("" means unset).
    pub default: &'static str,
    /// One line: what it does and why the default is what it is.
    pub doc: &'static str,
}

/// Every setting xcache knows, in the order `xcache config` shows them.
pub const SETTINGS: &[SettingInfo] = &[
    SettingInfo {
        name: "base_dir",
        default: "",
        doc: "Root of the cache. Unset means $XDG_CACHE_HOME/xcache, else ~/.cache/xcache: the XDG place for data that can be rebuilt.",
    },
    SettingInfo {
        name: "compiledir_format",
        default: "{os}-{kernel}-{arch}-{libc}[-{runtime}]-xc{layout}",
        doc: "Name of a compiledir after `compiledir_`. Every field that changes the ABI is in it so that incompatible code never shares a directory; `[...]` is left out when its field is empty.",
    },
    SettingInfo {
        name: "runtime_tag",
        default: "",
        doc: "Tag of the embedding runtime (e.g. cpython-3.11), set by the program or XCACHE_RUNTIME; empty for plain C users.",
    },
    SettingInfo {
        name: "cc",
        default: "",
        doc: "C compiler. Unset means $CC, else the platform's `cc`, as the cc crate finds it, so xcache builds with what the user's builds use.",
    },
    SettingInfo {
        name: "cxx",
        default: "",
        doc: "C++ compiler. Unset means $CXX, else the platform's `c++`.",
    },
    SettingInfo {
        name: "nvcc",
        default: "",
        doc: "CUDA compiler. Unset means $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, PATH, then a pip-installed nvidia-cuda-nvcc wheel: where people have it.",
    },
    SettingInfo {
        name: "cuda_arch",
        default: "",
        doc: "GPU arch to build for (sm_90). Unset means the local GPU's, asked of the driver, else sm_80 for nvcc (SASS and PTX) and compute_80 PTX for NVRTC, which any newer GPU can run. compute_NN asks NVRTC for PTX only.",
    },
    SettingInfo {
        name: "cuda_compiler",
        default: "nvrtc",
        doc: "How the CUDA templates are compiled: `nvrtc` (device code only, in-process, to a cubin launched through the driver: no host compiler, tens of milliseconds cold) or `nvcc` (a shared object holding the template's own host launchers, about a second cold). Sources with host code always go through nvcc.",
    },
    SettingInfo {
        name: "nvrtc",
        default: "",
        doc: "The NVRTC library (libnvrtc.so, or a directory holding it). Unset means $CUDA_HOME/lib64, $CUDA_PATH/lib64, a pip-installed nvidia-cuda-nvrtc wheel, then LD_LIBRARY_PATH, beside nvcc, /usr/local/cuda and the system's library directories.",
    },
    SettingInfo {
        name: "opt_level",
        default: "3",
        doc: "Optimisation level (0-3, s, z). 3: JIT kernels are small and hot, and -O3 turns on the full auto-vectoriser.",
    },
    SettingInfo {
        name: "compile_timeout",
        default: "10m",
        doc: "A compiler running longer is killed (with its children) and the request fails: a hung compiler must not hold its key's lock, and every process waiting on it, forever. Ten minutes is far beyond any kernel's compile.",
    },
    SettingInfo {
        name: "compiler_check",
        default: "mtime",
        doc: "How a compiler binary is fingerprinted: `mtime` (size + mtime, as ccache does; no hashing on the hit path) or `content` (blake3 of the binary).",
    },
    SettingInfo {
        name: "allowed_flags",
        default: "",
        doc: "Compiler flags you vouch for, separated by spaces: an exact flag (`-fplugin=/opt/p/vec.so`, a value joined to its flag), or a prefix ending in `*` (`-fsanitize-coverage=*`). They pass the allow-list that flags from data (warm manifests) must pass, and the refusal of flags that run programs or write files elsewhere; never those that take over xcache's outputs or dependency file. Unset: only the documented families pass (docs/CLI.md, `xcache warm`).",
    },
    SettingInfo {
        name: "template_path",
        default: "",
        doc: "Directories (`:`-separated) searched for op templates (`c/NAME.c`) before the ones built into xcache; a file there overrides a built-in of the same name.",
    },
    SettingInfo {
        name: "shared_group",
        default: "",
        doc: "A group (name or number) whose members share the cache: their directories and files are trusted and may be group-writable; xcache creates 2775 directories and 0664 files. Unset: a private cache, trusted only when it is yours and nobody else's to write.",
    },
    SettingInfo {
        name: "max_size",
        default: "5GiB",
        doc: "Size above which the current compiledir is pruned automatically after a compile (and the default of `prune --max-size`); 0 turns it off. 5GiB, as ccache: thousands of kernels, a small share of a disk.",
    },
    SettingInfo {
        name: "max_entry_size",
        default: "256MiB",
        doc: "Largest entry taken from elsewhere (a bundle's, the remote tier's), unpacked: a larger one is refused before it is unpacked, and one import unpacks at most max_size in all. 256MiB is far above any kernel library and bounds what a hostile bundle or remote can make xcache allocate and write; never above 1GiB (0 means 1GiB).",
    },
    SettingInfo {
        name: "low_water",
        default: "0.8",
        doc: "Pruning by size stops at this fraction of max_size, so that the next few compiles do not trigger another prune at once.",
    },
    SettingInfo {
        name: "auto_prune_interval",
        default: "1h",
        doc: "Automatic pruning runs at most this often per compiledir: checking the size walks every entry.",
    },
    SettingInfo {
        name: "stale_after",
        default: "30d",
        doc: "A compiledir that is not current and unused for this long is stale (`prune --stale` removes it). A month covers holidays and release cycles.",
    },
    SettingInfo {
        name: "staging_grace",
        default: "1h",
        doc: "Staging directories under tmp/ younger than this are left alone by pruning: they may be builds in progress. No compile takes an hour; a crashed one is collected after it.",
    },
    SettingInfo {
        name: "lock_timeout",
        default: "20m",
        doc: "Longest wait for a lock that another process holds; then the request fails, naming the lock and its holder. Builds of one key wait for each other at most compile_timeout; a longer wait is a stuck holder (`xcache unlock` lists them). A wait that lasts a second says on stderr what it waits for.",
    },
    SettingInfo {
        name: "handout_grace",
        default: "1m",
        doc: "A library path handed to a caller that does not hold its lock (`xcache compile` printing it, `Jit::build`) is not removed by clear, prune, purge or the automatic prune for this long after it was handed out (`--force` on clear, prune, purge and basecompiledir purge excepted): long enough for a script to dlopen what it was given.",
    },
    SettingInfo {
        name: "keep_failed",
        default: "3",
        doc: "Failed builds kept per key under tmp/ for inspection (the newest; older ones are removed at the next failure, and prune removes those older than stale_after). 0 keeps none.",
    },
    SettingInfo {
        name: "last_use_resolution",
        default: "1h",
        doc: "Last use of an entry is written at most this often, so that hits almost never write; pruning decisions work in hours and days.",
    },
    SettingInfo {
        name: "remote",
        default: "",
        doc: "Shared remote tiers, fastest first, separated by `;`: `redis://[user:password@]host:port/db` (the password may come from XCACHE_REMOTE_PASSWORD instead; it is never printed) and `s3://bucket/prefix?endpoint=http://host:port&region=REGION` (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials). A local miss asks them in order before compiling (a hit refills the faster ones); a compile uploads to each. Unset: local only.",
    },
    SettingInfo {
        name: "remote_mode",
        default: "read-write",
        doc: "`read-write`, `read-only` (fetch, never upload: developers reading what CI publishes) or `off`.",
    },
    SettingInfo {
        name: "remote_connect_timeout",
        default: "1s",
        doc: "Longest wait to connect to the remote: a dead remote must cost a compile no more than this (and, after repeated failures, nothing: the circuit breaker stops asking for a while).",
    },
    SettingInfo {
        name: "remote_timeout",
        default: "5s",
        doc: "The most time one request spends on the remote tier, in all: connecting, asking for its results, hashing the headers they name, fetching, and uploading what it compiled (each socket read and write is given what is left of it). A stopped, dripping or lying remote costs a request no more than this.",
    },
    SettingInfo {
        name: "remote_ttl",
        default: "30d",
        doc: "How long the remote keeps what is uploaded (renewed by each upload of it); 0 keeps it until the remote evicts it.",
    },
    SettingInfo {
        name: "remote_s3_part_size",
        default: "8MiB",
        doc: "An S3 value larger than this goes up as a multipart upload in parts of this size: S3 takes at most 5GiB in one PUT, and parts let a slow link fail one part rather than the whole. At least 5MiB (S3's smallest part).",
    },
    SettingInfo {
        name: "remote_sign_key",
        default: "",
        doc: "A file holding a secret (a regular file, at most 64 KiB): uploads and exported bundles are signed with a MAC under it, and fetched values and imported bundles are checked against it. Writers (CI) and readers share it; nobody without it can publish a value that verifies.",
    },
    SettingInfo {
        name: "remote_verify",
        default: "",
        doc: "`required`: refuse any remote value or bundle that is not signed with remote_sign_key (a read-only team that trusts only CI). `if-signed`: check signatures where there are any, and accept unsigned ones. Unset: `required` when remote_sign_key is set (a configured key is meant to be checked: a signature stripped off must not pass as unsigned), else `if-signed`.",
    },
];

/// Whether the remote tier is read, written, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteMode {
    /// Fetch on local misses, upload compiles.
    ReadWrite,
    /// Fetch only.
    ReadOnly,
    /// Neither.
    Off,
}

impl RemoteMode {
    /// As written in the setting.
    pub fn name(self) -> &'static str {
        match self {
            RemoteMode::ReadWrite => "read-write",
            RemoteMode::ReadOnly => "read-only",
            RemoteMode::Off => "off",
        }
    }
}

/// Remote addresses (`;`-separated) with every secret replaced by `***`, for
/// display: a Redis password, credentials written into an S3 URL or its endpoint, and
/// any query parameter whose name speaks of a secret (`secret`, `token`, `key`,
/// `password`, `credential`, `signature`).
pub fn redact(url: &str) -> String {
    url.split(';').map(redact_one).collect::<Vec<_>>().join(";")
}

fn redact_one(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("redis://") {
        return match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                format!("redis://{user}:***@{host}")
            }
            None => url.to_string(),
        };
    }
    // Any other scheme (s3://): userinfo before a host, and secret-looking parameters.
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let hide_userinfo = |s: &str| -> String {
        match s.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find('/').unwrap_or(rest.len());
                match rest[..end].rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
                    None => s.to_string(),
                }
            }
            None => s.to_string(),
        }
    };
    let mut out = hide_userinfo(path);
    if !query.is_empty() {
        let items: Vec<String> = query
            .split('&')
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                let lower = k.to_ascii_lowercase();
                let secret = [
                    "secret",
                    "token",
                    "key",
                    "password",
                    "credential",
                    "signature",
                ]
                .iter()
                .any(|w| lower.contains(w));
                if secret {
                    format!("{k}=***")
                } else if item.contains('=') {
                    format!("{k}={}", hide_userinfo(v))
                } else {
                    item.to_string()
                }
            })
            .collect();
        out.push('?');
        out.push_str(&items.join("&"));
    }
    out
}

/// The `allowed_flags` setting: compiler flags the user vouches for, each an exact flag
/// or a prefix (written with a trailing `*`). [`crate::compile::flags`] consults it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedFlags {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl AllowedFlags {
    /// Parses the setting's text: flags separated by white space; `X*` is the prefix `X`.
    /// A `*` anywhere else, or a prefix too short to name a family (`*`, `-*`), is an
    /// error: vouching for every flag is turning the check off, which is not what this
    /// setting is for.
    pub fn parse(text: &str) -> std::result::Result<AllowedFlags, String> {
        let mut out = AllowedFlags::default();
        for word in text.split_whitespace() {
            let (stem, prefix) = match word.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (word, false),
            };
            if stem.contains('*') {
                return Err(format!(
                    "flags separated by spaces, each exact or ending in `*` (a prefix); {word:?} has a `*` elsewhere"
                ));
            }
            if prefix && stem.trim_start_matches('-').is_empty() {
                return Err(format!(
                    "flags separated by spaces, each exact or ending in `*`; {word:?} would allow every flag: name the flags (or their families, such as `-fsanitize=*`) you vouch for"
                ));
            }
            let list = if prefix {
                &mut out.prefixes
            } else {
                &mut out.exact
            };
            if !list.iter().any(|w| w == stem) {
                list.push(stem.to_string());
            }
        }
        Ok(out)
    }

    /// Whether nothing is vouched for.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether `flag` (as written, or a flag and its value joined) is vouched for.
    pub fn vouches(&self, flag: &str) -> bool {
        self.exact.iter().any(|e| e == flag) || self.prefixes.iter().any(|p| flag.starts_with(p))
    }
}

impl fmt::Display for AllowedFlags {
    /// The setting's text, as it can be written back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .exact
            .iter()
            .cloned()
            .chain(self.prefixes.iter().map(|p| format!("{p}*")))
            .collect();
        f.write_str(&words.join(" "))
    }
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// `XCACHE_FLAGS`.
    Flag,
    /// Set by the embedding program.
    Api,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag => f.write_str("XCACHE_FLAGS"),
            Origin::Api => f.write_str("api"),
        }
    }
}

/// How a compiler binary enters the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompilerCheck {
    /// Size and modification time of the binary.
    Mtime,
    /// blake3 of the binary's bytes.
    Content,
}

/// Which compiler builds the CUDA templates (the `cuda_compiler` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CudaCompiler {
    /// NVRTC, in-process, to a cubin launched through the driver by xcache's launcher.
    Nvrtc,
    /// nvcc, to a shared object holding the template's host launchers.
    Nvcc,
}

impl CudaCompiler {
    /// `nvrtc` or `nvcc`.
    pub fn as_str(self) -> &'static str {
        match self {
            CudaCompiler::Nvrtc => "nvrtc",
            CudaCompiler::Nvcc => "nvcc",
        }
    }
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Config {
    base_dir: Option<PathBuf>,
    /// Format of compiledir names (after `compiledir_`); see [`crate::platform`].
    pub compiledir_format: String,
    /// Runtime tag of the embedding program; empty when none.
    pub runtime_tag: String,
    /// C compiler override.
    pub cc: Option<String>,
    /// C++ compiler override.
    pub cxx: Option<String>,
    /// nvcc override.
    pub nvcc: Option<String>,
    /// GPU arch override.
    pub cuda_arch: Option<String>,
    /// Which compiler builds the CUDA templates.
    pub cuda_compiler: CudaCompiler,
    /// libnvrtc override.
    pub nvrtc: Option<String>,
    /// Optimisation level handed to the compiler.
    pub opt_level: String,
    /// How the compiler binary is fingerprinted.
    pub compiler_check: CompilerCheck,
    /// Longest a compiler may run.
    pub compile_timeout: Duration,
    /// Coarseness of last-use records.
    pub last_use_resolution: Duration,
    /// Extra template directories, `:`-separated.
    pub template_path: String,
    /// Compiler flags the user vouches for (see [`AllowedFlags`]).
    pub allowed_flags: AllowedFlags,
    /// The shared group's gid, when shared-group mode is on.
    pub shared_gid: Option<u32>,
    shared_group_text: String,
    /// Automatic pruning threshold in bytes; 0 is off.
    pub max_size: u64,
    /// Largest entry taken from elsewhere, unpacked, in bytes; 0: the 1 GiB ceiling.
    /// [`Config::entry_limit`] is what applies.
    pub max_entry_size: u64,
    /// Fraction of `max_size` that pruning by size stops at.
    pub low_water: f64,
    /// Minimum time between automatic prunes.
    pub auto_prune_interval: Duration,
    /// Age of last use after which a non-current compiledir is stale.
    pub stale_after: Duration,
    /// Age under which staging directories are left alone.
    pub staging_grace: Duration,
    /// How long a handed-out path is protected from collectors.
    pub handout_grace: Duration,
    /// Longest wait for a lock another process holds.
    pub lock_timeout: Duration,
    /// Failed builds kept per key.
    pub keep_failed: u32,
    /// The remote tier's address (with its password, if any: never print it).
    pub remote: Option<String>,
    /// Whether the remote is read, written or neither.
    pub remote_mode: RemoteMode,
    /// Connect timeout of the remote.
    pub remote_connect_timeout: Duration,
    /// Per-operation timeout of the remote.
    pub remote_timeout: Duration,
    /// Part size of S3 multipart uploads, bytes.
    pub remote_s3_part_size: u64,
    /// Expiry of uploaded values; zero: none.
    pub remote_ttl: Duration,
    /// The signing secret's file.
    pub remote_sign_key: Option<PathBuf>,
    /// `remote_verify` as set (`Some(true)`: required); `None`: unset, which means
    /// required when a sign key is set ([`Config::remote_verify_required`]).
    pub remote_verify: Option<bool>,
    origins: HashMap<&'static str, Origin>,
    home: Option<PathBuf>,
    xdg_cache_home: Option<PathBuf>,
}

/// The environment variables configuration reads.
const ENV_VARS: &[&str] = &[
    "HOME",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XCACHE_CONFIG",
    "XCACHE_RUNTIME",
    "XCACHE_FLAGS",
    "XCACHE_DIR",
];

/// A snapshot of the environment variables that configuration reads.
pub type EnvSnapshot = HashMap<String, String>;

impl Config {
    /// All defaults, no file, no environment. Mostly for tests; programs want [`Config::load`].
    pub fn defaults() -> Config {
        let mut c = Config {
            base_dir: None,
            compiledir_format: String::new(),
            runtime_tag: String::new(),
            cc: None,
            cxx: None,
            nvcc: None,
            cuda_arch: None,
            cuda_compiler: CudaCompiler::Nvrtc,
            nvrtc: None,
            opt_level: String::new(),
            compiler_check: CompilerCheck::Mtime,
            compile_timeout: Duration::ZERO,
            last_use_resolution: Duration::ZERO,
            template_path: String::new(),
            allowed_flags: AllowedFlags::default(),
            shared_gid: None,
            shared_group_text: String::new(),
            max_size: 0,
            max_entry_size: 0,
            low_water: 0.0,
            auto_prune_interval: Duration::ZERO,
            stale_after: Duration::ZERO,
            staging_grace: Duration::ZERO,
            handout_grace: Duration::ZERO,
            lock_timeout: Duration::ZERO,
            keep_failed: 0,
            remote: None,
            remote_mode: RemoteMode::ReadWrite,
            remote_connect_timeout: Duration::ZERO,
            remote_timeout: Duration::ZERO,
            remote_ttl: Duration::ZERO,
            remote_s3_part_size: 0,
            remote_sign_key: None,
            remote_verify: None,
            origins: HashMap::new(),
            home: None,
            xdg_cache_home: None,
        };
        for s in SETTINGS {
            c.apply(s.name, s.default, Origin::Default)
                .expect("built-in defaults parse");
        }
        c
    }

    /// Reads the file, the environment and `XCACHE_FLAGS` of this process.
    pub fn load() -> Result<Config> {
        // Only the variables configuration reads (a process's environment can be large,
        // and this runs on every hit of a fresh process). One that is not UTF-8 elsewhere
        // in the environment must not stop xcache; ours are read as UTF-8 and a bad one
        // is reported below.
        let env: EnvSnapshot = ENV_VARS
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var_os(k)?.into_string().ok()?)))
            .collect();
        for var in [
            "XCACHE_DIR",
            "XCACHE_FLAGS",
            "XCACHE_CONFIG",
            "XCACHE_RUNTIME",
        ] {
            if std::env::var_os(var).is_some_and(|v| v.to_str().is_none()) {
                return Err(Error::Config(format!(
                    "{var} is not valid UTF-8. Fix: use a path or value made of UTF-8 characters"
                )));
            }
        }
        Config::load_from(&env)
    }

    /// Like [`Config::load`], from an explicit environment (testable).
    pub fn load_from(env: &EnvSnapshot) -> Result<Config> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let mut c = Config::defaults();
        c.home = get("HOME").map(PathBuf::from);
        c.xdg_cache_home = get("XDG_CACHE_HOME").map(PathBuf::from);

        let file = match file_path(env) {
            Some(p) if get("XCACHE_CONFIG").is_some() => {
                if !p.is_file() {
                    return Err(Error::Config(format!(
                        "XCACHE_CONFIG points at {}, which is not a file. Fix: create it (`xcache config set KEY VALUE` does), or unset XCACHE_CONFIG",
                        p.display()
                    )));
                }
                Some(p)
            }
            p => p.filter(|p| p.is_file()),
        };
        if let Some(path) = file {
            c.apply_file(&path)?;
        }
        if let Some(v) = get("XCACHE_RUNTIME") {
            c.apply("runtime_tag", &v, Origin::Env("XCACHE_RUNTIME"))?;
        }
        if let Some(flags) = get("XCACHE_FLAGS") {
            c.apply_flags(&flags)?;
        }
        if let Some(v) = get("XCACHE_DIR") {
            c.apply("base_dir", &v, Origin::Env("XCACHE_DIR"))?;
        }
        Ok(c)
    }

    /// Applies a TOML file: a flat table of known keys.
    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        self.apply_toml(&text, path)
    }

    /// Applies the text of a TOML config file; `path` is where it came from.
    pub fn apply_toml(&mut self, text: &str, path: &Path) -> Result<()> {
        // Spanned values, so that every error names the line it is about.
        type Spanned = toml::Spanned<toml::Value>;
        let at = |offset: usize| {
            // Never panics on odd input (the config fuzz target feeds anything).
            let mut end = offset.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let before = &text[..end];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        };
        let table: std::collections::BTreeMap<String, Spanned> =
            toml::from_str(text).map_err(|e: toml::de::Error| {
                let place = match e.span() {
                    Some(span) => {
                        let (line, column) = at(span.start);
                        format!(", line {line}, column {column}")
                    }
                    None => String::new(),
                };
                Error::Config(format!(
                    "{}{place}: not valid TOML: {}",
                    path.display(),
                    e.message().trim_end()
                ))
            })?;
        for (k, v) in table {
            let (line, _) = at(v.span().start);
            let here = format!("{}, line {line}", path.display());
            let text = match v.into_inner() {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(Error::Config(format!(
                        "{here}: `{k}` must be a string or a number, not {}",
                        other.type_str()
                    )))
                }
            };
            self.apply(&k, &text, Origin::File(path.to_path_buf()))
                .map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("{here}: {m}")),
                    e => e,
                })?;
        }
        Ok(())
    }

    /// Applies `k=v,k=v` overrides (the `XCACHE_FLAGS` syntax).
    pub fn apply_flags(&mut self, flags: &str) -> Result<()> {
        for item in flags.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "XCACHE_FLAGS item `{item}` is not of the form key=value"
                ))
            })?;
            self.apply(k.trim(), v.trim(), Origin::Flag)
                .map_err(|e| match e {
                    Error::Config(m) => Error::Config(format!("in XCACHE_FLAGS: {m}")),
                    e => e,
                })?;
        }
        Ok(())
    }

    /// Sets one setting from the embedding program.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.apply(key, value, Origin::Api)
    }

    /// Sets the base dir from the embedding program.
    pub fn set_base_dir(&mut self, dir: impl Into<PathBuf>) {
        self.base_dir = Some(dir.into());
        self.origins.insert("base_dir", Origin::Api);
    }

    fn apply(&mut self, key: &str, value: &str, origin: Origin) -> Result<()> {
        let info = SETTINGS.iter().find(|s| s.name == key).ok_or_else(|| {
            let known: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
            Error::Config(format!(
                "unknown setting `{key}`. Known settings: {}",
                known.join(", ")
            ))
        })?;
        // A remote address may hold a secret: it is shown redacted, even when wrong.
        let shown = if key == "remote" {
            redact(value)
        } else {
            value.to_string()
        };
        let bad = |accepts: &str| {
            Error::Config(format!(
                "setting `{key}` = {shown:?} is invalid: expected {accepts}"
            ))
        };
        // Sizes and durations say what is wrong themselves (a missing unit, with the fix).
        let bad_unit = |why: String| Error::Config(format!("setting `{key}`: {why}"));
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
        match info.name {
            "base_dir" => self.base_dir = opt(value).map(PathBuf::from),
            "compiledir_format" => {
                crate::platform::CompiledirFormat::parse(value)
                    .map_err(|m| bad(&format!("a valid compiledir format ({m})")))?;
                self.compiledir_format = value.to_string();
            }
            "runtime_tag" => {
                crate::platform::check_runtime_tag(value).map_err(|m| bad(&m))?;
                self.runtime_tag = value.to_string();
            }
            "template_path" => self.template_path = value.to_string(),
            "allowed_flags" => {
                self.allowed_flags = AllowedFlags::parse(value).map_err(|m| bad(&m))?
            }
            "shared_group" => {
                self.shared_gid = if value.is_empty() {
                    None
                } else {
                    Some(crate::fsx::resolve_group(value).map_err(|m| bad(&m))?)
                };
                self.shared_group_text = value.to_string();
            }
            "max_size" => self.max_size = parse_size(value).map_err(bad_unit)?,
            "max_entry_size" => self.max_entry_size = parse_size(value).map_err(bad_unit)?,
            "low_water" => match value.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 1.0 => self.low_water = v,
                _ => return Err(bad("a fraction in (0, 1], such as 0.8")),
            },
            "auto_prune_interval" => {
                self.auto_prune_interval = parse_duration(value).map_err(bad_unit)?
            }
            "stale_after" => self.stale_after = parse_duration(value).map_err(bad_unit)?,
            "staging_grace" => self.staging_grace = parse_duration(value).map_err(bad_unit)?,
            "handout_grace" => self.handout_grace = parse_duration(value).map_err(bad_unit)?,
            "lock_timeout" => {
                let d = parse_duration(value).map_err(bad_unit)?;
                if d.is_zero() {
                    return Err(bad("a duration above zero, such as 20m or 90s"));
                }
                self.lock_timeout = d;
            }
            "keep_failed" => {
                self.keep_failed = value
                    .parse()
                    .map_err(|_| bad("a count of failed builds, such as 3 (0 keeps none)"))?
            }
            "remote" => {
                for url in crate::remote::tier_urls(value) {
                    if url.starts_with("s3://") {
                        crate::remote::s3::S3Url::parse(url, None).map_err(|e| {
                            bad(&format!(
                                "s3://bucket/prefix?endpoint=http://host:port&region=REGION ({}: {e})",
                                redact(url)
                            ))
                        })?;
                    } else if !url.starts_with("redis://") {
                        return Err(bad(
                            "redis:// and s3:// addresses separated by `;`, such as redis://cache.example:6379/0;s3://bucket/prefix (or empty for none)",
                        ));
                    }
                }
                self.remote = opt(value);
            }
            "remote_mode" => {
                self.remote_mode = match value {
                    "read-write" => RemoteMode::ReadWrite,
                    "read-only" => RemoteMode::ReadOnly,
                    "off" => RemoteMode::Off,
                    _ => return Err(bad("`read-write`, `read-only` or `off`")),
                }
            }
            "remote_connect_timeout" => {
                self.remote_connect_timeout = parse_duration(value)
                    .map_err(bad_unit)?
                    .max(Duration::from_millis(1))
            }
            "remote_timeout" => {
                self.remote_timeout = parse_duration(value)
                    .map_err(bad_unit)?
                    .max(Duration::from_millis(1))
            }
            "remote_ttl" => self.remote_ttl = parse_duration(value).map_err(bad_unit)?,
            "remote_s3_part_size" => {
                let n = parse_size(value).map_err(bad_unit)?;
                if n < crate::remote::s3::MIN_PART_SIZE {
                    return Err(bad("at least 5MiB (S3's smallest part), such as 8MiB"));
                }
                self.remote_s3_part_size = n;
            }
            "remote_sign_key" => self.remote_sign_key = opt(value).map(PathBuf::from),
            "remote_verify" => self.remote_verify = match value {
                "required" => Some(true),
                "if-signed" => Some(false),
                "" => None,
                _ => return Err(bad(
                    "`required` or `if-signed` (or empty: required when remote_sign_key is set)",
                )),
            },
            "cc" => self.cc = opt(value),
            "cxx" => self.cxx = opt(value),
            "nvcc" => self.nvcc = opt(value),
            "cuda_arch" => {
                if !value.is_empty() {
                    crate::platform::check_cuda_arch(value).map_err(|m| bad(&m))?;
                }
                self.cuda_arch = opt(value);
            }
            "cuda_compiler" => {
                self.cuda_compiler = match value {
                    "nvrtc" => CudaCompiler::Nvrtc,
                    "nvcc" => CudaCompiler::Nvcc,
                    _ => return Err(bad("`nvrtc` or `nvcc`")),
                }
            }
            "nvrtc" => self.nvrtc = opt(value),
            "opt_level" => {
                if !matches!(value, "0" | "1" | "2" | "3" | "s" | "z") {
                    return Err(bad("one of 0, 1, 2, 3, s, z"));
                }
                self.opt_level = value.to_string();
            }
            "compile_timeout" => {
                let d = parse_duration(value).map_err(bad_unit)?;
                if d.is_zero() {
                    return Err(bad("a duration above zero, such as 10m or 90s"));
                }
                self.compile_timeout = d;
            }
            "compiler_check" => {
                self.compiler_check = match value {
                    "mtime" => CompilerCheck::Mtime,
                    "content" => CompilerCheck::Content,
                    _ => return Err(bad("`mtime` or `content`")),
                }
            }
            "last_use_resolution" => {
                self.last_use_resolution = parse_duration(value).map_err(bad_unit)?
            }
            _ => unreachable!("every entry of SETTINGS is handled"),
        }
        self.origins.insert(info.name, origin);
        Ok(())
    }

    /// The base dir: the setting, else `$XDG_CACHE_HOME/xcache`, else `~/.cache/xcache`.
    pub fn base_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.base_dir {
            return Ok(d.clone());
        }
        if let Some(x) = &self.xdg_cache_home {
            return Ok(x.join("xcache"));
        }
        if let Some(h) = &self.home {
            return Ok(h.join(".cache").join("xcache"));
        }
        Err(Error::Config(
            "cannot find a cache directory: HOME is not set. Fix: set XCACHE_DIR".into(),
        ))
    }

    /// Whether remote values and bundles must be signed: `remote_verify` as set, else
    /// whether a `remote_sign_key` is set (a configured key is meant to be checked).
    pub fn remote_verify_required(&self) -> bool {
        self.remote_verify.unwrap_or(self.remote_sign_key.is_some())
    }

    /// The most an entry from elsewhere (a bundle's, the remote's) may unpack to, in
    /// bytes: `max_entry_size`, within `max_size` (an entry larger than the cache may
    /// hold is never worth taking) and never above [`crate::store::pack::MAX_UNPACKED`].
    pub fn entry_limit(&self) -> u64 {
        match self.max_size {
            0 => self.entry_setting_limit(),
            total => self.entry_setting_limit().min(total),
        }
    }

    /// `max_entry_size` within the ceiling.
    fn entry_setting_limit(&self) -> u64 {
        let ceiling = crate::store::pack::MAX_UNPACKED;
        match self.max_entry_size {
            0 => ceiling,
            n => n.min(ceiling),
        }
    }

    /// The setting that [`Config::entry_limit`] comes from (for an error's fix):
    /// `max_size` when it is the smaller, else `max_entry_size`.
    pub fn entry_limit_setting(&self) -> &'static str {
        if self.max_size != 0 && self.max_size < self.entry_setting_limit() {
            "max_size"
        } else {
            "max_entry_size"
        }
    }

    /// The most one import may unpack in all, in bytes: `max_size` (what the cache may
    /// hold; more would be pruned at the next compile anyway); `None`: no limit.
    pub fn import_limit(&self) -> Option<u64> {
        (self.max_size != 0).then_some(self.max_size)
    }

    /// Where a setting's value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Every setting with its effective value (as text) and origin, in table order.
    pub fn effective(&self) -> Vec<(&'static SettingInfo, String, Origin)> {
        SETTINGS
            .iter()
            .map(|s| {
                let value = match s.name {
                    "base_dir" => self
                        .base_dir()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    "compiledir_format" => self.compiledir_format.clone(),
                    "runtime_tag" => self.runtime_tag.clone(),
                    "cc" => self.cc.clone().unwrap_or_default(),
                    "cxx" => self.cxx.clone().unwrap_or_default(),
                    "nvcc" => self.nvcc.clone().unwrap_or_default(),
                    "cuda_arch" => self.cuda_arch.clone().unwrap_or_default(),
                    "cuda_compiler" => self.cuda_compiler.as_str().into(),
                    "nvrtc" => self.nvrtc.clone().unwrap_or_default(),
                    "opt_level" => self.opt_level.clone(),
                    "compile_timeout" => format_duration(self.compile_timeout),
                    "compiler_check" => match self.compiler_check {
                        CompilerCheck::Mtime => "mtime".into(),
                        CompilerCheck::Content => "content".into(),
                    },
                    "last_use_resolution" => format_duration(self.last_use_resolution),
                    "template_path" => self.template_path.clone(),
                    "allowed_flags" => self.allowed_flags.to_string(),
                    "shared_group" => self.shared_group_text.clone(),
                    "max_size" => format_size(self.max_size),
                    "max_entry_size" => format_size(self.max_entry_size),
                    "low_water" => self.low_water.to_string(),
                    "auto_prune_interval" => format_duration(self.auto_prune_interval),
                    "stale_after" => format_duration(self.stale_after),
                    "staging_grace" => format_duration(self.staging_grace),
                    "handout_grace" => format_duration(self.handout_grace),
                    "lock_timeout" => format_duration(self.lock_timeout),
                    "keep_failed" => self.keep_failed.to_string(),
                    "remote" => self.remote.as_deref().map(redact).unwrap_or_default(),
                    "remote_mode" => self.remote_mode.name().into(),
                    "remote_connect_timeout" => format_duration(self.remote_connect_timeout),
                    "remote_timeout" => format_duration(self.remote_timeout),
                    "remote_ttl" => format_duration(self.remote_ttl),
                    "remote_s3_part_size" => format_size(self.remote_s3_part_size),
                    "remote_sign_key" => self
                        .remote_sign_key
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    // Unset shows as unset (its doc says what applies), so that what is
                    // shown can be written back.
                    "remote_verify" => match self.remote_verify {
                        Some(true) => "required".into(),
                        Some(false) => "if-signed".into(),
                        None => String::new(),
                    },
                    _ => unreachable!(),
                };
                (s, value, self.origin(s.name))
            })
            .collect()
    }
}

/// The config file: `$XCACHE_CONFIG`, else `$XDG_CONFIG_HOME/xcache/config.toml`, else
/// `~/.config/xcache/config.toml` (`None` without HOME), whether it exists or not.
pub fn file_path(env: &EnvSnapshot) -> Option<PathBuf> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    get("XCACHE_CONFIG").or_else(|| {
        get("XDG_CONFIG_HOME")
            .or_else(|| get("HOME").map(|h| h.join(".config")))
            .map(|d| d.join("xcache").join("config.toml"))
    })
}

/// Sets `key = "value"` in the TOML config file at `path` (`None` removes the key),
/// keeping every other key, comment and blank line as they are; the file and its
/// directory are created if missing, and the file is replaced atomically. The value is
/// checked as every source's is (an unknown key, a size without a unit, ... is an error
/// and nothing is written).
pub fn write_setting(path: &Path, key: &str, value: Option<&str>) -> Result<()> {
    if let Some(v) = value {
        Config::defaults().apply(key, v, Origin::File(path.to_path_buf()))?;
    } else if !SETTINGS.iter().any(|s| s.name == key) {
        // The same error as for a value, listing the known keys.
        Config::defaults().apply(key, "", Origin::File(path.to_path_buf()))?;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        Error::Config(format!(
            "{} is not valid TOML, so it is left as it is: {}. Fix it by hand first",
            path.display(),
            e.message()
        ))
    })?;
    match value {
        Some(v) => doc[key] = toml_edit::value(v),
        None => {
            doc.remove(key);
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("creating a file in", dir, e))?;
    std::io::Write::write_all(&mut tmp, doc.to_string().as_bytes())
        .map_err(|e| Error::io("writing", tmp.path().to_path_buf(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("replacing", path, e.error))?;
    Ok(())
}

/// Splits `1.5GiB` into its number and its unit. The number is decimal, with an
/// optional fraction; signs and exponents are refused.
fn split_quantity(t: &str) -> Option<(f64, &str)> {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses a duration: a number, fractions allowed, and a unit: `ms`, `s`, `m` (or
/// `min`), `h`, `d`, `w` — `250ms`, `30s`, `15m`, `1.5h`, `7d`, `2w`. A bare number is
/// refused, with the fix, since no unit is obvious (`30` could be seconds or days);
/// `0` is the one exception, being the same in every unit.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (n, unit) = split_quantity(t).ok_or_else(|| {
        format!(
            "{text:?} is not a duration: write a number and a unit, such as 30s, 15m, 1h, 7d, 2w"
        )
    })?;
    let secs = match unit {
        "" if n == 0.0 => 0.0,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write {t}d, {t}h, {t}m or {t}s"
            ))
        }
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 7.0 * 86_400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m, h, d or w"
            ))
        }
    };
    // Whole milliseconds: finer is noise for every duration xcache has.
    let ms = (n * secs * 1e3).round();
    if !ms.is_finite() || ms > u64::MAX as f64 {
        return Err(format!("duration {text:?} is too large"));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Formats a duration in the largest unit that divides it (`3600s` → `1h`; days are the
/// largest unit, as people write them: `30d`, not `4w2d`). What it writes,
/// [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// Size units, as [`parse_size`] reads them (any case) and [`format_size`] writes them:
/// powers of 1024 for the `i` forms, of 1000 for the others (as ccache and the SI do).
const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1000),
];

/// Formats a size in the largest unit that divides it, binary first (`5368709120` →
/// `5GiB`, `5000000000` → `5GB`, `1234` → `1234B`, `0` → `0`). What it writes,
/// [`parse_size`] reads back.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (unit, n) in SIZE_UNITS {
        if bytes.is_multiple_of(*n) {
            return format!("{}{unit}", bytes / n);
        }
    }
    format!("{bytes}B")
}

/// Parses a size: a number, fractions allowed, and a unit: `B`; `KiB`, `MiB`, `GiB`,
/// `TiB` (also `Ki`, `Mi`, ...); `kB`, `MB`, `GB`, `TB` (also `k`, `M`, `G`, `T`); any
/// case — `500MiB`, `1.5GiB`, `2GB`, `4096B`. A bare number is refused, with the fix
/// (`5` is five bytes to some and five gigabytes to others); `0` is the one exception.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (n, unit) = split_quantity(t).ok_or_else(|| {
        format!("{text:?} is not a size: write a number and a unit, such as 500MiB, 5GiB, 2GB")
    })?;
    let lower = unit.to_ascii_lowercase();
    let mult: f64 = match lower.as_str() {
        "" if n == 0.0 => 1.0,
        "" => {
            return Err(format!(
                "{text:?} has no unit: write {t}GiB, {t}MiB or {t}B"
            ))
        }
        "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0f64.powi(3),
        "ti" | "tib" => 1024.0f64.powi(4),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
            ))
        }
    };
    let v = (n * mult).round();
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvSnapshot {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn base_dir_precedence() {
        let c = Config::load_from(&env(&[("HOME", "/h")])).unwrap();
        assert_eq!(c.base_dir().unwrap(), PathBuf::from("/h/.cache/xcache"));
        let c = Config::load_from(&env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")])).unwrap();
        assert_eq!(c.base_dir().unwrap(), PathBuf::from("/x/xcache"));
        let c =
            Config::load_from(&env(&[("HOME", "/h"), ("XCACHE_FLAGS", "base_dir=/f")])).unwrap();
        assert_eq!(c.base_dir().unwrap(), PathBuf::from("/f"));
        assert_eq!(c.origin("base_dir"), Origin::Flag);
        let c = Config::load_from(&env(&[
            ("HOME", "/h"),
            ("XCACHE_FLAGS", "base_dir=/f"),
            ("XCACHE_DIR", "/d"),
        ]))
        .unwrap();
        assert_eq!(c.base_dir().unwrap(), PathBuf::from("/d"));
        assert_eq!(c.origin("base_dir"), Origin::Env("XCACHE_DIR"));
        assert!(Config::load_from(&env(&[])).unwrap().base_dir().is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "opt_level = 2\ncompiler_check = \"content\"\n").unwrap();
        let c = Config::load_from(&env(&[
            ("HOME", "/h"),
            ("XCACHE_CONFIG", f.to_str().unwrap()),
            ("XCACHE_FLAGS", "opt_level=1, last_use_resolution=15m"),
        ]))
        .unwrap();
        assert_eq!(c.opt_level, "1");
        assert_eq!(c.origin("opt_level"), Origin::Flag);
        assert_eq!(c.compiler_check, CompilerCheck::Content);
        assert_eq!(c.origin("compiler_check"), Origin::File(f.clone()));
        assert_eq!(c.last_use_resolution, Duration::from_secs(900));
        assert_eq!(c.origin("cc"), Origin::Default);
    }

    #[test]
    fn default_file_under_xdg_config_home() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("xcache")).unwrap();
        std::fs::write(dir.path().join("xcache/config.toml"), "cc = \"clang\"\n").unwrap();
        let c = Config::load_from(&env(&[
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(c.cc.as_deref(), Some("clang"));
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let e = Config::load_from(&env(&[("HOME", "/h"), ("XCACHE_FLAGS", "optlevel=2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting `optlevel`"), "{e}");
        assert!(e.contains("opt_level") && e.contains("base_dir"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "bogus = 1\n").unwrap();
        let e = Config::load_from(&env(&[("XCACHE_CONFIG", f.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("unknown setting `bogus`"),
            "{e}"
        );
    }

    #[test]
    fn settings_are_written_into_the_file_keeping_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/config.toml");
        write_setting(&f, "max_size", Some("5GiB")).unwrap();
        let load = || Config::load_from(&env(&[("XCACHE_CONFIG", f.to_str().unwrap())])).unwrap();
        assert_eq!(load().max_size, 5 << 30);
        std::fs::write(
            &f,
            "# mine\ncc = \"clang\" # the fast one\n\nmax_size = \"1GiB\"\n",
        )
        .unwrap();
        write_setting(&f, "max_size", Some("2GB")).unwrap();
        write_setting(&f, "stale_after", Some("7d")).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("# mine\ncc = \"clang\" # the fast one\n"),
            "{text}"
        );
        assert!(
            text.contains("max_size = \"2GB\"") && text.contains("stale_after = \"7d\""),
            "{text}"
        );
        write_setting(&f, "cc", None).unwrap();
        let c = load();
        assert_eq!((c.cc, c.max_size), (None, 2_000_000_000));
        // Checked as every source is; nothing written when refused.
        let before = std::fs::read_to_string(&f).unwrap();
        assert!(write_setting(&f, "max_size", Some("5"))
            .unwrap_err()
            .to_string()
            .contains("5GiB"));
        assert!(write_setting(&f, "maxsize", Some("5GiB"))
            .unwrap_err()
            .to_string()
            .contains("max_size"));
        assert!(write_setting(&f, "maxsize", None).is_err());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), before);
        assert_eq!(
            file_path(&env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/xcache/config.toml"))
        );
    }

    #[test]
    fn toml_errors_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            Config::load_from(&env(&[("XCACHE_CONFIG", f.to_str().unwrap())]))
                .unwrap_err()
                .to_string()
        };
        let e = load("opt_level = \"2\"\ncc = \"clang\nmax_size = \"1GiB\"\n");
        assert!(
            e.contains("c.toml, line 2") && e.contains("not valid TOML"),
            "{e}"
        );
        let e = load("opt_level = \"2\"\n\nmax_size = 5\n");
        assert!(e.contains("c.toml, line 3") && e.contains("5GiB"), "{e}");
        let e = load("# settings\nbogus = 1\n");
        assert!(
            e.contains("line 2") && e.contains("unknown setting `bogus`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        let e = Config::load_from(&env(&[("XCACHE_FLAGS", "opt_level=9")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one of 0, 1, 2, 3, s, z"), "{e}");
        let e = Config::load_from(&env(&[("XCACHE_FLAGS", "noequals")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = Config::load_from(&env(&[("XCACHE_CONFIG", "/nonexistent/x.toml")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a file"), "{e}");
        let e = Config::load_from(&env(&[("XCACHE_RUNTIME", "py 3")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime_tag"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("15min").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(
            parse_duration("1.5d").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(
            parse_duration(" 2w ").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("7y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration(".5h").is_err());
        assert!(parse_duration("1e3s").is_err());
        let e = parse_duration("30").unwrap_err();
        assert!(
            e.contains("no unit") && e.contains("30d") && e.contains("30s"),
            "{e}"
        );
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_duration(Duration::ZERO), "0s");

        assert_eq!(parse_size("5GiB").unwrap(), 5 << 30);
        assert_eq!(parse_size("5gib").unwrap(), 5 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("5G").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("1.5k").unwrap(), 1500);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("0").unwrap(), 0);
        let e = parse_size("5").unwrap_err();
        assert!(e.contains("no unit") && e.contains("5GiB"), "{e}");
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("-5GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn sizes_and_durations_are_shown_as_they_are_read() {
        for text in ["5GiB", "5GB", "1234B", "0", "40KiB", "3kB", "1536MiB"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
        assert_eq!(format_size(5_000_000_000), "5GB");
        for text in ["30d", "1h", "90s", "250ms", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn a_bare_number_for_a_size_or_duration_is_refused_with_the_fix() {
        let e = Config::load_from(&env(&[("XCACHE_FLAGS", "max_size=5")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_size") && e.contains("5GiB"), "{e}");
        let e = Config::load_from(&env(&[("XCACHE_FLAGS", "stale_after=30")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale_after") && e.contains("30d"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "max_size = 5\n").unwrap();
        let e = Config::load_from(&env(&[("XCACHE_CONFIG", f.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("5GiB"), "{e}");
        // 0 is 0 in every unit, and max_size=0 is "no limit".
        let c = Config::load_from(&env(&[("XCACHE_FLAGS", "max_size=0,staging_grace=0")])).unwrap();
        assert_eq!(c.max_size, 0);
        assert_eq!(c.staging_grace, Duration::ZERO);
        // opt_level and keep_failed are counts, not sizes: bare numbers are right there.
        let c = Config::load_from(&env(&[("XCACHE_FLAGS", "opt_level=2,keep_failed=5")])).unwrap();
        assert_eq!(c.keep_failed, 5);
        let c =
            Config::load_from(&env(&[("XCACHE_FLAGS", "max_size=5G,stale_after=1.5d")])).unwrap();
        let shown: HashMap<&str, String> = c
            .effective()
            .into_iter()
            .map(|(i, v, _)| (i.name, v))
            .collect();
        assert_eq!(shown["max_size"], "5GB");
        assert_eq!(shown["stale_after"], "36h");
    }

    #[test]
    fn allowed_flags_are_exact_or_prefixes_and_never_everything() {
        let mut c = Config::defaults();
        assert!(c.allowed_flags.is_empty());
        c.set(
            "allowed_flags",
            "-fplugin=/opt/p.so  -fsanitize-coverage=* -fplugin=/opt/p.so",
        )
        .unwrap();
        let a = &c.allowed_flags;
        assert!(a.vouches("-fplugin=/opt/p.so"));
        assert!(!a.vouches("-fplugin=/opt/p.so.evil"));
        assert!(a.vouches("-fsanitize-coverage=trace-pc"));
        assert!(!a.vouches("-fsanitize=address"));
        assert_eq!(
            a.to_string(),
            "-fplugin=/opt/p.so -fsanitize-coverage=*",
            "written back as it can be read"
        );
        for bad in ["*", "-*", "--*", "-f*oo", "-a*b*"] {
            let e = c.set("allowed_flags", bad).unwrap_err().to_string();
            assert!(e.contains("allowed_flags") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn every_setting_has_a_doc_and_round_trips() {
        let c = Config::defaults();
        for (info, value, origin) in c.effective() {
            assert!(!info.doc.is_empty());
            assert_eq!(origin, Origin::Default);
            if info.name != "base_dir" {
                assert_eq!(value, info.default, "{}", info.name);
            }
        }
    }

    #[test]
    fn a_sign_key_makes_signatures_required_unless_loosened() {
        let load = |flags: &str| {
            Config::load_from(&env(&[("HOME", "/h"), ("XCACHE_FLAGS", flags)])).unwrap()
        };
        // No key: nothing to check with, so unsigned values pass.
        let c = load("");
        assert!(!c.remote_verify_required());
        assert_eq!(c.remote_verify, None);
        // A key alone: required, by default.
        let c = load("remote_sign_key=/k");
        assert!(c.remote_verify_required());
        assert_eq!(c.origin("remote_verify"), Origin::Default);
        // An explicit if-signed still loosens it; required stays required.
        assert!(!load("remote_sign_key=/k,remote_verify=if-signed").remote_verify_required());
        assert!(load("remote_verify=required").remote_verify_required());
        // The order of the two settings does not matter.
        assert!(!load("remote_verify=if-signed,remote_sign_key=/k").remote_verify_required());
        // Empty is unset again; anything else is an error naming the choices.
        assert!(load("remote_sign_key=/k,remote_verify=").remote_verify_required());
        let e = Config::load_from(&env(&[
            ("HOME", "/h"),
            ("XCACHE_FLAGS", "remote_verify=yes"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`required` or `if-signed`"), "{e}");
        // A field set through the API counts too.
        let mut c = Config::defaults();
        c.remote_sign_key = Some(PathBuf::from("/k"));
        assert!(c.remote_verify_required());
    }

    #[test]
    fn entry_and_import_limits_come_from_max_entry_size_and_max_size() {
        let load = |flags: &str| {
            Config::load_from(&env(&[("HOME", "/h"), ("XCACHE_FLAGS", flags)])).unwrap()
        };
        let c = load("");
        assert_eq!(c.entry_limit(), 256 << 20);
        assert_eq!(c.entry_limit_setting(), "max_entry_size");
        assert_eq!(c.import_limit(), Some(5 << 30));
        // Within max_size, which then names the limit.
        let c = load("max_size=100MiB");
        assert_eq!(
            (c.entry_limit(), c.import_limit()),
            (100 << 20, Some(100 << 20))
        );
        assert_eq!(c.entry_limit_setting(), "max_size");
        // Never above the ceiling; 0 is the ceiling; max_size 0 is no total limit.
        let c = load("max_entry_size=4GiB,max_size=0");
        assert_eq!((c.entry_limit(), c.import_limit()), (1 << 30, None));
        assert_eq!(load("max_entry_size=0").entry_limit(), 1 << 30);
        assert_eq!(load("max_entry_size=1MiB").entry_limit(), 1 << 20);
        // A size needs its unit, as every size does.
        assert!(Config::load_from(&env(&[
            ("HOME", "/h"),
            ("XCACHE_FLAGS", "max_entry_size=5")
        ]))
        .is_err());
    }
}

#[cfg(test)]
mod doc_tests {
    /// docs/CONFIG.md mirrors SETTINGS: every setting, with its default.
    #[test]
    fn config_docs_mirror_the_settings() {
        let doc = include_str!("../docs/CONFIG.md");
        for s in super::SETTINGS {
            let default = if s.default.is_empty() {
                "(unset)".to_string()
            } else {
                format!("`{}`", s.default)
            };
            let row = format!("| `{}` | {} |", s.name, default);
            assert!(doc.contains(&row), "docs/CONFIG.md lacks the row {row}");
        }
    }
}

#[cfg(test)]
mod remote_tests {
    use super::*;

    #[test]
    fn tiers_in_a_chain_survive_xcache_flags_and_redaction() {
        let mut c = Config::defaults();
        c.apply_flags(
            "remote=redis://:pw@r:6379/0;s3://bucket/p?endpoint=http://127.0.0.1:9000&region=eu-west-1, remote_s3_part_size=5MiB",
        )
        .unwrap();
        let remote = c.remote.clone().unwrap();
        assert_eq!(
            crate::remote::tier_urls(&remote),
            [
                "redis://:pw@r:6379/0",
                "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=eu-west-1"
            ]
        );
        assert_eq!(c.remote_s3_part_size, 5 << 20);
        assert_eq!(
            redact(&remote),
            "redis://:***@r:6379/0;s3://bucket/p?endpoint=http://127.0.0.1:9000&region=eu-west-1"
        );
        assert_eq!(
            redact("s3://b/p?endpoint=http://ak:sk@h:1&secret_key=sk&X-Amz-Signature=abc"),
            "s3://b/p?endpoint=http://***@h:1&secret_key=***&X-Amz-Signature=***"
        );
        // Errors name no secret either.
        let e = c
            .set("remote", "s3://AKIA:sk@bucket/p")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sk@"), "{e}");
        assert!(c.set("remote", "memcached://x").is_err());
        assert!(c.set("remote_s3_part_size", "1MiB").is_err());
        // Defaults.
        let d = Config::defaults();
        assert_eq!(d.remote_s3_part_size, crate::remote::s3::DEFAULT_PART_SIZE);
    }
}
