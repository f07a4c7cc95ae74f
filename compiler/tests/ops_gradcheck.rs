//! Finite-difference checks of every differentiable primitive's VJP rule (and of the composed
//! builders), closed-form checks of a few reference semantics, and the gradient-blocking ops.
//!
//! Recipe per case: Param inputs with seeded random values, `loss = sum_all(out * R)` with a
//! fixed random Data input `R` (so the upstream gradient is not uniform), `grad(loss, params)`,
//! then central differences `(L(p + h) - L(p - h)) / 2h` on a forward-only copy of the graph.
//! The FD loss is summed in f64 on the host from the f32 op output to keep rounding noise low.
//!
//! Tolerances (the interpreter is f32): `h = 1e-2` by default (1e-3 for smooth functions of
//! large magnitude or curvature, noted per case) and `|fd - an| <= 2e-3 + 2e-2 * |an|` unless a
//! case states otherwise. Tensors with more than 30 elements are checked on a seeded random
//! sample of 30 coordinates.

use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{
    BinaryOp, DType, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
use lorac_compiler::passes::autodiff::grad;
use std::collections::HashMap;

const ATOL: f64 = 2e-3;
const RTOL: f64 = 2e-2;
const MAX_COORDS: usize = 30;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// xorshift64* — tiny, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Magnitudes in [lo, hi] with a random sign (keeps values away from 0).
    fn signed(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.uniform(lo, hi);
                if self.unit() < 0.5 {
                    -v
                } else {
                    v
                }
            })
            .collect()
    }
    /// Pairwise distinct values: a shuffled grid with spacing `step`, centred on 0.
    fn distinct(&mut self, n: usize, step: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * step).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
    /// `k` distinct coordinates out of `n` (all of them when `n <= k`).
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        if n <= k {
            return all;
        }
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort();
        all
    }
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn input(g: &mut Graph, name: &str, kind: InputKind, shape: &[usize], dtype: DType) -> NodeId {
    g.add(
        Op::Input {
            name: name.into(),
            kind,
            shape: shape.to_vec(),
            dtype,
        },
        &[],
    )
    .unwrap()
}

fn param(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Param, shape, DType::F32)
}

fn data(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Data, shape, DType::F32)
}

fn data_i64(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Data, shape, DType::I64)
}

/// One parameter of a case: its shape, its initial values, and whether the FD perturbation
/// is symmetric over the last two axes (for SPD matrices read through their lower triangle).
struct P {
    shape: Vec<usize>,
    vals: Vec<f32>,
    sym: bool,
}

fn p(shape: &[usize], vals: Vec<f32>) -> P {
    assert_eq!(numel(shape), vals.len(), "test bug: values for {shape:?}");
    P {
        shape: shape.to_vec(),
        vals,
        sym: false,
    }
}

fn p_sym(shape: &[usize], vals: Vec<f32>) -> P {
    P {
        sym: true,
        ..p(shape, vals)
    }
}

/// Per-case FD settings.
#[derive(Clone, Copy)]
struct Fd {
    h: f32,
    atol: f64,
    rtol: f64,
}

const FD: Fd = Fd {
    h: 1e-2,
    atol: ATOL,
    rtol: RTOL,
};
const FD_FINE: Fd = Fd {
    h: 1e-3,
    atol: ATOL,
    rtol: RTOL,
};

type Extra = HashMap<String, Tensor>;

/// Builds a case, differentiates it and compares every parameter's gradient with central
/// differences. `build` gets the parameter nodes (named p0, p1, ...) and may add Data inputs
/// (with values put in `extra`); it returns the op output to check.
fn check(
    name: &str,
    seed: u64,
    fd: Fd,
    params: Vec<P>,
    build: impl FnOnce(&mut Graph, &[NodeId], &mut Extra) -> NodeId,
) {
    let mut rng = Rng::new(seed ^ 0xA5A5_5A5A);
    let mut g = Graph::new();
    let ps: Vec<NodeId> = params
        .iter()
        .enumerate()
        .map(|(i, q)| param(&mut g, &format!("p{i}"), &q.shape))
        .collect();
    let mut inputs: Extra = HashMap::new();
    let out = build(&mut g, &ps, &mut inputs);
    assert_eq!(g.node(out).dtype, DType::F32, "{name}: output must be f32");
    let out_shape = g.shape(out).to_vec();
    let rvals = rng.vec(numel(&out_shape), -1.0, 1.0);
    let r = data(&mut g, "__r", &out_shape);
    inputs.insert("__r".into(), Tensor::f32(out_shape.clone(), rvals.clone()));
    let fwd = {
        let mut f = g.clone();
        f.set_output("out", out);
        f
    };
    let prod = g.times(out, r).unwrap();
    let loss = g.sum_all(prod).unwrap();
    let grads = grad(&mut g, loss, &ps).unwrap_or_else(|e| panic!("{name}: grad failed: {e}"));
    lorac_compiler::ir::verify::verify(&g).unwrap_or_else(|e| panic!("{name}: verify: {e}"));

    let with = |vals: &[Vec<f32>]| {
        let mut m = inputs.clone();
        for (i, (q, v)) in params.iter().zip(vals).enumerate() {
            m.insert(format!("p{i}"), Tensor::f32(q.shape.clone(), v.clone()));
        }
        m
    };
    let base: Vec<Vec<f32>> = params.iter().map(|q| q.vals.clone()).collect();
    let vals = run(&g, &with(&base)).unwrap_or_else(|e| panic!("{name}: run failed: {e}"));
    let loss_of = |vals: &[Vec<f32>]| -> f64 {
        let v =
            run(&fwd, &with(vals)).unwrap_or_else(|e| panic!("{name}: forward run failed: {e}"));
        let o = v[&out].f();
        o.iter()
            .zip(&rvals)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum()
    };
    // The graph's loss agrees with the host-side FD loss.
    let graph_loss = vals[&loss].f()[0] as f64;
    let host_loss = loss_of(&base);
    assert!(
        (graph_loss - host_loss).abs() <= 1e-4 + 1e-5 * host_loss.abs(),
        "{name}: loss {graph_loss} vs {host_loss}"
    );

    for (pi, q) in params.iter().enumerate() {
        let gid = grads[pi].unwrap_or_else(|| panic!("{name}: no gradient for p{pi}"));
        assert_eq!(
            g.shape(gid),
            q.shape.as_slice(),
            "{name}: gradient shape of p{pi}"
        );
        let an = vals[&gid].f().to_vec();
        assert!(
            an.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient for p{pi}: {an:?}"
        );
        let n = numel(&q.shape);
        for k in rng.sample(n, MAX_COORDS) {
            // Coordinates perturbed together, and the analytic directional derivative.
            let (coords, an_k) = if q.sym {
                let d = q.shape[q.shape.len() - 1];
                let (blk, i, j) = (k / (d * d), k % (d * d) / d, k % d);
                let kt = blk * d * d + j * d + i;
                if kt == k {
                    (vec![k], an[k] as f64)
                } else {
                    (vec![k, kt], an[k] as f64 + an[kt] as f64)
                }
            } else {
                (vec![k], an[k] as f64)
            };
            let mut plus = base.clone();
            let mut minus = base.clone();
            for &c in &coords {
                plus[pi][c] += fd.h;
                minus[pi][c] -= fd.h;
            }
            // Use the actually representable step.
            let step = (plus[pi][coords[0]] - minus[pi][coords[0]]) as f64;
            let num = (loss_of(&plus) - loss_of(&minus)) / step;
            assert!(
                (num - an_k).abs() <= fd.atol + fd.rtol * an_k.abs(),
                "{name}: d/dp{pi}[{k}] (shape {:?}): analytic {an_k} vs finite difference {num}",
                q.shape
            );
        }
    }
}

/// Shapes with awkward sizes 1, 3 and 50 used across the elementwise cases.
const SHAPES: &[&[usize]] = &[&[1, 3], &[3, 50], &[50, 1], &[2, 1, 3]];

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

// ---------------------------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------------------------

#[test]
fn matmul_2d_and_batched() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 50], &[50, 1]),
        (&[1, 3], &[3, 4]),
        (&[50, 3], &[3, 50]),
        (&[1, 1], &[1, 1]),
        (&[2, 3, 50], &[2, 50, 1]),
        (&[3, 1, 4], &[3, 4, 3]),
        (&[2, 2, 3, 2], &[2, 2, 2, 5]),
    ];
    for (ci, &(sa, sb)) in cases.iter().enumerate() {
        let seed = 4000 + ci as u64;
        let mut rng = Rng::new(seed);
        let a = rng.vec(numel(sa), -1.0, 1.0);
        let b = rng.vec(numel(sb), -1.0, 1.0);
        // Bilinear: the FD is exact up to rounding, so h can be large.
        check(
            &format!("matmul {sa:?} @ {sb:?}"),
            seed,
            FD,
            vec![p(sa, a), p(sb, b)],
            |g, ps, _| g.matmul(ps[0], ps[1]).unwrap(),
        );
    }
}

/// `M Mᵀ + I` for random `M[d, d]`, per batch block.
fn spd(rng: &mut Rng, batch: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for _ in 0..batch {
        let m = rng.vec(d * d, -1.0, 1.0);
        for i in 0..d {
            for j in 0..d {
                let s: f32 = (0..d).map(|k| m[i * d + k] * m[j * d + k]).sum();
                out.push(s + if i == j { 1.0 } else { 0.0 });
            }
        }
    }
    out
}

#[test]
fn spd_solve_both_operands() {
    // (batch dims, d, c, damping)
    let cases: &[(&[usize], usize, usize, f32)] = &[
        (&[], 3, 2, 0.0),
        (&[], 1, 3, 0.5),
        (&[2], 3, 1, 0.1),
        (&[], 5, 3, 0.0),
        (&[2, 1], 2, 2, 0.0),
    ];
    for (ci, &(batch, d, c, damping)) in cases.iter().enumerate() {
        let seed = 5000 + ci as u64;
        let mut rng = Rng::new(seed);
        let nb = numel(batch);
        let mut sa = batch.to_vec();
        sa.extend([d, d]);
        let mut sb = batch.to_vec();
        sb.extend([d, c]);
        let a = spd(&mut rng, nb, d);
        let b = rng.vec(numel(&sb), -1.0, 1.0);
        // A is perturbed symmetrically (the solve reads its lower triangle):
        // compare (L(A + hE_ij + hE_ji) - L(A - ...)) / 2h with dA[i,j] + dA[j,i].
        check(
            &format!("spd_solve {sa:?} {sb:?} δ={damping}"),
            seed,
            FD_FINE,
            vec![p_sym(&sa, a), p(&sb, b)],
            |g, ps, _| g.add(Op::SpdSolve { damping }, &[ps[0], ps[1]]).unwrap(),
        );
    }
    // Through a graph-built SPD matrix A = M Mᵀ + I (no symmetric perturbation needed).
    let mut rng = Rng::new(5100);
    let m = rng.vec(9, -1.0, 1.0);
    let b = rng.vec(6, -1.0, 1.0);
    check(
        "spd_solve(M Mᵀ + I)",
        5100,
        FD_FINE,
        vec![p(&[3, 3], m), p(&[3, 2], b)],
        |g, ps, _| {
            let mt = g.t(ps[0]).unwrap();
            let mm = g.matmul(ps[0], mt).unwrap();
            let eye = g
                .add(
                    Op::Literal {
                        shape: vec![3, 3],
                        data: std::sync::Arc::new(vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]),
                    },
                    &[],
                )
                .unwrap();
            let a = g.plus(mm, eye).unwrap();
            g.add(Op::SpdSolve { damping: 0.0 }, &[a, ps[1]]).unwrap()
        },
    );
}

fn solve(a: Vec<f32>, ashape: &[usize], b: Vec<f32>, bshape: &[usize], damping: f32) -> Vec<f32> {
    let mut g = Graph::new();
    let an = data(&mut g, "a", ashape);
    let bn = data(&mut g, "b", bshape);
    let x = g.add(Op::SpdSolve { damping }, &[an, bn]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("a".to_string(), Tensor::f32(ashape.to_vec(), a));
    inp.insert("b".to_string(), Tensor::f32(bshape.to_vec(), b));
    run(&g, &inp).unwrap()[&x].f().to_vec()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: got {a}, want {b} (all: {got:?})"
        );
    }
}

#[test]
fn spd_solve_closed_forms() {
    // A = [[4, 2], [2, 3]]: A⁻¹ = [[3, -2], [-2, 4]] / 8.
    let x = solve(
        vec![4., 2., 2., 3.],
        &[2, 2],
        vec![1., 0., 0., 1.],
        &[2, 2],
        0.0,
    );
    assert_close(&x, &[0.375, -0.25, -0.25, 0.5], 1e-6, "A⁻¹");
    let x = solve(vec![4., 2., 2., 3.], &[2, 2], vec![2., 1.], &[2, 1], 0.0);
    assert_close(&x, &[0.5, 0.0], 1e-6, "A⁻¹ b");
    // Damping: (A + I)⁻¹ = [[4, -2], [-2, 5]] / 16.
    let x = solve(
        vec![4., 2., 2., 3.],
        &[2, 2],
        vec![1., 0., 0., 1.],
        &[2, 2],
        1.0,
    );
    assert_close(&x, &[0.25, -0.125, -0.125, 0.3125], 1e-6, "(A + I)⁻¹");
    // Not SPD (A = -I, no damping): identity fallback, X = B.
    let x = solve(
        vec![-1., 0., 0., -1.],
        &[2, 2],
        vec![1.5, -2., 3., 7.],
        &[2, 2],
        0.0,
    );
    assert_eq!(x, vec![1.5, -2., 3., 7.]);
    // ... but damping that makes it SPD is honoured: (-I + 2I)⁻¹ = I.
    let x = solve(
        vec![-1., 0., 0., -1.],
        &[2, 2],
        vec![1.5, -2., 3., 7.],
        &[2, 2],
        2.0,
    );
    assert_close(&x, &[1.5, -2., 3., 7.], 1e-6, "(-I + 2I)⁻¹");
    // The fallback is per batch block.
    let x = solve(
        vec![2., 0., 0., 4., -1., 0., 0., -1.],
        &[2, 2, 2],
        vec![2., 4., 5., 6.],
        &[2, 2, 1],
        0.0,
    );
    assert_close(&x, &[1., 1., 5., 6.], 1e-6, "batched fallback");
    // Indefinite (eigenvalues 3 and -1): fallback.
    let x = solve(vec![1., 2., 2., 1.], &[2, 2], vec![1., 2.], &[2, 1], 0.0);
    assert_eq!(x, vec![1., 2.]);
}

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

#[test]
fn reshape() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[2, 6]),
        (&[1, 3], &[3]),
        (&[3, 50], &[50, 3]),
        (&[50, 1], &[2, 5, 5]),
        (&[1], &[]),
    ];
    for (ci, &(s, t)) in cases.iter().enumerate() {
        let seed = 6000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(s), -1.0, 1.0);
        check(
            &format!("reshape {s:?}->{t:?}"),
            seed,
            FD,
            vec![p(s, vals)],
            |g, ps, _| g.add(Op::Reshape { shape: t.to_vec() }, &[ps[0]]).unwrap(),
        );
    }
}

#[test]
fn permute_all_3d_perms() {
    let perms: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (si, shape) in [[2usize, 3, 4], [1, 3, 50]].iter().enumerate() {
        for (pi, perm) in perms.iter().enumerate() {
            let seed = 7000 + (si * 10 + pi) as u64;
            let vals = Rng::new(seed).vec(numel(shape), -1.0, 1.0);
            check(
                &format!("permute {shape:?} {perm:?}"),
                seed,
                FD,
                vec![p(shape, vals)],
                |g, ps, _| {
                    g.add(
                        Op::Permute {
                            perm: perm.to_vec(),
                        },
                        &[ps[0]],
                    )
                    .unwrap()
                },
            );
        }
    }
    // 2-D and 4-D too.
    let vals = Rng::new(7100).vec(6, -1.0, 1.0);
    check(
        "permute [2,3] [1,0]",
        7100,
        FD,
        vec![p(&[2, 3], vals)],
        |g, ps, _| g.add(Op::Permute { perm: vec![1, 0] }, &[ps[0]]).unwrap(),
    );
    let vals = Rng::new(7101).vec(120, -1.0, 1.0);
    check(
        "permute [2,3,4,5] [3,1,0,2]",
        7101,
        FD,
        vec![p(&[2, 3, 4, 5], vals)],
        |g, ps, _| {
            g.add(
                Op::Permute {
                    perm: vec![3, 1, 0, 2],
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
}

#[test]
fn broadcast() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1], &[2, 3, 4]),
        (&[1], &[3, 50]),
        (&[50, 1], &[50, 3]),
        (&[], &[2, 3]),
        (&[1, 3], &[1, 3]),
        (&[2, 1, 3], &[2, 5, 3]),
        (&[3], &[50, 3]),
    ];
    for (ci, &(s, t)) in cases.iter().enumerate() {
        let seed = 8000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(s), -1.0, 1.0);
        check(
            &format!("broadcast {s:?}->{t:?}"),
            seed,
            FD,
            vec![p(s, vals)],
            |g, ps, _| {
                g.add(Op::Broadcast { shape: t.to_vec() }, &[ps[0]])
                    .unwrap()
            },
        );
    }
}

#[test]
fn slice_each_axis() {
    let shape = [3usize, 4, 5];
    let cases: &[(usize, usize, usize)] = &[
        (0, 0, 1),
        (0, 1, 2),
        (0, 2, 3),
        (0, 0, 3),
        (1, 0, 2),
        (1, 1, 3),
        (1, 2, 4),
        (2, 0, 1),
        (2, 2, 4),
        (2, 4, 5),
        (2, 1, 5),
    ];
    for (ci, &(axis, start, end)) in cases.iter().enumerate() {
        let seed = 9000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(&shape), -1.0, 1.0);
        check(
            &format!("slice {shape:?} axis {axis} {start}..{end}"),
            seed,
            FD,
            vec![p(&shape, vals)],
            |g, ps, _| g.add(Op::Slice { axis, start, end }, &[ps[0]]).unwrap(),
        );
    }
    let vals = Rng::new(9100).vec(50, -1.0, 1.0);
    check(
        "slice [50,1] 10..37",
        9100,
        FD,
        vec![p(&[50, 1], vals.clone())],
        |g, ps, _| {
            g.add(
                Op::Slice {
                    axis: 0,
                    start: 10,
                    end: 37,
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
    check(
        "slice [1,50] axis 1 49..50",
        9101,
        FD,
        vec![p(&[1, 50], vals)],
        |g, ps, _| {
            g.add(
                Op::Slice {
                    axis: 1,
                    start: 49,
                    end: 50,
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
}

#[test]
fn concat_two_and_three_operands() {
    let cases: &[(&[&[usize]], usize)] = &[
        (&[&[2, 3], &[2, 1]], 1),
        (&[&[1, 3], &[3, 3], &[50, 3]], 0),
        (&[&[2, 3, 4], &[2, 1, 4], &[2, 2, 4]], 1),
        (&[&[2, 3, 1], &[2, 3, 4]], 2),
        (&[&[3], &[3]], 0),
        (&[&[2, 3], &[2, 3], &[2, 3]], 1),
    ];
    for (ci, &(shapes, axis)) in cases.iter().enumerate() {
        let seed = 10000 + ci as u64;
        let mut rng = Rng::new(seed);
        let params = shapes
            .iter()
            .map(|s| p(s, rng.vec(numel(s), -1.0, 1.0)))
            .collect();
        check(
            &format!("concat {shapes:?} axis {axis}"),
            seed,
            FD,
            params,
            |g, ps, _| g.add(Op::Concat { axis }, ps).unwrap(),
        );
    }
    // The same operand twice.
    let vals = Rng::new(10100).vec(6, -1.0, 1.0);
    check(
        "concat [x, x]",
        10100,
        FD,
        vec![p(&[2, 3], vals)],
        |g, ps, _| g.add(Op::Concat { axis: 0 }, &[ps[0], ps[0]]).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// Indexing
// ---------------------------------------------------------------------------------------------

#[test]
fn gather_wrt_table() {
    // (table shape, index shape, indices) — indices repeat, some rows are never used.
    let cases: &[(&[usize], &[usize], &[i64])] = &[
        (&[5, 3], &[2, 4], &[0, 2, 2, 4, 0, 1, 4, 4]),
        (&[50, 1], &[7], &[49, 0, 7, 7, 7, 12, 49]),
        (&[3], &[4], &[2, 2, 0, 1]),
        (&[4, 2, 3], &[3], &[3, 3, 1]),
        (&[1, 3], &[1, 2], &[0, 0]),
        (&[6, 2], &[], &[5]),
    ];
    for (ci, &(ts, is, idx)) in cases.iter().enumerate() {
        let seed = 11000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(ts), -1.0, 1.0);
        check(
            &format!("gather {ts:?} by {is:?}"),
            seed,
            FD,
            vec![p(ts, vals)],
            |g, ps, extra| {
                let i = data_i64(g, "idx", is);
                extra.insert("idx".into(), Tensor::i64(is.to_vec(), idx.to_vec()));
                g.add(Op::Gather, &[ps[0], i]).unwrap()
            },
        );
    }
}

#[test]
fn scatter_add_wrt_src() {
    // (src shape, index shape, indices, rows)
    type Case<'a> = (&'a [usize], &'a [usize], &'a [i64], usize);
    let cases: &[Case] = &[
        (&[6, 3], &[6], &[0, 2, 2, 0, 3, 2], 5),
        (&[2, 3, 2], &[2, 3], &[4, 0, 0, 1, 4, 4], 5),
        (&[7], &[7], &[0, 0, 0, 1, 1, 2, 0], 3),
        (&[50, 1], &[50], &[3; 50], 4),
    ];
    for (ci, &(ss, is, idx, rows)) in cases.iter().enumerate() {
        let seed = 12000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(ss), -1.0, 1.0);
        check(
            &format!("scatter_add {ss:?} by {is:?} into {rows}"),
            seed,
            FD,
            vec![p(ss, vals)],
            |g, ps, extra| {
                let i = data_i64(g, "idx", is);
                extra.insert("idx".into(), Tensor::i64(is.to_vec(), idx.to_vec()));
                g.add(Op::ScatterAdd { rows }, &[ps[0], i]).unwrap()
            },
        );
    }
}

#[test]
fn gather_and_one_hot_out_of_range() {
    let mut g = Graph::new();
    let t = data(&mut g, "t", &[3, 2]);
    let i = data_i64(&mut g, "i", &[2]);
    let y = g.add(Op::Gather, &[t, i]).unwrap();
    g.set_output("y", y);
    let tv = Tensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
    let run_with = |idx: Vec<i64>| {
        let mut inp = HashMap::new();
        inp.insert("t".to_string(), tv.clone());
        inp.insert("i".to_string(), Tensor::i64(vec![2], idx));
        run(&g, &inp).map(|v| v[&y].f().to_vec())
    };
    assert_eq!(run_with(vec![2, 0]).unwrap(), vec![5., 6., 1., 2.]);
    assert!(
        run_with(vec![0, 3]).is_err(),
        "gather past the end must fail"
    );
    assert!(
        run_with(vec![-1, 0]).is_err(),
        "gather of a negative index must fail (no wrap-around)"
    );

    // Scatter-add errors the same way.
    let mut g = Graph::new();
    let s = data(&mut g, "s", &[2, 2]);
    let i = data_i64(&mut g, "i", &[2]);
    let y = g.add(Op::ScatterAdd { rows: 3 }, &[s, i]).unwrap();
    g.set_output("y", y);
    let mut inp = HashMap::new();
    inp.insert(
        "s".to_string(),
        Tensor::f32(vec![2, 2], vec![1., 2., 3., 4.]),
    );
    inp.insert("i".to_string(), Tensor::i64(vec![2], vec![2, 2]));
    assert_eq!(run(&g, &inp).unwrap()[&y].f(), &[0., 0., 0., 0., 4., 6.]);
    inp.insert("i".to_string(), Tensor::i64(vec![2], vec![0, 3]));
    assert!(run(&g, &inp).is_err());

    // One-hot: negative (ignore-index) and too-large indices give all-zero rows.
    let mut g = Graph::new();
    let i = data_i64(&mut g, "i", &[4]);
    let y = g.add(Op::OneHot { depth: 3 }, &[i]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("i".to_string(), Tensor::i64(vec![4], vec![-100, 2, 0, 3]));
    let v = run(&g, &inp).unwrap();
    assert_eq!(v[&y].shape, vec![4, 3]);
    assert_eq!(v[&y].f(), &[0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0.]);
}

fn topk(x: Vec<f32>, shape: &[usize], k: usize) -> Vec<f32> {
    let mut g = Graph::new();
    let xn = data(&mut g, "x", shape);
    let y = g.add(Op::TopKMask { k }, &[xn]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("x".to_string(), Tensor::f32(shape.to_vec(), x));
    run(&g, &inp).unwrap()[&y].f().to_vec()
}

#[test]
fn topk_mask_semantics_and_ties() {
    assert_eq!(
        topk(vec![0.1, 0.7, 0.2, 0.5], &[4], 2),
        vec![0., 1., 0., 1.]
    );
    // Ties go to the lower index.
    assert_eq!(topk(vec![1., 2., 2., 0.], &[4], 1), vec![0., 1., 0., 0.]);
    assert_eq!(topk(vec![3., 3., 3.], &[3], 1), vec![1., 0., 0.]);
    assert_eq!(topk(vec![3., 3., 3.], &[3], 2), vec![1., 1., 0.]);
    assert_eq!(topk(vec![5., 1., 1., 1.], &[4], 2), vec![1., 1., 0., 0.]);
    assert_eq!(
        topk(vec![0., 7., 0., 7., 7.], &[5], 2),
        vec![0., 1., 0., 1., 0.]
    );
    // Per row of the last axis; k = n selects everything.
    assert_eq!(
        topk(vec![1., 2., 4., 3., 0., 0.], &[3, 2], 1),
        vec![0., 1., 1., 0., 1., 0.]
    );
    assert_eq!(topk(vec![1., -2., 4.], &[1, 3], 3), vec![1., 1., 1.]);
    // -0.0 and 0.0 compare equal: a tie, lower index wins.
    assert_eq!(topk(vec![-0.0, 0.0, -1.0], &[3], 1), vec![1., 0., 0.]);
}

#[test]
fn topk_mask_with_nan_rows_does_not_panic() {
    // Long rows (beyond insertion-sort sizes) with NaNs: the sort must not see an
    // inconsistent order (Rust's sort may panic on one). Exactly k entries are selected.
    let mut rng = Rng::new(13000);
    for n in [3usize, 21, 50, 200] {
        for k in [1, n / 2, n] {
            let k = k.max(1);
            let mut x = rng.vec(n, -1.0, 1.0);
            for v in x.iter_mut() {
                if rng.unit() < 0.3 {
                    *v = f32::NAN;
                }
            }
            let m = topk(x.clone(), &[n], k);
            assert_eq!(m.iter().filter(|&&v| v == 1.0).count(), k, "n={n} k={k}");
            // Every selected finite value beats every unselected finite value.
            let sel_min = (0..n)
                .filter(|&j| m[j] == 1.0 && !x[j].is_nan())
                .map(|j| x[j])
                .fold(f32::INFINITY, f32::min);
            let rest_max = (0..n)
                .filter(|&j| m[j] == 0.0 && !x[j].is_nan())
                .map(|j| x[j])
                .fold(f32::NEG_INFINITY, f32::max);
            assert!(
                sel_min >= rest_max,
                "n={n} k={k}: selected {sel_min} < unselected {rest_max}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Composed builders
// ---------------------------------------------------------------------------------------------

#[test]
fn composed_builders() {
    for (si, &shape) in [&[1usize, 3][..], &[3, 50], &[50, 1], &[2, 3, 4]]
        .iter()
        .enumerate()
    {
        let seed = 14000 + si as u64 * 10;
        let n = numel(shape);
        let last = *shape.last().unwrap();
        let mut rng = Rng::new(seed);
        let x = rng.vec(n, -2.0, 2.0);
        check(
            &format!("softmax {shape:?}"),
            seed,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.softmax(ps[0]).unwrap(),
        );
        check(
            &format!("gelu {shape:?}"),
            seed + 1,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.gelu(ps[0]).unwrap(),
        );
        check(
            &format!("silu {shape:?}"),
            seed + 2,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.silu(ps[0]).unwrap(),
        );
        let w = rng.vec(last, 0.5, 1.5);
        let b = rng.vec(last, -0.5, 0.5);
        if last > 1 {
            // Normalisation of a row is a strongly curved function of it: finer h.
            check(
                &format!("layer_norm {shape:?}"),
                seed + 3,
                FD_FINE,
                vec![p(shape, x.clone()), p(&[last], w.clone()), p(&[last], b)],
                |g, ps, _| g.layer_norm(ps[0], ps[1], ps[2], 1e-5).unwrap(),
            );
        }
        check(
            &format!("rms_norm {shape:?}"),
            seed + 4,
            FD_FINE,
            vec![p(shape, x.clone()), p(&[last], w)],
            |g, ps, _| g.rms_norm(ps[0], ps[1], 1e-5).unwrap(),
        );
        let m = 3;
        let wl = rng.vec(m * last, -1.0, 1.0);
        let bl = rng.vec(m, -1.0, 1.0);
        check(
            &format!("linear {shape:?}"),
            seed + 5,
            FD,
            vec![p(shape, x.clone()), p(&[m, last], wl.clone()), p(&[m], bl)],
            |g, ps, _| g.linear(ps[0], ps[1], Some(ps[2])).unwrap(),
        );
        check(
            &format!("linear (no bias) {shape:?}"),
            seed + 6,
            FD,
            vec![p(shape, x), p(&[m, last], wl)],
            |g, ps, _| g.linear(ps[0], ps[1], None).unwrap(),
        );
    }
    // layer_norm with a single feature: the output is exactly b, d/dx = d/dw = 0.
    check(
        "layer_norm [3,1]",
        14100,
        FD,
        vec![
            p(&[3, 1], vec![0.3, -1.0, 2.0]),
            p(&[1], vec![1.2]),
            p(&[1], vec![0.1]),
        ],
        |g, ps, _| g.layer_norm(ps[0], ps[1], ps[2], 1e-5).unwrap(),
    );
}

#[test]
fn composed_forward_values() {
    // Spot-check the composed builders' forward values against host formulas.
    let xs = [-2.0f32, -0.3, 0.0, 0.7, 1.9];
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[1, 5]);
    let w = data(&mut g, "w", &[5]);
    let b = data(&mut g, "b", &[5]);
    let sm = g.softmax(x).unwrap();
    let ge = g.gelu(x).unwrap();
    let si = g.silu(x).unwrap();
    let ln = g.layer_norm(x, w, b, 1e-5).unwrap();
    let rn = g.rms_norm(x, w, 1e-5).unwrap();
    let mut inp = HashMap::new();
    inp.insert("x".to_string(), Tensor::f32(vec![1, 5], xs.to_vec()));
    inp.insert(
        "w".to_string(),
        Tensor::f32(vec![5], vec![1.0, 2.0, 0.5, 1.0, 1.0]),
    );
    inp.insert(
        "b".to_string(),
        Tensor::f32(vec![5], vec![0.0, 0.1, 0.0, -0.1, 0.0]),
    );
    let v = run(&g, &inp).unwrap();
    let xd: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
    let z: f64 = xd.iter().map(|v| v.exp()).sum();
    let want_sm: Vec<f32> = xd.iter().map(|v| (v.exp() / z) as f32).collect();
    assert_close(v[&sm].f(), &want_sm, 1e-6, "softmax");
    // Exact GELU x·Φ(x): Φ(-2) = 0.0227501, Φ(0.7) = 0.7580363, Φ(1.9) = 0.9712834.
    assert_close(
        &[v[&ge].f()[0], v[&ge].f()[3], v[&ge].f()[4]],
        &[-0.0455003, 0.5306252, 1.8454385],
        1e-5,
        "gelu",
    );
    let want_si: Vec<f32> = xd.iter().map(|v| (v / (1.0 + (-v).exp())) as f32).collect();
    assert_close(v[&si].f(), &want_si, 1e-6, "silu");
    let mu = xd.iter().sum::<f64>() / 5.0;
    let var = xd.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / 5.0;
    let (wv, bv) = ([1.0, 2.0, 0.5, 1.0, 1.0], [0.0, 0.1, 0.0, -0.1, 0.0]);
    let want_ln: Vec<f32> = (0..5)
        .map(|i| ((xd[i] - mu) / (var + 1e-5).sqrt() * wv[i] + bv[i]) as f32)
        .collect();
    assert_close(v[&ln].f(), &want_ln, 1e-5, "layer_norm");
    let ms = xd.iter().map(|v| v * v).sum::<f64>() / 5.0;
    let want_rn: Vec<f32> = (0..5)
        .map(|i| (xd[i] / (ms + 1e-5).sqrt() * wv[i]) as f32)
        .collect();
    assert_close(v[&rn].f(), &want_rn, 1e-5, "rms_norm");
}

// ---------------------------------------------------------------------------------------------
// Gradient blocking, frozen weights, top-k routing
// ---------------------------------------------------------------------------------------------

fn loss_of(g: &mut Graph, y: NodeId) -> NodeId {
    let s = g.shape(y).to_vec();
    let r = data(g, "r", &s);
    let pr = g.times(y, r).unwrap();
    g.sum_all(pr).unwrap()
}

#[test]
fn blocking_ops_give_no_gradient() {
    // stop_grad
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[3, 4]);
    let y = g.stop_grad(x).unwrap();
    let l = loss_of(&mut g, y);
    assert_eq!(grad(&mut g, l, &[x]).unwrap(), vec![None]);

    // TopKMask
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[3, 4]);
    let y = g.add(Op::TopKMask { k: 2 }, &[x]).unwrap();
    let l = loss_of(&mut g, y);
    assert_eq!(grad(&mut g, l, &[x]).unwrap(), vec![None]);

    // OneHot of an i64 "parameter", and of a cast float.
    let mut g = Graph::new();
    let i = input(&mut g, "i", InputKind::Param, &[3], DType::I64);
    let x = param(&mut g, "x", &[3]);
    let y = g.add(Op::OneHot { depth: 4 }, &[i]).unwrap();
    let c = g.add(Op::Cast { to: DType::I64 }, &[x]).unwrap();
    let y2 = g.add(Op::OneHot { depth: 4 }, &[c]).unwrap();
    let s = g.plus(y, y2).unwrap();
    let l = loss_of(&mut g, s);
    assert_eq!(grad(&mut g, l, &[i, x]).unwrap(), vec![None, None]);

    // Gt and Eq
    for b in [BinaryOp::Gt, BinaryOp::Eq] {
        let mut g = Graph::new();
        let x = param(&mut g, "x", &[2, 3]);
        let z = param(&mut g, "z", &[2, 3]);
        let y = g.add(Op::Binary(b), &[x, z]).unwrap();
        let l = loss_of(&mut g, y);
        assert_eq!(grad(&mut g, l, &[x, z]).unwrap(), vec![None, None], "{b:?}");
    }

    // A loss that does not depend on a parameter at all.
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[2]);
    let u = param(&mut g, "u", &[2]);
    let l = loss_of(&mut g, x);
    let gr = grad(&mut g, l, &[x, u]).unwrap();
    assert!(gr[0].is_some());
    assert_eq!(gr[1], None);
}

#[test]
fn stop_grad_blocks_only_its_own_path() {
    // loss = Σ (x + stop_grad(x)·x) · r  →  d/dx = r·(1 + x)  (not r·(1 + 2x)).
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[4]);
    let s = g.stop_grad(x).unwrap();
    let sx = g.times(s, x).unwrap();
    let y = g.plus(x, sx).unwrap();
    let l = loss_of(&mut g, y);
    let dx = grad(&mut g, l, &[x]).unwrap()[0].unwrap();
    let mut inp = HashMap::new();
    inp.insert(
        "x".to_string(),
        Tensor::f32(vec![4], vec![1., 2., -3., 0.5]),
    );
    inp.insert("r".to_string(), Tensor::f32(vec![4], vec![1., -1., 2., 4.]));
    let v = run(&g, &inp).unwrap();
    assert_eq!(v[&dx].f(), &[2., -3., -4., 6.]);
}

#[test]
fn frozen_weights_get_no_gradient_but_pass_it_through() {
    // h = ((x @ B) @ W) @ A with B, A trainable and W frozen; W's shape [5, 6] is unique.
    let build = |g: &mut Graph| {
        let x = data(g, "x", &[4, 3]);
        let b = param(g, "B", &[3, 5]);
        let w = input(g, "W", InputKind::Frozen, &[5, 6], DType::F32);
        let a = param(g, "A", &[6, 2]);
        let xb = g.matmul(x, b).unwrap();
        let xbw = g.matmul(xb, w).unwrap();
        let y = g.matmul(xbw, a).unwrap();
        (xb, b, a, y)
    };
    let mut g = Graph::new();
    let (xb, b, a, y) = build(&mut g);
    let l = loss_of(&mut g, y);
    let before: std::collections::HashSet<NodeId> = g.g.node_indices().collect();
    let gr = grad(&mut g, l, &[b, a]).unwrap();
    assert!(gr.iter().all(|o| o.is_some()));
    for id in g.g.node_indices().filter(|i| !before.contains(i)) {
        assert_ne!(
            g.shape(id),
            &[5, 6],
            "a W-shaped gradient node was built: {}",
            g.node(id).op.name()
        );
        // dW = (x B)ᵀ d(x B W) is the only gradient that would read x B.
        assert!(
            !g.inputs(id).contains(&xb),
            "x B is only needed for dW: {}",
            g.node(id).op.name()
        );
    }
    // And the values are right (FD through the frozen W).
    let mut rng = Rng::new(15000);
    let (xv, wv) = (rng.vec(12, -1.0, 1.0), rng.vec(30, -1.0, 1.0));
    check(
        "x@B@W@A",
        15000,
        FD,
        vec![
            p(&[3, 5], rng.vec(15, -1.0, 1.0)),
            p(&[6, 2], rng.vec(12, -1.0, 1.0)),
        ],
        |g, ps, extra| {
            let x = data(g, "x", &[4, 3]);
            let w = input(g, "W", InputKind::Frozen, &[5, 6], DType::F32);
            extra.insert("x".into(), Tensor::f32(vec![4, 3], xv));
            extra.insert("W".into(), Tensor::f32(vec![5, 6], wv));
            let xb = g.matmul(x, ps[0]).unwrap();
            let xbw = g.matmul(xb, w).unwrap();
            g.matmul(xbw, ps[1]).unwrap()
        },
    );
}

#[test]
fn topk_renormalised_routing_gradient() {
    // p = softmax(z); m = TopKMask(p); w = (p·m) / Σ(p·m). Logits are distinct (spacing ≥ 0.5)
    // so the selection does not change under the FD perturbation.
    for (ci, &(rows, e, k)) in [(3usize, 8usize, 2usize), (1, 3, 1), (4, 50, 3), (2, 4, 4)]
        .iter()
        .enumerate()
    {
        let seed = 16000 + ci as u64;
        let mut rng = Rng::new(seed);
        let mut z = Vec::new();
        for _ in 0..rows {
            z.extend(rng.distinct(e, 0.5));
        }
        check(
            &format!("top-{k} routing [{rows},{e}]"),
            seed,
            FD,
            vec![p(&[rows, e], z)],
            |g, ps, _| {
                let pr = g.softmax(ps[0]).unwrap();
                let m = g.add(Op::TopKMask { k }, &[pr]).unwrap();
                let pm = g.times(pr, m).unwrap();
                let s = g.sum(pm, 1).unwrap();
                g.over(pm, s).unwrap()
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Partial needs and second derivatives
// ---------------------------------------------------------------------------------------------

#[test]
fn only_one_operand_trainable() {
    // The other operand is a Data input: exercises the `needs[i] == false` branches.
    use BinaryOp::*;
    for (bi, &b) in [Add, Sub, Mul, Div, Pow, Max, Min].iter().enumerate() {
        for which in 0..2 {
            let seed = 17000 + (bi * 2 + which) as u64;
            let mut rng = Rng::new(seed);
            let (x, y) = match b {
                Div => (rng.vec(12, -2.0, 2.0), rng.signed(12, 0.5, 2.0)),
                Pow => (rng.vec(12, 0.5, 2.0), rng.vec(12, -1.5, 1.5)),
                Max | Min => {
                    let x = rng.vec(12, -1.0, 1.0);
                    let y = x
                        .iter()
                        .zip(rng.signed(12, 0.05, 1.0))
                        .map(|(a, d)| a + d)
                        .collect();
                    (x, y)
                }
                _ => (rng.vec(12, -2.0, 2.0), rng.vec(12, -2.0, 2.0)),
            };
            let (pv, dv) = if which == 0 { (x, y) } else { (y, x) };
            check(
                &format!("{b:?} with only operand {which} trainable"),
                seed,
                FD_FINE,
                vec![p(&[3, 4], pv)],
                |g, ps, extra| {
                    let d = data(g, "d", &[3, 4]);
                    extra.insert("d".into(), Tensor::f32(vec![3, 4], dv));
                    let ins = if which == 0 { [ps[0], d] } else { [d, ps[0]] };
                    g.add(Op::Binary(b), &ins).unwrap()
                },
            );
        }
    }
    // matmul, solve and concat with one trainable operand.
    for which in 0..2 {
        let mut rng = Rng::new(17100 + which);
        let (a, b) = (rng.vec(6, -1.0, 1.0), rng.vec(8, -1.0, 1.0));
        let (pv, ps_, dv, ds) = if which == 0 {
            (a, vec![3, 2], b, vec![2, 4])
        } else {
            (b, vec![2, 4], a, vec![3, 2])
        };
        check(
            &format!("matmul with only operand {which} trainable"),
            17100 + which,
            FD,
            vec![p(&ps_, pv)],
            |g, ps, extra| {
                let d = data(g, "d", &ds);
                extra.insert("d".into(), Tensor::f32(ds.clone(), dv));
                if which == 0 {
                    g.matmul(ps[0], d).unwrap()
                } else {
                    g.matmul(d, ps[0]).unwrap()
                }
            },
        );
        let a = spd(&mut rng, 1, 3);
        let b = rng.vec(6, -1.0, 1.0);
        let (pv, ps_, dv, ds, sym) = if which == 0 {
            (a, vec![3, 3], b, vec![3, 2], true)
        } else {
            (b, vec![3, 2], a, vec![3, 3], false)
        };
        let q = if sym { p_sym(&ps_, pv) } else { p(&ps_, pv) };
        check(
            &format!("spd_solve with only operand {which} trainable"),
            17110 + which,
            FD_FINE,
            vec![q],
            |g, ps, extra| {
                let d = data(g, "d", &ds);
                extra.insert("d".into(), Tensor::f32(ds.clone(), dv));
                let ins = if which == 0 { [ps[0], d] } else { [d, ps[0]] };
                g.add(Op::SpdSolve { damping: 0.0 }, &ins).unwrap()
            },
        );
    }
    let mut rng = Rng::new(17200);
    let (a, c) = (rng.vec(6, -1.0, 1.0), rng.vec(3, -1.0, 1.0));
    let dv = rng.vec(3, -1.0, 1.0);
    check(
        "concat [param, data, param]",
        17200,
        FD,
        vec![p(&[2, 3], a), p(&[1, 3], c)],
        |g, ps, extra| {
            let d = data(g, "d", &[1, 3]);
            extra.insert("d".into(), Tensor::f32(vec![1, 3], dv));
            g.add(Op::Concat { axis: 0 }, &[ps[0], d, ps[1]]).unwrap()
        },
    );
}

#[test]
fn second_derivatives() {
    // out = d/dx Σ f(x)·R1: checks the VJPs of the nodes that VJP rules emit.
    type F = fn(&mut Graph, NodeId) -> NodeId;
    let cases: &[(&str, F, f32, f32)] = &[
        ("tanh", |g, x| g.un(UnaryOp::Tanh, x).unwrap(), -2.0, 2.0),
        (
            "sigmoid",
            |g, x| g.un(UnaryOp::Sigmoid, x).unwrap(),
            -2.0,
            2.0,
        ),
        ("exp", |g, x| g.un(UnaryOp::Exp, x).unwrap(), -1.0, 1.0),
        ("log", |g, x| g.un(UnaryOp::Log, x).unwrap(), 0.5, 2.0),
        ("sqrt", |g, x| g.un(UnaryOp::Sqrt, x).unwrap(), 0.5, 2.0),
        ("recip", |g, x| g.un(UnaryOp::Recip, x).unwrap(), 0.5, 2.0),
        ("erf", |g, x| g.un(UnaryOp::Erf, x).unwrap(), -2.0, 2.0),
        ("sin", |g, x| g.un(UnaryOp::Sin, x).unwrap(), -2.0, 2.0),
        ("cos", |g, x| g.un(UnaryOp::Cos, x).unwrap(), -2.0, 2.0),
        (
            "x/(1+x²)",
            |g, x| {
                let s = g.times(x, x).unwrap();
                let one = g.scalar(1.0).unwrap();
                let d = g.plus(s, one).unwrap();
                g.over(x, d).unwrap()
            },
            -2.0,
            2.0,
        ),
        (
            "pow(x, 2.5)",
            |g, x| {
                let e = g.scalar(2.5).unwrap();
                g.bin(BinaryOp::Pow, x, e).unwrap()
            },
            0.5,
            2.0,
        ),
        ("softmax", |g, x| g.softmax(x).unwrap(), -2.0, 2.0),
        ("gelu", |g, x| g.gelu(x).unwrap(), -2.0, 2.0),
        (
            "x xᵀ",
            |g, x| {
                let xt = g.t(x).unwrap();
                g.matmul(x, xt).unwrap()
            },
            -1.0,
            1.0,
        ),
        (
            "rms_norm",
            |g, x| {
                let w = g.fill(&[4], 1.0).unwrap();
                g.rms_norm(x, w, 1e-5).unwrap()
            },
            -2.0,
            2.0,
        ),
        (
            "sum of slices and concat",
            |g, x| {
                let a = g.slice(x, 1, 0, 2).unwrap();
                let b = g.slice(x, 1, 1, 4).unwrap();
                let c = g.concat(&[a, b], 1).unwrap();
                let e = g.un(UnaryOp::Tanh, c).unwrap();
                let m = g.sum(e, 0).unwrap();
                g.times(m, m).unwrap()
            },
            -2.0,
            2.0,
        ),
    ];
    for (ci, &(name, f, lo, hi)) in cases.iter().enumerate() {
        let seed = 18000 + ci as u64;
        let mut rng = Rng::new(seed);
        let x = rng.vec(12, lo, hi);
        let r1 = rng.vec(12, -1.0, 1.0);
        check(
            &format!("second derivative of {name}"),
            seed,
            FD_FINE,
            vec![p(&[3, 4], x)],
            |g, ps, _| {
                let y = f(g, ps[0]);
                let s = g.shape(y).to_vec();
                let n = numel(&s);
                let r = g
                    .add(
                        Op::Literal {
                            shape: s,
                            data: std::sync::Arc::new(
                                r1[..n.min(12)].iter().cycle().take(n).copied().collect(),
                            ),
                        },
                        &[],
                    )
                    .unwrap();
                let pr = g.times(y, r).unwrap();
                let l = g.sum_all(pr).unwrap();
                grad(g, l, &[ps[0]]).unwrap()[0].unwrap()
            },
        );
    }
}

#[test]
fn grad_rejects_a_non_scalar_loss() {
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[2, 3]);
    let y = g.un(UnaryOp::Tanh, x).unwrap();
    assert!(grad(&mut g, y, &[x]).is_err());
    // [1, 1] counts as a scalar.
    let s = g.sum(y, 0).unwrap();
    let s = g.sum(s, 1).unwrap();
    assert!(grad(&mut g, s, &[x]).unwrap()[0].is_some());
}

/// The routed projection's gradients (`RoutedExpand` for `x`, `RoutedOuter` for `a`) against
/// central differences, and its values against plain `Dropout` with each selected expert's
/// salt followed by an f64 dot product (blocks of unselected experts are exactly 0).
#[test]
fn routed_project_gradients_and_masks() {
    use lorac_compiler::ir::ops::eval;
    let (t, n, e, d, k) = (5, 19, 4, 2, 2);
    let salts: Vec<u64> = vec![11, 22, 33, 44];
    let op = Op::RoutedProject {
        p: 0.4,
        salts: salts.clone(),
        k,
    };
    // Rows select experts {0, 2}, {1, 3}, {2, 3}, {0, 1}, {1, 2} (logits decide the top 2).
    let sel = [[0, 2], [1, 3], [2, 3], [0, 1], [1, 2]];
    let mut logits = vec![0f32; t * e];
    for (r, s) in sel.iter().enumerate() {
        for &x in s {
            logits[r * e + x] = 1.0 + x as f32;
        }
    }
    let mut rng = Rng::new(31);
    let (xv, av) = (rng.vec(t * n, -1.0, 1.0), rng.vec(e * d * n, -1.0, 1.0));
    let build_op = op.clone();
    let lv = logits.clone();
    check(
        "routed_project",
        7,
        FD,
        vec![p(&[t, n], xv.clone()), p(&[e * d, n], av.clone())],
        move |g, ps, extra| {
            let l = data(g, "logits", &[t, e]);
            let s = data_i64(g, "seed", &[1]);
            extra.insert("logits".into(), Tensor::f32(vec![t, e], lv));
            extra.insert("seed".into(), Tensor::i64(vec![1], vec![123]));
            let m = g.add(Op::TopKMask { k }, &[l]).unwrap();
            g.add(build_op, &[ps[0], ps[1], m, s]).unwrap()
        },
    );
    // Values: block e of row r is (dropout_e(x) row r) · a[e·d + q], other blocks 0.
    let mask = eval(&Op::TopKMask { k }, &[&Tensor::f32(vec![t, e], logits)]).unwrap();
    let (xt, at, st) = (
        Tensor::f32(vec![t, n], xv),
        Tensor::f32(vec![e * d, n], av.clone()),
        Tensor::i64(vec![1], vec![123]),
    );
    let out = eval(&op, &[&xt, &at, &mask, &st]).unwrap();
    assert_eq!(out.shape, vec![t, e * d]);
    for (r, s) in sel.iter().enumerate() {
        for (ex, &salt) in salts.iter().enumerate() {
            let dropped = eval(&Op::Dropout { p: 0.4, salt }, &[&xt, &st]).unwrap();
            for q in 0..d {
                let c = ex * d + q;
                let got = out.f()[r * e * d + c];
                if !s.contains(&ex) {
                    assert_eq!(got, 0.0, "row {r} unselected expert {ex}");
                    continue;
                }
                let want: f64 = (0..n)
                    .map(|j| dropped.f()[r * n + j] as f64 * av[c * n + j] as f64)
                    .sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "row {r} expert {ex}: {got} vs {want}"
                );
            }
        }
    }
}
