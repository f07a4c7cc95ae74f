//! Built-in functions: argument binding, shape rules and constant folding.

use super::eval::{Eval, Mode};
use super::fold::{alpha_hill, binary_fn, groups, sum, unary};
use super::value::{Dim, Gate, Tensor, Value};
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
pub(super) struct Bound<'e> {
    /// Each parameter's argument, if given.
    pub(super) slots: Vec<Option<&'e Expr>>,
    /// Which of the signature's flags were given.
    pub(super) flags: Vec<bool>,
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
pub(super) fn int_arg(
    ev: &mut Eval<'_>,
    b: &Bound<'_>,
    i: usize,
    what: &str,
) -> Option<(Value, Span)> {
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

pub(super) fn num_arg(
    ev: &mut Eval<'_>,
    b: &Bound<'_>,
    i: usize,
    what: &str,
) -> Option<(Value, Span)> {
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

pub(super) fn option_arg(
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
