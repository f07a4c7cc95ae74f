//! Base models: config.json, the safetensors header, and family knowledge.

pub mod bert;
pub mod config;
pub mod family;
pub mod forward;
pub mod header;
pub mod linear;
pub mod llama;

pub use config::{parse_config, Family, ModelConfig, FAMILIES};
pub use family::{expected_tensors, is_linear, layer_of};
pub use header::{read_header, TensorInfo};

use std::path::PathBuf;

/// A base model as the checker sees it: sizes, tensor names and shapes, no weights.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Family.
    pub family: Family,
    /// Directory holding the model files, when given.
    pub dir: Option<PathBuf>,
    /// config.json path.
    pub config_path: PathBuf,
    /// model.safetensors path, when present.
    pub weights: Option<PathBuf>,
    /// tokenizer.json path, when present.
    pub tokenizer: Option<PathBuf>,
    /// Sizes from config.json.
    pub config: ModelConfig,
    /// Tensors: from the safetensors header, or implied by the config when there are no weights.
    pub tensors: Vec<TensorInfo>,
    /// AlphaLoRA's PL_Alpha_Hill per layer, once computed from the weights (resolves `alpha_hill`).
    pub layer_alpha: Option<Vec<f64>>,
}

/// A linear layer that can be adapted.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Module path (tensor name without `.weight`).
    pub module: String,
    /// Output features (rows of W0).
    pub m: usize,
    /// Input features (columns of W0).
    pub n: usize,
    /// Layer index, if the module lies in a numbered layer.
    pub layer: Option<usize>,
}

impl ModelInfo {
    /// Every adaptable linear layer, in name order.
    pub fn linears(&self) -> Vec<Linear> {
        self.tensors
            .iter()
            .filter(|t| is_linear(t))
            .map(|t| {
                let module = t.name.trim_end_matches(".weight").to_string();
                Linear {
                    layer: layer_of(&module),
                    m: t.shape[0],
                    n: t.shape[1],
                    module,
                }
            })
            .collect()
    }
    /// Number of transformer layers.
    pub fn layers(&self) -> usize {
        self.config.layers
    }
}
