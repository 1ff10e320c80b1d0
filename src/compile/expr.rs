//! Element-wise expressions: parsed by a small grammar, checked, and re-emitted as C
//! from the parse tree. Nothing a user writes reaches the compiler as text: names are
//! checked against the declared inputs, functions against a whitelist, numbers are
//! re-printed from their parsed value.
//!
//! Grammar (comparisons do not chain):
//!
//! ```text
//! expr    := sum (cmp sum)?             cmp := < <= > >= == !=
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := ("-" | "+") unary | primary
//! primary := number | name | name "(" expr ("," expr)* ")" | "(" expr ")"
//! number  := digits ["." digits] [("e" | "E") ["+" | "-"] digits]  |  "." digits [...]
//! ```
//!
//! Functions: `exp log sqrt tanh sin cos abs min max pow where select floor ceil round
//! log1p expm1 sigmoid erf` (`select` is `where`). A comparison is 1 when true and 0 when
//! false; `where(c, a, b)` is `a` where `c` is non-zero, else `b`. `min` and `max` return
//! NaN when either side is NaN. The names follow numpy and scipy, and so do the
//! semantics: `round` rounds half to even (`np.round`, C's `rint`, not C's `round`),
//! `sigmoid` is `scipy.special.expit`, computed so that it never overflows.
//!
//! Integer dtypes wrap on overflow (two's complement, never undefined behaviour),
//! divide by zero to 0, and have no transcendental functions; `floor`, `ceil` and
//! `round` of an integer are the integer itself (numpy keeps integer dtypes through
//! them too: `np.round` always, `np.floor` and `np.ceil` in recent versions).

use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting accepted (parentheses, calls, unary operators).
pub const MAX_DEPTH: usize = 64;
/// Most operators and operands in one expression. It bounds the parse tree's depth (a
/// chain `a+b+c+…` is a tree as deep as it is long), which the emitter walks
/// recursively: a hostile expression must not overflow the stack.
pub const MAX_NODES: usize = 512;

/// Element type an expression is emitted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `float`
    F32,
    /// `double`
    F64,
    /// `int32_t`
    I32,
    /// `int64_t`
    I64,
}

impl Dtype {
    /// From the template parameter spelling (`float32`, ...).
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "float32" => Dtype::F32,
            "float64" => Dtype::F64,
            "int32" => Dtype::I32,
            "int64" => Dtype::I64,
            _ => return None,
        })
    }

    /// The C type.
    pub fn ctype(self) -> &'static str {
        match self {
            Dtype::F32 => "float",
            Dtype::F64 => "double",
            Dtype::I32 => "int32_t",
            Dtype::I64 => "int64_t",
        }
    }

    /// The template parameter spelling, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// Whitelisted functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// e^x
    Exp,
    /// natural log
    Log,
    /// square root
    Sqrt,
    /// hyperbolic tangent
    Tanh,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// absolute value
    Abs,
    /// smaller of two
    Min,
    /// larger of two
    Max,
    /// x^y
    Pow,
    /// where(c, a, b)
    Where,
    /// largest integer not above x
    Floor,
    /// smallest integer not below x
    Ceil,
    /// nearest integer, half-way cases to even (numpy's `round`, C's `rint`)
    Round,
    /// ln(1 + x), accurate near 0
    Log1p,
    /// e^x - 1, accurate near 0
    Expm1,
    /// 1 / (1 + e^-x) (scipy's `expit`)
    Sigmoid,
    /// the error function
    Erf,
}

const FUNCS: &[(&str, Func, usize)] = &[
    ("exp", Func::Exp, 1),
    ("log", Func::Log, 1),
    ("sqrt", Func::Sqrt, 1),
    ("tanh", Func::Tanh, 1),
    ("sin", Func::Sin, 1),
    ("cos", Func::Cos, 1),
    ("abs", Func::Abs, 1),
    ("min", Func::Min, 2),
    ("max", Func::Max, 2),
    ("pow", Func::Pow, 2),
    ("where", Func::Where, 3),
    ("select", Func::Where, 3),
    ("floor", Func::Floor, 1),
    ("ceil", Func::Ceil, 1),
    ("round", Func::Round, 1),
    ("log1p", Func::Log1p, 1),
    ("expm1", Func::Expm1, 1),
    ("sigmoid", Func::Sigmoid, 1),
    ("erf", Func::Erf, 1),
];

impl Func {
    fn name(self) -> &'static str {
        FUNCS
            .iter()
            .find(|f| f.1 == self)
            .map(|f| f.0)
            .unwrap_or("?")
    }
    /// Refused for integer dtypes: the result is not an integer.
    fn transcendental(self) -> bool {
        matches!(
            self,
            Func::Exp
                | Func::Log
                | Func::Sqrt
                | Func::Tanh
                | Func::Sin
                | Func::Cos
                | Func::Pow
                | Func::Log1p
                | Func::Expm1
                | Func::Sigmoid
                | Func::Erf
        )
    }
    /// The identity on integer dtypes: an integer is already integral.
    fn rounds_to_integer(self) -> bool {
        matches!(self, Func::Floor | Func::Ceil | Func::Round)
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A numeric literal, by value; `int` is its exact value when written without a
    /// fraction or exponent (integers beyond 2^53 must not go through f64).
    Num {
        /// The value as a double.
        value: f64,
        /// The exact integer, for integer literals.
        int: Option<i128>,
    },
    /// An input, by its index in the declared inputs.
    Input(usize),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// A function call.
    Call(Func, Vec<Expr>),
}

/// Why an expression was refused: what and where (byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset in the expression text.
    pub at: usize,
    /// What is wrong, and what is accepted instead.
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.at, self.message)
    }
}

impl std::error::Error for ExprError {}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
    nodes: usize,
    inputs: &'a [&'a str],
}

fn err<T>(at: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        at,
        message: message.into(),
    })
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok.as_bytes()) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn node(&mut self) -> Result<(), ExprError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return err(
                self.pos,
                format!("more than {MAX_NODES} operators and operands: split the computation"),
            );
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(
                self.pos,
                format!("nested more than {MAX_DEPTH} levels deep"),
            );
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let lhs = self.sum()?;
        let ops = [
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ];
        for (tok, op) in ops {
            if self.eat(tok) {
                let rhs = self.sum()?;
                if let Some(c) = self.peek() {
                    if matches!(c, b'<' | b'>' | b'=' | b'!') {
                        return err(
                            self.pos,
                            "comparisons do not chain: write (a < b) * (b < c)",
                        );
                    }
                }
                return Ok(Expr::Bin(op, Box::new(lhs), Box::new(rhs)));
            }
        }
        Ok(lhs)
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.product()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else {
                return Ok(e);
            };
            self.node()?;
            e = Expr::Bin(op, Box::new(e), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.unary()?;
        loop {
            let op = if self.eat("*") {
                if self.peek() == Some(b'*') {
                    return err(self.pos, "`**` is not an operator: write pow(x, y)");
                }
                BinOp::Mul
            } else if self.eat("/") {
                BinOp::Div
            } else {
                return Ok(e);
            };
            self.node()?;
            e = Expr::Bin(op, Box::new(e), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.enter()?;
        self.node()?;
        let e = if self.eat("-") {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat("+") {
            self.unary()?
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let start = {
            self.skip_ws();
            self.pos
        };
        match self.peek() {
            None => err(start, "expression ends where a value was expected"),
            Some(b'(') => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.eat(")") {
                    return err(self.pos, "expected `)`");
                }
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let end = self.s[start..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(self.s.len(), |n| start + n);
                let name = std::str::from_utf8(&self.s[start..end]).expect("ascii");
                self.pos = end;
                if self.peek() == Some(b'(') {
                    self.pos += 1;
                    self.call(name, start)
                } else if let Some(i) = self.inputs.iter().position(|n| *n == name) {
                    Ok(Expr::Input(i))
                } else {
                    let hint = if FUNCS.iter().any(|f| f.0 == name) {
                        format!("`{name}` is a function: call it as {name}(...)")
                    } else {
                        format!(
                            "unknown name `{name}`: the inputs are {}",
                            self.inputs.join(", ")
                        )
                    };
                    err(start, hint)
                }
            }
            Some(c) => err(
                start,
                format!(
                    "unexpected character {:?}: expressions use inputs, numbers, + - * /, comparisons, parentheses and the functions {}",
                    c as char,
                    function_names()
                ),
            ),
        }
    }

    fn call(&mut self, name: &str, at: usize) -> Result<Expr, ExprError> {
        let Some(&(_, func, arity)) = FUNCS.iter().find(|f| f.0 == name) else {
            return err(
                at,
                format!(
                    "unknown function `{name}`: the functions are {}",
                    function_names()
                ),
            );
        };
        self.enter()?;
        let mut args = vec![self.expr()?];
        while self.eat(",") {
            args.push(self.expr()?);
        }
        if !self.eat(")") {
            return err(
                self.pos,
                format!("expected `,` or `)` in the call of {name}"),
            );
        }
        self.depth -= 1;
        if args.len() != arity {
            return err(
                at,
                format!("{name} takes {arity} argument(s), got {}", args.len()),
            );
        }
        Ok(Expr::Call(func, args))
    }

    fn number(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let b = p.pos;
            while p.pos < p.s.len() && p.s[p.pos].is_ascii_digit() {
                p.pos += 1;
            }
            p.pos - b
        };
        let mut n = digits(self);
        if self.pos < self.s.len() && self.s[self.pos] == b'.' {
            self.pos += 1;
            n += digits(self);
        }
        if n == 0 {
            return err(start, "a number needs digits");
        }
        if self.pos < self.s.len() && matches!(self.s[self.pos], b'e' | b'E') {
            self.pos += 1;
            if self.pos < self.s.len() && matches!(self.s[self.pos], b'+' | b'-') {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return err(self.pos, "an exponent needs digits");
            }
        }
        if self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
        {
            return err(
                self.pos,
                "a number runs into a name (suffixes such as `f` are not needed)",
            );
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).expect("ascii");
        let value: f64 = text.parse().map_err(|_| ExprError {
            at: start,
            message: format!("bad number {text}"),
        })?;
        if !value.is_finite() {
            return err(start, format!("number {text} is out of range"));
        }
        // Exact only: an integer literal too long for i128 is no integer at all here
        // (it still has its float value).
        let int = if text.bytes().all(|c| c.is_ascii_digit()) {
            text.parse::<i128>().ok()
        } else {
            None
        };
        Ok(Expr::Num { value, int })
    }
}

fn function_names() -> String {
    FUNCS.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
}

/// Parses `text` over the named inputs.
pub fn parse(text: &str, inputs: &[&str]) -> Result<Expr, ExprError> {
    if text.len() > MAX_LEN {
        return err(MAX_LEN, format!("longer than {MAX_LEN} bytes"));
    }
    if let Some(at) = text.find(|c: char| !(c.is_ascii_graphic() || c == ' ' || c == '\t')) {
        let c = text[at..].chars().next().unwrap_or(' ');
        return err(
            at,
            format!("character {c:?} is not allowed in an expression"),
        );
    }
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
        nodes: 0,
        inputs,
    };
    let e = p.expr()?;
    if p.peek().is_some() {
        let at = p.pos;
        let rest: String = text[at..].chars().take(20).collect();
        return err(
            at,
            format!("unexpected `{rest}` after a complete expression"),
        );
    }
    Ok(e)
}

impl Expr {
    /// Checks that the expression can be emitted for `dtype`.
    pub fn check(&self, dtype: Dtype) -> Result<(), String> {
        match self {
            Expr::Num { value, int } => {
                if !dtype.is_float() {
                    let Some(i) = int else {
                        return Err(if value.fract() == 0.0 && value.abs() >= 9.2e18 {
                            format!("{value} does not fit the dtype {}", dtype.name())
                        } else {
                            format!(
                                "{value} is not an integer literal, and the dtype is {}",
                                dtype.name()
                            )
                        });
                    };
                    let max = if dtype == Dtype::I32 {
                        i32::MAX as i128
                    } else {
                        i64::MAX as i128
                    };
                    if *i > max {
                        return Err(format!("{i} does not fit the dtype {}", dtype.name()));
                    }
                } else if dtype == Dtype::F32 && (*value as f32).is_infinite() {
                    return Err(format!("{value} does not fit float32"));
                }
                Ok(())
            }
            Expr::Input(_) => Ok(()),
            Expr::Neg(e) => e.check(dtype),
            Expr::Bin(_, a, b) => {
                a.check(dtype)?;
                b.check(dtype)
            }
            Expr::Call(f, args) => {
                if f.transcendental() && !dtype.is_float() {
                    return Err(format!(
                        "{}() is defined for float32 and float64 only, not {}: use a float dtype",
                        f.name(),
                        dtype.name()
                    ));
                }
                args.iter().try_for_each(|a| a.check(dtype))
            }
        }
    }

    /// The canonical spelling in expression syntax, with only the parentheses that
    /// precedence needs: equal expressions print equally, however they were written.
    pub fn display(&self, names: &[&str]) -> String {
        let mut out = String::new();
        self.display_into(names, 0, &mut out);
        out
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Bin(op, ..) => match op {
                BinOp::Add | BinOp::Sub => 2,
                BinOp::Mul | BinOp::Div => 3,
                _ => 1,
            },
            Expr::Neg(_) => 4,
            _ => 5,
        }
    }

    fn display_into(&self, names: &[&str], min_prec: u8, out: &mut String) {
        use std::fmt::Write;
        let prec = self.precedence();
        let paren = prec < min_prec;
        if paren {
            out.push('(');
        }
        match self {
            Expr::Num { value, int } => match int {
                Some(i) => {
                    let _ = write!(out, "{i}");
                }
                None => {
                    let _ = write!(out, "{value:?}");
                }
            },
            Expr::Input(i) => out.push_str(names[*i]),
            Expr::Neg(e) => {
                out.push('-');
                e.display_into(names, 4, out);
            }
            Expr::Bin(op, a, b) => {
                let sym = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Lt => "<",
                    BinOp::Le => "<=",
                    BinOp::Gt => ">",
                    BinOp::Ge => ">=",
                    BinOp::Eq => "==",
                    BinOp::Ne => "!=",
                };
                // Left-associative: the right operand needs a strictly higher level;
                // comparisons do not chain, so their left operand does too.
                let left = if prec == 1 { prec + 1 } else { prec };
                a.display_into(names, left, out);
                let _ = write!(out, " {sym} ");
                b.display_into(names, prec + 1, out);
            }
            Expr::Call(f, args) => {
                out.push_str(f.name());
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.display_into(names, 0, out);
                }
                out.push(')');
            }
        }
        if paren {
            out.push(')');
        }
    }

    /// Emits C for `dtype`, fully parenthesised. Inputs are emitted as `names[i]`; the
    /// helpers it calls are in [`prelude`].
    pub fn emit(&self, dtype: Dtype, names: &[&str]) -> String {
        let mut out = String::new();
        self.emit_into(dtype, names, &mut out);
        out
    }

    fn emit_into(&self, dt: Dtype, names: &[&str], out: &mut String) {
        use std::fmt::Write;
        let float = dt.is_float();
        let suffix = if dt == Dtype::F32 { "f" } else { "" };
        match self {
            Expr::Num { value, int } => match dt {
                Dtype::F32 => {
                    let _ = write!(out, "{:?}f", *value as f32);
                }
                Dtype::F64 => {
                    let _ = write!(out, "{value:?}");
                }
                // `check` guarantees an integer that fits.
                Dtype::I32 => {
                    let _ = write!(out, "((int32_t){})", int.unwrap_or(0));
                }
                Dtype::I64 => {
                    let _ = write!(out, "INT64_C({})", int.unwrap_or(0));
                }
            },
            Expr::Input(i) => out.push_str(names[*i]),
            Expr::Neg(e) => {
                out.push_str(if float { "(-" } else { "xc_neg(" });
                e.emit_into(dt, names, out);
                out.push(')');
            }
            Expr::Bin(op, a, b) => {
                let (f, sym) = match op {
                    BinOp::Add => ("xc_add", "+"),
                    BinOp::Sub => ("xc_sub", "-"),
                    BinOp::Mul => ("xc_mul", "*"),
                    BinOp::Div => ("xc_div", "/"),
                    BinOp::Lt => ("", "<"),
                    BinOp::Le => ("", "<="),
                    BinOp::Gt => ("", ">"),
                    BinOp::Ge => ("", ">="),
                    BinOp::Eq => ("", "=="),
                    BinOp::Ne => ("", "!="),
                };
                if f.is_empty() {
                    let _ = write!(out, "(({})(", dt.ctype());
                    a.emit_into(dt, names, out);
                    let _ = write!(out, " {sym} ");
                    b.emit_into(dt, names, out);
                    out.push_str("))");
                } else if float {
                    out.push('(');
                    a.emit_into(dt, names, out);
                    let _ = write!(out, " {sym} ");
                    b.emit_into(dt, names, out);
                    out.push(')');
                } else {
                    let _ = write!(out, "{f}(");
                    a.emit_into(dt, names, out);
                    out.push_str(", ");
                    b.emit_into(dt, names, out);
                    out.push(')');
                }
            }
            // The parser checked the arity: one argument.
            Expr::Call(func, args) if func.rounds_to_integer() && !float => {
                args[0].emit_into(dt, names, out);
            }
            Expr::Call(func, args) => {
                let name = match func {
                    Func::Exp => format!("exp{suffix}"),
                    Func::Log => format!("log{suffix}"),
                    Func::Sqrt => format!("sqrt{suffix}"),
                    Func::Tanh => format!("tanh{suffix}"),
                    Func::Sin => format!("sin{suffix}"),
                    Func::Cos => format!("cos{suffix}"),
                    Func::Pow => format!("pow{suffix}"),
                    Func::Floor => format!("floor{suffix}"),
                    Func::Ceil => format!("ceil{suffix}"),
                    // rint rounds in the current rounding mode, which is to nearest,
                    // half-way cases to even, unless a program changed it (fesetround).
                    Func::Round => format!("rint{suffix}"),
                    Func::Log1p => format!("log1p{suffix}"),
                    Func::Expm1 => format!("expm1{suffix}"),
                    Func::Erf => format!("erf{suffix}"),
                    Func::Sigmoid => "xc_sigmoid".into(),
                    Func::Abs => "xc_abs".into(),
                    Func::Min => "xc_min".into(),
                    Func::Max => "xc_max".into(),
                    Func::Where => "xc_where".into(),
                };
                out.push_str(&name);
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.emit_into(dt, names, out);
                }
                out.push(')');
            }
        }
    }
}

/// What a CUDA template takes from the C library's headers. nvcc has them; NVRTC has
/// none (its math functions are built in), so under NVRTC (`__CUDACC_RTC__`) the types
/// and constants are spelled out as glibc's headers define them on 64-bit Linux.
pub const CUDA_LIBC: &str = "#ifdef __CUDACC_RTC__
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef unsigned long uintptr_t;
#define INT32_MIN (-2147483647 - 1)
#define INT32_MAX 2147483647
#define INT64_MIN (-9223372036854775807L - 1)
#define INT64_MAX 9223372036854775807L
#define UINT32_MAX 4294967295U
#define UINT64_MAX 18446744073709551615UL
#define INT32_C(c) c
#define INT64_C(c) c##L
#define UINT32_C(c) c##U
#define UINT64_C(c) c##UL
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fc00000)
#else
#include <stdint.h>
#include <math.h>
#endif
";

/// C helpers the emitted expressions call, for one dtype: `static inline` (for CUDA,
/// `__device__` and forced inline), so they vanish into the loop and vectorise. For C
/// it also declares the SIMD variants of libm's functions that glibc's libmvec provides
/// (x86_64), so loops calling `expf` vectorise without `-ffast-math`.
pub fn prelude(dtype: Dtype, cuda: bool) -> String {
    let t = dtype.ctype();
    let q = if cuda {
        "__device__ __forceinline__"
    } else {
        "static inline"
    };
    let mut s = if cuda {
        CUDA_LIBC.to_string()
    } else {
        String::from("#include <stdint.h>\n#include <math.h>\n")
    };
    if dtype.is_float() {
        let suffix = if dtype == Dtype::F32 { "f" } else { "" };
        // On the GPU, expf & co. are device functions: nothing to declare.
        if !cuda {
            let fns = [
                "exp", "log", "sin", "cos", "pow", "tanh", "log1p", "expm1", "erf",
            ];
            // libmvec has had exp, log, sin, cos and pow since glibc 2.22, and tanh,
            // log1p, expm1 and erf since 2.35; the compiledir's name pins the glibc
            // version, so this cannot drift. The pragma needs -fopenmp-simd, which the
            // templates pass. floor, ceil and rint need no library: with SSE4.1 they
            // are one instruction.
            for f in fns {
                let since = if matches!(f, "exp" | "log" | "sin" | "cos" | "pow") {
                    22
                } else {
                    35
                };
                let args = if f == "pow" {
                    format!("{t}, {t}")
                } else {
                    t.to_string()
                };
                s.push_str(&format!(
                    "#if defined(__x86_64__) && defined(__GLIBC__) && __GLIBC_PREREQ(2, {since})\n\
                     #pragma omp declare simd notinbranch\n{t} {f}{suffix}({args});\n#endif\n"
                ));
            }
        }
        // min and max propagate NaN whichever side it is on, as numpy does; abs clears
        // the sign of -0.0 too. sigmoid takes e = exp(-|x|), which never overflows:
        // 1/(1+e) for x >= 0, e/(1+e) below, one division either way so that the loop
        // still vectorises; the result is 0 or 1 only where it rounds there (x = -720
        // gives exp(-720), a subnormal), and NaN stays NaN.
        s.push_str(&format!(
            "{q} {t} xc_abs({t} x) {{ return fabs{suffix}(x); }}\n\
             {q} {t} xc_min({t} x, {t} y) {{ return (x < y || x != x) ? x : y; }}\n\
             {q} {t} xc_max({t} x, {t} y) {{ return (x > y || x != x) ? x : y; }}\n\
             {q} {t} xc_where({t} c, {t} x, {t} y) {{ return c != 0 ? x : y; }}\n\
             {q} {t} xc_sigmoid({t} x) {{ {t} e = exp{suffix}(-fabs{suffix}(x)); return (x >= 0 ? ({t})1 : e) / (({t})1 + e); }}\n"
        ));
    } else {
        let u = if dtype == Dtype::I32 {
            "uint32_t"
        } else {
            "uint64_t"
        };
        let min = if dtype == Dtype::I32 {
            "INT32_MIN"
        } else {
            "INT64_MIN"
        };
        s.push_str(&format!(
            "{q} {t} xc_add({t} x, {t} y) {{ return ({t})(({u})x + ({u})y); }}\n\
             {q} {t} xc_sub({t} x, {t} y) {{ return ({t})(({u})x - ({u})y); }}\n\
             {q} {t} xc_mul({t} x, {t} y) {{ return ({t})(({u})x * ({u})y); }}\n\
             {q} {t} xc_neg({t} x) {{ return ({t})(0 - ({u})x); }}\n\
             {q} {t} xc_div({t} x, {t} y) {{ return y == 0 ? 0 : (y == -1 ? xc_neg(x) : x / y); }}\n\
             {q} {t} xc_abs({t} x) {{ return x == {min} ? x : (x < 0 ? -x : x); }}\n\
             {q} {t} xc_min({t} x, {t} y) {{ return x < y ? x : y; }}\n\
             {q} {t} xc_max({t} x, {t} y) {{ return x > y ? x : y; }}\n\
             {q} {t} xc_where({t} c, {t} x, {t} y) {{ return c != 0 ? x : y; }}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: &[&str] = &["a", "b", "c"];

    fn emit(text: &str, dt: Dtype) -> String {
        let e = parse(text, IN).unwrap();
        e.check(dt).unwrap();
        e.emit(dt, IN)
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(emit("a*exp(b)+c", Dtype::F32), "((a * expf(b)) + c)");
        assert_eq!(emit("a-b-c", Dtype::F64), "((a - b) - c)");
        assert_eq!(emit("a/b*c", Dtype::F64), "((a / b) * c)");
        assert_eq!(emit("-a*b", Dtype::F64), "((-a) * b)");
        assert_eq!(emit("--a", Dtype::F64), "(-(-a))");
        assert_eq!(emit("+a", Dtype::F64), "a");
        assert_eq!(emit("a + b < c", Dtype::F32), "((float)((a + b) < c))");
        assert_eq!(emit(" ( a ) ", Dtype::F32), "a");
    }

    #[test]
    fn numbers_are_reprinted_from_their_value() {
        assert_eq!(emit("1.5*a", Dtype::F32), "(1.5f * a)");
        assert_eq!(emit("2*a", Dtype::F32), "(2.0f * a)");
        assert_eq!(emit("1e-3+a", Dtype::F64), "(0.001 + a)");
        assert_eq!(emit(".5", Dtype::F64), "0.5");
        assert_eq!(emit("1E10", Dtype::F64), "10000000000.0");
        assert_eq!(emit("3*a", Dtype::I32), "xc_mul(((int32_t)3), a)");
        assert_eq!(
            emit("9007199254740993 + a", Dtype::I64),
            "xc_add(INT64_C(9007199254740993), a)",
            "integers beyond 2^53 are exact"
        );
        assert_eq!(
            emit("-9223372036854775807", Dtype::I64),
            "xc_neg(INT64_C(9223372036854775807))"
        );
        assert!(parse("9223372036854775808", IN)
            .unwrap()
            .check(Dtype::I64)
            .is_err());
    }

    #[test]
    fn functions() {
        assert_eq!(
            emit("where(a > 0, a, 0)", Dtype::F32),
            "xc_where(((float)(a > 0.0f)), a, 0.0f)"
        );
        assert_eq!(emit("select(a, b, c)", Dtype::F64), "xc_where(a, b, c)");
        assert_eq!(emit("pow(a, 2)", Dtype::F64), "pow(a, 2.0)");
        assert_eq!(
            emit("max(min(a, b), abs(c))", Dtype::I64),
            "xc_max(xc_min(a, b), xc_abs(c))"
        );
        assert_eq!(
            emit("tanh(sqrt(log(cos(sin(a)))))", Dtype::F32),
            "tanhf(sqrtf(logf(cosf(sinf(a)))))"
        );
    }

    #[test]
    fn injection_attempts_are_refused() {
        for bad in [
            "a); system(\"rm -rf /\"",
            "a\"",
            "a'",
            "a;b",
            "a\nb",
            "a /* c */",
            "a // c",
            "a # b",
            "system(a)",
            "printf(a)",
            "a[0]",
            "*a",
            "&a",
            "a.b",
            "a -> b",
            "a ? b : c",
            "a || b",
            "a = b",
            "a\\\nb",
            "{a}",
            "a,b",
            "é",
            "a\u{0}",
        ] {
            assert!(parse(bad, IN).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let e = parse("a + q", IN).unwrap_err();
        assert_eq!(e.at, 4);
        assert!(
            e.message.contains("unknown name `q`") && e.message.contains("a, b, c"),
            "{e}"
        );
        let e = parse("foo(a)", IN).unwrap_err();
        assert!(
            e.message.contains("unknown function `foo`") && e.message.contains("tanh"),
            "{e}"
        );
        let e = parse("exp(a, b)", IN).unwrap_err();
        assert!(e.message.contains("exp takes 1"), "{e}");
        let e = parse("a < b < c", IN).unwrap_err();
        assert!(e.message.contains("do not chain"), "{e}");
        let e = parse("a ** 2", IN).unwrap_err();
        assert!(e.message.contains("pow"), "{e}");
        assert!(parse("(a", IN).unwrap_err().message.contains("`)`"));
        assert!(parse("a)", IN)
            .unwrap_err()
            .message
            .contains("after a complete"));
        assert!(parse("", IN).is_err());
        assert!(parse("1.5f", IN).unwrap_err().message.contains("suffix"));
        assert!(parse("exp", IN)
            .unwrap_err()
            .message
            .contains("is a function"));
    }

    #[test]
    fn hostile_sizes() {
        assert!(parse("1e999", IN)
            .unwrap_err()
            .message
            .contains("out of range"));
        let huge = "9".repeat(400);
        assert!(parse(&huge, IN)
            .unwrap_err()
            .message
            .contains("out of range"));
        let big = format!("1{}", "0".repeat(60));
        assert!(parse(&big, IN).unwrap().check(Dtype::F64).is_ok());
        assert!(parse(&big, IN).unwrap().check(Dtype::I64).is_err());
        let e = parse("1e39", IN).unwrap();
        assert!(e.check(Dtype::F32).is_err());
        assert!(e.check(Dtype::F64).is_ok());
        let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(&deep, IN).unwrap_err().message.contains("nested"));
        let deep = format!("{}a", "-".repeat(200));
        assert!(parse(&deep, IN).unwrap_err().message.contains("nested"));
        let long = vec!["a"; 3000].join("+");
        assert!(parse(&long, IN).unwrap_err().message.contains("longer"));
        // Long flat sums are fine up to the node limit, and refused cleanly past it.
        let flat = vec!["a"; 250].join("+");
        assert!(parse(&flat, IN).is_ok());
        let flat = vec!["a"; 1000].join("+");
        assert!(parse(&flat, IN)
            .unwrap_err()
            .message
            .contains("more than 512"));
    }

    #[test]
    fn canonical_display_round_trips() {
        for (text, canon) in [
            ("a*exp(b)+c", "a * exp(b) + c"),
            ("(a+b)*c", "(a + b) * c"),
            ("a-(b-c)", "a - (b - c)"),
            ("(a-b)-c", "a - b - c"),
            ("-(a*b)", "-(a * b)"),
            ("((a))", "a"),
            ("a < b+1", "a < b + 1"),
            ("(a<b)*c", "(a < b) * c"),
            ("select(a,b,c)", "where(a, b, c)"),
            ("1.50", "1.5"),
            ("-(-a)", "--a"),
            ("(a<b)<c", "(a < b) < c"),
            ("a<(b<c)", "a < (b < c)"),
            (
                "floor(a)+ceil( b )*round((c))",
                "floor(a) + ceil(b) * round(c)",
            ),
            ("-sigmoid(-(a))", "-sigmoid(-a)"),
            ("log1p(expm1(erf(a)))", "log1p(expm1(erf(a)))"),
        ] {
            let e = parse(text, IN).unwrap();
            assert_eq!(e.display(IN), canon, "{text}");
            assert_eq!(
                parse(canon, IN).unwrap(),
                e,
                "{canon} re-parses to the same tree"
            );
        }
    }

    #[test]
    fn numpy_functions_emit_c99_and_cuda_names() {
        assert_eq!(
            emit("floor(a) + ceil(b) - round(c)", Dtype::F32),
            "((floorf(a) + ceilf(b)) - rintf(c))",
            "round is rint: half-way cases to even, as numpy"
        );
        assert_eq!(
            emit("floor(a) + ceil(b) - round(c)", Dtype::F64),
            "((floor(a) + ceil(b)) - rint(c))"
        );
        assert_eq!(
            emit("log1p(a) * expm1(b) / erf(c)", Dtype::F32),
            "((log1pf(a) * expm1f(b)) / erff(c))"
        );
        assert_eq!(
            emit("log1p(a) * expm1(b) / erf(c)", Dtype::F64),
            "((log1p(a) * expm1(b)) / erf(c))"
        );
        assert_eq!(emit("sigmoid(a*b)", Dtype::F32), "xc_sigmoid((a * b))");
        // The same names are device functions in CUDA; sigmoid is a prelude helper
        // there too, with nothing to declare.
        for dt in [Dtype::F32, Dtype::F64] {
            for cuda in [false, true] {
                let p = prelude(dt, cuda);
                assert!(p.contains(&format!("{} xc_sigmoid(", dt.ctype())), "{p}");
                assert_eq!(p.contains("declare simd"), !cuda, "{p}");
            }
        }
        let p = prelude(Dtype::F32, false);
        for f in ["expf", "log1pf", "expm1f", "erff"] {
            assert!(p.contains(&format!("float {f}(float);")), "{f}: {p}");
        }
        let p = prelude(Dtype::F64, false);
        assert!(p.contains("double erf(double);"), "{p}");
        for (text, arity) in [("floor(a, b)", 2), ("sigmoid(a, b, c)", 3)] {
            let e = parse(text, IN).unwrap_err();
            let name = &text[..text.find('(').unwrap()];
            assert!(
                e.message
                    .contains(&format!("{name} takes 1 argument(s), got {arity}")),
                "{text}: {e}"
            );
        }
        assert!(parse("round()", IN).is_err());
        assert!(parse("erfc(a)", IN)
            .unwrap_err()
            .message
            .contains("sigmoid, erf"));
        assert!(parse("log1p", IN)
            .unwrap_err()
            .message
            .contains("`log1p` is a function"));
    }

    #[test]
    fn integer_rules() {
        assert!(parse("exp(a)", IN).unwrap().check(Dtype::I32).is_err());
        assert!(parse("2.5*a", IN).unwrap().check(Dtype::I64).is_err());
        assert!(parse("3000000000", IN).unwrap().check(Dtype::I32).is_err());
        assert!(parse("3000000000", IN).unwrap().check(Dtype::I64).is_ok());
        assert_eq!(emit("a/b - c", Dtype::I32), "xc_sub(xc_div(a, b), c)");
        assert_eq!(emit("-a", Dtype::I32), "xc_neg(a)");
        // An integer is already integral: floor, ceil and round are the identity, and
        // the canonical spelling keeps them (it is what the key is made of).
        assert_eq!(
            emit("floor(a) + ceil(b*2) - round(-c)", Dtype::I64),
            "xc_sub(xc_add(a, xc_mul(b, INT64_C(2))), xc_neg(c))"
        );
        assert_eq!(emit("round(a)", Dtype::I32), "a");
        assert_eq!(parse("round(a)", IN).unwrap().display(IN), "round(a)");
        // Functions whose result is no integer are refused, naming both.
        for f in ["log1p", "expm1", "sigmoid", "erf"] {
            for dt in [Dtype::I32, Dtype::I64] {
                let e = parse(&format!("round({f}(a))"), IN)
                    .unwrap()
                    .check(dt)
                    .unwrap_err();
                assert_eq!(
                    e,
                    format!(
                        "{f}() is defined for float32 and float64 only, not {}: use a float dtype",
                        dt.name()
                    )
                );
            }
        }
        // Arguments are checked too.
        assert_eq!(
            parse("floor(2.5)", IN).unwrap().check(Dtype::I32),
            Err("2.5 is not an integer literal, and the dtype is int32".into())
        );
    }
}
