//! Reading the dependency file a compiler writes with `-MD -MF FILE` (gcc, clang and
//! nvcc all write Make syntax): the files it read to compile the source.

use std::path::{Path, PathBuf};

/// The prerequisites of the first rule of a Make-syntax dependency file, in order,
/// without duplicates. Continuation lines (`\` before a newline) are joined; `\ ` is an
/// escaped space, `$$` a dollar, `\#` a hash.
pub fn parse(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    // The first line holding the rule; other rules (`-MP` phony targets) are ignored.
    let Some(rule) = joined.lines().find(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    let Some(colon) = find_rule_colon(rule) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = rule[colon + 1..].chars().peekable();
    let push = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() && !out.contains(cur) {
            out.push(std::mem::take(cur));
        }
        cur.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(' ') | Some('#') | Some('\\')) => {
                cur.push(chars.next().expect("peeked"))
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                cur.push('$');
            }
            c if c.is_whitespace() => push(&mut cur, &mut out),
            c => cur.push(c),
        }
    }
    push(&mut cur, &mut out);
    out
}

/// The colon that ends a rule's targets (not one escaped, and not the `:` of a path
/// such as `C:` that some compilers write on other systems).
fn find_rule_colon(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b':'
            && (i == 0 || b[i - 1] != b'\\')
            && b.get(i + 1).is_none_or(|c| c.is_ascii_whitespace())
    })
}

/// The headers among `deps`: absolute paths other than the source itself. Relative
/// paths name files in the build directory (the source and its explicit extra inputs,
/// which are in the key already); they are left out.
pub fn headers(deps: &[String], build_dir: &Path) -> Vec<PathBuf> {
    deps.iter()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && !p.starts_with(build_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_and_nvcc_styles() {
        let gcc = "lib.so: source.c /usr/include/stdc-predef.h /tmp/inc/h.h \\\n /usr/include/stdio.h \\\n /usr/include/x86_64-linux-gnu/bits/types.h\n";
        assert_eq!(
            parse(gcc),
            [
                "source.c",
                "/usr/include/stdc-predef.h",
                "/tmp/inc/h.h",
                "/usr/include/stdio.h",
                "/usr/include/x86_64-linux-gnu/bits/types.h"
            ]
        );
        let nvcc = "libcu.so : source.cu \\\n    /usr/include/stdc-predef.h \\\n    /opt/cuda/bin/../include/cuda_runtime.h \\\n";
        assert_eq!(
            parse(nvcc),
            [
                "source.cu",
                "/usr/include/stdc-predef.h",
                "/opt/cuda/bin/../include/cuda_runtime.h"
            ]
        );
    }

    #[test]
    fn escapes_duplicates_and_phony_rules() {
        let t = "out: a\\ b.h /x/$$y.h /x/\\#z.h a\\ b.h\n\na\\ b.h:\n/x/$$y.h:\n";
        assert_eq!(parse(t), ["a b.h", "/x/$y.h", "/x/#z.h"]);
        assert!(parse("").is_empty());
        assert!(parse("no rule here\n").is_empty());
        let win = "out: C:/x/h.h\n";
        assert_eq!(parse(win), ["C:/x/h.h"]);
    }

    #[test]
    fn headers_are_absolute_and_outside_the_build() {
        let deps: Vec<String> = [
            "source.c",
            "defs.h",
            "/b/tmp/build-x/gen.h",
            "/usr/include/stdio.h",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            headers(&deps, Path::new("/b/tmp/build-x")),
            [PathBuf::from("/usr/include/stdio.h")]
        );
    }
}
