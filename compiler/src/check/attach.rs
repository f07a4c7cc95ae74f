//! `attach` items: match patterns against the model, evaluate per-module arguments,
//! instantiate the adapter for each module, apply later-wins overrides.

use super::adapter::{coerce_arg, instantiate, Instance};
use super::eval::{BindKind, Eval, Mode};
use super::pattern::{generalize, ModulePattern};
use super::value::{Alloc, Value};
use crate::diag::{codes, suggest, Diagnostic, Diagnostics, Span};
use crate::model::{is_linear, Linear, ModelInfo};
use crate::syntax::ast::{AdapterDef, Attach, Expr, ExprKind};
use std::collections::{BTreeMap, HashMap};

/// One adapted module.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    /// Module path.
    pub module: String,
    /// Layer index.
    pub layer: Option<usize>,
    /// Adapter name.
    pub adapter: String,
    /// Argument values for this module (allocation rules resolved where possible).
    pub args: Vec<(String, Value)>,
    /// Rows of W0.
    pub m: usize,
    /// Columns of W0.
    pub n: usize,
    /// The checked instantiation.
    pub instance: Instance,
    /// Index of the attach item among the spec's attaches.
    pub attach_index: usize,
    /// The attach item.
    pub span: Span,
}

/// numpy.array_split sizes: how many layers fall in each group.
pub fn group_sizes(layers: usize, groups: usize) -> Vec<usize> {
    let (q, r) = (layers / groups, layers % groups);
    (0..groups).map(|g| q + usize::from(g < r)).collect()
}

/// The group value for `layer` under MoLA's equal consecutive groups.
pub fn group_value(values: &[i64], layers: usize, layer: usize) -> i64 {
    let mut start = 0;
    for (g, size) in group_sizes(layers, values.len()).into_iter().enumerate() {
        if layer < start + size {
            return values[g];
        }
        start += size;
    }
    *values.last().unwrap_or(&1)
}

fn mentions(e: &Expr, name: &str) -> Option<Span> {
    match &e.kind {
        ExprKind::Name(n) if n == name => Some(e.span),
        ExprKind::Call { args, .. } => args.iter().find_map(|a| mentions(&a.value, name)),
        ExprKind::Binary { lhs, rhs, .. } => mentions(lhs, name).or_else(|| mentions(rhs, name)),
        ExprKind::Neg(x) | ExprKind::Transpose(x) => mentions(x, name),
        ExprKind::Index { base, index } => mentions(base, name).or_else(|| mentions(index, name)),
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter().find_map(|x| mentions(x, name)),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => mentions(cond, name)
            .or_else(|| mentions(then, name))
            .or_else(|| mentions(otherwise, name)),
        ExprKind::LetIn { value, body, .. } => {
            mentions(value, name).or_else(|| mentions(body, name))
        }
        ExprKind::Lambda { body, .. } => mentions(body, name),
        _ => None,
    }
}

fn match_modules(
    a: &Attach,
    model: &ModelInfo,
    linears: &[Linear],
    diags: &mut Diagnostics,
) -> Vec<Linear> {
    let mut out: Vec<Linear> = Vec::new();
    for p in &a.patterns {
        let pat = match ModulePattern::parse(&p.text) {
            Ok(x) => x,
            Err(e) => {
                diags.push(
                    Diagnostic::error(codes::BAD_PATTERN, format!("invalid module pattern: {e}"))
                        .at(p.span, "in this pattern")
                        .help(
                            "patterns are dot-separated segments with `*`, `{a, b}` and `{0..3}`",
                        ),
                );
                continue;
            }
        };
        let hits: Vec<&Linear> = linears.iter().filter(|l| pat.matches(&l.module)).collect();
        if hits.is_empty() {
            let other = model
                .tensors
                .iter()
                .filter(|t| !is_linear(t))
                .map(|t| {
                    t.name
                        .trim_end_matches(".weight")
                        .trim_end_matches(".bias")
                        .to_string()
                })
                .find(|n| pat.matches(n));
            if let Some(n) = other {
                diags.push(
                    Diagnostic::error(codes::NOT_LINEAR, format!("`{}` matches `{n}`, which is not a linear layer", p.text))
                        .at(p.span, "matches no linear weight")
                        .help("adapters attach to 2-D linear weights (attention projections, FFN layers); embeddings and norms cannot be adapted"),
                );
            } else {
                let generic = ModulePattern::is_generic(&p.text);
                let mut cands: Vec<String> = linears
                    .iter()
                    .map(|l| {
                        if generic {
                            generalize(&l.module)
                        } else {
                            l.module.clone()
                        }
                    })
                    .collect();
                cands.dedup();
                let example = cands.first().cloned().unwrap_or_default();
                let help = suggest(
                    &p.text,
                    cands.iter().map(|s| s.as_str()),
                    format!("module paths look like `{example}`; `loraC inspect` lists them"),
                );
                diags.push(
                    Diagnostic::error(
                        codes::NO_MATCH,
                        format!("`{}` matches no module of the model", p.text),
                    )
                    .at(p.span, "no module matches")
                    .help(help),
                );
            }
        }
        for h in hits {
            if !out.iter().any(|o| o.module == h.module) {
                out.push(h.clone());
            }
        }
    }
    out
}

/// Checks every attach; returns the final attachment per module (later attaches win).
pub fn check(
    attaches: &[&Attach],
    adapters: &HashMap<String, &AdapterDef>,
    model: &ModelInfo,
    diags: &mut Diagnostics,
) -> Vec<Attachment> {
    let linears = model.linears();
    let layers = model.layers();
    let mut all: Vec<Attachment> = Vec::new();
    let mut cache: HashMap<String, Instance> = HashMap::new();
    for (ai, a) in attaches.iter().enumerate() {
        let Some(def) = adapters.get(&a.adapter.name) else {
            // The standard library may define it: name the module to import.
            let in_std = super::load::STD
                .iter()
                .find(|(_, src)| src.contains(&format!("adapter {}(", a.adapter.name)));
            let help = match in_std {
                Some((module, _)) => format!("`{}` is in the standard library: add `import std.{module}`", a.adapter.name),
                None => suggest(
                    &a.adapter.name,
                    adapters.keys().map(|s| s.as_str()),
                    "define it with `adapter NAME(…) on W0[m, n] { … }` or import it, e.g. `import std.lora`",
                ),
            };
            diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_ADAPTER,
                    format!("unknown adapter `{}`", a.adapter.name),
                )
                .at(a.adapter.span, "not defined or imported")
                .help(help),
            );
            continue;
        };
        // Argument names.
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut ok = true;
        for arg in &a.args {
            let Some(n) = &arg.name else {
                diags.push(
                    Diagnostic::error(codes::ARITY, "attach arguments are named")
                        .at(arg.span, "positional argument")
                        .help("name it: `attach LoRA(r = 8) to …`"),
                );
                ok = false;
                continue;
            };
            if !def.params.iter().any(|p| p.name.name == n.name) {
                let help = suggest(
                    &n.name,
                    def.params.iter().map(|p| p.name.name.as_str()),
                    format!(
                        "`{}` takes: {}",
                        def.name.name,
                        def.params
                            .iter()
                            .map(|p| p.name.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_ARGUMENT,
                        format!("adapter `{}` has no parameter `{}`", def.name.name, n.name),
                    )
                    .at(n.span, "unknown parameter")
                    .also(def.name.span, "adapter defined here")
                    .help(help),
                );
                ok = false;
            }
            if let Some(prev) = seen.insert(&n.name, n.span) {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE_ARGUMENT,
                        format!("`{}` given twice", n.name),
                    )
                    .at(n.span, "given again here")
                    .also(prev, "first given here")
                    .help("give each argument once"),
                );
                ok = false;
            }
        }
        for p in &def.params {
            if p.default.is_none() && !seen.contains_key(p.name.name.as_str()) {
                diags.push(
                    Diagnostic::error(
                        codes::MISSING_ARGUMENT,
                        format!("adapter `{}` needs `{}`", def.name.name, p.name.name),
                    )
                    .at(a.adapter.span, format!("`{}` not given", p.name.name))
                    .also(p.name.span, "declared without a default")
                    .help(format!(
                        "pass it: `attach {}({} = …) to …`",
                        def.name.name, p.name.name
                    )),
                );
                ok = false;
            }
        }
        let modules = match_modules(a, model, &linears, diags);
        if !ok {
            continue;
        }
        for lin in modules {
            let uses_layer = a.args.iter().find_map(|x| mentions(&x.value, "layer"));
            if let (Some(s), None) = (uses_layer, lin.layer) {
                diags.push(
                    Diagnostic::error(codes::NO_LAYER, format!("`{}` is not inside a numbered layer", lin.module))
                        .at(s, "`layer` is undefined for it")
                        .help("restrict the pattern to layer modules, or attach this module separately without `layer`"),
                );
                continue;
            }
            let Some(args) = eval_args(a, def, &lin, layers, model.layer_alpha.as_deref(), diags)
            else {
                continue;
            };
            // Two adapters with equal arguments on equal shapes are still different instances.
            let key = format!("{}|{}|{}|{:?}", def.name.name, lin.m, lin.n, args);
            let instance = match cache.get(&key) {
                Some(i) => i.clone(),
                None => {
                    let map: HashMap<String, Value> = args.iter().cloned().collect();
                    // Problems of this instantiation also point back at the attach that caused it.
                    let mut local = Diagnostics::new();
                    let inst =
                        instantiate(def, &map, Some((lin.m as i64, lin.n as i64)), &mut local);
                    let shown: Vec<String> =
                        args.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    let note = format!(
                        "checked for `{}` (W0 is [{}, {}]){}",
                        lin.module,
                        lin.m,
                        lin.n,
                        if shown.is_empty() {
                            String::new()
                        } else {
                            format!(" with {}", shown.join(", "))
                        }
                    );
                    for d in local.iter() {
                        let mut d = d.clone();
                        if d.primary.as_ref().is_some_and(|p| {
                            !(a.span.start <= p.span.start
                                && p.span.end <= a.span.end
                                && p.span.file == a.span.file)
                        }) {
                            d = d.also(a.adapter.span, note.clone());
                        }
                        diags.push(d);
                    }
                    cache.insert(key, inst.clone());
                    inst
                }
            };
            all.push(Attachment {
                module: lin.module.clone(),
                layer: lin.layer,
                adapter: def.name.name.clone(),
                args,
                m: lin.m,
                n: lin.n,
                instance,
                attach_index: ai,
                span: a.span,
            });
        }
    }
    // Later attaches override earlier ones for the same module.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, at) in all.iter().enumerate() {
        last.insert(&at.module, i);
    }
    let keep: Vec<usize> = last.values().copied().collect();
    for (ai, a) in attaches.iter().enumerate() {
        let had = all.iter().any(|x| x.attach_index == ai);
        let kept = keep.iter().any(|&i| all[i].attach_index == ai);
        if had && !kept {
            let by = all
                .iter()
                .rev()
                .find(|x| x.attach_index != ai)
                .map(|x| x.span);
            let mut d = Diagnostic::warning(
                codes::OVERRIDDEN_ATTACH,
                format!(
                    "every module of this `attach {}` is overridden later",
                    a.adapter.name
                ),
            )
            .at(a.adapter.span, "has no effect")
            .help("remove it, or narrow the later attach's patterns");
            if let Some(s) = by {
                d = d.also(s, "overridden here");
            }
            diags.push(d);
        }
    }
    let mut kept: Vec<Attachment> = keep.into_iter().map(|i| all[i].clone()).collect();
    kept.sort_by(|a, b| (a.layer, &a.module).cmp(&(b.layer, &b.module)));
    kept
}

fn eval_args(
    a: &Attach,
    def: &AdapterDef,
    lin: &Linear,
    layers: usize,
    layer_alpha: Option<&[f64]>,
    diags: &mut Diagnostics,
) -> Option<Vec<(String, Value)>> {
    let mut ev = Eval::new(diags, Mode::Attach);
    if let Some(l) = lin.layer {
        ev.bind(
            "layer",
            Value::Int(l as i64),
            None,
            BindKind::Builtin,
            false,
        );
    }
    ev.bind(
        "layers",
        Value::Int(layers as i64),
        None,
        BindKind::Builtin,
        false,
    );
    let mut out = Vec::new();
    let mut ok = true;
    for arg in &a.args {
        let Some(n) = &arg.name else { continue };
        let Some(p) = def.params.iter().find(|p| p.name.name == n.name) else {
            continue;
        };
        let v = ev.eval(&arg.value);
        let v = match v {
            Value::Alloc(_) if p.ty.name != "int" => {
                ev.err(
                    codes::BAD_ALLOCATION,
                    format!(
                        "`{}` is {}, a per-layer allocation needs an int",
                        n.name, p.ty.name
                    ),
                    arg.value.span,
                    "allocation for a non-int parameter",
                    "allocate an int parameter such as the number of experts",
                );
                ok = false;
                continue;
            }
            Value::Alloc(al) => {
                resolve_alloc(&mut ev, &al, lin, layers, layer_alpha, arg.value.span)?
            }
            Value::List(items) if p.ty.name == "int" => {
                if items.len() != layers {
                    ev.diags.push(
                        Diagnostic::error(codes::ALLOCATION_LENGTH, format!("per-layer list has {} entries, the model has {layers} layers", items.len()))
                            .at(arg.value.span, format!("{} entries", items.len()))
                            .help(format!("give one value per layer ({layers}), or use `groups(…)` to repeat a pattern")),
                    );
                    return None;
                }
                let Some(l) = lin.layer else {
                    ev.err(
                        codes::NO_LAYER,
                        format!("`{}` is not inside a numbered layer", lin.module),
                        arg.value.span,
                        "per-layer list",
                        "restrict the pattern to layer modules",
                    );
                    return None;
                };
                items[l].clone()
            }
            other => other,
        };
        let v = coerce_arg(ev.diags, &p.ty.name, v, arg.value.span);
        if v == Value::Poison {
            ok = false;
        }
        ev.bind(&n.name, v.clone(), None, BindKind::Builtin, false);
        out.push((n.name.clone(), v));
    }
    ok.then_some(out)
}

fn resolve_alloc(
    ev: &mut Eval<'_>,
    al: &Alloc,
    lin: &Linear,
    layers: usize,
    layer_alpha: Option<&[f64]>,
    span: Span,
) -> Option<Value> {
    let Some(layer) = lin.layer else {
        ev.err(
            codes::NO_LAYER,
            format!("`{}` is not inside a numbered layer", lin.module),
            span,
            "per-layer allocation",
            "restrict the pattern to layer modules",
        );
        return None;
    };
    match al {
        Alloc::List(v) => v.get(layer).map(|x| Value::Int(*x)),
        Alloc::Groups(g) => {
            if g.len() > layers {
                ev.err(
                    codes::BAD_ALLOCATION,
                    format!("{} groups for {layers} layers", g.len()),
                    span,
                    "more groups than layers",
                    format!("use at most {layers} groups"),
                );
                return None;
            }
            Some(Value::Int(group_value(g, layers, layer)))
        }
        Alloc::AlphaHill {
            budget,
            beta,
            mode,
            min_experts,
        } => {
            let need = *min_experts * layers as i64;
            if *budget < need {
                ev.err(
                    codes::BAD_ALLOCATION,
                    format!("budget {budget} cannot give {layers} layers at least {min_experts} expert(s) each"),
                    span,
                    format!("needs a budget of at least {need}"),
                    format!("raise `budget` to {need} or more"),
                );
                return None;
            }
            // Resolved from the weights' spectra once they are known (the runtime computes them);
            // until then the count is checked generically.
            match layer_alpha {
                Some(alphas) if alphas.len() == layers => {
                    let m = crate::analysis::alpha::AllocMode::from_name(mode)
                        .unwrap_or(crate::analysis::alpha::AllocMode::Exact);
                    let n =
                        crate::analysis::alpha::allocate(alphas, *budget, *beta, m, *min_experts)
                            .get(layer)
                            .copied()
                            .unwrap_or(0);
                    // A layer allocated no experts (possible with min_experts = 0) is not adapted.
                    (n > 0).then_some(Value::Int(n))
                }
                _ => Some(Value::SomeInt),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mola_groups_split_like_array_split() {
        assert_eq!(group_sizes(32, 4), vec![8, 8, 8, 8]);
        assert_eq!(group_sizes(6, 4), vec![2, 2, 1, 1]);
        let per_layer: Vec<i64> = (0..6).map(|l| group_value(&[2, 4, 6, 8], 6, l)).collect();
        assert_eq!(per_layer, vec![2, 2, 4, 4, 6, 8]);
    }
}
