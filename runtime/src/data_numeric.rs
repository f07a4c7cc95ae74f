//! Numeric examples for `linear` models: the input field holds a list of numbers (the input
//! vector) and the label field a list of numbers (the regression target). `data.rs` hands a
//! record here when its input field is a JSON array; the session batches the vectors into the
//! graph inputs `x` `[batch, in]` and `labels` `[batch, out]`.

use crate::data::{Example, Label};
use crate::session::{fail, Res, Row};
use lorac_compiler::check::train::Task;
use lorac_compiler::diag::codes;
use lorac_compiler::ir::Tensor;
use lorac_compiler::model::{linear, Family, ModelInfo};
use serde_json::Value;
use std::collections::HashMap;

/// Widths of a numeric model's input and output vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    /// Numbers per input vector (`in_features`).
    pub input: usize,
    /// Numbers per target vector (`out_features`).
    pub output: usize,
}

impl Widths {
    /// The widths of a model that reads number lists instead of text, if it is one.
    pub fn of(model: &ModelInfo) -> Option<Widths> {
        (model.config.family == Family::Linear).then_some(Widths {
            input: model.config.hidden,
            output: model.config.intermediate,
        })
    }
}

fn numbers(v: &Value, field: &str) -> Result<Vec<f32>, String> {
    let items = match v {
        Value::Array(items) => items.as_slice(),
        // A one-output target may be written as a plain number.
        Value::Number(_) => std::slice::from_ref(v),
        other => return Err(format!("`{field}` is {other}, not a list of numbers")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x.as_f64().map(|f| f as f32) {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(format!(
                "`{field}[{i}]` is {x}, not a finite number (f32 range)"
            )),
        })
        .collect()
}

/// Reads one JSONL record whose input field `input` holds a number list. `widths` carries the
/// lengths of the file's first record, which every later record must repeat.
pub fn example(
    record: &Value,
    input: &str,
    label: &str,
    task: &Task,
    widths: &mut Option<Widths>,
) -> Result<Example, String> {
    if !matches!(task, Task::Regression) {
        return Err(format!(
            "`{input}` holds a list of numbers, which only `task regression` reads"
        ));
    }
    let x = numbers(&record[input], input)?;
    let y = match record.get(label) {
        Some(v) => numbers(v, label)?,
        None => return Err(format!("no field `{label}`")),
    };
    if x.is_empty() || y.is_empty() {
        return Err(format!("`{input}` and `{label}` must not be empty lists"));
    }
    let w = Widths {
        input: x.len(),
        output: y.len(),
    };
    match widths {
        None => *widths = Some(w),
        Some(first) if *first != w => {
            return Err(format!(
                "`{input}` has {} and `{label}` {} numbers, but the first record has {} and {}",
                w.input, w.output, first.input, first.output
            ))
        }
        Some(_) => {}
    }
    Ok(Example {
        text: String::new(),
        label: Label::Numeric { x, y },
    })
}

/// The session's rows for `ex`: `None` when the model reads text and so do the examples;
/// otherwise the numeric rows, or E0912 when model and data disagree about what they hold.
pub fn rows(ex: &[Example], model: Option<Widths>) -> Option<Res<Vec<Row>>> {
    let numeric = |e: &Example| matches!(e.label, Label::Numeric { .. });
    let Some(w) = model else {
        return ex.iter().any(numeric).then(|| {
            Err(fail(
                codes::DATA_MODEL_MISMATCH,
                "the data holds number lists, but the model reads text",
                "use `model linear(\"…\")` for numeric data, or give text in the input field",
            ))
        });
    };
    let mut out = Vec::with_capacity(ex.len());
    for (k, e) in ex.iter().enumerate() {
        let Label::Numeric { x, y } = &e.label else {
            return Some(Err(fail(
                codes::DATA_MODEL_MISMATCH,
                format!("example {}: a `linear` model reads a list of {} numbers, but the data holds text", k + 1, w.input),
                "put the input vector in the field `data(input = …)` names, as a JSON list",
            )));
        };
        if x.len() != w.input || y.len() != w.output {
            return Some(Err(fail(
                codes::DATA_MODEL_MISMATCH,
                format!(
                    "example {}: {} input and {} target numbers, but the model maps {} inputs to {} outputs",
                    k + 1,
                    x.len(),
                    y.len(),
                    w.input,
                    w.output
                ),
                "regenerate the data for this model, or point `model` at the matching one",
            )));
        }
        // One position per example: the throughput counters count examples as tokens.
        out.push((vec![0], vec![0], e.label.clone()));
    }
    Some(Ok(out))
}

/// Graph inputs of a batch: `x` `[batch, in]`, `labels` `[batch, out]` and `label_mask`
/// `[batch, 1]` (1 for real rows). Rows past the data (a short last batch) are zeros with
/// weight 0; rows without numbers (benchmarks) are zeros.
pub fn batch_inputs(rows: &[&Row], batch: usize, w: Widths) -> HashMap<String, Tensor> {
    let mut x = vec![0f32; batch * w.input];
    let mut y = vec![0f32; batch * w.output];
    let real = (0..batch).map(|r| f32::from(r < rows.len())).collect();
    for (r, row) in rows.iter().enumerate().take(batch) {
        if let Label::Numeric { x: xr, y: yr } = &row.2 {
            x[r * w.input..(r + 1) * w.input].copy_from_slice(xr);
            y[r * w.output..(r + 1) * w.output].copy_from_slice(yr);
        }
    }
    HashMap::from([
        (
            linear::INPUT.to_string(),
            Tensor::f32(vec![batch, w.input], x),
        ),
        ("labels".to_string(), Tensor::f32(vec![batch, w.output], y)),
        ("label_mask".to_string(), Tensor::f32(vec![batch, 1], real)),
    ])
}
