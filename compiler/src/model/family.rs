//! The tensor names and shapes each family's config implies (used when only config.json
//! is given, and to cross-check config.json against the weights).

use super::config::{Family, ModelConfig};
use super::header::TensorInfo;

fn t(name: String, shape: Vec<usize>) -> TensorInfo {
    TensorInfo {
        name,
        dtype: "F32".into(),
        shape,
    }
}

/// Every tensor the family's architecture has for this config.
pub fn expected_tensors(c: &ModelConfig) -> Vec<TensorInfo> {
    let (h, i) = (c.hidden, c.intermediate);
    let mut v = Vec::new();
    match c.family {
        Family::Bert => {
            v.push(t(
                "embeddings.word_embeddings.weight".into(),
                vec![c.vocab, h],
            ));
            v.push(t(
                "embeddings.position_embeddings.weight".into(),
                vec![c.max_positions, h],
            ));
            v.push(t(
                "embeddings.token_type_embeddings.weight".into(),
                vec![c.type_vocab, h],
            ));
            v.push(t("embeddings.LayerNorm.weight".into(), vec![h]));
            v.push(t("embeddings.LayerNorm.bias".into(), vec![h]));
            for l in 0..c.layers {
                let p = format!("encoder.layer.{l}");
                for (name, shape) in [
                    ("attention.self.query", vec![h, h]),
                    ("attention.self.key", vec![h, h]),
                    ("attention.self.value", vec![h, h]),
                    ("attention.output.dense", vec![h, h]),
                    ("intermediate.dense", vec![i, h]),
                    ("output.dense", vec![h, i]),
                ] {
                    v.push(t(format!("{p}.{name}.bias"), vec![shape[0]]));
                    v.push(t(format!("{p}.{name}.weight"), shape));
                }
                for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                    v.push(t(format!("{p}.{ln}.weight"), vec![h]));
                    v.push(t(format!("{p}.{ln}.bias"), vec![h]));
                }
            }
            v.push(t("pooler.dense.weight".into(), vec![h, h]));
            v.push(t("pooler.dense.bias".into(), vec![h]));
        }
        Family::Llama => {
            let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
            v.push(t("model.embed_tokens.weight".into(), vec![c.vocab, h]));
            for l in 0..c.layers {
                let p = format!("model.layers.{l}");
                for (name, shape) in [
                    ("self_attn.q_proj", vec![q, h]),
                    ("self_attn.k_proj", vec![kv, h]),
                    ("self_attn.v_proj", vec![kv, h]),
                    ("self_attn.o_proj", vec![h, q]),
                    ("mlp.gate_proj", vec![i, h]),
                    ("mlp.up_proj", vec![i, h]),
                    ("mlp.down_proj", vec![h, i]),
                ] {
                    v.push(t(format!("{p}.{name}.weight"), shape));
                }
                v.push(t(format!("{p}.input_layernorm.weight"), vec![h]));
                v.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h]));
            }
            v.push(t("model.norm.weight".into(), vec![h]));
            if !c.tie_embeddings {
                v.push(t("lm_head.weight".into(), vec![c.vocab, h]));
            }
        }
        Family::Linear => {
            // `torch.nn.Linear(in, out)`: weight [out, in], and a bias unless `"bias": false`.
            v.push(t(format!("{}.weight", super::linear::MODULE), vec![i, h]));
            if c.raw.get("bias").and_then(|b| b.as_bool()).unwrap_or(true) {
                v.push(t(format!("{}.bias", super::linear::MODULE), vec![i]));
            }
        }
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// True for a tensor that is a linear layer's weight (adaptable): 2-D `*.weight`,
/// not an embedding table or a norm.
pub fn is_linear(t: &TensorInfo) -> bool {
    t.shape.len() == 2
        && t.name.ends_with(".weight")
        && !t.name.contains("embed")
        && !t.name.to_ascii_lowercase().contains("norm")
}

/// The layer index of a module path: the first all-digit segment.
pub fn layer_of(module: &str) -> Option<usize> {
    module
        .split('.')
        .find(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}
