//! Requests → artifacts: what to compile ([`SourceRequest`]), with which compiler
//! ([`host`]), under which key.

pub mod deps;
pub mod diagnostics;
pub mod expr;
pub mod flags;
pub mod host;
pub mod nvcc;
pub mod nvrtc;
pub mod template;
pub mod toolchain;

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Source language of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// C, compiled by `cc`.
    C,
    /// C++, compiled by `c++`.
    Cxx,
    /// CUDA C++, compiled by nvcc.
    Cuda,
}

impl Language {
    /// The language of a file, by extension: `.c` is C; `.cc .cpp .cxx .c++ .C` are C++.
    pub fn from_path(path: &Path) -> Option<Language> {
        match path.extension()?.to_str()? {
            "c" => Some(Language::C),
            "cc" | "cpp" | "cxx" | "c++" | "C" => Some(Language::Cxx),
            "cu" => Some(Language::Cuda),
            _ => None,
        }
    }

    /// Name used in keys and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cxx => "c++",
            Language::Cuda => "cuda",
        }
    }

    /// The language named `name` in keys and metadata.
    pub fn from_name(name: &str) -> Option<Language> {
        [Language::C, Language::Cxx, Language::Cuda]
            .into_iter()
            .find(|l| l.name() == name)
    }

    /// File name of the source inside an entry.
    pub fn source_file(self) -> &'static str {
        match self {
            Language::C => "source.c",
            Language::Cxx => "source.cpp",
            Language::Cuda => "source.cu",
        }
    }
}

/// A template and its parameters: what to render and compile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateRequest {
    /// Template name: `elemwise` or `c/elemwise`.
    pub name: String,
    /// (parameter, value) pairs as the user wrote them.
    pub params: Vec<(String, String)>,
    /// Extra compiler flags, after the template's own.
    pub flags: Vec<String>,
}

impl TemplateRequest {
    /// A request for the template `name`, with no parameters yet.
    pub fn new(name: impl Into<String>) -> TemplateRequest {
        TemplateRequest {
            name: name.into(),
            params: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// Sets a parameter (values of any printable type: `3`, `"float32"`, `true`).
    pub fn param(mut self, name: impl Into<String>, value: impl ToString) -> TemplateRequest {
        self.params.push((name.into(), value.to_string()));
        self
    }

    /// Appends a compiler flag.
    pub fn flag(mut self, flag: impl Into<String>) -> TemplateRequest {
        self.flags.push(flag.into());
        self
    }
}

/// Anything the compile service accepts.
#[derive(Debug, Clone)]
pub enum Request {
    /// Plain source.
    Source(SourceRequest),
    /// A template with parameters.
    Template(TemplateRequest),
}

impl From<SourceRequest> for Request {
    fn from(r: SourceRequest) -> Request {
        Request::Source(r)
    }
}

impl From<TemplateRequest> for Request {
    fn from(r: TemplateRequest) -> Request {
        Request::Template(r)
    }
}

/// Something to compile: source text, its language, flags, and explicit extra inputs.
#[derive(Debug, Clone)]
pub struct SourceRequest {
    /// Display name (`saxpy.c`); not part of the key.
    pub name: String,
    /// Language.
    pub language: Language,
    /// The source text.
    pub source: Vec<u8>,
    /// Compiler flags, appended after xcache's own, in order.
    pub flags: Vec<String>,
    /// Extra inputs (headers the source includes), as (file name, contents). They are
    /// written beside the source, so `#include "name"` finds them, and are in the key.
    pub extra_inputs: Vec<(String, Vec<u8>)>,
    /// The template this source was rendered from, if any (recorded in the key).
    pub template: Option<crate::store::key::TemplateRef>,
    /// The file the source was read from, as the user named it: the compiler's
    /// diagnostics name it instead of xcache's copy, and its directory is searched for
    /// `#include "…"` as a plain compile would (`-iquote DIR`; `-I DIR` for nvcc; the
    /// directory is then part of the key, through the flags).
    pub origin: Option<std::path::PathBuf>,
}

impl SourceRequest {
    /// A request for `source` in `language`.
    pub fn new(language: Language, source: impl Into<Vec<u8>>) -> SourceRequest {
        SourceRequest {
            name: language.source_file().to_string(),
            language,
            source: source.into(),
            flags: Vec::new(),
            extra_inputs: Vec::new(),
            template: None,
            origin: None,
        }
    }

    /// A request for a source file; the language comes from its extension.
    pub fn from_file(path: &Path) -> Result<SourceRequest> {
        let language = Self::language_of(path)?;
        let source = std::fs::read(path).ctx("reading", path)?;
        Ok(Self::of_file(path, language, source))
    }

    /// A request for a source file in `language`, whatever its extension (as
    /// `nvcc -x cu` or `cc -x c` take one).
    pub fn from_file_as(path: &Path, language: Language) -> Result<SourceRequest> {
        let source = std::fs::read(path).ctx("reading", path)?;
        Ok(Self::of_file(path, language, source))
    }

    /// [`SourceRequest::from_file`] for a file someone else named (a warm manifest's
    /// source): a regular file only, opened without blocking, within `bounds` (see
    /// [`crate::fsx::read_named_file`]), so that a FIFO or a device is an error, not a
    /// hang.
    pub fn from_named_file(path: &Path, bounds: crate::fsx::Bounds) -> Result<SourceRequest> {
        let language = Self::language_of(path)?;
        let source = crate::fsx::read_named_file(path, bounds)
            .map_err(|e| Error::InvalidRequest(named_file_refusal(e)))?;
        Ok(Self::of_file(path, language, source))
    }

    fn language_of(path: &Path) -> Result<Language> {
        Language::from_path(path).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "cannot tell the language of {}: use a .c file for C, .cc/.cpp/.cxx for C++, or .cu for CUDA (the xcache command takes --cuda for CUDA source under another name)",
                path.display()
            ))
        })
    }

    fn of_file(path: &Path, language: Language, source: Vec<u8>) -> SourceRequest {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| language.source_file().into());
        SourceRequest {
            name,
            origin: Some(path.to_path_buf()),
            ..SourceRequest::new(language, source)
        }
    }

    /// Sets the display name.
    pub fn named(mut self, name: impl Into<String>) -> SourceRequest {
        self.name = name.into();
        self
    }

    /// Names the file the source came from (see [`SourceRequest::origin`]).
    pub fn from_origin(mut self, path: impl Into<std::path::PathBuf>) -> SourceRequest {
        self.origin = Some(path.into());
        self
    }

    /// The flags that make the source's own directory searched for quoted includes,
    /// as a plain compile of the file would: `-iquote DIR` (`-I DIR` for nvcc, which
    /// has no `-iquote`). Empty without an origin.
    pub fn origin_flags(&self) -> Vec<String> {
        let Some(origin) = &self.origin else {
            return Vec::new();
        };
        let dir = origin
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir)
            .or_else(|_| std::env::current_dir().map(|c| c.join(dir)))
            .unwrap_or_else(|_| dir.to_path_buf());
        let dir = dir.to_string_lossy().into_owned();
        match self.language {
            Language::Cuda => vec![format!("-I{dir}")],
            _ => vec!["-iquote".into(), dir],
        }
    }

    /// What diagnostics call the source: the origin as the user named it, else the name.
    pub fn display_name(&self) -> String {
        self.origin
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.name.clone())
    }

    /// Appends a compiler flag.
    pub fn flag(mut self, flag: impl Into<String>) -> SourceRequest {
        self.flags.push(flag.into());
        self
    }

    /// Adds an extra input (a header) by name and contents.
    pub fn extra_input(
        mut self,
        name: impl Into<String>,
        contents: impl Into<Vec<u8>>,
    ) -> SourceRequest {
        self.extra_inputs.push((name.into(), contents.into()));
        self
    }

    /// Checks what the compiler service cannot accept, before any key is made, with
    /// the flags read as [`flags::Dialect::of`] this request's language says and
    /// nothing vouched for (see [`SourceRequest::validate_for`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_for(
            flags::Dialect::of(self.language),
            &crate::config::AllowedFlags::default(),
        )
    }

    /// Checks what the compiler service cannot accept, before any key is made: flags
    /// for `dialect` by [`flags::check_user_flags`] (those that run programs, write
    /// elsewhere, or take over the output or the dependency file are refused, unless
    /// `allowed` vouches for them), and the extra inputs' names.
    pub fn validate_for(
        &self,
        dialect: flags::Dialect,
        allowed: &crate::config::AllowedFlags,
    ) -> Result<()> {
        if self.flags.iter().any(String::is_empty) {
            return Err(Error::InvalidRequest(
                "an empty flag is not a flag. Fix: drop it".into(),
            ));
        }
        flags::check_user_flags(&self.flags, dialect, allowed)?;
        let reserved = [
            self.language.source_file(),
            crate::store::entry::ARTIFACT_FILE,
            crate::store::layout::CUBIN,
            crate::store::layout::PTX,
            crate::store::entry::ENTRY_FILE,
            crate::store::entry::LAST_USE_FILE,
        ];
        for (name, _) in &self.extra_inputs {
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
            if !plain || reserved.contains(&name.as_str()) {
                return Err(Error::InvalidRequest(format!(
                    "extra input name {name:?} must be a plain file name (letters, digits, . _ - +) other than {}",
                    reserved.join(", ")
                )));
            }
        }
        let mut names: Vec<&str> = self.extra_inputs.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidRequest(format!(
                "extra input {:?} is given twice",
                w[0]
            )));
        }
        Ok(())
    }
}

/// The [`crate::store::manifest::SearchScope`] of a request whose key material is `material`: the include
/// directories of its flags and those its language's compiler searches by itself here
/// (resolved through the store's toolchain records). What a bundle's entry may make
/// an import read.
pub fn search_scope(
    material: &crate::store::key::KeyMaterial,
    config: &crate::config::Config,
    store: &crate::store::Store,
) -> crate::store::manifest::SearchScope {
    let mut dirs = include_roots(&material.flags);
    if let Some(lang) = Language::from_name(&material.language) {
        if let Ok(tool) = toolchain::resolve(lang, config, Some(store)) {
            dirs.extend(tool.search_dirs);
        }
    }
    crate::store::manifest::SearchScope::new(dirs)
}

/// The directories that `flags` make a compiler search for headers (`-I`, `-isystem`,
/// `-iquote`, `-idirafter`, `--include-directory`, nvcc's and NVRTC's `--include-path`
/// and `--system-include`, `--sysroot`, and the directories of files pre-included with
/// `-include`/`-imacros`/`--pre-include`), in either spelling (`-Idir`, `-I dir`,
/// `--include-path=dir`), also when passed through `-Wp,`. Only absolute ones: a
/// relative directory would be resolved in the build's own staging directory.
pub fn include_roots(flags: &[String]) -> Vec<PathBuf> {
    // (flag, names a file rather than a directory), longest first: `--include-directory`
    // must not be read as `--include-directory-after` cut short.
    const FORMS: &[(&str, bool)] = &[
        ("--include-directory-after", false),
        ("--include-directory", false),
        ("--system-include", false),
        ("--include-path", false),
        ("--pre-include", true),
        ("-idirafter", false),
        ("--sysroot", false),
        ("-isysroot", false),
        ("-isystem", false),
        ("-imacros", true),
        ("-include", true),
        ("-iquote", false),
        ("-I", false),
    ];
    let mut args: Vec<&str> = Vec::new();
    for f in flags {
        match f.strip_prefix("-Wp,") {
            Some(rest) => args.extend(rest.split(',')),
            None => args.push(f),
        }
    }
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let Some(&(name, is_file)) = FORMS.iter().find(|(n, _)| a.starts_with(n)) else {
            continue;
        };
        let rest = &a[name.len()..];
        let value = if rest.is_empty() {
            it.next()
        } else if let Some(v) = rest.strip_prefix('=') {
            Some(v)
        } else if name.starts_with("--") {
            None // another long option that merely starts alike
        } else {
            Some(rest)
        };
        let Some(v) = value else { continue };
        let p = Path::new(v);
        let p = if is_file { p.parent().unwrap_or(p) } else { p };
        if p.is_absolute() {
            out.push(p.to_path_buf());
        }
    }
    out
}

/// Why a file someone else named (a source or a header listed in a warm manifest) was
/// not read, with what to do.
pub fn named_file_refusal(e: crate::fsx::NamedFileError) -> String {
    use crate::fsx::NamedFileError;
    match e {
        NamedFileError::NotRegular(p) => format!(
            "{} is not a regular file (a FIFO, a device or a directory: reading it could block or never end). Fix: name the file itself",
            p.display()
        ),
        NamedFileError::TooLarge { path, size, max } => format!(
            "{} is {size} bytes, more than the {max} a named file may have. Fix: compile it with `xcache compile`",
            path.display()
        ),
        other => format!("reading {other}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn include_roots_in_every_spelling() {
        let f = |v: &[&str]| include_roots(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            f(&[
                "-I/a",
                "-I",
                "/b",
                "-isystem/c",
                "-isystem",
                "/d",
                "-iquote",
                "/e"
            ]),
            p(&["/a", "/b", "/c", "/d", "/e"])
        );
        assert_eq!(
            f(&[
                "--include-directory=/a",
                "--include-path",
                "/b",
                "-Wp,-I/c,-DX",
                "-include",
                "/d/h.h"
            ]),
            p(&["/a", "/b", "/c", "/d"])
        );
        assert_eq!(f(&["-Irel", "-O2", "-include", "x.h", "-DI=/x"]), p(&[]));
        assert_eq!(f(&["-idirafter/z", "--sysroot=/s"]), p(&["/z", "/s"]));
    }
    use super::*;

    #[test]
    fn languages_by_extension() {
        assert_eq!(Language::from_path(Path::new("a.c")), Some(Language::C));
        assert_eq!(Language::from_path(Path::new("a.cpp")), Some(Language::Cxx));
        assert_eq!(Language::from_path(Path::new("a.cc")), Some(Language::Cxx));
        assert_eq!(Language::from_path(Path::new("a.cu")), Some(Language::Cuda));
        assert_eq!(Language::from_path(Path::new("a.f90")), None);
        assert_eq!(Language::from_path(Path::new("Makefile")), None);
    }

    #[test]
    fn output_controlling_flags_are_refused() {
        for f in [
            "-o",
            "-ofoo.so",
            "-c",
            "-E",
            "",
            "-MMD",
            "-B/tmp",
            "-save-temps",
        ] {
            let r = SourceRequest::new(Language::C, "").flag(f);
            assert!(r.validate().is_err(), "{f:?}");
        }
        for f in ["-I", "-Iinc", "-isystem", "-includex.h"] {
            let r = SourceRequest::new(Language::C, "").flag(f).flag("rel");
            assert!(r.validate().is_err(), "{f:?}");
        }
        let r = SourceRequest::new(Language::C, "")
            .flag("-I")
            .flag("/abs/inc")
            .flag("-I/usr/include/x");
        assert!(r.validate().is_ok());
        for f in ["-O2", "-march=native", "-DN=4", "-ffast-math", "-lm"] {
            let r = SourceRequest::new(Language::C, "").flag(f);
            assert!(r.validate().is_ok(), "{f:?}");
        }
    }

    #[test]
    fn extra_inputs_are_plain_names() {
        for n in [
            "../x.h",
            "/etc/passwd",
            ".hidden",
            "source.c",
            "lib.so",
            "a/b.h",
            "",
        ] {
            let r = SourceRequest::new(Language::C, "").extra_input(n, "");
            assert!(r.validate().is_err(), "{n:?}");
        }
        let r = SourceRequest::new(Language::C, "")
            .extra_input("defs.h", "")
            .extra_input("defs.h", "");
        assert!(r.validate().is_err());
        let r = SourceRequest::new(Language::C, "").extra_input("defs.h", "");
        assert!(r.validate().is_ok());
    }
}
