//! `loraC infer SPEC --text … --emit hidden|pooled|logits [--adapter DIR] [--format json]`.

use super::check::{checked_spec, show_error, use_color};
use super::{Color, Format};
use lorac_runtime::exec::Backend;
use lorac_runtime::infer::{infer_on, Emit};
use std::path::Path;

/// Runs inference and prints the tensor.
pub fn run(
    spec: &Path,
    texts: &[String],
    emit: Emit,
    adapter: Option<&Path>,
    backend: Backend,
    format: Format,
    color: Color,
) -> i32 {
    let color = use_color(color);
    let spec = match checked_spec(spec, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match infer_on(&spec, texts, emit, adapter, backend) {
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
        Err(d) => show_error(&d, format, color),
    }
}
