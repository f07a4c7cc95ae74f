//! Expert batching (`build/batch.rs`) changes how GOAT's and MoLoRA's expert sums are computed,
//! not what they compute: on MiniLM with the examples' adapters, the loss and every gradient of
//! the batched graph equal the unrolled graph's (reference interpreter, 2 × 16 tokens) within
//! f32 summation-order noise, and the batched graph has far fewer products.

use lorac_compiler::build::loss::gradient_graph;
use lorac_compiler::build::{forward_with, BuildOptions, Geometry};
use lorac_compiler::check::check_file;
use lorac_compiler::ir::interp::run_outputs;
use lorac_compiler::ir::{Op, Tensor};
use lorac_runtime::{init, weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

#[test]
fn batched_and_unrolled_expert_sums_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let geo = Geometry { batch: 2, seq: 16 };
    for name in ["goat", "molora"] {
        let spec = check_file(&root.join(format!("examples/{name}.lora")))
            .spec
            .unwrap();
        let task = spec.train.as_ref().unwrap().task.clone();
        let mut runs = vec![];
        for batch_experts in [false, true] {
            let opts = BuildOptions {
                batch_experts,
                ..Default::default()
            };
            let mut f = forward_with(&spec, geo, opts).unwrap();
            gradient_graph(&mut f, &task).unwrap();
            let products = f
                .graph
                .g
                .node_indices()
                .filter(|&i| matches!(f.graph.node(i).op, Op::MatMul))
                .count();
            let shapes: HashMap<String, Vec<usize>> = f
                .params
                .iter()
                .map(|p| (p.name.clone(), p.shape.clone()))
                .collect();
            let mut inputs =
                weights::load(&root.join("assets/minilm/model.safetensors"), None).unwrap();
            let values = init::initialize(&spec, &shapes, &mut inputs, 1).unwrap();
            inputs.extend(values);
            // B starts at zero in some methods: give every parameter a random value so every
            // path carries signal.
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            for p in &f.params {
                let n: usize = p.shape.iter().product();
                let v = (0..n).map(|_| rng.random_range(-0.05..0.05)).collect();
                inputs.insert(p.name.clone(), Tensor::f32(p.shape.clone(), v));
            }
            let n = geo.batch * geo.seq;
            let ids = (0..n).map(|i| 1000 + (i as i64 * 37) % 5000).collect();
            inputs.insert("input_ids".into(), Tensor::i64(vec![2, 16], ids));
            inputs.insert(
                "token_type_ids".into(),
                Tensor::i64(vec![2, 16], vec![0; n]),
            );
            inputs.insert(
                "attention_mask".into(),
                Tensor::f32(vec![2, 16], vec![1.0; n]),
            );
            inputs.insert("labels".into(), Tensor::i64(vec![2], vec![0, 1]));
            let out: HashMap<String, Tensor> = run_outputs(&f.graph, &inputs)
                .unwrap()
                .into_iter()
                .collect();
            runs.push((products, out));
        }
        let ((p_unrolled, want), (p_batched, got)) = (&runs[0], &runs[1]);
        assert!(
            p_batched * 2 < *p_unrolled,
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
}
