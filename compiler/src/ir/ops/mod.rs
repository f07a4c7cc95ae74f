//! Per-op-family rules: shape inference, reference semantics (the interpreter), and the
//! vector-Jacobian product. Each family file holds all three for its ops.

pub mod attention;
pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod random;
pub mod reduce;
pub mod routing;
pub mod thin;
pub mod view;

use super::graph::{Graph, NodeId, R};
use super::op::{DType, Op};
use super::tensor::Tensor;

/// Input types of a node: (shape, dtype) per operand.
pub type Ins<'a> = [(&'a [usize], DType)];

/// Infers the output shape and dtype.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    let arity = match op {
        Op::Input { .. } | Op::Fill { .. } | Op::Literal { .. } => Some(0),
        Op::Binary(_)
        | Op::MatMul
        | Op::Gather
        | Op::ScatterAdd { .. }
        | Op::SpdSolve { .. }
        | Op::Dropout { .. }
        | Op::RoutedKeep { .. }
        | Op::AttnGrad { .. } => Some(2),
        Op::AttnProbs { .. } => Some(3),
        Op::RoutedProject { .. } | Op::RoutedExpand { .. } | Op::RoutedOuter { .. } => Some(4),
        Op::Concat { .. } => None,
        _ => Some(1),
    };
    if let Some(a) = arity {
        if ins.len() != a {
            return Err(format!("expects {a} operands, got {}", ins.len()));
        }
    } else if ins.is_empty() {
        return Err("expects at least one operand".into());
    }
    match op {
        Op::Input { shape, dtype, .. } => Ok((shape.clone(), *dtype)),
        Op::Fill { shape, .. } => Ok((shape.clone(), DType::F32)),
        Op::Literal { shape, data } => {
            if super::tensor::numel(shape) != data.len() {
                return Err(format!(
                    "literal of shape {shape:?} holds {} values",
                    data.len()
                ));
            }
            Ok((shape.clone(), DType::F32))
        }
        Op::Unary(_) | Op::Binary(_) | Op::StopGrad | Op::Cast { .. } => {
            elementwise::infer(op, ins)
        }
        Op::Reduce { .. } => reduce::infer(op, ins),
        Op::Dropout { .. } => random::infer(op, ins),
        Op::RoutedKeep { .. }
        | Op::RoutedProject { .. }
        | Op::RoutedExpand { .. }
        | Op::RoutedOuter { .. } => routing::infer(op, ins),
        Op::MatMul | Op::SpdSolve { .. } => linalg::infer(op, ins),
        Op::AttnProbs { .. } | Op::AttnGrad { .. } => attention::infer(op, ins),
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Concat { .. } => view::infer(op, ins),
        Op::Gather | Op::ScatterAdd { .. } | Op::OneHot { .. } | Op::TopKMask { .. } => {
            index::infer(op, ins)
        }
    }
}

/// Evaluates a non-input op on host tensors (the reference semantics).
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    match op {
        Op::Input { name, .. } => Err(format!("input `{name}` has no value")),
        Op::Fill { shape, value } => Ok(Tensor::f32(
            shape.clone(),
            vec![*value; super::tensor::numel(shape)],
        )),
        Op::Literal { shape, data } => Ok(Tensor::f32(shape.clone(), data.as_ref().clone())),
        Op::Unary(_) | Op::Binary(_) | Op::StopGrad | Op::Cast { .. } => elementwise::eval(op, ins),
        Op::Reduce { .. } => reduce::eval(op, ins),
        Op::Dropout { .. } => random::eval(op, ins),
        Op::RoutedKeep { .. }
        | Op::RoutedProject { .. }
        | Op::RoutedExpand { .. }
        | Op::RoutedOuter { .. } => routing::eval(op, ins),
        Op::MatMul | Op::SpdSolve { .. } => linalg::eval(op, ins),
        Op::AttnProbs { .. } | Op::AttnGrad { .. } => attention::eval(op, ins),
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Concat { .. } => view::eval(op, ins),
        Op::Gather | Op::ScatterAdd { .. } | Op::OneHot { .. } | Op::TopKMask { .. } => {
            index::eval(op, ins)
        }
    }
}

/// Emits the gradients of `node`'s operands given the gradient `dy` of its output.
/// `needs[i]` says whether operand i needs a gradient; entries are `None` where not needed
/// or where the op has no gradient (indices, masks, stop-grad).
pub fn vjp(g: &mut Graph, node: NodeId, dy: NodeId, needs: &[bool]) -> R<Vec<Option<NodeId>>> {
    let op = g.node(node).op.clone();
    let ins = g.inputs(node);
    match &op {
        Op::Input { .. } | Op::Fill { .. } | Op::Literal { .. } => Ok(vec![]),
        Op::Unary(_) | Op::Binary(_) | Op::StopGrad | Op::Cast { .. } => {
            elementwise::vjp(g, &op, node, &ins, dy, needs)
        }
        Op::Reduce { .. } => reduce::vjp(g, &op, node, &ins, dy, needs),
        Op::Dropout { .. } => random::vjp(g, &op, &ins, dy, needs),
        Op::RoutedKeep { .. }
        | Op::RoutedProject { .. }
        | Op::RoutedExpand { .. }
        | Op::RoutedOuter { .. } => routing::vjp(g, &op, &ins, dy, needs),
        Op::MatMul | Op::SpdSolve { .. } => linalg::vjp(g, &op, node, &ins, dy, needs),
        Op::AttnProbs { .. } | Op::AttnGrad { .. } => attention::vjp(g, &op, node, &ins, dy, needs),
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Concat { .. } => view::vjp(g, &op, node, &ins, dy, needs),
        Op::Gather | Op::ScatterAdd { .. } | Op::OneHot { .. } | Op::TopKMask { .. } => {
            index::vjp(g, &op, node, &ins, dy, needs)
        }
    }
}

/// Requires f32 operands.
fn want_f32(ins: &Ins<'_>) -> Result<(), String> {
    if ins.iter().all(|(_, d)| *d == DType::F32) {
        Ok(())
    } else {
        Err("expects f32 operands".into())
    }
}
