//! `loraC export DIR --peft OUT` against adapters PEFT itself saved (tests/fixtures/peft, made
//! once by tests/fixtures/make_peft.py): given loraC adapter tensors equal to the fixture's, the
//! export writes the fixture's keys, shapes, values and config fields, and `loraC infer` with
//! that adapter reproduces `PeftModel.from_pretrained`'s outputs within 1e-4. Also: hostile or
//! unsupported inputs give coded diagnostics.

use lorac_compiler::build::{self, Geometry};
use lorac_compiler::check::{check_file, Spec};
use lorac_compiler::ir::Tensor;
use lorac_runtime::train::adapter_manifest;
use lorac_runtime::weights::{load, save_atomic};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOL: f32 = 1e-4;

/// The fixture's sentences (tests/fixtures/peft/fixture.json).
const SENTENCES: [&str; 4] = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Subject: win a FREE prize now!!! click here",
    "loraC compiles adapter architectures.",
];

/// The config fields loraC writes, all compared with PEFT's.
const CONFIG_FIELDS: [&str; 17] = [
    "peft_type",
    "task_type",
    "revision",
    "inference_mode",
    "r",
    "lora_alpha",
    "lora_dropout",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
    "bias",
    "fan_in_fan_out",
    "init_lora_weights",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn assets_present() -> bool {
    let ok = root().join("assets/minilm/model.safetensors").is_file()
        && root().join("assets/minilm/tokenizer.json").is_file();
    if !ok {
        eprintln!("skipped: run scripts/fetch-assets first");
    }
    ok
}

fn lorac(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run loraC");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-peft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(path: &Path) -> Spec {
    let c = check_file(path);
    let errs: Vec<String> = c.diagnostics.iter().map(|d| d.message.clone()).collect();
    c.spec
        .unwrap_or_else(|| panic!("{} does not check: {errs:?}", path.display()))
}

/// Writes `run/adapter/{adapter.safetensors, adapter.json}` as `loraC train` would.
fn write_run(spec: &Spec, run: &Path, tensors: &HashMap<String, Tensor>) {
    let fwd = build::forward(spec, Geometry { batch: 1, seq: 1 }).expect("build");
    let dir = run.join("adapter");
    save_atomic(&dir.join("adapter.safetensors"), tensors).unwrap();
    let man = adapter_manifest(spec, &fwd.params);
    std::fs::write(dir.join("adapter.json"), man.to_string()).unwrap();
}

/// Rows `0..r` of `[R, n]`.
fn rows(t: &Tensor, r: usize) -> Tensor {
    let n = t.shape[1];
    Tensor::f32(vec![r, n], t.f()[..r * n].to_vec())
}

/// Columns `0..r` of `[m, R]`.
fn cols(t: &Tensor, r: usize) -> Tensor {
    let (m, big) = (t.shape[0], t.shape[1]);
    let v = (0..m)
        .flat_map(|i| t.f()[i * big..i * big + r].to_vec())
        .collect();
    Tensor::f32(vec![m, r], v)
}

/// The loraC adapter tensors that equal PEFT's: `lora_A` → `A`, `lora_B` → `B`,
/// `lora_magnitude_vector` → `mag`; for the converted PiSSA only the trained half (rank r).
fn lorac_tensors(peft: &HashMap<String, Tensor>, half: bool) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (k, t) in peft {
        let k = k.strip_prefix("base_model.model.").expect("PEFT prefix");
        let (module, local, t) = if let Some(m) = k.strip_suffix(".lora_A.weight") {
            let r = if half { t.shape[0] / 2 } else { t.shape[0] };
            (m, "A", rows(t, r))
        } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
            let r = if half { t.shape[1] / 2 } else { t.shape[1] };
            (m, "B", cols(t, r))
        } else if let Some(m) = k.strip_suffix(".lora_magnitude_vector") {
            (m, "mag", t.clone())
        } else {
            panic!("unexpected PEFT key {k}")
        };
        out.insert(format!("{module}.{local}"), t);
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `B A` of `[m, r]` and `[r, n]`.
fn product(b: &Tensor, a: &Tensor) -> Vec<f32> {
    let (m, r, n) = (b.shape[0], b.shape[1], a.shape[1]);
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for k in 0..r {
            let bik = b.f()[i * r + k];
            for j in 0..n {
                out[i * n + j] += bik * a.f()[k * n + j];
            }
        }
    }
    out
}

fn config(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn same_number_or_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn check_variant(variant: &str) {
    let fx = root().join("tests/fixtures/peft");
    let spec_path = fx.join(format!("{variant}.lora"));
    let s = spec(&spec_path);
    let want = load(&fx.join(variant).join("adapter_model.safetensors"), None).unwrap();
    let pissa = variant == "pissa";
    let tmp = temp_dir(variant);
    let run = tmp.join("run");
    write_run(&s, &run, &lorac_tensors(&want, pissa));

    // Export: the fixture's keys, shapes, values.
    let out = tmp.join("peft");
    let (code, _, err) = lorac(&[
        "export",
        run.to_str().unwrap(),
        "--peft",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{variant}: export failed: {err}");
    let got = load(&out.join("adapter_model.safetensors"), None).unwrap();
    let mut keys: Vec<&String> = got.keys().collect();
    let mut want_keys: Vec<&String> = want.keys().collect();
    keys.sort();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{variant}: keys");
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g.shape, w.shape, "{variant}: shape of {k}");
        if !pissa {
            assert_eq!(g.f(), w.f(), "{variant}: values of {k}");
        }
    }
    if pissa {
        // Trained halves are the given tensors; the initial halves are our SVD's A0, −B0, equal
        // to torch's up to the sign of each singular pair, so compare B'A' (= ΔW) instead.
        for (k, w) in &want {
            if let Some(m) = k.strip_suffix(".lora_A.weight") {
                let bk = format!("{m}.lora_B.weight");
                let r = w.shape[0] / 2;
                assert_eq!(rows(&got[k], r).f(), rows(w, r).f(), "{k}: trained half");
                assert_eq!(
                    cols(&got[&bk], r).f(),
                    cols(&want[&bk], r).f(),
                    "{bk}: trained half"
                );
                let d = max_diff(&product(&got[&bk], &got[k]), &product(&want[&bk], w));
                assert!(d < 1e-4, "{variant}: ΔW of {m} differs by {d}");
            }
        }
    }

    // Config: every field loraC writes equals PEFT's.
    let (gc, wc) = (
        config(&out.join("adapter_config.json")),
        config(&fx.join(variant).join("adapter_config.json")),
    );
    for f in CONFIG_FIELDS {
        assert!(
            same_number_or_value(&gc[f], &wc[f]),
            "{variant}: config `{f}`: loraC {} PEFT {}",
            gc[f],
            wc[f]
        );
    }
    let set = |v: &serde_json::Value| {
        let mut t: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    assert_eq!(set(&gc["target_modules"]), set(&wc["target_modules"]));

    // Inference: loraC with the adapter equals PEFT's model.
    let mut args = vec![
        "infer",
        spec_path.to_str().unwrap(),
        "--emit",
        "pooled",
        "--format",
        "json",
        "--adapter",
    ];
    let adapter = run.join("adapter");
    args.push(adapter.to_str().unwrap());
    for t in SENTENCES {
        args.extend(["--text", t]);
    }
    let (code, stdout, err) = lorac(&args);
    assert_eq!(code, 0, "{variant}: infer failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let data: Vec<f32> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let outputs = load(&fx.join("outputs.safetensors"), None).unwrap();
    let d = max_diff(&data, outputs[&format!("{variant}.pooled")].f());
    eprintln!("{variant}: max |loraC − PEFT| pooled = {d:e}");
    assert!(d < TOL, "{variant}: pooled differs from PEFT by {d}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn lora_exports_as_peft_saves_it() {
    if assets_present() {
        check_variant("lora");
    }
}

#[test]
fn rslora_exports_as_peft_saves_it() {
    if assets_present() {
        check_variant("rslora");
    }
}

#[test]
fn dora_exports_as_peft_saves_it() {
    if assets_present() {
        check_variant("dora");
    }
}

#[test]
fn pissa_exports_as_peft_converts_it() {
    if assets_present() {
        check_variant("pissa");
    }
}

/// Exports `run` and returns (exit code, stderr).
fn export(run: &Path, out: &Path) -> (i32, String) {
    let (code, _, err) = lorac(&[
        "export",
        run.to_str().unwrap(),
        "--peft",
        out.to_str().unwrap(),
        "--color",
        "never",
    ]);
    (code, err)
}

#[test]
fn hostile_adapter_directories_give_coded_errors() {
    let tmp = temp_dir("hostile");
    // No adapter.json at all.
    let (code, err) = export(&tmp.join("nothing"), &tmp.join("o1"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E0909"), "{err}");
    // Not JSON.
    let bad = tmp.join("bad/adapter");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("adapter.json"), "{not json").unwrap();
    let (code, err) = export(&tmp.join("bad"), &tmp.join("o2"));
    assert_eq!(code, 1);
    assert!(err.contains("E0909"), "{err}");
    // A version this loraC does not know.
    std::fs::write(
        bad.join("adapter.json"),
        r#"{"format": "lorac-adapter", "version": 99, "spec": "x.lora", "attachments": [], "tensors": []}"#,
    )
    .unwrap();
    let (code, err) = export(&bad, &tmp.join("o3"));
    assert_eq!(code, 1);
    assert!(err.contains("E0909") && err.contains("99"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    if !assets_present() {
        return;
    }
    // A truncated adapter.safetensors.
    let tmp = temp_dir("truncated");
    let s = spec(&root().join("tests/fixtures/peft/lora.lora"));
    let want = load(
        &root().join("tests/fixtures/peft/lora/adapter_model.safetensors"),
        None,
    )
    .unwrap();
    write_run(&s, &tmp.join("run"), &lorac_tensors(&want, false));
    let file = tmp.join("run/adapter/adapter.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (code, err) = export(&tmp.join("run"), &tmp.join("o4"));
    assert_eq!(code, 1);
    assert!(err.contains("E0903"), "{err}");
    assert!(!err.contains("internal compiler error"), "{err}");
    // A tensor missing from the file.
    let mut fewer = lorac_tensors(&want, false);
    fewer.retain(|k, _| !k.ends_with(".B"));
    write_run(&s, &tmp.join("run"), &fewer);
    let (code, err) = export(&tmp.join("run"), &tmp.join("o5"));
    assert_eq!(code, 1);
    assert!(err.contains("E0903"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A run of the spec at `path` with every tensor 0.01 (what matters is the structure, not the
/// values).
fn initial_run(path: &Path, run: &Path) {
    let s = spec(path);
    let fwd = build::forward(&s, Geometry { batch: 1, seq: 1 }).expect("build");
    let tensors: HashMap<String, Tensor> = fwd
        .params
        .iter()
        .map(|p| {
            let n = p.shape.iter().product();
            (p.name.clone(), Tensor::f32(p.shape.clone(), vec![0.01; n]))
        })
        .collect();
    write_run(&s, run, &tensors);
}

#[test]
fn mixtures_and_custom_adapters_are_refused() {
    if !assets_present() {
        return;
    }
    let tmp = temp_dir("refused");
    let model = root().join("assets/minilm");
    // A local adapter named like std's but scaled differently: its semantics are unknown.
    let custom = tmp.join("custom.lora");
    std::fs::write(
        &custom,
        format!(
            "adapter LoRA(r: int = 8, p_drop: float = 0.0) on W0[m, n] {{\n\
             param A[r, n] = kaiming_uniform(a = sqrt(5))\n\
             param B[m, r] = zeros\n\
             out = x @ W0^T + 3.0 * (dropout(x, p = p_drop) @ A^T @ B^T)\n}}\n\
             model bert({model:?})\n\
             attach LoRA(r = 4) to encoder.layer.0.attention.self.query\n"
        ),
    )
    .unwrap();
    // LoRA and rsLoRA in one spec: PEFT's config has one use_rslora for all modules.
    let mixed = tmp.join("mixed.lora");
    std::fs::write(
        &mixed,
        format!(
            "import std.lora\nimport std.rslora\nmodel bert({model:?})\n\
             attach LoRA(r = 4) to encoder.layer.0.attention.self.query\n\
             attach RsLoRA(r = 4) to encoder.layer.0.attention.self.value\n"
        ),
    )
    .unwrap();
    for (path, what) in [
        (root().join("examples/goat.lora"), "mixture of experts"),
        (
            root().join("examples/my_variant.lora"),
            "mixture of experts",
        ),
        (custom, "is not one of std's"),
        (mixed, "one use_dora/use_rslora"),
    ] {
        let example = path.file_name().unwrap().to_string_lossy().to_string();
        let run = tmp.join(format!("run-{example}"));
        initial_run(&path, &run);
        let (code, err) = export(&run, &tmp.join("out"));
        assert_eq!(code, 1, "{example}: {err}");
        assert!(err.contains("E0910"), "{example}: {err}");
        assert!(err.contains(what), "{example}: {err}");
        assert!(err.contains("docs/adapter-format.md"), "{example}: {err}");
        assert!(!tmp.join("out/adapter_model.safetensors").exists());
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_task_head_is_exported_beside_the_adapter() {
    if !assets_present() || !root().join("assets/spam/train.jsonl").is_file() {
        return;
    }
    let tmp = temp_dir("head");
    let run = tmp.join("run");
    initial_run(&root().join("examples/lora.lora"), &run);
    // The run directory's adapter/ folder is accepted as well as the run directory.
    let (code, err) = export(&run.join("adapter"), &tmp.join("out"));
    assert_eq!(code, 0, "{err}");
    let head = load(&tmp.join("out/head.safetensors"), None).unwrap();
    assert_eq!(head["classifier.weight"].shape, vec![2, 384]);
    assert_eq!(head["classifier.bias"].shape, vec![2]);
    let meta = config(&tmp.join("out/head.json"));
    assert_eq!(meta["labels"], 2);
    let adapter = load(&tmp.join("out/adapter_model.safetensors"), None).unwrap();
    assert_eq!(adapter.len(), 2 * 36, "A and B of 36 modules, nothing else");
    let _ = std::fs::remove_dir_all(&tmp);
}
