//! `loraC export DIR --peft OUT [--spec SPEC]`: a trained adapter in PEFT's format.

use super::check::{checked_spec, show_error, use_color};
use super::{Color, Format};
use lorac_runtime::export::{export_peft, read_manifest};
use std::path::Path;

/// Runs `export`.
pub fn run(dir: &Path, peft: &Path, spec: Option<&Path>, format: Format, color: Color) -> i32 {
    let color = use_color(color);
    let man = match read_manifest(dir) {
        Ok(m) => m,
        Err(d) => return show_error(&d, format, color),
    };
    // The spec gives the adapters' semantics (and, for PiSSA, the base weights); the one
    // recorded at training time unless overridden.
    let spec_path = spec.map(Path::to_path_buf).unwrap_or(man.spec.clone());
    let spec_v = match checked_spec(&spec_path, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match export_peft(&spec_v, &man, peft) {
        Ok(e) => {
            eprintln!(
                "exported {} modules ({}) from {} to {}",
                e.modules,
                e.flavour,
                man.dir.display(),
                peft.display()
            );
            let files: Vec<String> = e.files.iter().map(|f| f.display().to_string()).collect();
            match format {
                Format::Json => super::out(&format!("{}\n", serde_json::json!({"files": files}))),
                Format::Text => super::out(&(files.join("\n") + "\n")),
            }
            0
        }
        Err(d) => show_error(&d, format, color),
    }
}
