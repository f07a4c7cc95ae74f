//! Backend conformance on special values: max reductions and elementwise max, min and relu
//! with NaN, infinities and signed zeros, compared with the reference interpreter bit for
//! bit (NaN as NaN) at sizes 1, 3, 50 and 783. The harness: `common/case.rs`; every other op
//! family: `conformance.rs`.

use common::case::{Case, SIZES};
use lorac_compiler::ir::{BinaryOp, Op, ReduceOp, Tensor, UnaryOp};

mod common;

/// Row and column max leave NaN out exactly as the reference's `f32::max` fold does (a row
/// of NaN gives -inf), with NaN and ±inf at every lane position and in the scalar tail; bit
/// for bit, both with a fused producer and on a plain load.
#[test]
fn max_reductions_leave_nan_out_bit_for_bit() {
    for n in SIZES {
        let mut c = Case::new(250 + n as u64);
        let x = c.input("x", &[6, n], -2.0, 2.0);
        let mut xv = c.inputs["x"].f().to_vec();
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN];
        for (i, v) in xv.iter_mut().enumerate() {
            if i % 5 == i / n % 5 {
                *v = specials[i % 4];
            }
        }
        // Row 5 is all NaN.
        xv[5 * n..].fill(f32::NAN);
        c.inputs.insert("x".into(), Tensor::f32(vec![6, n], xv));
        let scaled = c.g.scale(x, 1.5).unwrap();
        for (name, src, axis) in [
            ("row", x, 1),
            ("row_fused", scaled, 1),
            ("col", x, 0),
            ("col_fused", scaled, 0),
        ] {
            let r =
                c.g.add(
                    Op::Reduce {
                        op: ReduceOp::Max,
                        axis,
                    },
                    &[src],
                )
                .unwrap();
            c.g.set_output(name, r);
        }
        let (want, got) = c.reference_and_cpu();
        let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for name in ["row", "row_fused", "col", "col_fused"] {
            assert_eq!(bits(&got[name]), bits(&want[name]), "{name} n={n}");
        }
        assert_eq!(want["row"].f()[5], f32::NEG_INFINITY, "a NaN row's max");
    }
}

/// Elementwise max, min and relu leave a NaN operand out and keep the first of equal values
/// (±0), as `ops::elementwise::{max, min}` define them: CPU kernels (CLIF's `fmax` would
/// propagate NaN and order -0 below +0) equal the reference bit for bit, and both give the
/// definition's values at the special points.
#[test]
fn max_min_relu_leave_nan_out_bit_for_bit() {
    let specials: [(f32, f32); 8] = [
        (f32::NAN, 1.5),
        (-2.0, f32::NAN),
        (f32::NAN, f32::NAN),
        (-0.0, 0.0),
        (0.0, -0.0),
        (f32::INFINITY, f32::NAN),
        (f32::NEG_INFINITY, -0.0),
        (-f32::NAN, -3.0),
    ];
    for n in SIZES {
        let mut c = Case::new(270 + n as u64);
        let x = c.input("x", &[3, n], -2.0, 2.0);
        let y = c.input("y", &[3, n], -2.0, 2.0);
        let (mut xv, mut yv) = (c.inputs["x"].f().to_vec(), c.inputs["y"].f().to_vec());
        for i in (0..3 * n).step_by(3) {
            (xv[i], yv[i]) = specials[i / 3 % specials.len()];
        }
        c.inputs
            .insert("x".into(), Tensor::f32(vec![3, n], xv.clone()));
        c.inputs
            .insert("y".into(), Tensor::f32(vec![3, n], yv.clone()));
        let mx = c.g.bin(BinaryOp::Max, x, y).unwrap();
        let mn = c.g.bin(BinaryOp::Min, x, y).unwrap();
        let re = c.g.un(UnaryOp::Relu, x).unwrap();
        c.g.set_output("max", mx);
        c.g.set_output("min", mn);
        c.g.set_output("relu", re);
        let (want, got) = c.reference_and_cpu();
        let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for name in ["max", "min", "relu"] {
            assert_eq!(bits(&got[name]), bits(&want[name]), "{name} n={n}");
        }
        // The definition, written here independently: y when y wins or x is NaN, else x.
        for i in (0..3 * n).step_by(3) {
            let (a, b) = (xv[i], yv[i]);
            let pick = |y_wins: bool| if y_wins || a.is_nan() { b } else { a };
            let same = |v: f32, w: f32| v.to_bits() == w.to_bits() || (v.is_nan() && w.is_nan());
            assert!(same(got["max"].f()[i], pick(b > a)), "max({a}, {b}) n={n}");
            assert!(same(got["min"].f()[i], pick(b < a)), "min({a}, {b}) n={n}");
            let r = if 0.0 > a || a.is_nan() { 0.0 } else { a };
            assert!(same(got["relu"].f()[i], r), "relu({a}) n={n}");
        }
    }
}
