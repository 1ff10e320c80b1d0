//! Shared helpers for the integration tests: each test gets its own temp base dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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
