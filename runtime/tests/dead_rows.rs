//! Dead-row elimination: when only BERT's pooled first token is read, the last layer computes
//! keys and values for every token and the rest for the first. Loss and every gradient equal
//! the full graph's (reference interpreter, f32 noise), with clearly fewer product FLOPs;
//! specs whose last layer has a balance loss (which reads every token) keep the full layer.

use lorac_compiler::build::loss::gradient_graph;
use lorac_compiler::build::{first_token_suffices, forward_with, BuildOptions, Geometry};
use lorac_compiler::check::check_file;
use lorac_compiler::ir::interp::run_outputs;
use lorac_compiler::ir::{Graph, Op, Tensor};
use std::collections::HashMap;
use std::path::Path;

mod common;

/// Sum of 2·m·k·n over the graph's matrix products.
fn product_flops(g: &Graph) -> f64 {
    g.g.node_indices()
        .filter(|&i| matches!(g.node(i).op, Op::MatMul))
        .map(|i| {
            let a = g.shape(g.inputs(i)[0]).to_vec();
            let out = g.node(i).shape.clone();
            let k = a[a.len() - 1] as f64;
            2.0 * k * out.iter().map(|&d| d as f64).product::<f64>()
        })
        .sum()
}

#[test]
fn the_first_token_graph_equals_the_full_graph() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let check = |name: &str| check_file(&root.join(name)).spec.unwrap();
    assert!(
        !first_token_suffices(&check("examples/goat.lora")),
        "balance loss in the last layer"
    );
    assert!(
        !first_token_suffices(&check("examples/causal_lm.lora")),
        "every token is scored"
    );
    let spec = check("examples/lora.lora");
    assert!(first_token_suffices(&spec));
    let geo = Geometry { batch: 2, seq: 16 };
    let task = spec.train.as_ref().unwrap().task.clone();
    let mut runs = vec![];
    for first_token_only in [false, true] {
        let opts = BuildOptions {
            first_token_only,
            ..Default::default()
        };
        let mut f = forward_with(&spec, geo, opts).unwrap();
        gradient_graph(&mut f, &task).unwrap();
        // The second sequence is padded after 11 tokens.
        let mask = (0..32).map(|i| f32::from(i < 16 || i % 16 < 11)).collect();
        let inputs = common::minilm_inputs(&spec, &f.params, 3, 53, mask, [1, 0]);
        let out: HashMap<String, Tensor> = run_outputs(&f.graph, &inputs)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k == "loss" || k.starts_with("grad."))
            .collect();
        runs.push((product_flops(&f.graph), out));
    }
    let ((full_flops, want), (first_flops, got)) = (&runs[0], &runs[1]);
    assert_eq!(want.len(), got.len());
    for (k, w) in want {
        let scale = w.f().iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = w.max_abs_diff(&got[k]);
        assert!(
            diff <= 1e-5 * scale,
            "{k}: differs by {diff:e} (scale {scale:e})"
        );
    }
    // Of six layers, the last keeps only its key/value products (and the first row of the
    // rest): at least a tenth of the product work goes.
    assert!(
        *first_flops < 0.9 * full_flops,
        "{first_flops:e} vs {full_flops:e} product FLOPs"
    );
}
