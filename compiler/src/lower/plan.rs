//! Turns a graph into steps over buffers: elementwise chains and their reductions become fused
//! [`Kernel`]s, matrix products read transposed operands in place, reshapes alias their
//! operand, and the remaining ops run as host steps. Backend-neutral.

use super::kernel::{Access, Form, Inst, Kernel};
pub use super::strides::Strides;
use crate::ir::ops::reduce::split;
use crate::ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, UnaryOp, R};
use petgraph::Direction;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A buffer handle.
pub type BufId = usize;

/// Where a buffer's contents live.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// A named run-time input, read in place.
    Input(String),
    /// A constant made at plan time.
    Const(Arc<Vec<f32>>),
    /// A temporary placed by the memory planner.
    Temp,
}

/// A buffer: storage, element type, element count.
#[derive(Clone, Debug, PartialEq)]
pub struct Buf {
    /// Where it lives.
    pub storage: Storage,
    /// Element type.
    pub dtype: DType,
    /// Number of elements.
    pub len: usize,
}

/// A matrix-product operand: a buffer, read transposed (last two axes swapped), through a
/// permuted view, or as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat {
    /// The buffer.
    pub buf: BufId,
    /// Read as the transpose of its stored `[.., cols, rows]` layout.
    pub trans: bool,
    /// Read through these element strides instead (a permute folded into the product).
    pub view: Option<Strides>,
}

/// Lowering choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerOptions {
    /// Fold head permutes into products as strided views ([`Strides`]); a backend whose
    /// batched products take one batch stride only (cuBLAS) materialises them instead.
    pub strided_views: bool,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            strided_views: true,
        }
    }
}

/// One step of a lowered program.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A fused kernel: operand buffers (in operand order) and output buffers.
    Kernel {
        /// Index into [`Plan::kernels`].
        kernel: usize,
        /// Operand buffers.
        ins: Vec<BufId>,
        /// Output buffers.
        outs: Vec<BufId>,
    },
    /// `out[b] = a[b] @ b[b]` for each of `batch` matrices of `m×k` and `k×n`.
    MatMul {
        /// Left operand.
        a: Mat,
        /// Right operand.
        b: Mat,
        /// Output `[batch, m, n]`.
        out: BufId,
        /// Written through these strides instead of contiguously (a permute folded in).
        out_view: Option<Strides>,
        /// Batch count.
        batch: usize,
        /// Rows of the output.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of the output.
        n: usize,
    },
    /// Any other op, run by the backend's host implementation.
    Host {
        /// The op.
        op: Op,
        /// Operand buffers with their shapes.
        ins: Vec<(BufId, Vec<usize>)>,
        /// Output buffer.
        out: BufId,
        /// Output shape.
        shape: Vec<usize>,
    },
}

/// A lowered program.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Buffers.
    pub bufs: Vec<Buf>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The fused kernels.
    pub kernels: Vec<Kernel>,
    /// Named results: buffer, shape, element type.
    pub outputs: Vec<(String, BufId, Vec<usize>, DType)>,
}

/// How a reduction lowers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RedKind {
    /// Over the last axis, elementwise producers fused in.
    Row,
    /// Over an axis followed only by size-1 axes, of a materialised `[outer, n]` view.
    RowPlain,
    /// Over the second-to-last axis of a `[n, inner]` view, producers fused in.
    ColFused,
    /// Over a leading axis of a materialised `[n, rest]` view.
    ColPlain,
    /// Anything else.
    Host,
}

/// Largest expression (in ops) recomputed in every consumer instead of stored.
const RECOMPUTE: usize = 4;

/// Largest inner dimension of a product computed inside its reader's kernel ([`Inst::Dot`]):
/// LoRA ranks. Such a product is memory bound; stored, it costs a write and a read of the
/// whole result for a few multiply-adds per element.
const DOT_K: usize = 16;

struct Lower<'g> {
    g: &'g Graph,
    opt: LowerOptions,
    cost: std::cell::RefCell<HashMap<NodeId, Option<usize>>>,
    outputs: HashSet<NodeId>,
    plan: Plan,
    buf: HashMap<NodeId, BufId>,
    /// Nodes whose values the kernel being built already holds (its outputs so far).
    in_kernel: std::cell::RefCell<HashMap<NodeId, usize>>,
}

fn is_elem(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_))
}

/// Splits a shape into the `(rows, inner)` iteration space.
fn rows_inner(s: &[usize]) -> (usize, usize) {
    match s.split_last() {
        Some((&inner, lead)) => (lead.iter().product(), inner),
        None => (1, 1),
    }
}

/// Addressing of a tensor of shape `i` broadcast to iteration shape `s`, when expressible.
pub fn access_for(i: &[usize], s: &[usize]) -> Option<Access> {
    let r = s.len();
    if r == 0 || i.len() > r {
        return (i.len() == r).then_some(Access::Vec { div: 1 });
    }
    let mut ip = vec![1; r - i.len()];
    ip.extend_from_slice(i);
    let vec = ip[r - 1] == s[r - 1];
    if !vec && ip[r - 1] != 1 {
        return None;
    }
    let mut t = 0;
    while t < r - 1 && ip[t] == s[t] {
        t += 1;
    }
    if (t..r - 1).any(|k| ip[k] != 1) {
        return None;
    }
    let div = s[t..r - 1].iter().product::<usize>().max(1);
    Some(if vec {
        Access::Vec { div }
    } else {
        Access::Splat { div }
    })
}

impl Lower<'_> {
    fn node(&self, id: NodeId) -> &crate::ir::Node {
        self.g.node(id)
    }

    fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.g
            .g
            .neighbors_directed(id, Direction::Outgoing)
            .collect()
    }

    fn red_kind(&self, id: NodeId) -> RedKind {
        let n = self.node(id);
        let Op::Reduce { axis, .. } = n.op else {
            return RedKind::Host;
        };
        let x = self.g.shape(self.g.inputs(id)[0]);
        let (outer, _, inner) = split(x, axis);
        if inner == 1 && axis + 1 == x.len() {
            RedKind::Row
        } else if inner == 1 {
            RedKind::RowPlain
        } else if outer == 1 && axis + 2 == x.len() {
            RedKind::ColFused
        } else if outer == 1 {
            RedKind::ColPlain
        } else {
            RedKind::Host
        }
    }

    /// Elementwise and read only by kernels that can absorb it: with one use it is fused into
    /// its consumer; with several it is recomputed in each when cheap (at most [`RECOMPUTE`]
    /// arithmetic ops, no transcendental), which saves a buffer and its memory traffic.
    fn inlined(&self, id: NodeId) -> bool {
        if !is_elem(&self.node(id).op) || self.outputs.contains(&id) {
            return false;
        }
        let absorbs = |u: NodeId| {
            is_elem(&self.node(u).op)
                || matches!(self.red_kind(u), RedKind::Row | RedKind::ColFused)
        };
        let users = self.users(id);
        if !users.iter().all(|&u| absorbs(u)) {
            return false;
        }
        users.len() == 1 || self.recompute_cost(id).is_some_and(|c| c <= RECOMPUTE)
    }

    /// Ops a kernel spends recomputing `id` and what is inlined into it; `None` when the
    /// expression holds an expensive op.
    fn recompute_cost(&self, id: NodeId) -> Option<usize> {
        if let Some(c) = self.cost.borrow().get(&id) {
            return *c;
        }
        let cheap = match self.node(id).op {
            Op::Unary(u) => matches!(
                u,
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Recip | UnaryOp::Sqrt
            ),
            Op::Binary(b) => b != BinaryOp::Pow,
            _ => false,
        };
        let c = if cheap {
            let mut total = Some(1usize);
            for o in self.g.inputs(id) {
                if is_elem(&self.node(o).op) && self.inlined(o) {
                    total = total.zip(self.recompute_cost(o)).map(|(a, b)| a + b);
                } else if let Some(p) = self.dot_leaf(o) {
                    total =
                        total.map(|t| t + self.g.shape(self.g.inputs(p)[0]).last().unwrap_or(&0));
                }
            }
            total
        } else {
            None
        };
        self.cost.borrow_mut().insert(id, c);
        c
    }

    /// A broadcast only elementwise kernels read (through an addressing mode).
    fn virtual_bcast(&self, id: NodeId) -> bool {
        let n = self.node(id);
        if !matches!(n.op, Op::Broadcast { .. }) || self.outputs.contains(&id) {
            return false;
        }
        let src = self.g.inputs(id)[0];
        self.node(src).dtype == DType::F32
            && access_for(self.g.shape(src), &n.shape).is_some()
            && self.users(id).iter().all(|&u| is_elem(&self.node(u).op))
    }

    /// A last-two-axes transpose only matrix products read.
    fn virtual_t(&self, id: NodeId) -> bool {
        let n = self.node(id);
        let Op::Permute { perm } = &n.op else {
            return false;
        };
        let r = perm.len();
        r >= 2
            && !self.outputs.contains(&id)
            && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
            && perm[r - 2] == r - 1
            && perm[r - 1] == r - 2
            && self
                .users(id)
                .iter()
                .all(|&u| matches!(self.node(u).op, Op::MatMul) && !self.inline_dot(u))
    }

    /// A permute (not a plain transpose) only matrix products read: they read its operand's
    /// buffer through strides.
    fn virtual_perm(&self, id: NodeId) -> bool {
        let Op::Permute { perm } = &self.node(id).op else {
            return false;
        };
        let src = self.g.shape(self.g.inputs(id)[0]);
        self.opt.strided_views
            && !self.virtual_t(id)
            && !self.outputs.contains(&id)
            && Strides::of_permute(src, perm).is_some_and(|v| v.rows_contiguous())
            && self
                .users(id)
                .iter()
                .all(|&u| matches!(self.node(u).op, Op::MatMul) && !self.inline_dot(u))
    }

    /// A single product `[m, k] @ [k, n]` with `k ≤ DOT_K`, read only by one elementwise op
    /// of its own shape (directly or through one reshape that keeps `n` last): that op's
    /// kernel computes it per element ([`Inst::Dot`]) and it is never stored. Its factors
    /// are read row-major, so a transposed right factor is materialised (a few KiB).
    fn inline_dot(&self, id: NodeId) -> bool {
        if !matches!(self.node(id).op, Op::MatMul) || self.outputs.contains(&id) {
            return false;
        }
        let ops = self.g.inputs(id);
        let (sa, sb) = (self.g.shape(ops[0]), self.g.shape(ops[1]));
        let r = sa.len();
        let k = sa[r - 1];
        if sa[..r - 2].iter().product::<usize>() != 1
            || k == 0
            || k > DOT_K
            || matches!(self.node(ops[0]).op, Op::Permute { .. })
        {
            return false;
        }
        let n = sb[r - 1];
        let users = self.users(id);
        let [u] = users[..] else {
            return false;
        };
        let (leaf, reader) = if matches!(self.node(u).op, Op::Reshape { .. }) {
            let readers = self.users(u);
            let [v] = readers[..] else {
                return false;
            };
            if self.outputs.contains(&u) || self.g.shape(u).last() != Some(&n) {
                return false;
            }
            (u, v)
        } else {
            (id, u)
        };
        is_elem(&self.node(reader).op) && self.g.shape(reader) == self.g.shape(leaf)
    }

    /// The inlined product (see [`Self::inline_dot`]) an elementwise reader finds at `id`:
    /// the product itself, or the reshape of it.
    fn dot_leaf(&self, id: NodeId) -> Option<NodeId> {
        match self.node(id).op {
            Op::MatMul => {
                let through = self
                    .users(id)
                    .first()
                    .is_some_and(|&u| matches!(self.node(u).op, Op::Reshape { .. }));
                (self.inline_dot(id) && !through).then_some(id)
            }
            Op::Reshape { .. } => {
                let p = self.g.inputs(id)[0];
                (matches!(self.node(p).op, Op::MatMul) && self.inline_dot(p)).then_some(p)
            }
            _ => None,
        }
    }

    /// The permute a product's result can be written into directly: the product's only user,
    /// itself stored (not a view).
    fn out_perm(&self, id: NodeId) -> Option<(NodeId, Strides)> {
        if !self.opt.strided_views || self.outputs.contains(&id) {
            return None;
        }
        let users = self.users(id);
        let p = *users.first()?;
        let Op::Permute { perm } = &self.node(p).op else {
            return None;
        };
        if users.iter().any(|&u| u != p) || self.virtual_t(p) || self.virtual_perm(p) {
            return None;
        }
        Strides::into_permute(self.g.shape(id), perm)
            .filter(Strides::rows_contiguous)
            .map(|v| (p, v))
    }

    fn temp(&mut self, id: NodeId) -> BufId {
        let n = self.node(id);
        let b = Buf {
            storage: Storage::Temp,
            dtype: n.dtype,
            len: n.shape.iter().product(),
        };
        self.plan.bufs.push(b);
        let bid = self.plan.bufs.len() - 1;
        self.buf.insert(id, bid);
        bid
    }

    fn get(&self, id: NodeId) -> R<BufId> {
        self.buf.get(&id).copied().ok_or_else(|| {
            crate::ir::IrError(format!(
                "lowering: node {} ({}) has no buffer",
                id.index(),
                self.node(id).op.name()
            ))
        })
    }

    fn fill_value(&self, id: NodeId) -> Option<f32> {
        match &self.node(id).op {
            Op::Fill { value, .. } => Some(*value),
            Op::Broadcast { .. } => self.fill_value(self.g.inputs(id)[0]),
            _ => None,
        }
    }

    /// Emits the body value of `id` within a kernel over iteration shape `s`.
    fn emit(
        &self,
        id: NodeId,
        s: &[usize],
        k: &mut Kernel,
        ins: &mut Vec<BufId>,
        root: bool,
    ) -> R<usize> {
        if let Some(v) = self.held(id) {
            return Ok(v);
        }
        let n = self.node(id);
        if root || self.inlined(id) {
            let ops = self.g.inputs(id);
            let inst = match n.op {
                Op::Unary(u) => Inst::Unary(u, self.emit(ops[0], s, k, ins, false)?),
                Op::Binary(b) => {
                    let x = self.emit(ops[0], s, k, ins, false)?;
                    let y = self.emit(ops[1], s, k, ins, false)?;
                    Inst::Binary(b, x, y)
                }
                _ => return self.leaf(id, s, k, ins),
            };
            k.body.push(inst);
            return Ok(k.body.len() - 1);
        }
        self.leaf(id, s, k, ins)
    }

    fn leaf(&self, id: NodeId, s: &[usize], k: &mut Kernel, ins: &mut Vec<BufId>) -> R<usize> {
        if let Some(p) = self.dot_leaf(id) {
            let ops = self.g.inputs(p);
            let kk = self.g.shape(ops[0]).last().copied().unwrap_or(0);
            let qa = Self::operand(k, ins, self.get(ops[0])?, Access::DotRows { k: kk });
            let qb = Self::operand(k, ins, self.get(ops[1])?, Access::DotCols { k: kk });
            if let Some(p) = k.body.iter().position(|i| *i == Inst::Dot(qa, qb)) {
                return Ok(p);
            }
            k.body.push(Inst::Dot(qa, qb));
            return Ok(k.body.len() - 1);
        }
        if let Some(v) = self.fill_value(id) {
            k.body.push(Inst::Const(v));
            return Ok(k.body.len() - 1);
        }
        let (buf, acc) = if self.virtual_bcast(id) {
            let src = self.g.inputs(id)[0];
            let acc = access_for(self.g.shape(src), s)
                .ok_or_else(|| crate::ir::IrError("lowering: broadcast pattern".into()))?;
            (self.get(src)?, acc)
        } else {
            (self.get(id)?, Access::Vec { div: 1 })
        };
        let slot = Self::operand(k, ins, buf, acc);
        if let Some(p) = k.body.iter().position(|i| *i == Inst::Load(slot)) {
            return Ok(p);
        }
        k.body.push(Inst::Load(slot));
        Ok(k.body.len() - 1)
    }

    /// The operand slot reading `buf` through `acc`, added if new.
    fn operand(k: &mut Kernel, ins: &mut Vec<BufId>, buf: BufId, acc: Access) -> usize {
        match (0..ins.len()).find(|&q| ins[q] == buf && k.operands[q] == acc) {
            Some(q) => q,
            None => {
                ins.push(buf);
                k.operands.push(acc);
                ins.len() - 1
            }
        }
    }

    fn kernel(&mut self, id: NodeId, form: Form, space: &[usize], body_root: NodeId) -> R<()> {
        let kind = self.red_kind(id);
        let plain = matches!(kind, RedKind::ColPlain | RedKind::RowPlain);
        let (rows, inner) = match (kind, &self.node(id).op) {
            (RedKind::ColPlain, Op::Reduce { axis, .. }) => {
                let (_, n, inner) = split(space, *axis);
                (n, inner)
            }
            (RedKind::RowPlain, Op::Reduce { axis, .. }) => {
                let (outer, n, _) = split(space, *axis);
                (outer, n)
            }
            _ => rows_inner(space),
        };
        let mut k = Kernel {
            name: format!("k{}", self.plan.kernels.len()),
            form,
            rows,
            inner,
            operands: vec![],
            body: vec![],
            outputs: vec![],
        };
        let mut ins = vec![];
        let root = match form {
            Form::Map => self.emit(body_root, space, &mut k, &mut ins, true)?,
            _ if plain => {
                k.operands.push(Access::Vec { div: 1 });
                ins.push(self.get(body_root)?);
                k.body.push(Inst::Load(0));
                0
            }
            _ => self.emit(body_root, space, &mut k, &mut ins, false)?,
        };
        k.outputs.push(root);
        let mut outs = vec![self.temp(id)];
        if form == Form::Map {
            self.in_kernel.borrow_mut().insert(id, root);
            let mut done = vec![id];
            let dot = k.body.iter().any(|i| matches!(i, Inst::Dot(..)));
            while let Some(y) = self.sibling(&done, space, dot) {
                // Its own shape for broadcast addressing; the same (rows, inner) space.
                let sy = self.g.shape(y).to_vec();
                let v = self.emit(y, &sy, &mut k, &mut ins, true)?;
                k.outputs.push(v);
                outs.push(self.temp(y));
                self.in_kernel.borrow_mut().insert(y, v);
                done.push(y);
            }
            self.in_kernel.borrow_mut().clear();
        }
        k.retile();
        self.plan.kernels.push(k);
        self.plan.steps.push(Step::Kernel {
            kernel: self.plan.kernels.len() - 1,
            ins,
            outs,
        });
        Ok(())
    }

    /// A stored elementwise reader of the map's outputs so far that the same kernel can
    /// compute as one more output: same iteration shape, not yet lowered, and every value it
    /// reads already available (a buffer, or a value of this kernel). GELU's `erf(h/√2) + 1`
    /// and `0.5·h·(…)`, both kept for the backward pass, then come out of the pass that
    /// writes `h`, instead of two more passes re-reading it.
    /// With `dot` (the kernel holds a fused product, so it runs one vector per iteration), a
    /// reader computing an erf is left to its own paired-loop kernel: measured faster there.
    fn sibling(&self, done: &[NodeId], space: &[usize], dot: bool) -> Option<NodeId> {
        // Readers through chains of inlined ops (`h → h/√2 → erf → +1` ends at the stored +1).
        let mut seen = HashSet::new();
        let mut stack: Vec<NodeId> = done.iter().flat_map(|&d| self.users(d)).collect();
        let mut found = vec![];
        while let Some(u) = stack.pop() {
            if !seen.insert(u) {
                continue;
            }
            if (is_elem(&self.node(u).op) && self.inlined(u)) || self.same_rows_reshape(u) {
                stack.extend(self.users(u));
            } else {
                found.push(u);
            }
        }
        found.sort();
        found.into_iter().find(|&y| {
            is_elem(&self.node(y).op)
                && !self.buf.contains_key(&y)
                && !done.contains(&y)
                && !self.inlined(y)
                && rows_inner(self.g.shape(y)) == rows_inner(space)
                && self.g.inputs(y).iter().all(|&o| self.ready(o))
                && !(dot && self.computes_erf(y))
        })
    }

    /// Whether `id` or an op inlined into it is an erf.
    fn computes_erf(&self, id: NodeId) -> bool {
        matches!(self.node(id).op, Op::Unary(UnaryOp::Erf))
            || self
                .g
                .inputs(id)
                .iter()
                .any(|&o| is_elem(&self.node(o).op) && self.inlined(o) && self.computes_erf(o))
    }

    /// A reshape that keeps the last axis: element `(r, j)` of its `(rows, inner)` space is
    /// element `(r, j)` of its operand's.
    fn same_rows_reshape(&self, id: NodeId) -> bool {
        matches!(self.node(id).op, Op::Reshape { .. })
            && !self.outputs.contains(&id)
            && self.g.shape(id).last() == self.g.shape(self.g.inputs(id)[0]).last()
    }

    /// The value the kernel being built holds for `id`: its own, or its operand's when `id`
    /// is a reshape keeping the last axis.
    fn held(&self, id: NodeId) -> Option<usize> {
        let held = self.in_kernel.borrow();
        held.get(&id).copied().or_else(|| {
            self.same_rows_reshape(id)
                .then(|| held.get(&self.g.inputs(id)[0]).copied())
                .flatten()
        })
    }

    /// Whether a kernel being built can read `id` now (see [`Self::sibling`]).
    fn ready(&self, id: NodeId) -> bool {
        if self.held(id).is_some() || self.fill_value(id).is_some() {
            return true;
        }
        if is_elem(&self.node(id).op) && self.inlined(id) {
            return self.g.inputs(id).iter().all(|&o| self.ready(o));
        }
        if let Some(p) = self.dot_leaf(id) {
            return self.g.inputs(p).iter().all(|o| self.buf.contains_key(o));
        }
        if self.virtual_bcast(id) {
            return self.buf.contains_key(&self.g.inputs(id)[0]);
        }
        self.buf.contains_key(&id)
    }

    fn lower_node(&mut self, id: NodeId) -> R<()> {
        let n = self.node(id).clone();
        let ops = self.g.inputs(id);
        match &n.op {
            Op::Input { name, .. } => {
                self.plan.bufs.push(Buf {
                    storage: Storage::Input(name.clone()),
                    dtype: n.dtype,
                    len: n.shape.iter().product(),
                });
                self.buf.insert(id, self.plan.bufs.len() - 1);
            }
            Op::Fill { shape, value } => {
                let data = Arc::new(vec![*value; shape.iter().product()]);
                self.constant(id, data);
            }
            Op::Literal { data, .. } => self.constant(id, data.clone()),
            // Computed inside the kernel of its reader.
            Op::MatMul | Op::Reshape { .. } if self.dot_leaf(id).is_some() => {}
            Op::MatMul if self.inline_dot(id) => {}
            Op::Reshape { .. } | Op::StopGrad => {
                let b = self.get(ops[0])?;
                self.buf.insert(id, b);
            }
            Op::Cast { to } if *to == self.node(ops[0]).dtype => {
                let b = self.get(ops[0])?;
                self.buf.insert(id, b);
            }
            Op::Unary(_) | Op::Binary(_) => {
                // Not when an earlier kernel computed it as a sibling output.
                if !self.inlined(id) && !self.buf.contains_key(&id) {
                    self.kernel(id, Form::Map, &n.shape, id)?;
                }
            }
            Op::Broadcast { .. } if self.virtual_bcast(id) => {}
            Op::Permute { .. } if self.virtual_t(id) || self.virtual_perm(id) => {}
            // Written in place by its producing product (`out_perm`).
            Op::Permute { .. } if self.buf.contains_key(&id) => {}
            Op::MatMul => {
                let mat = |l: &Self, o: NodeId| -> R<Mat> {
                    let src = l.g.inputs(o).first().copied();
                    Ok(match (&l.node(o).op, src) {
                        (Op::Permute { .. }, Some(x)) if l.virtual_t(o) => Mat {
                            buf: l.get(x)?,
                            trans: true,
                            view: None,
                        },
                        (Op::Permute { perm }, Some(x)) if l.virtual_perm(o) => Mat {
                            buf: l.get(x)?,
                            trans: false,
                            view: Strides::of_permute(l.g.shape(x), perm),
                        },
                        _ => Mat {
                            buf: l.get(o)?,
                            trans: false,
                            view: None,
                        },
                    })
                };
                let (a, b) = (mat(self, ops[0])?, mat(self, ops[1])?);
                let (sa, sb) = (self.g.shape(ops[0]), self.g.shape(ops[1]));
                let r = sa.len();
                let (batch, m, k, nn) = (
                    sa[..r - 2].iter().product(),
                    sa[r - 2],
                    sa[r - 1],
                    sb[r - 1],
                );
                let (out, out_view) = match self.out_perm(id) {
                    Some((p, v)) => (self.temp(p), Some(v)),
                    None => (self.temp(id), None),
                };
                self.plan.steps.push(Step::MatMul {
                    a,
                    b,
                    out,
                    out_view,
                    batch,
                    m,
                    k,
                    n: nn,
                });
            }
            Op::Reduce { op, .. } => {
                let x = ops[0];
                let space = self.g.shape(x).to_vec();
                match self.red_kind(id) {
                    RedKind::Row | RedKind::RowPlain => {
                        self.kernel(id, Form::RowReduce(*op), &space, x)?
                    }
                    RedKind::ColFused | RedKind::ColPlain => {
                        self.kernel(id, Form::ColReduce(*op), &space, x)?
                    }
                    RedKind::Host => self.host(id, &n, &ops)?,
                }
            }
            _ => self.host(id, &n, &ops)?,
        }
        Ok(())
    }

    fn constant(&mut self, id: NodeId, data: Arc<Vec<f32>>) {
        self.plan.bufs.push(Buf {
            storage: Storage::Const(data.clone()),
            dtype: DType::F32,
            len: data.len(),
        });
        self.buf.insert(id, self.plan.bufs.len() - 1);
    }

    fn host(&mut self, id: NodeId, n: &crate::ir::Node, ops: &[NodeId]) -> R<()> {
        let ins = ops
            .iter()
            .map(|&o| Ok((self.get(o)?, self.g.shape(o).to_vec())))
            .collect::<R<Vec<_>>>()?;
        let out = self.temp(id);
        self.plan.steps.push(Step::Host {
            op: n.op.clone(),
            ins,
            out,
            shape: n.shape.clone(),
        });
        Ok(())
    }
}

/// Lowers a graph to a plan.
pub fn lower(g: &Graph) -> R<Plan> {
    lower_with(g, LowerOptions::default())
}

/// [`lower`] with explicit choices.
pub fn lower_with(g: &Graph, opt: LowerOptions) -> R<Plan> {
    let order = g.topo()?;
    let mut l = Lower {
        g,
        opt,
        cost: Default::default(),
        in_kernel: Default::default(),
        outputs: g.outputs.iter().map(|(_, i)| *i).collect(),
        plan: Plan::default(),
        buf: HashMap::new(),
    };
    for &id in &order {
        l.lower_node(id)?;
    }
    for (name, id) in &g.outputs {
        let b = l.get(*id)?;
        let n = g.node(*id);
        l.plan
            .outputs
            .push((name.clone(), b, n.shape.clone(), n.dtype));
    }
    Ok(l.plan)
}

/// The reduction kind an op has (for dumps).
pub fn reduce_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Max => "max",
    }
}
