//! Error recovery: a file with several independent broken items reports every one of them,
//! at the right line, and the good items between them report nothing.
//!
//! The cases live in `tests/diagnostics/recovery/` (a subdirectory, so the golden harness
//! ignores them). A line that must carry an error ends with a marker comment
//! `# want: CODE`; every error must sit on such a line with that code, and every marker
//! must be matched by an error.

use lorac_compiler::check::{check_file, check_source};
use lorac_compiler::diag::Severity;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/diagnostics/recovery")
        .join(name)
}

/// (code, 1-based line) for every `# want: CODE` marker of the file.
fn wanted(path: &PathBuf) -> BTreeSet<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("readable case");
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let code = l.split("# want:").nth(1)?.trim();
            let is_code = code.len() == 5
                && code.starts_with(['E', 'W'])
                && code[1..].bytes().all(|b| b.is_ascii_digit());
            is_code.then(|| (code.to_string(), i + 1))
        })
        .collect()
}

/// (code, 1-based line) of every error the checker reports for the file, plus a rendering
/// of all diagnostics for failure messages.
fn reported(path: &std::path::Path) -> (BTreeSet<(String, usize)>, usize, String) {
    let checked = check_file(path);
    let mut errors = BTreeSet::new();
    let mut count = 0;
    let mut all = String::new();
    for d in checked.diagnostics.sorted() {
        let line = d.primary.as_ref().map(|l| {
            assert_eq!(
                checked.sources.get(l.span.file).path,
                path.canonicalize().unwrap(),
                "{}: `{}` is reported in another file",
                d.code,
                d.message
            );
            checked.sources.line_col(l.span.file, l.span.start).0
        });
        all.push_str(&format!("  {} line {:?}: {}\n", d.code, line, d.message));
        if d.severity == Severity::Error {
            count += 1;
            errors.insert((
                d.code.0.to_string(),
                line.expect("every error here has a span"),
            ));
        }
    }
    assert!(checked.spec.is_none() || count == 0);
    (errors, count, all)
}

fn check_markers(name: &str, min_items: usize) {
    let path = case(name);
    let want = wanted(&path);
    assert!(
        want.len() >= min_items,
        "{name}: expected at least {min_items} markers"
    );
    let (got, count, all) = reported(&path);
    let missing: Vec<_> = want.difference(&got).collect();
    let unexpected: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{name}: missing {missing:?}, unexpected {unexpected:?}\nall diagnostics:\n{all}"
    );
    // One error per broken item: no cascades, no duplicates.
    assert_eq!(
        count,
        want.len(),
        "{name}: one error per broken item\n{all}"
    );
}

#[test]
fn independent_broken_items_are_all_reported() {
    // A syntax error in one adapter, an unknown name in another, an attach pattern that
    // matches nothing and a misspelled train setting, with good items between them.
    check_markers("three_errors.lora", 4);
    let (got, _, _) = reported(&case("three_errors.lora"));
    let codes: BTreeSet<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
    for c in ["E0001", "E0101", "E0601", "E0701"] {
        assert!(codes.contains(c), "{c} not reported: {got:?}");
    }
}

#[test]
fn three_syntax_errors_in_three_items() {
    check_markers("three_syntax_errors.lora", 3);
    let (got, _, _) = reported(&case("three_syntax_errors.lora"));
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter().all(|(c, _)| c.starts_with("E000")),
        "only syntax-level errors (E000x) expected: {got:?}"
    );
}

#[test]
fn good_items_between_broken_ones_are_really_checked() {
    // Break the good attach that follows the broken ones: its error must appear too, so
    // the items after a broken item are checked, not skipped.
    let path = case("three_errors.lora");
    let text = std::fs::read_to_string(&path).unwrap();
    let good = "attach LoRA(r = 16) to encoder.layer.*.output.dense";
    let line = text
        .lines()
        .position(|l| l == good)
        .expect("good attach line")
        + 1;
    let broken = text.replace(
        good,
        "attach LoRA(r = 16.5) to encoder.layer.*.output.dense",
    );
    let checked = check_source("three_errors.lora", &path.canonicalize().unwrap(), broken);
    let errors: BTreeSet<(String, usize)> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .filter_map(|d| {
            let l = d.primary.as_ref()?;
            Some((
                d.code.0.to_string(),
                checked.sources.line_col(l.span.file, l.span.start).0,
            ))
        })
        .collect();
    let mut want = wanted(&path);
    want.insert(("E0201".to_string(), line));
    assert_eq!(errors, want);
}

#[test]
fn unreadable_spec_is_an_io_error() {
    let checked = check_file(&case("no_such_spec.lora"));
    let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code.0).collect();
    assert_eq!(codes, ["E0801"]);
    assert!(checked.spec.is_none());
}
