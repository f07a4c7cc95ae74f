//! Two different adapters attached with equal arguments to equally shaped modules keep their
//! own instances (a shared instantiation cache once gave DoRA the LoRA instance, and building
//! failed with "unknown name `mag`").

use lorac_compiler::build::{forward, Geometry};
use lorac_compiler::check::check_source;
use std::path::Path;

#[test]
fn lora_and_dora_in_one_spec_keep_their_own_parameters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let text = format!(
        "import std.lora\nimport std.dora\nmodel bert(\"{}\")\n\
         attach LoRA(r = 4) to encoder.layer.*.attention.self.query\n\
         attach DoRA(r = 4) to encoder.layer.*.attention.self.value\n",
        root.join("assets/minilm").display()
    );
    let c = check_source("mixed.lora", &root.join("mixed.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let spec = c.spec.unwrap();
    for at in &spec.attachments {
        let names: Vec<&str> = at.instance.params.iter().map(|p| p.name.as_str()).collect();
        let want: &[&str] = if at.adapter == "DoRA" {
            &["A", "B", "mag"]
        } else {
            &["A", "B"]
        };
        assert_eq!(names, want, "{}", at.module);
    }
    let f = forward(&spec, Geometry { batch: 1, seq: 4 }).expect("the forward graph builds");
    assert_eq!(
        f.params.iter().filter(|p| p.local == "mag").count(),
        6,
        "one magnitude vector per value projection"
    );
}
