//! The synthetic study of methods.md §4.6 (Sun et al., ICML 2025): a frozen Linear(32 → 8)
//! with 8 rank-4 Riemannian MoE-LoRA experts, trained 300 steps for top-k ∈ {1, 2, 4, 8}, with
//! the plain gate (p = 1) and the √g rescaling (p = 0.5), seeds 0, 1, 2
//! (`examples/synthetic/riemannian_synthetic.lora`). Asserted: every run lowers the dev MSE of
//! the frozen layer; top-1 gives bit-identical results for both (g = 1 after renormalisation,
//! so g^p = g); √g has the lower mean dev MSE at k = 2 and k = 4. The table is printed
//! (`cargo test -p lorac-runtime --test riemannian_synthetic -- --nocapture`) and recorded in
//! `examples/synthetic/README.md`.

use lorac_compiler::check::{check_source, Spec};
use lorac_runtime::exec::Backend;
use lorac_runtime::train::{train, TrainOptions};
use std::path::{Path, PathBuf};

mod common;

const KS: [usize; 4] = [1, 2, 4, 8];
const SEEDS: [u64; 3] = [0, 1, 2];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/synthetic")
}

/// The example spec with `k`, `p` and `seed` replaced (checked at the example's own path, so
/// its relative model and data paths resolve).
fn variant(k: usize, p: f64, seed: u64) -> Spec {
    let path = dir().join("riemannian_synthetic.lora");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in [
        ("k = 2,", format!("k = {k},")),
        ("p = 0.5,", format!("p = {p:?},")),
        ("seed 0\n", format!("seed {seed}\n")),
    ] {
        assert_eq!(text.matches(from).count(), 1, "`{from}` in the example");
        text = text.replace(from, &to);
    }
    let c = check_source("riemannian_synthetic.lora", &path, text);
    assert!(
        c.diagnostics.sorted().is_empty(),
        "{:?}",
        c.diagnostics.sorted()
    );
    c.spec.unwrap()
}

/// Dev MSE of the frozen layer alone (the adapters start at B = 0), computed here in f64 from
/// the files, independently of loraC's programs.
fn frozen_mse() -> f64 {
    let w = lorac_runtime::weights::load(&dir().join("model/model.safetensors"), None).unwrap();
    let (w0, b) = (w["linear.weight"].f(), w["linear.bias"].f());
    let (mut sum, mut count) = (0.0, 0usize);
    let dev = std::fs::read_to_string(dir().join("dev.jsonl")).unwrap();
    for line in dev.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let num = |k: &str| -> Vec<f64> {
            let a = v[k].as_array().unwrap();
            a.iter()
                .map(|x| x.as_f64().unwrap() as f32 as f64)
                .collect()
        };
        let (x, y) = (num("x"), num("y"));
        for (j, yj) in y.iter().enumerate() {
            let row = &w0[j * x.len()..(j + 1) * x.len()];
            let pred: f64 =
                row.iter().zip(&x).map(|(&a, b)| a as f64 * b).sum::<f64>() + b[j] as f64;
            sum += (pred - yj).powi(2);
            count += 1;
        }
    }
    sum / count as f64
}

/// The dev MSE a run logged at `step` (metrics.jsonl).
fn eval_at(out: &Path, step: u64) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["step"] == step && v.get("eval_loss").is_some())
        .and_then(|v| v["eval_loss"].as_f64())
        .unwrap_or(f64::NAN)
}

#[test]
fn sqrt_g_rescaling_orders_like_the_paper() {
    let t0 = std::time::Instant::now();
    let base = frozen_mse();
    // mse[k index][variant: 0 = p 1, 1 = p 0.5][seed], after 300 steps and after 100.
    let mut mse = vec![[[0f64; 3]; 2]; KS.len()];
    let mut mse100 = vec![[[0f64; 3]; 2]; KS.len()];
    for (ki, &k) in KS.iter().enumerate() {
        for (vi, p) in [1.0, 0.5].into_iter().enumerate() {
            for (si, &seed) in SEEDS.iter().enumerate() {
                let spec = variant(k, p, seed);
                let out = common::temp_dir(&format!("synth-k{k}-p{vi}-s{seed}"));
                let opt = TrainOptions {
                    out: out.clone(),
                    backend: Backend::Cpu,
                    ..Default::default()
                };
                let m = train(&spec, &opt).unwrap().expect("the spec has a dev set");
                mse100[ki][vi][si] = eval_at(&out, 100);
                let _ = std::fs::remove_dir_all(&out);
                assert!(
                    m.loss.is_finite() && m.loss < base,
                    "k = {k}, p = {p}, seed {seed}: dev MSE {} does not improve on the frozen layer's {base}",
                    m.loss
                );
                mse[ki][vi][si] = m.loss;
            }
        }
    }
    let mean = |v: &[f64; 3]| v.iter().sum::<f64>() / 3.0;
    eprintln!("frozen layer: dev MSE {base:.5}");
    eprintln!("| top-k | RSGD (p = 1) | with √g (p = 0.5) | at step 100 (p = 1 / p = 0.5) | per seed (p = 1 / p = 0.5) |");
    for (ki, k) in KS.iter().enumerate() {
        eprintln!(
            "| {k} | {:.5} | {:.5} | {:.5} / {:.5} | {:?} / {:?} |",
            mean(&mse[ki][0]),
            mean(&mse[ki][1]),
            mean(&mse100[ki][0]),
            mean(&mse100[ki][1]),
            mse[ki][0].map(|x| (x * 1e5).round() / 1e5),
            mse[ki][1].map(|x| (x * 1e5).round() / 1e5),
        );
    }
    eprintln!(
        "{} runs in {:.1} s",
        KS.len() * 6,
        t0.elapsed().as_secs_f64()
    );
    // Top-1: the renormalised gate is exactly 1, so g^0.5 = g^1 = 1 and both programs compute
    // the same numbers in the same order.
    for si in 0..SEEDS.len() {
        assert_eq!(
            mse[0][0][si].to_bits(),
            mse[0][1][si].to_bits(),
            "top-1, seed {}: p = 1 and p = 0.5 differ",
            SEEDS[si]
        );
    }
    for ki in [1, 2] {
        assert!(
            mean(&mse[ki][1]) < mean(&mse[ki][0]),
            "k = {}: √g mean dev MSE {} is not below the baseline's {}",
            KS[ki],
            mean(&mse[ki][1]),
            mean(&mse[ki][0])
        );
    }
}

/// The `linear` family on both CPU backends: three steps of the example give the same adapter
/// on the fused CPU backend as on the reference interpreter.
#[test]
fn cpu_backend_matches_the_reference_on_the_linear_family() {
    let spec = variant(4, 0.5, 0);
    let mut runs = vec![];
    for be in [Backend::Reference, Backend::Cpu] {
        let out = common::temp_dir(&format!("synth-steps-{}", be.name()));
        let opt = TrainOptions {
            out: out.clone(),
            steps: Some(3),
            backend: be,
            ..Default::default()
        };
        train(&spec, &opt).unwrap();
        runs.push(
            lorac_runtime::weights::load(&out.join("adapter/adapter.safetensors"), None).unwrap(),
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    assert_eq!(runs[0].len(), runs[1].len());
    for (k, want) in &runs[0] {
        let got = &runs[1][k];
        let diff: Vec<f32> = got.f().iter().zip(want.f()).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(want.f()).max(1e-12);
        assert!(
            rel <= 1e-5,
            "{k}: relative difference {rel:e} after 3 steps"
        );
    }
}

/// The committed model and data are what `make_data.py` writes (skipped without python3).
#[test]
fn generator_reproduces_the_committed_files() {
    let out = common::temp_dir("synth-gen");
    let run = std::process::Command::new("python3")
        .arg(dir().join("make_data.py"))
        .arg(&out)
        .status();
    match run {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipped: python3 could not run make_data.py ({other:?})");
            return;
        }
    }
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "train.jsonl",
        "dev.jsonl",
    ] {
        let (a, b) = (std::fs::read(out.join(f)), std::fs::read(dir().join(f)));
        assert!(
            a.is_ok() && a.ok() == b.ok(),
            "{f} differs from make_data.py's output"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Bad numeric data is a coded error naming the file and line (E0906), or the example whose
/// lists do not fit the model (E0912); never a panic.
#[test]
fn bad_numeric_data_is_a_coded_error() {
    let tmp = common::temp_dir("synth-bad-data");
    let good = std::fs::read_to_string(dir().join("train.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(good.lines().next().unwrap()).unwrap();
    let rec = |x: serde_json::Value, y: serde_json::Value| serde_json::json!({"x": x, "y": y});
    let short: Vec<f64> = vec![0.5; 31];
    let cases = [
        // (records, code, words the message must hold)
        (
            vec![
                first.clone(),
                rec(serde_json::json!([1.0, "a"]), first["y"].clone()),
            ],
            "E0906",
            ":2:",
        ),
        (
            vec![
                first.clone(),
                rec(serde_json::json!(short), first["y"].clone()),
            ],
            "E0906",
            "first record",
        ),
        (
            vec![rec(first["x"].clone(), serde_json::json!(1e39))],
            "E0906",
            "finite",
        ),
        (
            vec![rec(serde_json::json!(short), first["y"].clone())],
            "E0912",
            "31 input",
        ),
        (
            vec![serde_json::json!({"x": "some text", "y": 1.0})],
            "E0912",
            "holds text",
        ),
    ];
    let path = dir().join("riemannian_synthetic.lora");
    let spec_text = std::fs::read_to_string(&path).unwrap();
    for (i, (records, code, words)) in cases.into_iter().enumerate() {
        let file = tmp.join(format!("bad{i}.jsonl"));
        let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        let text = spec_text.replace(
            "train = \"train.jsonl\"",
            &format!("train = {:?}", file.display().to_string()),
        );
        let c = check_source("riemannian_synthetic.lora", &path, text);
        let spec = c.spec.unwrap();
        let opt = TrainOptions {
            out: tmp.join(format!("out{i}")),
            steps: Some(1),
            ..Default::default()
        };
        let e = train(&spec, &opt).expect_err("bad data must not train");
        assert_eq!(e.code.0, code, "case {i}: {}", e.message);
        assert!(e.message.contains(words), "case {i}: {}", e.message);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
