//! Shared helpers for the integration tests: each test gets its own temp base dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use xcache::kernels::Element;
use xcache::Config;

/// A private base dir that disappears with the test.
pub struct TestCache {
    pub dir: tempfile::TempDir,
}

impl TestCache {
    pub fn new() -> TestCache {
        TestCache {
            dir: tempfile::Builder::new()
                .prefix("xcache-test-")
                .tempdir()
                .unwrap(),
        }
    }

    /// The base dir (a subdirectory, so that xcache creates it itself).
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Defaults, with the base dir pointed here; the environment is not read.
    pub fn config(&self) -> Config {
        let mut c = Config::defaults();
        c.set_base_dir(self.base());
        c
    }

    /// Every entry directory under `entries/` of every compiledir.
    pub fn entry_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for cd in glob_dirs(&self.base(), "compiledir_") {
            for fan in subdirs(&cd.join("entries")) {
                out.extend(subdirs(&fan));
            }
        }
        out
    }

    /// The (single) current compiledir.
    pub fn compiledir(&self) -> PathBuf {
        let v = glob_dirs(&self.base(), "compiledir_");
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    }
}

pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn glob_dirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    subdirs(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// `y[i] = a*x[i] + y[i]`, plus a marker so different tests can make different keys.
pub fn saxpy_source(tag: &str) -> String {
    format!(
        "#include <stdint.h>\n\
         /* {tag} */\n\
         int saxpy(int64_t n, float a, const float *x, float *y) {{\n\
             for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + y[i];\n\
             return 0;\n\
         }}\n"
    )
}

pub type SaxpyFn = unsafe extern "C" fn(i64, f32, *const f32, *mut f32) -> i32;

/// Calls a loaded saxpy and checks its answer.
pub fn check_saxpy(f: SaxpyFn) {
    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let mut y: Vec<f32> = (0..1000).map(|i| 2.0 * i as f32).collect();
    let rc = unsafe { f(x.len() as i64, 3.0, x.as_ptr(), y.as_mut_ptr()) };
    assert_eq!(rc, 0);
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, 5.0 * i as f32);
    }
}

/// Flips bytes in the middle of a file.
pub fn flip_bytes(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b = !*b;
    }
    std::fs::write(path, bytes).unwrap();
}

/// splitmix64: reproducible inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

pub const SIZES: [usize; 5] = [0, 1, 7, 1023, 100_003];

pub trait Num: Element + PartialEq + std::fmt::Debug {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Tolerance relative to max(|want|, 1).
    const TOL: f64;
}

impl Num for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    const TOL: f64 = 2e-5;
}

impl Num for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    const TOL: f64 = 1e-12;
}

pub fn close(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    (got - want).abs() <= tol * want.abs().max(1.0)
}

pub type Ref = fn(&[f64]) -> f64;

/// Expressions with their independent f64 references.
pub const FLOAT_CASES: &[(&str, usize, Ref)] = &[
    ("a*exp(b)+c", 3, |v| v[0] * v[1].exp() + v[2]),
    ("exp(a)", 1, |v| v[0].exp()),
    ("where(a > b, sqrt(abs(a)), -b) / (1 + c*c)", 3, |v| {
        (if v[0] > v[1] {
            v[0].abs().sqrt()
        } else {
            -v[1]
        }) / (1.0 + v[2] * v[2])
    }),
    (
        "tanh(a) - log(1 + b*b) + pow(abs(c), 0.5) + min(a, b) - max(b, c)",
        3,
        |v| {
            v[0].tanh() - (1.0 + v[1] * v[1]).ln() + v[2].abs().powf(0.5) + v[0].min(v[1])
                - v[1].max(v[2])
        },
    ),
    ("sin(a)*cos(b) - (a <= b) + (a != b)*2", 2, |v| {
        v[0].sin() * v[1].cos() - f64::from(u8::from(v[0] <= v[1]))
            + 2.0 * f64::from(u8::from(v[0] != v[1]))
    }),
    ("a + b*c - d/(1 + e*e) + f*g - h", 8, |v| {
        v[0] + v[1] * v[2] - v[3] / (1.0 + v[4] * v[4]) + v[5] * v[6] - v[7]
    }),
];

pub mod expr_references;

/// A float type of the expression-function reference tables (`expr_references.rs`,
/// written by `scripts/expr-references.py`), which hold bit patterns.
pub trait RefFloat: Num {
    /// (function, [(input, numpy/scipy result)]) for this type.
    fn reference_tables() -> Vec<(&'static str, Vec<(Self, Self)>)>;
    /// Position in the order of the floats, so that the distance in ulps is a
    /// difference; -0.0 and +0.0 share a position.
    fn ordered(self) -> i64;
}

impl RefFloat for f32 {
    fn reference_tables() -> Vec<(&'static str, Vec<(f32, f32)>)> {
        expr_references::FLOAT32
            .iter()
            .map(|(f, t)| {
                let pairs = t
                    .iter()
                    .map(|&(x, y)| (f32::from_bits(x), f32::from_bits(y)));
                (*f, pairs.collect())
            })
            .collect()
    }
    fn ordered(self) -> i64 {
        let b = self.to_bits();
        let m = i64::from(b & 0x7fff_ffff);
        if b >> 31 == 1 {
            -m
        } else {
            m
        }
    }
}

impl RefFloat for f64 {
    fn reference_tables() -> Vec<(&'static str, Vec<(f64, f64)>)> {
        expr_references::FLOAT64
            .iter()
            .map(|(f, t)| {
                let pairs = t
                    .iter()
                    .map(|&(x, y)| (f64::from_bits(x), f64::from_bits(y)));
                (*f, pairs.collect())
            })
            .collect()
    }
    fn ordered(self) -> i64 {
        let b = self.to_bits();
        let m = (b & 0x7fff_ffff_ffff_ffff) as i64;
        if b >> 63 == 1 {
            -m
        } else {
            m
        }
    }
}

/// Whether `got` is within `tol` ulps of `want`. NaN matches any NaN (numpy's NaN has
/// no meaningful sign or payload); infinities must be exact; a zero must keep its sign
/// where both are zero (floor(-0.5) is -0.0); otherwise the distance in ulps, counted
/// through the subnormals, so that a subnormal result is held to the same bits.
pub fn within_ulps<T: RefFloat>(got: T, want: T, tol: u64) -> bool {
    let (g, w) = (got.to_f64(), want.to_f64());
    if g.is_nan() || w.is_nan() {
        return g.is_nan() && w.is_nan();
    }
    if g.is_infinite() || w.is_infinite() {
        return g == w;
    }
    if g == 0.0 && w == 0.0 {
        return g.is_sign_negative() == w.is_sign_negative();
    }
    got.ordered().abs_diff(want.ordered()) <= tol
}

/// The hit that follows `first`, a fresh compile of a request whose headers were just
/// written. A header written in the clock tick the request arrived in is "too new":
/// that result was served but not recorded (`first.unrecorded` names the header), so
/// the next request compiles and records it, and the one after hits. No waiting: the
/// test asserts whichever path the clock took. The hit is the recorded result.
pub fn settled_hit(
    first: &xcache::CacheOutcome,
    next: impl Fn() -> xcache::CacheOutcome,
) -> xcache::CacheOutcome {
    let recorded_key = if first.unrecorded.is_some() {
        let recorded = next();
        assert!(!recorded.hit, "an unrecorded result cannot be found");
        assert_eq!(recorded.unrecorded, None, "settled headers are recorded");
        recorded.key
    } else {
        first.key
    };
    let hit = next();
    assert!(hit.hit, "{:?}", hit.warnings);
    assert_eq!(hit.key, recorded_key);
    hit
}

/// Runs test `name` of this test binary again in a fresh process (`--exact --ignored
/// --nocapture`) with `envs` set, asserts that it passed, and returns its stdout and
/// stderr together: for what is per process (a counter, a first load).
pub fn rerun_test<K, V>(name: &str, envs: impl IntoIterator<Item = (K, V)>) -> String
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .envs(envs)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}
