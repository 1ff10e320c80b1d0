//! Which compiler flags xcache passes on, by where they come from.
//!
//! xcache runs a compiler on a command line it builds: its own arguments first (the
//! `cc` crate's, `-shared`, nvcc's `-ccbin` and `-gencode`, NVRTC's arch and include
//! path), then the request's flags, then `-o`, the source, and its own `-MD -MF FILE`
//! last. xcache's own arguments are not checked here. The request's flags come from
//! three places, each with its rule:
//!
//! - **The user** — `xcache compile --flag`, [`SourceRequest`](super::SourceRequest) and
//!   [`TemplateRequest`](super::TemplateRequest) flags (which the Python package and the
//!   C ABI fill), a template's `flags`. Trusted, but a flag that runs other programs,
//!   writes files outside xcache's build directory, or takes over what xcache owns (the
//!   output, the dependency file) is refused by [`check_user_flags`], which names the
//!   flag, says why and what to do instead. It runs where the key is made, so every
//!   interface goes through it. This is a deny-list: it cannot be complete, and it is
//!   there to turn mistakes into clear errors, not to stop whoever writes the command
//!   line.
//! - **Data** — a `warm` manifest today; bundles and remote records are the next
//!   producers. Whoever wrote the data is not trusted to choose flags, so
//!   [`check_data_flags`] passes only the documented families below; include
//!   directories must resolve (links and `..` followed) inside the allowed root and come
//!   back absolute. Anything else is refused, naming the flag and the setting that
//!   allows it. Data flags then go through [`check_user_flags`] too, as every request's.
//! - **The environment** — `CFLAGS`/`CXXFLAGS` (and their target forms), read by the
//!   `cc` crate into the compiler's own arguments. Dependency flags there are removed
//!   ([`strip_dependency_flags`]); whoever resolves the compiler warns.
//!
//! The `allowed_flags` setting ([`AllowedFlags`]) names flags the user vouches for,
//! exactly or by prefix, matched against the flag as written and against a flag joined
//! to its value (`-B/opt/bin` for `-B /opt/bin`). They pass both checks — except those
//! that take over what xcache owns ([`Why::Output`], [`Why::Dependencies`], a relative
//! search path), which nothing allows.
//!
//! ## The allow-list (flags from data)
//!
//! | compiler | passes |
//! |---|---|
//! | C/C++ | `-O`, `-O0`…`-O3`, `-Os`, `-Oz`, `-Og`, `-Ofast`; `-f[no-]NAME[=VALUE]` with no `/` in the value, except the families that name files or load code: `plugin`, `pass-plugin`, `profile*`, `auto-profile`, `cs-profile`, `dump*`, `opt-info`, `*-prefix-map`, `coverage*`, `test-coverage`, `branch-probabilities`, `debug-compilation-dir`, `module*`, `prebuilt-module-path`, `deps-*`, `callgraph-info`, `stack-usage`, `sanitize-*list`, `xray-*`, `instrument-functions-exclude-*`, `use-ld`, `ld-path`, `compare-debug*`, `*optimization-record*`, `time-trace`, `crash-diagnostics-dir`, `proc-stat-report`, `diagnostics-add-output`, `diagnostics-set-output`, `diagnostics-format`, `embed*`, `ltrans*`, `resolution`, `wpa`, `basic-block-*`, `memory-profile`; `-m[no-]NAME[=VALUE]` with no `/`; `-W[no-]NAME[=VALUE]` (letters, digits, `_ + = -`: never `-Wa,` `-Wl,` `-Wp,`); `-D`, `-U`; `-std=`; `-g…`; `-I`, `-isystem`, `-iquote`, `-idirafter` (and `--include-directory[=]`, `--include-directory-after[=]`) inside the root; `-l NAME` (a plain name); `--param NAME=VALUE`; `-pthread`, `-w`, `-pedantic`, `-pedantic-errors`, `-ansi`, `-static-libgcc`, `-static-libstdc++` |
//! | nvcc | `-O0`…`-O3`; `-arch`/`--gpu-architecture`, `-code`/`--gpu-code`, `-gencode`/`--generate-code` (letters, digits, `_ , =`); `-lineinfo`/`--generate-line-info`, `-G`/`--device-debug`, `-g`/`--debug`, `-use_fast_math`/`--use_fast_math`, `-maxrregcount`, `-t`/`--threads` (numbers); `-std`/`--std`; `-rdc`, `-ftz`, `-prec-div`, `-prec-sqrt`, `-fmad` (`true`/`false`); `--expt-relaxed-constexpr`, `--expt-extended-lambda`, `--extended-lambda`, `--extra-device-vectorization`, `-res-usage`, `-restrict`, `-src-in-ptx`, `-w`, `-Wno-deprecated-gpu-targets`, `-Wno-deprecated-declarations`, `-Wreorder`, `-Werror=KIND`, `-diag-suppress=N`, `-default-stream=`, `-cudart=`; `-D`, `-U`, `-l NAME`; `-I`/`--include-path`, `-isystem`/`--system-include` inside the root; `-Xptxas` with ptxas's report and optimisation options (`-v`, `--verbose`, `-O0`…`-O3`, `--warn-on-spills`, `--warn-on-local-memory-usage`, `--warn-on-double-precision-use`, `--allow-expensive-optimizations`, `-dlcm=`, `-dscm=`, `--def-load-cache=`, `--def-store-cache=`, `-maxrregcount=`): `-Xptxas -v` only prints register and memory use; `-Xcompiler A,B` whose host flags pass the C/C++ list |
//! | NVRTC | `--gpu-architecture`/`-arch`; `--use_fast_math`, `-lineinfo`, `-G`, `--std`, `--maxrregcount`, `--ftz`, `--prec-div`, `--prec-sqrt`, `--fmad`, `-rdc`, `-dopt`, `--Ofast-compile`, `--split-compile`, `--diag-suppress`/`--diag-error`/`--diag-warn`; `--extra-device-vectorization`, `-default-device`, `-w`, `-restrict`, `-ewp`, `--device-int128`, `-minimal`, `-dlto`; `-D`, `-U`; `-I`/`--include-path` inside the root; `-Xptxas` as for nvcc |
//!
//! `-include`, `-imacros`, `-L`, `@FILE` and everything not listed are refused: a
//! header a request needs goes in the manifest's `include`, which puts its contents
//! in the key.
//!
//! ## The deny-list (flags from the user)
//!
//! | why | C/C++ | nvcc | NVRTC |
//! |---|---|---|---|
//! | [`Why::Output`]: xcache owns the output | `-o`, `--output`, `-c`, `-E`, `-S`, `-save-temps`, `-dumpdir`, `-dumpbase`, `-dumpbase-ext`, and `-o`/`--output` given to the linker or assembler | `-o`/`--output-file`, `-odir`/`--output-directory`, `-keep`, `-keep-dir`, `-save-temps`, `-c`, `-E`, `-ptx`, `-cubin`, `-fatbin`, `-dc`, `-dw`, `-dlink`, `-lib`, `-link`, `-cuda`, `-optix-ir`, `-run`, `-run-args`, `-o` inside `-Xptxas`/`-Xnvlink`/`-Xfatbin`/`-Xarchive` | `-o` inside `-Xptxas` |
//! | [`Why::Dependencies`]: xcache tracks every header itself | `-M…` (`-M`, `-MM`, `-MD`, `-MMD`, `-MF`, `-MT`, `-MQ`, `-MP`, `-MG`, `-MJ`), their long forms, and in `-Wp,`/`-Xpreprocessor`/`-Wa,` | `-M…` and their long forms | `-M…` and their long forms |
//! | [`Why::Programs`]: runs programs xcache does not fingerprint | `-B`, `--prefix`, `-specs`, `--specs`, `-wrapper`, `-fplugin…`, `-fpass-plugin`, `-iplugindir=`, `-fmodule-mapper`, `-fuse-ld=` with a path, `--ld-path`, `--gcc-toolchain`, `--gcc-install-dir`, `--config`, `-ccc-…`, `-Xclang`, linker `-plugin`/`--plugin…`/`--error-handling-script` | `-ccbin`/`--compiler-bindir`, and the C/C++ list inside `-Xcompiler` | — |
//! | [`Why::Writes`]: writes files elsewhere | `-aux-info`, `-fdump-…`, `-fprofile-generate…`, `-fprofile-arcs`, `-fprofile-dir`, `-fprofile-instr-generate`, `-fcs-profile-generate`, `-coverage`, `-ftest-coverage`, `-fopt-info…=FILE`, `-fdiagnostics-add-output`, `-fdiagnostics-set-output`, `-fsave-optimization-record`, `-foptimization-record-file`, `-ftime-trace=`, `-fcrash-diagnostics-dir`, `-fmodules-cache-path`, `-fproc-stat-report`, `-fdeps-…`, `-fmemory-profile`, `--serialize-diagnostics`, `-save-stats`; assembler listings (`-Wa,-a…`, `-Xassembler -a…`); linker `-Map`, `--out-implib`, `--dependency-file`, `--reproduce`, `--why-extract`, `--print-archive-stats`, `--print-symbol-counts`, `-save-temps` | `-time`, `-fdevice-time-trace`, and the C/C++ list inside `-Xcompiler`/`-Xlinker` | `--time`, `--fdevice-time-trace`, `--create-pch`, `--use-pch`, `--pch-dir`, `--pch` |
//! | [`Why::ResponseFile`]: reads flags xcache cannot see | `@FILE` (also inside `-Wa,`, `-Wl,`) | `-optf`/`--options-file` | — |
//! | [`Why::RelativePath`]: looked up in xcache's build directory | `-I`, `-isystem`, `-iquote`, `-idirafter`, `-include`, `-imacros`, `-L` (and long forms) with a relative path | `-I`, `-isystem`, `-include`, `-L` (and long forms) | `-I`/`--include-path`, `-include`/`--pre-include` |
//!
//! `-Wp,A,B` and `-Xpreprocessor A` are checked as the C/C++ flags `A B`; `-Wl,` and
//! `-Xlinker` items, and `-Wa,` and `-Xassembler` items, against the linker's and the
//! assembler's rows above.
//!
//! ## Dependency flags
//!
//! xcache always asks for its own dependency file (`-MD -MF FILE`, placed after every
//! other flag) and records every header it lists. A user's `-M…` flag cannot be made to
//! lose against it: gcc passes `-MD` and `-MMD` to `cc1` in a fixed order whatever their
//! order on the command line, so `-MMD` anywhere drops system headers from the list
//! (checked with gcc 12: `-MMD -MD -MF f` and `-MD -MF f -MMD` both list no system
//! header). clang's driver reads the last of `-MD`/`-MMD` and the last `-MF` (from its
//! source; no clang was at hand to run), so xcache's, last, win there. How nvcc treats
//! two of them was not checked (no nvcc at hand): with the user's refused, xcache's are
//! the only ones it sees. So the user's are refused (flags) or removed with a warning
//! (`CFLAGS`), and xcache's come last.

use std::path::{Path, PathBuf};

use super::Language;
use crate::config::AllowedFlags;
use crate::error::Error;

/// Whose flags these are: the host C/C++ compiler (gcc, clang), nvcc, or NVRTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// gcc or clang, for C and C++.
    Host,
    /// nvcc, for CUDA sources with host code (and CUDA templates under
    /// `cuda_compiler = nvcc`).
    Nvcc,
    /// NVRTC, for device code compiled in-process.
    Nvrtc,
}

impl Dialect {
    /// The compiler a request in `language` goes to through [`crate::Jit::compile`]
    /// (NVRTC has its own entry points).
    pub fn of(language: Language) -> Dialect {
        match language {
            Language::C | Language::Cxx => Dialect::Host,
            Language::Cuda => Dialect::Nvcc,
        }
    }

    /// The compiler's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Host => "the C/C++ compiler",
            Dialect::Nvcc => "nvcc",
            Dialect::Nvrtc => "NVRTC",
        }
    }
}

/// Why a flag from the user is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It chooses an output, or what is built: xcache owns both.
    Output,
    /// A dependency flag: xcache writes its own dependency file.
    Dependencies,
    /// It runs programs or loads plugins xcache does not fingerprint.
    Programs,
    /// It writes files outside xcache's build directory (or makes the library do so).
    Writes,
    /// It reads more flags from a file.
    ResponseFile,
    /// A search path that is relative (so looked up in xcache's build directory).
    RelativePath(String),
}

impl Why {
    /// Whether `allowed_flags` can vouch for a flag refused for this reason.
    pub fn can_be_vouched_for(&self) -> bool {
        matches!(self, Why::Programs | Why::Writes | Why::ResponseFile)
    }

    fn reason(&self, dialect: Dialect) -> String {
        match self {
            Why::Output => "xcache chooses the output: it builds one shared object (or cubin) in its own build directory and publishes it whole".into(),
            Why::Dependencies => "xcache tracks every header itself, with its own dependency file; a dependency flag of yours would change what that file lists (-MMD drops the system headers, so an edit to one would be served the old library)".into(),
            Why::Programs => format!("it makes {} run programs or load plugins that xcache neither fingerprints nor puts in the key", dialect.name()),
            Why::Writes => "it writes files outside xcache's build directory (or makes the compiled library write them when it runs)".into(),
            Why::ResponseFile => "it reads more flags from a file, which xcache can neither check nor put in the key".into(),
            Why::RelativePath(p) => format!("it names the relative path {p:?}, which would be looked up in xcache's build directory"),
        }
    }

    fn fix(&self, flag: &str) -> String {
        match self {
            Why::Output => "remove it: xcache prints where the library is (`xcache compile --out FILE` places a private copy where you want one)".into(),
            Why::Dependencies => "remove the flag".into(),
            Why::Programs if flag.starts_with("-ccbin") || flag.starts_with("--compiler-bindir") => {
                "remove it: nvcc's host compiler is the `cxx` setting (CXX), which xcache passes itself and puts in the key".into()
            }
            Why::Programs => format!("choose the compiler with the `cc`, `cxx` or `nvcc` setting (a wrapper script if it needs more), or, if you vouch for this flag, add it to the `allowed_flags` setting (allowed_flags = \"{flag}\")"),
            Why::Writes => format!("remove it, or, if you vouch for where it writes, add it to the `allowed_flags` setting (allowed_flags = \"{flag}\")"),
            Why::ResponseFile => "pass the flags themselves".into(),
            Why::RelativePath(_) => "give an absolute path, or pass the header itself as an extra input (`--include`), which also puts its content in the key".into(),
        }
    }
}

/// A refused flag: the flag as written, why, and what to do instead. Becomes
/// [`Error::RefusedFlag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRefusal {
    /// The flag, with its value when that is the next argument (`-B /opt/bin`).
    pub flag: String,
    /// Why it is refused.
    pub reason: String,
    /// What to do instead.
    pub fix: String,
}

impl From<FlagRefusal> for Error {
    fn from(r: FlagRefusal) -> Error {
        Error::RefusedFlag {
            flag: r.flag,
            reason: r.reason,
            fix: r.fix,
        }
    }
}

impl std::fmt::Display for FlagRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing the compiler flag {:?}: {}. Fix: {}",
            self.flag, self.reason, self.fix
        )
    }
}

// ---------------------------------------------------------------------------------
// Reading a command line: which arguments are options, and which are their values.

/// How an option takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// No value.
    Flag,
    /// Joined only (`-Wl,x`, `-std=c11`).
    Joined,
    /// Joined (`-Idir`) or the next argument (`-I dir`).
    JoinedOrNext,
    /// `=` (`--prefix=dir`) or the next argument (`--prefix dir`).
    EqOrNext,
    /// The next argument only (`-Xlinker x`).
    Next,
}

/// An option a compiler knows: how it is written, how it takes its value, and the name
/// the rules use for it (a long form's short one).
struct Spec {
    name: &'static str,
    form: Form,
    canon: &'static str,
}

const fn spec(name: &'static str, form: Form, canon: &'static str) -> Spec {
    Spec { name, form, canon }
}

use Form::{EqOrNext, Flag, Joined, JoinedOrNext, Next};

/// gcc's and clang's options that take a value or have a long form the rules must see
/// (gcc maps `--prefix` to `-B`, `--include-directory` to `-I`, … and takes
/// `--prefix DIR` as well as `--prefix=DIR`).
const HOST_SPECS: &[Spec] = &[
    spec("-I", JoinedOrNext, "-I"),
    spec("--include-directory", EqOrNext, "-I"),
    spec("-isystem", JoinedOrNext, "-isystem"),
    spec("-iquote", JoinedOrNext, "-iquote"),
    spec("-idirafter", JoinedOrNext, "-idirafter"),
    spec("--include-directory-after", EqOrNext, "-idirafter"),
    spec("-include", JoinedOrNext, "-include"),
    spec("--include", EqOrNext, "-include"),
    spec("-imacros", JoinedOrNext, "-imacros"),
    spec("--imacros", EqOrNext, "-imacros"),
    spec("-iprefix", JoinedOrNext, "-iprefix"),
    spec("--include-prefix", EqOrNext, "-iprefix"),
    spec("-iwithprefix", JoinedOrNext, "-iwithprefix"),
    spec("--include-with-prefix", EqOrNext, "-iwithprefix"),
    spec("--include-with-prefix-after", EqOrNext, "-iwithprefix"),
    spec("-iwithprefixbefore", JoinedOrNext, "-iwithprefixbefore"),
    spec(
        "--include-with-prefix-before",
        EqOrNext,
        "-iwithprefixbefore",
    ),
    spec("-isysroot", JoinedOrNext, "-isysroot"),
    spec("-imultilib", JoinedOrNext, "-imultilib"),
    spec("--sysroot", EqOrNext, "--sysroot"),
    spec("-iplugindir=", Joined, "-iplugindir="),
    spec("-L", JoinedOrNext, "-L"),
    spec("--library-directory", EqOrNext, "-L"),
    spec("-l", JoinedOrNext, "-l"),
    spec("-D", JoinedOrNext, "-D"),
    spec("--define-macro", EqOrNext, "-D"),
    spec("-U", JoinedOrNext, "-U"),
    spec("--undefine-macro", EqOrNext, "-U"),
    spec("-o", JoinedOrNext, "-o"),
    spec("--output", EqOrNext, "-o"),
    spec("-B", JoinedOrNext, "-B"),
    spec("--prefix", EqOrNext, "-B"),
    spec("-specs", EqOrNext, "-specs"),
    spec("--specs", EqOrNext, "-specs"),
    spec("-wrapper", Next, "-wrapper"),
    spec("-x", JoinedOrNext, "-x"),
    spec("--language", EqOrNext, "-x"),
    spec("-Xlinker", Next, "-Xlinker"),
    spec("--for-linker", EqOrNext, "-Xlinker"),
    spec("-Xassembler", Next, "-Xassembler"),
    spec("--for-assembler", EqOrNext, "-Xassembler"),
    spec("-Xpreprocessor", Next, "-Xpreprocessor"),
    spec("-Xclang", Next, "-Xclang"),
    spec("-Wl,", Joined, "-Wl,"),
    spec("-Wa,", Joined, "-Wa,"),
    spec("-Wp,", Joined, "-Wp,"),
    spec("-MF", JoinedOrNext, "-MF"),
    spec("-MT", JoinedOrNext, "-MT"),
    spec("-MQ", JoinedOrNext, "-MQ"),
    spec("-MJ", JoinedOrNext, "-MJ"),
    spec("--dependencies", Flag, "-M"),
    spec("--user-dependencies", Flag, "-MM"),
    spec("--write-dependencies", Flag, "-MD"),
    spec("--write-user-dependencies", Flag, "-MMD"),
    spec("--print-missing-file-dependencies", Flag, "-MG"),
    spec("--compile", Flag, "-c"),
    spec("--preprocess", Flag, "-E"),
    spec("--assemble", Flag, "-S"),
    spec("--save-temps", Flag, "-save-temps"),
    spec("--coverage", Flag, "-coverage"),
    spec("-dumpdir", Next, "-dumpdir"),
    spec("--dumpdir", EqOrNext, "-dumpdir"),
    spec("-dumpbase", Next, "-dumpbase"),
    spec("--dumpbase", EqOrNext, "-dumpbase"),
    spec("-dumpbase-ext", Next, "-dumpbase-ext"),
    spec("-aux-info", Next, "-aux-info"),
    spec("--param", EqOrNext, "--param"),
    spec("-std=", Joined, "-std="),
    spec("--std", EqOrNext, "-std="),
    spec("--config", EqOrNext, "--config"),
    spec("--gcc-toolchain", EqOrNext, "--gcc-toolchain"),
    spec("--gcc-install-dir", EqOrNext, "--gcc-install-dir"),
    spec("--ld-path", EqOrNext, "--ld-path"),
    spec(
        "--serialize-diagnostics",
        EqOrNext,
        "--serialize-diagnostics",
    ),
];

/// nvcc's options: each has a short and a long name, and takes a value as `-o=v`,
/// `-o v`, `--opt=v` or `--opt v` (the one-letter ones also joined: `-Idir`).
const NVCC_SPECS: &[Spec] = &[
    spec("-o", JoinedOrNext, "-o"),
    spec("--output-file", EqOrNext, "-o"),
    spec("-odir", EqOrNext, "-odir"),
    spec("--output-directory", EqOrNext, "-odir"),
    spec("-keep", Flag, "-keep"),
    spec("--keep", Flag, "-keep"),
    spec("-keep-dir", EqOrNext, "-keep-dir"),
    spec("--keep-dir", EqOrNext, "-keep-dir"),
    spec("-save-temps", Flag, "-save-temps"),
    spec("--save-temps", Flag, "-save-temps"),
    spec("-ccbin", EqOrNext, "-ccbin"),
    spec("--compiler-bindir", EqOrNext, "-ccbin"),
    spec("-optf", EqOrNext, "-optf"),
    spec("--options-file", EqOrNext, "-optf"),
    spec("-Xcompiler", EqOrNext, "-Xcompiler"),
    spec("--compiler-options", EqOrNext, "-Xcompiler"),
    spec("-Xlinker", EqOrNext, "-Xlinker"),
    spec("--linker-options", EqOrNext, "-Xlinker"),
    spec("-Xptxas", EqOrNext, "-Xptxas"),
    spec("--ptxas-options", EqOrNext, "-Xptxas"),
    spec("-Xnvlink", EqOrNext, "-Xnvlink"),
    spec("--nvlink-options", EqOrNext, "-Xnvlink"),
    spec("-Xfatbin", EqOrNext, "-Xfatbin"),
    spec("--fatbin-options", EqOrNext, "-Xfatbin"),
    spec("-Xarchive", EqOrNext, "-Xarchive"),
    spec("--archive-options", EqOrNext, "-Xarchive"),
    spec("-MF", EqOrNext, "-MF"),
    spec("--dependency-output", EqOrNext, "-MF"),
    spec("-MT", EqOrNext, "-MT"),
    spec("--dependency-target-name", EqOrNext, "-MT"),
    spec("-M", Flag, "-M"),
    spec("--generate-dependencies", Flag, "-M"),
    spec("-MM", Flag, "-MM"),
    spec("--generate-nonsystem-dependencies", Flag, "-MM"),
    spec("-MD", Flag, "-MD"),
    spec("--generate-dependencies-with-compile", Flag, "-MD"),
    spec("-MMD", Flag, "-MMD"),
    spec(
        "--generate-nonsystem-dependencies-with-compile",
        Flag,
        "-MMD",
    ),
    spec("-MP", Flag, "-MP"),
    spec("--generate-dependency-targets", Flag, "-MP"),
    spec("-I", JoinedOrNext, "-I"),
    spec("--include-path", EqOrNext, "-I"),
    spec("-isystem", EqOrNext, "-isystem"),
    spec("--system-include", EqOrNext, "-isystem"),
    spec("-L", JoinedOrNext, "-L"),
    spec("--library-path", EqOrNext, "-L"),
    spec("-l", JoinedOrNext, "-l"),
    spec("--library", EqOrNext, "-l"),
    spec("-D", JoinedOrNext, "-D"),
    spec("--define-macro", EqOrNext, "-D"),
    spec("-U", JoinedOrNext, "-U"),
    spec("--undefine-macro", EqOrNext, "-U"),
    spec("-include", EqOrNext, "-include"),
    spec("--pre-include", EqOrNext, "-include"),
    spec("-arch", EqOrNext, "-arch"),
    spec("--gpu-architecture", EqOrNext, "-arch"),
    spec("-code", EqOrNext, "-code"),
    spec("--gpu-code", EqOrNext, "-code"),
    spec("-gencode", EqOrNext, "-gencode"),
    spec("--generate-code", EqOrNext, "-gencode"),
    spec("-std", EqOrNext, "-std"),
    spec("--std", EqOrNext, "-std"),
    spec("-maxrregcount", EqOrNext, "-maxrregcount"),
    spec("--maxrregcount", EqOrNext, "-maxrregcount"),
    spec("-t", EqOrNext, "-t"),
    spec("--threads", EqOrNext, "-t"),
    spec("-time", EqOrNext, "-time"),
    spec("--time", EqOrNext, "-time"),
    spec("-run-args", EqOrNext, "-run-args"),
    spec("--run-args", EqOrNext, "-run-args"),
    spec("-fdevice-time-trace", EqOrNext, "-fdevice-time-trace"),
    spec("--fdevice-time-trace", EqOrNext, "-fdevice-time-trace"),
    spec("-rdc", EqOrNext, "-rdc"),
    spec("--relocatable-device-code", EqOrNext, "-rdc"),
    spec("-x", EqOrNext, "-x"),
    spec("--x", EqOrNext, "-x"),
    spec("-diag-suppress", EqOrNext, "-diag-suppress"),
    spec("--diag-suppress", EqOrNext, "-diag-suppress"),
    spec("-Werror", EqOrNext, "-Werror"),
    spec("--Werror", EqOrNext, "-Werror"),
    spec("-cudart", EqOrNext, "-cudart"),
    spec("--cudart", EqOrNext, "-cudart"),
    spec("-default-stream", EqOrNext, "-default-stream"),
    spec("--default-stream", EqOrNext, "-default-stream"),
    spec("-ftz", EqOrNext, "-ftz"),
    spec("--ftz", EqOrNext, "-ftz"),
    spec("-prec-div", EqOrNext, "-prec-div"),
    spec("--prec-div", EqOrNext, "-prec-div"),
    spec("-prec-sqrt", EqOrNext, "-prec-sqrt"),
    spec("--prec-sqrt", EqOrNext, "-prec-sqrt"),
    spec("-fmad", EqOrNext, "-fmad"),
    spec("--fmad", EqOrNext, "-fmad"),
    spec("-c", Flag, "-c"),
    spec("--compile", Flag, "-c"),
    spec("-E", Flag, "-E"),
    spec("--preprocess", Flag, "-E"),
    spec("-ptx", Flag, "-ptx"),
    spec("--ptx", Flag, "-ptx"),
    spec("-cubin", Flag, "-cubin"),
    spec("--cubin", Flag, "-cubin"),
    spec("-fatbin", Flag, "-fatbin"),
    spec("--fatbin", Flag, "-fatbin"),
    spec("-dc", Flag, "-dc"),
    spec("--device-c", Flag, "-dc"),
    spec("-dw", Flag, "-dw"),
    spec("--device-w", Flag, "-dw"),
    spec("-dlink", Flag, "-dlink"),
    spec("--device-link", Flag, "-dlink"),
    spec("-lib", Flag, "-lib"),
    spec("--lib", Flag, "-lib"),
    spec("-link", Flag, "-link"),
    spec("--link", Flag, "-link"),
    spec("-cuda", Flag, "-cuda"),
    spec("--cuda", Flag, "-cuda"),
    spec("-optix-ir", Flag, "-optix-ir"),
    spec("--optix-ir", Flag, "-optix-ir"),
    spec("-run", Flag, "-run"),
    spec("--run", Flag, "-run"),
    spec("-lineinfo", Flag, "-lineinfo"),
    spec("--generate-line-info", Flag, "-lineinfo"),
    spec("-G", Flag, "-G"),
    spec("--device-debug", Flag, "-G"),
    spec("-g", Flag, "-g"),
    spec("--debug", Flag, "-g"),
    spec("-use_fast_math", Flag, "-use_fast_math"),
    spec("--use_fast_math", Flag, "-use_fast_math"),
    spec("-expt-relaxed-constexpr", Flag, "-expt-relaxed-constexpr"),
    spec("--expt-relaxed-constexpr", Flag, "-expt-relaxed-constexpr"),
    spec("-expt-extended-lambda", Flag, "-expt-extended-lambda"),
    spec("--expt-extended-lambda", Flag, "-expt-extended-lambda"),
    spec("-extended-lambda", Flag, "-extended-lambda"),
    spec("--extended-lambda", Flag, "-extended-lambda"),
    spec(
        "-extra-device-vectorization",
        Flag,
        "-extra-device-vectorization",
    ),
    spec(
        "--extra-device-vectorization",
        Flag,
        "-extra-device-vectorization",
    ),
    spec("-w", Flag, "-w"),
    spec("--disable-warnings", Flag, "-w"),
    spec("-res-usage", Flag, "-res-usage"),
    spec("--resource-usage", Flag, "-res-usage"),
    spec("-restrict", Flag, "-restrict"),
    spec("--restrict", Flag, "-restrict"),
    spec("-src-in-ptx", Flag, "-src-in-ptx"),
    spec("--source-in-ptx", Flag, "-src-in-ptx"),
];

/// NVRTC's options (`-name=value` or `--name=value`, or with the next argument; the
/// one-letter ones joined only, `-Idir`: read as taking the next argument, `-I` would
/// hide from the checks an option NVRTC may read on its own).
const NVRTC_SPECS: &[Spec] = &[
    spec("-arch", EqOrNext, "-arch"),
    spec("--gpu-architecture", EqOrNext, "-arch"),
    spec("-I", Joined, "-I"),
    spec("--include-path", EqOrNext, "-I"),
    spec("-D", Joined, "-D"),
    spec("--define-macro", EqOrNext, "-D"),
    spec("-U", Joined, "-U"),
    spec("--undefine-macro", EqOrNext, "-U"),
    spec("-include", EqOrNext, "-include"),
    spec("--pre-include", EqOrNext, "-include"),
    spec("-std", EqOrNext, "-std"),
    spec("--std", EqOrNext, "-std"),
    spec("-maxrregcount", EqOrNext, "-maxrregcount"),
    spec("--maxrregcount", EqOrNext, "-maxrregcount"),
    spec("-ftz", EqOrNext, "-ftz"),
    spec("--ftz", EqOrNext, "-ftz"),
    spec("-prec-div", EqOrNext, "-prec-div"),
    spec("--prec-div", EqOrNext, "-prec-div"),
    spec("-prec-sqrt", EqOrNext, "-prec-sqrt"),
    spec("--prec-sqrt", EqOrNext, "-prec-sqrt"),
    spec("-fmad", EqOrNext, "-fmad"),
    spec("--fmad", EqOrNext, "-fmad"),
    spec("-rdc", EqOrNext, "-rdc"),
    spec("--relocatable-device-code", EqOrNext, "-rdc"),
    spec("-dopt", EqOrNext, "-dopt"),
    spec("--dopt", EqOrNext, "-dopt"),
    spec("-Ofast-compile", EqOrNext, "-Ofast-compile"),
    spec("--Ofast-compile", EqOrNext, "-Ofast-compile"),
    spec("-split-compile", EqOrNext, "-split-compile"),
    spec("--split-compile", EqOrNext, "-split-compile"),
    spec("-diag-suppress", EqOrNext, "-diag-suppress"),
    spec("--diag-suppress", EqOrNext, "-diag-suppress"),
    spec("-diag-error", EqOrNext, "-diag-error"),
    spec("--diag-error", EqOrNext, "-diag-error"),
    spec("-diag-warn", EqOrNext, "-diag-warn"),
    spec("--diag-warn", EqOrNext, "-diag-warn"),
    spec("-Xptxas", EqOrNext, "-Xptxas"),
    spec("--ptxas-options", EqOrNext, "-Xptxas"),
    spec("-time", EqOrNext, "-time"),
    spec("--time", EqOrNext, "-time"),
    spec("-fdevice-time-trace", EqOrNext, "-fdevice-time-trace"),
    spec("--fdevice-time-trace", EqOrNext, "-fdevice-time-trace"),
    spec("-create-pch", EqOrNext, "-create-pch"),
    spec("--create-pch", EqOrNext, "-create-pch"),
    spec("-use-pch", EqOrNext, "-use-pch"),
    spec("--use-pch", EqOrNext, "-use-pch"),
    spec("-pch-dir", EqOrNext, "-pch-dir"),
    spec("--pch-dir", EqOrNext, "-pch-dir"),
    spec("-pch", Flag, "-pch"),
    spec("--pch", Flag, "-pch"),
    spec("-MF", EqOrNext, "-MF"),
    spec("--dependency-output", EqOrNext, "-MF"),
    spec("-MT", EqOrNext, "-MT"),
    spec("--dependency-target-name", EqOrNext, "-MT"),
    spec("--generate-dependencies", Flag, "-M"),
    spec("--generate-nonsystem-dependencies", Flag, "-MM"),
    spec("--generate-dependencies-with-compile", Flag, "-MD"),
    spec(
        "--generate-nonsystem-dependencies-with-compile",
        Flag,
        "-MMD",
    ),
    spec("-lineinfo", Flag, "-lineinfo"),
    spec("--generate-line-info", Flag, "-lineinfo"),
    spec("-G", Flag, "-G"),
    spec("--device-debug", Flag, "-G"),
    spec("-use_fast_math", Flag, "-use_fast_math"),
    spec("--use_fast_math", Flag, "-use_fast_math"),
    spec(
        "-extra-device-vectorization",
        Flag,
        "-extra-device-vectorization",
    ),
    spec(
        "--extra-device-vectorization",
        Flag,
        "-extra-device-vectorization",
    ),
    spec("-default-device", Flag, "-default-device"),
    spec(
        "--device-as-default-execution-space",
        Flag,
        "-default-device",
    ),
    spec("-w", Flag, "-w"),
    spec("--disable-warnings", Flag, "-w"),
    spec("-restrict", Flag, "-restrict"),
    spec("--restrict", Flag, "-restrict"),
    spec("-ewp", Flag, "-ewp"),
    spec("--extensible-whole-program", Flag, "-ewp"),
    spec("-device-int128", Flag, "-device-int128"),
    spec("--device-int128", Flag, "-device-int128"),
    spec("-minimal", Flag, "-minimal"),
    spec("--minimal", Flag, "-minimal"),
    spec("-dlto", Flag, "-dlto"),
    spec("--dlink-time-opt", Flag, "-dlto"),
];

fn specs(d: Dialect) -> &'static [Spec] {
    match d {
        Dialect::Host => HOST_SPECS,
        Dialect::Nvcc => NVCC_SPECS,
        Dialect::Nvrtc => NVRTC_SPECS,
    }
}

/// One option of a command line: the arguments it spans, the name the rules use (a
/// known option's short name, else the whole argument), and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opt<'a> {
    args: &'a [String],
    name: &'a str,
    value: Option<&'a str>,
    known: bool,
}

impl Opt<'_> {
    /// As written: its arguments joined by a space.
    fn written(&self) -> String {
        self.args.join(" ")
    }

    /// Every spelling `allowed_flags` may name it by: as written, its arguments joined
    /// with nothing between, and its short name joined to its value.
    fn spellings(&self) -> Vec<String> {
        let mut v = vec![self.args[0].clone(), self.written(), self.args.concat()];
        if let Some(value) = self.value {
            v.push(format!("{}{value}", self.name));
        }
        v
    }
}

/// Splits a command line into options, by the longest name each argument matches.
fn parse(flags: &[String], dialect: Dialect) -> Vec<Opt<'_>> {
    let table = specs(dialect);
    let mut out = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        let arg = flags[i].as_str();
        let next = flags.get(i + 1).map(String::as_str);
        let mut best: Option<(&Spec, Option<&str>, usize)> = None;
        for s in table {
            let found = if arg == s.name {
                match s.form {
                    Flag => Some((None, 1)),
                    Joined => Some((Some(""), 1)),
                    JoinedOrNext | EqOrNext | Next => Some((next, 1 + usize::from(next.is_some()))),
                }
            } else if let Some(rest) = arg.strip_prefix(s.name) {
                match s.form {
                    Joined | JoinedOrNext => Some((Some(rest), 1)),
                    EqOrNext => rest.strip_prefix('=').map(|v| (Some(v), 1)),
                    Flag | Next => None,
                }
            } else {
                None
            };
            if let Some((value, n)) = found {
                if best.is_none_or(|(b, _, _)| s.name.len() > b.name.len()) {
                    best = Some((s, value, n));
                }
            }
        }
        let opt = match best {
            Some((s, value, n)) => Opt {
                args: &flags[i..i + n],
                name: s.canon,
                value,
                known: true,
            },
            None => Opt {
                args: &flags[i..i + 1],
                name: arg,
                value: None,
                known: false,
            },
        };
        i += opt.args.len();
        out.push(opt);
    }
    out
}

// ---------------------------------------------------------------------------------
// The deny-list: flags from the user.

/// Checks the user's flags for `dialect` (see the module doc): `Ok` or the first
/// refused flag. Flags that `allowed` vouches for pass unless xcache owns what they
/// take over.
pub fn check_user_flags(
    flags: &[String],
    dialect: Dialect,
    allowed: &AllowedFlags,
) -> Result<(), FlagRefusal> {
    for opt in parse(flags, dialect) {
        if let Some(why) = user_rule(&opt, dialect) {
            if why.can_be_vouched_for() && opt.spellings().iter().any(|s| allowed.vouches(s)) {
                continue;
            }
            let flag = opt.written();
            return Err(FlagRefusal {
                reason: why.reason(dialect),
                fix: why.fix(&flag),
                flag,
            });
        }
    }
    Ok(())
}

/// The user's flags with every relative search path made absolute against `cwd`
/// (`-Iinc`, `-I inc`, `--include-directory=inc`, `-isystem sys`, `-include x.h`,
/// `-L lib`: exactly the options [`check_user_flags`] refuses for naming a relative
/// path), each spelled as written otherwise. A command line does this for its user
/// (`xcache compile k.c -- -Iinc`), as a compiler run there would read them; the
/// library itself refuses relative paths, which it would look up in its own build
/// directory. Paths inside `-Wp,` and `-Xcompiler` lists are left as written (and
/// refused).
pub fn absolute_search_paths(flags: &[String], dialect: Dialect, cwd: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(flags.len());
    for opt in parse(flags, dialect) {
        let relative_value = match (user_rule(&opt, dialect), opt.value) {
            (Some(Why::RelativePath(p)), Some(v)) if !v.is_empty() && p == v => Some(v),
            _ => None,
        };
        let Some(value) = relative_value else {
            out.extend(opt.args.iter().cloned());
            continue;
        };
        let path: PathBuf = cwd
            .join(value)
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        // The value ends the option's last argument: joined (`-Iinc`, `--x=inc`) or the
        // whole of it (`-I inc`).
        let (last, before) = opt.args.split_last().expect("an option has an argument");
        out.extend(before.iter().cloned());
        out.push(format!(
            "{}{}",
            &last[..last.len() - value.len()],
            path.display()
        ));
    }
    out
}

/// Why the user's option is refused, if it is.
fn user_rule(o: &Opt, dialect: Dialect) -> Option<Why> {
    let (n, v) = (o.name, o.value.unwrap_or(""));
    if n.starts_with("-M") || (n.starts_with("--generate-") && n.contains("dependenc")) {
        return Some(Why::Dependencies);
    }
    if n.starts_with('@') {
        return Some(Why::ResponseFile);
    }
    match dialect {
        Dialect::Host => host_user_rule(o, n, v),
        Dialect::Nvcc => nvcc_user_rule(n, v),
        Dialect::Nvrtc => nvrtc_user_rule(n, v),
    }
}

/// A search path that must be absolute; `None` when it is.
fn relative(path: &str) -> Option<Why> {
    (!path.starts_with('/')).then(|| Why::RelativePath(path.to_string()))
}

/// `-f…` flags that write files outside the build directory (or make the library write
/// them when it runs).
const HOST_WRITING_PREFIXES: &[&str] = &[
    "-fdump-",
    "-fprofile-generate",
    "-fprofile-arcs",
    "-fprofile-dir",
    "-fprofile-instr-generate",
    "-fcs-profile-generate",
    "-ftest-coverage",
    "-fdiagnostics-add-output",
    "-fdiagnostics-set-output",
    "-fsave-optimization-record",
    "-foptimization-record-file",
    "-ftime-trace=",
    "-fcrash-diagnostics-dir",
    "-fmodules-cache-path",
    "-fproc-stat-report",
    "-fdeps-",
    "-fmemory-profile",
    "-save-stats",
];

/// `-f…` flags that run programs or load code.
const HOST_PROGRAM_PREFIXES: &[&str] = &["-fplugin", "-fpass-plugin", "-fmodule-mapper", "-ccc-"];

fn host_user_rule(o: &Opt, n: &str, v: &str) -> Option<Why> {
    match n {
        "-o" | "-c" | "-E" | "-S" | "-save-temps" | "-dumpdir" | "-dumpbase" | "-dumpbase-ext" => {
            return Some(Why::Output)
        }
        "-B" | "-specs" | "-wrapper" | "-iplugindir=" | "-Xclang" | "--config"
        | "--gcc-toolchain" | "--gcc-install-dir" | "--ld-path" => return Some(Why::Programs),
        "-aux-info" | "-coverage" | "--serialize-diagnostics" => return Some(Why::Writes),
        "-I" | "-isystem" | "-iquote" | "-idirafter" | "-include" | "-imacros" | "-L" => {
            return relative(v)
        }
        "-Wl," => return v.split(',').find_map(linker_item_rule),
        "-Xlinker" => return linker_item_rule(v),
        "-Wa," => return v.split(',').find_map(assembler_item_rule),
        "-Xassembler" => return assembler_item_rule(v),
        "-Wp," | "-Xpreprocessor" => {
            // The preprocessor's options are the compiler's: check them as such.
            let items: Vec<String> = if n == "-Wp," {
                v.split(',').map(str::to_string).collect()
            } else {
                vec![v.to_string()]
            };
            return parse(&items, Dialect::Host)
                .iter()
                .find_map(|i| user_rule(i, Dialect::Host));
        }
        _ => {}
    }
    if o.known {
        return None;
    }
    if n.starts_with("-save-temps") {
        return Some(Why::Output);
    }
    if HOST_PROGRAM_PREFIXES.iter().any(|p| n.starts_with(p))
        || n.strip_prefix("-fuse-ld=").is_some_and(|l| l.contains('/'))
    {
        return Some(Why::Programs);
    }
    if HOST_WRITING_PREFIXES.iter().any(|p| n.starts_with(p))
        || (n.starts_with("-fopt-info") && n.contains('='))
    {
        return Some(Why::Writes);
    }
    None
}

/// One item given to the linker (`-Wl,A,B` or `-Xlinker A`).
fn linker_item_rule(item: &str) -> Option<Why> {
    const OUTPUT: &[&str] = &["-o", "--output"];
    const PROGRAMS: &[&str] = &["-plugin", "--plugin", "--error-handling-script"];
    const WRITES: &[&str] = &[
        "-Map",
        "--Map",
        "--out-implib",
        "--dependency-file",
        "-dependency-file",
        "--reproduce",
        "--why-extract",
        "--print-archive-stats",
        "--print-symbol-counts",
        "-save-temps",
        "--save-temps",
    ];
    let starts = |list: &[&str]| list.iter().any(|p| item.starts_with(p));
    if starts(OUTPUT) {
        Some(Why::Output)
    } else if starts(PROGRAMS) {
        Some(Why::Programs)
    } else if starts(WRITES) {
        Some(Why::Writes)
    } else if item.starts_with('@') {
        Some(Why::ResponseFile)
    } else {
        None
    }
}

/// One item given to the assembler (`-Wa,A,B` or `-Xassembler A`).
fn assembler_item_rule(item: &str) -> Option<Why> {
    if item.starts_with("-o") {
        Some(Why::Output)
    } else if item.starts_with("--MD") || item.starts_with("-MD") {
        Some(Why::Dependencies)
    } else if item.starts_with("-a") {
        // Listings: -a, -al=FILE, -ahls=FILE, ...
        Some(Why::Writes)
    } else if item.starts_with('@') {
        Some(Why::ResponseFile)
    } else {
        None
    }
}

/// An item given to ptxas, nvlink, fatbinary or the archiver through nvcc or NVRTC.
fn tool_item_rule(item: &str) -> Option<Why> {
    (item.starts_with("-o") || item.starts_with("--output-file")).then_some(Why::Output)
}

fn nvcc_user_rule(n: &str, v: &str) -> Option<Why> {
    match n {
        "-o" | "-odir" | "-keep" | "-keep-dir" | "-save-temps" | "-c" | "-E" | "-ptx"
        | "-cubin" | "-fatbin" | "-dc" | "-dw" | "-dlink" | "-lib" | "-link" | "-cuda"
        | "-optix-ir" | "-run" | "-run-args" => Some(Why::Output),
        "-ccbin" => Some(Why::Programs),
        "-optf" => Some(Why::ResponseFile),
        "-time" | "-fdevice-time-trace" => Some(Why::Writes),
        "-I" | "-isystem" | "-include" | "-L" => relative(v),
        "-Xcompiler" => {
            let items: Vec<String> = v.split(',').map(str::to_string).collect();
            parse(&items, Dialect::Host)
                .iter()
                .find_map(|i| user_rule(i, Dialect::Host))
        }
        "-Xlinker" => v.split(',').find_map(linker_item_rule),
        "-Xptxas" | "-Xnvlink" | "-Xfatbin" | "-Xarchive" => v.split(',').find_map(tool_item_rule),
        _ => None,
    }
}

fn nvrtc_user_rule(n: &str, v: &str) -> Option<Why> {
    match n {
        "-time" | "-fdevice-time-trace" | "-create-pch" | "-use-pch" | "-pch-dir" | "-pch" => {
            Some(Why::Writes)
        }
        "-I" | "-include" => relative(v),
        "-Xptxas" => v.split(',').find_map(tool_item_rule),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// The allow-list: flags from data.

/// Checks flags that came from data (a manifest, a bundle, a remote record) against the
/// allow-list for `dialect` (see the module doc), with include directories resolved
/// against `root` and required to stay inside it. Returns the flags to use: as written,
/// except that include directories are absolute (`-I/abs/dir`). Flags that `allowed`
/// vouches for pass as written.
pub fn check_data_flags(
    flags: &[String],
    dialect: Dialect,
    root: &Path,
    allowed: &AllowedFlags,
) -> Result<Vec<String>, FlagRefusal> {
    let mut out = Vec::new();
    for opt in parse(flags, dialect) {
        if opt.spellings().iter().any(|s| allowed.vouches(s)) {
            out.extend(opt.args.iter().cloned());
            continue;
        }
        match data_rule(&opt, dialect, root) {
            Ok(args) => out.extend(args),
            Err(why) => {
                let flag = opt.written();
                return Err(match why {
                    DataWhy::NotListed => FlagRefusal {
                        reason: format!(
                            "flags from data (a warm manifest, a bundle) pass only by an allow-list of documented families (docs/CLI.md, `xcache warm`), and this is not one of them for {}",
                            dialect.name()
                        ),
                        fix: format!(
                            "remove it, or, if you vouch for it, add it to the `allowed_flags` setting (allowed_flags = \"{}\")",
                            opt.args.concat()
                        ),
                        flag,
                    },
                    DataWhy::Outside(why) => FlagRefusal {
                        reason: why,
                        fix: format!(
                            "name a directory inside {} (relative to it), or list the headers themselves in `include`; or, if you vouch for it, add it to the `allowed_flags` setting (allowed_flags = \"{}\")",
                            root.display(),
                            opt.args.concat()
                        ),
                        flag,
                    },
                });
            }
        }
    }
    Ok(out)
}

enum DataWhy {
    NotListed,
    Outside(String),
}

/// Characters of a plain value: no path separator, no `@`, no white space.
fn plain(value: &str, extra: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c) || extra.contains(c))
}

/// An include directory named by data: relative to `root` or absolute, resolved
/// (links and `..` followed), and inside `root`.
fn inside_root(root: &Path, dir: &str) -> Result<PathBuf, DataWhy> {
    let outside = |m: String| DataWhy::Outside(m);
    if dir.is_empty() {
        return Err(outside("it names no directory".into()));
    }
    let canonical_root = root.canonicalize().map_err(|e| {
        outside(format!(
            "the root {} cannot be resolved: {e}",
            root.display()
        ))
    })?;
    let full = canonical_root.join(dir);
    let real = full
        .canonicalize()
        .map_err(|e| outside(format!("{} cannot be resolved: {e}", full.display())))?;
    if !real.starts_with(&canonical_root) {
        return Err(outside(format!(
            "it names {}, outside {} (where the data's paths must stay)",
            real.display(),
            canonical_root.display()
        )));
    }
    if !real.is_dir() {
        return Err(outside(format!("{} is not a directory", real.display())));
    }
    if real.to_str().is_none_or(|s| s.contains(',')) {
        return Err(outside(format!(
            "{} is not a plain UTF-8 path without commas",
            real.display()
        )));
    }
    Ok(real)
}

fn data_rule(o: &Opt, dialect: Dialect, root: &Path) -> Result<Vec<String>, DataWhy> {
    let (n, v) = (o.name, o.value.unwrap_or(""));
    let as_written = || Ok(o.args.to_vec());
    let include = |name: &str| -> Result<Vec<String>, DataWhy> {
        let dir = inside_root(root, v)?;
        let dir = dir.to_string_lossy();
        Ok(if name == "-I" {
            vec![format!("-I{dir}")]
        } else {
            vec![name.to_string(), dir.into_owned()]
        })
    };
    let ok = |yes: bool| {
        if yes {
            as_written()
        } else {
            Err(DataWhy::NotListed)
        }
    };
    match dialect {
        Dialect::Host => match n {
            "-I" | "-isystem" | "-iquote" | "-idirafter" => include(n),
            "-D" | "-U" => ok(!v.is_empty()),
            "-l" => ok(plain(v, "")),
            "--param" => ok(plain(v, "=")),
            "-std=" => ok(o.args.len() == 1 && plain(v, "")),
            _ if o.known => Err(DataWhy::NotListed),
            _ => ok(host_data_flag(n)),
        },
        Dialect::Nvcc => match n {
            "-I" | "-isystem" => include(n),
            "-D" | "-U" => ok(!v.is_empty()),
            "-l" => ok(plain(v, "")),
            "-arch" | "-code" | "-gencode" => ok(plain(v, ",=")),
            "-std" | "-diag-suppress" | "-Werror" | "-default-stream" | "-cudart" => {
                ok(plain(v, ","))
            }
            "-maxrregcount" | "-t" => ok(!v.is_empty() && v.chars().all(|c| c.is_ascii_digit())),
            "-rdc" | "-ftz" | "-prec-div" | "-prec-sqrt" | "-fmad" => {
                ok(matches!(v, "true" | "false"))
            }
            "-lineinfo"
            | "-G"
            | "-g"
            | "-use_fast_math"
            | "-expt-relaxed-constexpr"
            | "-expt-extended-lambda"
            | "-extended-lambda"
            | "-extra-device-vectorization"
            | "-w"
            | "-res-usage"
            | "-restrict"
            | "-src-in-ptx" => as_written(),
            "-Xptxas" => ok(v.split(',').all(ptxas_data_item)),
            "-Xcompiler" => {
                let items: Vec<String> = v.split(',').map(str::to_string).collect();
                let mut host = Vec::new();
                for item in parse(&items, Dialect::Host) {
                    host.extend(data_rule(&item, Dialect::Host, root)?);
                }
                Ok(vec!["-Xcompiler".into(), host.join(",")])
            }
            _ if o.known => Err(DataWhy::NotListed),
            _ => ok(matches!(
                n,
                "-O0"
                    | "-O1"
                    | "-O2"
                    | "-O3"
                    | "-Wno-deprecated-gpu-targets"
                    | "-Wno-deprecated-declarations"
                    | "-Wreorder"
            )),
        },
        Dialect::Nvrtc => match n {
            "-I" => include(n),
            "-D" | "-U" => ok(!v.is_empty()),
            "-arch" => ok(plain(v, "")),
            "-std" | "-dopt" | "-Ofast-compile" | "-diag-suppress" | "-diag-error"
            | "-diag-warn" => ok(plain(v, ",")),
            "-maxrregcount" | "-split-compile" => {
                ok(!v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
            }
            "-rdc" | "-ftz" | "-prec-div" | "-prec-sqrt" | "-fmad" => {
                ok(matches!(v, "true" | "false"))
            }
            "-lineinfo"
            | "-G"
            | "-use_fast_math"
            | "-extra-device-vectorization"
            | "-default-device"
            | "-w"
            | "-restrict"
            | "-ewp"
            | "-device-int128"
            | "-minimal"
            | "-dlto" => as_written(),
            "-Xptxas" => ok(v.split(',').all(ptxas_data_item)),
            _ => Err(DataWhy::NotListed),
        },
    }
}

/// An option for ptxas that only reports or tunes (never names a file).
fn ptxas_data_item(item: &str) -> bool {
    const EXACT: &[&str] = &[
        "-v",
        "--verbose",
        "-O0",
        "-O1",
        "-O2",
        "-O3",
        "--warn-on-spills",
        "-warn-spills",
        "--warn-on-local-memory-usage",
        "-warn-lmem-usage",
        "--warn-on-double-precision-use",
        "-warn-double-usage",
        "--allow-expensive-optimizations",
        "-allow-expensive-optimizations",
    ];
    const WITH_VALUE: &[&str] = &[
        "--allow-expensive-optimizations=",
        "-allow-expensive-optimizations=",
        "-dlcm=",
        "-dscm=",
        "--def-load-cache=",
        "--def-store-cache=",
        "-maxrregcount=",
        "--maxrregcount=",
    ];
    EXACT.contains(&item)
        || WITH_VALUE
            .iter()
            .any(|p| item.strip_prefix(p).is_some_and(|v| plain(v, "")))
}

/// `-f` families that name files, write them, or load code: refused from data.
const F_FAMILIES_REFUSED: &[&str] = &[
    "plugin",
    "pass-plugin",
    "profile",
    "auto-profile",
    "cs-profile",
    "dump",
    "opt-info",
    "debug-prefix-map",
    "file-prefix-map",
    "macro-prefix-map",
    "profile-prefix-map",
    "coverage",
    "test-coverage",
    "branch-probabilities",
    "debug-compilation-dir",
    "module",
    "prebuilt-module-path",
    "deps-",
    "callgraph-info",
    "stack-usage",
    "sanitize-blacklist",
    "sanitize-ignorelist",
    "sanitize-system-ignorelist",
    "sanitize-coverage-allowlist",
    "sanitize-coverage-ignorelist",
    "sanitize-coverage-blocklist",
    "sanitize-coverage-whitelist",
    "sanitize-coverage-blacklist",
    "xray-",
    "instrument-functions-exclude-",
    "use-ld",
    "ld-path",
    "compare-debug",
    "save-optimization-record",
    "optimization-record",
    "time-trace",
    "crash-diagnostics-dir",
    "proc-stat-report",
    "diagnostics-add-output",
    "diagnostics-set-output",
    "diagnostics-format",
    "embed",
    "ltrans",
    "resolution",
    "wpa",
    "basic-block-",
    "memory-profile",
];

/// A C/C++ flag (an argument of its own) on the allow-list.
fn host_data_flag(f: &str) -> bool {
    const EXACT: &[&str] = &[
        "-pthread",
        "-w",
        "-pedantic",
        "-pedantic-errors",
        "-ansi",
        "-static-libgcc",
        "-static-libstdc++",
        "-O",
        "-O0",
        "-O1",
        "-O2",
        "-O3",
        "-Os",
        "-Oz",
        "-Og",
        "-Ofast",
    ];
    if EXACT.contains(&f) {
        return true;
    }
    if let Some(rest) = f.strip_prefix("-f") {
        let rest = rest.strip_prefix("no-").unwrap_or(rest);
        let (name, value) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        return plain(name, "")
            && value.is_none_or(|v| plain(v, ",:="))
            && !F_FAMILIES_REFUSED.iter().any(|p| name.starts_with(p));
    }
    if let Some(rest) = f.strip_prefix("-m") {
        let rest = rest.strip_prefix("no-").unwrap_or(rest);
        return plain(rest, ",=");
    }
    if let Some(rest) = f.strip_prefix("-W") {
        // Never -Wa, -Wl, -Wp, (the comma) and no paths.
        return rest.is_empty() || plain(rest, "=");
    }
    if let Some(rest) = f.strip_prefix("-g") {
        return rest.is_empty() || plain(rest, "=");
    }
    false
}

// ---------------------------------------------------------------------------------
// The environment.

/// Splits the compiler's own arguments (what the `cc` crate read from `CFLAGS`,
/// `CXXFLAGS` and their target forms) into those kept and the dependency flags removed:
/// `-M…` with their values, their long forms, and `-Wp,`/`-Xpreprocessor` arguments
/// that carry one. The caller warns about what was removed.
pub fn strip_dependency_flags(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for opt in parse(args, Dialect::Host) {
        if matches!(user_rule(&opt, Dialect::Host), Some(Why::Dependencies)) {
            removed.push(opt.written());
        } else {
            kept.extend(opt.args.iter().cloned());
        }
    }
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn user(a: &[&str], d: Dialect) -> Result<(), FlagRefusal> {
        check_user_flags(&v(a), d, &AllowedFlags::default())
    }

    #[test]
    fn options_are_read_with_their_values() {
        let f = v(&[
            "-I",
            "/a",
            "-I/b",
            "--include-directory=/c",
            "--prefix",
            "/d",
            "-O2",
        ]);
        let got: Vec<(String, Option<String>)> = parse(&f, Dialect::Host)
            .iter()
            .map(|o| (o.name.to_string(), o.value.map(str::to_string)))
            .collect();
        let want = [
            ("-I", Some("/a")),
            ("-I", Some("/b")),
            ("-I", Some("/c")),
            ("-B", Some("/d")),
            ("-O2", None),
        ];
        assert_eq!(
            got,
            want.map(|(n, v)| (n.to_string(), v.map(str::to_string)))
        );
        // The longest name wins: -lineinfo is not -l with "ineinfo".
        let nvcc = v(&["-lineinfo", "-lm", "-odir", "x"]);
        let n = parse(&nvcc, Dialect::Nvcc);
        assert_eq!(
            n.iter().map(|o| o.name).collect::<Vec<_>>(),
            ["-lineinfo", "-l", "-odir"]
        );
    }

    #[test]
    fn the_issues_attacks_are_refused_from_the_user_with_the_reason() {
        let cases: &[(&[&str], &str, Why)] = &[
            (&["--prefix=/tmp/evil"], "--prefix=/tmp/evil", Why::Programs),
            (
                &["--prefix", "/tmp/evil"],
                "--prefix /tmp/evil",
                Why::Programs,
            ),
            (&["-B/tmp/evil"], "-B/tmp/evil", Why::Programs),
            (&["-B", "/tmp/evil"], "-B /tmp/evil", Why::Programs),
            (&["-fplugin=/x.so"], "-fplugin=/x.so", Why::Programs),
            (&["-specs=/x"], "-specs=/x", Why::Programs),
            (&["--specs", "/x"], "--specs /x", Why::Programs),
            (&["-wrapper", "gdb"], "-wrapper gdb", Why::Programs),
            (&["-Wa,-a=/tmp/l"], "-Wa,-a=/tmp/l", Why::Writes),
            (
                &["-Xassembler", "-al=/tmp/l"],
                "-Xassembler -al=/tmp/l",
                Why::Writes,
            ),
            (&["-save-temps"], "-save-temps", Why::Output),
            (&["-save-temps=obj"], "-save-temps=obj", Why::Output),
            (&["--save-temps"], "--save-temps", Why::Output),
            (&["-dumpdir", "/tmp/d/"], "-dumpdir /tmp/d/", Why::Output),
            (&["-dumpbase", "x"], "-dumpbase x", Why::Output),
            (&["-o", "/tmp/x.so"], "-o /tmp/x.so", Why::Output),
            (&["--output=/tmp/x.so"], "--output=/tmp/x.so", Why::Output),
            (&["-Wl,-Map,/tmp/m"], "-Wl,-Map,/tmp/m", Why::Writes),
            (&["-Wl,-Map=/tmp/m"], "-Wl,-Map=/tmp/m", Why::Writes),
            (
                &["-Xlinker", "-Map", "-Xlinker", "/tmp/m"],
                "-Xlinker -Map",
                Why::Writes,
            ),
            (&["-Wl,--output=/tmp/x"], "-Wl,--output=/tmp/x", Why::Output),
            (&["-Wl,-plugin,/x.so"], "-Wl,-plugin,/x.so", Why::Programs),
            (
                &["-fprofile-generate=/tmp/p"],
                "-fprofile-generate=/tmp/p",
                Why::Writes,
            ),
            (&["-fprofile-arcs"], "-fprofile-arcs", Why::Writes),
            (&["--coverage"], "--coverage", Why::Writes),
            (
                &["-fdump-tree-all=/tmp/d"],
                "-fdump-tree-all=/tmp/d",
                Why::Writes,
            ),
            (&["-aux-info", "/tmp/a"], "-aux-info /tmp/a", Why::Writes),
            (&["@/tmp/rsp"], "@/tmp/rsp", Why::ResponseFile),
            (&["-Xclang", "-load"], "-Xclang -load", Why::Programs),
            (&["-fuse-ld=/tmp/ld"], "-fuse-ld=/tmp/ld", Why::Programs),
            (&["-c"], "-c", Why::Output),
            (&["--compile"], "--compile", Why::Output),
        ];
        for (flags, named, why) in cases {
            let e = user(flags, Dialect::Host).unwrap_err();
            assert_eq!(&e.flag, named, "{flags:?}");
            assert_eq!(e.reason, why.reason(Dialect::Host), "{flags:?}");
            assert!(e.to_string().contains("Fix: "), "{e}");
        }
    }

    #[test]
    fn dependency_flags_of_the_user_are_refused_in_every_form() {
        for f in [
            &["-MMD"][..],
            &["-MD"],
            &["-M"],
            &["-MM"],
            &["-MF", "x.d"],
            &["-MFx.d"],
            &["-MT", "t"],
            &["-MQ", "t"],
            &["-MP"],
            &["-MG"],
            &["--write-user-dependencies"],
            &["--write-dependencies"],
            &["-Wp,-MD,/tmp/x.d"],
            &["-Wp,-MMD,x.d"],
            &["-Xpreprocessor", "-MMD"],
            &["-Wa,--MD,/tmp/x"],
        ] {
            let e = user(f, Dialect::Host).unwrap_err();
            assert!(e.reason.contains("tracks every header"), "{f:?}: {e}");
            assert_eq!(e.fix, "remove the flag");
        }
        for d in [Dialect::Nvcc, Dialect::Nvrtc] {
            for f in [
                &["-MMD"][..],
                &["-MD"],
                &["--generate-nonsystem-dependencies"],
            ] {
                let e = user(f, d).unwrap_err();
                assert!(e.reason.contains("tracks every header"), "{f:?}");
            }
        }
        let e = user(&["-Xcompiler", "-MMD"], Dialect::Nvcc).unwrap_err();
        assert_eq!(e.flag, "-Xcompiler -MMD");
    }

    #[test]
    fn nvcc_and_nvrtc_outputs_and_programs_are_refused() {
        for (f, why) in [
            (&["-ccbin", "/usr/bin/gcc"][..], Why::Programs),
            (&["--compiler-bindir=/x"], Why::Programs),
            (&["-ccbin=/x"], Why::Programs),
            (&["--keep"], Why::Output),
            (&["-keep-dir", "/tmp/k"], Why::Output),
            (&["-odir", "/tmp/o"], Why::Output),
            (&["--output-file", "/tmp/o"], Why::Output),
            (&["-o/tmp/x"], Why::Output),
            (&["-optf", "/tmp/f"], Why::ResponseFile),
            (&["-time", "/tmp/t.csv"], Why::Writes),
            (&["-Xcompiler", "-B/tmp"], Why::Programs),
            (&["-Xcompiler", "-fopenmp,-save-temps"], Why::Output),
            (&["-Xlinker", "-Map=/tmp/m"], Why::Writes),
            (&["-Xptxas", "-o,/tmp/x"], Why::Output),
            (&["-run"], Why::Output),
        ] {
            let e = user(f, Dialect::Nvcc).unwrap_err();
            assert_eq!(e.reason, why.reason(Dialect::Nvcc), "{f:?}");
        }
        let e = user(&["-ccbin", "/x"], Dialect::Nvcc).unwrap_err();
        assert!(e.fix.contains("`cxx` setting"), "{e}");
        for f in [
            &["--create-pch=/tmp/p"][..],
            &["--pch-dir=/tmp"],
            &["--time=/tmp/t"],
            &["--fdevice-time-trace=/tmp/t"],
            &["-D", "--pch-dir=/tmp"],
        ] {
            let e = user(f, Dialect::Nvrtc).unwrap_err();
            assert_eq!(e.reason, Why::Writes.reason(Dialect::Nvrtc), "{f:?}");
        }
    }

    #[test]
    fn common_flags_pass_from_the_user() {
        for f in [
            &[
                "-O3",
                "-march=native",
                "-fopenmp",
                "-ffast-math",
                "-DN=4",
                "-lm",
            ][..],
            &[
                "-I",
                "/abs/inc",
                "-isystem",
                "/usr/include/x",
                "-std=c11",
                "-Wall",
                "-Werror",
            ],
            &[
                "-Wl,-rpath,/opt/lib",
                "-Wa,--noexecstack",
                "-Wp,-D_FORTIFY_SOURCE=2",
            ],
            &[
                "-fopenmp-simd",
                "-fno-math-errno",
                "-pthread",
                "-g",
                "-fuse-ld=lld",
            ],
            &["-fopt-info-vec", "-fstack-usage"],
        ] {
            user(f, Dialect::Host).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        for f in [
            &[
                "-arch",
                "sm_80",
                "-lineinfo",
                "--use_fast_math",
                "-Xptxas",
                "-v",
            ][..],
            &[
                "-Xcompiler",
                "-fopenmp",
                "-maxrregcount=64",
                "--std",
                "c++17",
                "-O3",
            ],
        ] {
            user(f, Dialect::Nvcc).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        let nvrtc = [
            "-minimal",
            "--Ofast-compile=min",
            "--use_fast_math",
            "-lineinfo",
        ];
        user(&nvrtc, Dialect::Nvrtc).unwrap();
    }

    #[test]
    fn relative_search_paths_are_refused_in_every_form() {
        for f in [
            &["-I", "rel"][..],
            &["-Irel"],
            &["--include-directory=rel"],
            &["--include-directory", "rel"],
            &["-isystem", "rel"],
            &["-include", "x.h"],
            &["-I"],
            &["-Wp,-Irel"],
        ] {
            let e = user(f, Dialect::Host).unwrap_err();
            assert!(e.reason.contains("relative path"), "{f:?}: {e}");
            assert!(e.fix.contains("--include"), "{e}");
        }
        let e = user(&["--include-path=rel"], Dialect::Nvcc).unwrap_err();
        assert!(e.reason.contains("relative path"));
        let e = user(&["--include-path=rel"], Dialect::Nvrtc).unwrap_err();
        assert!(e.reason.contains("relative path"));
    }

    #[test]
    fn relative_search_paths_are_made_absolute_as_written_and_pass() {
        let cwd = Path::new("/home/me/proj");
        for (dialect, given, want) in [
            (
                Dialect::Host,
                &["-Iinc", "-DN=4", "-I", "./sys", "-O2"][..],
                &[
                    "-I/home/me/proj/inc",
                    "-DN=4",
                    "-I",
                    "/home/me/proj/sys",
                    "-O2",
                ][..],
            ),
            (
                Dialect::Host,
                &[
                    "--include-directory=inc",
                    "-isystem",
                    "../s",
                    "-include",
                    "x.h",
                ],
                &[
                    "--include-directory=/home/me/proj/inc",
                    "-isystem",
                    "/home/me/proj/../s",
                    "-include",
                    "/home/me/proj/x.h",
                ],
            ),
            (
                Dialect::Host,
                &["-I/abs", "-Llib", "-lm", "-iquote", "q"],
                &[
                    "-I/abs",
                    "-L/home/me/proj/lib",
                    "-lm",
                    "-iquote",
                    "/home/me/proj/q",
                ],
            ),
            (
                Dialect::Nvcc,
                &["--include-path=inc"],
                &["--include-path=/home/me/proj/inc"],
            ),
            (Dialect::Nvrtc, &["-Iinc"], &["-I/home/me/proj/inc"]),
        ] {
            let got = absolute_search_paths(&v(given), dialect, cwd);
            assert_eq!(got, v(want), "{given:?}");
            check_user_flags(&got, dialect, &AllowedFlags::default()).unwrap();
        }
        // What the policy refuses for other reasons stays as written, and refused.
        for f in [&["-Wp,-Irel"][..], &["-I"], &["-o", "out"]] {
            let got = absolute_search_paths(&v(f), Dialect::Host, cwd);
            assert_eq!(got, v(f));
            assert!(check_user_flags(&got, Dialect::Host, &AllowedFlags::default()).is_err());
        }
    }

    #[test]
    fn vouched_flags_pass_but_never_over_what_xcache_owns() {
        let allowed = AllowedFlags::parse("-B/opt/bin -fplugin=/opt/p/* -MMD -o/tmp/x").unwrap();
        let ok = |a: &[&str]| check_user_flags(&v(a), Dialect::Host, &allowed);
        ok(&["-B/opt/bin"]).unwrap();
        ok(&["-B", "/opt/bin"]).unwrap();
        ok(&["-fplugin=/opt/p/a.so"]).unwrap();
        assert!(ok(&["-B/opt/other"]).is_err());
        assert!(
            ok(&["-MMD"]).is_err(),
            "dependency flags cannot be vouched for"
        );
        assert!(ok(&["-o/tmp/x"]).is_err(), "outputs cannot be vouched for");
    }

    fn data(a: &[&str], d: Dialect, root: &Path) -> Result<Vec<String>, FlagRefusal> {
        check_data_flags(&v(a), d, root, &AllowedFlags::default())
    }

    #[test]
    fn data_flags_pass_by_the_allow_list_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for f in [
            "-O2",
            "-O3",
            "-Ofast",
            "-fopenmp",
            "-ffast-math",
            "-fno-math-errno",
            "-fvisibility=hidden",
            "-fsanitize=address,undefined",
            "-march=native",
            "-mavx2",
            "-mno-fma",
            "-Wall",
            "-Wno-unused-variable",
            "-Werror=format",
            "-Wformat=2",
            "-DN=4",
            "-DMSG=\"a/b\"",
            "-UNDEBUG",
            "-std=c11",
            "-g",
            "-g3",
            "-gdwarf-4",
            "-lm",
            "-pthread",
            "--param=max-unroll-times=4",
            "-w",
        ] {
            assert_eq!(data(&[f], Dialect::Host, r).unwrap(), [f], "{f}");
        }
        assert_eq!(
            data(
                &["-D", "N=4", "-l", "m", "--param", "a=1"],
                Dialect::Host,
                r
            )
            .unwrap(),
            ["-D", "N=4", "-l", "m", "--param", "a=1"]
        );
        for f in [
            &["--include-directory=/outside"][..],
            &["-Wp,-I/outside"],
            &["--prefix=/tmp/evil"],
            &["-Wa,-a=/tmp/l"],
            &["-save-temps"],
            &["-dumpdir", "/tmp/d/"],
            &["-B/tmp"],
            &["-fplugin=/x.so"],
            &["-fprofile-generate"],
            &["-fdump-tree-all"],
            &["-fdebug-prefix-map=/a=/b"],
            &["-fprofile-use=/p"],
            &["-fsanitize-ignorelist=x"],
            &["-fsomething=/abs"],
            &["-Wl,-rpath,/x"],
            &["-include", "x.h"],
            &["-L/lib"],
            &["@rsp"],
            &["-l/abs/lib.so"],
            &["-l:libfoo.a"],
            &["-MMD"],
            &["-o", "x"],
            &["-x", "c"],
            &["--machine-arch=native"],
            &["-specs=x"],
            &["-std=c11/../"],
        ] {
            let e = data(f, Dialect::Host, r).unwrap_err();
            assert_eq!(e.flag, f.join(" "), "{f:?}");
        }
        let e = data(&["--prefix=/tmp/evil"], Dialect::Host, r).unwrap_err();
        assert!(
            e.reason.contains("allow-list")
                && e.fix.contains("allowed_flags = \"--prefix=/tmp/evil\""),
            "{e}"
        );
    }

    #[test]
    fn include_dirs_from_data_stay_inside_the_root_and_come_back_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("inc/sub")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
        let real = root.canonicalize().unwrap();
        let inc = real.join("inc").display().to_string();
        for (f, want) in [
            (&["-Iinc"][..], vec![format!("-I{inc}")]),
            (&["-I", "inc"], vec![format!("-I{inc}")]),
            (&["--include-directory=inc"], vec![format!("-I{inc}")]),
            (&["--include-directory", "inc"], vec![format!("-I{inc}")]),
            (
                &["-isystem", "inc/sub/.."],
                vec!["-isystem".to_string(), inc.clone()],
            ),
            (
                &["-iquote", "inc"],
                vec!["-iquote".to_string(), inc.clone()],
            ),
            (
                &["-idirafter", &inc],
                vec!["-idirafter".to_string(), inc.clone()],
            ),
        ] {
            assert_eq!(data(f, Dialect::Host, &root).unwrap(), want, "{f:?}");
        }
        let outside = tmp.path().join("outside").display().to_string();
        for f in [
            &["-I", "../outside"][..],
            &["-I", &outside],
            &["-Ilink"],
            &["-isystem", "link"],
            &["--include-directory=/etc"],
            &["-Imissing"],
            &["-I"],
        ] {
            let e = data(f, Dialect::Host, &root).unwrap_err();
            assert!(e.fix.contains("inside"), "{f:?}: {e}");
        }
        assert_eq!(
            data(&["-I", "inc"], Dialect::Nvcc, &root).unwrap(),
            [format!("-I{inc}")]
        );
        assert_eq!(
            data(&["--include-path=inc"], Dialect::Nvrtc, &root).unwrap(),
            [format!("-I{inc}")]
        );
        assert_eq!(
            data(&["-Xcompiler", "-fopenmp,-Iinc"], Dialect::Nvcc, &root).unwrap(),
            ["-Xcompiler".to_string(), format!("-fopenmp,-I{inc}")]
        );
    }

    #[test]
    fn cuda_data_flags() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for f in [
            &["-arch", "sm_80"][..],
            &["--gpu-architecture=sm_90"],
            &["-gencode", "arch=compute_80,code=sm_80"],
            &[
                "-lineinfo",
                "--use_fast_math",
                "-maxrregcount=64",
                "--std",
                "c++17",
            ],
            &["-Xptxas", "-v"],
            &["-Xptxas", "-O3,--warn-on-spills"],
            &[
                "-O3",
                "-G",
                "--extended-lambda",
                "-rdc=true",
                "-Wno-deprecated-gpu-targets",
            ],
        ] {
            data(f, Dialect::Nvcc, r).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        for f in [
            &["-ccbin", "/x"][..],
            &["--keep"],
            &["-keep-dir", "/tmp"],
            &["-Xptxas", "--output-file=/tmp/x"],
            &["-Xcompiler", "-B/tmp"],
            &["-Xlinker", "-rpath"],
            &["-arch", "sm_80/.."],
            &["-maxrregcount=x"],
            &["-optf", "f"],
        ] {
            assert!(data(f, Dialect::Nvcc, r).is_err(), "{f:?}");
        }
        for f in [
            &["--gpu-architecture=sm_90", "--use_fast_math", "-lineinfo"][..],
            &[
                "--std=c++17",
                "-DX=1",
                "--fmad=false",
                "-Xptxas",
                "-v",
                "--Ofast-compile=min",
            ],
        ] {
            data(f, Dialect::Nvrtc, r).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        for f in [
            &["--pch-dir=/tmp"][..],
            &["--time=x"],
            &["-include", "x.h"],
            &["-G3"],
        ] {
            assert!(data(f, Dialect::Nvrtc, r).is_err(), "{f:?}");
        }
    }

    #[test]
    fn vouched_data_flags_pass_as_written() {
        let root = tempfile::tempdir().unwrap();
        let allowed = AllowedFlags::parse("-fprofile-use=/opt/prof.gcda -Wl,*").unwrap();
        let f = v(&["-fprofile-use=/opt/prof.gcda", "-Wl,-rpath,/opt/lib"]);
        assert_eq!(
            check_data_flags(&f, Dialect::Host, root.path(), &allowed).unwrap(),
            f
        );
    }

    #[test]
    fn dependency_flags_are_stripped_from_the_environment() {
        let (kept, removed) = strip_dependency_flags(&v(&[
            "-O3",
            "-MMD",
            "-ffunction-sections",
            "-MF",
            "x.d",
            "-MT",
            "t",
            "-Wp,-MD,y.d",
            "-fPIC",
            "--write-dependencies",
            "-MP",
            "-Wall",
        ]));
        assert_eq!(kept, v(&["-O3", "-ffunction-sections", "-fPIC", "-Wall"]));
        assert_eq!(
            removed,
            v(&[
                "-MMD",
                "-MF x.d",
                "-MT t",
                "-Wp,-MD,y.d",
                "--write-dependencies",
                "-MP"
            ])
        );
    }
}
