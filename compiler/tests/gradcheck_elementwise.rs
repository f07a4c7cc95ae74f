//! Finite-difference checks of the elementwise and reduction VJP rules, and closed forms of erf.
//! The harness and its tolerances: `common/gradcheck.rs`.

mod common;

use common::gradcheck::*;

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

#[test]
fn unary_ops() {
    use UnaryOp::*;
    let all = [
        Neg, Exp, Log, Sqrt, Recip, Tanh, Erf, Abs, Sigmoid, Relu, Sin, Cos,
    ];
    for (ui, &u) in all.iter().enumerate() {
        for (si, &shape) in SHAPES.iter().enumerate() {
            let seed = (ui * 10 + si) as u64;
            let mut rng = Rng::new(seed);
            let n = numel(shape);
            let (vals, fd) = match u {
                // Positive domain; 1/x and log have large curvature near the low end: finer h.
                Log | Sqrt | Recip => (rng.vec(n, 0.5, 2.0), FD_FINE),
                // Kinks at 0: keep |x| >= 0.1 >> h.
                Abs | Relu => (rng.signed(n, 0.1, 1.0), FD),
                Exp => (rng.vec(n, -2.0, 2.0), FD_FINE),
                _ => (rng.vec(n, -2.0, 2.0), FD),
            };
            check(
                &format!("{u:?}{shape:?}"),
                seed,
                fd,
                vec![p(shape, vals)],
                |g, ps, _| g.un(u, ps[0]).unwrap(),
            );
        }
    }
}

#[test]
fn binary_ops() {
    use BinaryOp::*;
    for (bi, &b) in [Add, Sub, Mul, Div, Pow, Max, Min].iter().enumerate() {
        for (si, &shape) in SHAPES.iter().enumerate() {
            let seed = 1000 + (bi * 10 + si) as u64;
            let mut rng = Rng::new(seed);
            let n = numel(shape);
            let (x, y, fd) = match b {
                Div => (rng.vec(n, -2.0, 2.0), rng.signed(n, 0.5, 2.0), FD_FINE),
                Pow => (rng.vec(n, 0.5, 2.0), rng.vec(n, -1.5, 1.5), FD_FINE),
                Max | Min => {
                    // Distinct operands: |x - y| >= 0.05 >> h.
                    let x = rng.vec(n, -1.0, 1.0);
                    let d = rng.signed(n, 0.05, 1.0);
                    let y = x.iter().zip(&d).map(|(a, b)| a + b).collect();
                    (x, y, FD)
                }
                _ => (rng.vec(n, -2.0, 2.0), rng.vec(n, -2.0, 2.0), FD),
            };
            check(
                &format!("{b:?}{shape:?}"),
                seed,
                fd,
                vec![p(shape, x), p(shape, y)],
                |g, ps, _| g.add(Op::Binary(b), &[ps[0], ps[1]]).unwrap(),
            );
        }
    }
}

#[test]
fn binary_ops_with_broadcasting_and_shared_operands() {
    use BinaryOp::*;
    // `g.bin` broadcasting: the VJP of the inserted Broadcast nodes sums back (sum_to).
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1], &[1, 50]),
        (&[50], &[3, 1, 1]),
        (&[], &[3, 4]),
        (&[1, 3], &[2, 1, 1]),
    ];
    for (ci, &(sa, sb)) in cases.iter().enumerate() {
        for (bi, &b) in [Add, Sub, Mul, Div].iter().enumerate() {
            let seed = 2000 + (ci * 10 + bi) as u64;
            let mut rng = Rng::new(seed);
            let x = rng.vec(numel(sa), -2.0, 2.0);
            let y = if b == Div {
                rng.signed(numel(sb), 0.5, 2.0)
            } else {
                rng.vec(numel(sb), -2.0, 2.0)
            };
            let fd = if b == Div { FD_FINE } else { FD };
            check(
                &format!("bin {b:?} {sa:?} {sb:?}"),
                seed,
                fd,
                vec![p(sa, x), p(sb, y)],
                |g, ps, _| g.bin(b, ps[0], ps[1]).unwrap(),
            );
        }
    }
    // The same node on both sides: gradients of both operands accumulate.
    let mut rng = Rng::new(2100);
    let x = rng.signed(12, 0.5, 2.0);
    check("x*x", 2100, FD, vec![p(&[3, 4], x.clone())], |g, ps, _| {
        g.times(ps[0], ps[0]).unwrap()
    });
    check(
        "x/x + x",
        2101,
        FD,
        vec![p(&[3, 4], x.clone())],
        |g, ps, _| {
            let q = g.over(ps[0], ps[0]).unwrap();
            g.plus(q, ps[0]).unwrap()
        },
    );
    check(
        "pow(x, x)",
        2102,
        FD_FINE,
        vec![p(&[3, 4], x.iter().map(|v| v.abs()).collect())],
        |g, ps, _| g.bin(Pow, ps[0], ps[0]).unwrap(),
    );
}

#[test]
fn erf_closed_forms() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[4]);
    let y = g.un(UnaryOp::Erf, x).unwrap();
    g.set_output("y", y);
    let mut inp = HashMap::new();
    inp.insert(
        "x".to_string(),
        Tensor::f32(vec![4], vec![0.5, 1.0, -2.0, 0.0]),
    );
    let v = run(&g, &inp).unwrap();
    let got = v[&y].f();
    for (i, want) in [0.5204998778f64, 0.8427007929, -0.995322265, 0.0]
        .iter()
        .enumerate()
    {
        assert!(
            (got[i] as f64 - want).abs() < 1e-6,
            "erf: got {} want {want}",
            got[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

#[test]
fn reduce_sum_and_max_each_axis() {
    let shapes: &[&[usize]] = &[&[3, 4, 5], &[50, 1], &[1, 3], &[3, 50], &[7]];
    for (si, &shape) in shapes.iter().enumerate() {
        for axis in 0..shape.len() {
            for (ri, &r) in [ReduceOp::Sum, ReduceOp::Max].iter().enumerate() {
                let seed = 3000 + (si * 100 + axis * 10 + ri) as u64;
                let mut rng = Rng::new(seed);
                // Max: all values distinct by 0.07 >> h, so the argmax is stable under FD.
                let vals = match r {
                    ReduceOp::Sum => rng.vec(numel(shape), -2.0, 2.0),
                    ReduceOp::Max => rng.distinct(numel(shape), 0.07),
                };
                check(
                    &format!("reduce {r:?} {shape:?} axis {axis}"),
                    seed,
                    FD,
                    vec![p(shape, vals)],
                    |g, ps, _| g.add(Op::Reduce { op: r, axis }, &[ps[0]]).unwrap(),
                );
            }
        }
    }
}

#[test]
fn reduce_max_ties_share_the_gradient() {
    // Exact ties: the VJP shares dy equally among the maxima (FD is not meaningful at a tie,
    // so this checks the documented rule directly).
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[2, 3]);
    let m = g.max_along(x, 1).unwrap();
    let r = data(&mut g, "r", &[2, 1]);
    let pr = g.times(m, r).unwrap();
    let loss = g.sum_all(pr).unwrap();
    let dx = grad(&mut g, loss, &[x]).unwrap()[0].unwrap();
    let mut inp = HashMap::new();
    inp.insert(
        "x".to_string(),
        Tensor::f32(vec![2, 3], vec![1.0, 3.0, 3.0, 2.0, 2.0, 2.0]),
    );
    inp.insert("r".to_string(), Tensor::f32(vec![2, 1], vec![4.0, 3.0]));
    let v = run(&g, &inp).unwrap();
    assert_eq!(v[&dx].f(), &[0.0, 2.0, 2.0, 1.0, 1.0, 1.0]);
}
