//! The task head: a trainable linear layer on a pooled representation (classification,
//! regression). Causal LM uses the model's own LM head and adds nothing here, and neither does
//! a `linear` model, whose output is the prediction itself.

use super::lower::ParamInfo;
use super::Geometry;
use crate::check::train::Task;
use crate::ir::{BinaryOp, DType, Graph, InputKind, NodeId, Op, R};
use crate::model::{Family, ModelInfo};
use std::sync::Arc;

/// Graph input names of the head.
pub const HEAD_WEIGHT: &str = "head.weight";
/// Graph input name of the head's bias.
pub const HEAD_BIAS: &str = "head.bias";

/// The representation the head reads, `[batch, hidden]`.
fn pooled(g: &mut Graph, model: &ModelInfo, pooling: &str, geo: Geometry) -> R<NodeId> {
    let hidden = g
        .output("hidden")
        .ok_or_else(|| crate::ir::IrError("no hidden output".into()))?;
    let h = model.config.hidden;
    let (b, l) = (geo.batch, geo.seq);
    let default = match model.family {
        Family::Bert => "pooler",
        Family::Llama | Family::Linear => "last",
    };
    let pooling = if pooling == "default" {
        default
    } else {
        pooling
    };
    let mask = g
        .find_input("attention_mask")
        .ok_or_else(|| crate::ir::IrError("no attention_mask input".into()))?;
    match pooling {
        "pooler" => g
            .output("pooled")
            .ok_or_else(|| crate::ir::IrError("`pooler` pooling needs a BERT pooler".into())),
        "cls" => {
            let f = g.slice(hidden, 1, 0, 1)?;
            g.reshape(f, &[b, h])
        }
        "mean" => {
            let m = g.reshape(mask, &[b, l, 1])?;
            let x = g.times(hidden, m)?;
            let s = g.sum(x, 1)?;
            let n = g.sum(m, 1)?;
            let r = g.over(s, n)?;
            g.reshape(r, &[b, h])
        }
        _ => {
            // Last non-padding token: position == (number of real tokens − 1).
            let len = g.sum(mask, 1)?;
            let one = g.scalar(1.0)?;
            let last = g.minus(len, one)?;
            let pos = g.add(
                Op::Literal {
                    shape: vec![1, l],
                    data: Arc::new((0..l).map(|i| i as f32).collect()),
                },
                &[],
            )?;
            let pos = g.bc(pos, &[b, l])?;
            let last = g.bc(last, &[b, l])?;
            let pick = g.add(Op::Binary(BinaryOp::Eq), &[pos, last])?;
            let pick = g.reshape(pick, &[b, l, 1])?;
            let x = g.times(hidden, pick)?;
            let s = g.sum(x, 1)?;
            g.reshape(s, &[b, h])
        }
    }
}

/// Adds the head for `task` and the `logits` output; returns the head's tensors.
pub fn build(
    g: &mut Graph,
    model: &ModelInfo,
    task: &Task,
    geo: Geometry,
) -> R<Option<Vec<ParamInfo>>> {
    if model.family == Family::Linear {
        // No head: the loss compares the (adapted) layer's output with the targets directly.
        let y = g
            .output("hidden")
            .ok_or_else(|| crate::ir::IrError("no hidden output".into()))?;
        g.set_output("logits", y);
        return Ok(None);
    }
    let (outs, pooling) = match task {
        Task::Classification { labels, pooling } => (*labels, pooling.as_str()),
        Task::Regression => (1, "default"),
        Task::CausalLm { .. } => return Ok(None),
    };
    let h = model.config.hidden;
    let x = pooled(g, model, pooling, geo)?;
    let w = g.add(
        Op::Input {
            name: HEAD_WEIGHT.into(),
            kind: InputKind::Param,
            shape: vec![outs, h],
            dtype: DType::F32,
        },
        &[],
    )?;
    let b = g.add(
        Op::Input {
            name: HEAD_BIAS.into(),
            kind: InputKind::Param,
            shape: vec![outs],
            dtype: DType::F32,
        },
        &[],
    )?;
    let logits = g.linear(x, w, Some(b))?;
    g.set_output("logits", logits);
    let info = |name: &str, local: &str, shape: Vec<usize>| ParamInfo {
        name: name.into(),
        module: "head".into(),
        local: local.into(),
        shape,
        experts: None,
    };
    Ok(Some(vec![
        info(HEAD_WEIGHT, "weight", vec![outs, h]),
        info(HEAD_BIAS, "bias", vec![outs]),
    ]))
}
