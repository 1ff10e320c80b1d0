//! Shared-group mode, in a test binary of its own: the mode is per process.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use xcache::{Jit, Language, SourceRequest};

fn saxpy(tag: &str) -> SourceRequest {
    SourceRequest::new(Language::C, saxpy_source(tag)).named("saxpy.c")
}

#[test]
fn shared_group_mode_trusts_the_group_and_nobody_else() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make directories of another user");
        return;
    }
    let tc = TestCache::new();
    // A team cache: owned by another user, group 0, group-writable, setgid.
    std::fs::create_dir_all(tc.base()).unwrap();
    std::os::unix::fs::chown(tc.base(), Some(65534), Some(0)).unwrap();
    std::fs::set_permissions(tc.base(), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let e = Jit::new(tc.config()).unwrap_err().to_string();
    assert!(
        e.contains("owned by uid 65534") && e.contains("shared_group"),
        "{e}"
    );

    let mut shared = tc.config();
    shared.set("shared_group", "0").unwrap();
    let jit = Jit::new(shared.clone()).unwrap();
    let c = jit.compile(&saxpy("team")).unwrap();
    check_saxpy(*unsafe { c.symbol::<SaxpyFn>("saxpy") }.unwrap());
    use std::os::unix::fs::MetadataExt;
    let entry = c.path.parent().unwrap();
    assert_eq!(
        std::fs::metadata(entry).unwrap().mode() & 0o7777,
        0o2775,
        "group-writable, setgid"
    );
    assert_eq!(std::fs::metadata(&c.path).unwrap().mode() & 0o777, 0o664);
    // Another member's entry (another owner, the group's) is a hit.
    std::os::unix::fs::chown(entry, Some(65534), Some(0)).unwrap();
    std::os::unix::fs::chown(&c.path, Some(65534), Some(0)).unwrap();
    assert!(
        Jit::new(shared.clone())
            .unwrap()
            .compile(&saxpy("team"))
            .unwrap()
            .hit
    );
    // Writable by others is refused even for the group.
    std::fs::set_permissions(&c.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let again = Jit::new(shared).unwrap().compile(&saxpy("team")).unwrap();
    assert!(!again.hit, "an artifact others may write is never loaded");
}
