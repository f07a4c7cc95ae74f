//! Checks one adapter definition, instantiated with concrete (or generic) arguments.

use super::eval::{BindKind, Eval, Mode};
use super::init::check_init;
use super::value::{shape_str, Dim, Tensor, Value};
use crate::diag::{codes, Diagnostic, Diagnostics, Span};
use crate::syntax::ast::{AdapterDef, Expr, ParamTarget, Stmt};
use std::collections::HashMap;

/// A trainable tensor of one adapter instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamShape {
    /// Name as declared (`A`).
    pub name: String,
    /// Number of experts for per-expert tensors.
    pub experts: Option<Dim>,
    /// Shape of one tensor (per expert, for per-expert tensors).
    pub dims: Vec<Dim>,
    /// Declaration.
    pub span: Span,
}

impl ParamShape {
    /// Number of scalars (all experts), when known.
    pub fn numel(&self) -> Option<i64> {
        let mut n: i64 = 1;
        for d in self.dims.iter().chain(self.experts.iter()) {
            match d {
                Dim::N(k) => n = n.checked_mul(*k)?,
                _ => return None,
            }
        }
        Some(n)
    }
}

/// The result of checking one instantiation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    /// Trainable tensors.
    pub params: Vec<ParamShape>,
    /// Scalar values of parameters and lets, in order.
    pub scalars: Vec<(String, Value)>,
    /// Number of `aux` terms.
    pub aux_terms: usize,
}

/// The base weight's dimensions for an instantiation; `None` checks generically.
pub type BaseDims = Option<(i64, i64)>;

/// Checks `def` with the given argument values. Arguments absent here use defaults.
pub fn instantiate(
    def: &AdapterDef,
    args: &HashMap<String, Value>,
    base: BaseDims,
    diags: &mut Diagnostics,
) -> Instance {
    let mut ev = Eval::new(diags, Mode::Adapter);
    ev.warn_unused = base.is_none();
    let mut inst = Instance::default();
    // Parameters.
    for p in &def.params {
        let ty = p.ty.name.as_str();
        if !["int", "float", "str", "bool"].contains(&ty) {
            ev.diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_TYPE,
                    format!("unknown parameter type `{ty}`"),
                )
                .at(p.ty.span, "not a type")
                .help(crate::diag::suggest(
                    ty,
                    ["int", "float", "str", "bool"],
                    "parameter types are int, float, str and bool",
                )),
            );
        }
        let value = match (args.get(&p.name.name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => {
                let mut cev = Eval::new(ev.diags, Mode::Const);
                for (n, v) in &inst.scalars {
                    cev.bind(n, v.clone(), None, BindKind::Builtin, false);
                }
                let v = cev.eval(d);
                coerce(&mut ev, ty, v, d.span)
            }
            (None, None) => match ty {
                "int" => Value::SomeInt,
                "float" => Value::SomeFloat,
                _ => Value::Poison,
            },
        };
        if ev.check_reserved(&p.name.name, p.name.span) {
            continue;
        }
        inst.scalars.push((p.name.name.clone(), value.clone()));
        ev.bind(
            &p.name.name,
            value,
            Some(p.name.span),
            BindKind::Param,
            false,
        );
    }
    // The base weight and its dimensions.
    if def.base_dims.len() != 2 {
        ev.diags.push(
            Diagnostic::error(
                codes::BAD_BASE_BINDING,
                format!(
                    "the base weight has 2 dimensions, {} named",
                    def.base_dims.len()
                ),
            )
            .at(def.dims_span, "name exactly two: [out, in]")
            .help(format!("write `on {}[m, n]`", def.base.name)),
        );
    }
    let dim_names: Vec<String> = def
        .base_dims
        .iter()
        .map(|d| d.name.clone())
        .chain(["m".into(), "n".into()])
        .collect();
    let (mn, nn) = (&dim_names[0], &dim_names[1]);
    let (mv, nv) = match base {
        Some((m, n)) => (Value::Int(m), Value::Int(n)),
        None => (Value::SomeInt, Value::SomeInt),
    };
    let (md, nd) = (
        mv.as_dim(mn).unwrap_or(Dim::N(1)),
        nv.as_dim(nn).unwrap_or(Dim::N(1)),
    );
    for d in &def.base_dims {
        ev.check_reserved(&d.name, d.span);
    }
    ev.bind(mn, mv, None, BindKind::Builtin, false);
    ev.bind(nn, nv, None, BindKind::Builtin, false);
    ev.bind(
        &def.base.name,
        Value::Tensor(Tensor::of(vec![md.clone(), nd.clone()])),
        None,
        BindKind::Builtin,
        false,
    );
    ev.bind(
        "x",
        Value::Tensor(Tensor::of(vec![Dim::Tokens, nd.clone()])),
        None,
        BindKind::Builtin,
        false,
    );
    ev.push();
    let mut st = State {
        inst,
        out: None,
        base_name: def.base.name.clone(),
        m: md,
        n: nd,
        declared: HashMap::new(),
    };
    // Experts blocks are known up front so `sum(e, …)` resolves anywhere in the body.
    for s in &def.body {
        if let Stmt::Experts { var, hi, .. } = s {
            let mut cev = Eval::new(ev.diags, Mode::Const);
            cev.scopes = ev.scopes.clone();
            let mut quiet = Diagnostics::new();
            std::mem::swap(cev.diags, &mut quiet);
            let count = cev
                .eval(hi)
                .as_dim(&var.name)
                .unwrap_or(Dim::Sym("?".into()));
            std::mem::swap(cev.diags, &mut quiet);
            ev.expert_blocks.insert(var.name.clone(), count);
        }
    }
    for s in &def.body {
        stmt(&mut ev, &mut st, s, None);
    }
    if st.out.is_none() {
        ev.diags.push(
            Diagnostic::error(
                codes::MISSING_OUT,
                format!("adapter `{}` never sets `out`", def.name.name),
            )
            .at(def.name.span, "no `out = …` in this adapter")
            .help(format!(
                "add the layer's output, e.g. `out = x @ {}^T + …`",
                def.base.name
            )),
        );
    }
    ev.pop();
    let top = ev.scopes.first().cloned().unwrap_or_default();
    ev.warn_unused_in(&top);
    st.inst
}

fn coerce(ev: &mut Eval<'_>, ty: &str, v: Value, span: Span) -> Value {
    match (ty, &v) {
        (_, Value::Poison) => v,
        ("int", Value::Int(_) | Value::SomeInt) => v,
        ("float", Value::Float(_) | Value::SomeFloat) => v,
        ("float", Value::Int(i)) => Value::Float(*i as f64),
        ("float", Value::SomeInt) => Value::SomeFloat,
        ("str", Value::Str(_)) | ("bool", Value::Bool(_)) => v,
        ("int" | "float" | "str" | "bool", _) => ev.type_err(ty, &v, span),
        _ => v,
    }
}

/// Checks an attach argument value against the parameter's declared type.
pub fn coerce_arg(diags: &mut Diagnostics, ty: &str, v: Value, span: Span) -> Value {
    let mut ev = Eval::new(diags, Mode::Const);
    coerce(&mut ev, ty, v, span)
}

/// What the statements of one instantiation have established so far.
pub(super) struct State {
    pub(super) inst: Instance,
    pub(super) out: Option<Span>,
    pub(super) base_name: String,
    pub(super) m: Dim,
    pub(super) n: Dim,
    pub(super) declared: HashMap<String, Span>,
}

fn declare(ev: &mut Eval<'_>, st: &mut State, name: &str, span: Span) -> bool {
    if ev.check_reserved(name, span) {
        return false;
    }
    let prior = st.declared.get(name).copied().or_else(|| {
        ev.lookup(name).and_then(|b| {
            if b.kind == BindKind::Param {
                b.span
            } else {
                None
            }
        })
    });
    if let Some(prev) = prior {
        ev.diags.push(
            Diagnostic::error(
                codes::DUPLICATE_DEFINITION,
                format!("`{name}` is defined twice"),
            )
            .at(span, "defined again here")
            .also(prev, "first defined here")
            .help(format!("rename one of them, e.g. `{name}2`")),
        );
        return false;
    }
    if name == st.base_name {
        ev.diags.push(
            Diagnostic::error(
                codes::DUPLICATE_DEFINITION,
                format!("`{name}` is the base weight"),
            )
            .at(span, "shadows the base weight")
            .help("choose another name"),
        );
        return false;
    }
    st.declared.insert(name.to_string(), span);
    true
}

fn stmt(ev: &mut Eval<'_>, st: &mut State, s: &Stmt, block: Option<(&str, &Dim)>) {
    match s {
        Stmt::Let { name, value, .. } => {
            let v = ev.eval(value);
            if declare(ev, st, &name.name, name.span) {
                if v.is_num() || matches!(v, Value::Str(_) | Value::Bool(_)) {
                    st.inst.scalars.push((name.name.clone(), v.clone()));
                }
                ev.bind(&name.name, v, Some(name.span), BindKind::Let, false);
            } else {
                // Already reported; bind it if nothing else has the name, so later uses do not
                // cascade into E0101.
                if ev.lookup(&name.name).is_none() {
                    ev.bind(&name.name, v, Some(name.span), BindKind::Builtin, false);
                }
            }
        }
        Stmt::Param {
            targets,
            init,
            span,
        } => param(ev, st, targets, init.as_ref(), *span, block),
        Stmt::Experts {
            var,
            lo,
            hi,
            body,
            span,
        } => {
            if block.is_some() {
                ev.diags.push(
                    Diagnostic::error(codes::ITEM_NOT_ALLOWED, "experts blocks cannot be nested")
                        .at(var.span, "nested experts block")
                        .help("declare every per-expert tensor in one `experts e in 0..E { … }` block"),
                );
                return;
            }
            let lov = ev.eval(lo);
            if let Some(l) = lov.as_i64().filter(|l| *l != 0) {
                ev.err(
                    codes::BAD_EXPERT_RANGE,
                    format!("experts ranges start at 0, found {l}"),
                    lo.span,
                    "must be 0",
                    "write `0..E`",
                );
            }
            let hiv = ev.eval(hi);
            let count = match &hiv {
                Value::Int(h) if *h < 1 => {
                    ev.err(
                        codes::BAD_EXPERT_RANGE,
                        format!("an experts block needs at least 1 expert, found {h}"),
                        hi.span,
                        "empty range",
                        "use a positive number of experts",
                    );
                    return;
                }
                Value::Int(h) => Dim::N(*h),
                Value::SomeInt => Dim::Sym(var.name.clone()),
                Value::Poison => return,
                other => {
                    ev.type_err("an int number of experts", other, hi.span);
                    return;
                }
            };
            ev.check_reserved(&var.name, var.span);
            ev.expert_blocks.insert(var.name.clone(), count.clone());
            ev.push();
            ev.bind(
                &var.name,
                Value::ExpertVar {
                    name: var.name.clone(),
                    count: count.clone(),
                },
                Some(var.span),
                BindKind::ExpertVar,
                false,
            );
            for b in body {
                match b {
                    Stmt::Param { .. } | Stmt::Let { .. } => {
                        stmt(ev, st, b, Some((&var.name, &count)))
                    }
                    other => {
                        ev.diags.push(
                            Diagnostic::error(
                                codes::ITEM_NOT_ALLOWED,
                                "only `param` and `let` are allowed inside an experts block",
                            )
                            .at(other.span(), "not allowed here")
                            .help("move this statement after the experts block"),
                        );
                    }
                }
            }
            ev.pop();
            let _ = span;
        }
        Stmt::Init { target, value, .. } => {
            if target.name != st.base_name {
                ev.diags.push(
                    Diagnostic::error(codes::BAD_INIT_TARGET, format!("`init` can only rewrite the base weight `{}`", st.base_name))
                        .at(target.span, format!("`{}` is not the base weight", target.name))
                        .help(format!("write `init {} -= …`; trainable tensors get their values from their initializer", st.base_name)),
                );
                return;
            }
            ev.in_init = true;
            let v = ev.eval(value);
            ev.in_init = false;
            let want = vec![st.m.clone(), st.n.clone()];
            match &v {
                Value::Tensor(t) if same_shape(&t.dims, &want) => {}
                Value::Poison => {}
                other => {
                    let found = match other {
                        Value::Tensor(t) => t.shape(),
                        o => o.describe(),
                    };
                    ev.diags.push(
                        Diagnostic::error(codes::INIT_SHAPE, format!("`init` rewrite has shape {found}, the base weight is {}", shape_str(&want)))
                            .at(value.span, format!("this is {found}"))
                            .help("the rewrite must have the base weight's shape [m, n], e.g. `B @ A` with B [m, r] and A [r, n]"),
                    );
                }
            }
        }
        Stmt::Out { value, span } => {
            if let Some(prev) = st.out {
                ev.diags.push(
                    Diagnostic::error(codes::DUPLICATE_OUT, "`out` is set twice")
                        .at(*span, "set again here")
                        .also(prev, "first set here")
                        .help("combine both into one `out = …`"),
                );
                return;
            }
            st.out = Some(*span);
            let v = ev.eval(value);
            let want = vec![Dim::Tokens, st.m.clone()];
            match &v {
                Value::Tensor(t) if same_shape(&t.dims, &want) => {}
                Value::Poison => {}
                other => {
                    let found = match other {
                        Value::Tensor(t) => t.shape(),
                        o => o.describe(),
                    };
                    ev.diags.push(
                        Diagnostic::error(codes::OUT_SHAPE, format!("`out` has shape {found}, the layer's output is {}", shape_str(&want)))
                            .at(value.span, format!("this is {found}"))
                            .help(format!("`out` replaces `x @ {}^T`, which is [T, m]; start from that and add the adapter's term", st.base_name)),
                    );
                }
            }
        }
        Stmt::Aux { value, .. } => {
            st.inst.aux_terms += 1;
            match ev.eval(value) {
                Value::Tensor(t) if t.dims.is_empty() => {}
                v if v.is_num() => {}
                Value::Poison => {}
                other => {
                    ev.diags.push(
                        Diagnostic::error(codes::AUX_NOT_SCALAR, format!("`aux` must be a scalar, found {}", other.describe()))
                            .at(value.span, format!("this is {}", other.describe()))
                            .help("reduce it to a scalar, e.g. `mean(…)` or `balance(g, norm = \"goat\")`"),
                    );
                }
            }
        }
    }
}

/// Shapes equal up to symbolic dimensions.
pub(super) fn same_shape(a: &[Dim], b: &[Dim]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.compatible(y))
}

fn dims_of(ev: &mut Eval<'_>, t: &ParamTarget) -> Option<Vec<Dim>> {
    let mut dims = Vec::new();
    let mut ok = true;
    for d in &t.dims {
        match ev.eval(d) {
            Value::Int(k) if k < 1 => {
                ev.diags.push(
                    Diagnostic::error(
                        codes::NON_POSITIVE_DIM,
                        format!("dimension {k} of `{}` is not positive", t.name.name),
                    )
                    .at(d.span, format!("this is {k}"))
                    .help("every dimension must be at least 1; check the expression's inputs"),
                );
                ok = false;
            }
            Value::Int(k) => dims.push(Dim::N(k)),
            Value::SomeInt => dims.push(Dim::Sym("?".into())),
            Value::Poison => ok = false,
            Value::Tensor(_) => {
                ev.err(
                    codes::NOT_CONSTANT,
                    "a tensor cannot be a dimension",
                    d.span,
                    "tensor",
                    "dimensions are compile-time ints such as `r` or `m`",
                );
                ok = false;
            }
            other => {
                ev.type_err("an int dimension", &other, d.span);
                ok = false;
            }
        }
    }
    ok.then_some(dims)
}

fn param(
    ev: &mut Eval<'_>,
    st: &mut State,
    targets: &[ParamTarget],
    init: Option<&Expr>,
    span: Span,
    block: Option<(&str, &Dim)>,
) {
    let mut shapes = Vec::new();
    for t in targets {
        match (&t.expert, block) {
            (Some(e), Some((var, _))) if e.name != var => {
                ev.diags.push(
                    Diagnostic::error(
                        codes::BAD_EXPERT_INDEX,
                        format!("`{}` is not this block's expert variable", e.name),
                    )
                    .at(e.span, format!("expected `{var}`"))
                    .help(format!("write `{}[{var}][…]`", t.name.name)),
                );
            }
            (Some(e), None) => {
                ev.diags.push(
                    Diagnostic::error(
                        codes::BAD_EXPERT_INDEX,
                        format!(
                            "per-expert tensor `{}` declared outside an experts block",
                            t.name.name
                        ),
                    )
                    .at(e.span, "no experts block here")
                    .help(format!(
                        "wrap it: `experts {} in 0..E {{ param {}[{}][…] = … }}`",
                        e.name, t.name.name, e.name
                    )),
                );
            }
            (None, Some((var, _))) => {
                ev.diags.push(
                    Diagnostic::error(codes::BAD_EXPERT_INDEX, format!("`{}` inside an experts block has no expert index", t.name.name))
                        .at(t.name.span, "declared without `[e]`")
                        .help(format!("write `{}[{var}][…]` for one tensor per expert, or move it out of the block", t.name.name)),
                );
            }
            _ => {}
        }
        let dims = dims_of(ev, t);
        shapes.push((t, dims));
    }
    let experts = block.map(|(_, c)| c.clone());
    // Initializer.
    match init {
        None => {
            ev.diags.push(
                Diagnostic::error(
                    codes::MISSING_INIT,
                    format!("`{}` has no initializer", targets[0].name.name),
                )
                .at(span, "no `= …`")
                .help("add one, e.g. `= zeros` or `= kaiming_uniform(a = sqrt(5))`"),
            );
        }
        Some(e) => check_init(ev, st, &shapes, e, block),
    }
    for (t, dims) in shapes {
        if !declare(ev, st, &t.name.name, t.name.span) {
            continue;
        }
        let Some(dims) = dims else {
            // Bad dimensions were reported; poison the name so its uses stay quiet.
            ev.bind(
                &t.name.name,
                Value::Poison,
                Some(t.name.span),
                BindKind::Tensor,
                true,
            );
            continue;
        };
        let value = match &experts {
            Some(c) => Value::Experts {
                count: c.clone(),
                elem: Tensor::of(dims.clone()),
            },
            None => Value::Tensor(Tensor::of(dims.clone())),
        };
        st.inst.params.push(ParamShape {
            name: t.name.name.clone(),
            experts: experts.clone(),
            dims,
            span: t.span,
        });
        ev.bind(
            &t.name.name,
            value,
            Some(t.name.span),
            BindKind::Tensor,
            true,
        );
    }
}
