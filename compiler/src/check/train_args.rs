//! Argument helpers of the `train` block: named arguments, typed values, choices.

use super::eval::Eval;
use super::value::Value;
use crate::diag::{codes, suggest, Diagnostic, Span};
use crate::syntax::ast::{Arg, Expr, ExprKind, TrainEntry};
use std::collections::HashMap;

pub(super) type Kw = HashMap<String, (Value, Span)>;

pub(super) fn kwargs(
    ev: &mut Eval<'_>,
    what: &str,
    at: Span,
    args: &[Arg],
    allowed: &[&str],
) -> Kw {
    let mut out = Kw::new();
    for (i, a) in args.iter().enumerate() {
        let key = match &a.name {
            Some(n) if allowed.contains(&n.name.as_str()) => n.name.clone(),
            Some(n) => {
                let help = suggest(
                    &n.name,
                    allowed.iter().copied(),
                    format!("`{what}` takes: {}", allowed.join(", ")),
                );
                ev.diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_ARGUMENT,
                        format!("`{what}` has no argument `{}`", n.name),
                    )
                    .at(n.span, "unknown argument")
                    .help(help),
                );
                continue;
            }
            None if i < allowed.len() && i == 0 => allowed[0].to_string(),
            None => {
                ev.diags.push(
                    Diagnostic::error(codes::ARITY, format!("`{what}` takes named arguments"))
                        .at(a.span, "positional argument")
                        .also(at, "here")
                        .help(format!("name it: one of {}", allowed.join(", "))),
                );
                continue;
            }
        };
        if out.contains_key(&key) {
            ev.diags.push(
                Diagnostic::error(
                    codes::DUPLICATE_ARGUMENT,
                    format!("argument `{key}` given twice"),
                )
                .at(a.span, "given again here")
                .help("give each argument once"),
            );
            continue;
        }
        let v = ev.eval(&a.value);
        out.insert(key, (v, a.value.span));
    }
    out
}

pub(super) fn num(ev: &mut Eval<'_>, kw: &Kw, key: &str, default: f64, positive: bool) -> f64 {
    match kw.get(key) {
        None => default,
        Some((v, s)) => match v.as_f64() {
            Some(x) if positive && x <= 0.0 => {
                ev.err(
                    codes::BAD_VALUE,
                    format!("`{key}` must be positive, found {x}"),
                    *s,
                    "not positive",
                    format!("use a positive `{key}`"),
                );
                default
            }
            Some(x) if x < 0.0 => {
                ev.err(
                    codes::BAD_VALUE,
                    format!("`{key}` cannot be negative, found {x}"),
                    *s,
                    "negative",
                    format!("use `{key}` ≥ 0"),
                );
                default
            }
            Some(x) => x,
            None => {
                ev.type_err(&format!("a number for `{key}`"), v, *s);
                default
            }
        },
    }
}

pub(super) fn string(ev: &mut Eval<'_>, kw: &Kw, key: &str, default: &str) -> String {
    match kw.get(key) {
        None => default.to_string(),
        Some((Value::Str(s), _)) => s.clone(),
        Some((v, s)) => {
            ev.type_err(&format!("a string for `{key}`"), v, *s);
            default.to_string()
        }
    }
}

pub(super) fn boolean(ev: &mut Eval<'_>, kw: &Kw, key: &str, default: bool) -> bool {
    match kw.get(key) {
        None => default,
        Some((Value::Bool(b), _)) => *b,
        Some((v, s)) => {
            ev.type_err(&format!("a bool for `{key}`"), v, *s);
            default
        }
    }
}

/// `name(args)` or a bare `name` as a choice among `options`.
pub(super) fn choice<'e>(
    ev: &mut Eval<'_>,
    e: &'e Expr,
    what: &str,
    options: &[&str],
) -> Option<(String, Span, &'e [Arg])> {
    let (name, span, args): (&str, Span, &[Arg]) = match &e.kind {
        ExprKind::Name(n) => (n, e.span, &[]),
        ExprKind::Call { func, args } => (&func.name, func.span, args),
        _ => {
            ev.diags.push(
                Diagnostic::error(codes::TYPE_MISMATCH, format!("expected a {what}"))
                    .at(
                        e.span,
                        format!(
                            "not {} {what}",
                            if what.starts_with(|c: char| "aeiou".contains(c)) {
                                "an"
                            } else {
                                "a"
                            }
                        ),
                    )
                    .help(format!("write one of: {}", options.join(", "))),
            );
            return None;
        }
    };
    if !options.contains(&name) {
        let help = suggest(
            name,
            options.iter().copied(),
            format!("one of: {}", options.join(", ")),
        );
        ev.diags.push(
            Diagnostic::error(codes::UNKNOWN_CHOICE, format!("unknown {what} `{name}`"))
                .at(
                    span,
                    format!(
                        "not {} {what}",
                        if what.starts_with(|c: char| "aeiou".contains(c)) {
                            "an"
                        } else {
                            "a"
                        }
                    ),
                )
                .help(help),
        );
        return None;
    }
    Some((name.to_string(), span, args))
}

/// Reports a setting written without its value (`task` alone).
pub(super) fn needs_value(ev: &mut Eval<'_>, e: &TrainEntry) {
    let example = match e.key.name.as_str() {
        "task" => "task classification(labels = 2)",
        "schedule" => "schedule cosine(warmup = 0.03)",
        _ => "clip 1.0",
    };
    ev.diags.push(
        Diagnostic::error(
            codes::MISSING_SETTING,
            format!("`{}` needs a value", e.key.name),
        )
        .at(e.key.span, "no value on this line")
        .help(format!("write it on the same line: `{example}`")),
    );
}

pub(super) fn int_value(ev: &mut Eval<'_>, e: &TrainEntry, min: i64) -> Option<u64> {
    let Some(v) = &e.value else {
        ev.diags.push(
            Diagnostic::error(codes::SYNTAX, format!("`{}` needs a value", e.key.name))
                .at(e.key.span, "no value")
                .help(format!("write `{} N`", e.key.name)),
        );
        return None;
    };
    match ev.eval(v) {
        Value::Int(i) if i >= min => Some(i as u64),
        Value::Int(i) => {
            ev.err(
                codes::BAD_VALUE,
                format!("`{}` must be at least {min}, found {i}", e.key.name),
                v.span,
                "too small",
                format!("use `{} {}` or more", e.key.name, min.max(1)),
            );
            None
        }
        Value::Poison => None,
        other => {
            ev.type_err(&format!("an int for `{}`", e.key.name), &other, v.span);
            None
        }
    }
}
