//! The NVRTC path, without a GPU (CI installs `nvidia-cuda-nvrtc` from PyPI): every
//! CUDA template compiles through NVRTC to a cubin for sm_80 and sm_90, holding every
//! kernel xcache's launcher may name, for the arch asked (read back from the cubin's ELF
//! header); entries are published, verified and hit like any other; PTX where the arch
//! is a virtual one; NVRTC's errors come back with the user's names and line numbers,
//! the options and the kept source; a missing libnvrtc says where it was looked for and
//! how to install it; headers NVRTC reads are tracked.
//!
//! Every test here is `#[ignore]`d with the reason; `scripts/test.sh` runs them where
//! `xcache doctor` finds libnvrtc, and says so where it does not.

mod common;

use common::TestCache;
use xcache::compile::nvrtc::Output;
use xcache::cuda::driver::{cubin_arch, cubin_kernels};
use xcache::cuda::launch::{GemmPlan, ReducePlan};
use xcache::{Error, Jit, Language, SourceRequest, TemplateRequest};

const NEEDS_NVRTC: &str = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found";

/// A Jit compiling for `arch` with NVRTC; a missing libnvrtc is a failure here (these
/// tests are asked for only where it is).
fn jit_for(tc: &TestCache, arch: &str) -> Jit {
    let mut c = tc.config();
    c.set("cuda_arch", arch).unwrap();
    let jit = Jit::new(c).unwrap();
    if let Err(e) = jit.nvrtc() {
        panic!("{NEEDS_NVRTC}; none here: {e}");
    }
    jit
}

fn req(name: &str, params: &[(&str, &str)]) -> TemplateRequest {
    params
        .iter()
        .fold(TemplateRequest::new(name), |r, (k, v)| r.param(*k, *v))
}

/// Every kernel xcache's launcher can name for this template instance.
fn launcher_kernels(name: &str, source: &str) -> Vec<String> {
    match name {
        "cuda/elemwise" => vec!["xc_vector".into(), "xc_scalar".into()],
        "cuda/reduce" => {
            const LONG: [&str; 3] = ["xc_rows_block", "xc_rows_block_split", "xc_rows_finish"];
            let p = ReducePlan::parse(source).unwrap();
            if p.axis == 1 {
                let mut v: Vec<String> = [1, 2, 4, 8, 16, 32]
                    .iter()
                    .flat_map(|t| ["v", "s"].map(|x| format!("xc_rows_team_{t}_{x}")))
                    .collect();
                v.extend(
                    (1..p.vec)
                        .filter(|c| p.vec % c == 0)
                        .map(|c| format!("xc_rows_narrow_{c}")),
                );
                v.extend(LONG.map(String::from));
                v
            } else {
                let mut v: Vec<String> = [
                    "xc_cols_v",
                    "xc_cols_s",
                    "xc_cols_v_split",
                    "xc_cols_s_split",
                    "xc_cols_finish",
                    "xc_cols_few_v",
                    "xc_cols_few_s",
                ]
                .map(String::from)
                .to_vec();
                // A single column is reduced as a single long row.
                v.extend(LONG.map(String::from));
                v
            }
        }
        _ => {
            let p = GemmPlan::parse(source).unwrap();
            (0..p.configs.len())
                .flat_map(|i| ["v", "s"].map(|x| format!("xc_gemm_c{i}_{x}")))
                .collect()
        }
    }
}

fn every_template() -> Vec<TemplateRequest> {
    let mut v = vec![
        req("cuda/elemwise", &[("dtype", "float32"), ("arity", "3"), ("expr", "a*exp(b)+c")]),
        req("cuda/elemwise", &[("dtype", "float64"), ("arity", "8"), ("expr", "a+b+c+d+e+f+g+h")]),
        req("cuda/elemwise", &[("dtype", "int32"), ("arity", "2"), ("expr", "a/b - abs(a)")]),
        req("cuda/elemwise", &[("dtype", "int64"), ("arity", "1"), ("expr", "where(a > 0, a, -a)")]),
        req(
            "cuda/elemwise",
            &[
                ("dtype", "float32"),
                ("arity", "2"),
                ("expr", "floor(a) + ceil(b) - round(a*b) + log1p(abs(a)) * expm1(b) - sigmoid(a) / erf(b)"),
            ],
        ),
    ];
    for dtype in ["float32", "float64", "int32", "int64"] {
        for (op, axis) in [("sum", "1"), ("max", "0"), ("mean", "1"), ("min", "0")] {
            v.push(req(
                "cuda/reduce",
                &[("dtype", dtype), ("op", op), ("axis", axis), ("pre", "x*x")],
            ));
        }
    }
    v.push(req("cuda/gemm", &[("dtype", "float32"), ("relu", "true")]));
    v.push(req("cuda/gemm", &[("dtype", "float64")]));
    for p in ["tf32", "bf16", "fp16"] {
        v.push(req("cuda/gemm", &[("dtype", "float32"), ("precision", p)]));
    }
    v
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn every_cuda_template_compiles_through_nvrtc_to_a_cubin_for_sm80_and_sm90() {
    let tc = TestCache::new();
    for arch in ["sm_80", "sm_90"] {
        let jit = jit_for(&tc, arch);
        let reqs = every_template();
        // Two at a time: NVRTC runs in this process, one compile per thread.
        let results: Vec<_> = std::thread::scope(|s| {
            let chunks: Vec<_> = reqs.chunks(reqs.len().div_ceil(2)).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|c| {
                    s.spawn(|| {
                        c.iter()
                            .map(|r| (r, jit.nvrtc_template(r)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for (r, res) in results {
            let (m, src) = res.unwrap_or_else(|e| panic!("{} for {arch}: {e}", r.name));
            assert!(!m.hit, "{}: compiled now", src.name);
            assert_eq!(m.output, Output::Cubin);
            assert_eq!(cubin_arch(m.image()).as_deref(), Some(arch), "{}", src.name);
            let have = cubin_kernels(m.image());
            for k in launcher_kernels(&r.name, &String::from_utf8_lossy(&src.source)) {
                assert!(
                    have.contains(&k),
                    "{} for {arch}: no kernel {k} in {have:?}",
                    src.name
                );
            }
            assert!(m.path.ends_with("kernel.cubin"), "{:?}", m.path);
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(m.path.parent().unwrap().join("entry.json")).unwrap(),
            )
            .unwrap();
            let km = &meta["key_material"];
            assert_eq!(km["target"]["triple"], arch, "the arch is in the key");
            assert_eq!(km["language"], "cuda");
            assert_eq!(meta["artifact"]["file"], "kernel.cubin");
            assert!(km["toolchain"]["version"]
                .as_str()
                .unwrap()
                .starts_with("NVRTC "));
            let flags = km["flags"].to_string();
            assert!(
                flags.contains(&format!("--gpu-architecture={arch}")),
                "{flags}"
            );
        }
        // A fresh runtime finds them all, without NVRTC running.
        let fresh = Jit::new(jit.config().clone()).unwrap();
        for r in every_template().iter().take(3) {
            let (m, _) = fresh.nvrtc_template(r).unwrap();
            assert!(m.hit, "{}", r.name);
        }
    }
    // Each arch is its own key; every entry verifies (hash, owner, mode) like any other.
    let j80 = jit_for(&tc, "sm_80");
    let j90 = jit_for(&tc, "sm_90");
    let src = j80.render(&every_template()[0]).unwrap();
    assert_ne!(
        j80.nvrtc_key_for(&src).unwrap().key,
        j90.nvrtc_key_for(&src).unwrap().key
    );
    let report = xcache::ops::verify::verify(j80.store(), false).unwrap();
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.entries as usize, 2 * every_template().len());
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn a_virtual_arch_gives_ptx_that_the_driver_compiles_at_load() {
    let tc = TestCache::new();
    let jit = jit_for(&tc, "compute_80");
    let (m, _) = jit.nvrtc_template(&every_template()[0]).unwrap();
    assert_eq!(m.output, Output::Ptx);
    assert!(m.path.ends_with("kernel.ptx"), "{:?}", m.path);
    let text = String::from_utf8_lossy(m.image());
    assert!(
        text.contains(".target sm_80"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(text.contains(".entry xc_vector"));
    assert_eq!(
        m.image().last(),
        Some(&0),
        "NUL-terminated, as cuModuleLoadData takes it"
    );
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn nvrtc_errors_carry_the_log_with_the_users_names_the_options_and_the_kept_source() {
    let tc = TestCache::new();
    let jit = jit_for(&tc, "sm_80");
    let dir = tc.dir.path().join("kern");
    std::fs::create_dir_all(&dir).unwrap();
    let k = dir.join("bad.cu");
    let src = "extern \"C\" __global__ void k(float *x) {\n    x[0] = undefined_thing;\n}\n";
    std::fs::write(&k, src).unwrap();
    let err = jit
        .cuda_module(&SourceRequest::from_file(&k).unwrap())
        .unwrap_err();
    let Error::Compile(ce) = &err else {
        panic!("{err}")
    };
    // The user's file and line, as NVRTC reports them for the program it was given.
    assert!(
        ce.output.contains(&format!("{}(2): error", k.display())),
        "{}",
        ce.output
    );
    assert!(ce.output.contains("undefined_thing"), "{}", ce.output);
    assert!(
        ce.output.contains("NVRTC_ERROR_COMPILATION"),
        "{}",
        ce.output
    );
    assert!(!ce.output.contains("source.cu"), "{}", ce.output);
    assert!(
        ce.command.contains("--gpu-architecture=sm_80") && ce.command.contains("NVRTC"),
        "{}",
        ce.command
    );
    assert!(
        ce.command
            .contains(&format!("-I{}", dir.canonicalize().unwrap().display())),
        "{}",
        ce.command
    );
    assert!(
        ce.kept_source.ends_with("source.cu"),
        "{:?}",
        ce.kept_source
    );
    assert_eq!(std::fs::read_to_string(&ce.kept_source).unwrap(), src);
    assert!(
        tc.entry_dirs().is_empty(),
        "a failed compile publishes nothing"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("source kept at") && shown.contains("undefined_thing"),
        "{shown}"
    );

    // A header that is not there: named, with the hint on how headers are found.
    let err = jit
        .cuda_module(&SourceRequest::new(
            Language::Cuda,
            "#include \"nothere.cuh\"\n",
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothere.cuh") && err.contains("hint"), "{err}");
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn a_missing_libnvrtc_says_where_it_was_looked_for_and_how_to_install_it() {
    let tc = TestCache::new();
    let mut c = tc.config();
    c.set("nvrtc", "/nonexistent/cuda/lib64").unwrap();
    c.set("cuda_arch", "sm_90").unwrap();
    let jit = Jit::new(c).unwrap();
    let e = jit
        .nvrtc_template(&every_template()[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("libnvrtc"), "{e}");
    assert!(e.contains("/nonexistent/cuda/lib64 (setting)"), "{e}");
    assert!(e.contains("pip install nvidia-cuda-nvrtc"), "{e}");
    // The same words from doctor.
    let report = xcache::ops::doctor::doctor(Ok(jit.config().clone()));
    let check = report.checks.iter().find(|c| c.name == "NVRTC").unwrap();
    assert!(
        check.detail.contains("pip install nvidia-cuda-nvrtc"),
        "{check:?}"
    );
}

/// Headers NVRTC read (beside the source, and the toolkit's) are tracked: an edited
/// header is a miss and names itself; explicit extra inputs go to NVRTC in memory and
/// are in the key.
#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn headers_nvrtc_reads_are_tracked() {
    let tc = TestCache::new();
    let jit = jit_for(&tc, "sm_90");
    let dir = tc.dir.path().join("kern");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let h = dir.join("defs.cuh");
    let nested = dir.join("sub").join("more.cuh");
    std::fs::write(&nested, "#define OFFSET 1.0f\n").unwrap();
    std::fs::write(&h, "#include \"sub/more.cuh\"\n#define SCALE 2.0f\n").unwrap();
    let toolkit = jit
        .nvrtc()
        .unwrap()
        .include_dir
        .as_ref()
        .is_some_and(|d| d.join("cuda_fp16.h").is_file());
    let k = dir.join("scale.cu");
    std::fs::write(
        &k,
        format!(
            "{}#include \"defs.cuh\"\nextern \"C\" __global__ void scale(float *x) {{ x[threadIdx.x] = x[threadIdx.x] * SCALE + OFFSET; }}\n",
            if toolkit { "#include <cuda_fp16.h>\n" } else { "" }
        ),
    )
    .unwrap();
    let req = || SourceRequest::from_file(&k).unwrap();
    let first = jit.build_cuda_module(&req()).unwrap();
    let paths: Vec<&str> = first.meta.headers.iter().map(|h| h.path.as_str()).collect();
    for want in [&h, &nested] {
        assert!(
            paths
                .iter()
                .any(|p| std::path::Path::new(p) == want.as_path()
                    || std::fs::canonicalize(p).ok() == std::fs::canonicalize(want).ok()),
            "{want:?} not in {paths:?}"
        );
    }
    if toolkit {
        assert!(
            paths.iter().any(|p| p.ends_with("/cuda_fp16.h")),
            "the toolkit's headers are tracked: {paths:?}"
        );
    } else {
        eprintln!("SKIPPED the toolkit header: no cuda_fp16.h beside libnvrtc");
    }
    let fresh = || Jit::new(jit.config().clone()).unwrap();
    common::settled_hit(&first, || fresh().build_cuda_module(&req()).unwrap());
    std::fs::write(&nested, "#define OFFSET 3.0f\n").unwrap();
    let second = fresh().build_cuda_module(&req()).unwrap();
    assert!(!second.hit, "an edited nested header is a miss");
    assert_ne!(second.key, first.key);
    // A broken header: the error names it.
    std::fs::write(&h, "#define SCALE (2.0f +\n#include \"sub/more.cuh\"\n").unwrap();
    let Err(Error::Compile(ce)) = fresh().build_cuda_module(&req()) else {
        panic!("a broken header must fail the compile")
    };
    assert!(ce.output.contains("scale.cu"), "{}", ce.output);

    // Extra inputs: in memory under their names, in the key.
    let with = |v: &str| {
        SourceRequest::new(
            Language::Cuda,
            "#include \"defs.h\"\nextern \"C\" __global__ void k(float *x) { x[0] = V; }\n",
        )
        .extra_input("defs.h", format!("#define V {v}\n"))
    };
    let a = jit.build_cuda_module(&with("1.0f")).unwrap();
    let b = jit.build_cuda_module(&with("2.0f")).unwrap();
    assert_ne!(a.key, b.key);
    assert!(a.meta.headers.is_empty(), "{:?}", a.meta.headers);
    assert!(
        std::fs::read_to_string(a.path.parent().unwrap().join("defs.h"))
            .unwrap()
            .contains("1.0f")
    );
}

/// The templates include nothing NVRTC compiles (their includes are for nvcc's host
/// code): so they build on any NVRTC, one too old to report headers included, and
/// NVRTC's header trace of them lists nothing of the user's.
#[test]
fn the_cuda_templates_include_nothing_under_nvrtc() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    for r in every_template() {
        let src = jit.render(&r).unwrap();
        assert!(
            !xcache::compile::nvrtc::may_include(&src.source, &src.flags),
            "{}",
            src.name
        );
    }
}

/// A brand-new cache asks NVRTC what it accepts with one small compile (every option
/// at once, `-minimal`), not one full compile per option: its first kernel costs two
/// NVRTC programs in all, and the answers are recorded for later processes, which
/// compile only their kernels. Counted in fresh processes (this binary, re-executed):
/// NVRTC's compile counter is per process.
#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn a_brand_new_cache_probes_nvrtc_with_one_compile_and_records_the_answers() {
    let tc = TestCache::new();
    let run = |expr: &str| -> u64 {
        let base = tc.base();
        let text = common::rerun_test(
            "probe_worker",
            [
                ("XC_PROBE_WORKER", base.as_os_str()),
                ("XC_PROBE_EXPR", std::ffi::OsStr::new(expr)),
            ],
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("NVRTC COMPILES "))
            .expect(&text);
        line["NVRTC COMPILES ".len()..].trim().parse().unwrap()
    };
    assert_eq!(run("a+1"), 2, "the probe and the kernel");
    assert_eq!(
        run("a+2"),
        1,
        "the kernel alone: the probe's answers are recorded"
    );
    let jit = jit_for(&tc, "sm_90");
    let tool = jit.nvrtc().unwrap();
    let (major, minor) = tool.version;
    if (major, minor) >= (12, 8) {
        assert!(
            tool.minimal && tool.fast_compile && tool.time_trace,
            "{tool:?}"
        );
    }
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where libnvrtc is found"]
fn probe_worker() {
    let (Some(base), Some(expr)) = (
        std::env::var_os("XC_PROBE_WORKER"),
        std::env::var("XC_PROBE_EXPR").ok(),
    ) else {
        return; // only as the fresh process of the test above
    };
    let mut c = xcache::Config::defaults();
    c.set_base_dir(base);
    c.set("cuda_arch", "sm_90").unwrap();
    let jit = Jit::new(c).unwrap();
    let r = req(
        "cuda/elemwise",
        &[("dtype", "float32"), ("arity", "1"), ("expr", &expr)],
    );
    let (m, _) = jit.nvrtc_template(&r).unwrap();
    assert!(!m.hit);
    println!("NVRTC COMPILES {}", xcache::compile::nvrtc::compiles());
}
