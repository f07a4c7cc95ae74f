//! Built-ins folded at compile time: elementwise functions of constants, `sum`/`mean`,
//! `groups` and AlphaLoRA's `alpha_hill` allocation.

use super::builtins::{int_arg, num_arg, option_arg, Bound, ALPHA_MODES};
use super::eval::{BindKind, Eval};
use super::value::{Alloc, Tensor, Value};
use crate::diag::{codes, Span};
use crate::syntax::ast::{ExprKind, Ident};

pub(super) fn unary(ev: &mut Eval<'_>, name: &str, v: Value, s: Span) -> Value {
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

pub(super) fn binary_fn(
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

pub(super) fn sum(ev: &mut Eval<'_>, func: &Ident, b: &Bound<'_>) -> Value {
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

pub(super) fn groups(ev: &mut Eval<'_>, b: &Bound<'_>) -> Value {
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

pub(super) fn alpha_hill(ev: &mut Eval<'_>, b: &Bound<'_>) -> Value {
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
