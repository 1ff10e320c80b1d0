//! The properties the fuzz targets check (`fuzz/`, run with cargo-fuzz), kept in the
//! library so that `tests/fuzz_smoke.rs` runs the same checks on generated inputs in
//! every CI run. Each function must never panic, whatever the bytes; the properties
//! below are asserted.

use std::path::Path;

use crate::compile::expr::{self, Dtype};
use crate::compile::template;
use crate::config::Config;
use crate::platform::CompiledirFormat;
use crate::remote::bundle::{self, ImportOutcome};
use crate::store::entry;
use crate::store::key::Key;
use crate::store::pack::{Packed, SignKey};
use crate::store::Store;

const INPUTS: &[&str] = &["a", "b", "c"];

/// What a Redis server answers (RESP, the remote tier's wire format), within small
/// limits: parsing ends in replies or an error, never a panic; no bulk string exceeds
/// the limit; and each result record among the bulk strings is checked, unsigned and
/// with signatures required, never panicking (one without a `"mac"` is never taken when signatures are required).
pub fn resp(data: &[u8]) {
    use crate::remote::redis::{check_record, RecordReject};
    use crate::remote::resp::{parse_all, Limits, Value};
    let limits = Limits {
        max_bulk: 1 << 16,
        max_array: 1 << 10,
    };
    let Ok(values) = parse_all(data, limits) else {
        return;
    };
    fn bulks(v: &Value, out: &mut Vec<Vec<u8>>) {
        match v {
            Value::Bulk(b) => {
                assert!(b.len() <= 1 << 16);
                out.push(b.clone());
            }
            Value::Array(items) => items.iter().for_each(|i| bulks(i, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    values.iter().for_each(|v| bulks(v, &mut all));
    let request: Key = "ab".repeat(32).parse().expect("a key");
    let key = SignKey::from_secret(b"a fuzzing secret, long enough");
    for pair in all.chunks(2) {
        let [field, value] = pair else { continue };
        let _ = check_record(&request, field, value, None, false);
        // Signatures required: a record without a MAC is never taken.
        if !value.windows(5).any(|w| w == b"\"mac\"") {
            assert!(matches!(
                check_record(&request, field, value, Some(&key), true),
                Err(RecordReject::Malformed | RecordReject::Unsigned)
            ));
        }
    }
}

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

/// The cap [`packed`] decodes under: small, so that a value that claims more is refused
/// early, and a test can bound what one call allocates.
pub const PACKED_CAP: u64 = 1 << 20;

/// Packed values (what the remote tier stores and a bundle carries), unsigned, signed,
/// and with signatures required: decoding ends in a value or a refusal, never a panic;
/// what decodes unpacks to at most [`PACKED_CAP`], and encodes again to a value that
/// decodes the same.
pub fn packed(data: &[u8]) {
    let key = SignKey::from_secret(b"a fuzzing secret, long enough");
    for (sign, required) in [(None, false), (Some(&key), false), (Some(&key), true)] {
        let Ok(p) = Packed::decode(data, sign, required, PACKED_CAP) else {
            continue;
        };
        assert!(
            p.unpacked_size() <= PACKED_CAP,
            "{} bytes",
            p.unpacked_size()
        );
        let again = Packed::decode(&p.encode(sign), sign, required, u64::MAX)
            .expect("a decoded value, encoded again, decodes");
        assert_eq!(again, p, "round trip");
    }
}

/// The settings [`bundle_into`] expects of its store: a small entry limit and a small
/// total, so that what a bundle claims meets them.
pub fn bundle_config(base: &Path) -> Config {
    let mut c = Config::defaults();
    c.set_base_dir(base);
    c.set("max_entry_size", "1MiB").expect("a valid size");
    c.set("max_size", "8MiB").expect("a valid size");
    c
}

/// `xcache import` of `data` into `store` (opened with [`bundle_config`]): the import
/// ends in a report or an error that says what is wrong, never a panic; it unpacks no
/// more than its limits; every entry it reports imported (or already here) passes the
/// hit check; and an entry it did not take is not in the store.
pub fn bundle_into(store: &Store, data: &[u8]) {
    let report = match bundle::import_bundle_from(store, Path::new("fuzz.tar.zst"), data) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let limits = report.limits;
    assert!(
        report.unpacked <= limits.total.unwrap_or(u64::MAX),
        "{} unpacked, limits {limits:?}",
        report.unpacked
    );
    for e in &report.entries {
        let key: Key = e.key.parse().expect("the index's keys are checked");
        let here = store.check_entry(&key);
        match &e.outcome {
            ImportOutcome::Imported | ImportOutcome::AlreadyHere => {
                assert!(
                    matches!(here, Ok(Some(_))),
                    "{} reported taken: {here:?}",
                    e.key
                )
            }
            ImportOutcome::Refused { .. } | ImportOutcome::Corrupt { .. }
                if e.compiledir == report.compiledir =>
            {
                // Refused now; it may have come in whole from an earlier input.
                assert!(here.is_ok(), "{}: {here:?}", e.key)
            }
            _ => {}
        }
    }
}

/// [`bundle_into`] a store of its own for this process (under the system's temporary
/// directory): the entry point of the `bundle` fuzz target.
pub fn bundle(data: &[u8]) {
    static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
    let store = STORE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("xcache-fuzz-bundle-{}", std::process::id()));
        Store::open(&bundle_config(&base)).expect("a store in the temporary directory")
    });
    bundle_into(store, data);
}
