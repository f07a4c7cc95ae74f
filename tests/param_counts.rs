//! Trainable-parameter counts from a config alone (no weights): MoLA on LLaMA-2-7B
//! (methods.md §7.7) and GOAT's scale s = √(3·n·η/d) (methods.md §2.2).

use lorac_compiler::check::check_source;
use lorac_compiler::check::value::Value;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn mola_params(pattern: &str) -> i64 {
    let text = format!(
        "import std.molora\nmodel llama(config = \"configs/llama2-7b.json\")\n\
         attach MoLoRA(E = groups({pattern}), k = min(2, E), r = 8, alpha = 16.0)\n    \
         to model.layers.*.self_attn.{{q_proj, k_proj, v_proj, o_proj}}, model.layers.*.mlp.{{gate_proj, up_proj, down_proj}}\n"
    );
    let c = check_source("mola.lora", &root().join("examples/mola_counts.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let spec = c.spec.expect("checked spec");
    assert_eq!(spec.attachments.len(), 32 * 7);
    spec.attachments
        .iter()
        .flat_map(|a| a.instance.params.iter())
        .map(|p| p.numel().expect("known shape"))
        .sum()
}

#[test]
fn mola_parameter_counts_on_llama2_7b_match_the_paper() {
    assert_eq!(mola_params("2, 4, 6, 8"), 105_635_840);
    assert_eq!(mola_params("8, 8, 8, 8"), 169_017_344);
    assert_eq!(mola_params("4, 4, 4, 4"), 84_508_672);
}

fn goat_scale(n: usize, r: i64, eta: f64) -> f64 {
    // A config-only bert whose linears have `n` inputs; GOAT's `s` is read back from the checker.
    let dir = std::env::temp_dir().join(format!("lorac-goat-scale-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        r#"{{"hidden_size": {n}, "num_attention_heads": 8, "intermediate_size": {i}, "num_hidden_layers": 1,
            "vocab_size": 10, "max_position_embeddings": 8, "type_vocab_size": 2}}"#,
        i = 4 * n
    );
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let text = format!(
        "import std.goat\nmodel bert(config = \"config.json\")\n\
         attach Goat(E = 8, k = 2, r = {r}, eta = {eta:?}) to encoder.layer.0.attention.self.query\n"
    );
    let c = check_source("goat.lora", &dir.join("goat.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let spec = c.spec.expect("checked spec");
    let s = spec.attachments[0]
        .instance
        .scalars
        .iter()
        .find(|(k, _)| k == "s")
        .map(|(_, v)| v.clone());
    match s {
        Some(Value::Float(x)) => x,
        other => panic!("no float `s`: {other:?}"),
    }
}

#[test]
fn goat_scale_values_match_methods_md() {
    // CLIP ViT-B/32 (r = 8, E = 8), RoBERTa-large (r = 32), LLaMA2-7B NLG (r = 8), CR (r = 32, η = 0.1).
    for (n, r, eta, want) in [
        (768, 8, 1.0, 48.0),
        (1024, 32, 1.0, 27.7),
        (4096, 8, 1.0, 110.9),
        (4096, 32, 0.1, 17.5),
    ] {
        let s = goat_scale(n, r, eta);
        assert!(
            (s - want).abs() < 0.05,
            "n = {n}, r = {r}, eta = {eta}: s = {s}, want {want}"
        );
    }
}
