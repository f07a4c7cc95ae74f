//! The seeded random-graph generator shared by the `passes_*` tests (split from one file):
//! graphs of 10–40 nodes over inputs, constants, unary and broadcasting binary ops,
//! reductions, matmuls, views, concat and softmax, with deliberately redundant structure mixed
//! in (duplicated subexpressions, x·1, x+0, -(-x), reshape∘reshape, permute∘permute, broadcasts
//! and arithmetic of constants, shared literals, dead nodes), plus gather, top-k masks and
//! damped SPD solves; and the bit-for-bit comparison of two runs' outputs.

// Re-exported for the test files (`use common::graphgen::*`); not every file uses each.
#![allow(unused_imports)]

pub use lorac_compiler::ir::compose::broadcast_shape;
pub use lorac_compiler::ir::verify::verify;
pub use lorac_compiler::ir::{
    BinaryOp, DType, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
pub use lorac_compiler::passes::{autodiff::grad, run_pipeline};
pub use std::collections::HashMap;

pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

pub use super::{BINARY, UNARY};
/// Constants the generator uses (the interesting ones for algebraic rewrites included).
pub const CONSTS: [f32; 8] = [0.0, 1.0, -1.0, 0.5, 2.0, -0.0, 3.0, 0.0];

/// Random graph builder.
pub struct Gen {
    pub g: Graph,
    pub rng: Rng,
    /// f32 nodes available as operands.
    pub pool: Vec<NodeId>,
    pub inputs: HashMap<String, Tensor>,
    /// Only smooth, differentiable ops (for the autodiff test).
    pub smooth: bool,
    /// Input kind for new inputs.
    pub kind: InputKind,
    /// Redundant structure deliberately added (count).
    pub redundancies: usize,
}

pub fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl Gen {
    pub fn new(seed: u64, smooth: bool, kind: InputKind) -> Gen {
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

    pub fn shape(&self, x: NodeId) -> Vec<usize> {
        self.g.shape(x).to_vec()
    }

    pub fn random_shape(&mut self) -> Vec<usize> {
        let rank = 1 + self.rng.below(3);
        (0..rank)
            .map(|_| self.rng.pick(&[1, 2, 3, 4, 1, 3]))
            .collect()
    }

    pub fn input(&mut self, shape: &[usize]) -> NodeId {
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

    pub fn constant(&mut self, shape: &[usize]) -> NodeId {
        let v = self.rng.pick(&CONSTS);
        self.g.fill(shape, v).unwrap()
    }

    /// A pool operand, biased towards recent nodes.
    pub fn pick(&mut self) -> NodeId {
        let n = self.pool.len();
        if self.rng.chance(0.6) {
            self.pool[n - 1 - self.rng.below(n.min(4))]
        } else {
            self.pool[self.rng.below(n)]
        }
    }

    /// A pool node whose shape broadcasts with `x`'s, if any.
    pub fn compatible(&mut self, x: NodeId) -> Option<NodeId> {
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

    pub fn push(&mut self, id: NodeId) -> NodeId {
        self.pool.push(id);
        id
    }

    pub fn unary_op(&mut self) -> UnaryOp {
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

    pub fn binary_op(&mut self) -> BinaryOp {
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
    pub fn reshape_target(&mut self, s: &[usize]) -> Vec<usize> {
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

    pub fn random_perm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut p);
        p
    }

    /// One random construction step.
    pub fn step(&mut self) {
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
    pub fn redundant(&mut self, x: NodeId) {
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
    pub fn build(&mut self, target: usize) {
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

pub fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Outputs by name.
pub fn outputs(g: &Graph, inputs: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    lorac_compiler::ir::interp::run_outputs(g, inputs).unwrap_or_else(|e| panic!("run failed: {e}"))
}

pub fn assert_bit_identical(before: &[(String, Tensor)], after: &[(String, Tensor)], what: &str) {
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
