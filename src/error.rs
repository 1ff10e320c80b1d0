//! Typed errors of the library. Every variant that concerns a file names it, and every
//! message that has a fix says it: the CLI prints these as they are.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in xcache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting could not be read or has a bad value.
    #[error("configuration error: {0}")]
    Config(String),

    /// A file-system operation failed. `op` says what we were doing.
    #[error("{op} {}: {}{}", path.display(), source, io_hint(source, path))]
    Io {
        /// What was being done ("creating directory", "reading", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A cache directory fails the trust checks: xcache would dlopen code from it.
    #[error("refusing to use {}: {reason}. Fix: {fix}", path.display())]
    Untrusted {
        /// The directory that was refused.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
        /// What the user can do about it.
        fix: String,
    },

    /// The compiler failed. Nothing was published; the source is kept.
    #[error(transparent)]
    Compile(Box<CompileError>),

    /// The compiler could not be found or run at all. The fix named is the tool's own
    /// (nvcc, a C++ compiler or a C compiler), unless the message already says one.
    #[error(
        "compiler {compiler:?} could not be run: {message}{}",
        no_compiler_fix(compiler, message)
    )]
    NoCompiler {
        /// The compiler we tried.
        compiler: String,
        /// What went wrong.
        message: String,
    },

    /// dlopen failed on an artifact.
    #[error("could not load {}: {message}", path.display())]
    Load {
        /// The shared object.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },

    /// A requested symbol is not exported by the library.
    #[error("symbol `{symbol}` not found in {}: {message}. Fix: check the name and that it is exported with C linkage (`extern \"C\"` in C++, not `static`)", path.display())]
    MissingSymbol {
        /// The symbol that was asked for.
        symbol: String,
        /// The library it was looked up in.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },

    /// The CUDA runtime reported an error.
    #[error("CUDA error {code} while {what}: {message}")]
    Cuda {
        /// What was being done.
        what: String,
        /// The cudaError_t.
        code: i32,
        /// cudaGetErrorString's text.
        message: String,
    },

    /// A template is missing, malformed, or was given bad parameters.
    #[error("template `{template}`: {message}")]
    Template {
        /// The template's name.
        template: String,
        /// What is wrong and what is accepted.
        message: String,
    },

    /// The request itself is malformed (bad source name, bad flag, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A compiler flag xcache will not pass on ([`crate::compile::flags`]): it runs
    /// other programs, writes files elsewhere, takes over what xcache owns, or (from a
    /// manifest or other data) is not on the allow-list. Its kind is
    /// `invalid-request`, as for any other request xcache cannot accept.
    #[error("refusing the compiler flag {flag:?}: {reason}. Fix: {fix}")]
    RefusedFlag {
        /// The flag as written (with its value, when that is the next argument).
        flag: String,
        /// Why it is refused.
        reason: String,
        /// What to do instead.
        fix: String,
    },

    /// A lock wait reached the limit the caller set
    /// ([`crate::store::lock::with_wait_limit`]).
    #[error("gave up waiting for the lock {} after {:.1} s (held by {}). Fix: `xcache unlock` lists the locks and their holders (let a live one finish, or stop it); or raise lock_timeout", path.display(), waited.as_secs_f64(), holder.as_deref().unwrap_or("another process"))]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long it waited.
        waited: std::time::Duration,
        /// What the lock file says about its holder (`pid=N host=H`), when it says.
        holder: Option<String>,
    },
}

/// The fix for a compiler that cannot be run, by what the tool is: each missing tool
/// gets its own (installing gcc does not bring nvcc).
fn no_compiler_fix(compiler: &str, message: &str) -> &'static str {
    if message.contains("Fix:") {
        return "";
    }
    let name = Path::new(compiler)
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.contains("nvcc") {
        ". Fix: install the CUDA toolkit (or `pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl`), or set the `nvcc` setting to one that exists"
    } else if name.contains("++") || name.contains("cxx") {
        ". Fix: install a C++ compiler (e.g. `apt-get install g++`), or set CXX / the `cxx` setting to one that exists"
    } else {
        ". Fix: install a C compiler (e.g. `apt-get install gcc`), or set CC / the `cc` setting to one that exists"
    }
}

fn io_hint(err: &io::Error, path: &Path) -> String {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!(
            " (the file system holding {} is full. Fix: free space there, run `xcache prune`, or point XCACHE_DIR at a larger disk)",
            path.display()
        ),
        Some(libc::EROFS) => " (read-only file system. Fix: point XCACHE_DIR at a writable directory)".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            " (permission denied. Fix: check the owner and mode of {}, or point XCACHE_DIR elsewhere)",
            path.display()
        ),
        _ => String::new(),
    }
}

impl Error {
    /// The variant, in one word, as `--json` error objects name it: `config`, `io`,
    /// `untrusted`, `compile`, `no-compiler`, `load`, `missing-symbol`, `cuda`,
    /// `template`, `invalid-request`, `lock-timeout`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Untrusted { .. } => "untrusted",
            Error::Compile(_) => "compile",
            Error::NoCompiler { .. } => "no-compiler",
            Error::Load { .. } => "load",
            Error::MissingSymbol { .. } => "missing-symbol",
            Error::Cuda { .. } => "cuda",
            Error::Template { .. } => "template",
            Error::InvalidRequest(_) | Error::RefusedFlag { .. } => "invalid-request",
            Error::LockTimeout { .. } => "lock-timeout",
        }
    }

    /// For a template error about one parameter: the parameter's name, and, when its
    /// value is an expression refused at some point, the byte offset in that value
    /// (what the Python package's `TemplateError` carries as `.parameter`, `.offset`).
    pub fn template_parameter(&self) -> Option<(&str, Option<usize>)> {
        let Error::Template { message, .. } = self else {
            return None;
        };
        let start = message.find("parameter `")? + "parameter `".len();
        let len = message[start..].find('`')?;
        let offset = message
            .find("at offset ")
            .map(|i| &message[i + "at offset ".len()..])
            .and_then(|rest| {
                let digits = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                rest[..digits].parse().ok()
            });
        Some((&message[start..start + len], offset))
    }

    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A compiler run that failed: what was run, how it ended, what it said, and where
/// the source was kept for inspection.
#[derive(Debug)]
pub struct CompileError {
    /// The command line, shell-quoted, as it can be re-run by hand from `workdir`.
    pub command: String,
    /// The directory the compiler ran in.
    pub workdir: PathBuf,
    /// The exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Everything the compiler printed (stderr, then stdout).
    pub output: String,
    /// The source file as it was handed to the compiler, kept after the failure.
    pub kept_source: PathBuf,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        writeln!(f, "compilation failed ({status})")?;
        writeln!(f, "  command: {}", self.command)?;
        writeln!(f, "  in:      {}", self.workdir.display())?;
        writeln!(f, "  source kept at {}", self.kept_source.display())?;
        let out = self.output.trim_end();
        if out.is_empty() {
            write!(f, "  (the compiler printed nothing)")
        } else {
            writeln!(f, "compiler output:")?;
            write!(f, "{out}")
        }
    }
}

impl std::error::Error for CompileError {}

impl From<CompileError> for Error {
    fn from(e: CompileError) -> Self {
        Error::Compile(Box::new(e))
    }
}

/// Extension to attach an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(compiler: &str, message: &str) -> String {
        Error::NoCompiler {
            compiler: compiler.into(),
            message: message.into(),
        }
        .to_string()
    }

    #[test]
    fn each_missing_tool_gets_its_own_fix() {
        let e = no("/opt/cuda/bin/nvcc", "No such file or directory");
        assert!(
            e.contains("CUDA toolkit") && !e.contains("C compiler"),
            "{e}"
        );
        let e = no("nvcc", "not found anywhere. Fix: install the CUDA toolkit");
        assert_eq!(e.matches("Fix:").count(), 1, "{e}");
        let e = no("/usr/bin/c++", "not found in PATH");
        assert!(e.contains("C++ compiler") && e.contains("`cxx`"), "{e}");
        let e = no("clang++-17", "not found in PATH");
        assert!(e.contains("C++ compiler"), "{e}");
        let e = no("/usr/bin/cc", "not found in PATH");
        assert!(
            e.contains("install a C compiler") && e.contains("`cc`"),
            "{e}"
        );
    }

    #[test]
    fn template_errors_name_their_parameter_and_offset() {
        let t = |m: &str| Error::Template {
            template: "c/elemwise".into(),
            message: m.into(),
        };
        let e = t("parameter `expr` = \"a+\" is invalid: at offset 2: expected a value");
        assert_eq!(e.template_parameter(), Some(("expr", Some(2))));
        let e = t("parameter `dtype` = \"float16\" is invalid: expected one of float32");
        assert_eq!(e.template_parameter(), Some(("dtype", None)));
        let e = t("has no parameter `dtyp`; its parameters are: arity, dtype, expr");
        assert_eq!(e.template_parameter(), Some(("dtyp", None)));
        assert_eq!(t("no template named x").template_parameter(), None);
        assert_eq!(Error::Config("x".into()).template_parameter(), None);
    }

    #[test]
    fn kinds_are_single_words() {
        assert_eq!(Error::Config("x".into()).kind(), "config");
        assert_eq!(Error::InvalidRequest("x".into()).kind(), "invalid-request");
    }
}
