//! Import within limits: bundles built as an attacker builds them, from a real export
//! (so that every key derives), with each library replaced by a gigabyte of zeros that
//! zstd holds in a few kilobytes. The import refuses them within its limits, and the
//! base dir's size and the process's peak memory show what it cost; the same through
//! the Rust API, with the allocations of the importing thread counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{read_real, run_bounded, tree_bytes, zstd_frame, Env, Part};
use serde_json::Value;
use xcache::remote::bundle::{self, ImportOutcome, Refusal};

/// Counts what each thread has allocated, and its peak, so that a test can bound what
/// one call allocates while other tests run beside it.
struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: nothing is counted while a thread's locals are being torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is handed to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as i64 - l.size() as i64);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most this thread had allocated at once while `f` ran, beyond what it held before.
fn peak_allocated<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let out = f();
    (out, (PEAK.with(Cell::get) - before).max(0) as u64)
}

const MIB: u64 = 1 << 20;

/// blake3 of `n` zeros, hex.
fn zeros_hash(n: u64) -> String {
    let chunk = vec![0u8; MIB as usize];
    let mut h = blake3::Hasher::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(MIB);
        h.update(&chunk[..k as usize]);
        left -= k;
    }
    h.finalize().to_hex().to_string()
}

/// Writes a bomb built from the real bundle `real`: each entry keeps its keys, and its
/// library becomes `zeros` bytes of zeros, declared as such in its `entry.json` (size
/// and blake3), so that every check but the size passes. Returns its size on disk.
fn write_bomb(real: &Path, out: &Path, zeros: u64, declare_size: bool) -> u64 {
    let (mut index, entries) = read_real(real);
    let hash = zeros_hash(zeros);
    let mut values = Vec::new();
    index.entries.clear();
    for mut e in entries {
        let artifact = e.meta["artifact"]["file"].as_str().unwrap().to_string();
        e.meta["artifact"]["size"] = zeros.into();
        e.meta["artifact"]["blake3"] = hash.clone().into();
        let meta = serde_json::to_vec(&e.meta).unwrap();
        let mut head = Vec::new();
        head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        head.extend_from_slice(&meta);
        head.extend_from_slice(&(e.files.len() as u32).to_le_bytes());
        let mut parts = Vec::new();
        for (name, bytes) in &e.files {
            head.extend_from_slice(&(name.len() as u16).to_le_bytes());
            head.extend_from_slice(name.as_bytes());
            if *name == artifact {
                head.extend_from_slice(&zeros.to_le_bytes());
                parts.push(Part::Bytes(std::mem::take(&mut head)));
                parts.push(Part::Zeros(zeros));
            } else {
                head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                head.extend_from_slice(bytes);
            }
        }
        parts.push(Part::Bytes(head));
        let mut value = b"XCE1\0".to_vec();
        value.extend_from_slice(&zstd_frame(&parts, declare_size));
        e.index.size = value.len() as u64;
        e.index.blake3 = blake3::hash(&value).to_hex().to_string();
        index.entries.push(e.index);
        values.extend_from_slice(&value);
    }
    let f = std::fs::File::create(out).unwrap();
    bundle::write_bundle(f, &index, &mut &values[..], None).unwrap();
    std::fs::metadata(out).unwrap().len()
}

/// `xcache ARGS` against the base dir `base` (a name inside the test's temp dir).
fn xc(env: &Env, base: &str, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    c.env("XCACHE_DIR", env.dir.path().join(base));
    c
}

/// Compiles three sources into base dir `a` and exports them: the attacker's material.
fn real_bundle(env: &Env) -> PathBuf {
    for (name, body) in [
        ("one.c", "int one(void) { return 1; }\n"),
        ("two.c", "int two(void) { return 2; }\n"),
        ("three.c", "int three(void) { return 3; }\n"),
    ] {
        let src = env.file(name, body);
        let o = xc(env, "a", &["compile", src.to_str().unwrap()])
            .output()
            .unwrap();
        common::stdout(&o);
    }
    let out = env.dir.path().join("real.tar.zst");
    let o = xc(env, "a", &["export", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    common::stdout(&o);
    out
}

fn outcomes(report: &Value) -> Vec<(String, String, String)> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Peak memory allowed to an import of a few small entries: the binary, its libraries
/// and buffers (an import of the real bundle peaks near 10 MiB in a debug build).
const RSS_LIMIT_KIB: u64 = 64 << 10;

#[test]
fn a_bomb_bundle_is_refused_within_its_limits_through_the_cli() {
    let env = Env::new();
    let real = real_bundle(&env);
    // The figure of the report: three entries with valid keys, each declaring a library
    // of just under a gigabyte (under the 1 GiB that was the only limit).
    let zeros = (1 << 30) - MIB;
    for (n, declared) in [true, false].into_iter().enumerate() {
        let bomb = env.dir.path().join(format!("bomb{n}.tar.zst"));
        let on_disk = write_bomb(&real, &bomb, zeros, declared);
        assert!(on_disk < 200 << 10, "small on disk: {on_disk} bytes");
        let base = format!("b{n}");
        let r = run_bounded(
            xc(&env, &base, &["import", bomb.to_str().unwrap(), "--json"]),
            env.dir.path(),
            Duration::from_secs(120),
        );
        let written = tree_bytes(&env.dir.path().join(&base));
        eprintln!(
            "bomb of {on_disk} bytes (frame size declared: {declared}): exit {:?}, {} bytes written, peak RSS {} KiB",
            r.code, written, r.max_rss_kib
        );
        assert!(!r.timed_out, "{r:?}");
        assert_eq!(r.code, Some(1), "{r:?}");
        let report: Value = serde_json::from_str(&r.stdout).unwrap();
        let got = outcomes(&report);
        assert_eq!(got.len(), 3, "{report}");
        for (key, outcome, reason) in &got {
            assert_eq!(outcome, "refused", "{report}");
            assert!(
                reason.contains("max_entry_size") && reason.contains("Fix:"),
                "the limit and how to raise it: {reason}"
            );
            assert!(
                r.stderr.contains(&key[..16]) && r.stderr.contains("not imported"),
                "a warning names the entry: {}",
                r.stderr
            );
        }
        assert!(report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["refusal"] == "too-large"));
        assert_eq!(report["unpacked"], 0, "{report}");
        assert_eq!(report["limits"]["entry"], 256 * MIB, "{report}");
        assert!(written < MIB, "{written} bytes written");
        assert!(
            r.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            r.max_rss_kib
        );
    }
    // In words: each row names the entry's source and the setting.
    let bomb = env.dir.path().join("bomb0.tar.zst");
    let o = xc(&env, "c", &["import", bomb.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("REFUSED")
            && text.contains("two.c")
            && text.contains("max_entry_size")
            && text.contains("3 refused"),
        "{text}"
    );
    // Nothing was published: the requests compile.
    let listed = common::stdout(&xc(&env, "c", &["list", "--json"]).output().unwrap());
    assert_eq!(listed.trim(), "[]");
}

#[test]
fn the_total_limit_stops_an_import_at_max_size() {
    let env = Env::new();
    let real = real_bundle(&env);
    // Each entry within the entry limit, the three beyond the total.
    let bomb = env.dir.path().join("bomb.tar.zst");
    write_bomb(&real, &bomb, 10 * MIB, true);
    let mut c = xc(&env, "b", &["import", bomb.to_str().unwrap(), "--json"]);
    c.env("XCACHE_FLAGS", "handout_grace=0s,max_size=24MiB");
    let r = run_bounded(c, env.dir.path(), Duration::from_secs(120));
    assert_eq!(r.code, Some(1), "{r:?}");
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    let got = outcomes(&report);
    assert_eq!(
        got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
        ["imported", "imported", "refused"],
        "{report}"
    );
    assert!(
        got[2].2.contains("max_size") && got[2].2.contains("of the 25165824"),
        "{}",
        got[2].2
    );
    let written = tree_bytes(&env.dir.path().join("b"));
    assert!(
        written > 20 * MIB && written < 25 * MIB,
        "{written} bytes written"
    );
    assert!(
        r.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        r.max_rss_kib
    );
    // Raised as the message says: the rest comes in.
    let mut c = xc(&env, "b", &["import", bomb.to_str().unwrap(), "--json"]);
    c.env("XCACHE_FLAGS", "handout_grace=0s,max_size=1GiB");
    let r = run_bounded(c, env.dir.path(), Duration::from_secs(120));
    assert_eq!(r.code, Some(0), "{r:?}");
    let got = outcomes(&serde_json::from_str(&r.stdout).unwrap());
    assert_eq!(
        got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
        ["already-here", "already-here", "imported"]
    );
}

#[test]
fn an_archive_that_expands_like_a_bomb_is_cut_off_through_the_cli() {
    let env = Env::new();
    let real = real_bundle(&env);
    // The real archive, with a GNU long name of a gigabyte of zeros after the index
    // (which the tar reader would read into memory whole), compressed by hand.
    let tar_bytes = zstd::stream::decode_all(std::fs::File::open(&real).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let first_end = {
        let mut entries = archive.entries().unwrap();
        let index = entries.next().unwrap().unwrap();
        let start = index.raw_file_position() as usize;
        start + (index.size() as usize).div_ceil(512) * 512
    };
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    let mut head = tar_bytes[..first_end].to_vec();
    head.extend_from_slice(h.as_bytes());
    let parts = [
        Part::Bytes(head),
        Part::Zeros(1 << 30),
        Part::Bytes(tar_bytes[first_end..].to_vec()),
    ];
    let bomb = env.dir.path().join("outer.tar.zst");
    std::fs::write(&bomb, zstd_frame(&parts, false)).unwrap();
    let r = run_bounded(
        xc(&env, "b", &["import", bomb.to_str().unwrap(), "--json"]),
        env.dir.path(),
        Duration::from_secs(120),
    );
    eprintln!(
        "outer bomb: exit {:?}, peak RSS {} KiB",
        r.code, r.max_rss_kib
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        report["damaged"].as_str().unwrap().contains("expands"),
        "{report}"
    );
    assert!(
        outcomes(&report).iter().all(|g| g.1 == "corrupt"),
        "{report}"
    );
    assert!(
        r.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB",
        r.max_rss_kib
    );
}

#[test]
fn a_bomb_is_refused_through_the_rust_api_with_allocations_bounded() {
    let env = Env::new();
    let real = real_bundle(&env);
    let bomb = env.dir.path().join("bomb.tar.zst");
    write_bomb(&real, &bomb, 512 * MIB, false);
    let mut config = xcache::Config::defaults();
    config.set_base_dir(env.dir.path().join("api"));
    config.set("max_entry_size", "8MiB").unwrap();
    let store = xcache::Store::open(&config).unwrap();
    let (report, peak) = peak_allocated(|| bundle::import_bundle(&store, &bomb).unwrap());
    for e in &report.entries {
        assert!(
            matches!(
                &e.outcome,
                ImportOutcome::Refused { refusal: Refusal::TooLarge, reason }
                    if reason.contains("8388608") && reason.contains("max_entry_size")
            ),
            "{:?}",
            e.outcome
        );
    }
    assert!(!report.clean());
    assert_eq!(report.unpacked, 0);
    assert!(peak < 2 * 8 * MIB, "{peak} bytes allocated at most");
    assert!(tree_bytes(&env.dir.path().join("api")) < MIB);
    // Within the limit, the same entries (as large as the limit allows) are taken,
    // holding about one entry at a time.
    let fits = env.dir.path().join("fits.tar.zst");
    write_bomb(&real, &fits, 6 * MIB, false);
    let (report, peak) = peak_allocated(|| bundle::import_bundle(&store, &fits).unwrap());
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.count(|o| *o == ImportOutcome::Imported), 3);
    assert!(report.unpacked > 18 * MIB);
    assert!(peak < 2 * 8 * MIB, "{peak} bytes allocated at most");
}
