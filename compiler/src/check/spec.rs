//! The checked spec: the checker's output and the builder's input.

use super::adapter::instantiate;
use super::attach::{self, Attachment};
use super::load::{self, LoadedAdapter};
use super::model_decl;
use super::train::{self, Selectable, TrainConfig};
use crate::diag::{codes, Diagnostic, Diagnostics, SourceMap};
use crate::model::ModelInfo;
use crate::syntax::ast::{AdapterDef, Attach, Item};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A spec that passed checking.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The spec file.
    pub path: PathBuf,
    /// The base model (absent for adapter-library files).
    pub model: Option<ModelInfo>,
    /// Every adapter in scope, by name.
    pub adapters: HashMap<String, AdapterDef>,
    /// Names of the adapters defined by the standard library (their semantics are known,
    /// e.g. to `loraC export --peft`), sorted.
    pub std_adapters: Vec<String>,
    /// The attach items, in order.
    pub attaches: Vec<Attach>,
    /// One entry per adapted module, after overrides.
    pub attachments: Vec<Attachment>,
    /// Training settings.
    pub train: Option<TrainConfig>,
}

/// The outcome of checking: sources for rendering, diagnostics, and the spec if no errors.
pub struct Checked {
    /// Every source file read.
    pub sources: SourceMap,
    /// Errors and warnings.
    pub diagnostics: Diagnostics,
    /// The spec, when there were no errors.
    pub spec: Option<Spec>,
}

/// Checks a spec file on disk.
pub fn check_file(path: &Path) -> Checked {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            check_source(&name, &abs, text)
        }
        Err(e) => {
            let mut diagnostics = Diagnostics::new();
            diagnostics.push(
                Diagnostic::error(codes::IO, format!("cannot read the spec: {e}"))
                    .in_file(name)
                    .help("check the path and permissions"),
            );
            Checked {
                sources: SourceMap::new(),
                diagnostics,
                spec: None,
            }
        }
    }
}

/// Checks spec text as if it were the file at `path` (relative paths resolve from its directory).
pub fn check_source(name: &str, path: &Path, text: String) -> Checked {
    let mut sources = SourceMap::new();
    let mut diags = Diagnostics::new();
    let file = sources.add(name, path, text);
    let loaded = load::load(&mut sources, &mut diags, file);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let spec = check_items(path, &base, loaded, &mut diags);
    let spec = if diags.has_errors() { None } else { spec };
    Checked {
        sources,
        diagnostics: diags,
        spec,
    }
}

fn check_items(
    path: &Path,
    base: &Path,
    loaded: load::Loaded,
    diags: &mut Diagnostics,
) -> Option<Spec> {
    // Adapters: unique names, each checked generically once.
    let mut adapters: HashMap<String, &LoadedAdapter> = HashMap::new();
    for a in &loaded.adapters {
        if let Some(prev) = adapters.get(&a.def.name.name) {
            diags.push(
                Diagnostic::error(
                    codes::DUPLICATE_DEFINITION,
                    format!("adapter `{}` is defined twice", a.def.name.name),
                )
                .at(a.def.name.span, "defined again here")
                .also(prev.def.name.span, "first defined here")
                .help("rename one of them"),
            );
            continue;
        }
        adapters.insert(a.def.name.name.clone(), a);
    }
    let defs: HashMap<String, &AdapterDef> =
        adapters.iter().map(|(k, v)| (k.clone(), &v.def)).collect();
    // Model.
    let mut model: Option<ModelInfo> = None;
    let mut model_span = None;
    let mut attaches: Vec<&Attach> = Vec::new();
    let mut trains = Vec::new();
    for item in &loaded.items {
        match item {
            Item::Model(m) => {
                if let Some(prev) = model_span {
                    diags.push(
                        Diagnostic::error(codes::DUPLICATE_MODEL, "more than one `model`")
                            .at(m.span, "second model")
                            .also(prev, "first model")
                            .help("a spec adapts one base model; remove one"),
                    );
                    continue;
                }
                model_span = Some(m.span);
                model = model_decl::load(m, base, diags);
            }
            Item::Attach(a) => attaches.push(a),
            Item::Train(t) => trains.push(t),
            _ => {}
        }
    }
    if model_span.is_none() {
        if let Some(first) = attaches
            .first()
            .map(|a| a.span)
            .or(trains.first().map(|t| t.span))
        {
            diags.push(
                Diagnostic::error(codes::NO_MODEL, "no `model` declared")
                    .at(first, "attaching needs a base model")
                    .help("declare one first: `model bert(\"../assets/minilm\")`"),
            );
        }
    }
    let attachments = match &model {
        Some(m) => attach::check(&attaches, &defs, m, diags),
        None => Vec::new(),
    };
    // Every adapter once more, generically: names and unused bindings, and problems of
    // adapters nobody attached. Attach-time reports of the same token come first and win.
    let mut names: Vec<&String> = adapters.keys().collect();
    names.sort();
    for n in names {
        instantiate(&adapters[n].def, &HashMap::new(), None, diags);
    }
    // Warnings: adapters of this file never attached.
    for a in adapters.values() {
        if a.local
            && model_span.is_some()
            && !attaches.iter().any(|x| x.adapter.name == a.def.name.name)
        {
            diags.push(
                Diagnostic::warning(
                    codes::UNUSED_ADAPTER,
                    format!("adapter `{}` is never attached", a.def.name.name),
                )
                .at(a.def.name.span, "defined here")
                .help(format!(
                    "attach it (`attach {}(…) to …`) or remove it",
                    a.def.name.name
                )),
            );
        }
    }
    // Train.
    let mut train_cfg = None;
    for (i, t) in trains.iter().enumerate() {
        if i > 0 {
            diags.push(
                Diagnostic::error(codes::DUPLICATE_DEFINITION, "more than one `train` block")
                    .at(t.span, "second train block")
                    .also(trains[0].span, "first train block")
                    .help("merge them into one"),
            );
            continue;
        }
        let mut tensors: Vec<String> = Vec::new();
        let mut expert_tensors: Vec<String> = Vec::new();
        for at in &attachments {
            for p in &at.instance.params {
                if !tensors.contains(&p.name) {
                    tensors.push(p.name.clone());
                }
                if p.experts.is_some() && !expert_tensors.contains(&p.name) {
                    expert_tensors.push(p.name.clone());
                }
            }
        }
        train_cfg = train::check(
            t,
            base,
            &Selectable {
                tensors,
                expert_tensors,
                // A `linear` model's output is the prediction itself: no head to train.
                head: model
                    .as_ref()
                    .is_none_or(|m| m.config.family != crate::model::Family::Linear),
            },
            diags,
        );
        check_task_family(t, train_cfg.as_ref(), model.as_ref(), diags);
    }
    let mut std_adapters: Vec<String> = adapters
        .values()
        .filter(|a| a.from_std)
        .map(|a| a.def.name.name.clone())
        .collect();
    std_adapters.sort();
    Some(Spec {
        path: path.to_path_buf(),
        model,
        std_adapters,
        adapters: defs.into_iter().map(|(k, v)| (k, v.clone())).collect(),
        attaches: attaches.into_iter().cloned().collect(),
        attachments,
        train: train_cfg,
    })
}

/// True when some attach allocates with `alpha_hill(…)` (the weights' spectra decide).
pub fn uses_alpha_hill(spec: &Spec) -> bool {
    fn mentions(e: &crate::syntax::ast::Expr) -> bool {
        use crate::syntax::ast::ExprKind;
        match &e.kind {
            ExprKind::Call { func, args } => {
                func.name == "alpha_hill" || args.iter().any(|a| mentions(&a.value))
            }
            ExprKind::Binary { lhs, rhs, .. } => mentions(lhs) || mentions(rhs),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => mentions(cond) || mentions(then) || mentions(otherwise),
            _ => false,
        }
    }
    spec.attaches
        .iter()
        .any(|a| a.args.iter().any(|x| mentions(&x.value)))
}

/// Re-checks the attaches with AlphaLoRA's per-layer alpha known, so `alpha_hill` allocations
/// become concrete expert counts.
pub fn resolve_alpha(spec: &mut Spec, layer_alpha: Vec<f64>) -> Result<(), Diagnostics> {
    let Some(model) = spec.model.as_mut() else {
        return Ok(());
    };
    model.layer_alpha = Some(layer_alpha);
    let mut diags = Diagnostics::new();
    let defs: HashMap<String, &AdapterDef> =
        spec.adapters.iter().map(|(k, v)| (k.clone(), v)).collect();
    let attaches: Vec<&Attach> = spec.attaches.iter().collect();
    let attachments = attach::check(&attaches, &defs, model, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    spec.attachments = attachments;
    Ok(())
}

/// Causal-LM training needs a decoder with an LM head; BERT has none. A `linear` model has
/// no head to classify with: its output is a regression's prediction.
fn check_task_family(
    block: &crate::syntax::ast::TrainBlock,
    cfg: Option<&TrainConfig>,
    model: Option<&ModelInfo>,
    diags: &mut Diagnostics,
) {
    use crate::model::Family;
    let (Some(cfg), Some(model)) = (cfg, model) else {
        return;
    };
    let family = model.config.family;
    let (msg, label, help) = match (&cfg.task, family) {
        (train::Task::CausalLm { .. }, Family::Bert) => (
            format!(
                "`causal_lm` needs a decoder with an LM head, but the model is `{}`",
                family.name()
            ),
            "this model cannot predict tokens",
            "use `model llama(\"…\")`, or `task classification(labels = N)` for this model",
        ),
        (train::Task::CausalLm { .. } | train::Task::Classification { .. }, Family::Linear) => (
            "a `linear` model is trained with `task regression`: its output is the prediction"
                .to_string(),
            "not a task for a `linear` model",
            "write `task regression`; each target is a list of `out_features` numbers",
        ),
        _ => return,
    };
    let span = block
        .entries
        .iter()
        .find(|e| e.key.name == "task")
        .map(|e| e.span)
        .unwrap_or(block.span);
    diags.push(
        Diagnostic::error(codes::BAD_VALUE, msg)
            .at(span, label)
            .help(help),
    );
}
