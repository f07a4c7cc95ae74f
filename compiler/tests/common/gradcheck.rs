//! The finite-difference harness shared by the `gradcheck_*` tests (split from one file by
//! op family): seeded data, parameter and data inputs, and [`check`], which differentiates a
//! case and compares every parameter's gradient with central differences.
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

// Re-exported for the test files (`use common::gradcheck::*`); not every file uses each.
#![allow(unused_imports)]

pub use lorac_compiler::ir::interp::run;
pub use lorac_compiler::ir::{
    BinaryOp, DType, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
pub use lorac_compiler::passes::autodiff::grad;
pub use std::collections::HashMap;

pub const ATOL: f64 = 2e-3;
pub const RTOL: f64 = 2e-2;
pub const MAX_COORDS: usize = 30;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// xorshift64* — tiny, seeded, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Magnitudes in [lo, hi] with a random sign (keeps values away from 0).
    pub fn signed(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
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
    pub fn distinct(&mut self, n: usize, step: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * step).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
    /// `k` distinct coordinates out of `n` (all of them when `n <= k`).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
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

pub fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

pub fn input(g: &mut Graph, name: &str, kind: InputKind, shape: &[usize], dtype: DType) -> NodeId {
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

pub fn param(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Param, shape, DType::F32)
}

pub fn data(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Data, shape, DType::F32)
}

pub fn data_i64(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    input(g, name, InputKind::Data, shape, DType::I64)
}

/// One parameter of a case: its shape, its initial values, and whether the FD perturbation
/// is symmetric over the last two axes (for SPD matrices read through their lower triangle).
pub struct P {
    pub shape: Vec<usize>,
    pub vals: Vec<f32>,
    pub sym: bool,
}

pub fn p(shape: &[usize], vals: Vec<f32>) -> P {
    assert_eq!(numel(shape), vals.len(), "test bug: values for {shape:?}");
    P {
        shape: shape.to_vec(),
        vals,
        sym: false,
    }
}

pub fn p_sym(shape: &[usize], vals: Vec<f32>) -> P {
    P {
        sym: true,
        ..p(shape, vals)
    }
}

/// Per-case FD settings.
#[derive(Clone, Copy)]
pub struct Fd {
    pub h: f32,
    pub atol: f64,
    pub rtol: f64,
}

pub const FD: Fd = Fd {
    h: 1e-2,
    atol: ATOL,
    rtol: RTOL,
};
pub const FD_FINE: Fd = Fd {
    h: 1e-3,
    atol: ATOL,
    rtol: RTOL,
};

pub type Extra = HashMap<String, Tensor>;

/// Builds a case, differentiates it and compares every parameter's gradient with central
/// differences. `build` gets the parameter nodes (named p0, p1, ...) and may add Data inputs
/// (with values put in `extra`); it returns the op output to check.
pub fn check(
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
pub const SHAPES: &[&[usize]] = &[&[1, 3], &[3, 50], &[50, 1], &[2, 1, 3]];

/// Asserts `got` and `want` agree within `tol` (absolute), element by element.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: got {a}, want {b} (all: {got:?})"
        );
    }
}

/// `M Mᵀ + I` for random `M[d, d]`, per batch block.
pub fn spd(rng: &mut Rng, batch: usize, d: usize) -> Vec<f32> {
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
