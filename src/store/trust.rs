//! Who may have written what xcache loads: the trust rules, and the modes xcache gives
//! what it creates.
//!
//! Default (private cache): directories and artifacts must be owned by the current user
//! and writable by nobody else; xcache creates directories 0755 and files 0644.
//!
//! Shared-group mode (the `shared_group` setting, for a cache shared by a team or a CI
//! fleet): a directory or file may also belong to another user if its group is the
//! shared group, and may be writable by that group; never by others. xcache then
//! creates directories 2775 (setgid, so what is made inside inherits the group) and
//! files 0664. The base dir must already belong to the group (`chgrp GROUP DIR &&
//! chmod 2775 DIR`).
//!
//! The mode is per process: the last [`crate::Store`] opened sets it.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

static SHARED_GID: AtomicI64 = AtomicI64::new(-1);

/// Sets (or clears) the shared group for this process.
pub fn set_shared_group(gid: Option<u32>) {
    SHARED_GID.store(gid.map_or(-1, i64::from), Ordering::Relaxed);
}

/// The shared group, if shared-group mode is on.
pub fn shared_group() -> Option<u32> {
    u32::try_from(SHARED_GID.load(Ordering::Relaxed)).ok()
}

/// Mode of directories xcache creates.
pub fn dir_mode() -> u32 {
    if shared_group().is_some() {
        0o2775
    } else {
        0o755
    }
}

/// Mode of files xcache creates.
pub fn file_mode() -> u32 {
    if shared_group().is_some() {
        0o664
    } else {
        0o644
    }
}

/// Why a directory or file must not be trusted, as (reason, fix); `None` if it may be.
/// Pure: owner, group and mode of the path, the current user and the shared group.
pub fn problem(
    path: &Path,
    owner: u32,
    group: u32,
    mode: u32,
    euid: u32,
    shared: Option<u32>,
) -> Option<(String, String)> {
    let shown = path.display();
    let in_group = shared == Some(group);
    if owner != euid && !in_group {
        let fix = match shared {
            Some(g) => format!("`chgrp -R {g} {shown}` if it belongs to the shared group, or use a cache directory of your own (set XCACHE_DIR)"),
            None => format!("use a cache directory of your own (set XCACHE_DIR), `chown -R {euid} {shown}` if it should be yours, or set shared_group if it is a team's"),
        };
        return Some((
            format!("it is owned by uid {owner}, not by you (uid {euid}), and xcache loads code from it"),
            fix,
        ));
    }
    let group_w = mode & 0o020 != 0;
    let other_w = mode & 0o002 != 0;
    if other_w || (group_w && !in_group) {
        let who = match (group_w, other_w) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Some((
            format!(
                "it is writable by {who} (mode {:03o}), so they could plant code that xcache would load",
                mode & 0o777
            ),
            if group_w && !other_w {
                format!("`chmod g-w {shown}`, or set shared_group to its group if the group is trusted")
            } else {
                format!("`chmod go-w {shown}`, or set XCACHE_DIR to a private directory")
            },
        ));
    }
    None
}

/// [`problem`] for a file's metadata, with this process's user and shared group; the
/// reason only.
pub fn untrusted(what: &str, md: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let euid = crate::fsx::euid();
    problem(
        Path::new(what),
        md.uid(),
        md.gid(),
        md.mode(),
        euid,
        shared_group(),
    )
    .map(|(reason, _)| format!("{what}: {reason}"))
}

/// [`untrusted`] for a `stat` result.
pub fn untrusted_stat(what: &str, st: &rustix::fs::Stat) -> Option<String> {
    problem(
        Path::new(what),
        st.st_uid,
        st.st_gid,
        st.st_mode,
        crate::fsx::euid(),
        shared_group(),
    )
    .map(|(reason, _)| format!("{what}: {reason}"))
}

/// The error for something planted inside the cache: a file or directory that xcache
/// did not make (or that someone else could write) where xcache writes.
pub fn refused(path: &Path, reason: &str) -> crate::Error {
    crate::Error::Untrusted {
        path: path.to_path_buf(),
        reason: reason.to_string(),
        fix: "remove it (`xcache verify --repair` removes what it finds planted), and find out who put it there; xcache never writes through it".into(),
    }
}

/// The error for a symbolic link met while opening `root/rel` without following
/// links: names the link itself.
pub fn refused_link(root: &crate::fsx::Root, rel: &Path) -> crate::Error {
    let link = root.first_link(rel).unwrap_or_else(|| root.join(rel));
    let what = if link == root.join(rel) {
        "it is a symbolic link"
    } else {
        "it is a symbolic link on the way to a file xcache writes"
    };
    refused(
        &link,
        &format!("{what}, and xcache never follows links inside its cache (one could make it write outside)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_table() {
        let p = Path::new("/c");
        let me = 1000;
        // (owner, group, mode, shared group, refused because ...)
        type Case<'a> = (u32, u32, u32, Option<u32>, Option<&'a str>);
        let cases: &[Case] = &[
            (me, 100, 0o40755, None, None),
            (me, 100, 0o40700, None, None),
            (0, 100, 0o40755, None, Some("owned by uid 0")),
            (me, 100, 0o40775, None, Some("writable by its group")),
            (me, 100, 0o40757, None, Some("writable by others")),
            (me, 100, 0o40777, None, Some("group and others")),
            // Shared group 100: the group may own and write, others never.
            (0, 100, 0o42775, Some(100), None),
            (me, 100, 0o42775, Some(100), None),
            (0, 200, 0o42775, Some(100), Some("owned by uid 0")),
            (me, 200, 0o40775, Some(100), Some("writable by its group")),
            (
                0,
                100,
                0o42777,
                Some(100),
                Some("writable by group and others"),
            ),
        ];
        for &(owner, group, mode, shared, want) in cases {
            let got = problem(p, owner, group, mode, me, shared);
            match want {
                None => assert_eq!(got, None, "{owner} {group} {mode:o} {shared:?}"),
                Some(w) => {
                    let (reason, fix) = got
                        .unwrap_or_else(|| panic!("{owner} {group} {mode:o} {shared:?} accepted"));
                    assert!(reason.contains(w), "{reason}");
                    assert!(!fix.is_empty());
                }
            }
        }
    }

    #[test]
    fn groups_resolve() {
        use crate::fsx::resolve_group;
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-xyz").is_err());
    }
}
