//! The shipped C templates, compiled by a real compiler and checked against references
//! computed in f64 (or exact integer arithmetic) on random inputs, at sizes 0, 1, odd
//! and large.

mod common;

use common::{close, within_ulps, Num, RefFloat, Rng, TestCache, FLOAT_CASES, SIZES};
use xcache::{Jit, Request, TemplateRequest};

fn check_float_elemwise<T: Num>(jit: &Jit) {
    let mut rng = Rng(42);
    for &(expr, arity, reference) in FLOAT_CASES {
        let k = jit
            .elemwise::<T>(expr, arity)
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        for n in SIZES {
            let inputs: Vec<Vec<T>> = (0..arity)
                .map(|_| {
                    (0..n)
                        .map(|_| T::from_f64(rng.uniform(-2.0, 2.0)))
                        .collect()
                })
                .collect();
            let refs: Vec<&[T]> = inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![T::from_f64(0.0); n];
            k.call(&refs, &mut out).unwrap();
            for i in 0..n {
                let args: Vec<f64> = inputs.iter().map(|x| x[i].to_f64()).collect();
                let want = reference(&args);
                let got = out[i].to_f64();
                assert!(
                    close(got, want, T::TOL),
                    "{} {expr} n={n} i={i}: got {got}, want {want} (inputs {args:?})",
                    T::DTYPE
                );
            }
        }
    }
}

#[test]
fn elemwise_float32_and_float64_match_f64_references() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    check_float_elemwise::<f32>(&jit);
    check_float_elemwise::<f64>(&jit);
}

/// Largest distance from the numpy/scipy reference allowed on the CPU, in ulps of the
/// dtype. The references are within 1 ulp of the correctly rounded value
/// (`scripts/expr-references.py` checks this with mpmath).
fn cpu_ulp_tolerance(func: &str) -> u64 {
    match func {
        // Exact operations: bit for bit, signed zeros included.
        "floor" | "ceil" | "round" => 0,
        // The vectorised loop calls libmvec's variants, which glibc documents to within
        // 4 ulp (the scalar libm functions, for the remainder, are within 1-2): 4 + 1.
        "log1p" | "expm1" | "erf" => 5,
        // e/(1+e) with e = exp(-|x|): exp's 4 ulp pass through at most once (the
        // relative error of e/(1+e) is that of e times 1/(1+e) <= 1, of 1/(1+e) times
        // e/(1+e) <= 1/2), plus the roundings of 1 + e and of the division: 4 + 1 + 1.
        "sigmoid" => 6,
        _ => panic!("no tolerance for {func}"),
    }
}

/// Each function of the expression grammar that numpy and scipy also have, through a
/// compiled elemwise kernel, at the edge values of `expr_references.rs`: signed zeros,
/// infinities, NaN, subnormals, half-way cases, overflow thresholds. Once as one array
/// (the vectorised loop and its remainder), once element by element.
fn check_functions_at_edge_values<T: RefFloat>(jit: &Jit) {
    for (func, pairs) in T::reference_tables() {
        let k = jit
            .elemwise::<T>(&format!("{func}(a)"), 1)
            .unwrap_or_else(|e| panic!("{func}: {e}"));
        let tol = cpu_ulp_tolerance(func);
        let inputs: Vec<T> = pairs.iter().map(|p| p.0).collect();
        let mut whole = vec![T::from_f64(0.0); inputs.len()];
        k.call(&[&inputs], &mut whole).unwrap();
        for (i, &(x, want)) in pairs.iter().enumerate() {
            let mut one = [T::from_f64(0.0)];
            k.call(&[&[x]], &mut one).unwrap();
            for (how, got) in [("in an array", whole[i]), ("alone", one[0])] {
                assert!(
                    within_ulps(got, want, tol),
                    "{} {func}({x:?}) {how}: got {got:?}, numpy/scipy say {want:?} (tolerance {tol} ulp)",
                    T::DTYPE
                );
            }
        }
    }
}

#[test]
fn elemwise_functions_match_numpy_and_scipy_at_edge_values() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    check_functions_at_edge_values::<f32>(&jit);
    check_functions_at_edge_values::<f64>(&jit);
}

/// scipy's expit is 1/(1+exp(-x)), which flushes to 0 once exp(-x) overflows; the true
/// value is a subnormal down to x = -745 (float64) or -103 (float32), and sigmoid keeps
/// it. The float32 table already holds such cases (its references are computed in
/// float64); the float64 one leaves them out, so they are here.
#[test]
fn sigmoid_keeps_subnormal_results_where_scipy_flushes_to_zero() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let k = jit.elemwise::<f64>("sigmoid(a)", 1).unwrap();
    let x = [-710.0, -720.0, -740.0, -744.0];
    let mut out = [0.0; 4];
    k.call(&[&x], &mut out).unwrap();
    for (x, got) in x.iter().zip(out) {
        // 1 + e^x rounds to 1 here: the value is e^x itself.
        let want = x.exp();
        assert!(want > 0.0 && want < f64::MIN_POSITIVE);
        assert!(
            within_ulps(got, want, cpu_ulp_tolerance("sigmoid")),
            "sigmoid({x}): got {got:e}, want {want:e}"
        );
    }
}

/// numpy keeps integer dtypes through round, and through floor and ceil in recent
/// versions (2.4 checked); so do the integer templates (the identity). Functions whose result is no integer are refused, and the
/// error names the function and the dtype.
#[test]
fn elemwise_integer_rounding_is_the_identity_and_float_functions_are_refused() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let k = jit
        .elemwise::<i64>("floor(a) + ceil(b) - round(a)", 2)
        .unwrap();
    let a = [i64::MIN, -3, 0, 7, i64::MAX];
    let b = [0, -2, 5, i64::MIN, 1];
    let mut out = [0; 5];
    k.call(&[&a, &b], &mut out).unwrap();
    assert_eq!(out, b);
    let k = jit.elemwise::<i32>("round(a)", 1).unwrap();
    let a = [i32::MIN, -1, 0, 1, i32::MAX];
    let mut out = [0; 5];
    k.call(&[&a], &mut out).unwrap();
    assert_eq!(out, a);
    for func in ["log1p", "expm1", "sigmoid", "erf"] {
        let e = jit
            .elemwise::<i32>(&format!("a + {func}(a)"), 1)
            .err()
            .unwrap_or_else(|| panic!("{func} accepted for int32"))
            .to_string();
        assert!(
            e.contains(&format!(
                "{func}() is defined for float32 and float64 only, not int32"
            )),
            "{e}"
        );
    }
}

#[test]
fn elemwise_integers_wrap_and_divide_safely() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let expr = "a*b - c/3 + abs(a) + where(a < b, 1, 2) + min(a, c) - max(b, c) + a/b";
    let k32 = jit.elemwise::<i32>(expr, 3).unwrap();
    let k64 = jit.elemwise::<i64>(expr, 3).unwrap();
    let mut rng = Rng(7);
    // Reference with the documented semantics: wrapping arithmetic, x/0 = 0, x/-1 = -x.
    fn div64(x: i64, y: i64) -> i64 {
        if y == 0 {
            0
        } else if y == -1 {
            x.wrapping_neg()
        } else {
            x / y
        }
    }
    fn div32(x: i32, y: i32) -> i32 {
        if y == 0 {
            0
        } else if y == -1 {
            x.wrapping_neg()
        } else {
            x / y
        }
    }
    for n in SIZES {
        let gen64 = |rng: &mut Rng| -> Vec<i64> {
            (0..n)
                .map(|i| match i % 5 {
                    0 => rng.next() as i64, // overflows on multiply
                    1 => 0,                 // division by zero
                    2 => -1,                // MIN / -1
                    3 => i64::MIN,
                    _ => (rng.next() % 201) as i64 - 100,
                })
                .collect()
        };
        let (a, b, c) = (gen64(&mut rng), gen64(&mut rng), gen64(&mut rng));
        let mut out = vec![0i64; n];
        k64.call(&[&a, &b, &c], &mut out).unwrap();
        for i in 0..n {
            let (x, y, z) = (a[i], b[i], c[i]);
            let want = x
                .wrapping_mul(y)
                .wrapping_sub(div64(z, 3))
                .wrapping_add(if x == i64::MIN { x } else { x.abs() })
                .wrapping_add(if x < y { 1 } else { 2 })
                .wrapping_add(x.min(z))
                .wrapping_sub(y.max(z))
                .wrapping_add(div64(x, y));
            assert_eq!(out[i], want, "int64 n={n} i={i} ({x}, {y}, {z})");
        }
        let (a, b, c): (Vec<i32>, Vec<i32>, Vec<i32>) = (
            a.iter().map(|&v| v as i32).collect(),
            b.iter().map(|&v| v as i32).collect(),
            c.iter().map(|&v| v as i32).collect(),
        );
        let mut out = vec![0i32; n];
        k32.call(&[&a, &b, &c], &mut out).unwrap();
        for i in 0..n {
            let (x, y, z) = (a[i], b[i], c[i]);
            let want = x
                .wrapping_mul(y)
                .wrapping_sub(div32(z, 3))
                .wrapping_add(if x == i32::MIN { x } else { x.abs() })
                .wrapping_add(if x < y { 1 } else { 2 })
                .wrapping_add(x.min(z))
                .wrapping_sub(y.max(z))
                .wrapping_add(div32(x, y));
            assert_eq!(out[i], want, "int32 n={n} i={i} ({x}, {y}, {z})");
        }
    }
}

#[test]
fn elemwise_checks_its_arguments() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let k = jit.elemwise::<f32>("a+b", 2).unwrap();
    let mut out = [0f32; 3];
    let e = k
        .call(&[&[1.0, 2.0, 3.0]], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 inputs, called with 1"), "{e}");
    let e = k
        .call(&[&[1.0, 2.0], &[1.0, 2.0, 3.0]], &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("input 0 has 2 elements"), "{e}");
}

fn reduce_reference(op: &str, row: &[f64]) -> f64 {
    match op {
        "sum" => row.iter().sum(),
        "mean" => row.iter().sum::<f64>() / row.len() as f64,
        "max" => row.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "min" => row.iter().copied().fold(f64::INFINITY, f64::min),
        _ => unreachable!(),
    }
}

fn check_float_reduce<T: Num>(jit: &Jit) {
    let mut rng = Rng(99);
    let shapes = [(0, 5), (1, 1), (3, 0), (5, 7), (3, 100_003), (2, 1 << 20)];
    for op in ["sum", "max", "min", "mean"] {
        for (pre, pre_ref) in [
            ("x", (|x| x) as fn(f64) -> f64),
            ("x*x", |x| x * x),
            ("exp(x) - 1", |x: f64| x.exp() - 1.0),
        ] {
            let k = jit.reduce::<T>(op, pre).unwrap();
            for (rows, cols) in shapes {
                let input: Vec<T> = (0..rows * cols)
                    .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                    .collect();
                let mut out = vec![T::from_f64(0.0); rows];
                k.call(&input, cols, &mut out).unwrap();
                for r in 0..rows {
                    let row: Vec<f64> = input[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|x| pre_ref(x.to_f64()))
                        .collect();
                    let want = reduce_reference(op, &row);
                    let got = out[r].to_f64();
                    // Sums of n terms: the bound grows with sqrt(n) (blocked accumulation).
                    let tol = T::TOL * (cols as f64).sqrt().max(1.0);
                    let ok = if want.is_infinite() {
                        got == want
                    } else {
                        close(got, want, tol)
                    };
                    assert!(
                        ok,
                        "{} {op}({pre}) {rows}x{cols} row {r}: got {got}, want {want}",
                        T::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
fn reduce_float32_and_float64_match_f64_references() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    check_float_reduce::<f32>(&jit);
    check_float_reduce::<f64>(&jit);
}

#[test]
fn reduce_integers() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let mut rng = Rng(5);
    for op in ["sum", "max", "min", "mean"] {
        let k = jit.reduce::<i64>(op, "x*x - 3").unwrap();
        let k32 = jit.reduce::<i32>(op, "x").unwrap();
        for (rows, cols) in [(0, 3), (1, 1), (4, 0), (3, 1001)] {
            let input: Vec<i64> = (0..rows * cols)
                .map(|_| (rng.next() % 2001) as i64 - 1000)
                .collect();
            let mut out = vec![0i64; rows];
            k.call(&input, cols, &mut out).unwrap();
            let input32: Vec<i32> = input.iter().map(|&v| v as i32).collect();
            let mut out32 = vec![0i32; rows];
            k32.call(&input32, cols, &mut out32).unwrap();
            for r in 0..rows {
                let row = &input[r * cols..(r + 1) * cols];
                let pre: Vec<i64> = row.iter().map(|x| x * x - 3).collect();
                let agg = |v: &[i64]| -> i64 {
                    match op {
                        "sum" => v.iter().sum(),
                        "mean" => {
                            if v.is_empty() {
                                0
                            } else {
                                v.iter().sum::<i64>() / v.len() as i64
                            }
                        }
                        "max" => v.iter().copied().max().unwrap_or(i64::MIN),
                        _ => v.iter().copied().min().unwrap_or(i64::MAX),
                    }
                };
                assert_eq!(out[r], agg(&pre), "int64 {op} {rows}x{cols} row {r}");
                let plain: Vec<i64> = row.to_vec();
                let want32 = match (op, plain.is_empty()) {
                    ("max", true) => i32::MIN as i64,
                    ("min", true) => i32::MAX as i64,
                    _ => agg(&plain),
                };
                assert_eq!(out32[r] as i64, want32, "int32 {op} {rows}x{cols} row {r}");
            }
        }
    }
}

fn check_gemm<T: Num>(jit: &Jit) {
    let mut rng = Rng(3);
    for relu in [false, true] {
        let g = jit.gemm::<T>(relu).unwrap();
        for (m, n, k) in [
            (0, 0, 0),
            (0, 3, 2),
            (2, 3, 0),
            (1, 1, 1),
            (3, 5, 7),
            (67, 129, 65),
            (260, 300, 270),
        ] {
            let a: Vec<T> = (0..m * k)
                .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                .collect();
            let b: Vec<T> = (0..k * n)
                .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                .collect();
            let mut c = vec![T::from_f64(f64::NAN); m * n];
            g.call(m, n, k, &a, &b, &mut c).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let mut want: f64 = (0..k)
                        .map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64())
                        .sum();
                    if relu {
                        want = want.max(0.0);
                    }
                    let got = c[i * n + j].to_f64();
                    // |error| <= k * eps * sum |a||b| <= k * eps (inputs in [-1, 1]).
                    let tol = T::TOL * (k as f64).max(1.0);
                    assert!(
                        (got - want).abs() <= tol,
                        "{} gemm relu={relu} {m}x{n}x{k} c[{i},{j}]: got {got}, want {want}",
                        T::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_float32_and_float64_match_f64_references() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    check_gemm::<f32>(&jit);
    check_gemm::<f64>(&jit);
    let g = jit.gemm::<f32>(false).unwrap();
    let e = g
        .call(2, 2, 2, &[0.0; 4], &[0.0; 3], &mut [0.0; 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`b` has 3 elements"), "{e}");
}

#[test]
fn batch_compiles_in_parallel_through_single_flight() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let exprs = ["a+1", "a*2", "exp(a)", "a-3", "a+1", "a*2"];
    let reqs: Vec<Request> = exprs
        .iter()
        .map(|e| {
            TemplateRequest::new("elemwise")
                .param("dtype", "float64")
                .param("arity", 1)
                .param("expr", e)
                .into()
        })
        .collect();
    let results = jit.compile_many(&reqs, 2);
    assert_eq!(results.len(), exprs.len());
    let compiled: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(compiled[0].key, compiled[4].key);
    assert_eq!(compiled[1].key, compiled[5].key);
    assert_eq!(
        compiled.iter().filter(|c| !c.hit).count(),
        4,
        "duplicates cost one compile"
    );
    assert_eq!(tc.entry_dirs().len(), 4);
    // Errors come back in place, without failing the others.
    let mixed: Vec<Request> = vec![
        TemplateRequest::new("elemwise")
            .param("dtype", "float64")
            .param("arity", 1)
            .param("expr", "a+1")
            .into(),
        TemplateRequest::new("elemwise")
            .param("dtype", "float16")
            .param("arity", 1)
            .param("expr", "a")
            .into(),
    ];
    let r = jit.compile_many(&mixed, 4);
    assert!(r[0].is_ok());
    assert!(r[1].as_ref().unwrap_err().to_string().contains("float16"));
}

#[test]
fn template_text_and_parameters_are_in_the_key() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let req = |e: &str| {
        TemplateRequest::new("elemwise")
            .param("dtype", "float32")
            .param("arity", 2)
            .param("expr", e)
    };
    let a = jit.render(&req("a + b")).unwrap();
    let b = jit.render(&req("a+b")).unwrap();
    let c = jit.render(&req("b + a")).unwrap();
    let (ka, ma, _) = jit.key_for(&a).unwrap();
    assert_eq!(
        ka,
        jit.key_for(&b).unwrap().0,
        "spacing does not change the key"
    );
    assert_ne!(ka, jit.key_for(&c).unwrap().0);
    let t = ma.template.expect("template recorded in the key material");
    assert_eq!(t.name, "c/elemwise");
    assert_eq!(t.blake3.len(), 64);
    assert!(t
        .params
        .contains(&("expr".to_string(), "a + b".to_string())));
    let built = jit.build(&a).unwrap();
    assert_eq!(
        built.meta.source_name,
        "elemwise(arity=2, dtype=float32, expr=a + b)"
    );
}

/// The point of `elemwise` is one vectorised loop: on x86_64 with glibc, `exp` must be
/// called through libmvec's vector variants, not the scalar `expf`, and without
/// `-ffast-math`. `sigmoid` is built on exp so that it vectorises too.
#[test]
fn elemwise_exp_is_vectorised() {
    if !cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
        eprintln!("skipped: the libmvec check applies to x86_64 glibc");
        return;
    }
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    for expr in ["a*exp(b)+c", "sigmoid(a) * b + c"] {
        let k = jit.elemwise::<f32>(expr, 3).unwrap();
        let out = std::process::Command::new("nm")
            .args(["-D", "--undefined-only"])
            .arg(&k.compiled().path)
            .output();
        let Ok(out) = out else {
            eprintln!("skipped: nm (binutils) is not installed");
            return;
        };
        let syms = String::from_utf8_lossy(&out.stdout);
        assert!(
            syms.lines()
                .any(|l| l.contains("_ZGV") && l.contains("_expf")),
            "{expr}: no vector expf imported:\n{syms}"
        );
    }
}

#[test]
fn nan_propagates_through_min_max_and_reductions() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let k = jit
        .elemwise::<f64>("min(a, b) + max(b, a) + abs(a) * 0", 2)
        .unwrap();
    let a = [f64::NAN, 1.0, 2.0, -0.0];
    let b = [1.0, f64::NAN, 3.0, 1.0];
    let mut out = [0.0; 4];
    k.call(&[&a, &b], &mut out).unwrap();
    assert!(out[0].is_nan() && out[1].is_nan(), "{out:?}");
    assert_eq!(out[2], 5.0);
    let abs = jit.elemwise::<f32>("abs(a)", 1).unwrap();
    let mut o = [1.0f32];
    abs.call(&[&[-0.0f32]], &mut o).unwrap();
    assert!(o[0] == 0.0 && o[0].is_sign_positive(), "abs(-0) is +0");
    for op in ["max", "min"] {
        let r = jit.reduce::<f32>(op, "x").unwrap();
        let input = [1.0f32, f32::NAN, 3.0, 2.0, 5.0, 4.0];
        let mut out = [0.0f32; 2];
        r.call(&input, 3, &mut out).unwrap();
        assert!(out[0].is_nan(), "{op} of a row with NaN: {out:?}");
        assert_eq!(out[1], if op == "max" { 5.0 } else { 2.0 });
    }
}

#[test]
fn reduce_over_the_leading_axis_matches_column_references() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let mut rng = Rng(17);
    // Empty both ways, one row, one column, odd, wider than the 512-column block.
    let shapes = [(0, 5), (5, 0), (1, 9), (9, 1), (7, 13), (300, 3), (3, 1100)];
    for op in ["sum", "max", "min", "mean"] {
        let k = jit.reduce_axis::<f64>(op, "x*x - 0.5", 0).unwrap();
        assert_eq!(k.axis(), 0);
        let ki = jit.reduce_axis::<i32>(op, "x", 0).unwrap();
        for (rows, cols) in shapes {
            let input: Vec<f64> = (0..rows * cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut out = vec![f64::NAN; cols];
            k.call(&input, cols, &mut out).unwrap();
            let ints: Vec<i32> = (0..rows * cols)
                .map(|_| (rng.next() % 2001) as i32 - 1000)
                .collect();
            let mut outi = vec![7i32; cols];
            ki.call(&ints, cols, &mut outi).unwrap();
            for c in 0..cols {
                let col: Vec<f64> = (0..rows)
                    .map(|r| input[r * cols + c] * input[r * cols + c] - 0.5)
                    .collect();
                let want = reduce_reference(op, &col);
                let ok = if want.is_infinite() || want.is_nan() {
                    out[c] == want || (out[c].is_nan() && want.is_nan())
                } else {
                    close(out[c], want, 1e-12)
                };
                assert!(ok, "{op} {rows}x{cols} column {c}: {} vs {want}", out[c]);
                let coli: Vec<i64> = (0..rows).map(|r| ints[r * cols + c] as i64).collect();
                let wanti = match op {
                    "sum" => coli.iter().sum::<i64>(),
                    "mean" if rows == 0 => 0,
                    "mean" => coli.iter().sum::<i64>() / rows as i64,
                    "max" => coli.iter().copied().max().unwrap_or(i32::MIN as i64),
                    _ => coli.iter().copied().min().unwrap_or(i32::MAX as i64),
                };
                assert_eq!(outi[c] as i64, wanti, "int32 {op} {rows}x{cols} column {c}");
            }
        }
        // NaN in a column wins for max and min, as numpy's.
        let input = [1.0, f64::NAN, 3.0, 2.0];
        let mut out = [0.0; 2];
        let plain = jit.reduce_axis::<f64>(op, "x", 0).unwrap();
        plain.call(&input, 2, &mut out).unwrap();
        assert!(out[1].is_nan() && !out[0].is_nan(), "{op}: {out:?}");
    }
    let k = jit.reduce_axis::<f32>("sum", "x", 0).unwrap();
    let e = k.call(&[1.0; 6], 3, &mut [0.0; 2]).unwrap_err().to_string();
    assert!(e.contains("axis 0"), "{e}");
}

#[test]
fn gemm_bias_and_relu_keep_nan_as_numpy() {
    let tc = TestCache::new();
    let jit = Jit::new(tc.config()).unwrap();
    let mut rng = Rng(23);
    for relu in [false, true] {
        let g = jit.gemm::<f64>(relu).unwrap();
        let (m, n, k) = (37, 70, 300); // past one packed panel of A rows and of B columns
        let mut a: Vec<f64> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let bias: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        a[3 * k + 5] = f64::NAN;
        let mut c = vec![0.0; m * n];
        g.call_bias(m, n, k, &a, &b, Some(&bias), &mut c).unwrap();
        for i in 0..m {
            for j in 0..n {
                let mut want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                want += bias[j];
                if relu && want < 0.0 {
                    want = 0.0;
                }
                let got = c[i * n + j];
                if i == 3 {
                    assert!(got.is_nan(), "relu={relu} row with NaN [{i},{j}]: {got}");
                } else {
                    assert!(
                        (got - want).abs() <= 1e-12 * k as f64,
                        "[{i},{j}] {got} vs {want}"
                    );
                }
            }
        }
        let e = g
            .call_bias(
                2,
                2,
                2,
                &[0.0; 4],
                &[0.0; 4],
                Some(&[0.0; 3]),
                &mut [0.0; 4],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias"), "{e}");
    }
}
