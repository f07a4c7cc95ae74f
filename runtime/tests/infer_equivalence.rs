//! `loraC infer` end to end on MiniLM: every example whose adapters start as an exact no-op
//! reproduces the plain model (Hugging Face transformers' `BertModel`, fixture
//! tests/fixtures/bert_minilm.safetensors) within 1e-4 max-abs; GOAT starts close to, but not
//! exactly at, the base model; a trained adapter directory is loaded and changes the output, and
//! a wrongly shaped adapter tensor is rejected with E0903.

mod common;

use common::{temp_dir, write_safetensors};
use lorac_compiler::check::{check_file, Spec};
use lorac_compiler::ir::Tensor;
use lorac_runtime::infer::{infer, Emit};
use lorac_runtime::weights::load;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have_assets() -> bool {
    let ok = root().join("assets/minilm/model.safetensors").is_file()
        && root().join("assets/minilm/tokenizer.json").is_file()
        && root().join("assets/spam/train.jsonl").is_file();
    if !ok {
        eprintln!(
            "skipped: MiniLM or the spam data set is missing; run scripts/fetch-assets first"
        );
    }
    ok
}

fn spec(example: &str) -> Spec {
    let path = root().join("examples").join(example);
    let checked = check_file(&path);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    checked
        .spec
        .unwrap_or_else(|| panic!("{example} does not check: {errors:?}"))
}

fn fixture() -> HashMap<String, Tensor> {
    load(&root().join("tests/fixtures/bert_minilm.safetensors"), None).expect("fixture")
}

/// The fixture's sentences (tests/fixtures/bert_minilm.json, `sentences`).
const SENTENCES: [&str; 4] = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Subject: win a FREE prize now!!! click here",
    "loraC compiles adapter architectures.",
];

fn sentences() -> Vec<String> {
    let json = std::fs::read_to_string(root().join("tests/fixtures/bert_minilm.json")).unwrap();
    for s in SENTENCES {
        assert!(
            json.contains(&format!("\"{s}\"")),
            "fixture sentence {s:?} changed"
        );
    }
    SENTENCES.iter().map(|s| s.to_string()).collect()
}

/// Max-abs difference of hidden states `[b, l, h]` over the rows where `mask` is 1.
fn masked_hidden_diff(got: &Tensor, want: &Tensor, mask: &Tensor) -> f32 {
    assert_eq!(got.shape, want.shape, "hidden shape");
    let h = *got.shape.last().unwrap();
    let mut worst = 0f32;
    for (row, keep) in mask.to_f64().iter().enumerate() {
        if *keep == 1.0 {
            for j in 0..h {
                worst = worst.max((got.f()[row * h + j] - want.f()[row * h + j]).abs());
            }
        }
    }
    worst
}

fn run(spec: &Spec, texts: &[String], emit: Emit) -> Tensor {
    infer(spec, texts, emit, None).unwrap_or_else(|d| panic!("infer: {}: {}", d.code, d.message))
}

/// BERT's pooler, `tanh(hidden[:, 0] Wᵀ + b)`, on the host, with MiniLM's (never adapted)
/// `pooler.dense`: the pooled output implied by a hidden state.
fn pool(hidden: &Tensor) -> Tensor {
    let w = load(
        &root().join("assets/minilm/model.safetensors"),
        Some(&[
            "pooler.dense.weight".to_string(),
            "pooler.dense.bias".to_string(),
        ]),
    )
    .unwrap();
    let (wt, bt) = (&w["pooler.dense.weight"], &w["pooler.dense.bias"]);
    let (b, l, h) = (hidden.shape[0], hidden.shape[1], hidden.shape[2]);
    let mut out = vec![0f32; b * h];
    for r in 0..b {
        let x = &hidden.f()[r * l * h..r * l * h + h];
        for i in 0..h {
            let dot: f64 = (0..h).map(|j| wt.f()[i * h + j] as f64 * x[j] as f64).sum();
            out[r * h + i] = (dot + bt.f()[i] as f64).tanh() as f32;
        }
    }
    Tensor::f32(vec![b, h], out)
}

/// Max-abs differences of `spec` (no adapter directory) to the fixture:
/// (hello_pooled, batch pooled, batch hidden at real tokens).
///
/// `full`: `infer` runs three times (hello pooled, batch pooled, batch hidden). Otherwise (the
/// SVD-initialised examples, whose initialisation costs seconds per run in debug builds) it
/// runs twice and the batch's pooled output is derived from its hidden state through the
/// pooler, which no example adapts.
fn diffs_to_base(spec: &Spec, full: bool) -> (f32, f32, f32) {
    let fx = fixture();
    let hello = run(spec, &["hello world".to_string()], Emit::Pooled);
    assert_eq!(hello.shape, fx["hello_pooled"].shape);
    let dh = hello.max_abs_diff(&fx["hello_pooled"]);
    let texts = sentences();
    let hidden = run(spec, &texts, Emit::Hidden);
    let dhid = masked_hidden_diff(&hidden, &fx["hidden"], &fx["attention_mask"]);
    let pooled = if full {
        let p = run(spec, &texts, Emit::Pooled);
        // infer's pooled output is the pooler applied to its hidden state.
        let d = p.max_abs_diff(&pool(&hidden));
        assert!(d < 1e-5, "pooled is not pool(hidden): max-abs {d}");
        p
    } else {
        pool(&hidden)
    };
    assert_eq!(pooled.shape, fx["pooled"].shape);
    let dp = pooled.max_abs_diff(&fx["pooled"]);
    (dh, dp, dhid)
}

fn assert_no_op(example: &str, full: bool) {
    if !have_assets() {
        return;
    }
    let s = spec(example);
    let (dh, dp, dhid) = diffs_to_base(&s, full);
    eprintln!("{example}: hello pooled {dh:.2e}, pooled {dp:.2e}, hidden {dhid:.2e}");
    assert!(dh < TOL, "{example}: hello_pooled max-abs {dh}");
    assert!(dp < TOL, "{example}: pooled max-abs {dp}");
    assert!(dhid < TOL, "{example}: hidden (real tokens) max-abs {dhid}");
}

#[test]
fn lora_at_init_is_the_base_model() {
    assert_no_op("lora.lora", true);
}

#[test]
fn rslora_at_init_is_the_base_model() {
    assert_no_op("rslora.lora", true);
}

#[test]
fn dora_at_init_is_the_base_model() {
    assert_no_op("dora.lora", true);
}

#[test]
fn molora_at_init_is_the_base_model() {
    assert_no_op("molora.lora", true);
}

#[test]
fn hydralora_at_init_is_the_base_model() {
    assert_no_op("hydralora.lora", true);
}

#[test]
fn riemannian_at_init_is_the_base_model() {
    assert_no_op("riemannian.lora", true);
}

#[test]
fn pissa_at_init_is_the_base_model() {
    assert_no_op("pissa.lora", false);
}

#[test]
fn milora_at_init_is_the_base_model() {
    assert_no_op("milora.lora", false);
}

/// GOAT aligns W0 with the *expected* mixture (s / E) Σ_e B_e A_e, but each token uses only its
/// top-k experts, so the adapted model differs from the base one, by a small amount.
#[test]
fn goat_at_init_is_close_to_but_not_the_base_model() {
    if !have_assets() {
        return;
    }
    let s = spec("goat.lora");
    // One run (the SVD-segment initialisation is slow in debug builds): the batch's hidden
    // state at real tokens, and the pooled output it implies.
    let fx = fixture();
    let hidden = run(&s, &sentences(), Emit::Hidden);
    let dhid = masked_hidden_diff(&hidden, &fx["hidden"], &fx["attention_mask"]);
    let dp = pool(&hidden).max_abs_diff(&fx["pooled"]);
    eprintln!("goat.lora: pooled {dp:.2e}, hidden {dhid:.2e}");
    assert!(
        dhid > 1e-6 && dp > 1e-6,
        "GOAT at init equals the base model (hidden {dhid}, pooled {dp})"
    );
    assert!(
        dhid < 0.5,
        "GOAT at init is far from the base model: hidden max-abs {dhid}"
    );
    assert!(
        dp < 0.5,
        "GOAT at init is far from the base model: pooled max-abs {dp}"
    );
}

fn write_adapter(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let ts: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), Tensor::f32(s.clone(), v.clone())))
        .collect();
    write_safetensors(&dir.join("adapter.safetensors"), &ts);
}

#[test]
fn trained_adapter_round_trip() {
    if !have_assets() {
        return;
    }
    let s = spec("lora.lora");
    let texts = sentences();
    let base = infer(&s, &texts, Emit::Pooled, None).unwrap();
    // A non-zero B for one module; A keeps its seeded initial value (not in the file).
    let module = "encoder.layer.3.attention.self.value";
    let (m, r) = (384, 8);
    let b: Vec<f32> = (0..m * r)
        .map(|i| 0.05 * (((i * 7919) % 97) as f32 / 48.0 - 1.0))
        .collect();
    let dir = temp_dir("infer-ok");
    write_adapter(&dir, &[(&format!("{module}.B"), vec![m, r], b)]);
    let adapted = infer(&s, &texts, Emit::Pooled, Some(&dir))
        .unwrap_or_else(|d| panic!("infer with the adapter: {}: {}", d.code, d.message));
    assert_eq!(adapted.shape, base.shape);
    let d = adapted.max_abs_diff(&base);
    assert!(
        d > 1e-3,
        "loading a non-zero B changed nothing (max-abs {d})"
    );
    assert!(adapted.f().iter().all(|v| v.is_finite()));
    // Loading the same file twice gives the same output (the load is deterministic).
    let again = infer(&s, &texts, Emit::Pooled, Some(&dir)).unwrap();
    assert_eq!(again.max_abs_diff(&adapted), 0.0);
    let _ = std::fs::remove_dir_all(&dir);

    // A wrongly shaped tensor: E0903.
    let bad = temp_dir("infer-bad");
    write_adapter(
        &bad,
        &[(&format!("{module}.B"), vec![r, m], vec![0.0; m * r])],
    );
    let err = infer(&s, &texts, Emit::Pooled, Some(&bad)).expect_err("a wrongly shaped B loads");
    assert_eq!(err.code.0, "E0903", "{}", err.message);
    assert!(err.message.contains(module), "{}", err.message);
    // A tensor the spec does not have: E0903 too.
    write_adapter(
        &bad,
        &[(
            "encoder.layer.3.attention.self.value.C",
            vec![2],
            vec![0.0; 2],
        )],
    );
    let err = infer(&s, &texts, Emit::Pooled, Some(&bad)).expect_err("an unknown tensor loads");
    assert_eq!(err.code.0, "E0903", "{}", err.message);
    // A directory with no adapter file: E0903.
    let empty = temp_dir("infer-empty");
    let err = infer(&s, &texts, Emit::Pooled, Some(&empty)).expect_err("an empty directory loads");
    assert_eq!(err.code.0, "E0903", "{}", err.message);
    let _ = std::fs::remove_dir_all(&bad);
    let _ = std::fs::remove_dir_all(&empty);
}
