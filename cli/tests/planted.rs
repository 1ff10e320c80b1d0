//! Nothing planted in the cache makes xcache write or remove outside it.
//!
//! A symbolic link is planted at each place xcache writes (a lock file, a lock fan
//! directory, the statistics file, an entry's metadata, `tmp/` and `quarantine/`
//! names), pointing at a file or directory outside the base dir. Then every verb that
//! writes or removes runs: `compile`, `clear`, `purge`, `prune`, `stats`,
//! `verify --repair`. The target must be unchanged (content, mtime, directory
//! listing), and where xcache refuses, its error or report names the link.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::{set_mtime, stdout, Env};
use serde_json::Value;

/// A file and a directory outside the cache, and a way to check they are untouched.
struct Victims {
    file: PathBuf,
    dir: PathBuf,
    file_mtime: SystemTime,
}

impl Victims {
    fn new(env: &Env) -> Victims {
        let dir = env.dir.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "precious").unwrap();
        let file = env.dir.path().join("victim.txt");
        std::fs::write(&file, "precious").unwrap();
        set_mtime(&file, 86_400);
        let file_mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        Victims {
            file,
            dir,
            file_mtime,
        }
    }

    fn check(&self, after: &str) {
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            "precious",
            "{after} wrote through a link"
        );
        assert_eq!(
            std::fs::metadata(&self.file).unwrap().modified().unwrap(),
            self.file_mtime,
            "{after} touched a file through a link"
        );
        let names: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["keep.txt"],
            "{after} wrote or removed outside the cache"
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.join("keep.txt")).unwrap(),
            "precious"
        );
    }
}

/// Compiles `k.c` and returns its key.
fn compile(env: &Env) -> String {
    let src = env.file("k.c", "int f(void) { return 1; }\n");
    let v = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    v["key"].as_str().unwrap().to_string()
}

/// Runs every writing verb; returns (verb, exit code, stdout, stderr) of each.
fn run_all(env: &Env, v: &Victims) -> Vec<(String, Option<i32>, String, String)> {
    let src = env.dir.path().join("k.c");
    let mut out = Vec::new();
    for args in [
        vec!["compile", src.to_str().unwrap()],
        vec!["stats"],
        vec!["clear", "--force"],
        vec!["prune", "--max-size", "1B"],
        vec!["purge"],
        vec!["verify", "--repair", "--json"],
    ] {
        let o = env
            .cmd(&args)
            .env(
                "XCACHE_FLAGS",
                "handout_grace=0s,staging_grace=0s,stale_after=0s",
            )
            .output()
            .unwrap();
        v.check(&args.join(" "));
        out.push((
            args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ));
    }
    out
}

/// The verbs that met the link named it: in an error, a warning, or verify's report.
fn assert_named(results: &[(String, Option<i32>, String, String)], link: &Path) {
    let link = link.to_str().unwrap();
    let verify = &results.last().unwrap();
    let report: Value = serde_json::from_str(&verify.2).unwrap_or(Value::Null);
    let in_report = report["problems"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["path"] == link));
    let in_errors = results.iter().any(|(_, _, _, err)| err.contains(link));
    assert!(in_report || in_errors, "nothing named {link}: {results:#?}");
    for (verb, code, _, err) in results {
        if *code != Some(0) {
            assert!(err.contains("symbolic link"), "{verb}: {err}");
        }
    }
}

fn lock_of(env: &Env, key: &str) -> PathBuf {
    env.compiledir()
        .join("locks")
        .join(&key[..2])
        .join(format!("{key}.lock"))
}

#[test]
fn a_link_at_a_lock_file() {
    let env = Env::new();
    let v = Victims::new(&env);
    let key = compile(&env);
    let lock = lock_of(&env, &key);
    std::fs::remove_file(&lock).unwrap();
    symlink(&v.file, &lock).unwrap();
    let r = run_all(&env, &v);
    assert_named(&r, &lock);
    // A hit on that key compiled privately instead, with a warning naming the link.
    assert_eq!(r[0].1, Some(0), "{r:#?}");
    assert!(r[0].3.contains(lock.to_str().unwrap()), "{}", r[0].3);
}

#[test]
fn a_link_at_a_lock_fan() {
    let env = Env::new();
    let v = Victims::new(&env);
    let key = compile(&env);
    let fan = lock_of(&env, &key).parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&fan).unwrap();
    symlink(&v.dir, &fan).unwrap();
    let r = run_all(&env, &v);
    assert_named(&r, &fan);
}

#[test]
fn a_link_at_the_stats_file() {
    let env = Env::new();
    let v = Victims::new(&env);
    compile(&env);
    let counters = env.compiledir().join("stats/counters.json");
    std::fs::remove_file(&counters).unwrap();
    symlink(&v.file, &counters).unwrap();
    let r = run_all(&env, &v);
    assert_named(&r, &counters);
    assert_eq!(r[1].1, Some(1), "stats refuses: {r:#?}");
}

#[test]
fn a_link_at_an_entry_json() {
    let env = Env::new();
    let v = Victims::new(&env);
    let key = compile(&env);
    let meta = env
        .compiledir()
        .join("entries")
        .join(&key[..2])
        .join(&key)
        .join("entry.json");
    std::fs::remove_file(&meta).unwrap();
    symlink(&v.file, &meta).unwrap();
    let r = run_all(&env, &v);
    // The hit found the entry corrupt, quarantined it (the link inside, untouched) and
    // rebuilt it, saying why.
    assert_eq!(r[0].1, Some(0), "{r:#?}");
    assert!(r[0].3.contains("symbolic link"), "{}", r[0].3);
}

#[test]
fn links_under_tmp_and_quarantine() {
    let env = Env::new();
    let v = Victims::new(&env);
    let key = compile(&env);
    let cd = env.compiledir();
    let planted = [
        cd.join(format!("tmp/build-{key}-1-0-x")),
        cd.join(format!("tmp/delete-{key}-1-0-x")),
        cd.join(format!("tmp/failed-{key}-1-0-x")),
        cd.join(format!("quarantine/{key}-1700000000-1-0-x")),
        cd.join("quarantine/not-ours"),
    ];
    std::fs::create_dir_all(cd.join("quarantine")).unwrap();
    for p in &planted {
        symlink(&v.dir, p).unwrap();
    }
    let f = cd.join(format!("tmp/build-{key}-2-0-y"));
    symlink(&v.file, &f).unwrap();
    let r = run_all(&env, &v);
    for (verb, code, _, err) in &r {
        assert_eq!(*code, Some(0), "{verb}: {err}");
    }
    // Removed as links (their targets checked above), or reported by verify.
    for p in planted.iter().chain([&f]) {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} is still there",
            p.display()
        );
    }
}

#[test]
fn verify_names_every_planted_link_and_repair_removes_only_the_links() {
    let env = Env::new();
    let v = Victims::new(&env);
    let key = compile(&env);
    let cd = env.compiledir();
    let links = [
        cd.join("toolchains/evil.json"),
        cd.join("entries")
            .join(&key[..2])
            .join(&key)
            .join("source.c.link"),
        cd.join("locks/zz"),
    ];
    for l in &links {
        symlink(&v.file, l).unwrap();
    }
    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for l in &links {
        let p = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == l.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not reported: {report:#}", l.display()));
        assert_eq!(p["kind"], "planted-link");
        assert!(p["repaired"].is_null());
    }
    let report = env.json(&["verify", "--repair", "--json"]);
    v.check("verify --repair");
    for l in &links {
        assert!(std::fs::symlink_metadata(l).is_err(), "{report:#}");
    }
    let report = env.json(&["verify", "--json"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    // A foreign-writable directory in the cache is refused by every verb, by name.
    std::fs::set_permissions(
        cd.join("locks"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = env.run(&["verify"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(cd.join("locks").to_str().unwrap()), "{err}");
    assert!(stdout(&env.run(&["basecompiledir"])).contains("cache"));
}

#[test]
fn a_fan_directory_others_may_write_is_refused_by_hits_and_repaired_by_verify() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.file("k.c", "int f(void) { return 3; }\n");
    let first = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    let lib = PathBuf::from(first["path"].as_str().unwrap());
    let fan = lib.parent().unwrap().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&fan, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A request neither hits nor loads from there: it compiles privately and says why.
    let o = env.run(&["compile", src.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hit"], false, "{v}");
    assert!(
        !v["path"]
            .as_str()
            .unwrap()
            .starts_with(env.base().to_str().unwrap()),
        "{v}"
    );
    let err = common::stderr(&o);
    assert!(
        err.contains(&fan.display().to_string()) && err.contains("verify --repair"),
        "{err}"
    );
    // verify names it; --repair removes it (its entries are rebuilt by the next request).
    let o = env.run(&["verify"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(&fan.display().to_string()));
    assert!(fan.exists(), "verify alone changes nothing");
    env.run(&["verify", "--repair"]);
    assert!(!fan.exists());
    let again = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    assert_eq!(again["path"], first["path"]);
    let hit = env.json(&["compile", src.to_str().unwrap(), "--json"]);
    assert_eq!(hit["hit"], true);
}

#[test]
fn verify_repair_removes_a_link_planted_where_a_compiledir_directory_should_be() {
    for sub in ["entries", "locks", "manifests", "tmp"] {
        let env = Env::new();
        let v = Victims::new(&env);
        compile(&env);
        let cd = env.compiledir();
        let planted = cd.join(sub);
        std::fs::remove_dir_all(&planted).unwrap();
        symlink(&v.dir, &planted).unwrap();
        // Every verb refuses it by name, and says what mends it.
        let o = env.run(&["verify"]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(planted.to_str().unwrap()) && err.contains("verify --repair"),
            "{err}"
        );
        // And it does.
        let report = env.json(&["verify", "--repair", "--json"]);
        v.check(&format!("verify --repair with {sub} planted"));
        let p = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == planted.to_str().unwrap())
            .unwrap_or_else(|| panic!("{sub} not reported: {report:#}"));
        assert_eq!(p["kind"], "planted-link");
        assert!(
            p["repaired"]
                .as_str()
                .unwrap()
                .contains("what it points to is untouched"),
            "{p}"
        );
        let m = std::fs::symlink_metadata(&planted).unwrap();
        assert!(m.is_dir() && !m.file_type().is_symlink(), "{sub}");
        assert!(env.json(&["verify", "--json"])["problems"]
            .as_array()
            .unwrap()
            .is_empty());
        // The cache works again.
        compile(&env);
        v.check("compile after the repair");
    }
    // A link where the compiledir itself should be: the same.
    let env = Env::new();
    let v = Victims::new(&env);
    compile(&env);
    let cd = env.compiledir();
    std::fs::rename(&cd, env.dir.path().join("moved")).unwrap();
    symlink(&v.dir, &cd).unwrap();
    let o = env.run(&["verify", "--repair"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    v.check("verify --repair with the compiledir planted");
    assert!(std::fs::symlink_metadata(&cd).unwrap().is_dir());
    // A FIFO there is removed as well; a regular file is left, with what to do by hand.
    let fifo = cd.join("tmp");
    std::fs::remove_dir_all(&fifo).unwrap();
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let report = env.json(&["verify", "--repair", "--json"]);
    assert!(report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["path"] == fifo.to_str().unwrap() && p["kind"] == "planted-file"));
    assert!(fifo.is_dir());
    std::fs::remove_dir_all(&fifo).unwrap();
    std::fs::write(&fifo, "mine").unwrap();
    let o = env.run(&["verify", "--repair"]);
    assert_eq!(o.status.code(), Some(1));
    let err = common::stderr(&o);
    assert!(
        err.contains(fifo.to_str().unwrap())
            && err.contains("not a directory")
            && err.contains("Fix: remove it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&fifo).unwrap(), "mine");
}
