//! The `train` block: settings, optimizers, schedules, data files.

use super::eval::{Eval, Mode};
use super::value::Value;
use crate::diag::{codes, suggest, Diagnostic, Diagnostics, Span};
use crate::syntax::ast::{Arg, Expr, TrainBlock, TrainEntry};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use super::train_config::*;

const SETTINGS: &[&str] = &[
    "data",
    "task",
    "optimizer",
    "schedule",
    "batch",
    "max_len",
    "steps",
    "epochs",
    "seed",
    "accumulate",
    "clip",
    "eval",
    "log",
];
const METRICS: &[&str] = &["accuracy", "f1", "loss", "perplexity", "mse"];

/// Names the train block may select: tensors of attached adapters, and groups.
pub struct Selectable {
    /// Tensor names of attached adapters.
    pub tensors: Vec<String>,
    /// Tensor names declared in experts blocks.
    pub expert_tensors: Vec<String>,
    /// Whether classification and regression add a trainable head (not on `linear` models).
    pub head: bool,
}

use super::train_args::{boolean, choice, int_value, kwargs, needs_value, num, string};

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Checks a train block; `base` is the spec file's directory.
pub fn check(
    block: &TrainBlock,
    base: &Path,
    sel: &Selectable,
    diags: &mut Diagnostics,
) -> Option<TrainConfig> {
    let mut ev = Eval::new(diags, Mode::Train);
    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut data = None;
    let mut task = None;
    let mut optimizers = Vec::new();
    let mut schedules = Vec::new();
    let (mut batch, mut max_len, mut seed, mut accumulate, mut log_every) = (16, 128, 0, 1, 10);
    let mut steps: Option<(u64, Span)> = None;
    let mut epochs: Option<(u64, Span)> = None;
    let mut clip = Vec::new();
    let mut eval = None;
    for e in &block.entries {
        let key = e.key.name.as_str();
        if !SETTINGS.contains(&key) {
            let help = suggest(
                key,
                SETTINGS.iter().copied(),
                format!("train settings are: {}", SETTINGS.join(", ")),
            );
            ev.diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_SETTING,
                    format!("unknown train setting `{key}`"),
                )
                .at(e.key.span, "not a setting")
                .help(help),
            );
            continue;
        }
        let repeatable = ["optimizer", "schedule", "clip"].contains(&key);
        if !repeatable {
            if let Some(prev) = seen.get(key) {
                ev.diags.push(
                    Diagnostic::error(codes::DUPLICATE_SETTING, format!("`{key}` is set twice"))
                        .at(e.key.span, "set again here")
                        .also(*prev, "first set here")
                        .help("keep one of them"),
                );
                continue;
            }
            seen.insert(key.to_string(), e.key.span);
        }
        check_selectors(
            &mut ev,
            e,
            sel,
            ["optimizer", "schedule", "clip"].contains(&key),
        );
        if e.precondition.is_some() && key != "optimizer" {
            ev.diags.push(
                Diagnostic::error(
                    codes::ITEM_NOT_ALLOWED,
                    "`precondition` belongs to an optimizer",
                )
                .at(e.span, "not an optimizer")
                .help("write it after `optimizer …`"),
            );
        }
        let selectors: Vec<String> = e.selectors.iter().map(|s| s.name.clone()).collect();
        match key {
            "data" | "eval" | "log" => {
                let Some(args) = &e.args else {
                    ev.diags.push(
                        Diagnostic::error(codes::SYNTAX, format!("`{key}` takes named arguments"))
                            .at(e.key.span, "no arguments")
                            .help(match key {
                                "data" => {
                                    "write `data(train = \"train.jsonl\", dev = \"dev.jsonl\")`"
                                }
                                "eval" => "write `eval(every = 100, metric = \"accuracy\")`",
                                _ => "write `log(every = 10)`",
                            }),
                    );
                    continue;
                };
                match key {
                    "data" => data = check_data(&mut ev, e, args, base),
                    "eval" => {
                        let kw = kwargs(&mut ev, "eval", e.key.span, args, &["every", "metric"]);
                        let every = num(&mut ev, &kw, "every", 100.0, true) as u64;
                        let metric = string(&mut ev, &kw, "metric", "accuracy");
                        if !METRICS.contains(&metric.as_str()) {
                            let s = kw.get("metric").map(|x| x.1).unwrap_or(e.span);
                            let help = suggest(
                                &metric,
                                METRICS.iter().copied(),
                                format!("one of: {}", METRICS.join(", ")),
                            );
                            ev.diags.push(
                                Diagnostic::error(
                                    codes::UNKNOWN_CHOICE,
                                    format!("unknown metric `{metric}`"),
                                )
                                .at(s, "not a metric")
                                .help(help),
                            );
                        }
                        eval = Some(EvalConfig {
                            every: every.max(1),
                            metric,
                        });
                    }
                    _ => {
                        let kw = kwargs(&mut ev, "log", e.key.span, args, &["every"]);
                        log_every = num(&mut ev, &kw, "every", 10.0, true) as u64;
                    }
                }
            }
            "task" => {
                let Some(v) = &e.value else {
                    needs_value(&mut ev, e);
                    continue;
                };
                if let Some(t) = super::train_task::check(&mut ev, v) {
                    task = Some(t);
                }
            }
            "optimizer" => {
                let Some(v) = &e.value else {
                    ev.diags.push(
                        Diagnostic::error(codes::SYNTAX, "`optimizer` needs a rule")
                            .at(e.key.span, "which optimizer?")
                            .help("write `optimizer adamw(lr = 1e-4)`"),
                    );
                    continue;
                };
                let Some((name, span, args)) = choice(&mut ev, v, "optimizer", &["adamw", "sgd"])
                else {
                    continue;
                };
                let allowed: &[&str] = if name == "adamw" {
                    &["lr", "betas", "eps", "weight_decay", "bias_correction"]
                } else {
                    &["lr", "momentum", "weight_decay"]
                };
                let kw = kwargs(&mut ev, &name, span, args, allowed);
                let Some(_) = kw.get("lr") else {
                    ev.diags.push(
                        Diagnostic::error(
                            codes::MISSING_ARGUMENT,
                            format!("`{name}` needs a learning rate"),
                        )
                        .at(span, "`lr` missing")
                        .help(format!("write `{name}(lr = 1e-4)`")),
                    );
                    continue;
                };
                let lr = num(&mut ev, &kw, "lr", 1e-4, true);
                let kind = if name == "adamw" {
                    let betas = match kw.get("betas") {
                        None => (0.9, 0.999),
                        Some((Value::Tuple(b), s)) if b.len() == 2 => {
                            match (b[0].as_f64(), b[1].as_f64()) {
                                (Some(a), Some(c))
                                    if (0.0..1.0).contains(&a) && (0.0..1.0).contains(&c) =>
                                {
                                    (a, c)
                                }
                                _ => {
                                    ev.err(
                                        codes::BAD_VALUE,
                                        "betas must be two numbers in [0, 1)",
                                        *s,
                                        "out of range",
                                        "use `betas = (0.9, 0.999)`",
                                    );
                                    (0.9, 0.999)
                                }
                            }
                        }
                        Some((v, s)) => {
                            ev.type_err("a pair `(beta1, beta2)`", v, *s);
                            (0.9, 0.999)
                        }
                    };
                    OptimizerKind::AdamW {
                        betas,
                        eps: num(&mut ev, &kw, "eps", 1e-8, true),
                        weight_decay: num(&mut ev, &kw, "weight_decay", 0.0, false),
                        bias_correction: boolean(&mut ev, &kw, "bias_correction", true),
                    }
                } else {
                    OptimizerKind::Sgd {
                        momentum: num(&mut ev, &kw, "momentum", 0.0, false),
                        weight_decay: num(&mut ev, &kw, "weight_decay", 0.0, false),
                    }
                };
                let precondition = e
                    .precondition
                    .as_ref()
                    .and_then(|p| check_precondition(&mut ev, p, sel));
                optimizers.push(OptimizerConfig {
                    kind,
                    lr,
                    precondition,
                    selectors,
                    span: e.span,
                });
            }
            "schedule" => {
                let Some(v) = &e.value else {
                    needs_value(&mut ev, e);
                    continue;
                };
                let Some((name, span, args)) =
                    choice(&mut ev, v, "schedule", &["constant", "linear", "cosine"])
                else {
                    continue;
                };
                let kw = kwargs(&mut ev, &name, span, args, &["warmup", "max_steps"]);
                let warmup = match kw.get("warmup") {
                    None => Warmup::Steps(0),
                    Some((Value::Int(i), _)) if *i >= 0 => Warmup::Steps(*i as u64),
                    Some((Value::Float(f), _)) if (0.0..1.0).contains(f) => Warmup::Ratio(*f),
                    Some((v, s)) => {
                        ev.err(
                            codes::BAD_VALUE,
                            format!("warmup {v} is neither a ratio in [0, 1) nor a step count"),
                            *s,
                            "invalid warmup",
                            "write `warmup = 0.03` (ratio) or `warmup = 100` (steps)",
                        );
                        Warmup::Steps(0)
                    }
                };
                let max_steps = kw
                    .get("max_steps")
                    .map(|_| num(&mut ev, &kw, "max_steps", 1.0, true) as u64);
                let kind = match name.as_str() {
                    "constant" => ScheduleKind::Constant,
                    "linear" => ScheduleKind::Linear,
                    _ => ScheduleKind::Cosine,
                };
                schedules.push(ScheduleConfig {
                    kind,
                    warmup,
                    max_steps,
                    selectors,
                });
            }
            "clip" => {
                let Some(v) = &e.value else {
                    needs_value(&mut ev, e);
                    continue;
                };
                match ev.eval(v).as_f64() {
                    Some(x) if x > 0.0 => clip.push((x, selectors)),
                    _ => {
                        ev.err(
                            codes::BAD_VALUE,
                            "`clip` needs a positive max norm",
                            v.span,
                            "not a positive number",
                            "write `clip 1.0`",
                        );
                    }
                }
            }
            "steps" => steps = int_value(&mut ev, e, 1).map(|s| (s, e.key.span)),
            "epochs" => epochs = int_value(&mut ev, e, 1).map(|s| (s, e.key.span)),
            "batch" => batch = int_value(&mut ev, e, 1).unwrap_or(batch),
            "max_len" => max_len = int_value(&mut ev, e, 2).unwrap_or(max_len),
            "seed" => seed = int_value(&mut ev, e, 0).unwrap_or(seed),
            _ => accumulate = int_value(&mut ev, e, 1).unwrap_or(accumulate),
        }
    }
    let duration = match (steps, epochs) {
        (Some((_, s)), Some((_, e2))) => {
            ev.diags.push(
                Diagnostic::error(
                    codes::CONFLICTING_SETTINGS,
                    "both `steps` and `epochs` are set",
                )
                .at(e2, "epochs here")
                .also(s, "steps here")
                .help("keep one: `steps N` or `epochs N`"),
            );
            Duration::Steps(1)
        }
        (Some((s, _)), None) => Duration::Steps(s),
        (None, Some((e, _))) => Duration::Epochs(e),
        (None, None) => {
            ev.diags.push(
                Diagnostic::error(
                    codes::MISSING_SETTING,
                    "the train block says neither `steps` nor `epochs`",
                )
                .at(
                    Span {
                        end: block.span.start + 5,
                        ..block.span
                    },
                    "how long to train?",
                )
                .help("add `steps 300` or `epochs 1`"),
            );
            Duration::Epochs(1)
        }
    };
    let kw_span = Span {
        end: block.span.start + 5,
        ..block.span
    };
    for (what, missing, example) in [
        (
            "data",
            data.is_none() && !seen.contains_key("data"),
            "data(train = \"train.jsonl\", dev = \"dev.jsonl\")",
        ),
        (
            "task",
            task.is_none() && !seen.contains_key("task"),
            "task classification(labels = 2)",
        ),
        (
            "optimizer",
            optimizers.is_empty() && !block.entries.iter().any(|e| e.key.name == "optimizer"),
            "optimizer adamw(lr = 1e-4)",
        ),
    ] {
        if missing {
            ev.diags.push(
                Diagnostic::error(
                    codes::MISSING_SETTING,
                    format!("the train block has no `{what}`"),
                )
                .at(kw_span, format!("`{what}` missing"))
                .help(format!("add `{example}`")),
            );
        }
    }
    let expand = |o: &OptimizerConfig| -> Vec<String> {
        let mut v = Vec::new();
        for s in &o.selectors {
            match s.as_str() {
                "experts" => v.extend(sel.expert_tensors.iter().cloned()),
                "adapters" => v.extend(sel.tensors.iter().cloned()),
                other => v.push(other.to_string()),
            }
        }
        v
    };
    for (i, o) in optimizers.iter().enumerate() {
        let mine = expand(o);
        if let Some((prev, t)) = optimizers[..i].iter().find_map(|p| {
            expand(p)
                .into_iter()
                .find(|t| mine.contains(t))
                .map(|t| (p, t))
        }) {
            ev.diags.push(
                Diagnostic::error(
                    codes::CONFLICTING_SETTINGS,
                    format!("`{t}` is selected by two optimizers"),
                )
                .at(o.span, "selects it again")
                .also(prev.span, "selected here first")
                .help("give each tensor exactly one optimizer: narrow one of the `for` clauses"),
            );
        }
    }
    if !optimizers.is_empty() && !optimizers.iter().any(|o| o.selectors.is_empty()) {
        let covered: Vec<&String> = optimizers.iter().flat_map(|o| o.selectors.iter()).collect();
        let uncovered: Vec<&String> = sel
            .tensors
            .iter()
            .filter(|t| {
                !covered.iter().any(|c| {
                    *c == *t
                        || *c == "adapters"
                        || (*c == "experts" && sel.expert_tensors.contains(t))
                })
            })
            .collect();
        let head_uncovered = sel.head
            && !covered.iter().any(|c| *c == "head")
            && matches!(task, Some(Task::Classification { .. } | Task::Regression));
        if !uncovered.is_empty() || head_uncovered {
            let mut names: Vec<String> = uncovered.iter().map(|s| format!("`{s}`")).collect();
            if head_uncovered {
                names.push("the task head".into());
            }
            let span = optimizers.last().map(|o| o.span).unwrap_or(block.span);
            ev.diags.push(
                Diagnostic::error(
                    codes::NO_OPTIMIZER,
                    format!("no optimizer updates {}", names.join(", ")),
                )
                .at(span, "every optimizer here has a `for` clause")
                .help("add a default optimizer without `for`, e.g. `optimizer adamw(lr = 1e-4)`"),
            );
        }
    }
    Some(TrainConfig {
        data: data?,
        task: task?,
        optimizers,
        schedules,
        batch,
        max_len,
        duration,
        seed,
        accumulate,
        clip,
        eval,
        log_every,
    })
}

fn check_data(ev: &mut Eval<'_>, e: &TrainEntry, args: &[Arg], base: &Path) -> Option<DataConfig> {
    let kw = kwargs(
        ev,
        "data",
        e.key.span,
        args,
        &["train", "dev", "test", "text", "input", "label"],
    );
    // `input` is `text` under the name that fits models whose input is not text (`linear`).
    if let (Some((_, t)), Some((_, i))) = (kw.get("text"), kw.get("input")) {
        ev.diags.push(
            Diagnostic::error(
                codes::CONFLICTING_SETTINGS,
                "`data` names its input field twice, as `text` and as `input`",
            )
            .at(*i, "input field here")
            .also(*t, "and here")
            .help("keep one of them: they are the same setting"),
        );
    }
    let input = if kw.contains_key("input") {
        "input"
    } else {
        "text"
    };
    let mut files = HashMap::new();
    for key in ["train", "dev", "test"] {
        let Some((v, s)) = kw.get(key) else { continue };
        let Value::Str(p) = v else {
            ev.type_err(&format!("a file path for `{key}`"), v, *s);
            continue;
        };
        let path = resolve(base, p);
        if !path.is_file() {
            let ext_ok = p.ends_with(".jsonl") || p.ends_with(".csv") || p.ends_with(".json");
            let help = if p.contains("assets/") {
                "run `scripts/fetch-assets` to download the datasets, or fix the path".to_string()
            } else if !ext_ok {
                "data files are .jsonl or .csv; fix the path".into()
            } else {
                "fix the path (it is relative to the spec file)".into()
            };
            ev.diags.push(
                Diagnostic::error(codes::DATA_NOT_FOUND, format!("data file `{p}` not found"))
                    .at(
                        *s,
                        format!("resolved to {}", crate::diag::source::shown(&path)),
                    )
                    .help(help),
            );
            continue;
        }
        files.insert(key, path);
    }
    if !kw.contains_key("train") {
        ev.diags.push(
            Diagnostic::error(codes::MISSING_ARGUMENT, "`data` needs a `train` file")
                .at(e.key.span, "no training data")
                .help("write `data(train = \"train.jsonl\")`"),
        );
    }
    Some(DataConfig {
        train: files.remove("train")?,
        dev: files.remove("dev"),
        test: files.remove("test"),
        text: string(ev, &kw, input, "text"),
        label: string(ev, &kw, "label", "label"),
    })
}

fn check_selectors(ev: &mut Eval<'_>, e: &TrainEntry, sel: &Selectable, allowed: bool) {
    if e.selectors.is_empty() {
        return;
    }
    if !allowed {
        ev.diags.push(
            Diagnostic::error(
                codes::ITEM_NOT_ALLOWED,
                format!("`{}` does not take `for`", e.key.name),
            )
            .at(e.selectors[0].span, "selector not allowed")
            .help("only `optimizer`, `schedule` and `clip` apply to selected tensors"),
        );
        return;
    }
    for s in &e.selectors {
        let ok = ["experts", "adapters", "head"].contains(&s.name.as_str())
            || sel.tensors.contains(&s.name);
        if !ok {
            let cands: Vec<&str> = sel
                .tensors
                .iter()
                .map(|s| s.as_str())
                .chain(["experts", "adapters", "head"])
                .collect();
            let help = suggest(
                &s.name,
                cands.iter().copied(),
                format!("select one of: {}", cands.join(", ")),
            );
            ev.diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_SELECTOR,
                    format!("`{}` names no trainable tensor", s.name),
                )
                .at(s.span, "unknown selector")
                .help(help),
            );
        }
    }
}

fn check_precondition(ev: &mut Eval<'_>, p: &Expr, sel: &Selectable) -> Option<Riemannian> {
    let (_, span, args) = choice(ev, p, "preconditioner", &["riemannian"])?;
    let kw = kwargs(ev, "riemannian", span, args, &["pairs", "damping"]);
    let damping = num(ev, &kw, "damping", 1e-6, true);
    let Some((pairs, ps)) = kw.get("pairs") else {
        ev.diags.push(
            Diagnostic::error(codes::MISSING_ARGUMENT, "`riemannian` needs `pairs`")
                .at(span, "which factors?")
                .help("write `pairs = (A, B)`"),
        );
        return None;
    };
    let Value::Tuple(items) = pairs else {
        ev.diags.push(
            Diagnostic::error(codes::BAD_PAIRS, "`pairs` must name two tensors")
                .at(*ps, "not a pair")
                .help("write `pairs = (A, B)`"),
        );
        return None;
    };
    let names: Vec<String> = items
        .iter()
        .filter_map(|v| match v {
            Value::Symbol(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    if names.len() != 2 {
        ev.diags.push(
            Diagnostic::error(codes::BAD_PAIRS, "`pairs` must name two tensors")
                .at(*ps, "expected `(A, B)`")
                .help("write `pairs = (A, B)` with the down- and up-projection factors"),
        );
        return None;
    }
    for n in &names {
        if !sel.expert_tensors.contains(n) && !sel.tensors.contains(n) {
            let help = suggest(
                n,
                sel.tensors.iter().map(|s| s.as_str()),
                "name the factors declared by the attached adapter",
            );
            ev.diags.push(
                Diagnostic::error(codes::BAD_PAIRS, format!("`{n}` names no trainable tensor"))
                    .at(*ps, format!("`{n}` unknown"))
                    .help(help),
            );
            return None;
        }
    }
    Some(Riemannian {
        pairs: (names[0].clone(), names[1].clone()),
        damping,
    })
}
