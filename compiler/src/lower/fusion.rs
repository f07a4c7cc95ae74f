//! The lowering's fusion decisions: which elementwise ops are inlined into their readers or
//! recomputed, which broadcasts, transposes and permutes are read through addressing instead
//! of stored, which thin products are computed inside their reader's kernel, which reductions
//! fuse their producers, and which stored readers of a map join its kernel as extra outputs.

use super::plan::{access_for, is_elem, rows_inner, Lower, Strides};
use crate::ir::ops::linalg::gemm_layout_free;
use crate::ir::ops::reduce::split;
use crate::ir::{BinaryOp, DType, NodeId, Op, UnaryOp};
use std::collections::HashSet;

/// How a reduction lowers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RedKind {
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
pub(super) const RECOMPUTE: usize = 4;

/// Largest inner dimension of a product computed inside its reader's kernel ([`Inst::Dot`]):
/// LoRA ranks. Such a product is memory bound; stored, it costs a write and a read of the
/// whole result for a few multiply-adds per element.
pub(super) const DOT_K: usize = 16;

impl Lower<'_> {
    pub(super) fn red_kind(&self, id: NodeId) -> RedKind {
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
    pub(super) fn inlined(&self, id: NodeId) -> bool {
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
    pub(super) fn recompute_cost(&self, id: NodeId) -> Option<usize> {
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
    pub(super) fn virtual_bcast(&self, id: NodeId) -> bool {
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
    pub(super) fn virtual_t(&self, id: NodeId) -> bool {
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

    /// Whether product `id` may read or write its matrices through view `v`: rows
    /// contiguous, or a product whose rounding `gemm` keeps whatever the layout
    /// ([`gemm_layout_free`]), so column strides are legal too.
    fn foldable(&self, v: &Strides, id: NodeId) -> bool {
        v.rows_contiguous() || {
            let (m, k, n) = self.product_dims(id);
            gemm_layout_free(m, k, n)
        }
    }

    /// `(m, k, n)` of each matrix of the batched product `id`.
    fn product_dims(&self, id: NodeId) -> (usize, usize, usize) {
        let ops = self.g.inputs(id);
        let (sa, sb) = (self.g.shape(ops[0]), self.g.shape(ops[1]));
        let r = sa.len();
        (sa[r - 2], sa[r - 1], sb[r - 1])
    }

    /// A permute (not a plain transpose) only matrix products read: they read its operand's
    /// buffer through strides.
    pub(super) fn virtual_perm(&self, id: NodeId) -> bool {
        let Op::Permute { perm } = &self.node(id).op else {
            return false;
        };
        let src = self.g.shape(self.g.inputs(id)[0]);
        let users = self.users(id);
        self.opt.strided_views
            && !self.virtual_t(id)
            && !self.outputs.contains(&id)
            && users
                .iter()
                .all(|&u| matches!(self.node(u).op, Op::MatMul) && !self.inline_dot(u))
            && Strides::of_permute(src, perm)
                .is_some_and(|v| users.iter().all(|&u| self.foldable(&v, u)))
    }

    /// A single product `[m, k] @ [k, n]` with `k ≤ DOT_K`, read only by one elementwise op
    /// of its own shape (directly or through one reshape that keeps `n` last): that op's
    /// kernel computes it per element ([`Inst::Dot`]) and it is never stored. Its factors
    /// are read row-major, so a transposed right factor is materialised (a few KiB).
    pub(super) fn inline_dot(&self, id: NodeId) -> bool {
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
    pub(super) fn dot_leaf(&self, id: NodeId) -> Option<NodeId> {
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
    pub(super) fn out_perm(&self, id: NodeId) -> Option<(NodeId, Strides)> {
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
            .filter(|v| self.foldable(v, id))
            .map(|v| (p, v))
    }

    /// A stored elementwise reader of the map's outputs so far that the same kernel can
    /// compute as one more output: same iteration shape, not yet lowered, and every value it
    /// reads already available (a buffer, or a value of this kernel). GELU's `erf(h/√2) + 1`
    /// and `0.5·h·(…)`, both kept for the backward pass, then come out of the pass that
    /// writes `h`, instead of two more passes re-reading it.
    /// With `dot` (the kernel holds a fused product, so it runs one vector per iteration), a
    /// reader computing an erf is left to its own paired-loop kernel: measured faster there.
    pub(super) fn sibling(&self, done: &[NodeId], space: &[usize], dot: bool) -> Option<NodeId> {
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
    pub(super) fn computes_erf(&self, id: NodeId) -> bool {
        matches!(self.node(id).op, Op::Unary(UnaryOp::Erf))
            || self
                .g
                .inputs(id)
                .iter()
                .any(|&o| is_elem(&self.node(o).op) && self.inlined(o) && self.computes_erf(o))
    }

    /// A reshape that keeps the last axis: element `(r, j)` of its `(rows, inner)` space is
    /// element `(r, j)` of its operand's.
    pub(super) fn same_rows_reshape(&self, id: NodeId) -> bool {
        matches!(self.node(id).op, Op::Reshape { .. })
            && !self.outputs.contains(&id)
            && self.g.shape(id).last() == self.g.shape(self.g.inputs(id)[0]).last()
    }

    /// The value the kernel being built holds for `id`: its own, or its operand's when `id`
    /// is a reshape keeping the last axis.
    pub(super) fn held(&self, id: NodeId) -> Option<usize> {
        let held = self.in_kernel.borrow();
        held.get(&id).copied().or_else(|| {
            self.same_rows_reshape(id)
                .then(|| held.get(&self.g.inputs(id)[0]).copied())
                .flatten()
        })
    }

    /// Whether a kernel being built can read `id` now (see [`Self::sibling`]).
    pub(super) fn ready(&self, id: NodeId) -> bool {
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
}
