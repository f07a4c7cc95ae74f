//! Embeds the standard library (`std/*.lora` at the repository root) into the compiler.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../std");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".lora"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
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
    let edir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/errors");
    println!("cargo:rerun-if-changed={}", edir.display());
    let mut codes: Vec<String> = std::fs::read_dir(&edir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".md"))
                .collect()
        })
        .unwrap_or_default();
    codes.sort();
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
