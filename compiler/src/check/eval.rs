//! The compile-time evaluator: resolves names, computes scalars, infers tensor shapes.

use super::builtins;
use super::value::{Dim, Tensor, Value};
use crate::diag::{codes, suggest, Code, Diagnostic, Diagnostics, Span};
use crate::syntax::ast::{Expr, ExprKind};
use std::collections::HashMap;

/// What a binding is, for messages and unused-binding warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindKind {
    /// Adapter parameter.
    Param,
    /// `let`.
    Let,
    /// Built-in name (`x`, `m`, `layer`, the base weight).
    Builtin,
    /// Trainable tensor.
    Tensor,
    /// Expert index variable.
    ExpertVar,
}

/// A name in scope.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Its value.
    pub value: Value,
    /// Where it was declared.
    pub span: Option<Span>,
    /// What it is.
    pub kind: BindKind,
    /// Whether any expression read it.
    pub used: bool,
}

/// Where an expression is evaluated; decides which names and values are legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An adapter body (tensors allowed).
    Adapter,
    /// Constants only (defaults, model arguments).
    Const,
    /// Attach arguments (allocation rules, `layer`).
    Attach,
    /// Train settings (bare names are symbols).
    Train,
}

/// The evaluator state.
pub struct Eval<'d> {
    /// Diagnostics sink.
    pub diags: &'d mut Diagnostics,
    /// Scopes, innermost last.
    pub scopes: Vec<Vec<(String, Binding)>>,
    /// Evaluation mode.
    pub mode: Mode,
    /// Experts blocks of the adapter: variable → number of experts.
    pub expert_blocks: HashMap<String, Dim>,
    /// Set while evaluating an `init` rewrite (the input `x` is not available).
    pub in_init: bool,
    /// Whether unused-binding warnings are reported.
    pub warn_unused: bool,
}

impl<'d> Eval<'d> {
    /// A fresh evaluator with one empty scope.
    pub fn new(diags: &'d mut Diagnostics, mode: Mode) -> Eval<'d> {
        Eval {
            diags,
            scopes: vec![Vec::new()],
            mode,
            expert_blocks: HashMap::new(),
            in_init: false,
            warn_unused: false,
        }
    }

    /// Reports an error and returns the poison value.
    pub fn err(
        &mut self,
        code: Code,
        msg: impl Into<String>,
        span: Span,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Value {
        self.diags
            .push(Diagnostic::error(code, msg).at(span, label).help(help));
        Value::Poison
    }

    /// Pushes a scope.
    pub fn push(&mut self) {
        self.scopes.push(Vec::new());
    }

    /// Pops a scope, warning about unused `let`s.
    pub fn pop(&mut self) {
        if let Some(scope) = self.scopes.pop() {
            self.warn_unused_in(&scope);
        }
    }

    /// Warns about unused lets and parameters among these bindings.
    pub fn warn_unused_in(&mut self, scope: &[(String, Binding)]) {
        if !self.warn_unused {
            return;
        }
        for (name, b) in scope {
            if b.used || name.starts_with('_') {
                continue;
            }
            let Some(span) = b.span else { continue };
            let d = match b.kind {
                BindKind::Let => {
                    Diagnostic::warning(codes::UNUSED_LET, format!("`{name}` is never used"))
                        .at(span, "bound here")
                        .help(format!(
                            "remove the binding, or rename it `_{name}` to keep it"
                        ))
                }
                BindKind::Param => Diagnostic::warning(
                    codes::UNUSED_PARAMETER,
                    format!("adapter parameter `{name}` is never used"),
                )
                .at(span, "declared here")
                .help(format!("remove the parameter, or rename it `_{name}`")),
                _ => continue,
            };
            self.diags.push(d);
        }
    }

    /// Binds a name in the innermost scope (or the outermost with `outer`).
    pub fn bind(
        &mut self,
        name: &str,
        value: Value,
        span: Option<Span>,
        kind: BindKind,
        outer: bool,
    ) {
        let used = matches!(
            kind,
            BindKind::Builtin | BindKind::ExpertVar | BindKind::Tensor
        );
        let b = Binding {
            value,
            span,
            kind,
            used,
        };
        let scope = if outer {
            self.scopes.first_mut()
        } else {
            self.scopes.last_mut()
        };
        if let Some(s) = scope {
            s.push((name.to_string(), b));
        }
    }

    /// Finds a binding, innermost first.
    pub fn lookup(&mut self, name: &str) -> Option<&mut Binding> {
        self.scopes
            .iter_mut()
            .rev()
            .flat_map(|s| s.iter_mut().rev())
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
    }

    /// All names in scope (for "did you mean").
    pub fn names(&self) -> Vec<String> {
        self.scopes
            .iter()
            .flat_map(|s| s.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// Evaluates an expression.
    pub fn eval(&mut self, e: &Expr) -> Value {
        match &e.kind {
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::Float(f) => Value::Float(*f),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Call { func, args } => builtins::call(self, func, args, e.span),
            ExprKind::Binary { op, op_span, lhs, rhs } => {
                let l = self.eval(lhs);
                let r = self.eval(rhs);
                self.binary(*op, *op_span, (&l, lhs.span), (&r, rhs.span))
            }
            ExprKind::Neg(inner) => match self.eval(inner) {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                v @ (Value::SomeInt | Value::SomeFloat | Value::Poison) => v,
                Value::Tensor(t) => Value::Tensor(Tensor::of(t.dims)),
                other => self.type_err("a number or tensor", &other, inner.span),
            },
            ExprKind::Transpose(inner) => match self.eval(inner) {
                Value::Tensor(t) if t.dims.len() == 2 => Value::Tensor(Tensor::of(vec![t.dims[1].clone(), t.dims[0].clone()])),
                Value::Tensor(t) => self.err(
                    codes::BAD_TRANSPOSE,
                    format!("`^T` needs a matrix, found a tensor of shape {}", t.shape()),
                    e.span,
                    format!("this has {} dimensions", t.dims.len()),
                    "transpose only 2-D tensors; index per-expert tensors first (`A[e]^T`)",
                ),
                Value::Experts { .. } => self.err(
                    codes::BAD_TRANSPOSE,
                    "`^T` of a per-expert tensor",
                    e.span,
                    "this holds one matrix per expert",
                    "index the expert first: `A[e]^T`",
                ),
                Value::Poison => Value::Poison,
                other => self.type_err("a matrix", &other, inner.span),
            },
            ExprKind::Index { base, index } => self.index(base, index, e.span),
            ExprKind::List(items) => Value::List(items.iter().map(|i| self.eval(i)).collect()),
            ExprKind::Tuple(items) => Value::Tuple(items.iter().map(|i| self.eval(i)).collect()),
            ExprKind::If { cond, then, otherwise } => match self.eval(cond) {
                // Only the branch taken is checked (`if E > 0 then r / E else r`).
                Value::Bool(true) => self.eval(then),
                Value::Bool(false) => self.eval(otherwise),
                Value::Poison => {
                    let a = self.eval(then);
                    self.eval(otherwise);
                    a
                }
                other => self.type_err("a bool condition", &other, cond.span),
            },
            ExprKind::LetIn { name, value, body } => {
                let v = self.eval(value);
                self.check_reserved(&name.name, name.span);
                self.push();
                self.bind(&name.name, v, Some(name.span), BindKind::Let, false);
                let r = self.eval(body);
                self.pop();
                r
            }
            ExprKind::Lambda { .. } => self.err(
                codes::TYPE_MISMATCH,
                "a function is not allowed here",
                e.span,
                "function literal",
                "write the value directly; attach arguments may use earlier arguments, e.g. `k = min(2, E)`",
            ),
        }
    }

    /// Reports `E0112` when a binding would shadow a built-in name.
    pub fn check_reserved(&mut self, name: &str, span: Span) -> bool {
        let reserved = ["x", "layer", "layers"].contains(&name) || builtins::is_builtin(name);
        if reserved {
            self.diags.push(
                Diagnostic::error(codes::RESERVED_NAME, format!("`{name}` is a built-in name"))
                    .at(span, "shadows a built-in")
                    .help(format!("choose another name, e.g. `{name}_`")),
            );
        }
        reserved
    }

    /// Reports a type mismatch and returns poison.
    pub fn type_err(&mut self, expected: &str, found: &Value, span: Span) -> Value {
        if *found == Value::Poison {
            return Value::Poison;
        }
        self.err(
            codes::TYPE_MISMATCH,
            format!("expected {expected}, found {}", found.describe()),
            span,
            format!("this is {}", found.describe()),
            format!("use {expected} here"),
        )
    }

    fn name(&mut self, n: &str, span: Span) -> Value {
        if self.in_init && n == "x" {
            return self.err(
                codes::NOT_CONSTANT,
                "an `init` rewrite cannot depend on the input `x`",
                span,
                "the layer input",
                "`init` runs once before training; use only the base weight, parameters and constants",
            );
        }
        if let Some(b) = self.lookup(n) {
            b.used = true;
            return b.value.clone();
        }
        if self.mode == Mode::Train {
            return Value::Symbol(n.to_string());
        }
        if self.expert_blocks.contains_key(n) {
            return self.err(
                codes::BAD_EXPERT_INDEX,
                format!("expert variable `{n}` used outside its experts block"),
                span,
                "not bound here",
                format!(
                    "sum over the experts with `sum({n}, …)`, or move this into `experts {n} in …`"
                ),
            );
        }
        let mut cands = self.names();
        cands.extend(builtins::names().iter().map(|s| s.to_string()));
        if self.mode == Mode::Attach {
            cands.extend(["layer".to_string(), "layers".to_string()]);
        }
        let fallback = match self.mode {
            Mode::Adapter => {
                format!("declare it first: `let {n} = …`, or add it to the adapter's parameters")
            }
            Mode::Attach => {
                "attach arguments may use constants, `layer`, `layers` and earlier arguments".into()
            }
            _ => "only constants are allowed here".into(),
        };
        let help = suggest(n, cands.iter().map(|s| s.as_str()), fallback);
        self.err(
            codes::UNKNOWN_NAME,
            format!("unknown name `{n}`"),
            span,
            "not found in this scope",
            help,
        )
    }

    fn index(&mut self, base: &Expr, index: &Expr, span: Span) -> Value {
        let b = self.eval(base);
        let i = self.eval(index);
        match (&b, &i) {
            (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
            (Value::Experts { count, elem }, Value::ExpertVar { count: c2, name }) => {
                if !count.compatible(c2) {
                    return self.err(
                        codes::BAD_INDEX,
                        format!("`{name}` ranges over {c2} experts but this tensor has {count}"),
                        index.span,
                        "expert variable of another experts block",
                        "index each tensor with the variable of the block that declared it",
                    );
                }
                Value::Tensor(elem.clone())
            }
            (Value::Experts { count, elem }, Value::Int(k)) => {
                if let Dim::N(c) = count {
                    if *k < 0 || k >= c {
                        return self.err(
                            codes::BAD_INDEX,
                            format!("expert index {k} is out of range for {c} experts"),
                            index.span,
                            format!("valid indices are 0..{c}"),
                            format!("use an index below {c}"),
                        );
                    }
                }
                Value::Tensor(elem.clone())
            }
            (Value::Tensor(t), Value::ExpertVar { .. } | Value::Int(_)) => {
                let Some(last) = t.dims.last() else {
                    return self.err(
                        codes::BAD_INDEX,
                        "cannot index a scalar tensor",
                        span,
                        "scalar",
                        "index tensors with at least one dimension",
                    );
                };
                if let Value::ExpertVar { count, name } = &i {
                    if last.compatible(count) {
                        // fine: selects expert `name`'s column
                    } else {
                        return self.err(
                        codes::BAD_INDEX,
                        format!("`{name}` ranges over {count} experts but the last dimension is {last}"),
                        base.span,
                        format!("this is {}", t.shape()),
                        "index a gate whose last dimension is the number of experts",
                    );
                    }
                }
                if let (Value::Int(k), Dim::N(c)) = (&i, last) {
                    if *k < 0 || k >= c {
                        return self.err(
                            codes::BAD_INDEX,
                            format!("index {k} is out of range for a last dimension of {c}"),
                            index.span,
                            format!("valid indices are 0..{c}"),
                            format!("use an index below {c}"),
                        );
                    }
                }
                let mut dims = t.dims.clone();
                if let Some(l) = dims.last_mut() {
                    *l = Dim::N(1);
                }
                Value::Tensor(Tensor::of(dims))
            }
            (Value::List(items), Value::Int(k)) => {
                match usize::try_from(*k).ok().and_then(|k| items.get(k)) {
                    Some(v) => v.clone(),
                    None => self.err(
                        codes::BAD_INDEX,
                        format!("index {k} is out of range for a list of {}", items.len()),
                        index.span,
                        "out of range",
                        format!("use an index below {}", items.len()),
                    ),
                }
            }
            (Value::Experts { .. } | Value::Tensor(_), other) => self.err(
                codes::BAD_INDEX,
                format!("cannot index a tensor with {}", other.describe()),
                index.span,
                "not an expert variable or integer",
                "index with the experts variable (`A[e]`) or an integer constant",
            ),
            (other, _) => self.err(
                codes::BAD_INDEX,
                format!("{} cannot be indexed", other.describe()),
                base.span,
                "not indexable",
                "only per-expert tensors, tensors and lists can be indexed",
            ),
        }
    }
}

pub use super::eval_ops::broadcast;
