//! `loraC inspect MODEL_DIR [--alpha [--corrected]] [--format json]`: a base model's summary,
//! or the AlphaLoRA PL_Alpha_Hill of its linear weights (methods.md §3.1).

use super::check::use_color;
use super::{Color, Format};
use lorac_compiler::analysis::alpha::{layer_alphas, LinearWeight};
use lorac_compiler::diag::render::{render, to_json, Style};
use lorac_compiler::diag::{codes, Code, Diagnostic, SourceMap};
use lorac_compiler::model::{
    expected_tensors, is_linear, layer_of, parse_config, read_header, Family, ModelConfig,
    TensorInfo,
};
use serde_json::{json, Value};
use std::path::Path;

/// What `inspect` does.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Compute PL_Alpha_Hill per module and per layer.
    pub alpha: bool,
    /// Use the corrected Fix-finger lower bound `0.95·xmin2`.
    pub corrected: bool,
    /// Output format (diagnostics follow it too).
    pub format: Format,
    /// Colour of diagnostics.
    pub color: Color,
}

/// A failure: the diagnostic and the exit code (1 bad input, 2 I/O).
struct Fail(Box<Diagnostic>, i32);

fn fail(code: Code, msg: impl Into<String>, help: impl Into<String>, exit: i32) -> Fail {
    Fail(Box::new(Diagnostic::error(code, msg).help(help)), exit)
}

/// Runs `inspect` and returns the exit code.
pub fn run(dir: &Path, o: Options) -> i32 {
    match inspect(dir, o) {
        Ok(text) => {
            super::out(&text);
            0
        }
        Err(Fail(d, exit)) => {
            let map = SourceMap::new();
            match o.format {
                Format::Json => eprintln!("{}", Value::Array(vec![to_json(&map, &d)])),
                Format::Text => {
                    let style = Style {
                        color: use_color(o.color),
                        width: 100,
                    };
                    eprint!("{}", render(&map, &d, style));
                }
            }
            exit
        }
    }
}

/// One linear module: path without `.weight`, tensor name, shape `[m, n]`, dtype.
struct Lin {
    module: String,
    tensor: String,
    m: usize,
    n: usize,
    dtype: String,
}

fn linears(tensors: &[TensorInfo]) -> Vec<Lin> {
    let mut v: Vec<Lin> = tensors
        .iter()
        .filter(|t| is_linear(t))
        .map(|t| Lin {
            module: t.name.trim_end_matches(".weight").to_string(),
            tensor: t.name.clone(),
            m: t.shape[0],
            n: t.shape[1],
            dtype: t.dtype.clone(),
        })
        .collect();
    // Layer order (numerically), then name; modules outside layers last.
    v.sort_by(|a, b| {
        let key = |l: &Lin| (layer_of(&l.module).unwrap_or(usize::MAX), l.module.clone());
        key(a).cmp(&key(b))
    });
    v
}

fn load_config(dir: &Path) -> Result<ModelConfig, Fail> {
    let shown = dir.display();
    if !dir.is_dir() {
        return Err(fail(
            codes::MODEL_NOT_FOUND,
            format!("model directory `{shown}` not found"),
            "pass a directory holding config.json and model.safetensors \
             (`scripts/fetch-assets` downloads assets/minilm)",
            2,
        ));
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            codes::MODEL_NOT_FOUND,
            format!("cannot read `{}`: {e}", path.display()),
            "a model directory needs the Hugging Face config.json",
            2,
        )
    })?;
    let bad = |msg: String| {
        fail(
            codes::BAD_CONFIG,
            format!("`{}` is invalid: {msg}", path.display()),
            format!("fix {} (a Hugging Face config)", path.display()),
            1,
        )
    };
    let raw: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let model_type = raw
        .get("model_type")
        .ok_or_else(|| bad("field `model_type` is missing".into()))?
        .as_str()
        .ok_or_else(|| bad("field `model_type` must be a string".into()))?;
    let family = Family::from_name(model_type).ok_or_else(|| {
        fail(
            codes::UNKNOWN_FAMILY,
            format!(
                "`{}` has model_type `{model_type}`, which loraC does not support",
                path.display()
            ),
            "supported families: bert, llama, linear",
            1,
        )
    })?;
    parse_config(family, &text).map_err(bad)
}

fn family_name(f: Family) -> &'static str {
    f.name()
}

fn inspect(dir: &Path, o: Options) -> Result<String, Fail> {
    let cfg = load_config(dir)?;
    let weights = dir.join("model.safetensors");
    let header = if weights.is_file() {
        Some(read_header(&weights).map_err(|e| {
            fail(
                codes::BAD_SAFETENSORS,
                format!("`{}` is corrupt: {e}", weights.display()),
                "re-download the weights",
                1,
            )
        })?)
    } else {
        None
    };
    if !o.alpha {
        return Ok(summary(dir, &cfg, header.as_deref(), o.format));
    }
    let Some(header) = header else {
        return Err(fail(
            codes::WEIGHTS,
            format!("`{}` not found", weights.display()),
            "PL_Alpha_Hill needs the weight values: put model.safetensors next to config.json",
            2,
        ));
    };
    let lins = linears(&header);
    check_layers(&lins, &cfg)?;
    let names: Vec<String> = lins.iter().map(|l| l.tensor.clone()).collect();
    let loaded = lorac_runtime::weights::load(&weights, Some(&names)).map_err(|e| {
        fail(
            codes::WEIGHTS,
            format!("cannot load weights: {e}"),
            "re-download the weights",
            1,
        )
    })?;
    let mut views = Vec::with_capacity(lins.len());
    for l in &lins {
        let t = loaded.get(&l.tensor).filter(|t| t.f().len() == l.m * l.n);
        let Some(t) = t else {
            return Err(fail(
                codes::WEIGHTS,
                format!(
                    "`{}` could not be read as a [{}, {}] float matrix",
                    l.tensor, l.m, l.n
                ),
                "re-download the weights",
                1,
            ));
        };
        views.push(LinearWeight {
            module: &l.module,
            data: t.f(),
            m: l.m,
            n: l.n,
        });
    }
    let alphas = layer_alphas(&views, cfg.layers, o.corrected).map_err(|e| {
        fail(
            codes::WEIGHTS,
            format!("cannot compute PL_Alpha_Hill: {e}"),
            "alpha_hill needs weight matrices with at least two distinct, non-zero singular values",
            1,
        )
    })?;
    let layers: Vec<f64> = alphas
        .layers
        .iter()
        .map(|a| a.unwrap_or(f64::NAN))
        .collect();
    Ok(match o.format {
        Format::Json => {
            let modules: serde_json::Map<String, Value> = alphas
                .modules
                .iter()
                .map(|(m, a)| (m.clone(), num(*a)))
                .collect();
            let layers: Vec<Value> = layers.iter().map(|&a| num(a)).collect();
            format!(
                "{{\"modules\": {}, \"layers\": {}}}\n",
                Value::Object(modules),
                Value::Array(layers)
            )
        }
        Format::Text => {
            let window = if o.corrected {
                "corrected Fix-finger window"
            } else {
                "exact Fix-finger window"
            };
            let mut s = format!(
                "PL_Alpha_Hill of {} ({}, {} layers; {window})\n\n",
                dir.display(),
                family_name(cfg.family),
                cfg.layers
            );
            let w = lins
                .iter()
                .map(|l| l.module.len())
                .max()
                .unwrap_or(6)
                .max(6);
            s += &format!("{:<w$}  {:>12}  {:>8}\n", "module", "shape", "alpha");
            for (l, (_, a)) in lins.iter().zip(&alphas.modules) {
                let shape = format!("[{}, {}]", l.m, l.n);
                s += &format!("{:<w$}  {shape:>12}  {a:>8.4}\n", l.module);
            }
            s += &format!("\n{:<5}  {:>8}  {:>7}\n", "layer", "alpha", "modules");
            for (i, a) in layers.iter().enumerate() {
                let count = lins
                    .iter()
                    .filter(|l| layer_of(&l.module) == Some(i))
                    .count();
                s += &format!("{i:<5}  {a:>8.4}  {count:>7}\n");
            }
            s
        }
    })
}

/// A JSON number, or null where it is not finite.
fn num(a: f64) -> Value {
    serde_json::Number::from_f64(a).map_or(Value::Null, Value::Number)
}

/// Every layer `0..layers` has linear modules and none lies beyond.
fn check_layers(lins: &[Lin], cfg: &ModelConfig) -> Result<(), Fail> {
    let mismatch = |msg: String| {
        fail(
            codes::CONFIG_MISMATCH,
            msg,
            "config.json and model.safetensors come from different models",
            1,
        )
    };
    if let Some(l) = lins
        .iter()
        .find(|l| layer_of(&l.module).is_some_and(|i| i >= cfg.layers))
    {
        return Err(mismatch(format!(
            "`{}` lies beyond num_hidden_layers = {}",
            l.module, cfg.layers
        )));
    }
    if let Some(i) = (0..cfg.layers).find(|&i| !lins.iter().any(|l| layer_of(&l.module) == Some(i)))
    {
        return Err(mismatch(format!(
            "layer {i} has no linear weights, but num_hidden_layers = {}",
            cfg.layers
        )));
    }
    Ok(())
}

fn summary(dir: &Path, cfg: &ModelConfig, header: Option<&[TensorInfo]>, format: Format) -> String {
    let implied;
    let tensors = match header {
        Some(h) => h,
        None => {
            implied = expected_tensors(cfg);
            &implied
        }
    };
    let lins = linears(tensors);
    let source = if header.is_some() {
        "from model.safetensors"
    } else {
        "implied by config.json; no model.safetensors"
    };
    match format {
        Format::Json => {
            let l: Vec<Value> = lins
                .iter()
                .map(|l| json!({ "module": l.module, "shape": [l.m, l.n], "dtype": l.dtype }))
                .collect();
            let v = json!({
                "family": family_name(cfg.family),
                "layers": cfg.layers,
                "hidden": cfg.hidden,
                "intermediate": cfg.intermediate,
                "heads": cfg.heads,
                "kv_heads": cfg.kv_heads,
                "vocab": cfg.vocab,
                "weights": header.is_some(),
                "linears": l,
            });
            format!("{v}\n")
        }
        Format::Text => {
            let mut s = format!("model         {}\n", dir.display());
            s += &format!("family        {}\n", family_name(cfg.family));
            s += &format!("layers        {}\n", cfg.layers);
            s += &format!("hidden        {}\n", cfg.hidden);
            s += &format!("intermediate  {}\n", cfg.intermediate);
            s += &format!("heads         {} (kv {})\n", cfg.heads, cfg.kv_heads);
            s += &format!("vocab         {}\n", cfg.vocab);
            s += &format!("\nlinear modules ({}, {source}):\n", lins.len());
            let w = lins.iter().map(|l| l.module.len()).max().unwrap_or(0);
            for l in &lins {
                let shape = format!("[{}, {}]", l.m, l.n);
                s += &format!("  {:<w$}  {shape:>12}  {}\n", l.module, l.dtype);
            }
            s
        }
    }
}
