//! End-to-end tests of the `loraC` binary: exit codes, JSON diagnostics, explain.

use std::path::{Path, PathBuf};
use std::process::Command;

fn lorac(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run loraC");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lora"))
        .map(|p: PathBuf| {
            format!(
                "examples/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    v.sort();
    v
}

fn assets_present() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/minilm/model.safetensors")
        .is_file()
}

#[test]
fn every_example_checks_clean() {
    if !assets_present() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let ex = examples();
    assert!(
        ex.len() >= 12,
        "expected the 12 method examples, found {ex:?}"
    );
    for name in [
        "lora",
        "rslora",
        "pissa",
        "milora",
        "dora",
        "molora",
        "hydralora",
        "goat",
        "mola",
        "alphalora",
        "riemannian",
        "my_variant",
    ] {
        assert!(
            ex.contains(&format!("examples/{name}.lora")),
            "examples/{name}.lora is missing"
        );
    }
    let mut args = vec!["check", "--color", "never"];
    args.extend(ex.iter().map(|s| s.as_str()));
    let (code, _, err) = lorac(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("warning["),
        "examples should check without warnings:\n{err}"
    );
}

#[test]
fn examples_start_with_a_two_line_method_comment() {
    for e in examples() {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&e)).expect("read");
        let lines: Vec<&str> = text.lines().take(2).collect();
        assert!(
            lines.len() == 2 && lines.iter().all(|l| l.starts_with('#')),
            "{e} must start with a two-line comment"
        );
    }
}

#[test]
fn broken_spec_exits_1_and_json_lists_every_error() {
    let (code, out, _) = lorac(&[
        "check",
        "--format",
        "json",
        "tests/diagnostics/e0301_matmul.lora",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON on stdout");
    let arr = v.as_array().expect("a JSON array");
    let e = arr
        .iter()
        .find(|d| d["code"] == "E0301")
        .expect("E0301 reported");
    for key in [
        "code", "severity", "message", "file", "line", "column", "labels", "help",
    ] {
        assert!(e.get(key).is_some(), "missing key {key} in {e}");
    }
    assert_eq!(e["severity"], "error");
    assert_eq!(e["line"], 6);
    assert_eq!(e["column"], 22);
    assert_eq!(e["file"], "tests/diagnostics/e0301_matmul.lora");
    // primary, both operands, and the attach that instantiated the adapter
    assert!(e["labels"].as_array().is_some_and(|l| l.len() == 4), "{e}");
}

#[test]
fn missing_file_and_bad_usage_exit_2() {
    let (code, _, err) = lorac(&["check", "no/such/file.lora"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("E0801"), "{err}");
    let (code, _, _) = lorac(&["check"]);
    assert_eq!(code, 2);
    let (code, _, _) = lorac(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn explain_prints_the_explainer() {
    let (code, out, _) = lorac(&["explain", "E0301"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("# E0301: matrix product dimensions do not match"),
        "{out}"
    );
    let (code, out, _) = lorac(&["explain"]);
    assert_eq!(code, 0);
    assert!(out.lines().count() >= 60);
    let (code, _, _) = lorac(&["explain", "E9999"]);
    assert_eq!(code, 2);
}

#[test]
fn every_code_has_an_explainer_and_every_explainer_a_code() {
    use lorac_compiler::diag::codes;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors");
    for (code, title) in codes::ALL {
        let text =
            codes::explain(code.0).unwrap_or_else(|| panic!("docs/errors/{code}.md missing"));
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!("# {code}: {title}"),
            "first line of docs/errors/{code}.md"
        );
    }
    for e in std::fs::read_dir(dir).expect("docs/errors") {
        let name = e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".md")
            .to_string();
        assert!(
            codes::title(&name).is_some(),
            "docs/errors/{name}.md has no code in codes.rs"
        );
    }
}

#[test]
fn causal_lm_eval_reports_perplexity_and_tokens() {
    let out = std::env::temp_dir().join(format!("lorac-cli-lm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_string_lossy().into_owned();
    let (code, _, err) = lorac(&[
        "train",
        "examples/causal_lm.lora",
        "--steps",
        "3",
        "--out",
        &o,
    ]);
    assert_eq!(code, 0, "{err}");
    let adapter = out.join("adapter").to_string_lossy().into_owned();
    let (code, stdout, err) = lorac(&[
        "eval",
        "examples/causal_lm.lora",
        "--adapter",
        &adapter,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    let (loss, ppl) = (
        v["loss"].as_f64().unwrap(),
        v["perplexity"].as_f64().unwrap(),
    );
    assert!((ppl - loss.exp()).abs() < 1e-6 * ppl, "{v}");
    // 48 dev completions of 4–7 characters plus EOS each.
    let tokens = v["tokens"].as_u64().unwrap();
    assert!((48 * 5..=48 * 8).contains(&tokens), "{v}");
    assert!(v["accuracy"].is_null(), "{v}");
    let _ = std::fs::remove_dir_all(&out);
}
