//! Test-only helpers shared by the runtime's integration tests.
#![allow(dead_code)]

pub mod adapter_fd;
pub mod case;

use lorac_compiler::ir::Tensor;
use std::path::{Path, PathBuf};

/// Writes f32 tensors to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            assert_eq!(t.f().len(), t.len(), "`{n}` is not an f32 tensor");
            (
                n.clone(),
                t.f().iter().flat_map(|x| x.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A fresh, empty directory under the system temp dir, unique to this process and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every example in `examples/` with a train block (the config-only LLaMA plan has none).
pub const TRAINABLE_EXAMPLES: [&str; 13] = [
    "lora",
    "rslora",
    "pissa",
    "milora",
    "dora",
    "molora",
    "hydralora",
    "goat",
    "mola",
    "alphalora",
    "riemannian",
    "my_variant",
    "causal_lm",
];

/// True when `LORAC_TEST_CUDA=1` asks the backend tests to include CUDA. Asking on a machine
/// without a usable device fails loudly (the run would otherwise prove nothing); not asking
/// prints that CUDA was skipped.
pub fn cuda_requested() -> bool {
    if std::env::var("LORAC_TEST_CUDA").as_deref() != Ok("1") {
        eprintln!("CUDA backend skipped: set LORAC_TEST_CUDA=1 on a machine with an NVIDIA GPU");
        return false;
    }
    if let Err(d) = lorac_runtime::exec::Backend::Cuda.available() {
        panic!(
            "LORAC_TEST_CUDA=1 but the CUDA backend is unavailable: {} ({})",
            d.message, d.code
        );
    }
    true
}

/// What a MiniLM training graph of 2 × 16 tokens reads: the weights, every parameter drawn
/// uniform in ±0.05 from `seed` (B starts at zero in most methods; random values make every
/// path carry signal), ids `1000 + (i · id_step) mod 5000`, the attention `mask` and `labels`.
pub fn minilm_inputs(
    spec: &lorac_compiler::check::Spec,
    params: &[lorac_compiler::build::lower::ParamInfo],
    seed: u64,
    id_step: i64,
    mask: Vec<f32>,
    labels: [i64; 2],
) -> std::collections::HashMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shapes = params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let mut inputs =
        lorac_runtime::weights::load(&root.join("assets/minilm/model.safetensors"), None).unwrap();
    let values = lorac_runtime::init::initialize(spec, &shapes, &mut inputs, 1).unwrap();
    inputs.extend(values);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for p in params {
        let n: usize = p.shape.iter().product();
        let v = (0..n).map(|_| rng.random_range(-0.05..0.05)).collect();
        inputs.insert(p.name.clone(), Tensor::f32(p.shape.clone(), v));
    }
    let n = 32;
    let ids = (0..n).map(|i| 1000 + (i * id_step) % 5000).collect();
    inputs.insert("input_ids".into(), Tensor::i64(vec![2, 16], ids));
    inputs.insert(
        "token_type_ids".into(),
        Tensor::i64(vec![2, 16], vec![0; 32]),
    );
    inputs.insert("attention_mask".into(), Tensor::f32(vec![2, 16], mask));
    inputs.insert("labels".into(), Tensor::i64(vec![2], labels.to_vec()));
    inputs
}
