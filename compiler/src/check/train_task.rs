//! The `task` setting of a train block: classification (labels, pooling), regression, and
//! causal LM (prompt/completion fields, prompt masking, ignore index).

use super::eval::Eval;
use super::train_args::{boolean, choice, kwargs, string};
use super::train_config::Task;
use super::value::Value;
use crate::diag::{codes, suggest, Diagnostic};
use crate::syntax::ast::Expr;

/// What a classification head may read.
const POOLINGS: &[&str] = &["pooler", "cls", "mean", "last"];

/// Checks `task …`'s value; `None` after reporting an error.
pub(super) fn check(ev: &mut Eval<'_>, v: &Expr) -> Option<Task> {
    let (name, span, args) = choice(
        ev,
        v,
        "task",
        &["classification", "regression", "causal_lm"],
    )?;
    Some(match name.as_str() {
        "classification" => {
            let kw = kwargs(ev, "classification", span, args, &["labels", "pooling"]);
            let pooling = string(ev, &kw, "pooling", "default");
            if pooling != "default" && !POOLINGS.contains(&pooling.as_str()) {
                let s = kw.get("pooling").map(|x| x.1).unwrap_or(span);
                let help = suggest(
                    &pooling,
                    POOLINGS.iter().copied(),
                    format!("one of: {}", POOLINGS.join(", ")),
                );
                ev.diags.push(
                    Diagnostic::error(
                        codes::BAD_OPTION,
                        format!("`{pooling}` is not a valid `pooling`"),
                    )
                    .at(s, "unknown pooling")
                    .help(help),
                );
            }
            match kw.get("labels") {
                Some((Value::Int(n), _)) if *n >= 2 => Task::Classification {
                    labels: *n as usize,
                    pooling,
                },
                Some((v, s)) => {
                    ev.err(
                        codes::BAD_VALUE,
                        format!("classification needs at least 2 labels, found {v}"),
                        *s,
                        "too few labels",
                        "use `labels = 2` or more",
                    );
                    return None;
                }
                None => {
                    ev.diags.push(
                        Diagnostic::error(
                            codes::MISSING_ARGUMENT,
                            "`classification` needs `labels`",
                        )
                        .at(span, "how many classes?")
                        .help("write `task classification(labels = 2)`"),
                    );
                    return None;
                }
            }
        }
        "regression" => Task::Regression,
        _ => {
            let kw = kwargs(
                ev,
                "causal_lm",
                span,
                args,
                &["prompt", "completion", "train_on_inputs", "ignore_index"],
            );
            // A non-negative ignore index could be a real token id, whose loss
            // would then silently vanish.
            let ignore_index = match kw.get("ignore_index") {
                Some((v, s)) => match v.as_i64() {
                    Some(i) if i < 0 => i,
                    _ => {
                        ev.err(
                            codes::BAD_VALUE,
                            format!("`ignore_index` must be a negative integer, found {v}"),
                            *s,
                            "a token id could have this value",
                            "use `ignore_index = -100`",
                        );
                        -100
                    }
                },
                None => -100,
            };
            Task::CausalLm {
                prompt: string(ev, &kw, "prompt", "prompt"),
                completion: string(ev, &kw, "completion", "completion"),
                train_on_inputs: boolean(ev, &kw, "train_on_inputs", false),
                ignore_index,
            }
        }
    })
}
