//! CUDA templates through the CLI, `warm --arch` and bundles, built as the GPU handles
//! load them: cubins by NVRTC for the arch asked (a CI machine without a GPU warms the
//! fleet's), the arch read back from each cubin's ELF header. Needs libnvrtc (no GPU):
//! `#[ignore]`d with the reason, run by `scripts/test.sh` where `xcache doctor` finds
//! NVRTC.

mod common;

use std::path::PathBuf;

use common::{stdout, Env};
use serde_json::Value;

/// The shipped CUDA templates, with parameters.
const TEMPLATES: &[(&str, &[&str])] = &[
    (
        "cuda/elemwise",
        &["dtype=float32", "arity=2", "expr=a * exp(b)"],
    ),
    ("cuda/reduce", &["dtype=float32", "op=sum"]),
    ("cuda/gemm", &["dtype=float32"]),
];

fn arch_of(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    xcache::cuda::driver::cubin_arch(&bytes).unwrap_or_else(|| panic!("{path} is not a cubin"))
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where xcache doctor finds NVRTC"]
fn every_cuda_template_builds_a_cubin_for_the_arch_asked() {
    let env = Env::new();
    for (name, params) in TEMPLATES {
        for arch in ["sm_80", "sm_90"] {
            let mut args = vec!["compile", "-t", name];
            for p in *params {
                args.extend(["-p", p]);
            }
            args.extend(["--arch", arch, "--json"]);
            let v: Value = serde_json::from_str(&stdout(&env.run(&args))).unwrap();
            let path = v["path"].as_str().unwrap();
            assert!(path.ends_with("kernel.cubin"), "{name} {arch}: {v}");
            assert_eq!(arch_of(path), arch, "{name}");
        }
    }
    // PTX when asked; a shared object by nvcc only when asked (not here: no nvcc needed).
    let v: Value = serde_json::from_str(&stdout(&env.run(&[
        "compile",
        "-t",
        "cuda/gemm",
        "-p",
        "dtype=float32",
        "--arch",
        "sm_90",
        "--emit",
        "ptx",
        "--json",
    ])))
    .unwrap();
    assert!(v["path"].as_str().unwrap().ends_with("kernel.ptx"), "{v}");
    let o = env.run(&[
        "compile",
        "-t",
        "cuda/gemm",
        "-p",
        "dtype=float32",
        "--arch",
        "sm_9",
    ]);
    assert_eq!(o.status.code(), Some(2), "a bad arch is bad usage");
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where xcache doctor finds NVRTC"]
fn warm_for_two_arches_and_a_bundle_carry_the_cubins() {
    let env = Env::new();
    let requests: Vec<Value> = TEMPLATES
        .iter()
        .map(|(name, params)| {
            let params: serde_json::Map<String, Value> = params
                .iter()
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), Value::from(v))
                })
                .collect();
            serde_json::json!({"template": name, "params": params})
        })
        .collect();
    let manifest = env.file(
        "warm.json",
        &serde_json::json!({"requests": requests}).to_string(),
    );
    let report: Value = serde_json::from_str(&stdout(&env.run(&[
        "warm",
        manifest.to_str().unwrap(),
        "--arch",
        "sm_80",
        "--arch",
        "sm_90",
        "--json",
    ])))
    .unwrap();
    assert_eq!(report["compiled"], 6, "{report}");
    let rows: Vec<Value> = serde_json::from_str(&stdout(&env.run(&["list", "--json"]))).unwrap();
    let mut arches: Vec<String> = rows
        .iter()
        .map(|r| arch_of(&format!("{}/kernel.cubin", r["path"].as_str().unwrap())))
        .collect();
    arches.sort();
    assert_eq!(
        arches,
        ["sm_80", "sm_80", "sm_80", "sm_90", "sm_90", "sm_90"]
    );
    // Carried by a bundle to another machine, whole: the same cubins.
    let bundle = env.dir.path().join("b.tar.zst");
    stdout(&env.run(&["export", "--out", bundle.to_str().unwrap()]));
    let other = Env::new();
    stdout(&other.run(&["import", bundle.to_str().unwrap()]));
    let there: Vec<Value> = serde_json::from_str(&stdout(&other.run(&["list", "--json"]))).unwrap();
    assert_eq!(there.len(), 6);
    for r in &there {
        let p = PathBuf::from(r["path"].as_str().unwrap()).join("kernel.cubin");
        let here = rows.iter().find(|x| x["key"] == r["key"]).unwrap();
        let mine = PathBuf::from(here["path"].as_str().unwrap()).join("kernel.cubin");
        assert_eq!(std::fs::read(p).unwrap(), std::fs::read(mine).unwrap());
    }
    // Warm again: everything hits.
    let again: Value = serde_json::from_str(&stdout(&env.run(&[
        "warm",
        manifest.to_str().unwrap(),
        "--arch",
        "sm_80",
        "--arch",
        "sm_90",
        "--json",
    ])))
    .unwrap();
    assert_eq!(again["hits"], 6, "{again}");
}

#[test]
#[ignore = "needs libnvrtc: scripts/test.sh runs it where xcache doctor finds NVRTC"]
fn cuda_source_under_any_name_builds_a_cubin_with_dash_dash_cuda() {
    let env = Env::new();
    let src = "extern \"C\" __global__ void scale(float *x, float a, int n) {\n    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i < n) x[i] *= a;\n}\n";
    let named = env.file("scale.kernel", src);
    let named = named.to_str().unwrap();
    // Without --cuda the name says nothing: the error names the flag.
    let o = env.run(&["compile", named, "--emit", "cubin", "--arch", "sm_90"]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--cuda"),
        "{}",
        common::stderr(&o)
    );
    for (emit, arch, ends) in [
        ("cubin", "sm_90", "kernel.cubin"),
        ("ptx", "sm_80", "kernel.ptx"),
    ] {
        let v: Value = serde_json::from_str(&stdout(&env.run(&[
            "compile", named, "--cuda", "--emit", emit, "--arch", arch, "--json",
        ])))
        .unwrap();
        let path = v["path"].as_str().unwrap();
        assert!(path.ends_with(ends), "{emit}: {v}");
        if emit == "cubin" {
            assert_eq!(arch_of(path), arch);
        } else {
            let ptx = std::fs::read_to_string(path).unwrap();
            assert!(
                ptx.contains(".target sm_80") && ptx.contains("scale"),
                "{ptx}"
            );
        }
    }
    // The same source named .cu needs no flag.
    let cu = env.file("scale.cu", src);
    let v: Value = serde_json::from_str(&stdout(&env.run(&[
        "compile",
        cu.to_str().unwrap(),
        "--emit",
        "cubin",
        "--arch",
        "sm_90",
        "--json",
    ])))
    .unwrap();
    assert!(v["path"].as_str().unwrap().ends_with("kernel.cubin"), "{v}");
}
