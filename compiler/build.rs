//! Embeds the standard library (`std/*.lora` at the repository root) into the compiler.

use std::fmt::Write;
use std::path::Path;

/// File names in `dir` ending in `ext`, sorted. A missing folder fails the build: an empty
/// standard library or explainer table would compile and then reject every `import std.*`.
fn listing(dir: &Path, ext: &str) -> Vec<String> {
    let rd =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    names.sort();
    names
}

fn main() {
    // The manifest directory of this build, read when the script runs (not `env!`, which is
    // fixed when the script is compiled and goes stale if a shared target dir reuses it).
    let root =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = root.join("../std");
    println!("cargo:rerun-if-changed={}", dir.display());
    let names = listing(&dir, ".lora");
    let mut out = String::from(
        "/// The standard library: (module name, source).\npub const STD: &[(&str, &str)] = &[\n",
    );
    for n in &names {
        let path = dir.join(n);
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({:?}, include_str!({:?})),",
            n.trim_end_matches(".lora"),
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    // Error-code explainers for `loraC explain`.
    let edir = root.join("../docs/errors");
    println!("cargo:rerun-if-changed={}", edir.display());
    let codes = listing(&edir, ".md");
    out.push_str(
        "/// Error-code explainers: (code, markdown).\npub const EXPLAIN: &[(&str, &str)] = &[\n",
    );
    for c in &codes {
        let path = edir.join(c);
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({:?}, include_str!({:?})),",
            c.trim_end_matches(".md"),
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("std_lib.rs");
    std::fs::write(dest, out).expect("write std_lib.rs");
}
