//! Every example with a train block builds its training programs (gradient, optimizer update,
//! evaluation) and initial values on MiniLM: no example is check-clean but unrunnable.

mod common;

use lorac_compiler::check::check_file;
use lorac_runtime::train::Session;
use std::path::Path;

#[test]
fn every_trainable_example_builds_its_session() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let mut built = 0;
    for name in common::TRAINABLE_EXAMPLES {
        let spec = check_file(&root.join(format!("examples/{name}.lora")))
            .spec
            .unwrap_or_else(|| panic!("{name} checks clean"));
        let spec = lorac_runtime::alloc::resolved(&spec)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        match Session::new(&spec) {
            Ok(s) => {
                assert!(!s.state.is_empty(), "{name}: no trainable state");
                built += 1;
            }
            Err(d) => panic!("{name}: {} ({})", d.message, d.code),
        }
    }
    assert_eq!(built, common::TRAINABLE_EXAMPLES.len());
}
