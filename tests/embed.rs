//! Handles for embedders (`Jit::compile_held`, `Store::pin`): the file of a held
//! library survives every collector while the handle lives, and only then.

mod common;

use common::TestCache;
use xcache::store::pin::Pinned;
use xcache::{Jit, Language, SourceRequest};

fn req(n: i32) -> SourceRequest {
    SourceRequest::new(Language::C, format!("int f(void) {{ return {n}; }}"))
}

#[test]
fn a_held_library_survives_clear_force_and_prune_until_dropped() {
    let t = TestCache::new();
    let jit = Jit::new(t.config()).unwrap();
    let held = jit.compile_held(&req(1)).unwrap();
    assert!(held.pin().is_some() && held.valid_until.is_none());
    let path = held.path.clone();
    assert!(path.is_file());
    // Another handle on the same entry shares the pin.
    let again = jit.compile_held(&req(1)).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        held.pin().unwrap(),
        again.pin().unwrap()
    ));

    // A second runtime (as another process would) cleans with force, and prunes.
    let other = Jit::new(t.config()).unwrap();
    let report = other.store().clear(true, false).unwrap();
    assert_eq!(report.removed_entries, 0, "{report:?}");
    let opts = xcache::ops::clean::PruneOptions {
        max_size: Some(1),
        older_than: None,
        stale: false,
        force: false,
        dry_run: false,
    };
    assert_eq!(other.store().prune(&opts).unwrap().removed_entries, 0);
    assert!(path.is_file());

    drop(held);
    assert!(path.is_file(), "the clone still pins it");
    drop(again);
    let report = other.store().clear(true, false).unwrap();
    assert_eq!(report.removed_entries, 1, "{report:?}");
    assert!(!path.exists());
}

#[test]
fn pinning_a_removed_entry_says_gone_and_compile_held_rebuilds_it() {
    let t = TestCache::new();
    let jit = Jit::new(t.config()).unwrap();
    let path = jit.compile(&req(2)).unwrap().path;
    // Collected between the load and the pin (nothing holds it: Jit::compile released
    // its lock on return).
    let other = Jit::new(t.config()).unwrap();
    assert_eq!(other.store().clear(true, false).unwrap().removed_entries, 1);
    assert!(matches!(jit.store().pin(&path).unwrap(), Pinned::Gone));
    // The Jit still has it loaded (memory hit), so compile_held must republish it.
    let held = jit.compile_held(&req(2)).unwrap();
    assert!(held.path.is_file() && held.pin().is_some());
    assert!(matches!(
        jit.store()
            .pin(std::path::Path::new("/not/an/entry/lib.so"))
            .unwrap(),
        Pinned::NotAnEntry
    ));
}
