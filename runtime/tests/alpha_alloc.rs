//! `alpha_hill` allocations become concrete per-layer expert counts from MiniLM's spectra.
//! The per-layer alphas were cross-checked against an independent numpy port of methods.md §3.1
//! (agreement 3e-13 on all 37 matrices, made during development); the allocation rule is
//! tested on methods.md's vectors in compiler/tests/alpha_hill.rs.

use lorac_compiler::check::check_file;
use lorac_compiler::check::value::Value;
use std::path::Path;

#[test]
fn alphalora_example_gets_concrete_experts_per_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let spec = check_file(&root.join("examples/alphalora.lora"))
        .spec
        .expect("example checks clean");
    let resolved = lorac_runtime::alloc::resolved(&spec).expect("allocation");
    let mut per_layer = vec![0i64; 6];
    for a in &resolved.attachments {
        let arg = |n: &str| a.args.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (Some(Value::Int(e)), Some(Value::Int(k))) = (arg("E"), arg("k")) else {
            panic!("E and k must be concrete: {:?}", a.args)
        };
        assert_eq!(k, e.min(2), "top_k = 2 unless a layer gets 1 expert");
        let l = a.layer.expect("layer module");
        assert!(
            per_layer[l] == 0 || per_layer[l] == e,
            "one count per layer"
        );
        per_layer[l] = e;
    }
    assert_eq!(per_layer.iter().sum::<i64>(), 24, "the budget");
    assert_eq!(per_layer, vec![3, 4, 5, 4, 3, 5]);
}
