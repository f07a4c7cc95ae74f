//! The closed set of IR operations. Shape rules, reference semantics and VJP rules live
//! together per op family in `ops/`; this file only names the ops.

use std::sync::Arc;

/// Element type of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit integer (token ids, indices).
    I64,
}

/// What an input node is bound to at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Per-batch data (token ids, masks, labels).
    Data,
    /// A frozen base-model weight (no weight gradient is ever computed).
    Frozen,
    /// A trainable parameter (adapter factor, router, head).
    Param,
    /// Optimizer state or step counters.
    State,
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/x
    Recip,
    /// tanh x
    Tanh,
    /// erf x
    Erf,
    /// |x|
    Abs,
    /// 1/(1+e^-x)
    Sigmoid,
    /// max(x, 0)
    Relu,
    /// sin x
    Sin,
    /// cos x
    Cos,
}

/// Elementwise binary operations on equal shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// a ^ b
    Pow,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// 1 if a > b else 0
    Gt,
    /// 1 if a == b else 0
    Eq,
}

/// Reductions along one axis (the axis is kept with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// max
    Max,
}

/// One IR operation. Operands are the node's incoming edges, in operand order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A named run-time input.
    Input {
        name: String,
        kind: InputKind,
        shape: Vec<usize>,
        dtype: DType,
    },
    /// A constant tensor filled with one value.
    Fill { shape: Vec<usize>, value: f32 },
    /// A constant tensor with given contents (rotary tables, masks).
    Literal {
        shape: Vec<usize>,
        data: Arc<Vec<f32>>,
    },
    /// Elementwise unary (1 operand).
    Unary(UnaryOp),
    /// Elementwise binary (2 operands, equal shapes).
    Binary(BinaryOp),
    /// Reduction along `axis`, kept as size 1 (1 operand).
    Reduce { op: ReduceOp, axis: usize },
    /// Batched matrix product `[..., a, b] @ [..., b, c]` (2 operands, equal batch dims).
    MatMul,
    /// Same data, new shape (1 operand).
    Reshape { shape: Vec<usize> },
    /// Axis permutation: output axis i is input axis `perm[i]` (1 operand).
    Permute { perm: Vec<usize> },
    /// numpy-style broadcast to `shape` (1 operand).
    Broadcast { shape: Vec<usize> },
    /// `start..end` along `axis` (1 operand).
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Concatenation along `axis` (n operands).
    Concat { axis: usize },
    /// Rows of a table: `table[V, ...]`, `idx: I64[...]` → `[idx..., ...]` (2 operands).
    Gather,
    /// Sums rows of `src[idx..., ...]` into a zero table with `rows` rows (2 operands: src, idx).
    ScatterAdd { rows: usize },
    /// `idx: I64[...]` → `F32[..., depth]` (1 operand).
    OneHot { depth: usize },
    /// 1 where an entry is among the `k` largest of its last-axis row (ties: lower index), else 0.
    TopKMask { k: usize },
    /// Identity forward, zero gradient.
    StopGrad,
    /// Seeded dropout of operand 0 with drop probability `p`; operand 1 is the run's i64 seed,
    /// `salt` tells sites apart (`ops/random.rs`).
    Dropout { p: f32, salt: u64 },
    /// The keep bits of routed experts' dropout (`ops/routing.rs`): operands the router's
    /// top-k mask `[T, E]` and the seed give `[T, k·W]` i64, `W = ⌈n / 64⌉`. Slot `i` of row
    /// `t` is its `i`-th selected expert `e` (in index order; slots past the selection are 0):
    /// bit `j mod 64` of word `i·W + j / 64` says whether element `t·n + j` of the stream of
    /// `Dropout { p, salt: salts[e] }` is kept. Drawn once, read by the three ops below.
    RoutedKeep {
        p: f32,
        salts: Vec<u64>,
        k: usize,
        n: usize,
    },
    /// Top-k routed experts' down-projection under per-expert dropout (top-k sparse dispatch,
    /// `ops/routing.rs`): operands `x[T, n]`, the stacked factors `a[E·d, n]`, the router's
    /// top-k mask `[T, E]` and its `RoutedKeep` bits give `[T, E·d]`. For row `t` and each
    /// expert `e` it selects (at most `k`, in index order), block `e` holds
    /// `a[e·d + q] · (x[t] ⊙ m)`, `m` the expert's dropout factors (`1 / (1 − p)` where kept,
    /// else 0); other blocks are 0. Each dot product is `routing::dot16` of the dropped row
    /// (16 interleaved multiply-add chains, a fixed tree).
    RoutedProject { p: f32, k: usize },
    /// Routed projection's gradient with respect to `x` (made by autodiff): operands
    /// `g[T, E·d]`, `a[E·d, n]`, the top-k mask `[T, E]` and the keep bits give `[T, n]`, row
    /// `t` summing over its selected experts `e`, in order, `(g[t, block e] · a[block e]) ⊙ m`.
    /// Each product element is one fused multiply-add chain over the block in order (zero
    /// entries of `g` skipped).
    RoutedExpand { p: f32, k: usize },
    /// Routed projection's gradient with respect to `a` (made by autodiff): operands
    /// `g[T, E·d]`, `x[T, n]`, the top-k mask `[T, E]` and the keep bits give `[E·d, n]`:
    /// element `(e·d + q, j)` sums `g[t, e·d + q] · (x[t, j] · m)` over the rows `t` that
    /// select `e`: one fused multiply-add chain over each block of `routing::OUTER_ROWS` rows
    /// in order, the blocks' sums then added in block order.
    RoutedOuter { p: f32, k: usize },
    /// Attention probabilities (`ops/attention.rs`): operands `q[..., m, d]`, `k[..., n, d]` and
    /// an additive mask broadcastable to `[..., m, n]` give `softmax(scale·q·kᵀ + mask)` along
    /// the last axis, by the same steps (and so the same bits) as the primitive graph.
    AttnProbs { scale: f32 },
    /// Softmax's gradient with the score scale (made by autodiff of `AttnProbs`): operands
    /// `p` and `g` of one shape give `scale · p ⊙ (g − Σ_row g ⊙ p)` (`ops/attention.rs`).
    AttnGrad { scale: f32 },
    /// Element type conversion (1 operand).
    Cast { to: DType },
    /// `X = (A + δI)⁻¹ B` for small SPD blocks `A[..., d, d]`, `B[..., d, c]`; identity when the
    /// factorisation fails (2 operands).
    SpdSolve { damping: f32 },
}

impl Op {
    /// Short name for printing.
    pub fn name(&self) -> String {
        match self {
            Op::Input { name, kind, .. } => {
                format!("input.{}({name})", format!("{kind:?}").to_lowercase())
            }
            Op::Fill { value, .. } => format!("fill({value})"),
            Op::Literal { .. } => "literal".into(),
            Op::Unary(u) => format!("{u:?}").to_lowercase(),
            Op::Binary(b) => format!("{b:?}").to_lowercase(),
            Op::Reduce { op, axis } => {
                format!("reduce_{}[{axis}]", format!("{op:?}").to_lowercase())
            }
            Op::MatMul => "matmul".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Permute { perm } => format!("permute{perm:?}"),
            Op::Broadcast { .. } => "broadcast".into(),
            Op::Slice { axis, start, end } => format!("slice[{axis}:{start}..{end}]"),
            Op::Concat { axis } => format!("concat[{axis}]"),
            Op::Gather => "gather".into(),
            Op::ScatterAdd { rows } => format!("scatter_add[{rows}]"),
            Op::OneHot { depth } => format!("one_hot[{depth}]"),
            Op::TopKMask { k } => format!("topk_mask[{k}]"),
            Op::StopGrad => "stop_grad".into(),
            Op::Dropout { p, salt } => format!("dropout[{p}, {salt:#x}]"),
            Op::RoutedKeep { p, k, n, .. } => format!("routed_keep[{p}, k={k}, n={n}]"),
            Op::RoutedProject { p, k } => format!("routed_project[{p}, k={k}]"),
            Op::RoutedExpand { p, k } => format!("routed_expand[{p}, k={k}]"),
            Op::RoutedOuter { p, k } => format!("routed_outer[{p}, k={k}]"),
            Op::AttnProbs { scale } => format!("attn_probs[{scale}]"),
            Op::AttnGrad { scale } => format!("attn_grad[{scale}]"),
            Op::Cast { to } => format!("cast[{to:?}]"),
            Op::SpdSolve { damping } => format!("spd_solve[{damping}]"),
        }
    }

    /// A key that is equal for ops that compute the same function (for CSE).
    pub fn key(&self) -> String {
        match self {
            Op::Literal { shape, data } => format!("literal{shape:?}@{:p}", Arc::as_ptr(data)),
            Op::Input { name, .. } => format!("input:{name}"),
            other => format!("{other:?}"),
        }
    }

    /// True for ops without operands.
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Fill { .. } | Op::Literal { .. }
        )
    }
}
