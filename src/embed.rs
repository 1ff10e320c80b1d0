//! Handles for embedders (the Python package, the C ABI): a compiled, loaded library
//! whose file also stays in place for as long as the handle lives.
//!
//! [`Jit::compile`] keeps the *library* loaded; [`Jit::compile_held`] also keeps its
//! *path* valid, by a [`Pin`] on the entry (a shared lock that every collector, in any
//! process, respects). The pin is taken after the load; if a collector removed the
//! entry in between (it can: the load's own lock is released on return), the entry is
//! rebuilt through the cache and pinned again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::compile::SourceRequest;
use crate::error::{Error, Result};
use crate::runtime::{Compiled, Jit};
use crate::store::pin::{Pin, Pinned};

/// A loaded library whose file stays valid while this lives. Cloning shares the pin.
#[derive(Debug, Clone)]
pub struct HeldLibrary {
    /// The loaded library and what its request cost.
    pub compiled: Compiled,
    /// Where its file is, for as long as this lives (or until `valid_until`).
    pub path: PathBuf,
    /// `None` while pinned (valid for this value's life); otherwise the end of the
    /// hand-out grace (a private build, in a cache that could not be written).
    pub valid_until: Option<SystemTime>,
    pin: Option<Arc<Pin>>,
}

impl HeldLibrary {
    /// The pin, when the file is in the cache.
    pub fn pin(&self) -> Option<&Arc<Pin>> {
        self.pin.as_ref()
    }
}

/// How often the pin may find its entry removed before giving up (each time means a
/// collector removed it between our load and our lock, and we rebuilt it).
const PIN_ATTEMPTS: usize = 8;

impl Jit {
    /// The fast path of [`Jit::compile_held`]: the request was loaded by this `Jit` and
    /// its entry is pinned by this process already. Nothing blocks; `None` means "call
    /// `compile_held`".
    pub fn held_if_loaded(&self, req: &SourceRequest) -> Option<HeldLibrary> {
        let compiled = self.loaded(req)?;
        let pin = self.store().live_pin(&compiled.path)?;
        self.stats().memory_hit();
        Some(HeldLibrary {
            path: compiled.path.clone(),
            compiled,
            valid_until: None,
            pin: Some(pin),
        })
    }

    /// [`Jit::compile`], and a pin that keeps the artifact's file in place while the
    /// returned handle (or a clone) lives. See the [module docs](self).
    pub fn compile_held(&self, req: &SourceRequest) -> Result<HeldLibrary> {
        let compiled = self.compile(req)?;
        let mut path = compiled.path.clone();
        for _ in 0..PIN_ATTEMPTS {
            match self.store().pin(&path)? {
                Pinned::Held(pin) => {
                    return Ok(HeldLibrary {
                        compiled,
                        path,
                        valid_until: None,
                        pin: Some(pin),
                    })
                }
                Pinned::NotAnEntry => {
                    // A private build (the cache cannot be written): the loaded copy's
                    // file went with its directory; hand out one that stays for the
                    // grace period.
                    let out = self.build(req)?;
                    if self.store().entry_of_artifact(&out.path).is_some() {
                        path = out.path;
                        continue;
                    }
                    return Ok(HeldLibrary {
                        compiled,
                        path: out.path,
                        valid_until: out.valid_until,
                        pin: None,
                    });
                }
                Pinned::Gone => path = self.build(req)?.path,
            }
        }
        Err(Error::InvalidRequest(format!(
            "the entry of {} was removed {PIN_ATTEMPTS} times while pinning it: is something deleting the cache by hand?",
            compiled.path.display()
        )))
    }
}
