//! What the compiler printed, made to read as a plain compile of the user's file would:
//! xcache compiles a copy (`source.c` in a staging directory), so its name is replaced by
//! the file the user gave, and a missing header gets a hint on how xcache finds them.

/// Replaces `from` where it names a file in compiler messages (at the start of a line
/// or after a space or `(`, and followed by `:`, `(` or `,`) by `to`.
pub fn rename(text: &str, from: &str, to: &str) -> String {
    if from == to || from.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().last();
        let after = rest[i + from.len()..].chars().next();
        let starts = before.is_none_or(|c| c == '\n' || c == ' ' || c == '(' || c == '"');
        let ends = matches!(after, Some(':') | Some('(') | Some(',') | Some('"'));
        out.push_str(&rest[..i]);
        out.push_str(if starts && ends { to } else { from });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The header a "not found" message names, if the compiler said one is missing (gcc,
/// clang, nvcc's front end).
pub fn missing_header(text: &str) -> Option<String> {
    for line in text.lines() {
        // gcc/clang: `x.c:1:10: fatal error: h.h: No such file or directory`,
        // clang: `fatal error: 'h.h' file not found`.
        if let Some(i) = line.find("fatal error: ") {
            let msg = &line[i + "fatal error: ".len()..];
            if let Some(name) = msg.strip_suffix(": No such file or directory") {
                return Some(name.trim().to_string());
            }
            if let Some(name) = msg.strip_suffix(" file not found") {
                return Some(name.trim().trim_matches('\'').to_string());
            }
        }
        // nvcc (EDG): `catastrophic error: cannot open source file "h.h"`.
        if let Some(i) = line.find("cannot open source file \"") {
            let name = &line[i + "cannot open source file \"".len()..];
            return Some(name.trim_end_matches('"').to_string());
        }
    }
    None
}

/// [`rename`], plus a hint when a header was not found.
pub fn explain(text: &str, from: &str, to: &str) -> String {
    let mut out = rename(text, from, to);
    if let Some(h) = missing_header(text) {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "xcache: hint: {h} was not found. A header beside the source file is found as in a plain compile (its directory is searched for #include \"...\"); a header elsewhere needs its directory as an absolute -I (--flag=-I/abs/dir); or pass the header itself with --include {h}. Every header read is tracked: editing it makes the next request compile again.\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_named_as_the_user_named_it() {
        let gcc = "source.c: In function 'f':\nsource.c:3:5: error: 'x' undeclared\nIn file included from source.c:1:\n/abs/h.h:2:1: error: bad\n";
        assert_eq!(
            rename(gcc, "source.c", "src/kernel.c"),
            "src/kernel.c: In function 'f':\nsrc/kernel.c:3:5: error: 'x' undeclared\nIn file included from src/kernel.c:1:\n/abs/h.h:2:1: error: bad\n"
        );
        // nvcc's front end: `source.cu(3): error: ...`.
        assert_eq!(
            rename("source.cu(3): error", "source.cu", "k.cu"),
            "k.cu(3): error"
        );
        // Not a file name: left alone.
        assert_eq!(rename("mysource.c: x", "source.c", "k.c"), "mysource.c: x");
        assert_eq!(rename("source.cpp: x", "source.c", "k.c"), "source.cpp: x");
    }

    #[test]
    fn missing_headers_get_a_hint() {
        for (text, name) in [
            (
                "k.c:1:10: fatal error: defs.h: No such file or directory",
                "defs.h",
            ),
            ("k.c:1:10: fatal error: 'defs.h' file not found", "defs.h"),
            (
                "k.cu(1): catastrophic error: cannot open source file \"defs.h\"",
                "defs.h",
            ),
        ] {
            assert_eq!(missing_header(text).as_deref(), Some(name), "{text}");
            let e = explain(text, "source.c", "k.c");
            assert!(
                e.contains("hint: defs.h was not found") && e.contains("--include defs.h"),
                "{e}"
            );
        }
        assert_eq!(missing_header("k.c:3:5: error: 'x' undeclared"), None);
    }
}
