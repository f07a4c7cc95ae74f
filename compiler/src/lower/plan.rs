//! Turns a graph into steps over buffers: elementwise chains and their reductions become fused
//! [`Kernel`]s, matrix products read transposed operands in place, reshapes alias their
//! operand, and the remaining ops run as host steps. Backend-neutral.

use super::fusion::RedKind;
use super::kernel::{Access, Form, Inst, Kernel};
pub use super::strides::Strides;
use crate::ir::ops::reduce::split;
use crate::ir::{DType, Graph, NodeId, Op, ReduceOp, R};
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

/// The lowering's state: the graph, the plan built so far and each node's buffer.
pub(super) struct Lower<'g> {
    pub(super) g: &'g Graph,
    pub(super) opt: LowerOptions,
    pub(super) cost: std::cell::RefCell<HashMap<NodeId, Option<usize>>>,
    pub(super) outputs: HashSet<NodeId>,
    pub(super) plan: Plan,
    pub(super) buf: HashMap<NodeId, BufId>,
    /// Nodes whose values the kernel being built already holds (its outputs so far).
    pub(super) in_kernel: std::cell::RefCell<HashMap<NodeId, usize>>,
}

/// Unary or binary elementwise.
pub(super) fn is_elem(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_))
}

/// Splits a shape into the `(rows, inner)` iteration space.
pub(super) fn rows_inner(s: &[usize]) -> (usize, usize) {
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
    pub(super) fn node(&self, id: NodeId) -> &crate::ir::Node {
        self.g.node(id)
    }

    pub(super) fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.g
            .g
            .neighbors_directed(id, Direction::Outgoing)
            .collect()
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

    pub(super) fn fill_value(&self, id: NodeId) -> Option<f32> {
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
    // Both backends' code generators rely on what `check` asserts.
    for k in &l.plan.kernels {
        k.check().map_err(crate::ir::IrError)?;
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
