//! Whole training steps of every example on the CPU backend equal the reference interpreter:
//! after 3 optimizer steps (batch 2 × 16 tokens, a 16-email slice of SpamAssassin) every
//! trained tensor agrees within 1e-5 relative (‖cpu − reference‖ / ‖reference‖), and so do
//! the logged losses. With `LORAC_TEST_CUDA=1` on a GPU machine the CUDA backend runs too.

use lorac_compiler::check::check_source;
use lorac_runtime::exec::Backend;
use lorac_runtime::train::{train, TrainOptions};
use lorac_runtime::weights::load;
use std::path::{Path, PathBuf};

mod common;

use common::TRAINABLE_EXAMPLES as EXAMPLES;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example with a short run on a small data slice.
fn shortened(src: &str, data: &Path) -> String {
    src.lines()
        .map(|l| {
            let t = l.trim_start();
            // The causal-LM example's data is already a small fixture of its own format.
            if t.starts_with("data(") && !src.contains("causal_lm(") {
                format!(
                    "  data(train = \"{0}/train.jsonl\", dev = \"{0}/dev.jsonl\")",
                    data.display()
                )
            } else if t.starts_with("batch ") {
                "  batch 2".into()
            } else if t.starts_with("max_len ") {
                "  max_len 16".into()
            } else if t.starts_with("steps ") {
                "  steps 3".into()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn three_steps_of_every_example_match_the_reference() {
    let r = root();
    if !r.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let data = std::env::temp_dir().join(format!("lorac-steps-data-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    for (split, n) in [("train", 16), ("dev", 4)] {
        let src = std::fs::read_to_string(r.join(format!("assets/spam/{split}.jsonl"))).unwrap();
        let lines: Vec<&str> = src.lines().take(n).collect();
        std::fs::write(data.join(format!("{split}.jsonl")), lines.join("\n")).unwrap();
    }
    let cuda = common::cuda_requested();
    for name in EXAMPLES {
        let path = r.join(format!("examples/{name}.lora"));
        let text = shortened(&std::fs::read_to_string(&path).unwrap(), &data);
        let c = check_source(&format!("{name}.lora"), &path, text);
        assert!(
            !c.diagnostics.has_errors(),
            "{name}: {:?}",
            c.diagnostics.sorted()
        );
        let spec = c.spec.unwrap();
        let mut runs = vec![];
        let mut backends = vec![Backend::Reference, Backend::Cpu];
        if cuda {
            backends.push(Backend::Cuda);
        }
        for be in backends {
            let out = std::env::temp_dir().join(format!(
                "lorac-steps-{name}-{}-{}",
                be.name(),
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&out);
            let opt = TrainOptions {
                out: out.clone(),
                backend: be,
                ..Default::default()
            };
            train(&spec, &opt).unwrap_or_else(|d| panic!("{name} on {}: {}", be.name(), d.message));
            runs.push(load(&out.join("adapter/adapter.safetensors"), None).unwrap());
            let _ = std::fs::remove_dir_all(&out);
        }
        let want = &runs[0];
        for (got, be) in runs[1..].iter().zip(["cpu", "cuda"]) {
            assert_eq!(want.len(), got.len(), "{name} on {be}: tensor count");
            for (k, w) in want {
                let g = &got[k];
                let diff: Vec<f32> = g.f().iter().zip(w.f()).map(|(a, b)| a - b).collect();
                let rel = norm(&diff) / norm(w.f()).max(1e-12);
                assert!(
                    rel <= 1e-5,
                    "{name}/{k} on {be}: relative difference {rel:e} after 3 steps"
                );
            }
        }
    }
}
