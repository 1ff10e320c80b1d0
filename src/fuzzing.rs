//! The properties the fuzz targets check (`fuzz/`, run with cargo-fuzz), kept in the
//! library so that `tests/fuzz_smoke.rs` runs the same checks on generated inputs in
//! every CI run. Each function must never panic, whatever the bytes; the properties
//! below are asserted.

use std::path::Path;

use crate::compile::expr::{self, Dtype};
use crate::compile::template;
use crate::config::Config;
use crate::platform::CompiledirFormat;
use crate::store::entry;
use crate::store::key::Key;

const INPUTS: &[&str] = &["a", "b", "c"];

/// Expressions: a parse that succeeds emits for every dtype that accepts it, and its
/// canonical display parses back to the same tree; emitted C never contains a quote,
/// a semicolon, a brace, a backslash or a comment.
pub fn expr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(e) = expr::parse(&text, INPUTS) else {
        return;
    };
    let shown = e.display(INPUTS);
    // The display adds spaces: past the length limit it need not parse again.
    if shown.len() <= expr::MAX_LEN {
        let again = expr::parse(&shown, INPUTS).expect("canonical display re-parses");
        assert_eq!(again, e, "display round trip of {text:?} via {shown:?}");
    }
    for dt in [Dtype::F32, Dtype::F64, Dtype::I32, Dtype::I64] {
        if e.check(dt).is_ok() {
            let c = e.emit(dt, INPUTS);
            assert!(
                !c.contains(['"', '\'', ';', '{', '}', '\\', '#'])
                    && !c.contains("/*")
                    && !c.contains("//"),
                "emitted C for {text:?} holds a dangerous character: {c}"
            );
        }
    }
}

/// Template parameters: `key=value` lines for `c/elemwise`; rendering either fails with
/// an error or produces source whose expression came from the parse tree.
pub fn template_params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let params: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::defaults();
    for name in ["elemwise", "reduce", "gemm"] {
        let t = template::find(name, &config).expect("shipped template");
        if let Ok(r) = t.render(&params) {
            assert!(!r.source.contains("system("), "{params:?}");
        }
    }
}

/// Configuration: a TOML file and an `XCACHE_FLAGS` string; errors, never panics.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut c = Config::defaults();
    let _ = c.apply_toml(&text, Path::new("fuzz.toml"));
    let mut c = Config::defaults();
    let _ = c.apply_flags(&text);
    let _ = CompiledirFormat::parse(&text);
}

/// Metadata: `entry.json` and compiledir names; errors, never panics.
pub fn metadata(data: &[u8]) {
    let key: Key = "00".repeat(32).parse().expect("valid key");
    let _ = entry::parse_meta(data, &key);
    let text = String::from_utf8_lossy(data);
    let f = CompiledirFormat::parse("{os}-{kernel}-{arch}-{libc}[-{runtime}]-xc{layout}")
        .expect("default format");
    if let Some(p) = f.parse_name(&text) {
        // A name that parses renders back to itself.
        assert_eq!(f.render(&p), text, "{text:?}");
    }
}
