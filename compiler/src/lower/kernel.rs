//! Backend-neutral fused kernels: a loop nest over a `(rows, inner)` iteration space with an
//! SSA body of elementwise instructions. The CPU backend JIT-compiles these with Cranelift;
//! the CUDA backend renders the same description as CUDA C.

use crate::ir::ops::elementwise::{binary_fn, unary_fn};
use crate::ir::{BinaryOp, ReduceOp, UnaryOp};

/// How an operand is addressed at iteration point `(r, j)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A row vector per group of `div` rows: element `(r / div) * inner + j`.
    Vec { div: usize },
    /// One value per group of `div` rows, shared by every `j`: element `r / div`.
    Splat { div: usize },
    /// The left factor of a fused product ([`Inst::Dot`]): row `r`'s `k` values, elements
    /// `r·k .. r·k + k`.
    DotRows { k: usize },
    /// The right factor of a fused product: a `k × inner` matrix, element `(p, j)` at
    /// `p·inner + j`.
    DotCols { k: usize },
}

/// One SSA instruction of a kernel body; operands name earlier instructions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inst {
    /// The value of operand `k` at the current point.
    Load(usize),
    /// A constant.
    Const(f32),
    /// Elementwise unary.
    Unary(UnaryOp, usize),
    /// Elementwise binary.
    Binary(BinaryOp, usize, usize),
    /// `Σ_p a[r, p]·b[p, j]` over operands `a` ([`Access::DotRows`]) and `b`
    /// ([`Access::DotCols`]): a product with a thin inner dimension (a LoRA rank), computed
    /// where it is read. One fused multiply-add chain from +0 in increasing `p`, the
    /// definition `ir::ops::thin` gives every product with `k ≤ 16`.
    Dot(usize, usize),
}

/// What a kernel does with its body's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// Stores every output at `r * inner + j`.
    Map,
    /// Reduces the single output over `j`: `out[r]`.
    RowReduce(ReduceOp),
    /// Reduces the single output over `r`: `out[j]` (the executor seeds `out` with the identity).
    ColReduce(ReduceOp),
}

/// A fused kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Stable name (for dumps and generated source).
    pub name: String,
    /// Loop form.
    pub form: Form,
    /// Outer extent.
    pub rows: usize,
    /// Inner (contiguous) extent.
    pub inner: usize,
    /// Operand addressing, in operand order.
    pub operands: Vec<Access>,
    /// SSA body.
    pub body: Vec<Inst>,
    /// Body values stored as outputs, in output order.
    pub outputs: Vec<usize>,
}

impl Access {
    /// Element index of operand at `(r, j)`.
    pub fn index(self, r: usize, j: usize, inner: usize) -> usize {
        match self {
            Access::Vec { div } => (r / div) * inner + j,
            Access::Splat { div } => r / div,
            // Where the factor's run for this point starts (its step is 1 or `inner`).
            Access::DotRows { k } => r * k,
            Access::DotCols { .. } => j,
        }
    }
}

impl Kernel {
    /// Gives a map over narrow rows (`inner` < 64: gate weights, per-token scalars) wider rows
    /// when every operand is read element for element, so the vector loop, not the per-row
    /// overhead, does the work. Element `(r, j)` stays element `r·inner + j`.
    pub fn retile(&mut self) {
        let total = self.rows * self.inner;
        let inner = self.inner;
        let elementwise = |a: &Access| match *a {
            Access::Vec { div } => div == 1,
            // A per-row scalar of single-element rows is that element.
            Access::Splat { div } => div == 1 && inner == 1,
            Access::DotRows { .. } | Access::DotCols { .. } => false,
        };
        if self.form != Form::Map
            || inner >= 64
            || self.rows == 1
            || !self.operands.iter().all(elementwise)
        {
            return;
        }
        let Some(width) = [1024, 256, 64]
            .into_iter()
            .find(|w| total.is_multiple_of(*w))
        else {
            return;
        };
        self.operands = vec![Access::Vec { div: 1 }; self.operands.len()];
        (self.rows, self.inner) = (total / width, width);
    }

    /// Checks what code generation relies on: every instruction names earlier values and
    /// existing operands, each `Dot` reads a `DotRows` and a `DotCols` factor of equal `k`,
    /// and nothing else reads a factor.
    pub fn check(&self) -> Result<(), String> {
        let bad = |i: usize, why: &str| Err(format!("kernel {}: instruction {i} {why}", self.name));
        for (i, inst) in self.body.iter().enumerate() {
            let (vals, ops): (Vec<usize>, Vec<usize>) = match *inst {
                Inst::Load(q) => (vec![], vec![q]),
                Inst::Const(_) => (vec![], vec![]),
                Inst::Unary(_, a) => (vec![a], vec![]),
                Inst::Binary(_, x, y) => (vec![x, y], vec![]),
                Inst::Dot(a, b) => (vec![], vec![a, b]),
            };
            if vals.iter().any(|&v| v >= i) || ops.iter().any(|&q| q >= self.operands.len()) {
                return bad(i, "reads a later value or a missing operand");
            }
            match *inst {
                Inst::Dot(a, b) => match (self.operands[a], self.operands[b]) {
                    (Access::DotRows { k }, Access::DotCols { k: k2 }) if k == k2 && k > 0 => {}
                    _ => return bad(i, "is a product without matching factors"),
                },
                Inst::Load(q) if dot_k(self.operands[q]) > 0 => {
                    return bad(i, "loads a product's factor element by element")
                }
                _ => {}
            }
        }
        if self.outputs.iter().any(|&o| o >= self.body.len()) {
            return Err(format!("kernel {}: an output names no value", self.name));
        }
        Ok(())
    }

    /// Number of elements of output `o`.
    pub fn output_len(&self) -> usize {
        match self.form {
            Form::Map => self.rows * self.inner,
            Form::RowReduce(_) => self.rows,
            Form::ColReduce(_) => self.inner,
        }
    }

    /// Elements operand `k` spans (its buffer must hold at least this many).
    pub fn operand_len(&self, k: usize) -> usize {
        let groups = |div: usize| self.rows.div_ceil(div.max(1));
        match self.operands[k] {
            Access::Vec { div } => groups(div) * self.inner,
            Access::Splat { div } => groups(div),
            Access::DotRows { k } => self.rows * k,
            Access::DotCols { k } => k * self.inner,
        }
    }

    /// Evaluates the body at one point (host semantics; the definition backends must match).
    pub fn point(&self, ins: &[&[f32]], r: usize, j: usize, vals: &mut Vec<f32>) {
        vals.clear();
        for inst in &self.body {
            let v = match *inst {
                Inst::Load(k) => ins[k][self.operands[k].index(r, j, self.inner)],
                Inst::Const(c) => c,
                Inst::Unary(u, a) => unary_fn(u, vals[a]),
                Inst::Binary(b, x, y) => binary_fn(b, vals[x], vals[y]),
                Inst::Dot(a, b) => {
                    let (ra, cb) = (self.operands[a], self.operands[b]);
                    let (x, y) = (ra.index(r, j, self.inner), cb.index(r, j, self.inner));
                    let mut acc = 0f32;
                    for p in 0..dot_k(ra) {
                        acc = ins[a][x + p].mul_add(ins[b][y + p * self.inner], acc);
                    }
                    acc
                }
            };
            vals.push(v);
        }
    }

    /// Runs the kernel on host slices (a slow, obviously correct emulation).
    pub fn eval_host(&self, ins: &[&[f32]], outs: &mut [Vec<f32>]) {
        let mut vals = Vec::with_capacity(self.body.len());
        match self.form {
            Form::Map => {
                for r in 0..self.rows {
                    for j in 0..self.inner {
                        self.point(ins, r, j, &mut vals);
                        for (o, &s) in self.outputs.iter().enumerate() {
                            outs[o][r * self.inner + j] = vals[s];
                        }
                    }
                }
            }
            Form::RowReduce(op) => {
                for (r, o) in outs[0].iter_mut().enumerate().take(self.rows) {
                    let mut acc = identity(op);
                    for j in 0..self.inner {
                        self.point(ins, r, j, &mut vals);
                        acc = combine(op, acc, vals[self.outputs[0]]);
                    }
                    *o = acc;
                }
            }
            Form::ColReduce(op) => {
                outs[0].iter_mut().for_each(|v| *v = identity(op));
                for r in 0..self.rows {
                    for (j, o) in outs[0].iter_mut().enumerate().take(self.inner) {
                        self.point(ins, r, j, &mut vals);
                        *o = combine(op, *o, vals[self.outputs[0]]);
                    }
                }
            }
        }
    }
}

/// The inner dimension of a fused product's factor (0 for other accesses).
pub fn dot_k(a: Access) -> usize {
    match a {
        Access::DotRows { k } | Access::DotCols { k } => k,
        _ => 0,
    }
}

/// The identity of a reduction.
pub fn identity(op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
    }
}

/// One reduction step.
pub fn combine(op: ReduceOp, a: f32, b: f32) -> f32 {
    match op {
        ReduceOp::Sum => a + b,
        ReduceOp::Max => crate::ir::ops::elementwise::max(a, b),
    }
}
