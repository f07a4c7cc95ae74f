//! `loraC export DIR --peft OUT`: converts a trained loraC adapter (docs/adapter-format.md) to
//! PEFT's `adapter_model.safetensors` + `adapter_config.json`. Plain LoRA, rsLoRA and DoRA map
//! one to one; PiSSA/MiLoRA become a rank-2r plain LoRA relative to the original weights;
//! mixtures of experts and custom adapters have no PEFT format and are refused.

use crate::{init, weights};
use lorac_compiler::build::head::{HEAD_BIAS, HEAD_WEIGHT};
use lorac_compiler::build::{self, Geometry};
use lorac_compiler::check::attach::Attachment;
use lorac_compiler::check::train::Task;
use lorac_compiler::check::value::Value;
use lorac_compiler::check::Spec;
use lorac_compiler::diag::{codes, Code, Diagnostic};
use lorac_compiler::ir::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<Diagnostic>>;

/// Tensors by name.
type Tensors = HashMap<String, Tensor>;

fn fail(code: Code, msg: impl Into<String>, help: &str) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(code, msg).help(help))
}

/// The manifest version this reader understands.
pub const MANIFEST_VERSION: u64 = 1;

/// Where PEFT's format stops: said by every refusal.
const LORAC_FORMAT: &str = "keep the adapter in the loraC format (docs/adapter-format.md), which \
     holds it, and load it with `loraC infer/eval SPEC --adapter DIR`";

/// A run's adapter directory and its parsed manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The directory holding adapter.json and adapter.safetensors.
    pub dir: PathBuf,
    /// The spec the adapter was trained with, as recorded.
    pub spec: PathBuf,
    /// The manifest itself.
    pub json: serde_json::Value,
}

/// Reads `DIR/adapter.json` (or `DIR/adapter/adapter.json`, a run's output directory).
pub fn read_manifest(dir: &Path) -> Res<Manifest> {
    let dir = if dir.join("adapter.json").is_file() || !dir.join("adapter").is_dir() {
        dir.to_path_buf()
    } else {
        dir.join("adapter")
    };
    let path = dir.join("adapter.json");
    let bad = |m: String| {
        fail(
            codes::BAD_MANIFEST,
            m,
            "point at the --out directory of `loraC train` (or its adapter/ folder)",
        )
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{} is not JSON: {e}", path.display())))?;
    if json["format"] != "lorac-adapter" {
        return Err(bad(format!(
            "{} is not a loraC adapter manifest (`format` is {})",
            path.display(),
            json["format"]
        )));
    }
    if json["version"].as_u64() != Some(MANIFEST_VERSION) {
        return Err(fail(
            codes::BAD_MANIFEST,
            format!(
                "{}: manifest version {} is not one this loraC reads (it reads {MANIFEST_VERSION})",
                path.display(),
                json["version"]
            ),
            "export with the loraC version that trained the adapter, or train it again",
        ));
    }
    let spec = json["spec"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| bad(format!("{}: no `spec` recorded", path.display())))?;
    if !json["attachments"].is_array() || !json["tensors"].is_array() {
        return Err(bad(format!(
            "{}: `attachments` and `tensors` must be lists",
            path.display()
        )));
    }
    Ok(Manifest { dir, spec, json })
}

/// How one attachment maps to PEFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// std LoRA: scale alpha / r.
    Lora,
    /// std RsLoRA: scale alpha / √r (`use_rslora`).
    RsLora,
    /// std DoRA: scale alpha / r and a magnitude vector (`use_dora`).
    Dora,
    /// std PiSSA / MiLoRA: scale 1, base weight rewritten `W0 -= B0 A0` at init.
    Residual,
}

/// The PEFT flavour a kind needs; PEFT's config holds one per adapter.
fn flavour(k: Kind) -> &'static str {
    match k {
        Kind::Lora | Kind::Residual => "plain LoRA",
        Kind::RsLora => "rsLoRA",
        Kind::Dora => "DoRA",
    }
}

fn kind_of(spec: &Spec, at: &Attachment) -> Res<Kind> {
    if at.instance.params.iter().any(|p| p.experts.is_some()) {
        return Err(fail(
            codes::NO_PEFT_FORMAT,
            format!(
                "`{}` on `{}` is a mixture of experts; PEFT has no format for it",
                at.adapter, at.module
            ),
            LORAC_FORMAT,
        ));
    }
    // Only the standard library's definitions have known semantics; a local adapter named
    // `LoRA` may compute anything.
    let from_std = spec.std_adapters.iter().any(|a| a == &at.adapter);
    let kind = match at.adapter.as_str() {
        "LoRA" if from_std => Kind::Lora,
        "RsLoRA" if from_std => Kind::RsLora,
        "DoRA" if from_std => Kind::Dora,
        "PiSSA" | "MiLoRA" if from_std => Kind::Residual,
        _ => {
            return Err(fail(
                codes::NO_PEFT_FORMAT,
                format!(
                    "`{}` on `{}` is not one of std's LoRA, RsLoRA, DoRA, PiSSA, MiLoRA; PEFT has no format for it",
                    at.adapter, at.module
                ),
                LORAC_FORMAT,
            ))
        }
    };
    Ok(kind)
}

/// A scalar argument of an attachment (defaults included).
fn scalar(at: &Attachment, name: &str) -> Res<f64> {
    at.instance
        .scalars
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        })
        .ok_or_else(|| {
            fail(
                codes::BUILD_FAILED,
                format!("`{}` on `{}` has no number `{name}`", at.adapter, at.module),
                "report the spec",
            )
        })
}

/// One module in PEFT terms: rank, PEFT's `lora_alpha`, and the tensors to write.
struct PeftModule {
    module: String,
    r: usize,
    alpha: f64,
    dropout: f64,
    a: Tensor,
    b: Tensor,
    mag: Option<Tensor>,
}

/// Rows of `top` then rows of `bottom` (`[r1, n]`, `[r2, n]` → `[r1 + r2, n]`).
fn stack_rows(top: &Tensor, bottom: &[f32], rows: usize) -> Tensor {
    let n = top.shape[1];
    let mut v = top.f().to_vec();
    v.extend_from_slice(bottom);
    Tensor::f32(vec![top.shape[0] + rows, n], v)
}

/// Columns of `left` then the negated columns of `right` (`[m, r1]`, `[m, r2]` → `[m, r1 + r2]`).
fn concat_neg_cols(left: &Tensor, right: &Tensor) -> Tensor {
    let (m, r1, r2) = (left.shape[0], left.shape[1], right.shape[1]);
    let mut v = Vec::with_capacity(m * (r1 + r2));
    for i in 0..m {
        v.extend_from_slice(&left.f()[i * r1..(i + 1) * r1]);
        v.extend(right.f()[i * r2..(i + 1) * r2].iter().map(|x| -x));
    }
    Tensor::f32(vec![m, r1 + r2], v)
}

/// The most common value (first seen wins ties): PEFT's global `r` / `lora_alpha`.
fn mode(values: &[f64]) -> f64 {
    let mut best = (values.first().copied().unwrap_or(0.0), 0);
    for v in values {
        let n = values.iter().filter(|x| *x == v).count();
        if n > best.1 {
            best = (*v, n);
        }
    }
    best.0
}

/// An integral float as a JSON integer (PEFT types `r`/`lora_alpha` as int), else a float.
fn num(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        serde_json::json!(v as i64)
    } else {
        serde_json::json!(v)
    }
}

/// Checks that the spec still describes the adapter the manifest lists.
fn check_matches(spec: &Spec, man: &Manifest) -> Res<()> {
    let recorded: Vec<(String, String)> = man.json["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["module"].as_str().unwrap_or("").to_string(),
                a["adapter"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let now: Vec<(String, String)> = spec
        .attachments
        .iter()
        .map(|a| (a.module.clone(), a.adapter.clone()))
        .collect();
    if recorded != now {
        return Err(fail(
            codes::BAD_ADAPTER_DIR,
            format!(
                "the spec {} no longer attaches what the adapter was trained with",
                spec.path.display()
            ),
            "pass --spec with the spec the adapter was trained with",
        ));
    }
    Ok(())
}

/// The adapter's tensors, checked against the shapes the spec gives them.
fn load_tensors(spec: &Spec, man: &Manifest) -> Res<(Tensors, HashMap<String, Vec<usize>>)> {
    let file = man.dir.join("adapter.safetensors");
    let loaded = weights::load(&file, None).map_err(|e| {
        fail(
            codes::BAD_ADAPTER_DIR,
            format!("cannot load the adapter: {e}"),
            "the file is damaged: export from a complete run directory, or train again",
        )
    })?;
    let fwd = build::forward(spec, Geometry { batch: 1, seq: 1 })
        .map_err(|e| fail(codes::BUILD_FAILED, e.0, "report the spec"))?;
    let shapes: HashMap<String, Vec<usize>> = fwd
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    for (name, shape) in &shapes {
        match loaded.get(name) {
            Some(t) if &t.shape == shape && t.f().len() == t.len() => {}
            Some(t) if &t.shape == shape => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!("adapter tensor `{name}` holds integers, not floats"),
                    "the file is damaged: export from a complete run directory, or train again",
                ))
            }
            Some(t) => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!(
                        "adapter tensor `{name}` is {:?}, the spec's is {shape:?}",
                        t.shape
                    ),
                    "pass --spec with the spec the adapter was trained with",
                ))
            }
            None => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!("the adapter has no tensor `{name}`"),
                    "export from a complete run directory",
                ))
            }
        }
    }
    if let Some(extra) = loaded.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(fail(
            codes::BAD_ADAPTER_DIR,
            format!("adapter tensor `{extra}` is not in the spec"),
            "pass --spec with the spec the adapter was trained with",
        ));
    }
    Ok((loaded, shapes))
}

/// The initial `A0`, `B0` of residual (PiSSA-style) attachments, recomputed as `loraC infer`
/// does: the same deterministic SVD of the original base weights.
fn initial_factors(
    spec: &Spec,
    shapes: &HashMap<String, Vec<usize>>,
) -> Res<HashMap<String, Tensor>> {
    let model = spec.model.as_ref().ok_or_else(|| {
        fail(
            codes::NO_MODEL,
            "the spec declares no model",
            "add `model …`",
        )
    })?;
    let wpath = model.weights.as_ref().ok_or_else(|| {
        fail(
            codes::WEIGHTS,
            "PiSSA/MiLoRA export needs the base weights (model.safetensors) to recompute the initial factors",
            "point the spec's `model` at a directory with the weights",
        )
    })?;
    let names: Vec<String> = spec
        .attachments
        .iter()
        .map(|a| format!("{}.weight", a.module))
        .collect();
    let mut w = weights::load(wpath, Some(&names))
        .map_err(|e| fail(codes::WEIGHTS, e, "re-download the weights"))?;
    let seed = spec.train.as_ref().map(|t| t.seed).unwrap_or(0);
    init::initialize(spec, shapes, &mut w, seed)
        .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))
}

/// What `export_peft` wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Modules adapted.
    pub modules: usize,
    /// PEFT flavour: plain LoRA, rsLoRA or DoRA.
    pub flavour: &'static str,
}

/// Converts the adapter in `man.dir` (trained with `spec`) to PEFT's format in `out`.
pub fn export_peft(spec: &Spec, man: &Manifest, out: &Path) -> Res<Exported> {
    let spec = &crate::alloc::resolved(spec)?;
    check_matches(spec, man)?;
    let kinds: Vec<Kind> = spec
        .attachments
        .iter()
        .map(|a| kind_of(spec, a))
        .collect::<Res<_>>()?;
    let Some(&first) = kinds.first() else {
        return Err(fail(
            codes::NO_PEFT_FORMAT,
            "the spec attaches no adapter; there is nothing to export",
            "attach an adapter and train it",
        ));
    };
    if let Some((at, k)) = spec
        .attachments
        .iter()
        .zip(&kinds)
        .find(|(_, k)| flavour(**k) != flavour(first))
    {
        return Err(fail(
            codes::NO_PEFT_FORMAT,
            format!(
                "`{}` on `{}` is {}, other modules {}; PEFT has one format per adapter (one use_dora/use_rslora)",
                at.adapter,
                at.module,
                flavour(*k),
                flavour(first)
            ),
            LORAC_FORMAT,
        ));
    }
    let (mut tensors, shapes) = load_tensors(spec, man)?;
    let mut init0 = if kinds.contains(&Kind::Residual) {
        initial_factors(spec, &shapes)?
    } else {
        HashMap::new()
    };
    let mut mods = Vec::new();
    for (at, kind) in spec.attachments.iter().zip(&kinds) {
        let take = |t: &mut HashMap<String, Tensor>, n: &str| {
            t.remove(&format!("{}.{n}", at.module)).ok_or_else(|| {
                fail(
                    codes::BAD_ADAPTER_DIR,
                    format!("the adapter has no tensor `{}.{n}`", at.module),
                    "export from a complete run directory",
                )
            })
        };
        let (a, b) = (take(&mut tensors, "A")?, take(&mut tensors, "B")?);
        let r = a.shape[0];
        let dropout = scalar(at, "p_drop")?;
        let m = match kind {
            Kind::Lora | Kind::RsLora | Kind::Dora => PeftModule {
                module: at.module.clone(),
                r,
                alpha: scalar(at, "alpha")?,
                dropout,
                a,
                b,
                mag: if *kind == Kind::Dora {
                    Some(take(&mut tensors, "mag")?)
                } else {
                    None
                },
            },
            Kind::Residual => {
                // ΔW against the ORIGINAL W0 is B A − B0 A0 (scale 1): rank 2r, A' = [A; A0],
                // B' = [B, −B0], as PEFT's own PiSSA conversion; lora_alpha = 2r keeps scale 1.
                let (a0, b0) = (take(&mut init0, "A")?, take(&mut init0, "B")?);
                PeftModule {
                    module: at.module.clone(),
                    r: 2 * r,
                    alpha: (2 * r) as f64,
                    dropout,
                    a: stack_rows(&a, a0.f(), a0.shape[0]),
                    b: concat_neg_cols(&b, &b0),
                    mag: None,
                }
            }
        };
        mods.push(m);
    }
    let head = match (tensors.remove(HEAD_WEIGHT), tensors.remove(HEAD_BIAS)) {
        (Some(w), Some(b)) => Some((w, b)),
        _ => None,
    };
    if let Some(extra) = tensors.keys().next() {
        return Err(fail(
            codes::NO_PEFT_FORMAT,
            format!("adapter tensor `{extra}` has no place in PEFT's LoRA format"),
            LORAC_FORMAT,
        ));
    }
    let mut files = write_peft(spec, &mods, first, out)?;
    if let Some((w, b)) = head {
        files.extend(write_head(spec, w, b, out)?);
    }
    Ok(Exported {
        files,
        modules: mods.len(),
        flavour: flavour(first),
    })
}

/// Writes `adapter_model.safetensors` and `adapter_config.json`.
fn write_peft(spec: &Spec, mods: &[PeftModule], kind: Kind, out: &Path) -> Res<Vec<PathBuf>> {
    let io = |e: String| fail(codes::IO, e, "check the --peft directory");
    let mut st: BTreeMap<String, Tensor> = BTreeMap::new();
    for m in mods {
        let key = |s: &str| format!("base_model.model.{}.{s}", m.module);
        st.insert(key("lora_A.weight"), m.a.clone());
        st.insert(key("lora_B.weight"), m.b.clone());
        if let Some(g) = &m.mag {
            st.insert(key("lora_magnitude_vector"), g.clone());
        }
    }
    let r = mode(&mods.iter().map(|m| m.r as f64).collect::<Vec<_>>());
    let alpha = mode(&mods.iter().map(|m| m.alpha).collect::<Vec<_>>());
    let dropout = mode(&mods.iter().map(|m| m.dropout).collect::<Vec<_>>());
    // PEFT's per-module overrides, matched against module names by suffix.
    let rank_pattern: serde_json::Map<String, serde_json::Value> = mods
        .iter()
        .filter(|m| m.r as f64 != r)
        .map(|m| (m.module.clone(), num(m.r as f64)))
        .collect();
    let alpha_pattern: serde_json::Map<String, serde_json::Value> = mods
        .iter()
        .filter(|m| m.alpha != alpha)
        .map(|m| (m.module.clone(), num(m.alpha)))
        .collect();
    let mut targets: Vec<&str> = mods.iter().map(|m| m.module.as_str()).collect();
    targets.sort();
    let base = spec
        .model
        .as_ref()
        .and_then(|m| m.config_path.parent())
        .map(|p| p.display().to_string());
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": base,
        "revision": null,
        "inference_mode": true,
        "r": num(r),
        "lora_alpha": num(alpha),
        "lora_dropout": dropout,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": kind == Kind::RsLora,
        "use_dora": kind == Kind::Dora,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
    });
    let st_path = out.join("adapter_model.safetensors");
    let cfg_path = out.join("adapter_config.json");
    save_with_metadata(&st_path, &st).map_err(io)?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| io(e.to_string()))? + "\n";
    weights::write_atomic(&cfg_path, text.as_bytes()).map_err(io)?;
    Ok(vec![st_path, cfg_path])
}

/// The task head, outside the PEFT adapter: `head.safetensors` (`classifier.weight`
/// `[labels, hidden]`, `classifier.bias`) and `head.json` (task, labels, pooling).
fn write_head(spec: &Spec, w: Tensor, b: Tensor, out: &Path) -> Res<Vec<PathBuf>> {
    let io = |e: String| fail(codes::IO, e, "check the --peft directory");
    let mut st = BTreeMap::new();
    st.insert("classifier.weight".to_string(), w);
    st.insert("classifier.bias".to_string(), b);
    let (task, labels, pooling) = match spec.train.as_ref().map(|t| &t.task) {
        Some(Task::Classification { labels, pooling }) => {
            ("classification", *labels, pooling.clone())
        }
        _ => ("regression", 1, "default".to_string()),
    };
    let meta = serde_json::json!({
        "task": task,
        "labels": labels,
        "pooling": pooling,
        "applies_to": "the base model's pooled representation (docs/adapter-format.md, PEFT export)",
    });
    let st_path = out.join("head.safetensors");
    let json_path = out.join("head.json");
    save_with_metadata(&st_path, &st).map_err(io)?;
    weights::write_atomic(&json_path, (meta.to_string() + "\n").as_bytes()).map_err(io)?;
    Ok(vec![st_path, json_path])
}

/// f32 safetensors with `{"format": "pt"}` metadata, as PEFT's `save_pretrained` writes.
fn save_with_metadata(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
    let bytes: Vec<(&String, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n, t.f().iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                tensors[*n].shape.clone(),
                b,
            )
            .map(|v| ((*n).clone(), v))
            .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    weights::write_atomic(path, &data)
}
