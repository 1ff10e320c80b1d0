//! Op templates: C sources whose header declares typed parameters and entry points,
//! rendered with minijinja only after every parameter has been checked.
//!
//! A template starts with a header comment holding TOML:
//!
//! ```c
//! /* xcache-template
//! description = "Fused element-wise expression"
//! entry = ["int xc_elemwise(int64_t n, const void *const *inputs, void *out)"]
//! flags = ["-fopenmp-simd"]            # compiler flags the template needs
//!
//! [params.dtype]
//! type = "choice"                      # choice | int | ident | number | bool | expr
//! values = ["float32", "float64"]
//! doc = "element type"
//!
//! [params.arity]
//! type = "int"
//! min = 1
//! max = 8
//!
//! [params.expr]
//! type = "expr"
//! inputs = ["a", "b", "c", "d", "e", "f", "g", "h"]
//! arity = "arity"                      # optional: how many of `inputs` are usable
//! dtype = "dtype"                      # which parameter gives the element type
//! default = "a"                        # any parameter may have a default
//! */
//! ```
//!
//! The body is a minijinja template (strict: an undefined variable is an error). It sees
//! every parameter (ints as integers, bools as booleans, expressions as emitted C) and
//! `xc_prelude`, the C helpers that emitted expressions call (for CUDA templates, with
//! or without an expression, also the C library's types and constants, spelled out
//! under NVRTC, which has no C headers: see [`expr::CUDA_LIBC`]).
//!
//! Templates are found by name: `elemwise` or `c/elemwise` is `c/elemwise.c` in the
//! first directory of the `template_path` setting that has it, else the copy embedded in
//! the library from `templates/`. Names are `[a-z0-9_]+`, so a name is never a path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::expr::{self, Dtype};
use super::Language;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::key::TemplateRef;

/// The templates shipped in `templates/`, embedded at build time.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("c/elemwise.c", include_str!("../../templates/c/elemwise.c")),
    ("c/reduce.c", include_str!("../../templates/c/reduce.c")),
    ("c/gemm.c", include_str!("../../templates/c/gemm.c")),
    (
        "cuda/elemwise.cu",
        include_str!("../../templates/cuda/elemwise.cu"),
    ),
    (
        "cuda/reduce.cu",
        include_str!("../../templates/cuda/reduce.cu"),
    ),
    ("cuda/gemm.cu", include_str!("../../templates/cuda/gemm.cu")),
    (
        "cuda/support.cu",
        include_str!("../../templates/cuda/support.cu"),
    ),
];

/// The file extension of a device's templates.
fn extension(device: &str) -> &'static str {
    if device == "cuda" {
        "cu"
    } else {
        "c"
    }
}

/// The type of a parameter and what it accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    /// One of a fixed set of words.
    Choice(Vec<String>),
    /// An integer in `min..=max`.
    Int {
        /// Smallest accepted.
        min: i64,
        /// Largest accepted.
        max: i64,
    },
    /// A C identifier (not a keyword), at most 63 characters.
    Ident,
    /// A finite numeric literal, re-printed from its value.
    Number,
    /// `true` or `false`.
    Bool,
    /// An element-wise expression over named inputs (see [`expr`]).
    Expr {
        /// Input names, in order.
        inputs: Vec<String>,
        /// The int parameter that says how many of `inputs` are usable.
        arity: Option<String>,
        /// The choice parameter that names the element type.
        dtype: String,
    },
}

impl ParamType {
    /// What it accepts, for error messages and `xcache templates`.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Choice(v) => format!("one of {}", v.join(", ")),
            ParamType::Int { min, max } => format!("an integer from {min} to {max}"),
            ParamType::Ident => "a C identifier".into(),
            ParamType::Number => "a number".into(),
            ParamType::Bool => "true or false".into(),
            ParamType::Expr { inputs, arity, .. } => match arity {
                Some(a) => format!(
                    "an expression over the first `{a}` of {}",
                    inputs.join(", ")
                ),
                None => format!("an expression over {}", inputs.join(", ")),
            },
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: ParamType,
    /// The value used when none is given.
    pub default: Option<String>,
    /// What it means.
    pub doc: String,
}

/// The name the body is compiled under in its minijinja environment.
const BODY: &str = "body";

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    /// Qualified name, e.g. `c/elemwise`.
    pub name: String,
    /// Source language.
    pub language: Language,
    /// One line on what it computes.
    pub description: String,
    /// Exported entry points, as C declarations.
    pub entry: Vec<String>,
    /// Compiler flags it needs, before the user's.
    pub flags: Vec<String>,
    /// Parameters, sorted by name.
    pub params: Vec<ParamSpec>,
    /// Where it came from: `embedded` or a file path.
    pub origin: String,
    text: String,
    body: String,
    /// The body compiled by minijinja, once per process (a template is parsed once per
    /// `Jit`): each render then only runs it.
    compiled: Arc<OnceLock<std::result::Result<minijinja::Environment<'static>, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    description: String,
    entry: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    values: Vec<String>,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(default)]
    inputs: Vec<String>,
    arity: Option<String>,
    dtype: Option<String>,
    default: Option<toml::Value>,
    #[serde(default)]
    doc: String,
}

const HEADER_START: &str = "/* xcache-template";

/// An instantiated template: the rendered source and what the key records of it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The C source.
    pub source: String,
    /// Template name, text hash and canonical parameters.
    pub template_ref: TemplateRef,
    /// Flags the template asks for.
    pub flags: Vec<String>,
    /// The template's language.
    pub language: Language,
}

fn template_error(name: &str, message: impl Into<String>) -> Error {
    Error::Template {
        template: name.to_string(),
        message: message.into(),
    }
}

impl Template {
    /// Parses a template's text. `name` is its qualified name (`c/elemwise`).
    pub fn parse(name: &str, text: &str, origin: &str) -> Result<Template> {
        let bad = |m: String| template_error(name, format!("{m} (in {origin})"));
        let trimmed = text.trim_start();
        let rest = trimmed.strip_prefix(HEADER_START).ok_or_else(|| {
            bad(format!(
                "a template must start with a `{HEADER_START}` header comment"
            ))
        })?;
        // The header ends at a line starting with `*/`, so a TOML string may hold "*/".
        let end = rest.find("\n*/").ok_or_else(|| {
            bad("the header comment is not closed by a line starting with `*/`".into())
        })?;
        let header: Header = toml::from_str(&rest[..end])
            .map_err(|e| bad(format!("header is not valid: {}", e.message())))?;
        let body = rest[end + 3..].to_string();
        let language = match name.split_once('/').map(|(d, _)| d) {
            Some("c") => Language::C,
            Some("cuda") => Language::Cuda,
            _ => return Err(bad("a template name is `c/NAME` or `cuda/NAME`".into())),
        };
        let mut params = Vec::new();
        for (pname, raw) in header.params {
            let ty = match raw.ty.as_str() {
                "choice" if !raw.values.is_empty() => ParamType::Choice(raw.values),
                "int" => ParamType::Int {
                    min: raw.min.unwrap_or(i64::MIN),
                    max: raw.max.unwrap_or(i64::MAX),
                },
                "ident" => ParamType::Ident,
                "number" => ParamType::Number,
                "bool" => ParamType::Bool,
                "expr" if !raw.inputs.is_empty() && raw.dtype.is_some() => ParamType::Expr {
                    inputs: raw.inputs,
                    arity: raw.arity,
                    dtype: raw.dtype.unwrap_or_default(),
                },
                other => {
                    return Err(bad(format!(
                        "parameter `{pname}`: type `{other}` is unknown or incomplete (choice needs values; expr needs inputs and dtype)"
                    )))
                }
            };
            let default = raw.default.map(|v| match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            });
            params.push(ParamSpec {
                name: pname,
                ty,
                default,
                doc: raw.doc,
            });
        }
        let t = Template {
            name: name.to_string(),
            language,
            description: header.description,
            entry: header.entry,
            flags: header.flags,
            params,
            origin: origin.to_string(),
            text: text.to_string(),
            body,
            compiled: Arc::new(OnceLock::new()),
        };
        // Expression parameters must point at real dtype / arity parameters.
        for p in &t.params {
            if let ParamType::Expr { arity, dtype, .. } = &p.ty {
                match t.param(dtype).map(|d| &d.ty) {
                    Some(ParamType::Choice(v)) if v.iter().all(|d| Dtype::parse(d).is_some()) => {}
                    _ => {
                        return Err(bad(format!(
                            "parameter `{}`: dtype parameter `{dtype}` must be a choice of float32, float64, int32, int64",
                            p.name
                        )))
                    }
                }
                if let Some(a) = arity {
                    if !matches!(t.param(a).map(|d| &d.ty), Some(ParamType::Int { .. })) {
                        return Err(bad(format!(
                            "parameter `{}`: arity parameter `{a}` must be an int",
                            p.name
                        )));
                    }
                }
            }
        }
        Ok(t)
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The template's whole text, header included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// blake3 of the template's text, hex.
    pub fn text_hash(&self) -> String {
        blake3::hash(self.text.as_bytes()).to_hex().to_string()
    }

    /// Checks every parameter, then renders. `given` are (name, value) pairs as the
    /// user wrote them.
    pub fn render(&self, given: &[(String, String)]) -> Result<Rendered> {
        let err = |m: String| template_error(&self.name, m);
        let names = || {
            self.params
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in given {
            if self.param(k).is_none() {
                return Err(err(format!(
                    "has no parameter `{k}`; its parameters are: {}",
                    names()
                )));
            }
            if values.insert(k.as_str(), v.trim().to_string()).is_some() {
                return Err(err(format!("parameter `{k}` is given twice")));
            }
        }
        for p in &self.params {
            if !values.contains_key(p.name.as_str()) {
                match &p.default {
                    Some(d) => {
                        values.insert(&p.name, d.clone());
                    }
                    None => {
                        return Err(err(format!(
                            "parameter `{}` is missing: it takes {}",
                            p.name,
                            p.ty.describe()
                        )))
                    }
                }
            }
        }
        let invalid = |p: &ParamSpec, v: &str, why: &str| {
            err(format!(
                "parameter `{}` = {v:?} is invalid: {why}expected {}",
                p.name,
                p.ty.describe()
            ))
        };

        // Plain parameters first; expressions need their dtype and arity.
        let mut ctx: BTreeMap<String, minijinja::Value> = BTreeMap::new();
        let mut canonical: Vec<(String, String)> = Vec::new();
        let mut prelude = None;
        for p in &self.params {
            let v = values[p.name.as_str()].as_str();
            let (value, canon) = match &p.ty {
                ParamType::Choice(opts) => {
                    if !opts.iter().any(|o| o == v) {
                        return Err(invalid(p, v, ""));
                    }
                    (minijinja::Value::from(v), v.to_string())
                }
                ParamType::Int { min, max } => match v.parse::<i64>() {
                    Ok(i) if (*min..=*max).contains(&i) => {
                        (minijinja::Value::from(i), i.to_string())
                    }
                    Ok(_) => return Err(invalid(p, v, "out of range; ")),
                    Err(_) => return Err(invalid(p, v, "")),
                },
                ParamType::Ident => {
                    if !is_c_identifier(v) {
                        return Err(invalid(p, v, "not an identifier or a C keyword; "));
                    }
                    (minijinja::Value::from(v), v.to_string())
                }
                ParamType::Number => {
                    let e = expr::parse(v, &[]).ok().and_then(|e| match e {
                        expr::Expr::Num { value, .. } => Some(value),
                        expr::Expr::Neg(inner) => match *inner {
                            expr::Expr::Num { value, .. } => Some(-value),
                            _ => None,
                        },
                        _ => None,
                    });
                    let Some(n) = e else {
                        return Err(invalid(p, v, ""));
                    };
                    let text = format!("{n:?}");
                    (minijinja::Value::from(text.clone()), text)
                }
                ParamType::Bool => match v {
                    "true" | "1" | "yes" => (minijinja::Value::from(true), "true".into()),
                    "false" | "0" | "no" => (minijinja::Value::from(false), "false".into()),
                    _ => return Err(invalid(p, v, "")),
                },
                ParamType::Expr { .. } => continue,
            };
            ctx.insert(p.name.clone(), value);
            canonical.push((p.name.clone(), canon));
        }
        for p in &self.params {
            let ParamType::Expr {
                inputs,
                arity,
                dtype,
            } = &p.ty
            else {
                continue;
            };
            let v = values[p.name.as_str()].as_str();
            let dt = Dtype::parse(&values[dtype.as_str()]).expect("checked at parse time");
            let n = match arity {
                Some(a) => values[a.as_str()]
                    .parse::<usize>()
                    .unwrap_or(0)
                    .min(inputs.len()),
                None => inputs.len(),
            };
            let usable: Vec<&str> = inputs[..n].iter().map(String::as_str).collect();
            let parsed = expr::parse(v, &usable).map_err(|e| invalid(p, v, &format!("{e}; ")))?;
            parsed
                .check(dt)
                .map_err(|e| invalid(p, v, &format!("{e}; ")))?;
            ctx.insert(
                p.name.clone(),
                minijinja::Value::from(parsed.emit(dt, &usable)),
            );
            canonical.push((p.name.clone(), parsed.display(&usable)));
            prelude = Some(expr::prelude(dt, self.language == Language::Cuda));
        }
        canonical.sort();
        // Without an expression, a CUDA template still gets what it takes from the C
        // library (spelled out under NVRTC, which has no C headers).
        let cuda = self.language == Language::Cuda;
        ctx.insert(
            "xc_prelude".into(),
            minijinja::Value::from(prelude.unwrap_or_else(|| {
                if cuda {
                    expr::CUDA_LIBC.into()
                } else {
                    String::new()
                }
            })),
        );

        let env = self
            .compiled
            .get_or_init(|| {
                let mut env = minijinja::Environment::new();
                env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
                env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
                env.set_keep_trailing_newline(true);
                env.add_template_owned(BODY, self.body.clone())
                    .map(|()| env)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| err(format!("rendering failed (a bug in the template): {e}")))?;
        let source = env
            .get_template(BODY)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| err(format!("rendering failed (a bug in the template): {e:#}")))?;
        Ok(Rendered {
            source,
            template_ref: TemplateRef {
                name: self.name.clone(),
                blake3: self.text_hash(),
                params: canonical,
            },
            flags: self.flags.clone(),
            language: self.language,
        })
    }
}

const C_KEYWORDS: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "_Bool",
    "_Complex",
    "_Imaginary",
    "_Alignas",
    "_Alignof",
    "_Atomic",
    "_Generic",
    "_Noreturn",
    "_Static_assert",
    "_Thread_local",
    "asm",
    "bool",
    "true",
    "false",
];

/// True for a C identifier that is not a keyword and not reserved (`__x`, `_X`).
pub fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !C_KEYWORDS.contains(&s)
        && !s.starts_with("__")
        && !(s.starts_with('_') && s.chars().nth(1).is_some_and(|c| c.is_ascii_uppercase()))
}

/// Splits `elemwise` or `c/elemwise` into (`c`, `elemwise`), refusing anything that
/// could be a path.
pub fn split_name(name: &str) -> Result<(&str, &str)> {
    let (dev, base) = name.split_once('/').unwrap_or(("c", name));
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !ok(dev) || !ok(base) {
        return Err(template_error(
            name,
            "a template name is `NAME`, `c/NAME` or `cuda/NAME`, NAME of a-z, 0-9 and _ (see `xcache templates`)",
        ));
    }
    if dev != "c" && dev != "cuda" {
        return Err(template_error(
            name,
            format!("templates for `{dev}` do not exist; the devices are `c` and `cuda`"),
        ));
    }
    Ok((dev, base))
}

/// The directories of the `template_path` setting.
fn search_dirs(config: &Config) -> Vec<PathBuf> {
    config
        .template_path
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Finds and parses a template by name: `template_path` first, then the embedded ones.
pub fn find(name: &str, config: &Config) -> Result<Template> {
    let found = locate(name, config)?;
    Template::parse(&found.name, &found.text, &found.origin)
}

/// A template's text, found but not parsed.
#[derive(Debug, Clone)]
pub struct Located {
    /// Qualified name (`cuda/elemwise`).
    pub name: String,
    /// The whole file.
    pub text: std::borrow::Cow<'static, str>,
    /// `embedded` or the file's path.
    pub origin: String,
}

/// Finds template `name` as [`find`] does, without parsing it.
pub fn locate(name: &str, config: &Config) -> Result<Located> {
    let (dev, base) = split_name(name)?;
    let qualified = format!("{dev}/{base}");
    let rel = format!("{dev}/{base}.{}", extension(dev));
    for dir in search_dirs(config) {
        let p = dir.join(&rel);
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))?;
            return Ok(Located {
                name: qualified,
                text: text.into(),
                origin: p.display().to_string(),
            });
        }
    }
    match EMBEDDED.iter().find(|(r, _)| *r == rel) {
        Some((_, text)) => Ok(Located {
            name: qualified,
            text: std::borrow::Cow::Borrowed(text),
            origin: "embedded".into(),
        }),
        None => Err(template_error(
            name,
            format!(
                "no such template; available: {}",
                all(config)?
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Every template visible with this config, by name; a `template_path` file overrides
/// the embedded template of the same name.
pub fn all(config: &Config) -> Result<Vec<Template>> {
    let mut by_name: BTreeMap<String, Template> = BTreeMap::new();
    for (rel, text) in EMBEDDED {
        let name = rel.rsplit_once('.').map_or(*rel, |(n, _)| n).to_string();
        by_name.insert(name.clone(), Template::parse(&name, text, "embedded")?);
    }
    for dir in search_dirs(config).iter().rev() {
        for dev in ["c", "cuda"] {
            let Ok(rd) = std::fs::read_dir(dir.join(dev)) else {
                continue;
            };
            let suffix = format!(".{}", extension(dev));
            for e in rd.flatten() {
                let p = e.path();
                let Some(stem) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(suffix.as_str()))
                else {
                    continue;
                };
                let name = format!("{dev}/{stem}");
                if split_name(&name).is_err() {
                    continue;
                }
                let text = std::fs::read_to_string(&p).map_err(|e| Error::io("reading", &p, e))?;
                by_name.insert(
                    name.clone(),
                    Template::parse(&name, &text, &p.display().to_string())?,
                );
            }
        }
    }
    Ok(by_name.into_values().collect())
}

/// Memos of rendered template requests (`toolchains/render-<digest>.json` in a
/// compiledir): a fresh process that asks for a template request rendered before reads
/// the rendered source back instead of parsing the template's header, compiling its
/// body and rendering it (most of a warm handle's time before). The digest covers the
/// template's whole text, the parameters as given and the renderer's own code
/// (`XCACHE_RENDERER_ID`, from the build), so an edited template, other parameters or
/// another xcache build miss; a memo is checked (its template's and its source's blake3)
/// before it is used, and one that fails is rendered again and rewritten.
pub mod memo {
    use serde::{Deserialize, Serialize};

    use super::Rendered;
    use crate::compile::Language;
    use crate::store::key::{Key, TemplateRef};

    /// The memo's format; another one is not read.
    pub const FORMAT: u32 = 1;

    #[derive(Serialize, Deserialize)]
    struct Memo {
        format: u32,
        name: String,
        template_blake3: String,
        params: Vec<(String, String)>,
        language: String,
        flags: Vec<String>,
        source_blake3: String,
        source: String,
    }

    /// The digest of a request for template `name` (as asked) with `text` and `params`
    /// (as given, in order).
    pub fn digest(name: &str, text: &str, params: &[(String, String)]) -> Key {
        let mut h = blake3::Hasher::new();
        let mut put = |s: &[u8]| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s);
        };
        put(b"xcache-rendered");
        put(&FORMAT.to_le_bytes());
        put(env!("XCACHE_RENDERER_ID").as_bytes());
        put(name.as_bytes());
        put(text.as_bytes());
        for (k, v) in params {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        Key::from_bytes(*h.finalize().as_bytes())
    }

    /// The memo's bytes.
    pub fn encode(r: &Rendered) -> Vec<u8> {
        serde_json::to_vec(&Memo {
            format: FORMAT,
            name: r.template_ref.name.clone(),
            template_blake3: r.template_ref.blake3.clone(),
            params: r.template_ref.params.clone(),
            language: r.language.name().to_string(),
            flags: r.flags.clone(),
            source_blake3: blake3::hash(r.source.as_bytes()).to_hex().to_string(),
            source: r.source.clone(),
        })
        .expect("serialises")
    }

    /// What a memo holds, if it is whole and made from `text`.
    pub fn decode(bytes: &[u8], text: &str) -> Option<Rendered> {
        let m: Memo = serde_json::from_slice(bytes).ok()?;
        let template_blake3 = blake3::hash(text.as_bytes()).to_hex().to_string();
        if m.format != FORMAT
            || m.template_blake3 != template_blake3
            || m.source_blake3 != blake3::hash(m.source.as_bytes()).to_hex().as_str()
        {
            return None;
        }
        Some(Rendered {
            source: m.source,
            template_ref: TemplateRef {
                name: m.name,
                blake3: m.template_blake3,
                params: m.params,
            },
            flags: m.flags,
            language: Language::from_name(&m.language)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn elemwise() -> Template {
        find("elemwise", &Config::defaults()).unwrap()
    }

    #[test]
    fn every_shipped_template_is_embedded_and_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk: Vec<String> = ["c", "cuda"]
            .iter()
            .flat_map(|dev| {
                std::fs::read_dir(root.join(dev))
                    .unwrap()
                    .map(move |e| format!("{dev}/{}", e.unwrap().file_name().to_str().unwrap()))
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED.iter().map(|(r, _)| r.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for t in all(&Config::defaults()).unwrap() {
            assert!(!t.entry.is_empty(), "{}", t.name);
            assert!(!t.description.is_empty());
        }
    }

    #[test]
    fn renders_a_fused_expression() {
        let r = elemwise()
            .render(&p(&[
                ("dtype", "float32"),
                ("arity", "3"),
                ("expr", "a*exp(b)+c"),
            ]))
            .unwrap();
        assert!(r.source.contains("((a * expf(b)) + c)"), "{}", r.source);
        assert!(r.source.contains("int xc_elemwise("));
        assert_eq!(
            r.template_ref.params,
            p(&[
                ("arity", "3"),
                ("dtype", "float32"),
                ("expr", "a * exp(b) + c")
            ])
        );
        // Spelling does not matter; the value does.
        let r2 = elemwise()
            .render(&p(&[
                ("expr", " a * exp( b ) + c"),
                ("dtype", "float32"),
                ("arity", "3"),
            ]))
            .unwrap();
        assert_eq!(r.source, r2.source);
        assert_eq!(r.template_ref, r2.template_ref);
    }

    #[test]
    fn bad_parameters_name_template_parameter_value_and_what_is_accepted() {
        let t = elemwise();
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[("dtype", "float16"), ("arity", "1"), ("expr", "a")],
                &[
                    "c/elemwise",
                    "`dtype`",
                    "\"float16\"",
                    "one of float32, float64, int32, int64",
                ],
            ),
            (
                &[("dtype", "float32"), ("arity", "9"), ("expr", "a")],
                &["`arity`", "\"9\"", "out of range", "from 1 to 8"],
            ),
            (
                &[("dtype", "float32"), ("arity", "two"), ("expr", "a")],
                &["`arity`", "integer"],
            ),
            (
                &[("dtype", "float32"), ("arity", "1"), ("expr", "a+b")],
                &["`expr`", "unknown name `b`", "the inputs are a"],
            ),
            (
                &[("dtype", "int32"), ("arity", "1"), ("expr", "exp(a)")],
                &["`expr`", "float32 and float64 only"],
            ),
            (
                &[
                    ("dtype", "float32"),
                    ("arity", "1"),
                    ("expr", "a); system(\"sh\""),
                ],
                &["`expr`", "invalid"],
            ),
            (
                &[("dtype", "float32"), ("expr", "a")],
                &["`arity` is missing", "from 1 to 8"],
            ),
            (
                &[
                    ("dtype", "float32"),
                    ("arity", "1"),
                    ("expr", "a"),
                    ("dtyp", "x"),
                ],
                &["no parameter `dtyp`", "arity, dtype, expr"],
            ),
            (
                &[
                    ("dtype", "float32"),
                    ("dtype", "float64"),
                    ("arity", "1"),
                    ("expr", "a"),
                ],
                &["given twice"],
            ),
        ];
        for (given, wants) in cases {
            let e = t.render(&p(given)).unwrap_err().to_string();
            for w in *wants {
                assert!(e.contains(w), "{given:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn names_are_never_paths() {
        for bad in [
            "../etc/passwd",
            "c/../../x",
            "/abs",
            "C/elemwise",
            "cuda/x/y",
            "",
            "a b",
            "c/",
        ] {
            assert!(split_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(split_name("elemwise").unwrap(), ("c", "elemwise"));
        assert_eq!(split_name("c/gemm").unwrap(), ("c", "gemm"));
        assert_eq!(split_name("cuda/gemm").unwrap(), ("cuda", "gemm"));
    }

    #[test]
    fn identifiers() {
        for ok in ["x", "foo_bar", "_x", "x1"] {
            assert!(is_c_identifier(ok), "{ok}");
        }
        for bad in ["1x", "int", "__x", "_X", "a-b", "", "a;b", &"x".repeat(64)] {
            assert!(!is_c_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn template_path_overrides_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c")).unwrap();
        let mine = "/* xcache-template\ndescription = \"mine, with */ inside\"\nentry = [\"int f(void)\"]\n\n[params.k]\ntype = \"int\"\nmin = 0\nmax = 9\ndefault = 3\n\n[params.scale]\ntype = \"number\"\ndefault = \"-2.5\"\n*/\nint f(void) { return {{ k }} * {{ scale }}; }\n";
        std::fs::write(dir.path().join("c/elemwise.c"), mine).unwrap();
        std::fs::write(dir.path().join("c/konst.c"), mine).unwrap();
        let mut config = Config::defaults();
        config
            .set("template_path", dir.path().to_str().unwrap())
            .unwrap();
        let t = find("elemwise", &config).unwrap();
        assert_eq!(t.description, "mine, with */ inside");
        let r = find("konst", &config).unwrap().render(&[]).unwrap();
        assert!(r.source.contains("return 3 * -2.5;"), "{}", r.source);
        let names: Vec<String> = all(&config).unwrap().into_iter().map(|t| t.name).collect();
        assert!(names.contains(&"c/konst".to_string()) && names.contains(&"c/gemm".to_string()));
        let e = find("nosuch", &config).unwrap_err().to_string();
        assert!(
            e.contains("no such template") && e.contains("c/konst"),
            "{e}"
        );
    }

    #[test]
    fn malformed_templates_are_explained() {
        for (text, want) in [
            ("int f;", "must start with"),
            ("/* xcache-template\ndescription = 1", "not closed"),
            ("/* xcache-template\ndescription = \"a */ b\" */", "not closed"),
            ("/* xcache-template\nbogus = 1\n*/", "not valid"),
            (
                "/* xcache-template\ndescription=\"d\"\nentry=[]\n[params.x]\ntype=\"float\"\n*/",
                "type `float`",
            ),
            (
                "/* xcache-template\ndescription=\"d\"\nentry=[]\n[params.e]\ntype=\"expr\"\ninputs=[\"a\"]\ndtype=\"nope\"\n*/",
                "dtype parameter `nope`",
            ),
        ] {
            let e = Template::parse("c/t", text, "test").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let t = Template::parse(
            "c/t",
            "/* xcache-template\ndescription=\"d\"\nentry=[]\n*/\n{{ nope }}",
            "test",
        )
        .unwrap();
        let e = t.render(&[]).unwrap_err().to_string();
        assert!(e.contains("rendering failed"), "{e}");
    }
}
