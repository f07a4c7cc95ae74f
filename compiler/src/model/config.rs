//! The parts of a Hugging Face `config.json` loraC needs, per family.

use serde_json::Value;

/// Supported base model families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT encoders (MiniLM).
    Bert,
    /// Llama decoders.
    Llama,
    /// One frozen linear layer on numeric vectors (synthetic studies): module `linear`.
    Linear,
}

/// Family names accepted after `model`.
pub const FAMILIES: &[&str] = &["bert", "llama", "linear"];

impl Family {
    /// Parses a family name.
    pub fn from_name(s: &str) -> Option<Family> {
        match s {
            "bert" => Some(Family::Bert),
            "llama" => Some(Family::Llama),
            "linear" => Some(Family::Linear),
            _ => None,
        }
    }

    /// The name a spec writes after `model`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Llama => "llama",
            Family::Linear => "linear",
        }
    }
}

/// Architecture sizes read from config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub family: Family,
    /// Hidden size (`linear`: `in_features`, the width of the input vectors).
    pub hidden: usize,
    /// FFN inner size (`linear`: `out_features`, the width of the output).
    pub intermediate: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (GQA); equals `heads` for BERT.
    pub kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest position (`linear`: 1, one vector per example).
    pub max_positions: usize,
    /// Token type vocabulary (BERT).
    pub type_vocab: usize,
    /// Layer/RMS norm epsilon.
    pub norm_eps: f64,
    /// Llama: lm_head shares the embedding.
    pub tie_embeddings: bool,
    /// Llama rotary base.
    pub rope_theta: f64,
    /// The whole JSON, for later stages.
    pub raw: Value,
}

fn get_usize(v: &Value, key: &str) -> Result<usize, String> {
    match v.get(key) {
        Some(x) => x
            .as_u64()
            .filter(|&n| n > 0 && n < (1 << 40))
            .map(|n| n as usize)
            .ok_or(format!(
                "field `{key}` must be a positive integer, found {x}"
            )),
        None => Err(format!("field `{key}` is missing")),
    }
}

fn opt_usize(v: &Value, key: &str, default: usize) -> Result<usize, String> {
    if v.get(key).is_none_or(|x| x.is_null()) {
        Ok(default)
    } else {
        get_usize(v, key)
    }
}

/// Reads the sizes a family needs; the error names the missing or bad field.
pub fn parse_config(family: Family, text: &str) -> Result<ModelConfig, String> {
    let raw: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if !raw.is_object() {
        return Err("not a JSON object".into());
    }
    if family == Family::Linear {
        return linear_config(raw);
    }
    let hidden = get_usize(&raw, "hidden_size")?;
    let heads = get_usize(&raw, "num_attention_heads")?;
    if hidden % heads != 0 && raw.get("head_dim").is_none() {
        return Err(format!(
            "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        ));
    }
    let kv_heads = opt_usize(&raw, "num_key_value_heads", heads)?;
    if heads % kv_heads != 0 {
        return Err(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        ));
    }
    let f = |k: &str, d: f64| raw.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
    Ok(ModelConfig {
        family,
        hidden,
        intermediate: get_usize(&raw, "intermediate_size")?,
        layers: get_usize(&raw, "num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim: opt_usize(&raw, "head_dim", hidden / heads)?,
        vocab: get_usize(&raw, "vocab_size")?,
        max_positions: opt_usize(&raw, "max_position_embeddings", 512)?,
        type_vocab: opt_usize(&raw, "type_vocab_size", 2)?,
        norm_eps: match family {
            Family::Bert => f("layer_norm_eps", 1e-12),
            Family::Llama | Family::Linear => f("rms_norm_eps", 1e-6),
        },
        tie_embeddings: raw
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        // transformers ≥ 5 nests it under `rope_parameters`.
        rope_theta: raw
            .get("rope_theta")
            .or_else(|| raw.get("rope_parameters").and_then(|r| r.get("rope_theta")))
            .and_then(|x| x.as_f64())
            .unwrap_or(10000.0),
        raw,
    })
}

/// `{"model_type": "linear", "in_features": N, "out_features": M, "bias": true}`: the sizes of
/// one `torch.nn.Linear`. The transformer fields get neutral values: no layers, no vocabulary,
/// one position (an example is one vector).
fn linear_config(raw: Value) -> Result<ModelConfig, String> {
    let in_features = get_usize(&raw, "in_features")?;
    let out_features = get_usize(&raw, "out_features")?;
    if let Some(b) = raw.get("bias").filter(|b| !b.is_null() && !b.is_boolean()) {
        return Err(format!("field `bias` must be true or false, found {b}"));
    }
    Ok(ModelConfig {
        family: Family::Linear,
        hidden: in_features,
        intermediate: out_features,
        layers: 0,
        heads: 1,
        kv_heads: 1,
        head_dim: in_features,
        vocab: 0,
        max_positions: 1,
        type_vocab: 0,
        norm_eps: 0.0,
        tie_embeddings: false,
        rope_theta: 0.0,
        raw,
    })
}
