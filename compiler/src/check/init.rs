//! Parameter initializers in adapter bodies: single-tensor initializers, SVD pair
//! initializers (PiSSA, MiLoRA, GOAT segments) and tensor expressions of the base weight.

use super::adapter::{same_shape, State};
use super::builtins::{self, INITS, PAIR_INITS, SEGMENT_SELECTORS};
use super::eval::Eval;
use super::value::{shape_str, Dim, Value};
use crate::diag::{codes, Diagnostic};
use crate::syntax::ast::{Arg, Expr, ExprKind, ParamTarget};

fn init_name(e: &Expr) -> Option<(&crate::syntax::ast::Ident, &[Arg])> {
    match &e.kind {
        ExprKind::Call { func, args } => Some((func, args)),
        _ => None,
    }
}

/// Checks a `param` statement's initializer against the declared targets.
pub(super) fn check_init(
    ev: &mut Eval<'_>,
    st: &State,
    shapes: &[(&ParamTarget, Option<Vec<Dim>>)],
    e: &Expr,
    block: Option<(&str, &Dim)>,
) {
    let bare = match &e.kind {
        ExprKind::Name(n) if INITS.contains(&n.as_str()) => Some(n.clone()),
        _ => None,
    };
    let call = init_name(e)
        .filter(|(f, _)| INITS.contains(&f.name.as_str()) || PAIR_INITS.contains(&f.name.as_str()));
    if bare.is_some()
        || call
            .map(|(f, _)| INITS.contains(&f.name.as_str()))
            .unwrap_or(false)
    {
        if shapes.len() != 1 {
            let name = bare
                .clone()
                .unwrap_or_else(|| call.map(|(f, _)| f.name.clone()).unwrap_or_default());
            ev.diags.push(
                Diagnostic::error(codes::INIT_ARITY, format!("`{name}` initializes one tensor, {} are declared", shapes.len()))
                    .at(e.span, "yields one tensor")
                    .help("give each tensor its own `param` line, or use a pair initializer such as `svd_principal`"),
            );
        }
        if let Some((f, args)) = call {
            single_init_args(ev, &f.name, f, args);
        }
        return;
    }
    if let Some((f, args)) = call {
        // Pair initializer.
        if shapes.len() != 2 {
            ev.diags.push(
                Diagnostic::error(
                    codes::INIT_ARITY,
                    format!(
                        "`{}` initializes two tensors (A, B), {} declared",
                        f.name,
                        shapes.len()
                    ),
                )
                .at(e.span, "yields A [rank, n] and B [m, rank]")
                .help(format!(
                    "declare both: `param A[rank, n], B[m, rank] = {}(…)`",
                    f.name
                )),
            );
            return;
        }
        if let Some((a, b)) = pair_init(ev, st, &f.name, f, args, block) {
            for ((t, dims), want) in shapes.iter().zip([a, b]) {
                if let Some(d) = dims {
                    if !same_shape(d, &want) {
                        ev.diags.push(
                            Diagnostic::error(
                                codes::INIT_SHAPE,
                                format!(
                                    "`{}` is declared {} but `{}` yields {}",
                                    t.name.name,
                                    shape_str(d),
                                    f.name,
                                    shape_str(&want)
                                ),
                            )
                            .at(t.span, format!("declared {}", shape_str(d)))
                            .also(e.span, format!("yields {}", shape_str(&want)))
                            .help(format!(
                                "declare `{}` as {}",
                                t.name.name,
                                shape_str(&want)
                            )),
                        );
                    }
                }
            }
        }
        return;
    }
    // Any tensor expression with the declared shape.
    if shapes.len() != 1 {
        ev.diags.push(
            Diagnostic::error(
                codes::INIT_ARITY,
                format!(
                    "an expression initializes one tensor, {} are declared",
                    shapes.len()
                ),
            )
            .at(e.span, "yields one tensor")
            .help("give each tensor its own `param` line"),
        );
        return;
    }
    ev.in_init = true;
    let v = ev.eval(e);
    ev.in_init = false;
    let (t, dims) = &shapes[0];
    let Some(d) = dims else { return };
    let found = match &v {
        Value::Tensor(x) if same_shape(&x.dims, d) => return,
        Value::Poison => return,
        v if v.is_num() => return,
        Value::Tensor(x) => x.shape(),
        other => other.describe(),
    };
    ev.diags.push(
        Diagnostic::error(
            codes::INIT_SHAPE,
            format!(
                "`{}` is declared {} but its initializer is {found}",
                t.name.name,
                shape_str(d)
            ),
        )
        .at(e.span, format!("this is {found}"))
        .also(t.span, format!("declared {}", shape_str(d)))
        .help(format!(
            "make the initializer {} or change the declaration",
            shape_str(d)
        )),
    );
}

fn single_init_args(ev: &mut Eval<'_>, name: &str, f: &crate::syntax::ast::Ident, args: &[Arg]) {
    let allowed: &[&str] = match name {
        "kaiming_uniform" => &["a"],
        "normal" => &["std", "mean"],
        "uniform" => &["lo", "hi"],
        "constant" => &["value"],
        _ => &[],
    };
    for (i, a) in args.iter().enumerate() {
        let pname = match &a.name {
            Some(n) => {
                if !allowed.contains(&n.name.as_str()) {
                    let help = crate::diag::suggest(
                        &n.name,
                        allowed.iter().copied(),
                        format!(
                            "`{name}` takes: {}",
                            if allowed.is_empty() {
                                "nothing".into()
                            } else {
                                allowed.join(", ")
                            }
                        ),
                    );
                    ev.diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_ARGUMENT,
                            format!("`{name}` has no argument `{}`", n.name),
                        )
                        .at(n.span, "unknown argument")
                        .help(help),
                    );
                    continue;
                }
                n.name.clone()
            }
            None => match allowed.get(i) {
                Some(p) => p.to_string(),
                None => {
                    ev.diags.push(
                        Diagnostic::error(
                            codes::ARITY,
                            format!("`{name}` takes at most {} argument(s)", allowed.len()),
                        )
                        .at(a.span, "extra argument")
                        .also(f.span, "initializer")
                        .help("remove the extra argument"),
                    );
                    continue;
                }
            },
        };
        let v = ev.eval(&a.value);
        if !v.is_num() && v != Value::Poison {
            ev.type_err(&format!("a number for `{pname}`"), &v, a.value.span);
        } else if pname == "std" && v.as_f64().is_some_and(|s| s < 0.0) {
            ev.err(
                codes::BAD_VALUE,
                "a standard deviation cannot be negative",
                a.value.span,
                "negative",
                "use std ≥ 0, e.g. 0.02",
            );
        }
    }
}

/// Shapes of (A, B) for a pair initializer, after checking its arguments.
fn pair_init(
    ev: &mut Eval<'_>,
    st: &State,
    name: &str,
    f: &crate::syntax::ast::Ident,
    args: &[Arg],
    block: Option<(&str, &Dim)>,
) -> Option<(Vec<Dim>, Vec<Dim>)> {
    let params: &[&str] = if name == "svd_segment" {
        &["w", "e", "of", "rank", "shrink", "select"]
    } else {
        &["w", "rank"]
    };
    let mut slots: Vec<Option<&Arg>> = vec![None; params.len()];
    let mut next = 0;
    for a in args {
        let i = match &a.name {
            Some(n) => match params.iter().position(|p| *p == n.name) {
                Some(i) => i,
                None => {
                    let help = crate::diag::suggest(
                        &n.name,
                        params.iter().copied(),
                        format!("`{name}` takes: {}", params.join(", ")),
                    );
                    ev.diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_ARGUMENT,
                            format!("`{name}` has no argument `{}`", n.name),
                        )
                        .at(n.span, "unknown argument")
                        .help(help),
                    );
                    return None;
                }
            },
            None => {
                while next < slots.len() && slots[next].is_some() {
                    next += 1;
                }
                next
            }
        };
        if i >= slots.len() {
            ev.diags.push(
                Diagnostic::error(
                    codes::ARITY,
                    format!("`{name}` takes at most {} arguments", params.len()),
                )
                .at(a.span, "extra argument")
                .help("remove the extra argument"),
            );
            return None;
        }
        if slots[i].is_some() {
            ev.diags.push(
                Diagnostic::error(
                    codes::DUPLICATE_ARGUMENT,
                    format!("argument `{}` given twice", params[i]),
                )
                .at(a.span, "given again here")
                .help("give each argument once"),
            );
            return None;
        }
        slots[i] = Some(a);
    }
    let required = if name == "svd_segment" { 4 } else { 2 };
    for (i, p) in params.iter().enumerate().take(required) {
        if slots[i].is_none() {
            ev.diags.push(
                Diagnostic::error(
                    codes::MISSING_ARGUMENT,
                    format!("`{name}` needs argument `{p}`"),
                )
                .at(f.span, format!("`{p}` missing"))
                .help(format!("pass it: `{name}({p} = …)`")),
            );
            return None;
        }
    }
    let w = slots[0]?;
    ev.in_init = true;
    let wv = ev.eval(&w.value);
    ev.in_init = false;
    // Any [m, n] matrix computed from the base weight at init time may be decomposed
    // (e.g. `W0 / (s * rho)`); its factors must fit the base linear.
    let want = [st.m.clone(), st.n.clone()];
    match &wv {
        Value::Tensor(t) if same_shape(&t.dims, &want) => {}
        Value::Poison => return None,
        other => {
            let found = match other {
                Value::Tensor(t) => t.shape(),
                o => o.describe(),
            };
            ev.err(
                codes::TYPE_MISMATCH,
                format!(
                    "`{name}` decomposes an [m, n] matrix such as the base weight, found {found}"
                ),
                w.value.span,
                format!("this is {found}"),
                format!(
                    "pass `{}` or an expression of it with its shape",
                    st.base_name
                ),
            );
            return None;
        }
    }
    let rank_arg = slots[if name == "svd_segment" { 3 } else { 1 }]?;
    let rank = ev.eval(&rank_arg.value);
    let h = match (&st.m, &st.n) {
        (Dim::N(m), Dim::N(n)) => Some(*m.min(n)),
        _ => None,
    };
    let mut of_val = None;
    if name == "svd_segment" {
        match block {
            None => {
                ev.err(codes::BAD_EXPERT_INDEX, "`svd_segment` gives each expert its own segment", f.span, "outside an experts block", "use it inside `experts e in 0..E { param A[e][d, n], B[e][m, d] = svd_segment(W0, e, of = E, rank = d) }`");
                return None;
            }
            Some((var, _)) => {
                let e = slots[1]?;
                if !matches!(&e.value.kind, ExprKind::Name(n) if n == var) {
                    ev.err(
                        codes::BAD_EXPERT_INDEX,
                        format!("the segment index must be the expert variable `{var}`"),
                        e.value.span,
                        "not the expert variable",
                        format!("pass `{var}`"),
                    );
                }
            }
        }
        let of = ev.eval(&slots[2]?.value);
        match of {
            Value::Int(k) if k < 1 => {
                ev.err(
                    codes::BAD_VALUE,
                    format!("`of` must be positive, found {k}"),
                    slots[2]?.value.span,
                    "not positive",
                    "pass the number of experts",
                );
                return None;
            }
            Value::Int(k) => of_val = Some(k),
            Value::SomeInt => {}
            Value::Poison => return None,
            other => {
                ev.type_err("an int for `of`", &other, slots[2]?.value.span);
                return None;
            }
        }
        if let Some(a) = slots[4] {
            let v = ev.eval(&a.value);
            if !v.is_num() && v != Value::Poison {
                ev.type_err("a number for `shrink`", &v, a.value.span);
            } else if v.as_f64().is_some_and(|s| s <= 0.0) {
                ev.err(
                    codes::BAD_VALUE,
                    "`shrink` must be positive",
                    a.value.span,
                    "not positive",
                    "GOAT uses shrink = s * rho",
                );
            }
        }
        if let Some(a) = slots[5] {
            match ev.eval(&a.value) {
                Value::Str(s) if SEGMENT_SELECTORS.contains(&s.as_str()) => {}
                Value::Str(s) => {
                    let help = crate::diag::suggest(
                        &s,
                        SEGMENT_SELECTORS.iter().copied(),
                        format!("one of: {}", SEGMENT_SELECTORS.join(", ")),
                    );
                    ev.diags.push(
                        Diagnostic::error(
                            codes::BAD_OPTION,
                            format!("`{s}` is not a valid `select`"),
                        )
                        .at(a.value.span, "unknown selector")
                        .help(help),
                    );
                }
                Value::SomeInt | Value::Poison => {}
                other => {
                    ev.type_err("a string for `select`", &other, a.value.span);
                }
            }
        }
    }
    let rd = match &rank {
        Value::Int(r) if *r < 1 => {
            ev.err(
                codes::NON_POSITIVE_DIM,
                format!("rank must be at least 1, found {r}"),
                rank_arg.value.span,
                "not positive",
                "use rank ≥ 1",
            );
            return None;
        }
        Value::Int(r) => {
            if let Some(h) = h {
                if *r > h {
                    ev.diags.push(
                        Diagnostic::error(
                            codes::RANK_TOO_LARGE,
                            format!("rank {r} exceeds min(m, n) = {h} of the base weight"),
                        )
                        .at(rank_arg.value.span, format!("rank {r}"))
                        .also(w.value.span, format!("this weight is [{}, {}]", st.m, st.n))
                        .help(format!(
                            "use rank ≤ {h}, or attach the adapter to larger modules only"
                        )),
                    );
                    return None;
                }
                if let Some(of) = of_val {
                    let seg = h / of;
                    if *r > seg {
                        ev.diags.push(
                            Diagnostic::error(codes::SEGMENT_TOO_SHORT, format!("expert rank {r} does not fit a spectrum segment of {seg} ({h} singular values / {of} experts)"))
                                .at(rank_arg.value.span, format!("rank {r}"))
                                .also(slots[2]?.value.span, format!("{of} segments"))
                                .help(format!("use rank ≤ {seg}, or fewer experts")),
                        );
                        return None;
                    }
                }
            }
            Dim::N(*r)
        }
        Value::SomeInt => Dim::Sym("?".into()),
        Value::Poison => return None,
        other => {
            ev.type_err("an int rank", other, rank_arg.value.span);
            return None;
        }
    };
    let _ = builtins::names;
    Some((vec![rd.clone(), st.n.clone()], vec![st.m.clone(), rd]))
}
