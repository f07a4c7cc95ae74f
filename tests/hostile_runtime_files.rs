//! Commands that read safetensors files at run time (adapters, checkpoints, model weights)
//! answer corrupt or hostile files with coded diagnostics (exit 1), never a crash.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lorac(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .args(args)
        .args(["--color", "never"])
        .current_dir(root())
        .output()
        .expect("run loraC");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-hostile-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A header that claims 2^60 bytes.
fn huge_header() -> Vec<u8> {
    let mut b = (1u64 << 60).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    b
}

fn expect_code(args: &[&str], code: &str) {
    let (status, err) = lorac(args);
    assert_eq!(status, 1, "{args:?}: {err}");
    assert!(err.contains(code), "{args:?} should report {code}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn corrupt_adapters_and_checkpoints_are_coded_errors() {
    let run = tmp("run");
    let out = s(&run);
    let spec = "examples/causal_lm.lora";
    let (status, err) = lorac(&["train", spec, "--steps", "2", "--out", &out]);
    assert_eq!(status, 0, "{err}");
    let adapter = run.join("adapter");
    let file = adapter.join("adapter.safetensors");
    let good = std::fs::read(&file).unwrap();
    for bytes in [
        huge_header(),
        good[..good.len() / 2].to_vec(),
        b"garbage".to_vec(),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        expect_code(&["eval", spec, "--adapter", &s(&adapter)], "E0903");
        expect_code(
            &[
                "infer",
                spec,
                "--adapter",
                &s(&adapter),
                "--text",
                "copy ab >",
                "--emit",
                "logits",
            ],
            "E0903",
        );
    }
    let state = run.join("checkpoint/state.safetensors");
    let good = std::fs::read(&state).unwrap();
    for bytes in [huge_header(), good[..good.len() - 3].to_vec()] {
        std::fs::write(&state, &bytes).unwrap();
        expect_code(&["train", spec, "--resume", &out], "E0908");
    }
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn truncated_model_weights_are_a_coded_error() {
    // The tiny Llama with its weight file cut short inside the tensor data.
    let d = tmp("model");
    let src = root().join("tests/fixtures/tiny_llama");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let w = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() - 1000]).unwrap();
    let spec = std::fs::read_to_string(root().join("examples/causal_lm.lora"))
        .unwrap()
        .replace("../tests/fixtures/tiny_llama", &s(&d))
        .replace(
            "../tests/fixtures/lm",
            &s(&root().join("tests/fixtures/lm")),
        );
    let spec_path = d.join("spec.lora");
    std::fs::write(&spec_path, spec).unwrap();
    let (status, err) = lorac(&[
        "train",
        &s(&spec_path),
        "--steps",
        "1",
        "--out",
        &s(&d.join("out")),
    ]);
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("E0504") || err.contains("E0902"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
