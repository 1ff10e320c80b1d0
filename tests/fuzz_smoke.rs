//! The fuzz targets' properties (`src/fuzzing.rs`) on generated inputs, in every CI
//! run: random token soups built from the grammar's pieces and from hostile ones, and
//! random bytes; for packed values and bundles, a real export mutated at each layer
//! (the file, the tar stream, a value, the frame inside a value, the index), within a
//! few seconds, with what each call allocates counted. cargo-fuzz explores further
//! (`fuzz/README.md`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::time::{Duration, Instant};

use common::{Rng, TestCache};
use xcache::fuzzing;
use xcache::remote::bundle::{self, Compiledirs, ImportOutcome, Index};
use xcache::{Jit, Language, SourceRequest};

/// Counts what each thread allocates, so that one call's peak can be bounded while
/// other tests run beside it.
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
fn peak_allocated(f: impl FnOnce()) -> u64 {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    f();
    (PEAK.with(Cell::get) - before).max(0) as u64
}

const TOKENS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "x",
    "1",
    "0",
    "2.5",
    ".5",
    "1e10",
    "1e-3",
    "1e999",
    "99999999999999999999999",
    "9223372036854775808",
    "+",
    "-",
    "*",
    "/",
    "**",
    "(",
    ")",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    ",",
    "exp(",
    "log(",
    "sqrt(",
    "tanh(",
    "sin(",
    "cos(",
    "abs(",
    "min(",
    "max(",
    "pow(",
    "where(",
    "select(",
    "floor(",
    "ceil(",
    "round(",
    "log1p(",
    "expm1(",
    "sigmoid(",
    "erf(",
    "system(",
    " ",
    "\t",
    "\n",
    "\"",
    "'",
    ";",
    "{",
    "}",
    "/*",
    "*/",
    "//",
    "#",
    "\\",
    "[",
    "]",
    "&",
    "é",
    "\u{0}",
];

fn soup(rng: &mut Rng, max: u64) -> String {
    let n = rng.next() % max;
    (0..n)
        .map(|_| TOKENS[(rng.next() % TOKENS.len() as u64) as usize])
        .collect()
}

#[test]
fn expression_properties_hold_on_generated_input() {
    let mut rng = Rng(1);
    for _ in 0..30_000 {
        fuzzing::expr(soup(&mut rng, 24).as_bytes());
    }
    // Deep and long ones too.
    fuzzing::expr("(".repeat(10_000).as_bytes());
    fuzzing::expr(format!("{}a", "-".repeat(10_000)).as_bytes());
    fuzzing::expr(vec!["a"; 2_000].join("+").as_bytes());
    fuzzing::expr(vec!["a"; 256].join("*").as_bytes());
    fuzzing::expr(vec!["exp(a)"; 100].join("-").as_bytes());
}

#[test]
fn template_parameters_never_panic() {
    let mut rng = Rng(2);
    let keys = ["dtype", "arity", "expr", "op", "pre", "relu", "bogus", ""];
    let values = [
        "float32", "float64", "int32", "int64", "float16", "1", "3", "8", "9", "-1", "true", "no",
        "sum", "max", "x*x",
    ];
    for _ in 0..2_000 {
        let mut text = String::new();
        for _ in 0..(rng.next() % 6) {
            let k = keys[(rng.next() % keys.len() as u64) as usize];
            let v = if rng.next().is_multiple_of(3) {
                soup(&mut rng, 10)
            } else {
                values[(rng.next() % values.len() as u64) as usize].to_string()
            };
            text.push_str(&format!("{k}={v}\n"));
        }
        fuzzing::template_params(text.as_bytes());
    }
}

#[test]
fn config_and_metadata_parsers_never_panic() {
    let mut rng = Rng(3);
    let pieces = [
        "opt_level",
        "=",
        "\"3\"",
        "3",
        "max_size",
        "\"5GiB\"",
        "[params]",
        "\n",
        ",",
        "base_dir",
        "{os}",
        "{runtime}",
        "[",
        "]",
        "-",
        "xc",
        "{layout}",
        "compiledir_",
        "Linux",
        "6.1",
        "x86_64",
        "glibc2.36",
        "\"",
        "{",
        "}",
        ":",
        "key",
        "artifact",
        "null",
        "1e400",
        "true",
    ];
    for _ in 0..20_000 {
        let n = rng.next() % 16;
        let text: String = (0..n)
            .map(|_| pieces[(rng.next() % pieces.len() as u64) as usize])
            .collect();
        fuzzing::config(text.as_bytes());
        fuzzing::metadata(text.as_bytes());
        let bytes: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
        fuzzing::config(&bytes);
        fuzzing::metadata(&bytes);
    }
}

/// A real bundle taken apart: its index, and each value with the frame inside it.
struct Parts {
    index: Index,
    values: Vec<Vec<u8>>,
}

impl Parts {
    fn of(bundle_bytes: &[u8]) -> Parts {
        let tar = zstd::stream::decode_all(bundle_bytes).unwrap();
        let mut index = None;
        let mut values = Vec::new();
        for m in tar::Archive::new(&tar[..]).entries().unwrap() {
            let mut m = m.unwrap();
            let mut bytes = Vec::new();
            m.read_to_end(&mut bytes).unwrap();
            if index.is_none() {
                index = Some(Index::decode(&bytes).unwrap());
            } else {
                values.push(bytes);
            }
        }
        Parts {
            index: index.unwrap(),
            values,
        }
    }

    /// A bundle of these values, the index's sizes and hashes made to match them, so
    /// that a changed value reaches the decoder.
    fn bundle(&self, values: &[Vec<u8>]) -> Vec<u8> {
        let mut index = self.index.clone();
        for (e, v) in index.entries.iter_mut().zip(values) {
            e.size = v.len() as u64;
            e.blake3 = blake3::hash(v).to_hex().to_string();
        }
        let mut out = Vec::new();
        bundle::write_bundle(&mut out, &index, &mut values.concat().as_slice(), None).unwrap();
        out
    }

    /// A bundle whose index is `index_bytes` as they are (valid JSON or not).
    fn bundle_with_index(&self, index_bytes: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut members = vec![(bundle::INDEX_MEMBER.to_string(), index_bytes.to_vec())];
        for (e, v) in self.index.entries.iter().zip(&self.values) {
            members.push((e.member(), v.clone()));
        }
        for (name, bytes) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        zstd::bulk::compress(&tar.into_inner().unwrap(), 1).unwrap()
    }
}

/// The frame inside an unsigned value, and back.
fn frame_of(value: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(&value[5..]).unwrap()
}

fn value_of(frame: &[u8]) -> Vec<u8> {
    let mut v = b"XCE1\0".to_vec();
    v.extend_from_slice(&zstd::bulk::compress(frame, 1).unwrap());
    v
}

/// One random change: a bit, a byte, a number where sizes live, an insertion, a cut,
/// a repeat, or a truncation.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let pick = |rng: &mut Rng, n: usize| (rng.next() % n.max(1) as u64) as usize;
    let at = pick(rng, bytes.len());
    match rng.next() % 8 {
        0 if !bytes.is_empty() => bytes[at] ^= 1 << (rng.next() % 8),
        1 if !bytes.is_empty() => bytes[at] = rng.next() as u8,
        2 => {
            let v: [u64; 6] = [0, 1, 0xFF, 0xFFFF_FFFF, 1 << 40, u64::MAX];
            let n = v[pick(rng, v.len())].to_le_bytes();
            let w = [2, 4, 8][pick(rng, 3)];
            for (i, b) in n.iter().take(w).enumerate() {
                if let Some(x) = bytes.get_mut(at + i) {
                    *x = *b;
                }
            }
        }
        3 => {
            let extra: Vec<u8> = (0..pick(rng, 32) + 1).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, extra);
        }
        4 => {
            let end = (at + pick(rng, 64) + 1).min(bytes.len());
            bytes.drain(at..end);
        }
        5 => {
            let end = (at + pick(rng, 64) + 1).min(bytes.len());
            let piece = bytes[at..end].to_vec();
            bytes.splice(at..at, piece);
        }
        _ => bytes.truncate(at),
    }
}

#[test]
fn bundles_and_packed_values_hold_their_properties_when_mutated() {
    let tc = TestCache::new();
    let config = fuzzing::bundle_config(&tc.base());
    let jit = Jit::new(config.clone()).unwrap();
    for (i, tag) in ["one", "two"].iter().enumerate() {
        let mut r = SourceRequest::new(Language::C, common::saxpy_source(tag));
        if i == 1 {
            r = r.extra_input("defs.h", "#define N 3\n");
        }
        jit.compile(&r).unwrap();
    }
    let out = tc.dir.path().join("seed.tar.zst");
    bundle::export_bundle(jit.store(), &out, None, &Compiledirs::Current).unwrap();
    let seed = std::fs::read(&out).unwrap();
    let parts = Parts::of(&seed);
    assert_eq!(parts.values.len(), 2);
    let tar = zstd::stream::decode_all(&seed[..]).unwrap();
    let index_bytes = parts.index.encode();
    // Imports go into a base dir of their own, limits as the fuzz target has them.
    let target = TestCache::new();
    let store = xcache::Store::open(&fuzzing::bundle_config(&target.base())).unwrap();

    // A hang would never return: the loop runs on a thread, watched.
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut rng = Rng(21);
        let budget = Duration::from_secs(3);
        let start = Instant::now();
        let (mut bundles, mut values, mut peak_bundle, mut peak_value) = (0, 0, 0u64, 0u64);
        // The seed itself first: it imports whole, so that mutations meet real entries.
        let r = bundle::import_bundle_from(&store, std::path::Path::new("seed"), &seed[..]);
        assert_eq!(r.unwrap().count(|o| *o == ImportOutcome::Imported), 2);
        while start.elapsed() < budget && bundles < 5_000 {
            let layer = rng.next() % 5;
            let input = match layer {
                0 => {
                    let mut b = seed.clone();
                    mutate(&mut rng, &mut b);
                    b
                }
                1 => {
                    let mut t = tar.clone();
                    mutate(&mut rng, &mut t);
                    zstd::bulk::compress(&t, 1).unwrap()
                }
                2 | 3 => {
                    let mut vs = parts.values.clone();
                    let i = (rng.next() % vs.len() as u64) as usize;
                    if layer == 2 {
                        mutate(&mut rng, &mut vs[i]);
                    } else {
                        let mut f = frame_of(&vs[i]);
                        mutate(&mut rng, &mut f);
                        vs[i] = value_of(&f);
                    }
                    let v = vs[i].clone();
                    peak_value = peak_value.max(peak_allocated(|| fuzzing::packed(&v)));
                    values += 1;
                    parts.bundle(&vs)
                }
                _ => {
                    let mut ib = index_bytes.clone();
                    mutate(&mut rng, &mut ib);
                    parts.bundle_with_index(&ib)
                }
            };
            let t = Instant::now();
            peak_bundle = peak_bundle.max(peak_allocated(|| fuzzing::bundle_into(&store, &input)));
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "one import took {:?} (layer {layer})",
                t.elapsed()
            );
            bundles += 1;
        }
        tx.send((bundles, values, peak_bundle, peak_value)).unwrap();
    });
    let (bundles, values, peak_bundle, peak_value) = match rx.recv_timeout(Duration::from_secs(120))
    {
        Ok(r) => r,
        Err(_) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("the mutated bundles did not finish in 120 s: a hang"),
        },
    };
    eprintln!(
        "{bundles} mutated bundles (peak {peak_bundle} bytes allocated by one import), {values} mutated values (peak {peak_value})"
    );
    assert!(bundles >= 50, "only {bundles} bundles in the budget");
    // The limits are 1 MiB an entry and 8 MiB in all; the inputs are a few KiB.
    assert!(peak_bundle < 8 << 20, "{peak_bundle} bytes");
    assert!(peak_value < 4 << 20, "{peak_value} bytes");
}

#[test]
fn packed_values_never_panic_on_random_bytes() {
    let mut rng = Rng(22);
    let seed = xcache::store::pack::Packed {
        meta: br#"{"key":"00"}"#.to_vec(),
        files: vec![("lib.so".into(), vec![1u8; 300])],
    }
    .encode(None);
    for _ in 0..20_000 {
        let mut v = if rng.next().is_multiple_of(2) {
            seed.clone()
        } else {
            b"XCE1\0".to_vec()
        };
        for _ in 0..(rng.next() % 4 + 1) {
            mutate(&mut rng, &mut v);
        }
        fuzzing::packed(&v);
    }
}

#[test]
fn remote_replies_and_result_records_never_panic_when_mutated() {
    // A real reply to HGETALL of a request's results, a GET of a value, and the
    // statuses and errors a server sends.
    let record = br#"{"created":7,"headers":[["/usr/include/stdio.h","00000000000000000000000000000000000000000000000000000000000000ff"]]}"#;
    let field = "cd".repeat(32);
    let mut seed =
        format!("*2\r\n${}\r\n{field}\r\n${}\r\n", field.len(), record.len()).into_bytes();
    seed.extend_from_slice(record);
    seed.extend_from_slice(b"\r\n$5\r\nXCE1\x00\r\n+OK\r\n-WRONGPASS invalid\r\n:16\r\n$-1\r\n");
    fuzzing::resp(&seed);
    let mut rng = Rng(77);
    let start = Instant::now();
    let mut runs = 0u64;
    let mut peak = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let mut b = seed.clone();
        mutate(&mut rng, &mut b);
        let t = Instant::now();
        peak = peak.max(peak_allocated(|| fuzzing::resp(&b)));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "one parse took {:?}",
            t.elapsed()
        );
        runs += 1;
    }
    // A declared length is never allocated ahead of the bytes (the limit is 64 KiB).
    assert!(peak < 4 << 20, "{peak} bytes");
    eprintln!("{runs} mutated replies, peak allocation {peak} bytes");
}
