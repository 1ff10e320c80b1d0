//! Artifact groups: files that another compiler built (Numba's index data, Triton's
//! cubin, PTX and metadata, a CuPy cubin), kept by the store's protocol like the
//! entries xcache compiles itself.
//!
//! A caller (an adapter in `python/xcache/integrations/`) names its *producer*
//! (`numba`, `triton`, `cupy`, `pytensor`) and gives its own key material, text it
//! derives from what its compiler keys on. The group's request key is
//! [`super::key::group_key`] of the compiledir's name, the producer and the material;
//! the producer's version belongs in the store's runtime tag (`numba-0.65.1`), so that
//! each version has a compiledir of its own and `prune --stale` retires old ones.
//!
//! A group is a dependency-tracked result with no headers: it has a manifest, its entry
//! is keyed by [`super::key::result_key`] of the request key, it is published by the
//! tracked protocol (the request key's exclusive lock, staging, seal, rename, the
//! manifest, the remote tier), listed, pinned, pruned, verified, exported and imported
//! as any entry. Its files live under `files/` in the entry, each hashed (the entry's
//! artifact is the first); every hit checks them all (by the `verified` record's
//! identities, as an artifact).
//!
//! The producer compiles between asking and giving: [`Store::lease_group`] returns the
//! group, or a [`GroupLease`] that holds the request key's exclusive lock while the
//! caller compiles, so that processes asking for one cold group cost one compile (the
//! others wait for the lease, within `lock_timeout`, then hit). A lease dropped without
//! [`GroupLease::publish`] publishes nothing and frees the key.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::key::{group_key, Key, KeyMaterial, Target, Toolchain, KEY_ENCODING};
use super::manifest::SearchScope;
use super::tracked::{Acquired, BuildLease};
use super::{layout, trust, Built, Fetched, GroupBuild, Staging, Store};
use crate::error::{Error, Result};
use crate::platform::LAYOUT_VERSION;

/// Longest key material accepted (it is stored in the entry, and shown).
pub const MAX_MATERIAL: usize = 64 << 10;

/// Most files in one group.
pub const MAX_MEMBERS: usize = 256;

/// Names a producer may not take: what xcache's own entries are listed under (their
/// languages, and itself).
pub const RESERVED_PRODUCERS: &[&str] = &["xcache", "c", "c++", "cuda"];

/// Who made an entry listed with `language`: `xcache` for the languages it compiles,
/// else the group's producer (which stands in the language's place).
pub fn producer_of_language(language: &str) -> &str {
    if RESERVED_PRODUCERS.contains(&language) {
        "xcache"
    } else {
        language
    }
}

/// What a group is: who makes it, what it is keyed by, what to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The producer: lowercase letters, digits and `-` (`numba`, `triton`).
    pub producer: String,
    /// The producer's key material: everything that changes what it builds.
    pub material: String,
    /// What `list` calls it (a function or kernel name).
    pub name: String,
}

impl GroupSpec {
    /// A spec, checked: a producer name and material within bounds.
    pub fn new(
        producer: impl Into<String>,
        material: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<GroupSpec> {
        let spec = GroupSpec {
            producer: producer.into(),
            material: material.into(),
            name: name.into(),
        };
        let p = &spec.producer;
        if RESERVED_PRODUCERS.contains(&p.as_str()) {
            return Err(Error::InvalidRequest(format!(
                "producer {p:?} is one of xcache's own names ({}); name the compiler whose files these are",
                RESERVED_PRODUCERS.join(", ")
            )));
        }
        if p.is_empty()
            || p.len() > 32
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::InvalidRequest(format!(
                "producer {p:?}: expected a name of lowercase letters, digits and `-` (such as numba or triton)"
            )));
        }
        if spec.material.len() > MAX_MATERIAL {
            return Err(Error::InvalidRequest(format!(
                "the key material of a {p} group is {} bytes, more than the {MAX_MATERIAL} allowed. Fix: give a digest of it",
                spec.material.len()
            )));
        }
        Ok(spec)
    }
}

/// Why a file name cannot be a group member's, or `None`: a plain name (ASCII letters,
/// digits, `.`, `_`, `-`, `+`; not starting with `.`) of at most 200 bytes.
pub fn member_name_problem(name: &str) -> Option<String> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    (!plain).then(|| {
        format!("{name:?} is not a plain file name (ASCII letters, digits and . _ - +, not starting with a dot, at most 200 bytes)")
    })
}

/// The right to publish a group nobody has yet: the request key's exclusive lock and a
/// staging directory. Dropped unpublished, it leaves nothing behind.
#[derive(Debug)]
pub struct GroupLease {
    store: Store,
    spec: GroupSpec,
    request: Key,
    /// `None` once published.
    lease: Option<BuildLease>,
    staging: Staging,
    members: Vec<String>,
    started: Instant,
}

/// What [`Store::lease_group`] found.
#[derive(Debug)]
pub enum GroupLeased {
    /// The group, held (shared) as any hit.
    Found(Box<Fetched>),
    /// Nobody has it: build it and [`GroupLease::publish`] it.
    Lease(Box<GroupLease>),
}

impl Store {
    /// The request key of `spec` in this compiledir.
    pub fn group_key(&self, spec: &GroupSpec) -> Key {
        let name = self
            .compiledir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        group_key(&name, &spec.producer, &spec.material)
    }

    /// The group `spec`, if this compiledir has it, verified and held (shared lock)
    /// as any hit; `None` otherwise. Never waits for a builder, never asks the remote.
    pub fn get_group(&self, spec: &GroupSpec) -> Result<Option<Fetched>> {
        let request = self.group_key(spec);
        let mut warnings = Vec::new();
        let found = self.lookup(&request, &mut warnings)?;
        Ok(found.filter(|f| f.meta.group.is_some()))
    }

    /// The group `spec`: found here, found on the remote tier, or, when nobody has it,
    /// a lease to build it. Waits for another process's lease on it (within
    /// `lock_timeout`), then looks again.
    pub fn lease_group(&self, spec: &GroupSpec) -> Result<GroupLeased> {
        let request = self.group_key(spec);
        match self.acquire_tracked(&request, &SearchScope::default())? {
            Acquired::Found(f) => Ok(GroupLeased::Found(f)),
            Acquired::Build(lease) => {
                let staging = self.new_staging(&request)?;
                staging
                    .root
                    .mkdir(layout::GROUP_FILES, trust::dir_mode())
                    .map_err(|e| {
                        Error::io("creating", staging.root.join(layout::GROUP_FILES), e)
                    })?;
                Ok(GroupLeased::Lease(Box::new(GroupLease {
                    store: self.clone(),
                    spec: spec.clone(),
                    request,
                    lease: Some(lease),
                    staging,
                    members: Vec::new(),
                    started: Instant::now(),
                })))
            }
        }
    }

    /// Publishes `files` as the group `spec` in one call: [`Store::lease_group`], then
    /// [`GroupLease::publish`]. A group already there is returned as it is.
    pub fn put_group(&self, spec: &GroupSpec, files: &[(String, Vec<u8>)]) -> Result<Fetched> {
        if let Some(why) = files.iter().find_map(|(n, _)| member_name_problem(n)) {
            return Err(Error::InvalidRequest(format!(
                "a file of a {} group: {why}",
                spec.producer
            )));
        }
        match self.lease_group(spec)? {
            GroupLeased::Found(f) => Ok(*f),
            GroupLeased::Lease(mut lease) => {
                for (name, bytes) in files {
                    lease.add(name, bytes)?;
                }
                lease.publish(Duration::ZERO)
            }
        }
    }
}

impl GroupLease {
    /// The request key.
    pub fn key(&self) -> &Key {
        &self.request
    }

    /// Adds the file `name` with `bytes` to the group (replacing one of that name),
    /// and returns where it is staged: a path valid until the lease is published or
    /// dropped.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        if let Some(why) = member_name_problem(name) {
            return Err(Error::InvalidRequest(format!(
                "a file of a {} group: {why}",
                self.spec.producer
            )));
        }
        if !self.members.iter().any(|m| m == name) {
            if self.members.len() >= MAX_MEMBERS {
                return Err(Error::InvalidRequest(format!(
                    "a {} group may hold at most {MAX_MEMBERS} files",
                    self.spec.producer
                )));
            }
            self.members.push(name.to_string());
        }
        let rel = PathBuf::from(layout::GROUP_FILES).join(name);
        let path = self.staging.root.join(&rel);
        let _ = self.staging.root.remove_file(&rel);
        self.staging
            .root
            .create_file(&rel, trust::file_mode())
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(path)
    }

    /// Publishes the files added by the tracked protocol (sealed, renamed into place,
    /// recorded in the request's manifest, uploaded to the remote tier), and returns
    /// the group held as a build is. `compile_time` is how long the producer took (what
    /// a hit saves, in `stats`).
    pub fn publish(mut self, compile_time: Duration) -> Result<Fetched> {
        if self.members.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "a {} group needs at least one file",
                self.spec.producer
            )));
        }
        let mut members = self.members.clone();
        members.sort();
        let config = self.store.config();
        let built = Built {
            source_name: self.spec.name.clone(),
            source_file: String::new(),
            compile_time: if compile_time.is_zero() {
                self.started.elapsed()
            } else {
                compile_time
            },
            compiler_output: String::new(),
            key_material: KeyMaterial {
                encoding: KEY_ENCODING,
                layout: LAYOUT_VERSION,
                // The producer stands where a compiled entry has its language, so that
                // listings (and the index) say who made it.
                language: self.spec.producer.clone(),
                source_blake3: blake3::hash(self.spec.material.as_bytes())
                    .to_hex()
                    .to_string(),
                toolchain: Toolchain {
                    path: self.spec.producer.clone(),
                    version: config.runtime_tag.clone(),
                    binary: String::new(),
                },
                flags: Vec::new(),
                target: Target {
                    triple: crate::compile::host::HOST_TARGET.into(),
                    cpu: None,
                },
                extra_inputs: Vec::new(),
                runtime_tag: config.runtime_tag.clone(),
                template: None,
            },
            headers: Vec::new(),
            group: Some(GroupBuild {
                producer: self.spec.producer.clone(),
                material: self.spec.material.clone(),
                members,
            }),
        };
        let store = self.store.clone();
        let lease = self.lease.take().expect("published once");
        store.publish_tracked(&self.request, lease, &mut self.staging, built)
    }
}

impl Drop for GroupLease {
    fn drop(&mut self) {
        // Abandoned (the producer failed): nothing is published, and a key that has no
        // manifest keeps no lock file either (it is removed under the lock, which
        // waiters re-check).
        if self.lease.is_some()
            && matches!(
                super::manifest::read(&self.store.root(), &self.request),
                Ok(super::manifest::Lookup::Missing)
            )
        {
            let _ = self.store.root().remove_file(layout::lock(&self.request));
        }
    }
}

/// A group whose files stay in place while this (or a clone) lives: a pin of its entry
/// ([`super::pin`]), which every collector, in any process, respects.
#[derive(Debug, Clone)]
pub struct HeldGroup {
    /// The entry's key.
    pub key: Key,
    /// The entry directory.
    pub dir: PathBuf,
    /// The files, by name, where they are.
    pub files: Vec<(String, PathBuf)>,
    /// True when it was there (here or on the remote tier); false when this process
    /// published it.
    pub hit: bool,
    /// Where it came from.
    pub tier: super::remote::Tier,
    /// The producer.
    pub producer: String,
    /// What `list` calls it.
    pub name: String,
    /// How long the producer took to build it, ms (what a hit saved).
    pub compile_ms: u64,
    /// Cache faults repaired on the way.
    pub warnings: Vec<String>,
    /// Time spent waiting for other processes' locks (a builder of the same group).
    pub lock_wait: Duration,
    _pin: std::sync::Arc<super::pin::Pin>,
}

/// What [`Store::lease_group_held`] found.
#[derive(Debug)]
pub enum HeldLeased {
    /// The group, held.
    Found(HeldGroup),
    /// Nobody has it: build it and publish it ([`GroupLease::publish_held`]).
    Lease(Box<GroupLease>),
}

/// How often a group may go between finding it and pinning it before giving up (each
/// time means a collector removed it in between).
const PIN_ATTEMPTS: usize = 8;

impl Fetched {
    /// This group, pinned ([`Fetched::into_pin`]); `None` when the entry went before it
    /// could be pinned.
    pub fn into_held_group(self) -> Result<Option<HeldGroup>> {
        let files = self.group_files();
        let (key, dir, hit, tier) = (self.key, self.dir.clone(), self.hit, self.tier);
        let producer = self.meta.producer().to_string();
        let name = self.meta.source_name.clone();
        let compile_ms = self.meta.compile_ms;
        let warnings = self.warnings.clone();
        let lock_wait = self.lock_wait;
        Ok(self.into_pin()?.map(|pin| HeldGroup {
            key,
            dir,
            files,
            hit,
            tier,
            producer,
            name,
            compile_ms,
            warnings,
            lock_wait,
            _pin: pin,
        }))
    }
}

impl Store {
    /// [`Store::get_group`], pinned: the files stay while the handle lives.
    pub fn get_group_held(&self, spec: &GroupSpec) -> Result<Option<HeldGroup>> {
        for _ in 0..PIN_ATTEMPTS {
            let Some(f) = self.get_group(spec)? else {
                return Ok(None);
            };
            if let Some(h) = f.into_held_group()? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// [`Store::lease_group`], with a found group pinned.
    pub fn lease_group_held(&self, spec: &GroupSpec) -> Result<HeldLeased> {
        for _ in 0..PIN_ATTEMPTS {
            match self.lease_group(spec)? {
                GroupLeased::Lease(l) => return Ok(HeldLeased::Lease(l)),
                GroupLeased::Found(f) => {
                    if let Some(h) = f.into_held_group()? {
                        return Ok(HeldLeased::Found(h));
                    }
                }
            }
        }
        Err(Error::InvalidRequest(format!(
            "a {} group was removed {PIN_ATTEMPTS} times while pinning it: is something deleting the cache by hand?",
            spec.producer
        )))
    }
}

impl GroupLease {
    /// [`GroupLease::publish`], pinned.
    pub fn publish_held(self, compile_time: Duration) -> Result<HeldGroup> {
        let producer = self.spec.producer.clone();
        let f = self.publish(compile_time)?;
        f.into_held_group()?.ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the {producer} group just published was removed before it could be pinned"
            ))
        })
    }
}

impl Fetched {
    /// The files of a group, by name, where they are in the entry (valid while this
    /// lives, or while the entry is pinned). Empty for what xcache compiled.
    pub fn group_files(&self) -> Vec<(String, PathBuf)> {
        self.meta
            .group
            .as_ref()
            .map(|g| {
                g.members
                    .iter()
                    .map(|m| {
                        (
                            m.file.clone(),
                            self.dir.join(layout::GROUP_FILES).join(&m.file),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_plain() {
        assert!(member_name_problem("add_kernel.cubin").is_none());
        assert!(member_name_problem("data.0.nbc").is_none());
        for bad in ["", ".hidden", "a/b", "../x", "ké.json", &"x".repeat(201)] {
            assert!(member_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(GroupSpec::new("numba", "m", "f").is_ok());
        assert!(GroupSpec::new("Numba", "m", "f").is_err());
        assert!(GroupSpec::new("a b", "m", "f").is_err());
        assert!(GroupSpec::new("cuda", "m", "f").is_err());
        assert_eq!(producer_of_language("c++"), "xcache");
        assert_eq!(producer_of_language("triton"), "triton");
        assert!(GroupSpec::new("numba", "x".repeat(MAX_MATERIAL + 1), "f").is_err());
    }
}
