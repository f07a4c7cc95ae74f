//! Parity with Hugging Face transformers: MiniLM (BertModel) and a tiny random Llama
//! (LlamaModel / LlamaForCausalLM). Fixtures: tests/fixtures/make_{bert,llama}.py.

use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{Graph, Tensor};
use lorac_compiler::model::forward::NoAdapters;
use lorac_compiler::model::{bert, llama, parse_config, read_header, Family};
use lorac_runtime::weights::load;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn as_f32(t: &Tensor) -> Tensor {
    Tensor::f32(
        t.shape.clone(),
        t.to_f64().iter().map(|&v| v as f32).collect(),
    )
}

#[test]
fn minilm_matches_transformers_bert_model() {
    let dir = root().join("assets/minilm");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let fx = load(&root().join("tests/fixtures/bert_minilm.safetensors"), None).expect("fixture");
    let cfg = parse_config(
        Family::Bert,
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let tensors = read_header(&dir.join("model.safetensors")).unwrap();
    for (ids, hidden, pooled, mask) in [
        ("input_ids", "hidden", "pooled", Some("attention_mask")),
        ("hello_input_ids", "hello_hidden", "hello_pooled", None),
    ] {
        let ids = &fx[ids];
        let (b, l) = (ids.shape[0], ids.shape[1]);
        let mut g = Graph::new();
        let out = bert::forward(
            &mut g,
            &cfg,
            &tensors,
            &mut NoAdapters { tensors: &tensors },
            b,
            l,
            false,
        )
        .unwrap();
        lorac_compiler::ir::verify::verify(&g).unwrap();
        let mut inputs: HashMap<String, Tensor> =
            load(&dir.join("model.safetensors"), None).unwrap();
        inputs.insert("input_ids".into(), ids.clone());
        inputs.insert(
            "token_type_ids".into(),
            Tensor::i64(vec![b, l], vec![0; b * l]),
        );
        let m = match mask {
            Some(m) => as_f32(&fx[m]),
            None => Tensor::f32(vec![b, l], vec![1.0; b * l]),
        };
        inputs.insert("attention_mask".into(), m.clone());
        let vals = run(&g, &inputs).unwrap();
        let (hv, pv) = (&vals[&out.hidden], &vals[&out.pooled]);
        assert_eq!(hv.shape, fx[hidden].shape);
        // Compare hidden states where the attention mask is 1 (padded rows are unspecified).
        let hd = cfg.hidden;
        let mut worst = 0f32;
        for (row, &keep) in m.f().iter().enumerate() {
            if keep == 1.0 {
                for j in 0..hd {
                    worst = worst.max((hv.f()[row * hd + j] - fx[hidden].f()[row * hd + j]).abs());
                }
            }
        }
        assert!(worst < 1e-4, "{hidden}: max-abs {worst}");
        let pd = pv.max_abs_diff(&fx[pooled]);
        assert!(pd < 1e-4, "{pooled}: max-abs {pd}");
    }
}

#[test]
fn tiny_llama_matches_transformers_llama() {
    let dir = root().join("tests/fixtures/tiny_llama");
    let fx = load(
        &root().join("tests/fixtures/tiny_llama_outputs.safetensors"),
        None,
    )
    .expect("fixture");
    let cfg = parse_config(
        Family::Llama,
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((cfg.heads, cfg.kv_heads, cfg.head_dim), (4, 2, 16));
    let tensors = read_header(&dir.join("model.safetensors")).unwrap();
    let ids = &fx["input_ids"];
    let (b, l) = (ids.shape[0], ids.shape[1]);
    let mut g = Graph::new();
    let out = llama::forward(
        &mut g,
        &cfg,
        &tensors,
        &mut NoAdapters { tensors: &tensors },
        b,
        l,
    )
    .unwrap();
    lorac_compiler::ir::verify::verify(&g).unwrap();
    let mut inputs = load(&dir.join("model.safetensors"), None).unwrap();
    inputs.insert("input_ids".into(), ids.clone());
    inputs.insert("attention_mask".into(), as_f32(&fx["attention_mask"]));
    let vals = run(&g, &inputs).unwrap();
    let hd = vals[&out.hidden].max_abs_diff(&fx["hidden"]);
    let ld = vals[&out.logits].max_abs_diff(&fx["logits"]);
    assert!(hd < 1e-4, "hidden max-abs {hd}");
    assert!(ld < 1e-4, "logits max-abs {ld}");
}
