//! Artifact groups as the CLI manages them: listed with their producer (`list
//! --producer`), shown, verified, retired by `prune --stale` when their producer has a
//! newer version beside them, carried by `export --all` / `import --all`.

mod common;

use common::{stdout, Env};
use serde_json::Value;
use xcache::store::group::GroupSpec;

/// Puts a group of `producer` under the runtime tag `tag` (its version) into the base
/// dir of `env`, as the integrations do.
fn put(env: &Env, producer: &str, tag: &str, material: &str) -> String {
    let mut config = xcache::Config::defaults();
    config.set_base_dir(env.base());
    config.set("runtime_tag", tag).unwrap();
    let store = xcache::Store::open(&config).unwrap();
    let spec = GroupSpec::new(producer, material, format!("{producer}.kernel")).unwrap();
    let f = store
        .put_group(
            &spec,
            &[(
                "data.bin".into(),
                format!("{producer} {material}").into_bytes(),
            )],
        )
        .unwrap();
    f.key.hex()
}

#[test]
fn groups_are_listed_shown_verified_pruned_by_version_and_carried_in_bundles() {
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 1; }\n");
    stdout(&env.run(&["compile", src.to_str().unwrap()]));
    let old = put(&env, "numba", "numba-0.64.0", "f(float64)");
    let new = put(&env, "numba", "numba-0.65.1", "f(float64)");
    let tri = put(&env, "triton", "triton-3.9.0", "add_kernel");
    assert_ne!(
        old, new,
        "each producer version has its compiledir and keys"
    );

    let rows: Vec<Value> = serde_json::from_str(&stdout(&env.run(&[
        "list",
        "--producer",
        "numba",
        "--json",
    ])))
    .unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(keys.contains(&old.as_str()) && keys.contains(&new.as_str()));
    assert!(rows.iter().all(|r| r["producer"] == "numba"));
    let mine: Vec<Value> = serde_json::from_str(&stdout(&env.run(&[
        "list",
        "--producer",
        "xcache",
        "--json",
    ])))
    .unwrap();
    assert_eq!(mine.len(), 1);
    let human = stdout(&env.run(&["list", "--producer", "triton"]));
    assert!(human.contains("triton"), "{human}");

    let shown = stdout(&env.run(&["show", &tri[..12]]));
    assert!(shown.contains("producer  triton"), "{shown}");
    assert!(shown.contains("file      data.bin"), "{shown}");

    let mut v = env.cmd(&["verify", "--json"]);
    v.env("XCACHE_FLAGS", "handout_grace=0s,runtime_tag=numba-0.65.1");
    let v: Value = serde_json::from_str(&stdout(&v.output().unwrap())).unwrap();
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");

    // A bundle of every compiledir, imported whole elsewhere: each group into its own.
    let bundle = env.dir.path().join("all.tar.zst");
    stdout(&env.run(&["export", "--all", "--out", bundle.to_str().unwrap()]));
    let other = Env::new();
    let reports: Vec<Value> = serde_json::from_str(&stdout(&other.run(&[
        "import",
        bundle.to_str().unwrap(),
        "--all",
        "--json",
    ])))
    .unwrap();
    assert_eq!(reports.len(), 4, "the current compiledir and three others");
    let listed: Vec<Value> =
        serde_json::from_str(&stdout(&other.run(&["list", "--all", "--json"]))).unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");

    // The older numba version is stale beside the newer one; the others are not.
    let pruned: Value =
        serde_json::from_str(&stdout(&env.run(&["prune", "--stale", "--json"]))).unwrap();
    let gone: Vec<&str> = pruned["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "compiledir" && a["skipped"].is_null())
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(gone.len(), 1, "{pruned}");
    assert!(gone[0].contains("numba-0.64.0"), "{gone:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout(&env.run(&[
        "list",
        "--producer",
        "numba",
        "--json",
    ])))
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["key"], new.as_str());
}
