//! Arbitrary bytes (lossy UTF-8) → `check_source`, as if the text were `examples/fuzz.lora`
//! (so `../assets/minilm` resolves to the real MiniLM when the assets are fetched), then every
//! diagnostic is rendered graphically and as JSON. Any panic is a bug. See docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lorac_compiler::check::check_source;
use lorac_compiler::diag::render::{render, to_json, Style};
use std::path::PathBuf;
use std::sync::OnceLock;

fn spec_path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
        dir.canonicalize().unwrap_or(dir).join("fuzz.lora")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let checked = check_source("examples/fuzz.lora", spec_path(), text);
    for d in checked.diagnostics.sorted() {
        let _ = render(&checked.sources, &d, Style::default());
        let _ = to_json(&checked.sources, &d).to_string();
    }
    if checked.spec.is_none() {
        assert!(
            checked.diagnostics.iter().any(|d| d.is_error()),
            "no spec but no error diagnostic"
        );
    }
});
