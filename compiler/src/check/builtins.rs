//! Built-in functions: argument binding, shape rules and constant folding.

use super::eval::{BindKind, Eval, Mode};
use super::value::{Alloc, Dim, Gate, Tensor, Value};
use crate::diag::{codes, suggest, Diagnostic, Span};
use crate::syntax::ast::{Arg, Expr, ExprKind, Ident};

/// Elementwise functions of one argument.
const UNARY: &[&str] = &[
    "sqrt", "exp", "log", "log10", "abs", "relu", "gelu", "silu", "sigmoid", "tanh",
];
/// Initializers of one tensor.
pub const INITS: &[&str] = &[
    "zeros",
    "ones",
    "kaiming_uniform",
    "normal",
    "uniform",
    "constant",
];
/// Initializers of an (A, B) pair.
pub const PAIR_INITS: &[&str] = &["svd_principal", "svd_minor", "svd_segment"];
/// Other functions.
const OTHERS: &[&str] = &[
    "pow",
    "min",
    "max",
    "floor",
    "ceil",
    "round",
    "float",
    "int",
    "softmax",
    "topk",
    "stop_grad",
    "dropout",
    "row_norm",
    "sum",
    "mean",
    "gated_mix",
    "balance",
    "groups",
    "alpha_hill",
];
/// Balance-loss normalisations (methods.md §5).
pub const BALANCE_NORMS: &[&str] = &["goat", "switch", "paper"];
/// SVD segment selectors; `goat` and `goat_mini` are the official code's names.
pub const SEGMENT_SELECTORS: &[&str] = &[
    "segment_head",
    "segment_tail",
    "principal",
    "minor",
    "random",
    "goat",
    "goat_mini",
];
/// AlphaLoRA allocation modes.
pub const ALPHA_MODES: &[&str] = &["exact", "largest_remainder"];

/// Every built-in function name.
pub fn names() -> Vec<&'static str> {
    UNARY
        .iter()
        .chain(INITS)
        .chain(PAIR_INITS)
        .chain(OTHERS)
        .copied()
        .collect()
}

/// True for a built-in function name.
pub fn is_builtin(n: &str) -> bool {
    names().contains(&n)
}

/// A function's parameters: positional-or-named in order, then flags.
struct Sig {
    params: &'static [&'static str],
    required: usize,
    flags: &'static [&'static str],
}

/// Arguments matched to parameters (unevaluated).
struct Bound<'e> {
    slots: Vec<Option<&'e Expr>>,
    flags: Vec<bool>,
}

fn sig(name: &str) -> Sig {
    let s = |params, required| Sig {
        params,
        required,
        flags: &[],
    };
    match name {
        n if UNARY.contains(&n) => s(&["x"], 1),
        "floor" | "ceil" | "round" | "float" | "int" | "stop_grad" | "softmax" | "row_norm"
        | "mean" => s(&["x"], 1),
        "pow" => s(&["x", "y"], 2),
        "min" | "max" => s(&["a", "b"], 2),
        "topk" => Sig {
            params: &["x", "k", "renorm"],
            required: 2,
            flags: &["renorm"],
        },
        "dropout" => s(&["x", "p"], 1),
        "sum" => s(&["over", "body"], 1),
        "gated_mix" => s(&["g", "y", "p"], 2),
        "balance" => s(&["g", "norm"], 1),
        "zeros" | "ones" => s(&[], 0),
        "kaiming_uniform" => s(&["a"], 0),
        "normal" => s(&["std", "mean"], 0),
        "uniform" => s(&["lo", "hi"], 0),
        "constant" => s(&["value"], 1),
        "svd_principal" | "svd_minor" => s(&["w", "rank"], 2),
        "svd_segment" => s(&["w", "e", "of", "rank", "shrink", "select"], 4),
        "groups" => s(
            &[
                "g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11",
            ],
            1,
        ),
        "alpha_hill" => s(&["budget", "beta", "mode", "min_experts"], 1),
        _ => s(&[], 0),
    }
}

fn bind<'e>(ev: &mut Eval<'_>, func: &Ident, args: &'e [Arg], sig: &Sig) -> Option<Bound<'e>> {
    let mut b = Bound {
        slots: vec![None; sig.params.len()],
        flags: vec![false; sig.flags.len()],
    };
    let mut next = 0;
    let mut ok = true;
    for a in args {
        if let (None, ExprKind::Name(n)) = (&a.name, &a.value.kind) {
            if let Some(i) = sig.flags.iter().position(|f| f == n) {
                b.flags[i] = true;
                continue;
            }
        }
        let slot = match &a.name {
            Some(n) => match sig.params.iter().position(|p| *p == n.name) {
                Some(i) => i,
                None => {
                    let all: Vec<&str> = sig.params.iter().chain(sig.flags).copied().collect();
                    let help = suggest(
                        &n.name,
                        all.iter().copied(),
                        if all.is_empty() {
                            format!("`{}` takes no arguments", func.name)
                        } else {
                            format!("`{}` takes: {}", func.name, all.join(", "))
                        },
                    );
                    ev.diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_ARGUMENT,
                            format!("`{}` has no argument `{}`", func.name, n.name),
                        )
                        .at(n.span, "unknown argument")
                        .help(help),
                    );
                    ok = false;
                    continue;
                }
            },
            None => {
                while next < b.slots.len() && b.slots[next].is_some() {
                    next += 1;
                }
                if next >= sig.params.len() {
                    ev.diags.push(
                        Diagnostic::error(
                            codes::ARITY,
                            format!(
                                "`{}` takes at most {} argument{}",
                                func.name,
                                sig.params.len(),
                                if sig.params.len() == 1 { "" } else { "s" }
                            ),
                        )
                        .at(a.span, "extra argument")
                        .also(func.span, "function called here")
                        .help("remove the extra argument"),
                    );
                    ok = false;
                    continue;
                }
                next
            }
        };
        if b.slots[slot].is_some() {
            ev.diags.push(
                Diagnostic::error(
                    codes::DUPLICATE_ARGUMENT,
                    format!("argument `{}` given twice", sig.params[slot]),
                )
                .at(a.span, "given again here")
                .help("give each argument once"),
            );
            ok = false;
            continue;
        }
        b.slots[slot] = Some(&a.value);
    }
    for (i, p) in sig.params.iter().enumerate().take(sig.required) {
        if b.slots[i].is_none() {
            ev.diags.push(
                Diagnostic::error(
                    codes::MISSING_ARGUMENT,
                    format!("`{}` needs argument `{p}`", func.name),
                )
                .at(func.span, format!("`{p}` missing"))
                .help(format!("pass it: `{}({p} = …)`", func.name)),
            );
            ok = false;
        }
    }
    ok.then_some(b)
}

fn arg(ev: &mut Eval<'_>, b: &Bound<'_>, i: usize) -> Option<(Value, Span)> {
    b.slots[i].map(|e| (ev.eval(e), e.span))
}

/// Evaluates an argument expected to be a known or generic int.
fn int_arg(ev: &mut Eval<'_>, b: &Bound<'_>, i: usize, what: &str) -> Option<(Value, Span)> {
    let (v, s) = arg(ev, b, i)?;
    if v == Value::Poison {
        return None;
    }
    if !v.is_int() {
        ev.type_err(&format!("an int for `{what}`"), &v, s);
        return None;
    }
    Some((v, s))
}

fn num_arg(ev: &mut Eval<'_>, b: &Bound<'_>, i: usize, what: &str) -> Option<(Value, Span)> {
    let (v, s) = arg(ev, b, i)?;
    if v == Value::Poison {
        return None;
    }
    if !v.is_num() {
        ev.type_err(&format!("a number for `{what}`"), &v, s);
        return None;
    }
    Some((v, s))
}

fn option_arg(
    ev: &mut Eval<'_>,
    b: &Bound<'_>,
    i: usize,
    what: &str,
    options: &[&str],
) -> Option<String> {
    let (v, s) = arg(ev, b, i)?;
    match v {
        Value::Str(x) if options.contains(&x.as_str()) => Some(x),
        Value::Str(x) => {
            let help = suggest(
                &x,
                options.iter().copied(),
                format!("one of: {}", options.join(", ")),
            );
            ev.diags.push(
                Diagnostic::error(codes::BAD_OPTION, format!("`{x}` is not a valid `{what}`"))
                    .at(s, format!("expected one of: {}", options.join(", ")))
                    .help(help),
            );
            None
        }
        Value::Poison => None,
        other => {
            ev.type_err(&format!("a string for `{what}`"), &other, s);
            None
        }
    }
}

/// Calls a built-in (or reports an unknown function).
pub fn call(ev: &mut Eval<'_>, func: &Ident, args: &[Arg], span: Span) -> Value {
    let name = func.name.as_str();
    if !is_builtin(name) {
        let cands = names();
        let help = suggest(
            name,
            cands.iter().copied(),
            "see docs/language.md for the list of built-in functions",
        );
        return ev.err(
            codes::UNKNOWN_FUNCTION,
            format!("unknown function `{name}`"),
            func.span,
            "not a built-in function",
            help,
        );
    }
    if INITS.contains(&name) || PAIR_INITS.contains(&name) {
        return ev.err(
            codes::TYPE_MISMATCH,
            format!("`{name}` is an initializer"),
            func.span,
            "only allowed after `param NAME[..] =`",
            format!("declare a parameter: `param P[..] = {name}(…)`"),
        );
    }
    if (name == "groups" || name == "alpha_hill") && ev.mode != Mode::Attach {
        return ev.err(
            codes::BAD_ALLOCATION,
            format!("`{name}` is a per-layer allocation rule"),
            func.span,
            "only allowed as an attach argument",
            format!("use it in `attach`: `attach MoLoRA(E = {name}(…)) to …`"),
        );
    }
    let sg = sig(name);
    let Some(b) = bind(ev, func, args, &sg) else {
        return Value::Poison;
    };
    match name {
        n if UNARY.contains(&n) => {
            let Some((v, s)) = arg(ev, &b, 0) else {
                return Value::Poison;
            };
            unary(ev, n, v, s)
        }
        "floor" | "ceil" | "round" | "int" => {
            let Some((v, _)) = num_arg(ev, &b, 0, "x") else {
                return Value::Poison;
            };
            match v.as_f64() {
                Some(x) => {
                    let r = match name {
                        "floor" => x.floor(),
                        "ceil" => x.ceil(),
                        "round" => x.round_ties_even(),
                        _ => x.trunc(),
                    };
                    Value::Int(r as i64)
                }
                None => Value::SomeInt,
            }
        }
        "float" => {
            let Some((v, _)) = num_arg(ev, &b, 0, "x") else {
                return Value::Poison;
            };
            v.as_f64().map(Value::Float).unwrap_or(Value::SomeFloat)
        }
        "pow" | "min" | "max" => {
            let (Some((a, sa)), Some((c, sc))) = (arg(ev, &b, 0), arg(ev, &b, 1)) else {
                return Value::Poison;
            };
            binary_fn(ev, name, (a, sa), (c, sc), span)
        }
        "softmax" => match tensor_arg(ev, &b, 0) {
            Some((t, _)) => {
                let experts = t.dims.last().cloned().unwrap_or(Dim::N(1));
                Value::Tensor(Tensor {
                    dims: t.dims,
                    gate: Some(Gate {
                        experts,
                        top_k: None,
                    }),
                })
            }
            None => Value::Poison,
        },
        "topk" => {
            let (Some((t, ts)), Some((k, ks))) = (tensor_arg(ev, &b, 0), int_arg(ev, &b, 1, "k"))
            else {
                return Value::Poison;
            };
            let experts = t.dims.last().cloned().unwrap_or(Dim::N(1));
            if let Value::Int(k) = k {
                if k < 1 {
                    return ev.err(
                        codes::BAD_VALUE,
                        format!("top-k needs k ≥ 1, found {k}"),
                        ks,
                        "k must be positive",
                        "use k = 1 or more",
                    );
                }
                if let Dim::N(e) = experts {
                    if k > e {
                        ev.diags.push(
                            Diagnostic::error(
                                codes::TOPK_TOO_LARGE,
                                format!("top-{k} of {e} experts"),
                            )
                            .at(ks, format!("k = {k}"))
                            .also(ts, format!("this has {e} experts in its last dimension"))
                            .help(format!(
                                "use k ≤ {e}, e.g. `k = min(2, E)` in attach arguments"
                            )),
                        );
                        return Value::Poison;
                    }
                }
            }
            if let Some((r, rs)) = arg(ev, &b, 2) {
                if !matches!(r, Value::Bool(_) | Value::Poison) {
                    ev.type_err("a bool for `renorm`", &r, rs);
                }
            }
            Value::Tensor(Tensor {
                dims: t.dims,
                gate: Some(Gate {
                    experts,
                    top_k: k.as_i64(),
                }),
            })
        }
        "stop_grad" => arg(ev, &b, 0).map(|(v, _)| v).unwrap_or(Value::Poison),
        "dropout" => {
            if let Some((p, ps)) = num_arg(ev, &b, 1, "p") {
                if let Some(p) = p.as_f64().filter(|p| !(0.0..1.0).contains(p)) {
                    ev.err(
                        codes::BAD_VALUE,
                        format!("dropout probability {p} is outside [0, 1)"),
                        ps,
                        "out of range",
                        "use a probability such as 0.05",
                    );
                }
            }
            match tensor_arg(ev, &b, 0) {
                Some((t, _)) => Value::Tensor(Tensor::of(t.dims)),
                None => Value::Poison,
            }
        }
        "row_norm" => match tensor_arg(ev, &b, 0) {
            Some((t, _)) if t.dims.len() == 2 => Value::Tensor(Tensor::of(vec![t.dims[0].clone()])),
            Some((t, s)) => ev.err(
                codes::TYPE_MISMATCH,
                format!("`row_norm` needs a matrix, found {}", t.shape()),
                s,
                "not 2-D",
                "pass a 2-D tensor such as the base weight",
            ),
            None => Value::Poison,
        },
        "mean" => match arg(ev, &b, 0) {
            Some((Value::Tensor(_), _)) => Value::Tensor(Tensor::of(vec![])),
            Some((v, s)) => ev.type_err("a tensor", &v, s),
            None => Value::Poison,
        },
        "sum" => sum(ev, func, &b),
        "gated_mix" => {
            if let Some((p, ps)) = num_arg(ev, &b, 2, "p") {
                if let Some(p) = p.as_f64().filter(|p| !(0.0..=1.0).contains(p)) {
                    ev.err(
                        codes::BAD_VALUE,
                        format!("gate exponent {p} is outside [0, 1]"),
                        ps,
                        "out of range",
                        "use p = 1 (standard), 0.5 (√g) or 0 (detached gate)",
                    );
                }
            }
            let (Some((g, gs)), Some((y, ys))) = (arg(ev, &b, 0), arg(ev, &b, 1)) else {
                return Value::Poison;
            };
            ev.binary(crate::syntax::ast::BinOp::Mul, span, (&g, gs), (&y, ys))
        }
        "balance" => {
            if b.slots[1].is_some() {
                option_arg(ev, &b, 1, "norm", BALANCE_NORMS);
            } else {
                ev.diags.push(
                    Diagnostic::error(codes::MISSING_ARGUMENT, "`balance` needs `norm`")
                        .at(func.span, "which normalisation?")
                        .help("name it: `balance(g, norm = \"goat\")` (or \"switch\", \"paper\"); methods differ by constant factors"),
                );
            }
            match arg(ev, &b, 0) {
                Some((Value::Tensor(t), _)) if t.gate.is_some() => Value::Tensor(Tensor::of(vec![])),
                Some((Value::Poison, _)) | None => Value::Poison,
                Some((v, s)) => ev.err(
                    codes::TYPE_MISMATCH,
                    format!("`balance` needs a router gate, found {}", v.describe()),
                    s,
                    "not a router gate",
                    "pass the gate itself: `let g = topk(softmax(x @ Wg^T), k, renorm)` then `balance(g, …)`",
                ),
            }
        }
        "groups" => groups(ev, &b),
        "alpha_hill" => alpha_hill(ev, &b),
        _ => Value::Poison,
    }
}

fn tensor_arg(ev: &mut Eval<'_>, b: &Bound<'_>, i: usize) -> Option<(Tensor, Span)> {
    match arg(ev, b, i)? {
        (Value::Tensor(t), s) => Some((t, s)),
        (Value::Poison, _) => None,
        (v, s) => {
            ev.type_err("a tensor", &v, s);
            None
        }
    }
}

fn unary(ev: &mut Eval<'_>, name: &str, v: Value, s: Span) -> Value {
    match v {
        Value::Tensor(t) => Value::Tensor(Tensor::of(t.dims)),
        Value::SomeInt | Value::SomeFloat => Value::SomeFloat,
        Value::Poison => Value::Poison,
        v if v.is_num() => {
            let x = v.as_f64().unwrap_or(0.0);
            let r = match name {
                "sqrt" => x.sqrt(),
                "exp" => x.exp(),
                "log" => x.ln(),
                "log10" => x.log10(),
                "abs" => x.abs(),
                "relu" => x.max(0.0),
                "gelu" => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
                "silu" => x / (1.0 + (-x).exp()),
                "sigmoid" => 1.0 / (1.0 + (-x).exp()),
                _ => x.tanh(),
            };
            if r.is_finite() {
                Value::Float(r)
            } else {
                ev.err(
                    codes::BAD_VALUE,
                    format!("`{name}({x})` is not a finite number"),
                    s,
                    "outside the function's domain",
                    "check the argument's value",
                )
            }
        }
        other => ev.type_err("a number or tensor", &other, s),
    }
}

/// Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): enough for constant folding.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

fn binary_fn(
    ev: &mut Eval<'_>,
    name: &str,
    (a, sa): (Value, Span),
    (c, sc): (Value, Span),
    span: Span,
) -> Value {
    if matches!(a, Value::Tensor(_)) || matches!(c, Value::Tensor(_)) {
        return ev.binary(crate::syntax::ast::BinOp::Mul, span, (&a, sa), (&c, sc));
    }
    if name == "pow" {
        return ev.binary(crate::syntax::ast::BinOp::Pow, span, (&a, sa), (&c, sc));
    }
    for (v, s) in [(&a, sa), (&c, sc)] {
        if !v.is_num() {
            return ev.type_err("a number", v, s);
        }
    }
    match (&a, &c) {
        (Value::Int(x), Value::Int(y)) => {
            Value::Int(if name == "min" { *x.min(y) } else { *x.max(y) })
        }
        _ => match (a.as_f64(), c.as_f64()) {
            (Some(x), Some(y)) => Value::Float(if name == "min" { x.min(y) } else { x.max(y) }),
            _ if a.is_int() && c.is_int() => Value::SomeInt,
            _ => Value::SomeFloat,
        },
    }
}

fn sum(ev: &mut Eval<'_>, func: &Ident, b: &Bound<'_>) -> Value {
    let over = b.slots[0].expect("required");
    let Some(body) = b.slots[1] else {
        return match ev.eval(over) {
            Value::Tensor(_) => Value::Tensor(Tensor::of(vec![])),
            Value::Poison => Value::Poison,
            v => ev.type_err("a tensor", &v, over.span),
        };
    };
    let ExprKind::Name(var) = &over.kind else {
        return ev.err(
            codes::BAD_EXPERT_INDEX,
            "`sum` over experts needs an expert variable first",
            over.span,
            "not a variable",
            "write `sum(e, …)` with the variable of an `experts e in …` block",
        );
    };
    let Some(count) = ev.expert_blocks.get(var).cloned() else {
        let blocks: Vec<String> = ev.expert_blocks.keys().cloned().collect();
        let help = match blocks.first() {
            Some(e) => format!("use the variable of an experts block: `sum({e}, …)`"),
            None => "declare the experts first: `experts e in 0..E { param A[e][r, n] = … }`"
                .to_string(),
        };
        let _ = func;
        return ev.err(
            codes::BAD_EXPERT_INDEX,
            format!("`{var}` is not an experts variable"),
            over.span,
            "no experts block binds this",
            help,
        );
    };
    ev.push();
    ev.bind(
        var,
        Value::ExpertVar {
            name: var.clone(),
            count,
        },
        Some(over.span),
        BindKind::ExpertVar,
        false,
    );
    let v = ev.eval(body);
    ev.pop();
    match v {
        Value::Tensor(t) => Value::Tensor(Tensor::of(t.dims)),
        other if other.is_num() => other,
        Value::Poison => Value::Poison,
        other => ev.type_err("a tensor", &other, body.span),
    }
}

fn groups(ev: &mut Eval<'_>, b: &Bound<'_>) -> Value {
    let mut vals = Vec::new();
    for i in 0..b.slots.len() {
        if b.slots[i].is_none() {
            continue;
        }
        match int_arg(ev, b, i, "group") {
            Some((Value::Int(v), s)) if v < 1 => {
                return ev.err(
                    codes::BAD_ALLOCATION,
                    format!("a group needs at least 1 expert, found {v}"),
                    s,
                    "not positive",
                    "use positive expert counts, e.g. `groups(2, 4, 6, 8)`",
                );
            }
            Some((Value::Int(v), _)) => vals.push(v),
            _ => return Value::Poison,
        }
    }
    Value::Alloc(Alloc::Groups(vals))
}

fn alpha_hill(ev: &mut Eval<'_>, b: &Bound<'_>) -> Value {
    let budget = int_arg(ev, b, 0, "budget");
    let beta = if b.slots[1].is_some() {
        num_arg(ev, b, 1, "beta")
    } else {
        Some((Value::Float(2.5), Span::default()))
    };
    let mode = if b.slots[2].is_some() {
        option_arg(ev, b, 2, "mode", ALPHA_MODES)
    } else {
        Some("exact".into())
    };
    let min = if b.slots[3].is_some() {
        int_arg(ev, b, 3, "min_experts")
    } else {
        Some((Value::Int(1), Span::default()))
    };
    let (
        Some((Value::Int(budget), bs)),
        Some((beta, betas)),
        Some(mode),
        Some((Value::Int(min), ms)),
    ) = (budget, beta, mode, min)
    else {
        return Value::Poison;
    };
    let beta = beta.as_f64().unwrap_or(2.5);
    if beta <= 0.0 {
        return ev.err(
            codes::BAD_ALLOCATION,
            format!("beta must be positive, found {beta}"),
            betas,
            "not positive",
            "AlphaLoRA uses beta = 2.5",
        );
    }
    // 0 reproduces the released AlphaLoRA code exactly (a layer may get no experts).
    if min < 0 {
        return ev.err(
            codes::BAD_ALLOCATION,
            format!("min_experts cannot be negative, found {min}"),
            ms,
            "negative",
            "use min_experts = 1 (every layer gets an expert) or 0 (the released code's behaviour)",
        );
    }
    if budget < 1 {
        return ev.err(
            codes::BAD_ALLOCATION,
            format!("budget must be positive, found {budget}"),
            bs,
            "not positive",
            "give the total number of experts over all layers",
        );
    }
    Value::Alloc(Alloc::AlphaHill {
        budget,
        beta,
        mode,
        min_experts: min,
    })
}
