//! Test-only helpers shared by the runtime's integration tests.
#![allow(dead_code)]

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
