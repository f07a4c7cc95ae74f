//! Building blocks on top of the primitive ops: broadcasting arithmetic, softmax, norms,
//! activations. Everything here lowers to primitives (fusion regroups them later).

use super::graph::{Graph, IrError, NodeId, R};
use super::op::{BinaryOp, Op, ReduceOp, UnaryOp};

/// numpy broadcasting of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

impl Graph {
    /// A scalar constant.
    pub fn scalar(&mut self, v: f32) -> R<NodeId> {
        self.add(
            Op::Fill {
                shape: vec![],
                value: v,
            },
            &[],
        )
    }
    /// A constant tensor.
    pub fn fill(&mut self, shape: &[usize], v: f32) -> R<NodeId> {
        self.add(
            Op::Fill {
                shape: shape.to_vec(),
                value: v,
            },
            &[],
        )
    }
    /// Elementwise unary.
    pub fn un(&mut self, u: UnaryOp, x: NodeId) -> R<NodeId> {
        self.add(Op::Unary(u), &[x])
    }
    /// Broadcast to `shape` (no node when already that shape).
    pub fn bc(&mut self, x: NodeId, shape: &[usize]) -> R<NodeId> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        self.add(
            Op::Broadcast {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }
    /// Elementwise binary with numpy broadcasting.
    pub fn bin(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> R<NodeId> {
        let s = broadcast_shape(self.shape(x), self.shape(y)).ok_or_else(|| {
            IrError(format!(
                "cannot broadcast {:?} and {:?} for {b:?}",
                self.shape(x),
                self.shape(y)
            ))
        })?;
        let x = self.bc(x, &s)?;
        let y = self.bc(y, &s)?;
        self.add(Op::Binary(b), &[x, y])
    }
    /// x + y
    pub fn plus(&mut self, x: NodeId, y: NodeId) -> R<NodeId> {
        self.bin(BinaryOp::Add, x, y)
    }
    /// x - y
    pub fn minus(&mut self, x: NodeId, y: NodeId) -> R<NodeId> {
        self.bin(BinaryOp::Sub, x, y)
    }
    /// x * y
    pub fn times(&mut self, x: NodeId, y: NodeId) -> R<NodeId> {
        self.bin(BinaryOp::Mul, x, y)
    }
    /// x / y
    pub fn over(&mut self, x: NodeId, y: NodeId) -> R<NodeId> {
        self.bin(BinaryOp::Div, x, y)
    }
    /// x * c
    pub fn scale(&mut self, x: NodeId, c: f32) -> R<NodeId> {
        let s = self.scalar(c)?;
        self.times(x, s)
    }
    /// -x
    pub fn neg(&mut self, x: NodeId) -> R<NodeId> {
        self.un(UnaryOp::Neg, x)
    }
    /// Σ along `axis`, kept as size 1.
    pub fn sum(&mut self, x: NodeId, axis: usize) -> R<NodeId> {
        self.add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axis,
            },
            &[x],
        )
    }
    /// max along `axis`, kept as size 1.
    pub fn max_along(&mut self, x: NodeId, axis: usize) -> R<NodeId> {
        self.add(
            Op::Reduce {
                op: ReduceOp::Max,
                axis,
            },
            &[x],
        )
    }
    /// Mean along `axis`, kept as size 1.
    pub fn mean(&mut self, x: NodeId, axis: usize) -> R<NodeId> {
        let s = self.sum(x, axis)?;
        let n = self.shape(x)[axis] as f32;
        self.scale(s, 1.0 / n)
    }
    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&mut self, x: NodeId) -> R<NodeId> {
        let mut y = x;
        for axis in 0..self.shape(x).len() {
            y = self.sum(y, axis)?;
        }
        self.reshape(y, &[])
    }
    /// Sums a broadcast result back to `shape` (the VJP of broadcasting).
    pub fn sum_to(&mut self, x: NodeId, shape: &[usize]) -> R<NodeId> {
        let xs = self.shape(x).to_vec();
        if xs == shape {
            return Ok(x);
        }
        let lead = xs
            .len()
            .checked_sub(shape.len())
            .ok_or_else(|| IrError(format!("cannot sum {xs:?} to higher-rank {shape:?}")))?;
        let mut y = x;
        for (axis, &d) in xs.iter().enumerate() {
            let target = if axis < lead { 1 } else { shape[axis - lead] };
            if target == 1 && d != 1 {
                y = self.sum(y, axis)?;
            }
        }
        self.reshape(y, shape)
    }
    /// Matrix product.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> R<NodeId> {
        self.add(Op::MatMul, &[a, b])
    }
    /// Swaps the last two axes.
    pub fn t(&mut self, x: NodeId) -> R<NodeId> {
        let n = self.shape(x).len();
        if n < 2 {
            return Err(IrError(format!("transpose of a {n}-d tensor")));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        perm.swap(n - 1, n - 2);
        self.permute(x, &perm)
    }
    /// Permutes axes.
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> R<NodeId> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        self.add(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }
    /// New shape, same data (no node when unchanged).
    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> R<NodeId> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        self.add(
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }
    /// `start..end` along `axis`.
    pub fn slice(&mut self, x: NodeId, axis: usize, start: usize, end: usize) -> R<NodeId> {
        if start == 0 && self.shape(x).get(axis) == Some(&end) {
            return Ok(x);
        }
        self.add(Op::Slice { axis, start, end }, &[x])
    }
    /// Concatenation along `axis`.
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> R<NodeId> {
        if xs.len() == 1 {
            return Ok(xs[0]);
        }
        self.add(Op::Concat { axis }, xs)
    }
    /// Gradient barrier.
    pub fn stop_grad(&mut self, x: NodeId) -> R<NodeId> {
        self.add(Op::StopGrad, &[x])
    }
    /// The last axis of a tensor of rank ≥ 1.
    fn last_axis(&self, x: NodeId) -> R<usize> {
        self.shape(x)
            .len()
            .checked_sub(1)
            .ok_or_else(|| IrError("expected a tensor of rank ≥ 1, found a scalar".into()))
    }
    /// Softmax along the last axis (max-shifted; the shift carries no gradient).
    pub fn softmax(&mut self, x: NodeId) -> R<NodeId> {
        let axis = self.last_axis(x)?;
        let m = self.max_along(x, axis)?;
        let m = self.stop_grad(m)?;
        let z = self.minus(x, m)?;
        let e = self.un(UnaryOp::Exp, z)?;
        let s = self.sum(e, axis)?;
        self.over(e, s)
    }
    /// Attention probabilities `softmax(scale·q·kᵀ + mask)` as one `AttnProbs` op
    /// (`q[..., m, d]`, `k[..., n, d]`, the mask broadcastable to `[..., m, n]`).
    pub fn attn_probs(&mut self, q: NodeId, k: NodeId, mask: NodeId, scale: f32) -> R<NodeId> {
        self.add(Op::AttnProbs { scale }, &[q, k, mask])
    }
    /// The primitive graph `AttnProbs` is defined by (and equals bit for bit): the product,
    /// the scale, the broadcast mask and [`Graph::softmax`]. Tests use it as the oracle.
    pub fn attn_probs_decomposed(
        &mut self,
        q: NodeId,
        k: NodeId,
        mask: NodeId,
        scale: f32,
    ) -> R<NodeId> {
        let kt = self.t(k)?;
        let s = self.matmul(q, kt)?;
        let s = self.scale(s, scale)?;
        let shape = self.shape(s).to_vec();
        let mask = self.bc(mask, &shape)?;
        let s = self.plus(s, mask)?;
        self.softmax(s)
    }
    /// Layer norm over the last axis with weight and bias.
    pub fn layer_norm(&mut self, x: NodeId, w: NodeId, b: NodeId, eps: f32) -> R<NodeId> {
        let axis = self.last_axis(x)?;
        let mu = self.mean(x, axis)?;
        let c = self.minus(x, mu)?;
        let sq = self.times(c, c)?;
        let var = self.mean(sq, axis)?;
        let e = self.scalar(eps)?;
        let ve = self.plus(var, e)?;
        let sd = self.un(UnaryOp::Sqrt, ve)?;
        let n = self.over(c, sd)?;
        let y = self.times(n, w)?;
        self.plus(y, b)
    }
    /// RMS norm over the last axis with weight.
    pub fn rms_norm(&mut self, x: NodeId, w: NodeId, eps: f32) -> R<NodeId> {
        let axis = self.last_axis(x)?;
        let sq = self.times(x, x)?;
        let ms = self.mean(sq, axis)?;
        let e = self.scalar(eps)?;
        let me = self.plus(ms, e)?;
        let r = self.un(UnaryOp::Sqrt, me)?;
        let n = self.over(x, r)?;
        self.times(n, w)
    }
    /// Exact GELU: x · Φ(x) = 0.5 x (1 + erf(x / √2)).
    pub fn gelu(&mut self, x: NodeId) -> R<NodeId> {
        let s = self.scale(x, std::f32::consts::FRAC_1_SQRT_2)?;
        let e = self.un(UnaryOp::Erf, s)?;
        let one = self.scalar(1.0)?;
        let p = self.plus(e, one)?;
        let h = self.scale(x, 0.5)?;
        self.times(h, p)
    }
    /// SiLU: x · σ(x).
    pub fn silu(&mut self, x: NodeId) -> R<NodeId> {
        let s = self.un(UnaryOp::Sigmoid, x)?;
        self.times(x, s)
    }
    /// `x @ Wᵀ + b` for `x[..., n]`, `W[m, n]` (leading axes flattened for the product).
    pub fn linear(&mut self, x: NodeId, w: NodeId, b: Option<NodeId>) -> R<NodeId> {
        let xs = self.shape(x).to_vec();
        if xs.is_empty() || self.shape(w).len() != 2 {
            return Err(IrError(format!(
                "linear needs x[..., n] and W[m, n], got {xs:?} and {:?}",
                self.shape(w)
            )));
        }
        let n = xs[xs.len() - 1];
        let rows: usize = xs[..xs.len() - 1].iter().product();
        let m = self.shape(w)[0];
        let x2 = self.reshape(x, &[rows, n])?;
        let wt = self.t(w)?;
        let mut y = self.matmul(x2, wt)?;
        if let Some(b) = b {
            y = self.plus(y, b)?;
        }
        let mut out = xs.clone();
        *out.last_mut().unwrap_or(&mut 0) = m;
        self.reshape(y, &out)
    }
}
