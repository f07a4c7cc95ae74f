//! The regression task: a one-output head on the pooled representation and mean squared
//! error; the loss the programs report equals (prediction − label)² recomputed from the
//! logits of a plain forward pass, and a few steps lower the training loss.

use lorac_compiler::check::check_source;
use lorac_runtime::data::{Example, Label};
use lorac_runtime::exec::Backend;
use lorac_runtime::infer::{infer_on, Emit};
use lorac_runtime::session::Session;
use lorac_runtime::train::{train, TrainOptions};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn regression_loss_is_the_squared_error_of_the_head() {
    let r = root();
    if !r.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    // Targets: 3.0 for spam, -1.0 for ham, on a 16-email slice.
    let d = std::env::temp_dir().join(format!("lorac-regression-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let src = std::fs::read_to_string(r.join("assets/spam/train.jsonl")).unwrap();
    let lines: Vec<String> = src
        .lines()
        .take(16)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let y = if v["label"] == 1 { 3.0 } else { -1.0 };
            serde_json::json!({"text": v["text"], "score": y}).to_string()
        })
        .collect();
    std::fs::write(d.join("train.jsonl"), lines.join("\n")).unwrap();
    let text = format!(
        r#"import std.lora
model bert("{m}")
attach LoRA(r = 4, alpha = 8.0) to encoder.layer.*.attention.self.{{query, value}}
train {{
  data(train = "{d}/train.jsonl", label = "score")
  task regression
  optimizer adamw(lr = 1e-3, weight_decay = 0.0)
  optimizer adamw(lr = 3e-2) for head
  batch 16
  max_len 32
  steps 8
  seed 5
  log(every = 1)
}}
"#,
        m = r.join("assets/minilm").display(),
        d = d.display(),
    );
    let c = check_source("reg.lora", &r.join("reg.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let spec = c.spec.unwrap();
    let s = Session::with_backend(&spec, Backend::Cpu).unwrap();
    for (t, y) in [
        ("win a free prize now", 3.0f32),
        ("meeting notes attached", -1.0),
    ] {
        let m = s
            .evaluate(&[Example {
                text: t.into(),
                label: Label::Value(y),
            }])
            .unwrap();
        let logits = infer_on(&spec, &[t.into()], Emit::Logits, None, Backend::Cpu).unwrap();
        assert_eq!(logits.shape, vec![1, 1]);
        let want = ((logits.f()[0] - y) as f64).powi(2);
        assert!(
            (m.loss - want).abs() <= 1e-5 * want.max(1.0),
            "{} vs {want}",
            m.loss
        );
        assert!(m.accuracy.is_none() && m.perplexity.is_none());
    }
    drop(s);
    let out = d.join("run");
    train(
        &spec,
        &TrainOptions {
            out: out.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < 0.5 * losses[0], "{losses:?}");
    let _ = std::fs::remove_dir_all(&d);
}
