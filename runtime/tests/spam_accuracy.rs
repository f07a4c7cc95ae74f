//! LoRA on MiniLM reaches ≥ 95 % dev accuracy on SpamAssassin (616 dev emails) on the CPU
//! backend: r = 8 on query, value and both FFN linears, 150 steps of 16 × 64 tokens.
//! Measured: 0.963 (seed 42) and 0.974 (seed 7) accuracy; about 1.5 minutes on 2 cores.

use lorac_compiler::check::check_source;
use lorac_runtime::train::{train, TrainOptions};
use std::path::Path;

#[test]
fn lora_reaches_95_percent_dev_accuracy_on_spamassassin() {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !r.join("assets/minilm/model.safetensors").is_file()
        || !r.join("assets/spam/dev.jsonl").is_file()
    {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let text = format!(
        r#"import std.lora
model bert("{m}")
attach LoRA(r = 8, alpha = 16.0) to encoder.layer.*.attention.self.{{query, value}},
    encoder.layer.*.intermediate.dense,
    encoder.layer.*.output.dense
train {{
  data(train = "{d}/train.jsonl", dev = "{d}/dev.jsonl")
  task classification(labels = 2)
  optimizer adamw(lr = 1e-3, weight_decay = 0.0)
  optimizer adamw(lr = 1e-2) for head
  schedule linear(warmup = 0.1)
  batch 16
  max_len 64
  steps 150
  seed 42
  eval(every = 1000, metric = "accuracy")
  log(every = 50)
}}
"#,
        m = r.join("assets/minilm").display(),
        d = r.join("assets/spam").display(),
    );
    let c = check_source("spam95.lora", &r.join("spam95.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let out = std::env::temp_dir().join(format!("lorac-spam95-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opt = TrainOptions {
        out: out.clone(),
        ..Default::default()
    };
    let m = train(&c.spec.unwrap(), &opt)
        .unwrap_or_else(|d| panic!("{}", d.message))
        .expect("dev metrics");
    let _ = std::fs::remove_dir_all(&out);
    let acc = m.accuracy.unwrap();
    assert_eq!(m.examples, 616);
    assert!(acc >= 0.95, "dev accuracy {acc:.4} < 0.95");
}
