//! Expert batching (`build/batch.rs`) changes how GOAT's and MoLoRA's expert sums are computed,
//! not what they compute: on MiniLM with the examples' adapters, the loss and every gradient of
//! the batched graph equal the unrolled graph's (reference interpreter, 2 × 16 tokens) within
//! f32 summation-order noise, and the batched graph has far fewer products.

use lorac_compiler::build::loss::gradient_graph;
use lorac_compiler::build::lower::DROPOUT_SEED;
use lorac_compiler::build::{forward_with, BuildOptions, Geometry};
use lorac_compiler::check::check_file;
use lorac_compiler::ir::interp::run_outputs;
use lorac_compiler::ir::{Op, Tensor};
use std::collections::HashMap;
use std::path::Path;

mod common;

/// Loss and gradients of `spec` built unrolled and batched (reference interpreter, 2 × 16
/// tokens), with the number of products and of routed-expert nodes of each graph.
fn both(
    spec_path: &Path,
    training: bool,
    seed: i64,
) -> Vec<(usize, usize, HashMap<String, Tensor>)> {
    let geo = Geometry { batch: 2, seq: 16 };
    let spec = check_file(spec_path).spec.unwrap();
    let task = spec.train.as_ref().unwrap().task.clone();
    let mut runs = vec![];
    for batch_experts in [false, true] {
        let opts = BuildOptions {
            batch_experts,
            training,
            ..Default::default()
        };
        let mut f = forward_with(&spec, geo, opts).unwrap();
        gradient_graph(&mut f, &task).unwrap();
        let count = |pick: fn(&Op) -> bool| {
            f.graph
                .g
                .node_indices()
                .filter(|&i| pick(&f.graph.node(i).op))
                .count()
        };
        let products = count(|o| matches!(o, Op::MatMul));
        let routed = count(|o| {
            matches!(
                o,
                Op::RoutedProject { .. } | Op::RoutedExpand { .. } | Op::RoutedOuter { .. }
            )
        });
        let mut inputs = common::minilm_inputs(&spec, &f.params, 5, 37, vec![1.0; 32], [0, 1]);
        inputs.insert(DROPOUT_SEED.into(), Tensor::i64(vec![1], vec![seed]));
        let out: HashMap<String, Tensor> = run_outputs(&f.graph, &inputs)
            .unwrap()
            .into_iter()
            .collect();
        runs.push((products, routed, out));
    }
    runs
}

fn assert_close(name: &str, runs: &[(usize, usize, HashMap<String, Tensor>)]) {
    let (p_unrolled, want) = (runs[0].0, &runs[0].2);
    let (p_batched, got) = (runs[1].0, &runs[1].2);
    assert!(
        p_batched * 2 < p_unrolled,
        "{name}: {p_batched} products batched vs {p_unrolled} unrolled"
    );
    for (k, w) in want {
        let g = &got[k];
        let scale = w.f().iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = w.max_abs_diff(g);
        assert!(
            diff <= 1e-4 * scale,
            "{name}/{k}: batched differs by {diff:e} (scale {scale:e})"
        );
    }
}

#[test]
fn batched_and_unrolled_expert_sums_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    for name in ["goat", "molora"] {
        let runs = both(&root.join(format!("examples/{name}.lora")), false, 0);
        assert_close(name, &runs);
    }
}

/// With per-expert dropout (GOAT's bench spec, p = 0.05) the batched training graph
/// dispatches the routed tokens (`RoutedProject`, one per module) and draws exactly the
/// masks the unrolled sum draws for the selected experts: same loss and gradients.
#[test]
fn top_k_dispatch_with_per_expert_dropout_equals_the_unrolled_sum() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let spec = root.join("benches/specs/goat_all.lora");
    let runs = both(&spec, true, 77);
    assert_eq!(runs[0].1, 0, "the unrolled graph has no routed dispatch");
    // Per module (36) a forward projection and the factors' gradient (`RoutedOuter`); the
    // input's gradient (`RoutedExpand`) in all but layer 0's query, key and value, whose
    // input (the frozen embeddings) needs no gradient.
    assert_eq!(
        runs[1].1,
        36 + 36 + 33,
        "routed dispatch nodes in the batched graph"
    );
    assert_close("goat_all (training)", &runs);
    // The masks are live: another step's seed changes the loss.
    let other = both(&spec, true, 78);
    assert_ne!(other[1].2["loss"].f()[0], runs[1].2["loss"].f()[0]);
}

/// A dense softmax router weighs every expert: its per-expert dropout sum must not be
/// dispatched to one expert (its top-1 mask only serves `balance`); it stays unrolled.
#[test]
fn a_dense_router_with_dropout_is_not_dispatched() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let d = std::env::temp_dir().join(format!("lorac-loramoe-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let spec = d.join("loramoe.lora");
    std::fs::write(
        &spec,
        format!(
            "import std.loramoe\nmodel bert(\"{m}\")\n\
             attach LoRAMoE(E = 3, r = 2, p_drop = 0.1) to encoder.layer.*.attention.self.query\n\
             train {{\n  data(train = \"{t}\")\n  task classification(labels = 2)\n  \
             optimizer adamw(lr = 1e-3)\n  steps 1\n}}\n",
            m = root.join("assets/minilm").display(),
            t = root.join("assets/spam/dev.jsonl").display(),
        ),
    )
    .unwrap();
    let runs = both(&spec, true, 5);
    assert_eq!(runs[1].1, 0, "no routed dispatch behind a dense router");
    let (want, got) = (&runs[0].2, &runs[1].2);
    assert_eq!(want["loss"].f(), got["loss"].f(), "the same unrolled sum");
    let _ = std::fs::remove_dir_all(&d);
}
