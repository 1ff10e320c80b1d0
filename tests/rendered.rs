//! Memos of rendered template requests (`toolchains/render-<digest>.json`): a fresh
//! `Jit` asking for a request rendered before reads the source back instead of
//! rendering; an edited template, other parameters or a damaged memo render again (and
//! a damaged memo is rewritten); pruning removes memos older than their time to live and
//! a purge removes them with the compiledir. No compiler is needed: only rendering is
//! exercised.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::TestCache;
use xcache::clock::ManualClock;
use xcache::store::gc::PruneOptions;
use xcache::{Jit, TemplateRequest};

fn elemwise(expr: &str) -> TemplateRequest {
    TemplateRequest::new("c/elemwise")
        .param("dtype", "float32")
        .param("arity", 2)
        .param("expr", expr)
}

fn memos(tc: &TestCache) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tc.compiledir().join("toolchains"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("render-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_fresh_jit_reads_a_rendered_request_back_and_renders_only_what_changed() {
    let tc = TestCache::new();
    let first = Jit::new(tc.config()).unwrap();
    let a = first.render(&elemwise("a*b+1")).unwrap();
    assert_eq!(first.renders(), 1);
    assert_eq!(memos(&tc).len(), 1);

    // A fresh Jit (a fresh process, as far as the memo goes): read back, not rendered,
    // the same source request to the byte.
    let second = Jit::new(tc.config()).unwrap();
    let b = second.render(&elemwise("a*b+1")).unwrap();
    assert_eq!(second.renders(), 0);
    assert_eq!(
        (&a.source, &a.flags, &a.template, &a.language, &a.name),
        (&b.source, &b.flags, &b.template, &b.language, &b.name)
    );
    // The request's own flags come after the template's, as when rendered.
    let with_flag = second.render(&elemwise("a*b+1").flag("-DEXTRA=1")).unwrap();
    assert_eq!(second.renders(), 0);
    assert_eq!(
        with_flag.flags.last().map(String::as_str),
        Some("-DEXTRA=1")
    );

    // Other parameters: rendered.
    let c = second.render(&elemwise("a*b+2")).unwrap();
    assert_eq!(second.renders(), 1);
    assert_ne!(c.source, a.source);
    assert_eq!(memos(&tc).len(), 2);

    // Bad parameters are still refused (and leave no memo).
    let e = second.render(&elemwise("a*zz")).unwrap_err().to_string();
    assert!(e.contains("expr"), "{e}");
    assert_eq!(memos(&tc).len(), 2);
}

#[test]
fn an_edited_template_renders_again() {
    let tc = TestCache::new();
    let dir = tc.dir.path().join("templates");
    std::fs::create_dir_all(dir.join("c")).unwrap();
    let text = xcache::compile::template::EMBEDDED
        .iter()
        .find(|(rel, _)| *rel == "c/elemwise.c")
        .unwrap()
        .1;
    let file = dir.join("c/elemwise.c");
    std::fs::write(&file, text).unwrap();
    let mut config = tc.config();
    config.set("template_path", dir.to_str().unwrap()).unwrap();

    let first = Jit::new(config.clone()).unwrap();
    let a = first.render(&elemwise("a+b")).unwrap();
    assert_eq!(first.renders(), 1);
    let again = Jit::new(config.clone()).unwrap();
    again.render(&elemwise("a+b")).unwrap();
    assert_eq!(again.renders(), 0);

    std::fs::write(&file, format!("{text}\n/* edited */\n")).unwrap();
    let edited = Jit::new(config).unwrap();
    let b = edited.render(&elemwise("a+b")).unwrap();
    assert_eq!(
        edited.renders(),
        1,
        "the memo of the old text must not be used"
    );
    let has = |s: &[u8]| String::from_utf8_lossy(s).contains("/* edited */");
    assert!(has(&b.source) && !has(&a.source));
    assert_ne!(a.template, b.template);
}

#[test]
fn a_damaged_memo_is_rendered_again_and_rewritten() {
    let tc = TestCache::new();
    let want = Jit::new(tc.config())
        .unwrap()
        .render(&elemwise("a-b"))
        .unwrap();
    let [memo] = <[PathBuf; 1]>::try_from(memos(&tc)).unwrap();
    let good = std::fs::read(&memo).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    // Too large; the source changed but its hash not; cut short; not JSON at all.
    let tampered = text.replacen("xc_elemwise", "xc_elemwisf", 1);
    assert_ne!(tampered, text);
    // A whole memo padded (with JSON's own whitespace) past the largest record read:
    // not read at all.
    let mut huge = good.clone();
    huge.resize(xcache::store::MAX_TOOLCHAIN_RECORD as usize + 1, b' ');
    for bad in [
        huge,
        tampered.into_bytes(),
        good[..good.len() / 2].to_vec(),
        b"\0\0garbage".to_vec(),
    ] {
        std::fs::write(&memo, &bad).unwrap();
        let jit = Jit::new(tc.config()).unwrap();
        let got = jit.render(&elemwise("a-b")).unwrap();
        assert_eq!(jit.renders(), 1, "a damaged memo must not be used");
        assert_eq!(got.source, want.source);
        // Rewritten: the next fresh Jit reads it back.
        let next = Jit::new(tc.config()).unwrap();
        next.render(&elemwise("a-b")).unwrap();
        assert_eq!(next.renders(), 0);
    }
}

#[test]
fn pruning_removes_memos_past_their_time_to_live_and_purge_removes_them_all() {
    let tc = TestCache::new();
    let t0 = SystemTime::now();
    let clock = Arc::new(ManualClock::new(t0));
    let jit = Jit::with_clock(tc.config(), clock.clone()).unwrap();
    jit.render(&elemwise("a*2")).unwrap();
    assert_eq!(memos(&tc).len(), 1);

    // A prune within the time to live keeps it; one after it removes it.
    jit.store().prune(&PruneOptions::default()).unwrap();
    assert_eq!(memos(&tc).len(), 1);
    clock.set(t0 + xcache::store::gc::RENDERED_TTL + Duration::from_secs(60));
    let dry = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    jit.store().prune(&dry).unwrap();
    assert_eq!(memos(&tc).len(), 1, "a dry run removes nothing");
    jit.store().prune(&PruneOptions::default()).unwrap();
    assert_eq!(memos(&tc).len(), 0);

    // Rendered again, then purged with the compiledir.
    let fresh = Jit::new(tc.config()).unwrap();
    fresh.render(&elemwise("a*2")).unwrap();
    assert_eq!(fresh.renders(), 1);
    assert_eq!(memos(&tc).len(), 1);
    fresh.store().purge(false, false).unwrap();
    assert!(
        std::fs::read_dir(tc.base())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("compiledir_")),
        "the compiledir is gone whole, memos included"
    );
}
