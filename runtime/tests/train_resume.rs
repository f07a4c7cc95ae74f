//! Training on real data: the loss goes down on a small SpamAssassin slice, and a run resumed
//! from a checkpoint ends bit-identical to an uninterrupted one.

use lorac_compiler::check::check_source;
use lorac_runtime::train::{train, TrainOptions};
use lorac_runtime::weights::load;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec(steps: u64, lr: f64, n_train: usize, batch: usize) -> Option<lorac_compiler::check::Spec> {
    let r = root();
    if !r.join("assets/minilm/model.safetensors").is_file()
        || !r.join("assets/spam/train.jsonl").is_file()
    {
        eprintln!("skipped: run scripts/fetch-assets first");
        return None;
    }
    // A small slice keeps the test fast: 64 training and 16 dev examples.
    let data =
        std::env::temp_dir().join(format!("lorac-train-data-{}-{n_train}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    for (split, n) in [("train", n_train), ("dev", 16)] {
        let src = std::fs::read_to_string(r.join(format!("assets/spam/{split}.jsonl"))).unwrap();
        let lines: Vec<&str> = src.lines().take(n).collect();
        std::fs::write(data.join(format!("{split}.jsonl")), lines.join("\n")).unwrap();
    }
    let text = format!(
        r#"import std.lora
model bert("{m}")
attach LoRA(r = 4, alpha = 8.0) to encoder.layer.*.attention.self.{{query, value}}
train {{
  data(train = "{d}/train.jsonl", dev = "{d}/dev.jsonl")
  task classification(labels = 2)
  optimizer adamw(lr = {lr}, weight_decay = 0.01)
  optimizer adamw(lr = 1e-2) for head
  schedule linear(warmup = 1)
  batch {batch}
  max_len 16
  steps {steps}
  seed 7
  eval(every = 1000, metric = "accuracy")
  log(every = 1)
}}
"#,
        m = r.join("assets/minilm").display(),
        d = data.display(),
    );
    let c = check_source("train_test.lora", &r.join("train_test.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    c.spec
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts(out: &Path, resume: bool, stop_after: Option<u64>) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        steps: None,
        checkpoint_every: Some(2),
        resume,
        progress: false,
        stop_after,
        backend: Default::default(),
    }
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let Some(s) = spec(6, 1e-3, 64, 4) else {
        return;
    };
    let full = tmp("full");
    train(&s, &opts(&full, false, None)).unwrap();
    // Killed after step 4 (the checkpoint written at step 4), then resumed to step 6.
    let part = tmp("part");
    train(&s, &opts(&part, false, Some(4))).unwrap();
    let meta = std::fs::read_to_string(part.join("checkpoint/state.json")).unwrap();
    assert!(meta.contains("\"step\":4"), "{meta}");
    train(&s, &opts(&part, true, None)).unwrap();
    let a = load(&full.join("adapter/adapter.safetensors"), None).unwrap();
    let b = load(&part.join("adapter/adapter.safetensors"), None).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(t.f()), bits(b[k].f()), "{k} differs after resume");
    }
    let (la, lb) = (losses(&full), losses(&part));
    assert_eq!(la[4..], lb[4..], "losses of steps 5 and 6 must match");
    assert!(full.join("loss.svg").is_file());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("adapter/adapter.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format"], "lorac-adapter");
    assert_eq!(manifest["version"], 1);
    // Every tensor in the safetensors file is described by the manifest, with its shape.
    let described: Vec<(String, Vec<usize>)> = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(described.len(), a.len());
    for (name, shape) in described {
        assert_eq!(a[&name].shape, shape, "{name}");
    }
}

#[test]
fn loss_goes_down_on_a_real_slice() {
    // Eight examples seen as one batch per step: the loss on them must fall clearly.
    let Some(s) = spec(10, 2e-3, 8, 8) else {
        return;
    };
    let out = tmp("down");
    train(&s, &opts(&out, false, None)).unwrap();
    let l = losses(&out);
    let (first, last) = (l[0].1, l[l.len() - 1].1);
    assert!(
        last < 0.8 * first,
        "loss went from {first} to {last}: {l:?}"
    );
}
