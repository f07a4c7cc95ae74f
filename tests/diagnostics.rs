//! Golden tests of rendered diagnostics: every `tests/diagnostics/NAME.lora` is checked and
//! its rendered report compared with `NAME.stderr`. The first line of each case names the
//! codes it must produce (`# expect: E0301 E0101`), asserted independently of the golden
//! file. Set `UPDATE_GOLDEN=1` to rewrite the golden files after reviewing a change.

use lorac_compiler::check::check_file;
use lorac_compiler::diag::render::{render, Style};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Renders every diagnostic of one case, with machine-specific paths replaced.
fn rendered(path: &Path) -> (String, Vec<String>) {
    let checked = check_file(path);
    let mut out = String::new();
    let mut codes = Vec::new();
    for d in checked.diagnostics.sorted() {
        codes.push(d.code.0.to_string());
        out.push_str(&render(
            &checked.sources,
            &d,
            Style {
                color: false,
                width: 100,
            },
        ));
        out.push('\n');
    }
    let root = root().display().to_string();
    (out.replace(&root, "<root>"), codes)
}

fn expected_codes(text: &str) -> Vec<String> {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect:"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn diagnostics_match_golden_files() {
    let dir = root().join("tests/diagnostics");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/diagnostics exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lora"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected at least 30 diagnostic cases, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let rel = case.strip_prefix(root()).unwrap_or(case).to_path_buf();
        let text = std::fs::read_to_string(case).expect("readable case");
        let want = expected_codes(&text);
        assert!(
            !want.is_empty(),
            "{}: first line must be `# expect: CODE…`",
            rel.display()
        );
        let (out, codes) = rendered(&rel);
        for w in &want {
            if !codes.contains(w) {
                failures.push(format!("{}: expected {w}, got {codes:?}", rel.display()));
            }
        }
        for c in &codes {
            if !want.contains(c) {
                failures.push(format!(
                    "{}: unexpected {c} (expected only {want:?})",
                    rel.display()
                ));
            }
        }
        let golden = case.with_extension("stderr");
        if update {
            std::fs::write(&golden, &out).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(g) if g == out => {}
            Ok(g) => failures.push(format!(
                "{}: rendered output differs from golden\n--- golden\n{g}\n--- actual\n{out}",
                rel.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no golden file; run with UPDATE_GOLDEN=1",
                rel.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
