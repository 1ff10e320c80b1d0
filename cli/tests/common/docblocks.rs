//! The examples of the user docs (README.md, docs/*.md), as the doc tests read them:
//! every fenced block with its language, its line, and what the HTML comment just
//! above it says about running it. Shared by the CLI's doc tests (console blocks, C
//! templates) and the C ABI's (C programs); python/tests/test_docs.py reads the same
//! comments for the Python blocks.
//!
//! A comment right above a fence (blank lines between are fine) steers it:
//!
//! ```text
//! <!-- doctest: skip: REASON -->          never run; reported as skipped, with REASON
//! <!-- doctest
//! needs: gpu                              run only where this machine has it (gpu,
//!                                         nvcc, nvrtc, redis-server, pytensor, python);
//!                                         else reported as skipped
//! cwd: /home/me                           where the commands run (a path of the doc's)
//! env: XCACHE_RUNTIME=cpython-3.11        more environment (repeatable)
//! let 72a725 = $(key_of k.c | cut -c1-6)  in the commands, this text stands for what
//!                                         the shell prints here (a key, a pid)
//! as: template c/scale.c scale            (C) what the block is: `program` (compiled,
//!                                         linked with libxcache.so and run),
//!                                         `template NAME SYMBOL` (compiled by xcache)
//! unordered: true                         the lines of each output in any order (rows
//!                                         in key order: keys change with the compiler)
//! setup:                                  the rest is shell, run before the commands
//! xcache compile k.c > /dev/null
//! -->
//! ```
//!
//! A `<!-- doctest-defaults … -->` comment, anywhere in a file, gives every console
//! block of the file the same keys (its `setup:` runs before the block's own).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// What a `doctest` comment says.
#[derive(Debug, Clone, Default)]
pub struct Directives {
    /// `skip: REASON`.
    pub skip: Option<String>,
    /// `needs: WHAT`.
    pub needs: Vec<String>,
    /// `cwd: PATH`.
    pub cwd: Option<String>,
    /// `env: KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// `let TEXT = SHELL`.
    pub lets: Vec<(String, String)>,
    /// `as: WHAT`.
    pub kind: Option<String>,
    /// `unordered: true`: the lines of each output are compared in any order (rows in
    /// key order, which changes with the machine's compiler).
    pub unordered: bool,
    /// `setup:` and what follows.
    pub setup: String,
}

impl Directives {
    /// Parses the text of a comment after `doctest` (`: skip: …` or lines).
    pub fn parse(text: &str) -> Result<Directives, String> {
        let mut d = Directives::default();
        let text = text.strip_prefix(':').unwrap_or(text);
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line == "setup:" {
                d.setup = lines.collect::<Vec<_>>().join("\n");
                break;
            }
            if let Some(rest) = line.strip_prefix("let ") {
                let (name, shell) = rest
                    .split_once(" = ")
                    .ok_or_else(|| format!("not `let TEXT = SHELL`: {line:?}"))?;
                d.lets
                    .push((name.trim().to_string(), shell.trim().to_string()));
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not `key: value`: {line:?}"))?;
            let value = value.trim().to_string();
            match key.trim() {
                "skip" => d.skip = Some(value),
                "needs" => d.needs.extend(value.split_whitespace().map(str::to_string)),
                "cwd" => d.cwd = Some(value),
                "env" => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| format!("env: not KEY=VALUE: {value:?}"))?;
                    d.env.push((k.to_string(), v.to_string()));
                }
                "as" => d.kind = Some(value),
                "unordered" => d.unordered = value == "true",
                k => return Err(format!("unknown key {k:?} in {line:?}")),
            }
        }
        Ok(d)
    }
}

/// One fenced block of a doc.
#[derive(Debug, Clone)]
pub struct Block {
    /// The doc, relative to the repository (`docs/CLI.md`).
    pub file: String,
    /// The line of its opening fence, from 1.
    pub line: usize,
    /// The fence's language (`console`, `python`, `c`, …; empty when none).
    pub lang: String,
    /// Its text, without the fences.
    pub body: String,
    /// The comment above it (and, for console blocks, the file's defaults).
    pub directives: Directives,
    /// The file's `doctest-defaults`.
    pub defaults: Directives,
}

impl Block {
    /// `docs/CLI.md:412`.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("docs").is_dir() && p.join("README.md").is_file())
        .expect("the repository's root")
        .to_path_buf()
}

/// README.md and every docs/*.md, relative to the root, sorted.
pub fn doc_files() -> Vec<String> {
    let root = repo_root();
    let mut files: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    files.sort();
    files.insert(0, "README.md".into());
    files
}

/// The fenced blocks of `file` (relative to the root).
pub fn blocks(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    parse_blocks(file, &text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every fenced block of every doc.
pub fn all_blocks() -> Vec<Block> {
    doc_files().iter().flat_map(|f| blocks(f)).collect()
}

/// The blocks of a Markdown text, with their comments.
pub fn parse_blocks(file: &str, text: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut defaults = Directives::default();
    // The defaults first: they apply to blocks above them too.
    let mut i = 0;
    while i < lines.len() {
        if let Some(rest) = lines[i].trim_start().strip_prefix("<!-- doctest-defaults") {
            let (body, end) = comment_body(&lines, i, rest)?;
            defaults = Directives::parse(&body).map_err(|e| format!("line {}: {e}", i + 1))?;
            i = end;
        }
        i += 1;
    }
    let mut out = Vec::new();
    let mut pending: Option<Directives> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("<!-- doctest-defaults") {
            i = comment_body(&lines, i, rest)?.1 + 1;
            continue;
        }
        if let Some(rest) = line.trim_start().strip_prefix("<!-- doctest") {
            let (body, end) = comment_body(&lines, i, rest)?;
            pending = Some(Directives::parse(&body).map_err(|e| format!("line {}: {e}", i + 1))?);
            i = end + 1;
            continue;
        }
        if let Some(info) = line.strip_prefix("```") {
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push(lines[i]);
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("line {}: a fence that is never closed", start + 1));
            }
            out.push(Block {
                file: file.to_string(),
                line: start + 1,
                lang: info.trim().to_string(),
                body: body.join("\n") + "\n",
                directives: pending.take().unwrap_or_default(),
                defaults: defaults.clone(),
            });
            i += 1;
            continue;
        }
        if !line.trim().is_empty() && pending.is_some() {
            return Err(format!(
                "line {}: a doctest comment must stand right above a fenced block",
                i + 1
            ));
        }
        i += 1;
    }
    Ok(out)
}

/// The text of the comment starting on line `i` (after `<!-- doctest`), and the line
/// it ends on.
fn comment_body(lines: &[&str], i: usize, rest: &str) -> Result<(String, usize), String> {
    if let Some(one) = rest.strip_suffix("-->") {
        return Ok((one.trim().to_string(), i));
    }
    let mut body = vec![rest.trim().to_string()];
    for (j, l) in lines.iter().enumerate().skip(i + 1) {
        if l.trim() == "-->" {
            return Ok((body.join("\n"), j));
        }
        body.push(l.to_string());
    }
    Err(format!(
        "line {}: a doctest comment that is never closed",
        i + 1
    ))
}
