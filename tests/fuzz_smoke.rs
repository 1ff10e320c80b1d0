//! The fuzz targets' properties (`src/fuzzing.rs`) on generated inputs, in every CI
//! run: random token soups built from the grammar's pieces and from hostile ones, and
//! random bytes. cargo-fuzz explores further (`fuzz/README.md`).

mod common;

use common::Rng;
use xcache::fuzzing;

const TOKENS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "x",
    "1",
    "0",
    "2.5",
    ".5",
    "1e10",
    "1e-3",
    "1e999",
    "99999999999999999999999",
    "9223372036854775808",
    "+",
    "-",
    "*",
    "/",
    "**",
    "(",
    ")",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    ",",
    "exp(",
    "log(",
    "sqrt(",
    "tanh(",
    "sin(",
    "cos(",
    "abs(",
    "min(",
    "max(",
    "pow(",
    "where(",
    "select(",
    "floor(",
    "ceil(",
    "round(",
    "log1p(",
    "expm1(",
    "sigmoid(",
    "erf(",
    "system(",
    " ",
    "\t",
    "\n",
    "\"",
    "'",
    ";",
    "{",
    "}",
    "/*",
    "*/",
    "//",
    "#",
    "\\",
    "[",
    "]",
    "&",
    "é",
    "\u{0}",
];

fn soup(rng: &mut Rng, max: u64) -> String {
    let n = rng.next() % max;
    (0..n)
        .map(|_| TOKENS[(rng.next() % TOKENS.len() as u64) as usize])
        .collect()
}

#[test]
fn expression_properties_hold_on_generated_input() {
    let mut rng = Rng(1);
    for _ in 0..30_000 {
        fuzzing::expr(soup(&mut rng, 24).as_bytes());
    }
    // Deep and long ones too.
    fuzzing::expr("(".repeat(10_000).as_bytes());
    fuzzing::expr(format!("{}a", "-".repeat(10_000)).as_bytes());
    fuzzing::expr(vec!["a"; 2_000].join("+").as_bytes());
    fuzzing::expr(vec!["a"; 256].join("*").as_bytes());
    fuzzing::expr(vec!["exp(a)"; 100].join("-").as_bytes());
}

#[test]
fn template_parameters_never_panic() {
    let mut rng = Rng(2);
    let keys = ["dtype", "arity", "expr", "op", "pre", "relu", "bogus", ""];
    let values = [
        "float32", "float64", "int32", "int64", "float16", "1", "3", "8", "9", "-1", "true", "no",
        "sum", "max", "x*x",
    ];
    for _ in 0..2_000 {
        let mut text = String::new();
        for _ in 0..(rng.next() % 6) {
            let k = keys[(rng.next() % keys.len() as u64) as usize];
            let v = if rng.next().is_multiple_of(3) {
                soup(&mut rng, 10)
            } else {
                values[(rng.next() % values.len() as u64) as usize].to_string()
            };
            text.push_str(&format!("{k}={v}\n"));
        }
        fuzzing::template_params(text.as_bytes());
    }
}

#[test]
fn config_and_metadata_parsers_never_panic() {
    let mut rng = Rng(3);
    let pieces = [
        "opt_level",
        "=",
        "\"3\"",
        "3",
        "max_size",
        "\"5GiB\"",
        "[params]",
        "\n",
        ",",
        "base_dir",
        "{os}",
        "{runtime}",
        "[",
        "]",
        "-",
        "xc",
        "{layout}",
        "compiledir_",
        "Linux",
        "6.1",
        "x86_64",
        "glibc2.36",
        "\"",
        "{",
        "}",
        ":",
        "key",
        "artifact",
        "null",
        "1e400",
        "true",
    ];
    for _ in 0..20_000 {
        let n = rng.next() % 16;
        let text: String = (0..n)
            .map(|_| pieces[(rng.next() % pieces.len() as u64) as usize])
            .collect();
        fuzzing::config(text.as_bytes());
        fuzzing::metadata(text.as_bytes());
        let bytes: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
        fuzzing::config(&bytes);
        fuzzing::metadata(&bytes);
    }
}
