//! Causal-LM training on the tiny random Llama of the fixtures (`examples/causal_lm.lora`):
//! the loss the programs compute equals next-token cross-entropy recomputed from the model's
//! logits, and training lowers dev perplexity below what the task allows without copying.

use lorac_compiler::check::{check_source, Spec};
use lorac_runtime::data::{Example, Label};
use lorac_runtime::exec::Backend;
use lorac_runtime::infer::{infer_on, Emit};
use lorac_runtime::session::Session;
use lorac_runtime::train::{train, TrainOptions};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example_spec() -> Spec {
    let path = root().join("examples/causal_lm.lora");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = check_source("causal_lm.lora", &path, text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    c.spec.unwrap()
}

/// Mean next-token NLL over the completion (+ EOS) of `prompt + completion`, in f64 from the
/// logits of a plain forward pass over the text: the loss the training programs should report.
fn oracle_loss(spec: &Spec, prompt: &str, completion: &str, eos: usize) -> f64 {
    let text = format!("{prompt}{completion}");
    let logits = infer_on(
        spec,
        std::slice::from_ref(&text),
        Emit::Logits,
        None,
        Backend::Reference,
    )
    .unwrap();
    let (n, v) = (logits.shape[1], logits.shape[2]);
    let lg = logits.f();
    // The fixture's tokenizer is one token per character after the BOS token (id 1).
    let ids: Vec<usize> = std::iter::once(1)
        .chain(text.chars().map(|c| c as usize - 32 + 4))
        .collect();
    assert_eq!(ids.len(), n, "one token per character plus BOS");
    let first = 1 + prompt.chars().count();
    let mut total = 0.0;
    for t in first - 1..n {
        let target = if t + 1 < n { ids[t + 1] } else { eos };
        let row: Vec<f64> = lg[t * v..(t + 1) * v].iter().map(|&x| x as f64).collect();
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        total += lse - row[target];
    }
    total / (n - first + 1) as f64
}

#[test]
fn the_programs_loss_is_next_token_cross_entropy_of_the_completion() {
    let spec = example_spec();
    let eos = spec.model.as_ref().unwrap().config.raw["eos_token_id"]
        .as_u64()
        .unwrap() as usize;
    for backend in [Backend::Reference, Backend::Cpu] {
        let s = Session::with_backend(&spec, backend).unwrap();
        for (p, c) in [("copy abc >", " abc"), ("copy hgfedc >", " hgfedc")] {
            let ex = Example {
                text: p.into(),
                label: Label::Completion(c.into()),
            };
            let m = s.evaluate(&[ex]).unwrap();
            let want = oracle_loss(&spec, p, c, eos);
            assert_eq!(m.tokens, Some(c.chars().count() + 1), "completion + EOS");
            assert!(
                (m.loss - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{}: loss {} vs oracle {want}",
                backend.name(),
                m.loss
            );
            assert!((m.perplexity.unwrap() - m.loss.exp()).abs() < 1e-9);
        }
    }
}

#[test]
fn training_lowers_dev_perplexity_below_the_no_copy_bound() {
    let spec = example_spec();
    let out = std::env::temp_dir().join(format!("lorac-causal-lm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let s = Session::with_backend(&spec, Backend::Cpu).unwrap();
    let dev = lorac_runtime::data::load(
        &root().join("tests/fixtures/lm/dev.jsonl"),
        "text",
        "label",
        &spec.train.as_ref().unwrap().task,
    )
    .unwrap();
    let before = s.evaluate(&dev).unwrap().perplexity.unwrap();
    drop(s);
    let after = train(
        &spec,
        &TrainOptions {
            out: out.clone(),
            steps: None,
            checkpoint_every: None,
            resume: false,
            progress: false,
            stop_after: None,
            backend: Backend::Cpu,
        },
    )
    .unwrap()
    .unwrap();
    let ppl = after.perplexity.unwrap();
    // The best model that does not read the prompt knows the format (a space, 3–6 letters
    // from a–h, EOS) and pays ln 8 per letter plus ln 4 for the length: per example
    // 4.5·ln 8 + ln 4 = 10.74 nats over 6.5 tokens, a perplexity of e^1.652 = 5.2. Below
    // that, it copies.
    assert!(
        ppl < 5.0,
        "dev perplexity {ppl:.3} (before training {before:.3})"
    );
    assert!(before > 2.0 * ppl, "before {before:.3}, after {ppl:.3}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"perplexity\""), "{metrics}");
    let _ = std::fs::remove_dir_all(&out);
}
