//! Artifact groups (files another compiler built) kept by the store's protocol: put and
//! get, one build for racing processes (the lease), a corrupt member quarantined, the
//! collectors, verify, export and import.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use xcache::store::group::{GroupLeased, GroupSpec};
use xcache::Store;

fn spec(material: &str) -> GroupSpec {
    GroupSpec::new("numba", material, "mod.f").unwrap()
}

fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "data.nbc".to_string(),
            b"pickled compile result, long enough to flip".to_vec(),
        ),
        (
            "index.json".to_string(),
            br#"{"sig": "(float64,)", "target": "x86_64"}"#.to_vec(),
        ),
    ]
}

#[test]
fn a_group_is_put_once_and_got_whole() {
    let tc = TestCache::new();
    let store = Store::open(&tc.config()).unwrap();
    assert!(store.get_group(&spec("a")).unwrap().is_none());
    let f = store.put_group(&spec("a"), &files()).unwrap();
    assert!(!f.hit);
    assert_eq!(f.meta.producer(), "numba");
    drop(f);
    let g = store.get_group(&spec("a")).unwrap().expect("a hit");
    assert!(g.hit);
    let got: Vec<(String, Vec<u8>)> = g
        .group_files()
        .into_iter()
        .map(|(n, p)| (n, std::fs::read(p).unwrap()))
        .collect();
    let mut want = files();
    want.sort();
    assert_eq!(got, want);
    // Another material, another producer: other groups.
    assert!(store.get_group(&spec("b")).unwrap().is_none());
    let other = GroupSpec::new("triton", "a", "k").unwrap();
    assert!(store.get_group(&other).unwrap().is_none());
    // Bad member names are refused before anything is written.
    let e = store
        .put_group(&spec("c"), &[("../x".to_string(), vec![1])])
        .unwrap_err();
    assert!(e.to_string().contains("plain file name"), "{e}");
    // Listed, sized and verified as any entry.
    let v = xcache::ops::verify::verify(&store, false).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.ok, 1);
}

#[test]
fn a_flipped_byte_in_any_member_is_quarantined_never_served() {
    let tc = TestCache::new();
    let store = Store::open(&tc.config()).unwrap();
    let f = store.put_group(&spec("a"), &files()).unwrap();
    let paths = f.group_files();
    drop(f);
    for (_, p) in &paths {
        flip_bytes(p);
        let g = store.get_group(&spec("a")).unwrap();
        assert!(g.is_none(), "a corrupt {} is never served", p.display());
        // Rebuilt by the next producer; then whole again.
        let f = store.put_group(&spec("a"), &files()).unwrap();
        assert!(!f.hit);
    }
    let q = tc.compiledir().join("quarantine");
    assert_eq!(std::fs::read_dir(q).unwrap().count(), paths.len());
}

/// Worker side: leases the group named by XC_MATERIAL, "compiles" (appends a line to
/// XC_LOG, the count of compiles) and publishes, or hits.
#[test]
fn group_worker() {
    let Ok(base) = std::env::var("XC_BASE") else {
        return;
    };
    let mut config = xcache::Config::defaults();
    config.set_base_dir(base);
    let store = Store::open(&config).unwrap();
    let material = std::env::var("XC_MATERIAL").unwrap();
    match store.lease_group(&spec(&material)).unwrap() {
        GroupLeased::Found(f) => assert!(!f.group_files().is_empty()),
        GroupLeased::Lease(mut lease) => {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(std::env::var("XC_LOG").unwrap())
                .unwrap();
            writeln!(log, "compiled").unwrap();
            for (n, b) in files() {
                lease.add(&n, &b).unwrap();
            }
            lease.publish(Duration::from_millis(5)).unwrap();
        }
    }
}

#[test]
fn eight_processes_asking_for_one_cold_group_cost_one_build() {
    let tc = TestCache::new();
    let log = tc.dir.path().join("compiles.log");
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "group_worker", "--test-threads", "1"])
                .env("XC_BASE", tc.base())
                .env("XC_MATERIAL", "cold")
                .env("XC_LOG", &log)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let n = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(n, 1, "one build for eight processes");
}

#[test]
fn an_abandoned_lease_publishes_nothing_and_frees_the_key() {
    let tc = TestCache::new();
    let store = Store::open(&tc.config()).unwrap();
    match store.lease_group(&spec("x")).unwrap() {
        GroupLeased::Lease(mut l) => {
            l.add("data.nbc", b"half").unwrap();
        }
        GroupLeased::Found(_) => panic!("cold"),
    }
    assert!(store.get_group(&spec("x")).unwrap().is_none());
    // The next asker gets the lease at once (nobody holds the key).
    assert!(matches!(
        store.lease_group(&spec("x")).unwrap(),
        GroupLeased::Lease(_)
    ));
}

#[test]
fn groups_travel_in_bundles_and_are_checked_on_the_way_in() {
    use xcache::remote::bundle;
    let tc = TestCache::new();
    let store = Store::open(&tc.config()).unwrap();
    store.put_group(&spec("a"), &files()).unwrap();
    let out = tc.dir.path().join("b.tar.zst");
    bundle::export_bundle(&store, &out, None, &bundle::Compiledirs::Current).unwrap();
    let other = TestCache::new();
    let there = Store::open(&other.config()).unwrap();
    let r = bundle::import_bundle(&there, &out).unwrap();
    assert_eq!(
        r.count(|o| *o == bundle::ImportOutcome::Imported),
        1,
        "{r:?}"
    );
    let g = there.get_group(&spec("a")).unwrap().expect("imported");
    assert_eq!(std::fs::read(&g.group_files()[0].1).unwrap(), files()[0].1);
}
