//! Bundles through the `xcache` command, as a CI job uses them: export from one base
//! dir, import into an empty one, and the same requests hit without a compile; a bundle
//! with a flipped byte, entries of another platform, `--since`, signatures required, and
//! a header that differs on the importing side.
//!
//! Each test has one temp dir holding its sources and headers, and several base dirs
//! in it (`a` exports, `b` and `c` import): the importing "machine" sees the same
//! compiler and the same header paths, as a CI runner restoring a cache does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{age_entry, set_mtime, stderr, Env};
use serde_json::Value;

/// `xcache ARGS` against the base dir `base` (a name inside the test's temp dir).
fn xc(env: &Env, base: &str, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    c.env("XCACHE_DIR", env.dir.path().join(base));
    c
}

/// Runs, and parses stdout as JSON whatever the exit status.
fn run_json(mut c: Command) -> (Output, Value) {
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        )
    });
    (o, v)
}

/// Runs, expecting success, and parses stdout as JSON.
fn ok_json(c: Command) -> Value {
    let (o, v) = run_json(c);
    assert!(o.status.success(), "failed: {v}\n{}", stderr(&o));
    v
}

/// Writes a header as an editor would, settled (mtime a minute ago: a header changed
/// after a build started is never recorded).
fn write_header(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    set_mtime(path, 60);
}

/// Three requests: a source that includes a header through `-I`, a plain source, and
/// a template instance. Returns each request's `compile` arguments.
fn requests(env: &Env) -> Vec<Vec<String>> {
    let inc = env.dir.path().join("inc");
    write_header(&inc.join("h.h"), "#define VAL 7\n");
    let k = env.file("k.c", "#include \"h.h\"\nint val(void) { return VAL; }\n");
    let k2 = env.file("k2.c", "int two(void) { return 2; }\n");
    vec![
        vec![
            k.display().to_string(),
            format!("--flag=-I{}", inc.display()),
        ],
        vec![k2.display().to_string()],
        ["-t", "elemwise", "-p", "dtype=float32", "-p", "arity=1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["-p".into(), "expr=exp(a)".into()])
            .collect(),
    ]
}

fn compile(env: &Env, base: &str, request: &[String], extra: &[&str]) -> Value {
    let mut args = vec!["compile"];
    args.extend(request.iter().map(String::as_str));
    args.extend_from_slice(extra);
    args.push("--json");
    ok_json(xc(env, base, &args))
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn count(report: &Value, outcome: &str) -> usize {
    outcomes(report)
        .iter()
        .filter(|(_, o)| o == outcome)
        .count()
}

fn bundle(env: &Env, name: &str) -> PathBuf {
    env.dir.path().join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn export_then_import_into_an_empty_base_dir_hits_without_compiling() {
    let env = Env::new();
    let reqs = requests(&env);
    let built: Vec<Value> = reqs.iter().map(|r| compile(&env, "a", r, &[])).collect();
    assert!(built.iter().all(|v| v["hit"] == false));

    let out = bundle(&env, "cache.tar.zst");
    let e = ok_json(xc(&env, "a", &["export", "--out", s(&out), "--json"]));
    assert_eq!(e["entries"].as_array().unwrap().len(), 3, "{e}");
    assert!(e["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["outcome"] == "exported"));
    assert_eq!(e["signed"], false);
    assert_eq!(e["bytes"], std::fs::metadata(&out).unwrap().len());
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().contains(".xcache-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the temporary file is renamed: {leftovers:?}"
    );

    // An empty base dir: everything imported, and every request a hit.
    let i = ok_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(count(&i, "imported"), 3, "{i}");
    assert_eq!(i["clean"], true);
    assert_eq!(i["signature"], "unsigned");
    for (r, was) in reqs.iter().zip(&built) {
        let v = compile(&env, "b", r, &[]);
        assert_eq!(v["hit"], true, "{v}");
        assert_eq!(v["key"], was["key"]);
        assert_eq!(v["tier"], "local");
    }
    // Loadable, with the symbol the source defines.
    let v = compile(&env, "b", &reqs[0], &["-s", "val"]);
    assert_eq!(
        (v["hit"].clone(), v["loaded"].clone()),
        (true.into(), true.into())
    );
    // The counters agree: hits, and not one compile.
    let stats = ok_json(xc(&env, "b", &["stats", "--json"]));
    let row = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["current"] == true)
        .unwrap();
    assert_eq!(row["compiles"], 0, "{row}");
    assert_eq!(row["hits"], 4, "{row}");

    // Again: already here, and still a success.
    let again = ok_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(count(&again, "already-here"), 3, "{again}");
    let human = common::stdout(&xc(&env, "b", &["import", s(&out)]).output().unwrap());
    assert!(
        human.contains("already here")
            && human.contains("3 entries in")
            && human.contains("3 already here"),
        "{human}"
    );
    let v = ok_json(xc(&env, "b", &["verify", "--json"]));
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");

    // The human report of an export: a row per entry and a total.
    let text = common::stdout(
        &xc(
            &env,
            "a",
            &["export", "--out", s(&bundle(&env, "again.tar.zst"))],
        )
        .output()
        .unwrap(),
    );
    assert!(text.contains("k2.c") && text.contains("exported"), "{text}");
    assert!(text.contains("3 entries exported to"), "{text}");
}

/// Flips one byte inside the `n`th packed value (`XCE1…`) of a bundle, keeping the rest
/// as it was: decompressed, changed, compressed again.
fn flip_in_value(path: &Path, n: usize) {
    let tar = zstd::stream::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    let starts: Vec<usize> = (0..tar.len())
        .step_by(512)
        .filter(|&o| tar[o..].starts_with(b"XCE1"))
        .collect();
    let mut tar = tar;
    tar[starts[n] + 100] ^= 0x20;
    std::fs::write(path, zstd::stream::encode_all(&tar[..], 3).unwrap()).unwrap();
}

#[test]
fn a_bundle_with_a_flipped_byte_imports_the_rest_and_reports_that_entry() {
    let env = Env::new();
    let reqs = requests(&env);
    for r in &reqs {
        compile(&env, "a", r, &[]);
    }
    let out = bundle(&env, "cache.tar.zst");
    ok_json(xc(&env, "a", &["export", "--out", s(&out), "--json"]));
    flip_in_value(&out, 1);

    let (o, i) = run_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(o.status.code(), Some(1), "{i}");
    assert_eq!(i["clean"], false);
    assert_eq!(count(&i, "imported"), 2, "{i}");
    assert_eq!(count(&i, "corrupt"), 1, "{i}");
    let bad = i["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["outcome"] == "corrupt")
        .unwrap();
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("do not match the index"),
        "{bad}"
    );
    let key = bad["key"].as_str().unwrap();
    assert!(
        stderr(&o).contains(&key[..16]) && stderr(&o).contains("not imported"),
        "a warning names it: {}",
        stderr(&o)
    );
    // The others hit; the bad one is built here.
    for r in &reqs {
        let v = compile(&env, "b", r, &[]);
        assert_eq!(v["hit"], v["key"] != key, "{v}");
    }
    // Said in words as well.
    let o = xc(&env, "c", &["import", s(&out)]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("CORRUPT")
            && text.contains(&key[..12])
            && text.contains("2 imported, 1 corrupt"),
        "{text}"
    );
}

#[test]
fn entries_for_another_platform_are_skipped_with_a_note() {
    let env = Env::new();
    let reqs = requests(&env);
    let plain = compile(&env, "a", &reqs[1], &[]);
    let mut c = xc(&env, "a", &["compile", &reqs[0][0], &reqs[0][1], "--json"]);
    c.env("XCACHE_RUNTIME", "cpython-3.10");
    let tagged: Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap();
    let tagged_dir = Path::new(tagged["compiledir"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(tagged_dir.contains("cpython-3.10"), "{tagged_dir}");

    let out = bundle(&env, "all.tar.zst");
    let e = ok_json(xc(
        &env,
        "a",
        &["export", "--out", s(&out), "--all", "--json"],
    ));
    assert_eq!(e["entries"].as_array().unwrap().len(), 2, "{e}");

    // Without the runtime tag: the plain entry, and a note for the other.
    let (o, i) = run_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert!(o.status.success(), "other platforms are no failure: {i}");
    let by_key: std::collections::HashMap<_, _> = outcomes(&i).into_iter().collect();
    assert_eq!(by_key[plain["key"].as_str().unwrap()], "imported");
    assert_eq!(by_key[tagged["key"].as_str().unwrap()], "other-platform");
    let text = common::stdout(&xc(&env, "b", &["import", s(&out)]).output().unwrap());
    assert!(
        text.contains("for another platform")
            && text.contains(&tagged_dir)
            && text.contains("note:"),
        "{text}"
    );

    // With it: the other way round, and the tagged request hits.
    let mut c = xc(&env, "c", &["import", s(&out), "--json"]);
    c.env("XCACHE_RUNTIME", "cpython-3.10");
    let i = ok_json(c);
    let by_key: std::collections::HashMap<_, _> = outcomes(&i).into_iter().collect();
    assert_eq!(by_key[tagged["key"].as_str().unwrap()], "imported", "{i}");
    assert_eq!(by_key[plain["key"].as_str().unwrap()], "other-platform");
    let mut c = xc(&env, "c", &["compile", &reqs[0][0], &reqs[0][1], "--json"]);
    c.env("XCACHE_RUNTIME", "cpython-3.10");
    let v = ok_json(c);
    assert_eq!(v["hit"], true, "{v}");

    // One compiledir by name; a name that is not there; both ways at once.
    let one = bundle(&env, "one.tar.zst");
    let e = ok_json(xc(
        &env,
        "a",
        &[
            "export",
            "--out",
            s(&one),
            "--compiledir",
            &tagged_dir,
            "--json",
        ],
    ));
    assert_eq!(
        outcomes(&e),
        vec![(
            tagged["key"].as_str().unwrap().to_string(),
            "exported".to_string()
        )]
    );
    let o = xc(
        &env,
        "a",
        &[
            "export",
            "--out",
            s(&one),
            "--compiledir",
            "compiledir_nope",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("basecompiledir list"), "{}", stderr(&o));
    let o = xc(
        &env,
        "a",
        &[
            "export",
            "--out",
            s(&one),
            "--compiledir",
            &tagged_dir,
            "--all",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn since_selects_entries_by_last_use() {
    let env = Env::new();
    let reqs = requests(&env);
    let old = compile(&env, "a", &reqs[0], &[]);
    let fresh = compile(&env, "a", &reqs[1], &[]);
    // A month unused: its `last-use` says so.
    let entry = Path::new(old["path"].as_str().unwrap()).parent().unwrap();
    age_entry(entry, 30 * 86_400);

    let out = bundle(&env, "recent.tar.zst");
    let e = ok_json(xc(
        &env,
        "a",
        &["export", "--out", s(&out), "--since", "7d", "--json"],
    ));
    assert_eq!(
        outcomes(&e),
        vec![(
            fresh["key"].as_str().unwrap().to_string(),
            "exported".to_string()
        )]
    );
    assert_eq!(e["older"], 1);
    assert_eq!(e["since_secs"], 7 * 86_400);
    let text = common::stdout(
        &xc(&env, "a", &["export", "--out", s(&out), "--since", "7d"])
            .output()
            .unwrap(),
    );
    assert!(
        text.contains("1 entry exported")
            && text.contains("1 entry unused for longer than 7d left out"),
        "{text}"
    );
    // A wider window takes both.
    let e = ok_json(xc(
        &env,
        "a",
        &["export", "--out", s(&out), "--since", "60d", "--json"],
    ));
    assert_eq!(e["entries"].as_array().unwrap().len(), 2, "{e}");

    // An imported entry keeps its age: the next run's `export --since` leaves it out
    // again (what no CI run uses ages out of a bundle passed from run to run).
    let i = ok_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(count(&i, "imported"), 2, "{i}");
    let e = ok_json(xc(
        &env,
        "b",
        &["export", "--out", s(&out), "--since", "7d", "--json"],
    ));
    assert_eq!(
        outcomes(&e),
        vec![(
            fresh["key"].as_str().unwrap().to_string(),
            "exported".to_string()
        )]
    );
    // Until a run uses it: a hit records the use, and it is in the bundle again.
    assert_eq!(compile(&env, "b", &reqs[0], &[])["hit"], true);
    let e = ok_json(xc(
        &env,
        "b",
        &["export", "--out", s(&out), "--since", "7d", "--json"],
    ));
    assert_eq!(e["entries"].as_array().unwrap().len(), 2, "{e}");
    // Age without a unit is refused, as everywhere.
    let o = xc(&env, "a", &["export", "--out", s(&out), "--since", "7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn signed_bundles_and_remote_verify_required() {
    let env = Env::new();
    let reqs = requests(&env);
    compile(&env, "a", &reqs[1], &[]);
    let key = env.file("sign.key", "a secret of thirty-two characters\n");
    let other = env.file("other.key", "another secret, also long enough\n");
    let flags = |k: &Path, required: bool| {
        format!(
            "handout_grace=0s,remote_sign_key={}{}",
            k.display(),
            if required {
                ",remote_verify=required"
            } else {
                ",remote_verify=if-signed"
            }
        )
    };
    let with = |base: &str, args: &[&str], f: Option<String>| {
        let mut c = xc(&env, base, args);
        if let Some(f) = f {
            c.env("XCACHE_FLAGS", f);
        }
        c
    };

    let signed = bundle(&env, "signed.tar.zst");
    let e = ok_json(with(
        "a",
        &["export", "--out", s(&signed), "--json"],
        Some(flags(&key, false)),
    ));
    assert_eq!(e["signed"], true);
    let unsigned = bundle(&env, "unsigned.tar.zst");
    ok_json(with(
        "a",
        &["export", "--out", s(&unsigned), "--json"],
        None,
    ));
    let forged = bundle(&env, "forged.tar.zst");
    ok_json(with(
        "a",
        &["export", "--out", s(&forged), "--json"],
        Some(flags(&other, false)),
    ));

    // Signed with the key, required: imported, the signature verified.
    let i = ok_json(with(
        "b",
        &["import", s(&signed), "--json"],
        Some(flags(&key, true)),
    ));
    assert_eq!(i["signature"], "verified");
    assert_eq!(count(&i, "imported"), 1, "{i}");

    // Unsigned, required: the whole bundle is refused, nothing imported.
    let (o, v) = run_json(with(
        "c",
        &["import", s(&unsigned), "--json"],
        Some(flags(&key, true)),
    ));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(v["error"]["kind"], "untrusted", "{v}");
    assert!(stderr(&o).contains("not signed"), "{}", stderr(&o));
    let listed = ok_json(xc(&env, "c", &["list", "--json"]));
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");

    // Signed with another secret: refused, required or not.
    for required in [true, false] {
        let o = with("c", &["import", s(&forged)], Some(flags(&key, required)))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    }
    // Required without a key is a configuration error that says the fix.
    let o = with(
        "c",
        &["import", s(&signed)],
        Some("handout_grace=0s,remote_verify=required".into()),
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs remote_sign_key"),
        "{}",
        stderr(&o)
    );
    // Without a key, signatures cannot be checked: accepted, and said so.
    let i = ok_json(with("c", &["import", s(&signed), "--json"], None));
    assert_eq!(i["signature"], "not-checked");
    assert_eq!(count(&i, "imported"), 1);
}

#[test]
fn a_header_that_differs_here_is_refused_for_that_entry_only() {
    let env = Env::new();
    let reqs = requests(&env);
    let with_header = compile(&env, "a", &reqs[0], &[]);
    let plain = compile(&env, "a", &reqs[1], &[]);
    let out = bundle(&env, "cache.tar.zst");
    ok_json(xc(&env, "a", &["export", "--out", s(&out), "--json"]));

    // The importing side has another h.h at the same path.
    let h = env.dir.path().join("inc/h.h");
    write_header(&h, "#define VAL 8\n");
    let (o, i) = run_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(o.status.code(), Some(1), "{i}");
    let entries = i["entries"].as_array().unwrap();
    let refused = entries
        .iter()
        .find(|e| e["key"] == with_header["key"])
        .unwrap();
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["refusal"], "headers-differ");
    assert!(
        refused["reason"].as_str().unwrap().contains(s(&h)),
        "the header is named: {refused}"
    );
    let taken = entries.iter().find(|e| e["key"] == plain["key"]).unwrap();
    assert_eq!(taken["outcome"], "imported", "{taken}");
    let text =
        String::from_utf8_lossy(&xc(&env, "c", &["import", s(&out)]).output().unwrap().stdout)
            .into_owned();
    assert!(
        text.contains("REFUSED") && text.contains("differs on this machine"),
        "{text}"
    );

    // The header as it was: the entry is taken, and hits.
    write_header(&h, "#define VAL 7\n");
    let i = ok_json(xc(&env, "b", &["import", s(&out), "--json"]));
    let by_key: std::collections::HashMap<_, _> = outcomes(&i).into_iter().collect();
    assert_eq!(
        by_key[with_header["key"].as_str().unwrap()],
        "imported",
        "{i}"
    );
    assert_eq!(by_key[plain["key"].as_str().unwrap()], "already-here");
    let v = compile(&env, "b", &reqs[0], &[]);
    assert_eq!(v["hit"], true, "{v}");
}

#[test]
fn what_is_not_a_bundle_is_refused_and_an_export_replaces_its_file_whole() {
    let env = Env::new();
    let reqs = requests(&env);
    compile(&env, "a", &reqs[1], &[]);
    let junk = env.file("junk.tar.zst", "this is not a bundle\n");
    let (o, v) = run_json(xc(&env, "b", &["import", s(&junk), "--json"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an xcache bundle"),
        "{v}"
    );
    let o = xc(&env, "b", &["import", s(&bundle(&env, "missing.tar.zst"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));

    // Over an existing file: replaced by the new bundle, which imports.
    let out = bundle(&env, "cache.tar.zst");
    std::fs::write(&out, "an older file").unwrap();
    ok_json(xc(&env, "a", &["export", "--out", s(&out), "--json"]));
    let i = ok_json(xc(&env, "b", &["import", s(&out), "--json"]));
    assert_eq!(count(&i, "imported"), 1);
    // Into a directory that does not exist: an error naming it, nothing written.
    let o = xc(
        &env,
        "a",
        &[
            "export",
            "--out",
            s(&env.dir.path().join("nowhere/cache.tar.zst")),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nowhere"), "{}", stderr(&o));
}

/// The bundle at `path` without its `index.mac` member: the rest byte for byte.
fn strip_mac(path: &Path, out: &Path) {
    let tar_bytes = zstd::stream::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut tar = tar::Builder::new(Vec::new());
    let mut dropped = 0;
    for m in archive.entries().unwrap() {
        let mut m = m.unwrap();
        let name = String::from_utf8_lossy(&m.path_bytes()).into_owned();
        if name == xcache::remote::bundle::MAC_MEMBER {
            dropped += 1;
            continue;
        }
        let mut header = m.header().clone();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut m, &mut bytes).unwrap();
        tar.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    assert_eq!(dropped, 1, "a signed bundle has one MAC");
    let tar = tar.into_inner().unwrap();
    std::fs::write(out, zstd::stream::encode_all(&tar[..], 3).unwrap()).unwrap();
}

#[test]
fn a_signed_bundle_whose_mac_was_removed_is_refused_where_a_key_is_set() {
    let env = Env::new();
    let reqs = requests(&env);
    let built = compile(&env, "a", &reqs[1], &[]);
    let key = env.file("sign.key", "a secret of thirty-two characters\n");
    let with_key = |base: &str, args: &[&str], extra: &str| {
        let mut c = xc(&env, base, args);
        c.env(
            "XCACHE_FLAGS",
            format!("handout_grace=0s,remote_sign_key={}{extra}", key.display()),
        );
        c
    };
    let signed = bundle(&env, "signed.tar.zst");
    let e = ok_json(with_key(
        "a",
        &["export", "--out", s(&signed), "--json"],
        "",
    ));
    assert_eq!(e["signed"], true);
    let stripped = bundle(&env, "stripped.tar.zst");
    strip_mac(&signed, &stripped);

    // A key alone makes signatures required: the stripped bundle is refused whole.
    let (o, v) = run_json(with_key("b", &["import", s(&stripped), "--json"], ""));
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["error"]["kind"], "untrusted", "{v}");
    assert!(
        stderr(&o).contains("not signed") && stderr(&o).contains("remote_verify = if-signed"),
        "{}",
        stderr(&o)
    );
    let listed = ok_json(xc(&env, "b", &["list", "--json"]));
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    // So the request is compiled here, not loaded from the bundle.
    let v = compile(&env, "b", &reqs[1], &[]);
    assert_eq!(
        (v["hit"].clone(), v["key"].clone()),
        (false.into(), built["key"].clone())
    );
    // The intact bundle passes, verified.
    let i = ok_json(with_key("c", &["import", s(&signed), "--json"], ""));
    assert_eq!(i["signature"], "verified");
    assert_eq!(count(&i, "imported"), 1, "{i}");
    // `remote_verify = if-signed`, set explicitly, still loosens it.
    let i = ok_json(with_key(
        "d",
        &["import", s(&stripped), "--json"],
        ",remote_verify=if-signed",
    ));
    assert_eq!(i["signature"], "unsigned");
    assert_eq!(count(&i, "imported"), 1, "{i}");
    // `xcache config` shows it unset by default, and says what unset means.
    let cfg = ok_json(with_key("a", &["config", "--json"], ""));
    let row = cfg
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "remote_verify")
        .unwrap();
    assert_eq!(row["value"], "", "{row}");
    assert!(
        row["doc"]
            .as_str()
            .unwrap()
            .contains("`required` when remote_sign_key is set"),
        "{row}"
    );
}

#[test]
fn a_sign_key_that_is_no_regular_file_is_an_error_not_a_hang() {
    let env = Env::new();
    let reqs = requests(&env);
    compile(&env, "a", &reqs[1], &[]);
    let fifo = env.dir.path().join("key.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = env.dir.path().join("big.key");
    std::fs::write(&big, vec![b'k'; 100 << 10]).unwrap();
    let out = bundle(&env, "b.tar.zst");
    ok_json(xc(&env, "a", &["export", "--out", s(&out), "--json"]));
    for (key, says) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (big.as_path(), "more than the 65536 allowed"),
    ] {
        for args in [
            vec!["export", "--out", s(&out), "--json"],
            vec!["import", s(&out), "--json"],
        ] {
            let mut c = xc(&env, "a", &args);
            c.env(
                "XCACHE_FLAGS",
                format!("handout_grace=0s,remote_sign_key={}", key.display()),
            );
            let r = common::run_bounded(c, env.dir.path(), std::time::Duration::from_secs(60));
            assert!(!r.timed_out, "{args:?} with {}: hung", key.display());
            assert_eq!(r.code, Some(1), "{r:?}");
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["error"]["kind"], "config", "{v}");
            assert!(
                r.stderr.contains(key.to_str().unwrap())
                    && r.stderr.contains(says)
                    && r.stderr
                        .contains("Fix: point remote_sign_key at a regular file"),
                "{}",
                r.stderr
            );
        }
    }
}

/// A bundle entry that names files outside its request's include search (`/dev/zero`,
/// which hashing never finishes; `/etc/passwd` with its true hash, a probe) is refused
/// before any of them is read, with keys that derive as an honest writer's would.
#[test]
fn a_bundle_entry_naming_files_outside_its_include_search_is_refused_unread() {
    use xcache::store::key::{result_key, Key};
    let env = Env::new();
    env.file("h.h", "#define V 7\n");
    let src = env.file("k.c", "#include \"h.h\"\nint f(void) { return V; }\n");
    common::stdout(&env.run(&["compile", src.to_str().unwrap()]));
    let real = env.dir.path().join("real.tar.zst");
    common::stdout(&env.run(&["export", "--out", real.to_str().unwrap()]));
    let passwd = blake3::hash(&std::fs::read("/etc/passwd").unwrap())
        .to_hex()
        .to_string();
    for (path, hash) in [("/dev/zero", "00".repeat(32)), ("/etc/passwd", passwd)] {
        let (index, mut entries) = common::read_real(&real);
        for e in &mut entries {
            e.meta["headers"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"path": path, "blake3": hash}));
            let request: Key = e.meta["request_key"].as_str().unwrap().parse().unwrap();
            let digests: Vec<(String, String)> = e.meta["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["path"].as_str().unwrap().to_string(),
                        h["blake3"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let pairs: Vec<(&str, &str)> = digests
                .iter()
                .map(|(p, h)| (p.as_str(), h.as_str()))
                .collect();
            let key = result_key(&request, &pairs).hex();
            e.meta["key"] = key.clone().into();
            e.index.key = key;
        }
        let crafted = env.dir.path().join("crafted.tar.zst");
        common::write_entries(index, entries, &crafted);
        let other = Env::new();
        let t = std::time::Instant::now();
        let o = other.run(&["import", crafted.to_str().unwrap(), "--json"]);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t.elapsed()
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let text = v.to_string();
        assert!(
            text.contains("outside the include search"),
            "{path}: refused unread: {text}"
        );
        assert!(
            v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["outcome"] == "refused"),
            "{v}"
        );
    }
}
