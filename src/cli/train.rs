//! `loraC train SPEC [--out DIR] [--steps N] [--checkpoint-every N] [--resume DIR]` and
//! `loraC eval SPEC --adapter DIR [--data FILE] [--format json]`.

use super::check::{checked_spec, show_error, use_color};
use super::{Color, Format};
use lorac_runtime::exec::Backend;
use lorac_runtime::train::{eval, train, Metrics, TrainOptions};
use std::io::IsTerminal;
use std::path::Path;

fn metrics_text(m: &Metrics) -> String {
    let tokens = m
        .tokens
        .map(|t| format!("  tokens {t}"))
        .unwrap_or_default();
    format!("examples {}{tokens}  {}", m.examples, m.summary())
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::json!({"examples": m.examples, "loss": m.loss, "accuracy": m.accuracy, "f1": m.f1, "perplexity": m.perplexity, "tokens": m.tokens})
}

/// Command-line options of `train`.
pub struct RunOptions<'a> {
    /// `--out`.
    pub out: Option<&'a Path>,
    /// `--steps`.
    pub steps: Option<u64>,
    /// `--checkpoint-every`.
    pub checkpoint_every: Option<u64>,
    /// `--resume`.
    pub resume: Option<&'a Path>,
    /// `--backend`.
    pub backend: Backend,
}

/// Runs `train`.
pub fn run_train(spec: &Path, o: RunOptions<'_>, color: Color) -> i32 {
    let RunOptions {
        out,
        steps,
        checkpoint_every,
        resume,
        backend,
    } = o;
    let color = use_color(color);
    let spec_v = match checked_spec(spec, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let default_out = Path::new("runs").join(spec.file_stem().unwrap_or_default());
    let out_dir = resume.or(out).map(Path::to_path_buf).unwrap_or(default_out);
    let opt = TrainOptions {
        out: out_dir.clone(),
        steps,
        checkpoint_every,
        resume: resume.is_some(),
        progress: std::io::stderr().is_terminal(),
        stop_after: None,
        backend,
    };
    match train(&spec_v, &opt) {
        Ok(m) => {
            eprintln!(
                "wrote {}/adapter, metrics.jsonl, loss.svg, checkpoint/",
                out_dir.display()
            );
            if let Some(m) = m {
                super::out(&format!("dev: {}\n", metrics_text(&m)));
            }
            0
        }
        Err(d) => show_error(&d, Format::Text, color),
    }
}

/// Runs `eval`.
pub fn run_eval(
    spec: &Path,
    adapter: &Path,
    data: Option<&Path>,
    backend: Backend,
    format: Format,
    color: Color,
) -> i32 {
    let color = use_color(color);
    let spec_v = match checked_spec(spec, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match eval(&spec_v, adapter, data, backend) {
        Ok(m) => {
            match format {
                Format::Json => super::out(&format!("{}\n", metrics_json(&m))),
                Format::Text => super::out(&format!("{}\n", metrics_text(&m))),
            }
            0
        }
        Err(d) => show_error(&d, format, color),
    }
}
