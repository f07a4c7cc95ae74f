//! Parameter groups: each optimizer follows its own schedule (logged per group in
//! metrics.jsonl as `lr_groups`), and `clip … for head` bounds the head's update alone.

use lorac_compiler::check::check_source;
use lorac_runtime::train::{train, TrainOptions};
use lorac_runtime::weights::load;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Adapter tensors by name.
type Weights = HashMap<String, Vec<f32>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(tag: &str, clip: &str, steps: u64) -> Option<(Weights, Vec<serde_json::Value>)> {
    let r = root();
    if !r.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return None;
    }
    let data = std::env::temp_dir().join(format!("lorac-groups-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let src = std::fs::read_to_string(r.join("assets/spam/train.jsonl")).unwrap();
    std::fs::write(
        data.join("train.jsonl"),
        src.lines().take(8).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let text = format!(
        r#"import std.lora
model bert("{m}")
attach LoRA(r = 2, alpha = 4.0) to encoder.layer.*.attention.self.{{query, value}}
train {{
  data(train = "{d}/train.jsonl")
  task classification(labels = 2)
  optimizer adamw(lr = 1e-3, weight_decay = 0.0)
  optimizer sgd(lr = 0.5) for head
  schedule linear(warmup = 0)
  schedule constant for head
  {clip}
  batch 2
  max_len 16
  steps 4
  seed 3
  log(every = 1)
}}
"#,
        m = r.join("assets/minilm").display(),
        d = data.display(),
    );
    let c = check_source("groups.lora", &r.join("groups.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let out = std::env::temp_dir().join(format!("lorac-groups-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opt = TrainOptions {
        out: out.clone(),
        steps: Some(steps),
        ..Default::default()
    };
    train(&c.spec.unwrap(), &opt).unwrap();
    let w = load(&out.join("adapter/adapter.safetensors"), None)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.f().to_vec()))
        .collect();
    let m = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&out);
    Some((w, m))
}

/// L2 norm of the change of the tensors whose name passes `pick`.
fn moved(
    a: &HashMap<String, Vec<f32>>,
    b: &HashMap<String, Vec<f32>>,
    pick: fn(&str) -> bool,
) -> f64 {
    a.iter()
        .filter(|(k, _)| pick(k))
        .flat_map(|(k, v)| v.iter().zip(&b[k]).map(|(x, y)| ((x - y) as f64).powi(2)))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn each_group_follows_its_schedule_and_clip_touches_only_its_group() {
    let Some((w1, _)) = run("c1", "clip 1e-6 for head", 1) else {
        return;
    };
    let (w4, metrics) = run("c4", "clip 1e-6 for head", 4).unwrap();
    // The schedule is a function of (step, total): the 4-step run's rates.
    for (t, m) in metrics.iter().enumerate() {
        let g = &m["lr_groups"];
        let want_default = 1e-3 * (4 - t) as f64 / 4.0;
        assert!(
            (g["default"].as_f64().unwrap() - want_default).abs() < 1e-15,
            "{m}"
        );
        assert_eq!(g["head"].as_f64().unwrap(), 0.5, "{m}");
        assert_eq!(m["lr"], g["default"], "`lr` is the first optimizer's");
    }
    let head = |k: &str| k.starts_with("head");
    let adapters = |k: &str| !k.starts_with("head");
    // Plain SGD: each step moves the head by lr · ‖clipped gradient‖ ≤ 0.5 · 1e-6.
    let clipped = moved(&w1, &w4, head);
    assert!(
        clipped <= 3.0 * 0.5 * 1e-6 * (1.0 + 1e-3),
        "head moved {clipped:e}"
    );
    assert!(
        moved(&w1, &w4, adapters) > 1e-4,
        "the adapters are not clipped"
    );
    // Without the clip the same head moves by orders of magnitude more.
    let (u1, _) = run("u1", "", 1).unwrap();
    let (u4, _) = run("u4", "", 4).unwrap();
    let free = moved(&u1, &u4, head);
    assert!(
        free > 1e3 * clipped,
        "unclipped {free:e} vs clipped {clipped:e}"
    );
}
