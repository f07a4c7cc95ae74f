//! One frozen linear layer, `y = x Wᵀ + b`, on numeric input vectors: the base model of
//! synthetic studies (methods.md §4.6). Its only adaptable module is named [`MODULE`].

use super::forward::{data, dense, LinearHook};
use super::{ModelConfig, TensorInfo};
use crate::ir::{DType, Graph, NodeId, R};

/// The module name of the layer: tensors `linear.weight` `[out, in]` and `linear.bias` `[out]`.
pub const MODULE: &str = "linear";

/// Graph input holding the batch's input vectors, `[batch, in_features]`.
pub const INPUT: &str = "x";

/// The layer's output `[batch, out_features]` for data input [`INPUT`].
pub fn forward(
    g: &mut Graph,
    c: &ModelConfig,
    t: &[TensorInfo],
    hook: &mut dyn LinearHook,
    batch: usize,
) -> R<NodeId> {
    let x = data(g, INPUT, &[batch, c.hidden], DType::F32)?;
    dense(g, hook, t, MODULE, x)
}
