//! BERT encoders (MiniLM) as IR, following Hugging Face `BertModel` exactly: embeddings
//! (word + position + token type, layer norm), post-norm self-attention with an additive
//! padding mask, exact-erf GELU FFN, and the tanh pooler over the first token.

use super::forward::{data, dense, frozen, LinearHook};
use super::{ModelConfig, TensorInfo};
use crate::ir::{DType, Graph, NodeId, UnaryOp, R};

/// The graph nodes a BERT forward pass produces.
pub struct BertOut {
    /// Last hidden state `[batch, seq, hidden]` (`[batch, 1, hidden]` with `first_only`).
    pub hidden: NodeId,
    /// Pooler output `[batch, hidden]`.
    pub pooled: NodeId,
}

/// Data inputs: `input_ids`, `token_type_ids` (i64 `[batch, seq]`), `attention_mask` (f32 `[batch, seq]`).
/// `first_only`: nothing reads the last layer's other tokens (the pooler reads the first), so
/// that layer computes keys and values for every token and everything else for the first.
pub fn forward(
    g: &mut Graph,
    c: &ModelConfig,
    t: &[TensorInfo],
    hook: &mut dyn LinearHook,
    batch: usize,
    seq: usize,
    first_only: bool,
) -> R<BertOut> {
    let (h, heads) = (c.hidden, c.heads);
    let d = h / heads;
    let eps = c.norm_eps as f32;
    let ids = data(g, "input_ids", &[batch, seq], DType::I64)?;
    let types = data(g, "token_type_ids", &[batch, seq], DType::I64)?;
    let mask = data(g, "attention_mask", &[batch, seq], DType::F32)?;
    // Embeddings.
    let we = frozen(g, t, "embeddings.word_embeddings.weight")?;
    let pe = frozen(g, t, "embeddings.position_embeddings.weight")?;
    let te = frozen(g, t, "embeddings.token_type_embeddings.weight")?;
    let w = g.add(crate::ir::Op::Gather, &[we, ids])?;
    let tt = g.add(crate::ir::Op::Gather, &[te, types])?;
    let pos = g.slice(pe, 0, 0, seq)?;
    let e = g.plus(w, tt)?;
    let e = g.plus(e, pos)?;
    let lw = frozen(g, t, "embeddings.LayerNorm.weight")?;
    let lb = frozen(g, t, "embeddings.LayerNorm.bias")?;
    let mut x = g.layer_norm(e, lw, lb, eps)?;
    // Additive mask: 0 where attended, the most negative f32 where padded (as transformers).
    let one = g.scalar(1.0)?;
    let inv = g.minus(one, mask)?;
    let neg = g.scale(inv, f32::MIN)?;
    let neg = g.reshape(neg, &[batch, 1, 1, seq])?;
    for l in 0..c.layers {
        let p = format!("encoder.layer.{l}");
        // Query rows: every token, or only the first in a first-only last layer.
        let rows = if first_only && l + 1 == c.layers {
            1
        } else {
            seq
        };
        let split = |g: &mut Graph, y: NodeId, n: usize| -> R<NodeId> {
            let y = g.reshape(y, &[batch, n, heads, d])?;
            g.permute(y, &[0, 2, 1, 3])
        };
        let xq = if rows == seq {
            x
        } else {
            g.slice(x, 1, 0, rows)?
        };
        let q = dense(g, hook, t, &format!("{p}.attention.self.query"), xq)?;
        let k = dense(g, hook, t, &format!("{p}.attention.self.key"), x)?;
        let v = dense(g, hook, t, &format!("{p}.attention.self.value"), x)?;
        let (q, k, v) = (split(g, q, rows)?, split(g, k, seq)?, split(g, v, seq)?);
        let a = g.attn_probs(q, k, neg, 1.0 / (d as f32).sqrt())?;
        let ctx = g.matmul(a, v)?;
        let ctx = g.permute(ctx, &[0, 2, 1, 3])?;
        let ctx = g.reshape(ctx, &[batch, rows, h])?;
        let o = dense(g, hook, t, &format!("{p}.attention.output.dense"), ctx)?;
        let r = g.plus(o, xq)?;
        let (w1, b1) = (
            frozen(g, t, &format!("{p}.attention.output.LayerNorm.weight"))?,
            frozen(g, t, &format!("{p}.attention.output.LayerNorm.bias"))?,
        );
        let x1 = g.layer_norm(r, w1, b1, eps)?;
        let i = dense(g, hook, t, &format!("{p}.intermediate.dense"), x1)?;
        let i = g.gelu(i)?;
        let o = dense(g, hook, t, &format!("{p}.output.dense"), i)?;
        let r = g.plus(o, x1)?;
        let (w2, b2) = (
            frozen(g, t, &format!("{p}.output.LayerNorm.weight"))?,
            frozen(g, t, &format!("{p}.output.LayerNorm.bias"))?,
        );
        x = g.layer_norm(r, w2, b2, eps)?;
    }
    let first = g.slice(x, 1, 0, 1)?;
    let first = g.reshape(first, &[batch, h])?;
    let pooled = dense(g, hook, t, "pooler.dense", first)?;
    let pooled = g.un(UnaryOp::Tanh, pooled)?;
    Ok(BertOut { hidden: x, pooled })
}
