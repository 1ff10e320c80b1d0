//! The JIT runtime: requests go through the cache, artifacts are dlopened once per
//! process, and symbols come back typed.
//!
//! A [`Jit`] keeps a registry from key to loaded library. A second request for the same
//! key in the same process costs the key derivation and a map lookup: no file is
//! touched and nothing is dlopened again. Threads asking for one key at once wait for
//! the first (one compile, one dlopen); threads asking for different keys do not wait
//! for each other. Libraries stay loaded for the life of the `Jit` (function pointers
//! handed out must stay valid), and are unloaded when the last [`Symbol`] and
//! [`Compiled`] referring to them are gone.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::compile::host::HostTool;
use crate::compile::template::{self, Template};
use crate::compile::{diagnostics, toolchain};
use crate::compile::{Language, Request, SourceRequest, TemplateRequest};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::platform::LAYOUT_VERSION;
use crate::store::entry::{EntryMeta, ARTIFACT_FILE};
use crate::store::key::{ExtraInput, Key, KeyMaterial, KEY_ENCODING};
use crate::store::remote::Tier;
use crate::store::{Built, Fetched, Store};

/// A dlopened artifact.
#[derive(Debug)]
pub struct LoadedLibrary {
    key: Key,
    path: PathBuf,
    /// The name it was dlopened by (a load name of the checked descriptor, or `path`):
    /// what the loader's messages start with.
    loaded_as: PathBuf,
    /// Device and inode of the file loaded.
    identity: Option<(u64, u64)>,
    lib: libloading::Library,
}

impl LoadedLibrary {
    /// Opens a shared object with `RTLD_NOW | RTLD_LOCAL`: unresolved symbols fail here,
    /// with the loader's message, not at the first call.
    pub fn open(key: Key, path: &Path) -> Result<LoadedLibrary> {
        LoadedLibrary::open_as(key, path, path)
    }

    /// Opens the shared object `path` by the name `load` (a name for the very file that
    /// was checked: [`crate::store::Fetched::load_name`]), so that what the loader
    /// opens is that file whatever happened to `path` since.
    pub fn open_as(key: Key, path: &Path, load: &Path) -> Result<LoadedLibrary> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        use std::os::unix::fs::MetadataExt;
        let identity = std::fs::metadata(load).ok().map(|m| (m.dev(), m.ino()));
        // SAFETY: loading runs the library's constructors. The store only hands out
        // artifacts whose hash matches what xcache built from the user's own source,
        // in a directory that passed the trust checks, and `load` names that very file.
        let lib = unsafe { Library::open(Some(load), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
            Error::Load {
                path: path.to_path_buf(),
                message: e
                    .to_string()
                    .replace(&*load.to_string_lossy(), &path.to_string_lossy()),
            }
        })?;
        Ok(LoadedLibrary {
            key,
            path: path.to_path_buf(),
            loaded_as: load.to_path_buf(),
            identity,
            lib: lib.into(),
        })
    }

    /// The key it was built under.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file at [`LoadedLibrary::path`] again and checks that it is still the
    /// very file loaded (same device and inode; nobody else can write it): for a loader
    /// of its own (Python's `importlib`) to open by a load name of the result
    /// ([`crate::store::private::LoadName`]), which finds the library already loaded
    /// (the loader matches device and inode). An error when the file was replaced.
    pub fn reopen_checked(&self) -> Result<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::open(&self.path).ctx("opening", &self.path)?;
        let md = f.metadata().ctx("inspecting", &self.path)?;
        if Some((md.dev(), md.ino())) != self.identity {
            return Err(Error::Load {
                path: self.path.clone(),
                message: "the file is no longer the one that was loaded (replaced or moved since)"
                    .into(),
            });
        }
        Ok(f)
    }
}

/// A typed symbol that keeps its library loaded. Dereferences to the function pointer.
#[derive(Debug, Clone)]
pub struct Symbol<T> {
    value: T,
    _lib: Arc<LoadedLibrary>,
}

impl<T> Deref for Symbol<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Looks up `name` in `lib` as a `T` (a function pointer type such as
/// `unsafe extern "C" fn(i64, *const f32) -> i32`).
///
/// # Safety
/// `T` must match the symbol's real type; nothing can check that.
pub unsafe fn symbol<T: Copy>(lib: &Arc<LoadedLibrary>, name: &str) -> Result<Symbol<T>> {
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    let sym: libloading::Symbol<T> = lib.lib.get(&cname).map_err(|e| {
        // dlerror repeats the path; the error names it already.
        let message = e.to_string();
        let prefix = format!("{}: ", lib.loaded_as.display());
        Error::MissingSymbol {
            symbol: name.to_string(),
            path: lib.path.clone(),
            message: message
                .rsplit(&prefix)
                .next()
                .unwrap_or(&message)
                .to_string(),
        }
    })?;
    Ok(Symbol {
        value: *sym,
        _lib: Arc::clone(lib),
    })
}

/// A compiled and loaded request.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The entry's key (a result key: see [`crate::store::manifest`]).
    pub key: Key,
    /// Where it came from: this machine's cache (or compile), or the remote tier.
    pub tier: Tier,
    /// The shared object in the cache.
    pub path: PathBuf,
    /// True when no compiler ran for this request.
    pub hit: bool,
    /// How long the compile took when the entry was built (what a hit saved), in ms.
    pub compile_ms: u64,
    /// Wall time of this request.
    pub elapsed: Duration,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    /// Each wait for a lock another process held: which, how long, held by whom.
    pub lock_waits: Vec<crate::store::lock::LockWait>,
    /// What the compiler printed although it succeeded (only when it ran now).
    pub compiler_output: String,
    /// Cache faults repaired while serving it.
    pub warnings: Vec<String>,
    /// The header that kept this fresh compile out of its manifest (changed at or after
    /// the build started: "file too new"); the next process compiles again. See
    /// [`crate::store::Fetched::unrecorded`].
    pub unrecorded: Option<String>,
    lib: Arc<LoadedLibrary>,
}

impl Compiled {
    /// Looks up an exported function.
    ///
    /// # Safety
    /// `T` must be the symbol's real type.
    pub unsafe fn symbol<T: Copy>(&self, name: &str) -> Result<Symbol<T>> {
        symbol(&self.lib, name)
    }

    /// The loaded library.
    pub fn library(&self) -> &Arc<LoadedLibrary> {
        &self.lib
    }
}

/// The outcome of compiling through the cache without loading (what `xcache compile`
/// does).
#[derive(Debug, Clone)]
pub struct CacheOutcome {
    /// The entry's key (a result key: see [`crate::store::manifest`]).
    pub key: Key,
    /// Where it came from: this machine's cache (or compile), or the remote tier.
    pub tier: Tier,
    /// The shared object in the cache.
    pub path: PathBuf,
    /// True when no compiler ran.
    pub hit: bool,
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// Wall time of this request.
    pub elapsed: Duration,
    /// Time spent waiting for other processes' locks.
    pub lock_wait: Duration,
    /// Each wait for a lock another process held: which, how long, held by whom.
    pub lock_waits: Vec<crate::store::lock::LockWait>,
    /// Cache faults repaired while serving it.
    pub warnings: Vec<String>,
    /// Until when collectors leave `path` alone (`handout_grace` from now); `None` when
    /// the hand-out could not be recorded (a read-only cache, which nobody cleans).
    pub valid_until: Option<std::time::SystemTime>,
    /// The header that kept this freshly compiled result out of its manifest (changed
    /// at or after the build started): the next request compiles again. See
    /// [`crate::store::Fetched::unrecorded`].
    pub unrecorded: Option<String>,
}

type Slot = Arc<Mutex<Option<Arc<LoadedLibrary>>>>;

/// Where the compiler writes the files it read (in the staging directory; removed
/// before the entry is sealed).
const DEPS_FILE: &str = "xcache-deps.d";

/// What a request's key covers that can differ between requests to one `Jit` (the
/// toolchain, config and platform are the Jit's own).
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    language: Language,
    flags: Vec<String>,
    extra_inputs: Vec<(String, Vec<u8>)>,
    template: Option<crate::store::key::TemplateRef>,
    source: Vec<u8>,
    origin: Option<PathBuf>,
}

impl Fingerprint {
    fn matches(&self, r: &SourceRequest) -> bool {
        self.language == r.language
            && self.source == r.source
            && self.flags == r.flags
            && self.extra_inputs == r.extra_inputs
            && self.template == r.template
            && self.origin == r.origin
    }
}

/// Requests this `Jit` has loaded, found again without deriving their key: a fast
/// non-cryptographic hash to find candidates, then a byte-for-byte comparison, so a
/// collision costs a comparison, never a wrong library.
type Memo = HashMap<u64, Vec<(Fingerprint, Arc<LoadedLibrary>)>>;

/// FxHash-style mixing, 8 bytes at a time: ~10x cheaper than blake3 on a 4 KiB source.
fn fast_hash(r: &SourceRequest) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h: u64 = r.language as u64;
    let mut mix = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        h = (h.rotate_left(5) ^ bytes.len() as u64).wrapping_mul(K);
    };
    mix(&r.source);
    for f in &r.flags {
        mix(f.as_bytes());
    }
    for (n, b) in &r.extra_inputs {
        mix(n.as_bytes());
        mix(b);
    }
    h
}

/// A template as [`Jit::render`] first has it: parsed by this `Jit` before, or only
/// read (parsed only if its memo cannot be used).
enum Known {
    Parsed(Arc<Template>),
    Read(template::Located),
}

impl Known {
    fn text(&self) -> &str {
        match self {
            Known::Parsed(t) => t.text(),
            Known::Read(l) => &l.text,
        }
    }
}

/// The compile service and runtime: config, store, compilers, loaded libraries.
#[derive(Debug)]
pub struct Jit {
    config: Config,
    store: Store,
    tools: Mutex<HashMap<Language, Arc<HostTool>>>,
    templates: Mutex<HashMap<String, Arc<Template>>>,
    /// Templates this Jit rendered (not counting those read back from their memos).
    renders: std::sync::atomic::AtomicU64,
    loaded: Mutex<HashMap<Key, Slot>>,
    memo: Mutex<Memo>,
    stats: Arc<crate::store::stats::Recorder>,
    /// State another subsystem keeps per `Jit` (CUDA's NVRTC library and modules: see
    /// [`Jit::extension`]), of a type the runtime does not name, so that the subsystem
    /// depends on the runtime and not the other way round.
    extension: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Jit {
    /// Opens the cache described by `config`.
    pub fn new(config: Config) -> Result<Jit> {
        Jit::with_clock(config, Arc::new(SystemClock))
    }

    /// Opens the cache from the environment ([`Config::load`]).
    pub fn from_env() -> Result<Jit> {
        Jit::new(Config::load()?)
    }

    /// Like [`Jit::new`], with an injected clock.
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Jit> {
        let mut store = Store::open_with_clock(&config, clock.clone())?;
        let stats = Arc::new(crate::store::stats::Recorder::new(store.root().clone()));
        // The remote tier, if configured; a remote that cannot be set up (an unreadable
        // signing key, a bad address) is said once and left out: local work goes on.
        let namespace = store
            .compiledir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match crate::remote::from_config(&config, &namespace, clock, stats.clone()) {
            Ok(remote) => store.set_remote(remote),
            Err(e) => log::warn!("the remote tier is off: {e}"),
        }
        Ok(Jit {
            stats,
            config,
            store,
            tools: Mutex::new(HashMap::new()),
            templates: Mutex::new(HashMap::new()),
            renders: std::sync::atomic::AtomicU64::new(0),
            loaded: Mutex::new(HashMap::new()),
            memo: Mutex::new(HashMap::new()),
            extension: std::sync::OnceLock::new(),
        })
    }

    /// The per-`Jit` state of type `T`, made with `T::default()` on first use. One type
    /// uses the slot (CUDA's, [`crate::cuda::module`]); asking for another is a bug.
    pub(crate) fn extension<T: Default + Send + Sync + 'static>(&self) -> &T {
        self.extension
            .get_or_init(|| Box::new(T::default()))
            .downcast_ref::<T>()
            .expect("one extension type per Jit")
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiler for a language, resolved once per `Jit`.
    pub fn host_tool(&self, lang: Language) -> Result<Arc<HostTool>> {
        if let Some(t) = self.tools.lock().unwrap().get(&lang) {
            return Ok(Arc::clone(t));
        }
        let tool = Arc::new(toolchain::resolve(lang, &self.config, Some(&self.store))?);
        if !tool.removed_env_flags.is_empty() {
            log::warn!(
                "ignoring {} from CFLAGS/CXXFLAGS: xcache tracks every header itself with its own dependency file, and a dependency flag there would change what it records (-MMD drops the system headers). Fix: remove {} from CFLAGS/CXXFLAGS to silence this",
                tool.removed_env_flags.join(" "),
                if tool.removed_env_flags.len() == 1 { "it" } else { "them" }
            );
        }
        self.tools
            .lock()
            .unwrap()
            .entry(lang)
            .or_insert_with(|| Arc::clone(&tool));
        Ok(tool)
    }

    /// The key of a request and what it is derived from. No compiler runs (after the
    /// first resolution of the compiler).
    pub fn key_for(&self, req: &SourceRequest) -> Result<(Key, KeyMaterial, Vec<String>)> {
        req.validate_for(
            crate::compile::flags::Dialect::of(req.language),
            &self.config.allowed_flags,
        )?;
        let tool = self.host_tool(req.language)?;
        let mut user_flags = req.origin_flags();
        user_flags.extend(req.flags.iter().cloned());
        let flags = tool.full_flags(&user_flags);
        let material = KeyMaterial {
            encoding: KEY_ENCODING,
            layout: LAYOUT_VERSION,
            language: req.language.name().into(),
            source_blake3: blake3::hash(&req.source).to_hex().to_string(),
            toolchain: tool.toolchain.clone(),
            target: tool.target(&flags),
            flags: flags.clone(),
            extra_inputs: req
                .extra_inputs
                .iter()
                .map(|(name, bytes)| ExtraInput {
                    name: name.clone(),
                    blake3: blake3::hash(bytes).to_hex().to_string(),
                })
                .collect(),
            runtime_tag: self.config.runtime_tag.clone(),
            template: req.template.clone(),
        };
        Ok((material.key(), material, flags))
    }

    /// Why `req` would hit or miss now, without compiling anything (see
    /// [`crate::store::explain`]).
    pub fn explain(&self, req: &SourceRequest) -> Result<crate::store::explain::Explanation> {
        let (key, material, _) = self.key_for(req)?;
        self.store.explain(&key, &material, &req.name)
    }

    fn fetch(
        &self,
        req: &SourceRequest,
        (key, material, flags): (Key, KeyMaterial, Vec<String>),
    ) -> Result<Fetched> {
        if log::log_enabled!(log::Level::Debug) {
            match self.store.explain(&key, &material, &req.name) {
                Ok(e) => log::debug!("{}: {e}", req.name),
                Err(e) => log::debug!("{}: cannot explain: {e}", req.name),
            }
        }
        let tool = self.host_tool(req.language)?;
        let source_file = req.language.source_file();
        let display = req.display_name();
        let scope = crate::store::manifest::SearchScope::new(
            crate::compile::include_roots(&flags)
                .into_iter()
                .chain(tool.search_dirs.iter().cloned()),
        );
        let fetched = self
            .store
            .get_or_build_tracked(&key, &scope, &mut |staging| {
                let write = |name: &str, bytes: &[u8]| {
                    let p = staging.join(name);
                    staging
                        .create_file(name, crate::store::trust::file_mode())
                        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
                        .ctx("writing", &p)
                };
                write(source_file, &req.source)?;
                for (name, bytes) in &req.extra_inputs {
                    write(name, bytes)?;
                }
                crate::store::pause_point("source-written");
                let (compile_time, compiler_output) = tool
                    .compile(
                        staging.path(),
                        source_file,
                        ARTIFACT_FILE,
                        &flags,
                        Some(DEPS_FILE),
                        self.config.compile_timeout,
                    )
                    .map_err(|e| match e {
                        Error::Compile(mut ce) => {
                            ce.output = diagnostics::explain(&ce.output, source_file, &display);
                            Error::Compile(ce)
                        }
                        e => e,
                    })?;
                // The compiler's list of what it read: the headers enter the manifest; the
                // file itself is not part of the entry.
                let deps = staging
                    .open_file(DEPS_FILE, crate::fsx::OpenHow::read())
                    .and_then(|mut f| {
                        let mut text = String::new();
                        std::io::Read::read_to_string(&mut f, &mut text).map(|_| text)
                    })
                    .ctx(
                        "reading the compiler's dependency list",
                        &staging.join(DEPS_FILE),
                    )?;
                let _ = staging.remove_file(DEPS_FILE);
                let headers = crate::compile::deps::headers(
                    &crate::compile::deps::parse(&deps),
                    staging.path(),
                );
                Ok(Built {
                    source_name: req.name.clone(),
                    group: None,
                    source_file: source_file.into(),
                    compile_time,
                    compiler_output: diagnostics::rename(&compiler_output, source_file, &display),
                    key_material: material.clone(),
                    headers,
                })
            });
        match &fetched {
            Ok(f) if f.hit => self.stats.hit(f.meta.compile_ms, f.lock_wait),
            Ok(f) => {
                self.stats.miss(f.meta.compile_ms, f.lock_wait);
                if !f.is_private() {
                    self.store.auto_prune();
                }
            }
            Err(Error::Compile(_)) => self.stats.failed(),
            Err(_) => {}
        }
        fetched
    }

    /// This runtime's usage counters.
    pub fn stats(&self) -> &crate::store::stats::Recorder {
        &self.stats
    }

    /// Compiles through the cache and returns the artifact's path, without loading it.
    pub fn build(&self, req: &SourceRequest) -> Result<CacheOutcome> {
        let start = Instant::now();
        let mut f = self.fetch(req, self.key_for(req)?)?;
        // The caller gets a path to hand on, and will not hold the key's lock: record
        // the hand-out under the lock this holds, so that collectors leave the entry
        // (or the private build) alone for `handout_grace`.
        let valid_until = f.hand_out();
        Ok(CacheOutcome {
            valid_until,
            tier: f.tier,
            key: f.key,
            path: f.artifact_path(),
            hit: f.hit,
            elapsed: start.elapsed(),
            lock_wait: f.lock_wait,
            lock_waits: f.lock_waits.clone(),
            warnings: f.warnings.clone(),
            meta: f.meta.clone(),
            unrecorded: f.unrecorded.clone(),
        })
    }

    /// Compiles through the cache and places a private copy of the artifact at `dest`
    /// (a reflink where the file system has them, else a copy, never a hard link;
    /// atomically, by a rename beside it), made under the key's lock from the checked
    /// descriptor ([`Fetched::place_copy`]). The caller owns `dest`: no collector ever
    /// touches it. The outcome's `path` is `dest`.
    pub fn build_copy(&self, req: &SourceRequest, dest: &Path) -> Result<CacheOutcome> {
        let start = Instant::now();
        let mut f = self.fetch(req, self.key_for(req)?)?;
        f.place_copy(dest)?;
        Ok(CacheOutcome {
            valid_until: None,
            tier: f.tier,
            key: f.key,
            path: dest.to_path_buf(),
            hit: f.hit,
            elapsed: start.elapsed(),
            lock_wait: f.lock_wait,
            lock_waits: f.lock_waits.clone(),
            warnings: f.warnings.clone(),
            meta: f.meta.clone(),
            unrecorded: f.unrecorded.clone(),
        })
    }

    /// Compiles through the cache (if needed) and loads the result (if not already
    /// loaded by this `Jit`).
    ///
    /// A request this `Jit` has loaded is served from memory without looking at the
    /// disk again (that is what makes it cost about a microsecond): headers edited
    /// since are seen by the next process, or by a new `Jit`, which compiles again.
    pub fn compile(&self, req: &SourceRequest) -> Result<Compiled> {
        let start = Instant::now();
        // Fast path: this exact request was loaded before by this Jit.
        let h = fast_hash(req);
        if let Some(lib) = self.memo.lock().unwrap().get(&h).and_then(|v| {
            v.iter()
                .find(|(fp, _)| fp.matches(req))
                .map(|(_, l)| Arc::clone(l))
        }) {
            self.stats.memory_hit();
            return Ok(Compiled {
                key: lib.key,
                tier: Tier::Local,
                path: lib.path.clone(),
                hit: true,
                compile_ms: 0,
                elapsed: start.elapsed(),
                lock_wait: Duration::ZERO,
                lock_waits: Vec::new(),
                compiler_output: String::new(),
                warnings: Vec::new(),
                unrecorded: None,
                lib,
            });
        }
        let derived = self.key_for(req)?;
        let key = derived.0;
        let slot: Slot = Arc::clone(self.loaded.lock().unwrap().entry(key).or_default());
        // One thread per key loads; the others wait here, then find it loaded.
        let mut loaded = slot.lock().unwrap();
        if let Some(lib) = loaded.as_ref() {
            self.stats.memory_hit();
            return Ok(Compiled {
                key: lib.key,
                tier: Tier::Local,
                path: lib.path.clone(),
                hit: true,
                compile_ms: 0,
                elapsed: start.elapsed(),
                lock_wait: Duration::ZERO,
                lock_waits: Vec::new(),
                compiler_output: String::new(),
                warnings: Vec::new(),
                unrecorded: None,
                lib: Arc::clone(lib),
            });
        }
        let mut fetched = self.fetch(req, derived)?;
        let path = fetched.artifact_path();
        // Loaded while `fetched` holds the key's lock (nobody can remove the file
        // between the hash check and the dlopen), and through the descriptor that was
        // checked (nobody can swap another file in on the way).
        let load = fetched.load_name()?;
        crate::store::pause_point("checked");
        let lib = Arc::new(LoadedLibrary::open_as(
            fetched.key,
            &path,
            load.as_ref().map_or(&*path, |n| n.path()),
        )?);
        drop(load);
        let Fetched {
            hit,
            meta,
            warnings,
            lock_wait,
            lock_waits,
            tier,
            unrecorded,
            ..
        } = fetched; // releases the lock
        *loaded = Some(Arc::clone(&lib));
        let fp = Fingerprint {
            language: req.language,
            flags: req.flags.clone(),
            extra_inputs: req.extra_inputs.clone(),
            template: req.template.clone(),
            source: req.source.clone(),
            origin: req.origin.clone(),
        };
        self.memo
            .lock()
            .unwrap()
            .entry(h)
            .or_default()
            .push((fp, Arc::clone(&lib)));
        Ok(Compiled {
            key: lib.key,
            tier,
            path,
            hit,
            compile_ms: meta.compile_ms,
            elapsed: start.elapsed(),
            lock_wait,
            lock_waits,
            compiler_output: if hit {
                String::new()
            } else {
                meta.compiler_output
            },
            warnings,
            unrecorded,
            lib,
        })
    }

    /// A template by name, parsed once per `Jit`.
    pub fn template(&self, name: &str) -> Result<Arc<Template>> {
        if let Some(t) = self.templates.lock().unwrap().get(name) {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(template::find(name, &self.config)?);
        self.templates
            .lock()
            .unwrap()
            .insert(name.to_string(), Arc::clone(&t));
        Ok(t)
    }

    /// How many template requests this Jit rendered: those read back from a memo
    /// ([`Jit::render`]) are not counted.
    pub fn renders(&self) -> u64 {
        self.renders.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks a template request's parameters and renders it into a source request.
    /// A request rendered before in this compiledir (the same template text, the same
    /// parameters, the same xcache) is read back from its memo instead
    /// ([`template::memo`]): neither parsed nor rendered again.
    pub fn render(&self, req: &TemplateRequest) -> Result<SourceRequest> {
        // The template's text: the parsed template this Jit holds, else the file's.
        let held = self.templates.lock().unwrap().get(&req.name).cloned();
        let known = match held {
            Some(t) => Known::Parsed(t),
            None => Known::Read(template::locate(&req.name, &self.config)?),
        };
        let digest = template::memo::digest(&req.name, known.text(), &req.params);
        let memo = self
            .store
            .read_rendered(&digest)
            .and_then(|bytes| template::memo::decode(&bytes, known.text()));
        let r = match memo {
            Some(r) => r,
            None => {
                let t = match known {
                    Known::Parsed(t) => t,
                    Known::Read(l) => {
                        let t = Arc::new(Template::parse(&l.name, &l.text, &l.origin)?);
                        self.templates
                            .lock()
                            .unwrap()
                            .insert(req.name.clone(), Arc::clone(&t));
                        t
                    }
                };
                let r = t.render(&req.params)?;
                self.renders
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = self
                    .store
                    .write_rendered(&digest, &template::memo::encode(&r))
                {
                    log::debug!("not keeping the rendered {}: {e}", req.name);
                }
                r
            }
        };
        let mut flags = r.flags;
        flags.extend(req.flags.iter().cloned());
        Ok(SourceRequest {
            name: r.template_ref.display(),
            language: r.language,
            source: r.source.into_bytes(),
            flags,
            extra_inputs: Vec::new(),
            template: Some(r.template_ref),
            origin: None,
        })
    }

    fn source_of<'r>(&self, req: &'r Request) -> Result<std::borrow::Cow<'r, SourceRequest>> {
        Ok(match req {
            Request::Source(s) => std::borrow::Cow::Borrowed(s),
            Request::Template(t) => std::borrow::Cow::Owned(self.render(t)?),
        })
    }

    /// Renders, compiles (if needed) and loads a template request.
    pub fn compile_template(&self, req: &TemplateRequest) -> Result<Compiled> {
        self.compile(&self.render(req)?)
    }

    /// Compiles any request through the cache and loads it.
    pub fn compile_request(&self, req: &Request) -> Result<Compiled> {
        self.compile(&*self.source_of(req)?)
    }

    /// Compiles any request through the cache without loading it. A CUDA template is
    /// built as the GPU handles load it: its kernels alone, by NVRTC, into a cubin for
    /// the `cuda_arch` setting (unless `cuda_compiler = nvcc`, which builds the template
    /// with its host launcher into a shared object): so that `xcache warm` and `xcache
    /// compile -t cuda/…` warm what the handles use.
    pub fn build_request(&self, req: &Request) -> Result<CacheOutcome> {
        if let Request::Template(t) = req {
            if self.config.cuda_compiler == crate::config::CudaCompiler::Nvrtc
                && self.template(&t.name)?.language == Language::Cuda
            {
                return self.build_cuda_template(t);
            }
        }
        self.build(&*self.source_of(req)?)
    }

    /// Compiles and loads many requests, at most `jobs` at a time, through the same
    /// single flight as one-at-a-time requests (duplicates cost one compile). Results
    /// come back in the order of `reqs`.
    pub fn compile_many(&self, reqs: &[Request], jobs: usize) -> Vec<Result<Compiled>> {
        parallel(reqs.len(), jobs, |i| self.compile_request(&reqs[i]))
    }

    /// Like [`Jit::compile_many`] without loading: what cache warming wants.
    pub fn build_many(&self, reqs: &[Request], jobs: usize) -> Vec<Result<CacheOutcome>> {
        self.build_many_with(reqs, jobs, &|_, _| {})
    }

    /// Like [`Jit::build_many`], calling `done(i, &result)` as each request finishes.
    pub fn build_many_with(
        &self,
        reqs: &[Request],
        jobs: usize,
        done: &(dyn Fn(usize, &Result<CacheOutcome>) + Sync),
    ) -> Vec<Result<CacheOutcome>> {
        parallel(reqs.len(), jobs, |i| {
            let r = self.build_request(&reqs[i]);
            done(i, &r);
            r
        })
    }
}

impl Jit {
    /// The library of a request this `Jit` has loaded already, found as
    /// [`Jit::compile`]'s fast path finds it (no key derived, no file touched, nothing
    /// that can block); `None` when it would have to go further. What embedders call
    /// before releasing their interpreter's lock for a full [`Jit::compile`]. Not
    /// counted in the usage counters: a caller that uses the result counts it
    /// ([`crate::store::stats::Recorder::memory_hit`]).
    pub fn loaded(&self, req: &SourceRequest) -> Option<Compiled> {
        let start = Instant::now();
        let h = fast_hash(req);
        let lib = self.memo.lock().unwrap().get(&h).and_then(|v| {
            v.iter()
                .find(|(fp, _)| fp.matches(req))
                .map(|(_, l)| Arc::clone(l))
        })?;
        Some(Compiled {
            key: lib.key,
            tier: Tier::Local,
            path: lib.path.clone(),
            hit: true,
            compile_ms: 0,
            elapsed: start.elapsed(),
            lock_wait: Duration::ZERO,
            lock_waits: Vec::new(),
            compiler_output: String::new(),
            warnings: Vec::new(),
            unrecorded: None,
            lib,
        })
    }
}

/// Runs `f(0..n)` on at most `jobs` threads (at least one); results in index order.
fn parallel<T: Send>(n: usize, jobs: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let workers = jobs.clamp(1, n.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                *results[i].lock().unwrap() = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap().expect("every index ran"))
        .collect()
}
