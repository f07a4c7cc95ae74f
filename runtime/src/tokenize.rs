//! Tokenization with the model's `tokenizer.json` (Hugging Face `tokenizers`).

use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// A tokenized batch, padded to its longest sequence.
pub struct Batch {
    /// Token ids `[batch, seq]`, row-major.
    pub ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<f32>,
    /// Token type ids.
    pub types: Vec<i64>,
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

/// Loads a tokenizer and sets padding to the longest sequence and truncation to `max_len`
/// (whatever the file configures).
pub fn load(path: &Path, max_len: usize) -> Result<Tokenizer, String> {
    let mut t = Tokenizer::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pad_id = t.get_padding().map(|p| p.pad_id).unwrap_or(0);
    let pad_token = t
        .get_padding()
        .map(|p| p.pad_token.clone())
        .unwrap_or_else(|| "[PAD]".into());
    t.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..Default::default()
    }));
    t.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| e.to_string())?;
    Ok(t)
}

/// Tokenizes texts into one padded batch.
pub fn encode(t: &Tokenizer, texts: &[String]) -> Result<Batch, String> {
    let enc = t
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| e.to_string())?;
    let seq = enc
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let batch = enc.len();
    let mut b = Batch {
        ids: vec![0; batch * seq],
        mask: vec![0.0; batch * seq],
        types: vec![0; batch * seq],
        batch,
        seq,
    };
    for (r, e) in enc.iter().enumerate() {
        for (k, ((&id, &m), &ty)) in e
            .get_ids()
            .iter()
            .zip(e.get_attention_mask())
            .zip(e.get_type_ids())
            .enumerate()
        {
            b.ids[r * seq + k] = id as i64;
            b.mask[r * seq + k] = m as f32;
            b.types[r * seq + k] = ty as i64;
        }
    }
    Ok(b)
}

/// Token ids and token type ids of one text.
pub type Encoded = (Vec<i64>, Vec<i64>);

/// Tokenizes each text once (truncated to the tokenizer's max length), unpadded.
pub fn encode_each(t: &Tokenizer, texts: &[String]) -> Result<Vec<Encoded>, String> {
    let enc = t
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| e.to_string())?;
    Ok(enc
        .iter()
        .map(|e| {
            let n = e.get_attention_mask().iter().filter(|&&m| m == 1).count();
            let ids = e.get_ids()[..n].iter().map(|&i| i as i64).collect();
            let types = e.get_type_ids()[..n].iter().map(|&i| i as i64).collect();
            (ids, types)
        })
        .collect())
}

/// Token ids of each text without special tokens (no BOS), unpadded and truncated: the
/// completions of causal-LM examples, which continue a prompt that already has them.
pub fn encode_plain(t: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<i64>>, String> {
    let enc = t
        .encode_batch(texts.to_vec(), false)
        .map_err(|e| e.to_string())?;
    Ok(enc
        .iter()
        .map(|e| {
            let n = e.get_attention_mask().iter().filter(|&&m| m == 1).count();
            e.get_ids()[..n].iter().map(|&i| i as i64).collect()
        })
        .collect())
}
