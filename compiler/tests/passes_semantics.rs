//! The optimisation pipeline (simplify, CSE, DCE) preserves semantics bit for bit.
//!
//! A seeded generator builds random graphs (10–40 nodes) over inputs, constants, unary and
//! broadcasting binary ops, reductions, matmuls, views, concat and softmax, with deliberately
//! redundant structure mixed in (duplicated subexpressions, x·1, x+0, -(-x), reshape∘reshape,
//! permute∘permute, broadcasts and arithmetic of constants, shared literals, dead nodes), plus
//! gather, top-k masks and damped SPD solves. Each graph is run
//! through the interpreter before and after `run_pipeline`; every output must be bit-identical
//! (NaN == NaN), the graph must verify, and the pipeline must have removed nodes.

use lorac_compiler::ir::compose::broadcast_shape;
use lorac_compiler::ir::verify::verify;
use lorac_compiler::ir::{
    BinaryOp, DType, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
use lorac_compiler::passes::{autodiff::grad, run_pipeline};
use std::collections::HashMap;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

const UNARY: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Tanh,
    UnaryOp::Erf,
    UnaryOp::Abs,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Sin,
    UnaryOp::Cos,
];
const BINARY: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Eq,
];
/// Constants the generator uses (the interesting ones for algebraic rewrites included).
const CONSTS: [f32; 8] = [0.0, 1.0, -1.0, 0.5, 2.0, -0.0, 3.0, 0.0];

/// Random graph builder.
struct Gen {
    g: Graph,
    rng: Rng,
    /// f32 nodes available as operands.
    pool: Vec<NodeId>,
    inputs: HashMap<String, Tensor>,
    /// Only smooth, differentiable ops (for the autodiff test).
    smooth: bool,
    /// Input kind for new inputs.
    kind: InputKind,
    /// Redundant structure deliberately added (count).
    redundancies: usize,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl Gen {
    fn new(seed: u64, smooth: bool, kind: InputKind) -> Gen {
        Gen {
            g: Graph::new(),
            rng: Rng::new(seed),
            pool: Vec::new(),
            inputs: HashMap::new(),
            smooth,
            kind,
            redundancies: 0,
        }
    }

    fn shape(&self, x: NodeId) -> Vec<usize> {
        self.g.shape(x).to_vec()
    }

    fn random_shape(&mut self) -> Vec<usize> {
        let rank = 1 + self.rng.below(3);
        (0..rank)
            .map(|_| self.rng.pick(&[1, 2, 3, 4, 1, 3]))
            .collect()
    }

    fn input(&mut self, shape: &[usize]) -> NodeId {
        let name = format!("in{}", self.inputs.len());
        let id = self
            .g
            .add(
                Op::Input {
                    name: name.clone(),
                    kind: self.kind,
                    shape: shape.to_vec(),
                    dtype: DType::F32,
                },
                &[],
            )
            .unwrap();
        let n = numel(shape);
        let smooth = self.smooth;
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                if !smooth && self.rng.chance(0.15) {
                    // Exact zeros of both signs and ones: where algebraic rewrites bite.
                    self.rng.pick(&[0.0, -0.0, 1.0, -1.0])
                } else {
                    self.rng.unit() * 4.0 - 2.0
                }
            })
            .collect();
        self.inputs.insert(name, Tensor::f32(shape.to_vec(), vals));
        self.pool.push(id);
        id
    }

    fn constant(&mut self, shape: &[usize]) -> NodeId {
        let v = self.rng.pick(&CONSTS);
        self.g.fill(shape, v).unwrap()
    }

    /// A pool operand, biased towards recent nodes.
    fn pick(&mut self) -> NodeId {
        let n = self.pool.len();
        if self.rng.chance(0.6) {
            self.pool[n - 1 - self.rng.below(n.min(4))]
        } else {
            self.pool[self.rng.below(n)]
        }
    }

    /// A pool node whose shape broadcasts with `x`'s, if any.
    fn compatible(&mut self, x: NodeId) -> Option<NodeId> {
        let xs = self.shape(x);
        let mut cands: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&y| broadcast_shape(&xs, self.g.shape(y)).is_some())
            .collect();
        self.rng.shuffle(&mut cands);
        cands.first().copied()
    }

    fn push(&mut self, id: NodeId) -> NodeId {
        self.pool.push(id);
        id
    }

    fn unary_op(&mut self) -> UnaryOp {
        if self.smooth {
            self.rng.pick(&[
                UnaryOp::Neg,
                UnaryOp::Tanh,
                UnaryOp::Sigmoid,
                UnaryOp::Sin,
                UnaryOp::Cos,
                UnaryOp::Erf,
                UnaryOp::Exp,
            ])
        } else {
            self.rng.pick(&UNARY)
        }
    }

    fn binary_op(&mut self) -> BinaryOp {
        if self.smooth {
            self.rng.pick(&[
                BinaryOp::Add,
                BinaryOp::Sub,
                BinaryOp::Mul,
                BinaryOp::Max,
                BinaryOp::Min,
            ])
        } else {
            self.rng.pick(&BINARY)
        }
    }

    /// A shape with the same element count.
    fn reshape_target(&mut self, s: &[usize]) -> Vec<usize> {
        match self.rng.below(4) {
            0 => vec![numel(s)],
            1 => s.iter().rev().copied().collect(),
            2 => {
                let mut t = s.to_vec();
                t.insert(self.rng.below(s.len() + 1), 1);
                t
            }
            _ => {
                let t: Vec<usize> = s.iter().copied().filter(|&d| d != 1).collect();
                if t.is_empty() {
                    vec![1]
                } else {
                    t
                }
            }
        }
    }

    fn random_perm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut p);
        p
    }

    /// One random construction step.
    fn step(&mut self) {
        let x = self.pick();
        let xs = self.shape(x);
        let r = xs.len();
        match self.rng.below(26) {
            0..=2 => {
                let u = self.unary_op();
                let y = self.g.un(u, x).unwrap();
                self.push(y);
            }
            3..=6 => {
                let b = self.binary_op();
                let y = match self.rng.below(4) {
                    0 => self.compatible(x).unwrap_or(x),
                    1 => self.constant(&[]),
                    2 => x,
                    _ => {
                        // A reduced copy of x broadcasts back against it.
                        if r == 0 {
                            x
                        } else {
                            let axis = self.rng.below(r);
                            self.g.sum(x, axis).unwrap()
                        }
                    }
                };
                let (a, c) = if self.rng.chance(0.5) { (x, y) } else { (y, x) };
                let z = self.g.bin(b, a, c).unwrap();
                self.push(z);
            }
            7 | 8 if r >= 1 => {
                let op = if self.rng.chance(0.5) {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Max
                };
                let axis = self.rng.below(r);
                let y = self.g.add(Op::Reduce { op, axis }, &[x]).unwrap();
                self.push(y);
            }
            9 if r >= 2 => {
                let y = if self.rng.chance(0.5) {
                    let xt = self.g.t(x).unwrap();
                    self.g.matmul(x, xt).unwrap()
                } else {
                    let mut s = xs.clone();
                    s[r - 2] = xs[r - 1];
                    s[r - 1] = self.rng.pick(&[1, 2, 3]);
                    let w = self.input(&s);
                    self.g.matmul(x, w).unwrap()
                };
                self.push(y);
            }
            10 if r >= 1 => {
                let t = self.reshape_target(&xs);
                let y = self.g.add(Op::Reshape { shape: t }, &[x]).unwrap();
                self.push(y);
            }
            11 if r >= 2 => {
                let p = self.random_perm(r);
                let y = self.g.add(Op::Permute { perm: p }, &[x]).unwrap();
                self.push(y);
            }
            12 if r >= 1 => {
                let axes: Vec<usize> = (0..r).filter(|&a| xs[a] >= 2).collect();
                if let Some(&axis) = axes.get(self.rng.below(axes.len().max(1))) {
                    let start = self.rng.below(xs[axis]);
                    let end = start + 1 + self.rng.below(xs[axis] - start);
                    let y = self.g.add(Op::Slice { axis, start, end }, &[x]).unwrap();
                    self.push(y);
                }
            }
            13 if r >= 1 => {
                let axis = self.rng.below(r);
                let same: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&y| self.g.shape(y) == xs.as_slice())
                    .collect();
                let y = self.rng.pick(&same);
                let mut parts = vec![x, y];
                if self.rng.chance(0.3) {
                    parts.push(x);
                }
                let z = self.g.add(Op::Concat { axis }, &parts).unwrap();
                self.push(z);
            }
            14 if r >= 1 => {
                let y = self.g.softmax(x).unwrap();
                self.push(y);
            }
            15 => {
                let mut s = vec![self.rng.pick(&[2, 3])];
                s.extend(&xs);
                let y = self.g.add(Op::Broadcast { shape: s }, &[x]).unwrap();
                self.push(y);
            }
            16..=21 => self.redundant(x),
            22 if r >= 1 && xs[0] >= 1 => {
                let is = if self.rng.chance(0.5) {
                    vec![1 + self.rng.below(4)]
                } else {
                    vec![2, 2]
                };
                let name = format!("idx{}", self.inputs.len());
                let idx = self
                    .g
                    .add(
                        Op::Input {
                            name: name.clone(),
                            kind: InputKind::Data,
                            shape: is.clone(),
                            dtype: DType::I64,
                        },
                        &[],
                    )
                    .unwrap();
                let vals = (0..numel(&is))
                    .map(|_| self.rng.below(xs[0]) as i64)
                    .collect();
                self.inputs.insert(name, Tensor::i64(is, vals));
                let y = self.g.add(Op::Gather, &[x, idx]).unwrap();
                self.push(y);
            }
            23 if r >= 1 && !self.smooth => {
                let k = 1 + self.rng.below(xs[r - 1]);
                let m = self.g.add(Op::TopKMask { k }, &[x]).unwrap();
                let y = self.g.times(x, m).unwrap();
                self.push(y);
            }
            24 => {
                // Two literal nodes sharing one buffer: CSE merges them.
                let data: Vec<f32> = (0..numel(&xs)).map(|_| self.rng.unit() - 0.5).collect();
                let data = std::sync::Arc::new(data);
                let l1 = self
                    .g
                    .add(
                        Op::Literal {
                            shape: xs.clone(),
                            data: data.clone(),
                        },
                        &[],
                    )
                    .unwrap();
                let l2 = self
                    .g
                    .add(
                        Op::Literal {
                            shape: xs.clone(),
                            data,
                        },
                        &[],
                    )
                    .unwrap();
                self.redundancies += 1;
                let a = self.g.times(x, l1).unwrap();
                let y = self.g.plus(a, l2).unwrap();
                self.push(y);
            }
            25 if r >= 2 => {
                let m = xs[r - 2];
                let xt = self.g.t(x).unwrap();
                let a = self.g.matmul(x, xt).unwrap();
                let eye: Vec<f32> = (0..m * m)
                    .map(|i| if i % (m + 1) == 0 { 1.0 } else { 0.0 })
                    .collect();
                let eye = self
                    .g
                    .add(
                        Op::Literal {
                            shape: vec![m, m],
                            data: std::sync::Arc::new(eye),
                        },
                        &[],
                    )
                    .unwrap();
                let a = self.g.plus(a, eye).unwrap();
                let y = self.g.add(Op::SpdSolve { damping: 0.1 }, &[a, x]).unwrap();
                self.push(y);
            }
            _ => {
                let s = self.random_shape();
                self.input(&s);
            }
        }
    }

    /// One piece of deliberately redundant structure built on `x`.
    fn redundant(&mut self, x: NodeId) {
        self.redundancies += 1;
        let xs = self.shape(x);
        let r = xs.len();
        match self.rng.below(9) {
            // A duplicated subexpression: the same op on the same operands again.
            0 => {
                let cands: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&n| !self.g.node(n).op.is_leaf())
                    .collect();
                if cands.is_empty() {
                    let a = self.g.un(UnaryOp::Tanh, x).unwrap();
                    let b = self.g.un(UnaryOp::Tanh, x).unwrap();
                    let c = self.g.plus(a, b).unwrap();
                    self.push(c);
                } else {
                    let n = self.rng.pick(&cands);
                    let op = self.g.node(n).op.clone();
                    let ins = self.g.inputs(n);
                    let d = self.g.add(op, &ins).unwrap();
                    let c = self.g.times(n, d).unwrap();
                    self.push(c);
                }
            }
            // x * 1, 1 * x, x / 1
            1 => {
                let one = self.g.scalar(1.0).unwrap();
                let y = match self.rng.below(3) {
                    0 => self.g.times(x, one).unwrap(),
                    1 => self.g.times(one, x).unwrap(),
                    _ => self.g.over(x, one).unwrap(),
                };
                self.push(y);
            }
            // x + 0, 0 + x, x - 0
            2 => {
                let zero = self.g.scalar(0.0).unwrap();
                let y = match self.rng.below(3) {
                    0 => self.g.plus(x, zero).unwrap(),
                    1 => self.g.plus(zero, x).unwrap(),
                    _ => self.g.minus(x, zero).unwrap(),
                };
                self.push(y);
            }
            // -(-x)
            3 => {
                let n = self.g.neg(x).unwrap();
                let y = self.g.neg(n).unwrap();
                self.push(y);
            }
            // reshape ∘ reshape
            4 => {
                let t1 = self.reshape_target(&xs);
                let a = self.g.add(Op::Reshape { shape: t1.clone() }, &[x]).unwrap();
                let t2 = if self.rng.chance(0.3) {
                    xs.clone()
                } else {
                    self.reshape_target(&t1)
                };
                let y = self.g.add(Op::Reshape { shape: t2 }, &[a]).unwrap();
                self.push(y);
            }
            // permute ∘ permute (sometimes the inverse: the identity)
            5 if r >= 2 => {
                let p1 = self.random_perm(r);
                let a = self.g.add(Op::Permute { perm: p1.clone() }, &[x]).unwrap();
                let p2 = if self.rng.chance(0.4) {
                    let mut inv = vec![0; r];
                    for (i, &p) in p1.iter().enumerate() {
                        inv[p] = i;
                    }
                    inv
                } else {
                    self.random_perm(r)
                };
                let y = self.g.add(Op::Permute { perm: p2 }, &[a]).unwrap();
                self.push(y);
            }
            // Broadcasts, views and arithmetic of constants (constant folding).
            6 => {
                let c = self.constant(&[]);
                let mut s = vec![2];
                s.extend(&xs);
                let cb = self
                    .g
                    .add(Op::Broadcast { shape: s.clone() }, &[c])
                    .unwrap();
                let u = self.unary_op();
                let cu = self.g.un(u, cb).unwrap();
                let c2 = self.constant(&s);
                let cc = self.g.bin(BinaryOp::Add, cu, c2).unwrap();
                let b = self.binary_op();
                let y = self.g.bin(b, x, cc).unwrap();
                self.push(y);
            }
            // A dead chain.
            7 => {
                let a = self.g.un(UnaryOp::Exp, x).unwrap();
                let _ = self.g.times(a, x).unwrap();
            }
            // stop_grad / reshape / permute of constants.
            _ => {
                let c = self.constant(&xs);
                let c = self.g.stop_grad(c).unwrap();
                let c = if r >= 2 {
                    let perm = self.random_perm(r);
                    self.g.add(Op::Permute { perm }, &[c]).unwrap()
                } else {
                    c
                };
                let s = self.shape(c);
                let c = self
                    .g
                    .add(
                        Op::Reshape {
                            shape: vec![numel(&s)],
                        },
                        &[c],
                    )
                    .unwrap();
                let c = self.g.add(Op::Reshape { shape: s }, &[c]).unwrap();
                let c = self
                    .g
                    .add(
                        Op::Permute {
                            perm: (0..r).rev().collect(),
                        },
                        &[c],
                    )
                    .unwrap();
                let c = self
                    .g
                    .add(
                        Op::Permute {
                            perm: (0..r).rev().collect(),
                        },
                        &[c],
                    )
                    .unwrap();
                let c = if self.g.shape(c) == xs.as_slice() {
                    c
                } else {
                    self.g.add(Op::Reshape { shape: xs.clone() }, &[c]).unwrap()
                };
                let b = self.binary_op();
                let y = self.g.bin(b, x, c).unwrap();
                self.push(y);
            }
        }
    }

    /// Builds a graph of about `target` nodes with 1–3 outputs.
    fn build(&mut self, target: usize) {
        let n_in = 1 + self.rng.below(3);
        for _ in 0..n_in {
            let s = self.random_shape();
            self.input(&s);
        }
        // At least one piece of redundancy in every graph.
        let x = self.pick();
        self.redundant(x);
        while self.g.len() < target {
            self.step();
        }
        let last = *self.pool.last().unwrap();
        self.g.set_output("out0", last);
        for k in 1..=self.rng.below(3) {
            let o = self.pick();
            self.g.set_output(&format!("out{k}"), o);
        }
        // Most other unused pool nodes are outputs too, so most of the computation is
        // compared; the rest (and the deliberately dead chains) is dead code.
        let sinks: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&n| self.g.users(n).is_empty() && !self.g.node(n).op.is_leaf())
            .collect();
        for (k, n) in sinks.into_iter().enumerate() {
            if self.rng.chance(0.7) {
                self.g.set_output(&format!("sink{k}"), n);
            }
        }
    }
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Outputs by name.
fn outputs(g: &Graph, inputs: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    lorac_compiler::ir::interp::run_outputs(g, inputs).unwrap_or_else(|e| panic!("run failed: {e}"))
}

fn assert_bit_identical(before: &[(String, Tensor)], after: &[(String, Tensor)], what: &str) {
    assert_eq!(before.len(), after.len(), "{what}: output count");
    for ((n0, t0), (n1, t1)) in before.iter().zip(after) {
        assert_eq!(n0, n1, "{what}: output order");
        assert_eq!(t0.shape, t1.shape, "{what}: shape of `{n0}`");
        for (i, (a, b)) in t0.f().iter().zip(t1.f()).enumerate() {
            assert!(
                same_bits(*a, *b),
                "{what}: `{n0}`[{i}] was {a:e} ({:#010x}), is {b:e} ({:#010x})",
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

#[test]
fn pipeline_preserves_random_graphs_bit_for_bit() {
    let (mut before_total, mut after_total, mut rewritten) = (0, 0, 0);
    // Nodes left by DCE alone, and graphs where simplify + CSE removed more than DCE alone.
    let (mut dce_total, mut beat_dce) = (0, 0);
    for seed in 0..200u64 {
        let mut gen = Gen::new(seed, false, InputKind::Data);
        let target = 10 + gen.rng.below(31);
        gen.build(target);
        let mut g = gen.g;
        verify(&g).unwrap_or_else(|e| panic!("seed {seed}: generated graph does not verify: {e}"));
        let want = outputs(&g, &gen.inputs);
        let n0 = g.len();
        let text_before = lorac_compiler::ir::print::to_text(&g);
        let mut only_dce = g.clone();
        lorac_compiler::passes::run_pass("dce", &mut only_dce).unwrap();
        assert_bit_identical(
            &want,
            &outputs(&only_dce, &gen.inputs),
            &format!("seed {seed}: dce"),
        );
        run_pipeline(&mut g, |pass, g| {
            verify(g).unwrap_or_else(|e| panic!("seed {seed}: after {pass}: {e}"))
        })
        .unwrap();
        verify(&g).unwrap();
        let got = outputs(&g, &gen.inputs);
        assert_bit_identical(
            &want,
            &got,
            &format!(
                "seed {seed}\n{text_before}\nafter:\n{}",
                lorac_compiler::ir::print::to_text(&g)
            ),
        );
        let n1 = g.len();
        assert!(
            n1 < n0,
            "seed {seed}: the pipeline did not shrink a graph with {} redundancies ({n0} nodes)",
            gen.redundancies
        );
        // A second run finds nothing left to do.
        let mut g2 = g.clone();
        run_pipeline(&mut g2, |_, _| {}).unwrap();
        assert_eq!(g2.len(), n1, "seed {seed}: the pipeline is not idempotent");
        before_total += n0;
        after_total += n1;
        dce_total += only_dce.len();
        beat_dce += usize::from(n1 < only_dce.len());
        rewritten += 1;
    }
    assert_eq!(rewritten, 200);
    eprintln!("nodes: {before_total} built, {dce_total} after DCE alone, {after_total} after the pipeline");
    // The live redundancy is removed too, not just the dead nodes.
    assert!(
        beat_dce >= 150,
        "simplify + CSE improved on DCE alone in only {beat_dce}/200 graphs"
    );
    assert!(
        after_total * 10 < dce_total * 8,
        "expected simplify + CSE to remove ≥20% of the live nodes: {dce_total} → {after_total}"
    );
    assert!(
        after_total * 10 < before_total * 9,
        "expected ≥10% fewer nodes overall: {before_total} → {after_total}"
    );
}

#[test]
fn autodiff_then_pipeline_preserves_gradients_bit_for_bit() {
    for seed in 0..200u64 {
        let mut gen = Gen::new(1000 + seed, true, InputKind::Param);
        let target = 10 + gen.rng.below(21);
        gen.build(target);
        let mut g = gen.g;
        let params: Vec<NodeId> = g
            .inputs_of_kind(InputKind::Param)
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        // loss = Σ_outputs Σ out · R_out with fixed random R.
        let outs: Vec<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
        let mut loss = None;
        let mut inputs = gen.inputs.clone();
        let mut rng = Rng::new(seed + 77);
        for (k, o) in outs.iter().enumerate() {
            let s = g.shape(*o).to_vec();
            let name = format!("r{k}");
            let r = g
                .add(
                    Op::Input {
                        name: name.clone(),
                        kind: InputKind::Data,
                        shape: s.clone(),
                        dtype: DType::F32,
                    },
                    &[],
                )
                .unwrap();
            inputs.insert(
                name,
                Tensor::f32(
                    s.clone(),
                    (0..numel(&s)).map(|_| rng.unit() * 2.0 - 1.0).collect(),
                ),
            );
            let pr = g.times(*o, r).unwrap();
            let l = g.sum_all(pr).unwrap();
            loss = Some(match loss {
                None => l,
                Some(p) => g.plus(p, l).unwrap(),
            });
        }
        let loss = loss.unwrap();
        g.outputs.clear();
        g.set_output("loss", loss);
        let grads = grad(&mut g, loss, &params).unwrap();
        let mut n_grads = 0;
        for (k, gr) in grads.iter().enumerate() {
            if let Some(gr) = gr {
                g.set_output(&format!("d{k}"), *gr);
                n_grads += 1;
            }
        }
        assert!(n_grads > 0, "seed {seed}: no parameter reaches the loss");
        verify(&g).unwrap();
        let want = outputs(&g, &inputs);
        let n0 = g.len();
        run_pipeline(&mut g, |pass, g| {
            verify(g).unwrap_or_else(|e| panic!("seed {seed}: after {pass}: {e}"))
        })
        .unwrap();
        let got = outputs(&g, &inputs);
        assert_bit_identical(&want, &got, &format!("autodiff seed {seed}"));
        assert!(
            g.len() < n0,
            "seed {seed}: the gradient graph was not simplified at all"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Each redundancy pattern, one at a time, with the expected result.
// ---------------------------------------------------------------------------------------------

fn data(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    g.add(
        Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype: DType::F32,
        },
        &[],
    )
    .unwrap()
}

/// Runs the pipeline on a graph with output `y` and returns the ops left (sorted names).
fn optimised(mut g: Graph, y: NodeId, inputs: &[(&str, Tensor)]) -> (Graph, Vec<String>) {
    g.set_output("y", y);
    let inputs: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let want = outputs(&g, &inputs);
    run_pipeline(&mut g, |_, _| {}).unwrap();
    verify(&g).unwrap();
    assert_bit_identical(&want, &outputs(&g, &inputs), "pattern");
    let mut ops: Vec<String> = g.g.node_indices().map(|i| g.node(i).op.name()).collect();
    ops.sort();
    (g, ops)
}

fn x23() -> (&'static str, Tensor) {
    (
        "x",
        Tensor::f32(vec![2, 3], vec![1.5, -0.0, 0.0, -2.0, 3.0, f32::NAN]),
    )
}

#[test]
fn pattern_mul_by_one_and_div_by_one() {
    for k in 0..3 {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3]);
        let one = g.scalar(1.0).unwrap();
        let y = match k {
            0 => g.times(x, one).unwrap(),
            1 => g.times(one, x).unwrap(),
            _ => g.over(x, one).unwrap(),
        };
        let y = g.un(UnaryOp::Exp, y).unwrap();
        let (_, ops) = optimised(g, y, &[x23()]);
        assert_eq!(ops, vec!["exp", "input.data(x)"], "case {k}");
    }
}

#[test]
fn pattern_add_zero_keeps_the_sign_of_zero() {
    // x + 0 and 0 + x turn -0 into +0, so they may only be removed when that cannot matter;
    // x - 0 and x + (-0) are exact. 1/y exposes the sign of a zero.
    for k in 0..4 {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3]);
        let y = match k {
            0 => {
                let z = g.scalar(0.0).unwrap();
                g.plus(x, z).unwrap()
            }
            1 => {
                let z = g.scalar(0.0).unwrap();
                g.plus(z, x).unwrap()
            }
            2 => {
                let z = g.scalar(0.0).unwrap();
                g.minus(x, z).unwrap()
            }
            _ => {
                let z = g.scalar(-0.0).unwrap();
                g.plus(x, z).unwrap()
            }
        };
        let y = g.un(UnaryOp::Recip, y).unwrap();
        let (_, ops) = optimised(g, y, &[x23()]);
        if k >= 2 {
            assert_eq!(ops, vec!["input.data(x)", "recip"], "case {k}");
        } else {
            assert_eq!(ops.len(), 4, "case {k}: x + (+0) must stay: {ops:?}");
        }
    }
}

#[test]
fn pattern_double_negation() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.neg(x).unwrap();
    let b = g.neg(a).unwrap();
    let y = g.un(UnaryOp::Sin, b).unwrap();
    let (_, ops) = optimised(g, y, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)", "sin"]);
}

#[test]
fn pattern_reshape_chains() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.add(Op::Reshape { shape: vec![6] }, &[x]).unwrap();
    let b = g.add(Op::Reshape { shape: vec![3, 2] }, &[a]).unwrap();
    let c = g.add(Op::Reshape { shape: vec![1, 6] }, &[b]).unwrap();
    let (g2, ops) = optimised(g, c, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)", "reshape"]);
    assert_eq!(g2.shape(g2.output("y").unwrap()), &[1, 6]);
    // Back to the original shape: nothing left but the input.
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.add(Op::Reshape { shape: vec![6] }, &[x]).unwrap();
    let b = g.add(Op::Reshape { shape: vec![2, 3] }, &[a]).unwrap();
    let (g2, ops) = optimised(g, b, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)"]);
    assert_eq!(g2.output("y"), g2.find_input("x"));
}

#[test]
fn pattern_permute_chains() {
    let x4 = (
        "x",
        Tensor::f32(vec![2, 3, 4], (0..24).map(|v| v as f32).collect()),
    );
    // Inverse pairs vanish; other pairs compose into one permute with the right result.
    for (p1, p2) in [
        ([1usize, 2, 0], [2usize, 0, 1]),
        ([1, 0, 2], [1, 0, 2]),
        ([2, 0, 1], [0, 2, 1]),
        ([1, 2, 0], [1, 2, 0]),
    ] {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3, 4]);
        let a = g.add(Op::Permute { perm: p1.to_vec() }, &[x]).unwrap();
        let b = g.add(Op::Permute { perm: p2.to_vec() }, &[a]).unwrap();
        let (_, ops) = optimised(g, b, std::slice::from_ref(&x4));
        let identity = (0..3).all(|i| p1[p2[i]] == i);
        if identity {
            assert_eq!(ops, vec!["input.data(x)"], "{p1:?} then {p2:?}");
        } else {
            assert_eq!(ops.len(), 2, "{p1:?} then {p2:?}: {ops:?}");
        }
    }
}

#[test]
fn pattern_constants_fold() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let c = g.scalar(2.0).unwrap();
    let cb = g.add(Op::Broadcast { shape: vec![2, 3] }, &[c]).unwrap();
    let e = g.un(UnaryOp::Exp, cb).unwrap();
    let h = g.fill(&[2, 3], 0.5).unwrap();
    let p = g.times(e, h).unwrap();
    let s = g.stop_grad(p).unwrap();
    let r = g.add(Op::Reshape { shape: vec![3, 2] }, &[s]).unwrap();
    let t = g.t(r).unwrap();
    let y = g.times(x, t).unwrap();
    let (g2, ops) = optimised(g, y, &[x23()]);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.contains(&"mul".to_string()));
    let fills: Vec<f32> =
        g2.g.node_indices()
            .filter_map(|i| match g2.node(i).op {
                Op::Fill { value, .. } => Some(value),
                _ => None,
            })
            .collect();
    assert_eq!(fills, vec![2f32.exp() * 0.5]);
}

#[test]
fn pattern_duplicates_merge_and_dead_nodes_go() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let w = data(&mut g, "w", &[3, 4]);
    let _unused = data(&mut g, "unused", &[5]);
    let a1 = g.matmul(x, w).unwrap();
    let a2 = g.matmul(x, w).unwrap();
    let t1 = g.un(UnaryOp::Tanh, a1).unwrap();
    let t2 = g.un(UnaryOp::Tanh, a2).unwrap();
    let y = g.plus(t1, t2).unwrap();
    let dead = g.un(UnaryOp::Exp, y).unwrap();
    let _ = g.sum(dead, 0).unwrap();
    // Different constants must not merge (0.0 vs -0.0 included).
    let z1 = g.fill(&[2, 4], 0.0).unwrap();
    let z2 = g.fill(&[2, 4], -0.0).unwrap();
    let q = g.add(Op::Binary(BinaryOp::Div), &[z1, z2]).unwrap();
    let y = g.plus(y, q).unwrap();
    let wv = Tensor::f32(vec![3, 4], (0..12).map(|v| v as f32 * 0.1 - 0.5).collect());
    let (_, ops) = optimised(
        g,
        y,
        &[
            x23(),
            ("w", wv),
            ("unused", Tensor::f32(vec![5], vec![0.0; 5])),
        ],
    );
    // matmul, tanh, add(t, t), the folded 0/-0 = NaN fill, add, x, w.
    assert_eq!(
        ops,
        vec![
            "add",
            "add",
            "fill(NaN)",
            "input.data(w)",
            "input.data(x)",
            "matmul",
            "tanh"
        ]
    );
}
