//! Datasets: JSONL and CSV records with named text and label fields.

use lorac_compiler::check::train::Task;
use lorac_compiler::diag::{codes, Diagnostic};
use std::path::Path;

/// A training or evaluation target.
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// A class index.
    Class(usize),
    /// A regression target.
    Value(f32),
    /// Causal LM: the completion text (the prompt is the example's text).
    Completion(String),
    /// Causal LM after tokenization: the next-token target of every position (the ignore
    /// index where no loss applies: prompt, padding, the last token).
    Tokens(Vec<i64>),
    /// A `linear` model's example (`data_numeric.rs`): the input vector `x` and the regression
    /// target `y`; the example's text is empty.
    Numeric { x: Vec<f32>, y: Vec<f32> },
}

/// One example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Input text (the prompt, for causal LM).
    pub text: String,
    /// Target.
    pub label: Label,
}

fn bad(path: &Path, line: usize, msg: String) -> Box<Diagnostic> {
    Box::new(
        Diagnostic::error(codes::BAD_DATA, format!("{}:{line}: {msg}", path.display()))
            .in_file(path.display().to_string())
            .help("fix the record, or name the right fields in `data(text = …, label = …)`"),
    )
}

fn label_of(v: &serde_json::Value, task: &Task) -> Result<Label, String> {
    match task {
        Task::Classification { labels, .. } => {
            let n = match v {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                serde_json::Value::Bool(b) => Some(u64::from(*b)),
                _ => None,
            };
            match n {
                Some(k) if (k as usize) < *labels => Ok(Label::Class(k as usize)),
                _ => Err(format!("label {v} is not an integer in 0..{labels}")),
            }
        }
        Task::Regression => match v {
            serde_json::Value::Number(n) => n
                .as_f64()
                .map(|x| Label::Value(x as f32))
                .ok_or("label is not a number".into()),
            serde_json::Value::String(s) => s
                .trim()
                .parse::<f32>()
                .map(Label::Value)
                .map_err(|_| format!("label {s:?} is not a number")),
            other => Err(format!("label {other} is not a number")),
        },
        Task::CausalLm { .. } => match v {
            serde_json::Value::String(s) => Ok(Label::Completion(s.clone())),
            other => Err(format!("completion {other} is not a string")),
        },
    }
}

/// Loads examples; `text` and `label` name the fields (for causal LM: prompt and completion).
pub fn load(
    path: &Path,
    text: &str,
    label: &str,
    task: &Task,
) -> Result<Vec<Example>, Box<Diagnostic>> {
    let (text, label) = match task {
        Task::CausalLm {
            prompt, completion, ..
        } => (prompt.as_str(), completion.as_str()),
        _ => (text, label),
    };
    let raw = std::fs::read_to_string(path).map_err(|e| {
        Box::new(
            Diagnostic::error(
                codes::DATA_NOT_FOUND,
                format!("cannot read {}: {e}", path.display()),
            )
            .in_file(path.display().to_string())
            .help("check the data path in the spec"),
        )
    })?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut out = Vec::new();
    if is_csv {
        let mut rd = csv::ReaderBuilder::new().from_reader(raw.as_bytes());
        let headers = rd
            .headers()
            .map_err(|e| bad(path, 1, e.to_string()))?
            .clone();
        let ti = headers
            .iter()
            .position(|h| h == text)
            .ok_or_else(|| bad(path, 1, format!("no column `{text}`")))?;
        let li = headers
            .iter()
            .position(|h| h == label)
            .ok_or_else(|| bad(path, 1, format!("no column `{label}`")))?;
        for (k, rec) in rd.records().enumerate() {
            let line = k + 2;
            let rec = rec.map_err(|e| bad(path, line, e.to_string()))?;
            let t = rec
                .get(ti)
                .ok_or_else(|| bad(path, line, "missing text".into()))?;
            let l = rec
                .get(li)
                .ok_or_else(|| bad(path, line, "missing label".into()))?;
            let label = label_of(&serde_json::Value::String(l.to_string()), task)
                .map_err(|e| bad(path, line, e))?;
            out.push(Example {
                text: t.to_string(),
                label,
            });
        }
    } else {
        let mut widths = None;
        for (k, l) in raw.lines().enumerate() {
            let line = k + 1;
            if l.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| bad(path, line, format!("not valid JSON: {e}")))?;
            if v.get(text).is_some_and(|t| t.is_array()) {
                let ex = crate::data_numeric::example(&v, text, label, task, &mut widths);
                out.push(ex.map_err(|e| bad(path, line, e))?);
                continue;
            }
            let t = v
                .get(text)
                .and_then(|t| t.as_str())
                .ok_or_else(|| bad(path, line, format!("no string field `{text}`")))?;
            let lv = v
                .get(label)
                .ok_or_else(|| bad(path, line, format!("no field `{label}`")))?;
            let label = label_of(lv, task).map_err(|e| bad(path, line, e))?;
            out.push(Example {
                text: t.to_string(),
                label,
            });
        }
    }
    if out.is_empty() {
        return Err(bad(path, 0, "the file holds no examples".into()));
    }
    Ok(out)
}
