//! Llama decoders as IR, following Hugging Face `LlamaModel`: RMSNorm, rotary embeddings
//! (rotate-half convention), grouped-query attention with a causal + padding mask, SwiGLU.

use super::forward::{data, dense, frozen, LinearHook};
use super::{ModelConfig, TensorInfo};
use crate::ir::{DType, Graph, NodeId, Op, R};
use std::sync::Arc;

/// The graph nodes a Llama forward pass produces.
pub struct LlamaOut {
    /// Final-norm hidden state `[batch, seq, hidden]`.
    pub hidden: NodeId,
    /// LM head logits `[batch, seq, vocab]`.
    pub logits: NodeId,
}

/// Rotary tables `cos, sin` of shape `[seq, head_dim]` (frequencies repeated for both halves).
fn rope_tables(seq: usize, d: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let (mut cos, mut sin) = (vec![0f32; seq * d], vec![0f32; seq * d]);
    for p in 0..seq {
        for i in 0..half {
            let inv = 1.0 / theta.powf((2 * i) as f64 / d as f64);
            // transformers computes the angle in f32.
            let ang = (p as f32) * (inv as f32);
            for j in [i, i + half] {
                cos[p * d + j] = ang.cos();
                sin[p * d + j] = ang.sin();
            }
        }
    }
    (cos, sin)
}

fn rotate(g: &mut Graph, x: NodeId, cos: NodeId, sin: NodeId) -> R<NodeId> {
    let s = g.shape(x).to_vec();
    let d = s[s.len() - 1];
    let ax = s.len() - 1;
    let x1 = g.slice(x, ax, 0, d / 2)?;
    let x2 = g.slice(x, ax, d / 2, d)?;
    let n2 = g.neg(x2)?;
    let rh = g.concat(&[n2, x1], ax)?;
    let a = g.times(x, cos)?;
    let b = g.times(rh, sin)?;
    g.plus(a, b)
}

/// Data inputs: `input_ids` (i64 `[batch, seq]`), `attention_mask` (f32 `[batch, seq]`).
pub fn forward(
    g: &mut Graph,
    c: &ModelConfig,
    t: &[TensorInfo],
    hook: &mut dyn LinearHook,
    batch: usize,
    seq: usize,
) -> R<LlamaOut> {
    let (h, heads, kv, d) = (c.hidden, c.heads, c.kv_heads, c.head_dim);
    let rep = heads / kv;
    let eps = c.norm_eps as f32;
    let ids = data(g, "input_ids", &[batch, seq], DType::I64)?;
    let mask = data(g, "attention_mask", &[batch, seq], DType::F32)?;
    let emb = frozen(g, t, "model.embed_tokens.weight")?;
    let mut x = g.add(Op::Gather, &[emb, ids])?;
    let (cv, sv) = rope_tables(seq, d, c.rope_theta);
    let cos = g.add(
        Op::Literal {
            shape: vec![seq, d],
            data: Arc::new(cv),
        },
        &[],
    )?;
    let sin = g.add(
        Op::Literal {
            shape: vec![seq, d],
            data: Arc::new(sv),
        },
        &[],
    )?;
    // Causal + padding mask, additive, [batch, 1, seq, seq].
    let mut causal = vec![0f32; seq * seq];
    for i in 0..seq {
        for j in i + 1..seq {
            causal[i * seq + j] = f32::MIN;
        }
    }
    let causal = g.add(
        Op::Literal {
            shape: vec![1, 1, seq, seq],
            data: Arc::new(causal),
        },
        &[],
    )?;
    let one = g.scalar(1.0)?;
    let inv = g.minus(one, mask)?;
    let pad = g.scale(inv, f32::MIN)?;
    let pad = g.reshape(pad, &[batch, 1, 1, seq])?;
    // Both masks at f32::MIN would overflow to -inf when added; take the minimum instead.
    let pad = g.bc(pad, &[batch, 1, seq, seq])?;
    let causal = g.bc(causal, &[batch, 1, seq, seq])?;
    let neg = g.add(Op::Binary(crate::ir::BinaryOp::Min), &[pad, causal])?;
    for l in 0..c.layers {
        let p = format!("model.layers.{l}");
        let nw = frozen(g, t, &format!("{p}.input_layernorm.weight"))?;
        let xn = g.rms_norm(x, nw, eps)?;
        let q = dense(g, hook, t, &format!("{p}.self_attn.q_proj"), xn)?;
        let k = dense(g, hook, t, &format!("{p}.self_attn.k_proj"), xn)?;
        let v = dense(g, hook, t, &format!("{p}.self_attn.v_proj"), xn)?;
        let q = g.reshape(q, &[batch, seq, heads, d])?;
        let q = g.permute(q, &[0, 2, 1, 3])?;
        let k = g.reshape(k, &[batch, seq, kv, d])?;
        let k = g.permute(k, &[0, 2, 1, 3])?;
        let v = g.reshape(v, &[batch, seq, kv, d])?;
        let v = g.permute(v, &[0, 2, 1, 3])?;
        let q = rotate(g, q, cos, sin)?;
        let k = rotate(g, k, cos, sin)?;
        // Grouped-query attention: query head i uses key/value head i / rep.
        let expand = |g: &mut Graph, y: NodeId| -> R<NodeId> {
            let y = g.reshape(y, &[batch, kv, 1, seq, d])?;
            let y = g.bc(y, &[batch, kv, rep, seq, d])?;
            g.reshape(y, &[batch, heads, seq, d])
        };
        let k = expand(g, k)?;
        let v = expand(g, v)?;
        let a = g.attn_probs(q, k, neg, 1.0 / (d as f32).sqrt())?;
        let o = g.matmul(a, v)?;
        let o = g.permute(o, &[0, 2, 1, 3])?;
        let o = g.reshape(o, &[batch, seq, heads * d])?;
        let o = dense(g, hook, t, &format!("{p}.self_attn.o_proj"), o)?;
        x = g.plus(x, o)?;
        let pw = frozen(g, t, &format!("{p}.post_attention_layernorm.weight"))?;
        let xn = g.rms_norm(x, pw, eps)?;
        let gt = dense(g, hook, t, &format!("{p}.mlp.gate_proj"), xn)?;
        let up = dense(g, hook, t, &format!("{p}.mlp.up_proj"), xn)?;
        let act = g.silu(gt)?;
        let m = g.times(act, up)?;
        let dn = dense(g, hook, t, &format!("{p}.mlp.down_proj"), m)?;
        x = g.plus(x, dn)?;
    }
    let fw = frozen(g, t, "model.norm.weight")?;
    let hidden = g.rms_norm(x, fw, eps)?;
    let head = if t.iter().any(|x| x.name == "lm_head.weight") {
        "lm_head"
    } else {
        "model.embed_tokens"
    };
    let logits = dense(g, hook, t, head, hidden)?;
    let _ = h;
    Ok(LlamaOut { hidden, logits })
}
