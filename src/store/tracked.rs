//! The dependency-tracked protocol ([`Store::get_or_build_tracked`]): a request key's
//! manifest names its results; a request takes the first whose headers all match the
//! files now, and otherwise builds a new result and adds it. See the store module's
//! doc ("Tracked requests") for the steps, and [`super::manifest`] for the manifest.

use super::entry::{HeaderDigest, VerifyError};
use super::key::{result_key, Key};
use super::manifest::{
    self, HeaderRecord, Lookup, Manifest, ResultCheck, ResultRecord, SearchScope,
};
use super::remote::Budget;
use super::{check_entry_in, layout, lock, Built, Fetched, Store};
use crate::clock::unix_secs;
use crate::error::{Error, Result};
use crate::fsx::Root;
use std::time::{Duration, Instant, SystemTime};

/// What the first half of a tracked request found.
pub(crate) enum Acquired {
    /// A result (here, or from the remote).
    Found(Box<Fetched>),
    /// Nothing: the request key's exclusive lock, to build one.
    Build(BuildLease),
}

/// The right to build a tracked request's result: its exclusive lock, held until the
/// result is published (or this is dropped).
#[derive(Debug)]
pub(crate) struct BuildLease {
    pub(crate) guard: super::lock::LockGuard,
    pub(crate) build_start: SystemTime,
    pub(crate) warnings: Vec<String>,
    pub(crate) budget: Budget,
}

impl Store {
    /// Returns a result of the request `request` whose headers match the files on disk
    /// now, building one with `build` if none does.
    ///
    /// `build` gets an empty staging directory; it must leave the source and the
    /// artifact there, and list in [`Built::headers`] every header the compiler read
    /// (absolute paths; from the compiler's dependency output). It runs under the
    /// request key's exclusive lock, once (a second time only into a private directory,
    /// if the cache turns out not to be writable). The entry returned is keyed by its
    /// result key and holds that key's lock, as [`Store::get_or_build`]'s does.
    ///
    /// `scope` is where the request's compiler searches for headers
    /// ([`SearchScope`]): a remote's result that names a header outside it is not
    /// read. The remote tier, when set, is given one [`Budget`] for the whole request.
    pub fn get_or_build_tracked(
        &self,
        request: &Key,
        scope: &SearchScope,
        build: &mut dyn FnMut(&Root) -> Result<Built>,
    ) -> Result<Fetched> {
        self.request(request, build, &mut |s, b| {
            s.tracked_cached(request, scope, b)
        })
    }

    fn tracked_cached(
        &self,
        request: &Key,
        scope: &SearchScope,
        build: &mut dyn FnMut(&Root) -> Result<Built>,
    ) -> Result<Fetched> {
        let lease = match self.acquire_tracked(request, scope)? {
            Acquired::Found(f) => return Ok(*f),
            Acquired::Build(lease) => lease,
        };
        let mut staging = self.new_staging(request)?;
        let built = match build(&staging.root) {
            Ok(b) => b,
            Err(e) => {
                if matches!(manifest::read(&self.root(), request), Ok(Lookup::Missing)) {
                    // Nothing will be keyed by this lock: no orphan lock file.
                    let _ = self.root().remove_file(layout::lock(request));
                }
                return Err(self.keep_failed(staging, request, e));
            }
        };
        super::pause_point("compiled");
        self.publish_tracked(request, lease, &mut staging, built)
    }

    /// Steps 1 and 2 of a tracked request, and the remote: a result that matches, or
    /// the request key's exclusive lock, held by the returned lease, to build one.
    pub(crate) fn acquire_tracked(&self, request: &Key, scope: &SearchScope) -> Result<Acquired> {
        // A miss's build starts here as far as header timestamps go (see
        // `manifest::build_start`): a header written from now on is "too new".
        let arrived = manifest::build_start();
        let mut warnings = Vec::new();
        if let Some(f) = self.lookup(request, &mut warnings)? {
            return Ok(Acquired::Found(Box::new(f)));
        }

        // Miss: the request key's exclusive lock serialises its builders and the
        // updates of its manifest; look again under it.
        let guard = lock::lock_exclusive(&self.root(), &layout::lock(request), &mut |_| {})?;
        if let Some(mut f) = self.lookup(request, &mut warnings)? {
            f.lock_wait += guard.waited();
            f.lock_waits.splice(0..0, guard.wait().cloned());
            return Ok(Acquired::Found(Box::new(f)));
        }
        // Not here: the remote tier, if any, before the compiler. One budget covers all
        // the request says to it, read-through and write-back.
        let budget = Budget::new(self.remote.as_ref().map_or(Duration::ZERO, |r| r.budget()));
        if let Some(mut f) = self.fetch_remote(request, scope, &budget)? {
            f.lock_wait += guard.waited();
            f.lock_waits.splice(0..0, guard.wait().cloned());
            f.warnings.splice(0..0, warnings.drain(..));
            return Ok(Acquired::Found(Box::new(f)));
        }

        // Compared with files' own timestamps: the kernel's file clock, not the policy
        // clock.
        // After a wait for another builder, a fresh start: headers may have been edited
        // meanwhile, and none of that was read by our compiler.
        let build_start = if guard.waited().is_zero() {
            arrived
        } else {
            manifest::build_start()
        };
        Ok(Acquired::Build(BuildLease {
            guard,
            build_start,
            warnings,
            budget,
        }))
    }

    /// Steps 4 to 6 of a tracked request: the result key from the headers `built`
    /// read, the entry sealed and published, recorded in the manifest, uploaded.
    pub(crate) fn publish_tracked(
        &self,
        request: &Key,
        lease: BuildLease,
        staging: &mut super::Staging,
        mut built: Built,
    ) -> Result<Fetched> {
        let BuildLease {
            guard,
            build_start,
            warnings,
            budget,
        } = lease;
        let short = &request.hex()[..16];
        let mut racy: Option<String> = None;
        let headers = built
            .headers
            .drain(..)
            .map(|p| {
                let (rec, r) = HeaderRecord::record(&p, build_start, None)
                    .map_err(|e| Error::io("reading the header", &p, e.into_io()))?;
                if r && racy.is_none() {
                    racy = Some(rec.path.clone());
                }
                Ok(rec)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut digests: Vec<(&str, &str)> = headers
            .iter()
            .map(|h| (h.path.as_str(), h.blake3.as_str()))
            .collect();
        // A header written after the build started may not be what the compiler read:
        // the result goes to this caller under a key nobody can look up, and is not
        // recorded (the next request compiles again, from settled headers).
        let unique = super::layout::unique();
        if let Some(h) = &racy {
            log::info!("{h} changed while {short}… was compiled: the result is not recorded");
            digests.push(("xcache-unrecorded", &unique));
        }
        let key = result_key(request, &digests);

        // Publish under the result key's own lock (always taken after the request
        // key's), so that no collector removes it before the caller loads it.
        let rguard = lock::lock_exclusive(&self.root(), &layout::lock(&key), &mut |_| {})?;
        let lock_wait = guard.waited() + rguard.waited();
        let guard_wait = guard.wait().cloned();
        let meta = match check_entry_in(&self.root(), &key, false) {
            // Built before, its manifest lost: the same headers give the same result.
            Ok(Some(c)) => c.meta,
            Ok(None) | Err(VerifyError::Corrupt(_)) => {
                if check_entry_in(&self.root(), &key, false).is_err() {
                    self.quarantine_entry(&key)?;
                }
                let provenance = (
                    *request,
                    headers
                        .iter()
                        .map(|h| HeaderDigest {
                            path: h.path.clone(),
                            blake3: h.blake3.clone(),
                        })
                        .collect(),
                );
                let meta = super::seal(
                    &staging.root,
                    &key,
                    built,
                    self.clock().now(),
                    Some(provenance),
                )?;
                super::pause_point("sealed");
                self.publish(staging, &key)?;
                meta
            }
            Err(e) => return Err(e.into_error()),
        };

        // Record the result in the manifest: most recent first, bounded.
        let now = unix_secs(self.clock().now());
        let mut m = match manifest::read(&self.root(), request) {
            Ok(Lookup::Found(m)) => m,
            _ => Manifest::new(request),
        };
        m.insert(ResultRecord {
            key: key.hex(),
            headers,
            created: now,
            last_used: now,
        });
        let write = if racy.is_some() {
            Ok(())
        } else {
            manifest::write(&self.root(), &m, request)
        };
        if let Err(e) = write {
            // The entry is published; without its manifest line the next request
            // compiles again, and records it then.
            log::warn!("could not record {} in its manifest: {e}", &key.hex()[..16]);
        }
        // A crash before this point costs the next request a compile (which finds the
        // entry published and records it); never a wrong or partial result.
        super::pause_point("published");
        drop(guard);
        let super::Checked {
            dir: entry,
            artifact,
            ..
        } = self.published(&key)?;
        // Share it, under the result's lock (nothing removes it meanwhile); bounded by
        // the remote's timeout, never failing the request.
        if let (Some(remote), None) = (&self.remote, &racy) {
            match super::import::pack_dir(&entry) {
                Ok(packed) => {
                    let digests: Vec<(String, String)> = meta
                        .headers
                        .iter()
                        .map(|h| (h.path.clone(), h.blake3.clone()))
                        .collect();
                    budget.spend(|deadline| {
                        remote.upload(request, &key, &digests, &packed, deadline)
                    });
                }
                Err(e) => log::debug!("not uploading {}: {e}", &key.hex()[..16]),
            }
        }
        let mut fetched = self.fetched(
            key,
            entry,
            meta,
            Some(artifact),
            false,
            warnings,
            lock_wait,
            rguard,
        );
        fetched.unrecorded = racy;
        fetched.lock_waits.splice(0..0, guard_wait);
        Ok(fetched)
    }

    /// The first result of `request` whose headers match the files now, verified and
    /// held (shared) as any hit; `None` when none does. A manifest that fails its
    /// checks is not trusted: a warning, and `None` (the next build rewrites it).
    pub(crate) fn lookup(
        &self,
        request: &Key,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Fetched>> {
        let short = &request.hex()[..16];
        let m = match manifest::read(&self.root(), request) {
            Ok(Lookup::Found(m)) => m,
            Ok(Lookup::Missing) => return Ok(None),
            Ok(Lookup::Corrupt(why)) => {
                let w = format!("the manifest of {short}… is not trusted ({why}): rebuilt");
                log::warn!("{w}");
                warnings.push(w);
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::io(
                    "reading",
                    self.root().join(layout::manifest(request)),
                    e,
                ))
            }
        };
        // Header times are compared on the clock the kernel stamps files with: a header
        // written in this tick is too new to be vouched for by its signature.
        let now = manifest::file_clock();
        // A header this store found unchanged within the last second is not stat'ed
        // again (see `manifest::RECHECK_AFTER`).
        let recent = Some((&*self.recent, Instant::now()));
        for (i, r) in m.results.iter().enumerate() {
            let ResultCheck::Match { refreshed } = r.check_recent(now, recent) else {
                continue;
            };
            // The result key must be what the request and these headers give: a
            // manifest can never send a request to another result.
            let Ok(key) = r.key.parse::<Key>() else {
                continue;
            };
            if result_key(request, &r.digests()) != key {
                let w = format!(
                    "the manifest of {short}… names a result that its headers do not give: ignored"
                );
                log::warn!("{w}");
                warnings.push(w);
                continue;
            }
            let Some(mut f) = self.get_existing(&key, warnings)? else {
                continue; // removed by a collector, or corrupt: build it again
            };
            if f.meta.request_key.as_deref() != Some(request.hex().as_str()) {
                continue;
            }
            self.refresh_manifest(request, &m, i, refreshed);
            f.warnings.splice(0..0, warnings.drain(..));
            return Ok(Some(f));
        }
        Ok(None)
    }

    /// Asks the remote tier for a result of `request` whose headers match the files here
    /// (by hash: this runs only on a local miss), fetches it, and imports it (which
    /// checks everything it claims). The caller holds the request key's exclusive lock.
    /// Everything, hashing the headers a result names included, is within `budget`;
    /// a header outside `scope` is never read.
    fn fetch_remote(
        &self,
        request: &Key,
        scope: &SearchScope,
        budget: &Budget,
    ) -> Result<Option<Fetched>> {
        let Some(remote) = self.remote.clone() else {
            return Ok(None);
        };
        budget.spend(|deadline| {
            'levels: for level in 0..remote.levels() {
                for r in remote.results_at(level, request, deadline) {
                    match headers_here(&r.headers, scope, deadline) {
                        HeadersHere::Same => {}
                        HeadersHere::Differ => continue,
                        HeadersHere::OutOfTime => break 'levels,
                        HeadersHere::Refused(why) => {
                            remote.refused(request, &r.key, &why, false, deadline);
                            continue;
                        }
                    }
                    let Some(packed) = remote.fetch(&r.key, deadline) else {
                        continue;
                    };
                    match self.import_result(&packed, Some(&r.key), true, scope, Some(deadline))? {
                        super::import::Imported::Taken(f) => {
                            let mut f = *f;
                            f.hit = true;
                            f.tier = super::remote::Tier::Remote;
                            // Refill the faster tiers of a chain with what passed.
                            remote.taken(request, &r.key, &r.headers, &packed, deadline);
                            return Ok(Some(f));
                        }
                        super::import::Imported::Refused(why) => remote.refused(
                            request,
                            &r.key,
                            &why.to_string(),
                            why.is_fault_of_value(),
                            deadline,
                        ),
                    }
                }
            }
            remote.missed(request);
            Ok(None)
        })
    }

    /// Writes back what a hit learned (headers whose signature changed but not their
    /// contents; the use of a result), if the request's lock is free right now and
    /// there is something worth writing. Never waits, never fails the caller.
    fn refresh_manifest(
        &self,
        request: &Key,
        m: &Manifest,
        index: usize,
        refreshed: Vec<(usize, HeaderRecord)>,
    ) {
        let now = unix_secs(self.clock().now());
        let resolution = self.config().last_use_resolution.as_secs();
        let Some(taken) = m.results.get(index) else {
            return;
        };
        let rkey = taken.key.clone();
        let stale_use = now.saturating_sub(taken.last_used) >= resolution.max(1);
        if refreshed.is_empty() && index == 0 && !stale_use {
            return;
        }
        let Ok(Some(_guard)) = lock::try_lock_exclusive(&self.root(), &layout::lock(request))
        else {
            return;
        };
        // Again under the lock: the manifest may have changed since.
        let Ok(Lookup::Found(mut m)) = manifest::read(&self.root(), request) else {
            return;
        };
        let Some(i) = m.results.iter().position(|r| r.key == rkey) else {
            return;
        };
        for (h, rec) in refreshed {
            if let Some(slot) = m.results[i].headers.get_mut(h) {
                if slot.path == rec.path && slot.blake3 == rec.blake3 {
                    *slot = rec;
                }
            }
        }
        m.touch(i, now);
        let _ = manifest::write(&self.root(), &m, request);
    }

    /// A hit only: the entry of `key`, verified under a shared lock; `None` when it is
    /// missing. A corrupt one is quarantined (under the exclusive lock), with a warning,
    /// and `None` returned.
    pub(crate) fn get_existing(
        &self,
        key: &Key,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Fetched>> {
        if self.root().lstat_fast(layout::entry(key)).is_err() {
            return Ok(None);
        }
        let lock_rel = layout::lock(key);
        let guard = lock::lock_shared(&self.root(), &lock_rel)?;
        let waited = guard.waited();
        match check_entry_in(&self.root(), key, false) {
            Ok(Some(c)) => return Ok(Some(self.hit(key, c, Vec::new(), waited, guard))),
            Ok(None) => return Ok(None),
            Err(VerifyError::Corrupt(_)) => {}
            Err(e) => return Err(e.into_error()),
        }
        drop(guard);
        let _guard = lock::lock_exclusive(&self.root(), &lock_rel, &mut |_| {})?;
        if let Err(VerifyError::Corrupt(c)) = check_entry_in(&self.root(), key, false) {
            let short = &key.hex()[..16];
            let w = match self.quarantine_entry(key)? {
                Some(moved) => format!(
                    "corrupt cache entry {short}… ({c}): moved to {} and rebuilt",
                    moved.display()
                ),
                None => format!("corrupt cache entry {short}… ({c}): removed and rebuilt"),
            };
            log::warn!("{w}");
            warnings.push(w);
        }
        Ok(None)
    }
}

/// How a remote result's headers compare with this machine's files.
#[derive(Debug, PartialEq, Eq)]
enum HeadersHere {
    /// Every one has the same contents here.
    Same,
    /// One differs or is missing: not this machine's result.
    Differ,
    /// The request's remote budget ran out while hashing.
    OutOfTime,
    /// One must not be read at all (outside the request's include search, not a
    /// regular file, too large): the record is refused, and why.
    Refused(String),
}

/// Compares the (path, blake3) pairs a remote names with the files here, reading only
/// regular files inside `scope`, by the deadline.
fn headers_here(
    headers: &[(String, String)],
    scope: &SearchScope,
    deadline: std::time::Instant,
) -> HeadersHere {
    use crate::fsx::NamedFileError;
    // Every path is judged before any file is read: a record that names one file out
    // of bounds reads none.
    if let Some((p, _)) = headers
        .iter()
        .find(|(p, _)| !scope.allows(std::path::Path::new(p)))
    {
        return HeadersHere::Refused(format!(
            "it names {p:?}, outside this request's include search"
        ));
    }
    for (path, hash) in headers {
        match manifest::hash_header(std::path::Path::new(path), Some(deadline)) {
            Ok(h) if h == *hash => {}
            Ok(_) => return HeadersHere::Differ,
            Err(NamedFileError::Deadline(_)) => return HeadersHere::OutOfTime,
            Err(NamedFileError::Io(..)) => return HeadersHere::Differ,
            Err(e) => return HeadersHere::Refused(e.to_string()),
        }
    }
    HeadersHere::Same
}
