//! What model builders need from their caller: frozen weights by name, and the hook that
//! turns each linear layer into either `x Wᵀ + b` or the attached adapter's `out`.

use crate::ir::{DType, Graph, InputKind, NodeId, Op, R};

/// Builds the linear layers of a model; the adapter builder implements it.
pub trait LinearHook {
    /// `x[rows, n]` through the linear whose weight is `{module}.weight` (bias added by the caller
    /// when present). Returns `[rows, m]`.
    fn linear(&mut self, g: &mut Graph, module: &str, x: NodeId) -> R<NodeId>;
}

/// Plain linear layers: `x W0ᵀ`.
pub struct NoAdapters<'a> {
    /// The model's tensor shapes.
    pub tensors: &'a [super::TensorInfo],
}

impl LinearHook for NoAdapters<'_> {
    fn linear(&mut self, g: &mut Graph, module: &str, x: NodeId) -> R<NodeId> {
        let w = frozen(g, self.tensors, &format!("{module}.weight"))?;
        let wt = g.t(w)?;
        g.matmul(x, wt)
    }
}

/// The frozen input for a named base-model tensor (one node per name).
pub fn frozen(g: &mut Graph, tensors: &[super::TensorInfo], name: &str) -> R<NodeId> {
    if let Some(id) = g.find_input(name) {
        return Ok(id);
    }
    let t = tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| crate::ir::IrError(format!("the model has no tensor `{name}`")))?;
    g.add(
        Op::Input {
            name: name.to_string(),
            kind: InputKind::Frozen,
            shape: t.shape.clone(),
            dtype: DType::F32,
        },
        &[],
    )
}

/// A data input.
pub fn data(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> R<NodeId> {
    if let Some(id) = g.find_input(name) {
        return Ok(id);
    }
    g.add(
        Op::Input {
            name: name.to_string(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype,
        },
        &[],
    )
}

/// `x[..., n]` through a linear layer with optional bias, via the hook.
pub fn dense(
    g: &mut Graph,
    hook: &mut dyn LinearHook,
    tensors: &[super::TensorInfo],
    module: &str,
    x: NodeId,
) -> R<NodeId> {
    let xs = g.shape(x).to_vec();
    let n = *xs.last().unwrap_or(&1);
    let rows: usize = xs[..xs.len() - 1].iter().product();
    let x2 = g.reshape(x, &[rows, n])?;
    let mut y = hook.linear(g, module, x2)?;
    let bias = format!("{module}.bias");
    if tensors.iter().any(|t| t.name == bias) {
        let b = frozen(g, tensors, &bias)?;
        y = g.plus(y, b)?;
    }
    let m = g.shape(y)[1];
    let mut out = xs;
    if let Some(l) = out.last_mut() {
        *l = m;
    }
    g.reshape(y, &out)
}
