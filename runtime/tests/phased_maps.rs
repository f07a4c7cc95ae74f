//! Maps with `exp`/`erf` run in phases on AVX-512 hosts (`lower::cpu::phases`): f32x4 loops
//! per level, one 16-lane call per transcendental and chunk, scratch rows between. Checked
//! bit for bit against the reference interpreter at row lengths that give one chunk, several
//! chunks, a partial last chunk and a scalar tail, on graphs where values cross phases,
//! transcendentals nest, a load feeds a call directly, and outputs come from every phase.

use common::case::Case;
use lorac_compiler::ir::{Tensor, UnaryOp};
use lorac_compiler::lower::cpu::{phases, wide};

mod common;

/// 16 is the shortest phased row; 783 is a 512-element chunk, a 268-element one and a
/// 3-element scalar tail; 1536 is MiniLM's intermediate width (three full chunks); 1030 leaves
/// a 4-element last chunk and a 2-element tail.
const LENGTHS: [usize; 6] = [3, 16, 50, 783, 1030, 1536];

fn bits(t: &Tensor) -> Vec<u32> {
    t.f().iter().map(|v| v.to_bits()).collect()
}

/// Every output of `c` equals the reference bit for bit, and (on AVX-512) the lowering
/// phased at least one kernel into `want_phases` phases, for rows of 16 or more.
fn check(c: &Case, names: &[&str], n: usize, want_phases: usize) {
    let plan = lorac_compiler::lower::plan::lower(&c.g).unwrap();
    let most = plan
        .kernels
        .iter()
        .filter_map(|k| phases::plan(k).map(|p| p.count()))
        .max();
    if n >= 16 {
        assert_eq!(most, Some(want_phases), "phases at n={n}");
    } else {
        assert_eq!(most, None, "rows under 16 keep the one-loop form (n={n})");
    }
    if !wide::available() {
        eprintln!("no AVX-512 here: the kernels run in one loop");
    }
    let (want, got) = c.reference_and_cpu();
    for name in names {
        assert_eq!(bits(&got[*name]), bits(&want[*name]), "{name} n={n}");
    }
}

/// GELU as BERT writes it: the argument crosses into the call, `h` is re-read after it.
#[test]
fn gelu_in_two_phases() {
    for n in LENGTHS {
        let mut c = Case::new(4100 + n as u64);
        let x = c.input("x", &[5, n], -4.0, 4.0);
        let b = c.input("b", &[n], -0.5, 0.5);
        let h = c.g.plus(x, b).unwrap();
        let g = c.g.gelu(h).unwrap();
        c.g.set_output("gelu", g);
        check(&c, &["gelu"], n, 2);
    }
}

/// Nested calls (`erf(exp(x)·0.1 − 1)`), a load as a call's argument, a value computed in
/// phase 0 read in phase 2, and outputs from phases 0, 1 and 2.
#[test]
fn nested_calls_and_crossing_values() {
    for n in LENGTHS {
        let mut c = Case::new(4200 + n as u64);
        let x = c.input("x", &[4, n], -3.0, 3.0);
        let y = c.input("y", &[4, n], -2.0, 2.0);
        let a = c.g.un(UnaryOp::Exp, x).unwrap();
        let a1 = c.g.scale(a, 0.1).unwrap();
        let one = c.g.fill(&[4, n], 1.0).unwrap();
        let a2 = c.g.minus(a1, one).unwrap();
        let e = c.g.un(UnaryOp::Erf, a2).unwrap();
        let xy = c.g.times(x, y).unwrap();
        let out = c.g.plus(e, xy).unwrap();
        for (name, v) in [("xy", xy), ("exp", a), ("out", out)] {
            c.g.set_output(name, v);
        }
        check(&c, &["xy", "exp", "out"], n, 3);
    }
}

/// Softmax's exponent pass reads a per-row scalar (the row max) next to the row, and extreme
/// inputs reach exp's clamps and erf's saturation; NaN stays NaN.
#[test]
fn softmax_and_extremes() {
    for n in LENGTHS {
        let mut c = Case::new(4300 + n as u64);
        let x = c.input("x", &[6, n], -120.0, 120.0);
        let s = c.g.softmax(x).unwrap();
        let e = c.g.un(UnaryOp::Erf, x).unwrap();
        let mut xv = c.inputs["x"].f().to_vec();
        let len = xv.len();
        for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0]
            .into_iter()
            .enumerate()
        {
            xv[(i * 7919) % len] = v;
        }
        c.inputs.insert("x".into(), Tensor::f32(vec![6, n], xv));
        c.g.set_output("softmax", s);
        c.g.set_output("erf", e);
        check(&c, &["softmax", "erf"], n, 2);
    }
}
