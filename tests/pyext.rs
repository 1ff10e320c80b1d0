//! Real-world inputs: a CPython extension module as tensor compilers generate them,
//! including `Python.h` and numpy's `arrayobject.h` (about 50 headers) through `-I`.
//! Another numpy include directory, or other contents in one of its headers, is a miss;
//! the same request again is a hit.
//!
//! Needs a Python with its headers and numpy (`XCACHE_TEST_PYTHON`, else `python3`):
//! `#[ignore]`d with that reason, and run by `scripts/test.sh` where one is found.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestCache;
use xcache::{Jit, Language, SourceRequest};

const NEEDS_NUMPY: &str = "needs Python headers and numpy: scripts/test.sh runs it where found";

/// (Python's include dir, numpy's include dir), from the Python the tests were given.
fn include_dirs() -> (PathBuf, PathBuf) {
    let python = std::env::var("XCACHE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig, numpy; print(sysconfig.get_paths()['include']); print(numpy.get_include())",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{NEEDS_NUMPY}: running {python}: {e}"));
    assert!(
        out.status.success(),
        "{NEEDS_NUMPY}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(PathBuf::from);
    let (py, np) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(
        py.join("Python.h").is_file(),
        "{NEEDS_NUMPY}: no Python.h in {}",
        py.display()
    );
    (py, np)
}

const MODULE: &str = r#"
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

static PyObject *ndim_of(PyObject *self, PyObject *arg) {
    if (!PyArray_Check(arg)) { PyErr_SetString(PyExc_TypeError, "not an array"); return NULL; }
    return PyLong_FromLong(PyArray_NDIM((PyArrayObject *)arg));
}
static PyMethodDef methods[] = {{"ndim_of", ndim_of, METH_O, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "xc_ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_xc_ext(void) { import_array(); return PyModule_Create(&mod); }
int xc_abi_version(void) { return NPY_ABI_VERSION; }
"#;

fn request(py: &Path, np: &Path) -> SourceRequest {
    SourceRequest::new(Language::C, MODULE)
        .named("xc_ext.c")
        .flag(format!("-I{}", py.display()))
        .flag(format!("-I{}", np.display()))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
#[ignore = "needs Python headers and numpy: scripts/test.sh runs it where found"]
fn python_and_numpy_headers_are_part_of_the_result() {
    let (py, np) = include_dirs();
    let tc = TestCache::new();
    let open = || Jit::new(tc.config()).unwrap();

    let first = open().build(&request(&py, &np)).unwrap();
    assert!(!first.hit);
    let names: Vec<&str> = first.meta.headers.iter().map(|h| h.path.as_str()).collect();
    assert!(names.iter().any(|p| p.ends_with("/Python.h")), "{names:?}");
    assert!(
        names.iter().any(|p| p.ends_with("numpy/arrayobject.h")),
        "{names:?}"
    );
    let numpy_headers = names
        .iter()
        .filter(|p| p.starts_with(np.to_str().unwrap()))
        .count();
    assert!(
        numpy_headers >= 10,
        "numpy's headers are tracked: {numpy_headers}"
    );

    // The same request again, from a fresh process's point of view: a hit.
    let again = open().build(&request(&py, &np)).unwrap();
    assert!(again.hit);
    assert_eq!(again.key, first.key);

    // Another numpy include directory with the same contents: another request.
    let copy = tc.dir.path().join("numpy-copy/include");
    copy_tree(&np, &copy);
    let other_dir = open().build(&request(&py, &copy)).unwrap();
    assert!(!other_dir.hit);
    let _ = common::settled_hit(&other_dir, || open().build(&request(&py, &copy)).unwrap());

    // Other contents in one of numpy's headers (an upgrade): a miss, then a hit.
    let cfg = copy.join("numpy/npy_common.h");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n/* upgraded */\n");
    std::fs::write(&cfg, text).unwrap();
    let f = std::fs::File::options().write(true).open(&cfg).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    let upgraded = open().build(&request(&py, &copy)).unwrap();
    assert!(!upgraded.hit, "a changed numpy header must be a miss");
    assert_ne!(upgraded.key, other_dir.key);
    common::settled_hit(&upgraded, || open().build(&request(&py, &copy)).unwrap());
}
