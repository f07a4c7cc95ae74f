//! `loraC infer SPEC --text … --emit hidden|pooled|logits [--adapter DIR] [--format json]`.

use super::check::{report, use_color};
use super::{Color, Format};
use lorac_compiler::check::check_file;
use lorac_compiler::diag::render::{render, to_json, Style};
use lorac_compiler::diag::SourceMap;
use lorac_runtime::infer::{infer, Emit};
use std::path::Path;

/// Runs inference and prints the tensor.
pub fn run(
    spec: &Path,
    texts: &[String],
    emit: Emit,
    adapter: Option<&Path>,
    format: Format,
    color: Color,
) -> i32 {
    let color = use_color(color);
    let checked = check_file(spec);
    let mut json = Vec::new();
    let (errors, _, io) = report(&checked, Format::Text, color, &mut json);
    let Some(spec) = checked.spec.filter(|_| errors == 0) else {
        return if io { 2 } else { 1 };
    };
    match infer(&spec, texts, emit, adapter) {
        Ok(t) => {
            match format {
                Format::Json => {
                    let v = serde_json::json!({ "shape": t.shape, "data": t.f() });
                    super::out(&(format!("{v}") + "\n"));
                }
                Format::Text => {
                    super::out(&(format!("shape {:?}", t.shape) + "\n"));
                    let last = *t.shape.last().unwrap_or(&1);
                    for row in t.f().chunks(last.max(1)) {
                        let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
                        super::out(&(cells.join(" ") + "\n"));
                    }
                }
            }
            0
        }
        Err(d) => {
            let map = SourceMap::new();
            match format {
                Format::Json => eprintln!("{}", serde_json::Value::Array(vec![to_json(&map, &d)])),
                Format::Text => eprint!("{}", render(&map, &d, Style { color, width: 100 })),
            }
            1
        }
    }
}
