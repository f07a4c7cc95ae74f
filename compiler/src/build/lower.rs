//! Lowers an attached adapter's forward (`let`s, `out`, `aux`) to IR at one linear layer.

use crate::check::attach::Attachment;
use crate::check::value::Value;
use crate::diag::Span;
use crate::ir::{BinaryOp, DType, Graph, InputKind, IrError, NodeId, Op, UnaryOp, R};
use crate::syntax::ast::{find_arg, AdapterDef, Arg, BinOp, Expr, ExprKind, Stmt};
use std::collections::HashMap;

mod experts;

/// A trainable tensor created for one attachment.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Graph input name: `{module}.{tensor}`.
    pub name: String,
    /// Module path.
    pub module: String,
    /// Tensor name in the adapter (`A`).
    pub local: String,
    /// Full shape (per-expert tensors are stacked: `[E, ...]`).
    pub shape: Vec<usize>,
    /// Number of experts for per-expert tensors.
    pub experts: Option<usize>,
}

/// Router provenance: what `balance` and top-k dispatch need.
#[derive(Clone, Copy, Debug)]
struct Gate {
    probs: NodeId,
    mask: NodeId,
    k: usize,
    /// The gate is zero outside `mask` (a top-k router), so only the masked experts count;
    /// a dense softmax gate's mask only serves `balance`.
    sparse: bool,
}

#[derive(Clone, Debug)]
enum LVal {
    Num(f64),
    Str(String),
    Bool(bool),
    Node(NodeId),
    Experts { node: NodeId, count: usize },
    Expert(usize),
}

/// Lowering state for one attachment.
pub struct Lowerer<'a> {
    def: &'a AdapterDef,
    at: &'a Attachment,
    env: Vec<(String, LVal)>,
    gates: HashMap<NodeId, Gate>,
    /// Trainable tensors created so far.
    pub params: Vec<ParamInfo>,
    /// Scalar auxiliary-loss terms.
    pub aux: Vec<NodeId>,
    /// Compute sums of low-rank experts as products over the stacked factors
    /// (`build/batch.rs`); off, each expert is its own pair of products.
    pub batch_experts: bool,
    /// Build the training forward: `dropout` draws seeded masks (identity otherwise).
    pub training: bool,
    /// Distinguishes this attachment's dropout sites from every other's.
    pub salt: u64,
    /// Dropout sites lowered so far.
    sites: u64,
}

/// Name of the i64 seed input that training graphs with dropout read (one value per step).
pub const DROPOUT_SEED: &str = "dropout_seed";

fn err<T>(span: Span, msg: impl Into<String>) -> R<T> {
    Err(IrError(format!(
        "{} (at bytes {}..{})",
        msg.into(),
        span.start,
        span.end
    )))
}

impl<'a> Lowerer<'a> {
    /// A lowerer for `at`, whose adapter is `def`.
    pub fn new(def: &'a AdapterDef, at: &'a Attachment) -> Lowerer<'a> {
        Lowerer {
            def,
            at,
            env: Vec::new(),
            gates: HashMap::new(),
            params: Vec::new(),
            aux: Vec::new(),
            batch_experts: true,
            training: false,
            salt: 0,
            sites: 0,
        }
    }

    fn lookup(&self, n: &str) -> Option<LVal> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    }

    /// Binds scalars, dimensions, the base weight and the trainable tensors (as graph
    /// inputs). `lower` calls it; the runtime calls it to evaluate initializers.
    pub fn bind(&mut self, g: &mut Graph, w0: NodeId) -> R<()> {
        for (name, v) in &self.at.instance.scalars {
            let lv = match v {
                Value::Int(i) => LVal::Num(*i as f64),
                Value::Float(f) => LVal::Num(*f),
                Value::Str(s) => LVal::Str(s.clone()),
                Value::Bool(b) => LVal::Bool(*b),
                _ => continue,
            };
            self.env.push((name.clone(), lv));
        }
        let dims = &self.def.base_dims;
        if dims.len() == 2 {
            self.env
                .push((dims[0].name.clone(), LVal::Num(self.at.m as f64)));
            self.env
                .push((dims[1].name.clone(), LVal::Num(self.at.n as f64)));
        }
        self.env.push((self.def.base.name.clone(), LVal::Node(w0)));
        for p in &self.at.instance.params {
            let mut shape: Vec<usize> = Vec::new();
            let count = match &p.experts {
                Some(crate::check::value::Dim::N(e)) => Some(*e as usize),
                Some(_) => {
                    return err(
                        p.span,
                        format!("`{}`: the number of experts is not known yet", p.name),
                    )
                }
                None => None,
            };
            shape.extend(count);
            for d in &p.dims {
                match d {
                    crate::check::value::Dim::N(k) => shape.push(*k as usize),
                    other => {
                        return err(
                            p.span,
                            format!("`{}` has an unresolved dimension {other}", p.name),
                        )
                    }
                }
            }
            let name = format!("{}.{}", self.at.module, p.name);
            let node = match g.find_input(&name) {
                Some(n) => n,
                None => g.add(
                    Op::Input {
                        name: name.clone(),
                        kind: InputKind::Param,
                        shape: shape.clone(),
                        dtype: DType::F32,
                    },
                    &[],
                )?,
            };
            self.params.push(ParamInfo {
                name,
                module: self.at.module.clone(),
                local: p.name.clone(),
                shape,
                experts: count,
            });
            let v = match count {
                Some(c) => LVal::Experts { node, count: c },
                None => LVal::Node(node),
            };
            self.env.push((p.name.clone(), v));
        }
        Ok(())
    }

    /// Lowers one expression in the bound environment (initializers, `init` rewrites).
    pub fn expr_node(&mut self, g: &mut Graph, e: &Expr) -> R<NodeId> {
        self.node(g, e)
    }

    /// Binds an expert index variable for the next `expr_node` calls.
    pub fn push_expert(&mut self, var: &str, e: usize) {
        self.env.push((var.to_string(), LVal::Expert(e)));
    }

    /// Undoes `push_expert`.
    pub fn pop_binding(&mut self) {
        self.env.pop();
    }

    /// Builds `out` for input `x[rows, n]`; `w0` is the (frozen, possibly init-rewritten) base weight.
    pub fn lower(&mut self, g: &mut Graph, x: NodeId, w0: NodeId) -> R<NodeId> {
        self.bind(g, w0)?;
        self.env.push(("x".into(), LVal::Node(x)));
        let mut out = None;
        let body = self.def.body.clone();
        for s in &body {
            match s {
                Stmt::Let { name, value, .. } => {
                    let v = self.expr(g, value)?;
                    self.env.push((name.name.clone(), v));
                }
                Stmt::Out { value, .. } => out = Some(self.node(g, value)?),
                Stmt::Aux { value, .. } => {
                    let a = self.node(g, value)?;
                    let a = g.reshape(a, &[])?;
                    self.aux.push(a);
                }
                Stmt::Param { .. } | Stmt::Experts { .. } | Stmt::Init { .. } => {}
            }
        }
        let Some(out) = out else {
            return err(self.def.span, "adapter has no `out`");
        };
        let rows = g.shape(x)[0];
        if g.shape(out) != [rows, self.at.m] {
            return err(
                self.def.span,
                format!(
                    "`out` is {:?}, expected [{rows}, {}]",
                    g.shape(out),
                    self.at.m
                ),
            );
        }
        Ok(out)
    }

    fn node(&mut self, g: &mut Graph, e: &Expr) -> R<NodeId> {
        match self.expr(g, e)? {
            LVal::Node(n) => Ok(n),
            LVal::Num(v) => g.scalar(v as f32),
            other => err(e.span, format!("expected a tensor, found {other:?}")),
        }
    }

    fn num(&mut self, g: &mut Graph, e: &Expr) -> R<f64> {
        match self.expr(g, e)? {
            LVal::Num(v) => Ok(v),
            LVal::Bool(b) => Ok(f64::from(u8::from(b))),
            other => err(e.span, format!("expected a number, found {other:?}")),
        }
    }

    fn expr(&mut self, g: &mut Graph, e: &Expr) -> R<LVal> {
        let saved = g.origin;
        g.origin = e.span;
        let r = self.expr_inner(g, e);
        g.origin = saved;
        r
    }

    fn expr_inner(&mut self, g: &mut Graph, e: &Expr) -> R<LVal> {
        Ok(match &e.kind {
            ExprKind::Int(i) => LVal::Num(*i as f64),
            ExprKind::Float(f) => LVal::Num(*f),
            ExprKind::Str(s) => LVal::Str(s.clone()),
            ExprKind::Bool(b) => LVal::Bool(*b),
            ExprKind::Name(n) => match self.lookup(n) {
                Some(v) => v,
                None => return err(e.span, format!("unknown name `{n}`")),
            },
            ExprKind::Neg(x) => match self.expr(g, x)? {
                LVal::Num(v) => LVal::Num(-v),
                LVal::Node(n) => LVal::Node(g.neg(n)?),
                other => return err(e.span, format!("cannot negate {other:?}")),
            },
            ExprKind::Transpose(x) => {
                let n = self.node(g, x)?;
                LVal::Node(g.t(n)?)
            }
            ExprKind::Index { base, index } => {
                let b = self.expr(g, base)?;
                let i = match self.expr(g, index)? {
                    LVal::Expert(i) => i,
                    LVal::Num(v) if v >= 0.0 => v as usize,
                    other => return err(index.span, format!("bad index {other:?}")),
                };
                match b {
                    LVal::Experts { node, count } => {
                        if i >= count {
                            return err(index.span, format!("expert {i} of {count}"));
                        }
                        let s = g.slice(node, 0, i, i + 1)?;
                        let shape = g.shape(s)[1..].to_vec();
                        LVal::Node(g.reshape(s, &shape)?)
                    }
                    LVal::Node(n) => {
                        let ax = g.shape(n).len() - 1;
                        LVal::Node(g.slice(n, ax, i, i + 1)?)
                    }
                    other => return err(base.span, format!("cannot index {other:?}")),
                }
            }
            ExprKind::Binary { op, lhs, rhs, .. } => {
                let (l, r) = (self.expr(g, lhs)?, self.expr(g, rhs)?);
                self.binary(g, *op, l, r, e.span)?
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                if self.num(g, cond)? != 0.0 {
                    self.expr(g, then)?
                } else {
                    self.expr(g, otherwise)?
                }
            }
            ExprKind::LetIn { name, value, body } => {
                let v = self.expr(g, value)?;
                self.env.push((name.name.clone(), v));
                let r = self.expr(g, body);
                self.env.pop();
                r?
            }
            ExprKind::Call { func, args } => self.call(g, &func.name, args, e.span)?,
            ExprKind::List(_) | ExprKind::Tuple(_) | ExprKind::Lambda { .. } => {
                return err(e.span, "lists, tuples and functions have no tensor meaning")
            }
        })
    }

    fn binary(&mut self, g: &mut Graph, op: BinOp, l: LVal, r: LVal, span: Span) -> R<LVal> {
        if let (LVal::Num(a), LVal::Num(b)) = (&l, &r) {
            let (a, b) = (*a, *b);
            return Ok(match op {
                BinOp::Add => LVal::Num(a + b),
                BinOp::Sub => LVal::Num(a - b),
                BinOp::Mul => LVal::Num(a * b),
                BinOp::Div => LVal::Num(a / b),
                BinOp::FloorDiv => LVal::Num((a / b).floor()),
                BinOp::Pow => LVal::Num(a.powf(b)),
                BinOp::MatMul => return err(span, "`@` of two scalars"),
                BinOp::Eq => LVal::Bool(a == b),
                BinOp::Ne => LVal::Bool(a != b),
                BinOp::Lt => LVal::Bool(a < b),
                BinOp::Le => LVal::Bool(a <= b),
                BinOp::Gt => LVal::Bool(a > b),
                BinOp::Ge => LVal::Bool(a >= b),
            });
        }
        let as_node = |g: &mut Graph, v: LVal| -> R<NodeId> {
            match v {
                LVal::Node(n) => Ok(n),
                LVal::Num(x) => g.scalar(x as f32),
                other => err(span, format!("expected a tensor, found {other:?}")),
            }
        };
        let (a, b) = (as_node(g, l)?, as_node(g, r)?);
        let n = match op {
            BinOp::Add => g.plus(a, b)?,
            BinOp::Sub => g.minus(a, b)?,
            BinOp::Mul => g.times(a, b)?,
            BinOp::Div => g.over(a, b)?,
            BinOp::Pow => g.bin(BinaryOp::Pow, a, b)?,
            BinOp::MatMul => g.matmul(a, b)?,
            _ => return err(span, format!("`{}` on tensors", op.symbol())),
        };
        Ok(LVal::Node(n))
    }

    fn call(&mut self, g: &mut Graph, f: &str, args: &[Arg], span: Span) -> R<LVal> {
        let a0 = find_arg(args, 0, "x");
        let un = |u: UnaryOp| Some(u);
        let unary = match f {
            "sqrt" => un(UnaryOp::Sqrt),
            "exp" => un(UnaryOp::Exp),
            "log" => un(UnaryOp::Log),
            "abs" => un(UnaryOp::Abs),
            "relu" => un(UnaryOp::Relu),
            "sigmoid" => un(UnaryOp::Sigmoid),
            "tanh" => un(UnaryOp::Tanh),
            _ => None,
        };
        if let Some(u) = unary {
            let Some(x) = a0 else {
                return err(span, format!("`{f}` needs an argument"));
            };
            return Ok(match self.expr(g, x)? {
                LVal::Num(v) => {
                    LVal::Num(crate::ir::ops::elementwise::unary_fn(u, v as f32) as f64)
                }
                LVal::Node(n) => LVal::Node(g.un(u, n)?),
                other => return err(span, format!("`{f}` of {other:?}")),
            });
        }
        fn need(e: Option<&Expr>) -> R<&Expr> {
            e.ok_or_else(|| IrError("a built-in is missing an argument".into()))
        }
        Ok(match f {
            "log10" | "gelu" | "silu" => {
                let x = self.node(g, need(a0)?)?;
                LVal::Node(match f {
                    "gelu" => g.gelu(x)?,
                    "silu" => g.silu(x)?,
                    _ => {
                        let l = g.un(UnaryOp::Log, x)?;
                        g.scale(l, 1.0 / std::f32::consts::LN_10)?
                    }
                })
            }
            "float" => LVal::Num(self.num(g, need(a0)?)?),
            "int" => LVal::Num(self.num(g, need(a0)?)?.trunc()),
            "floor" => LVal::Num(self.num(g, need(a0)?)?.floor()),
            "ceil" => LVal::Num(self.num(g, need(a0)?)?.ceil()),
            "round" => LVal::Num(self.num(g, need(a0)?)?.round_ties_even()),
            "pow" | "min" | "max" => {
                let (a, b) = (
                    self.expr(g, need(find_arg(args, 0, "x").or(find_arg(args, 0, "a")))?)?,
                    self.expr(g, need(find_arg(args, 1, "y").or(find_arg(args, 1, "b")))?)?,
                );
                match (a, b) {
                    (LVal::Num(x), LVal::Num(y)) => LVal::Num(match f {
                        "pow" => x.powf(y),
                        "min" => x.min(y),
                        _ => x.max(y),
                    }),
                    (a, b) => {
                        let op = match f {
                            "pow" => BinaryOp::Pow,
                            "min" => BinaryOp::Min,
                            _ => BinaryOp::Max,
                        };
                        let an = match a {
                            LVal::Node(n) => n,
                            LVal::Num(v) => g.scalar(v as f32)?,
                            o => return err(span, format!("`{f}` of {o:?}")),
                        };
                        let bn = match b {
                            LVal::Node(n) => n,
                            LVal::Num(v) => g.scalar(v as f32)?,
                            o => return err(span, format!("`{f}` of {o:?}")),
                        };
                        LVal::Node(g.bin(op, an, bn)?)
                    }
                }
            }
            "softmax" => {
                let x = self.node(g, need(a0)?)?;
                let p = g.softmax(x)?;
                // A dense gate counts each token's best expert for `balance`.
                let mask = g.add(Op::TopKMask { k: 1 }, &[p])?;
                self.gates.insert(
                    p,
                    Gate {
                        probs: p,
                        mask,
                        k: 1,
                        sparse: false,
                    },
                );
                LVal::Node(p)
            }
            "topk" => {
                let p = self.node(g, need(a0)?)?;
                let k = self.num(g, need(find_arg(args, 1, "k"))?)? as usize;
                let renorm = args.iter().any(|a| {
                    matches!(&a.value.kind, ExprKind::Name(n) if n == "renorm" && a.name.is_none())
                        || (a.name.as_ref().is_some_and(|n| n.name == "renorm")
                            && matches!(a.value.kind, ExprKind::Bool(true)))
                }) || args
                    .iter()
                    .filter(|a| a.name.is_none())
                    .nth(2)
                    .is_some_and(|a| matches!(a.value.kind, ExprKind::Bool(true)));
                let mask = g.add(Op::TopKMask { k }, &[p])?;
                let kept = g.times(p, mask)?;
                let w = if renorm {
                    let ax = g.shape(kept).len() - 1;
                    let s = g.sum(kept, ax)?;
                    g.over(kept, s)?
                } else {
                    kept
                };
                let probs = self.gates.get(&p).map(|x| x.probs).unwrap_or(p);
                self.gates.insert(
                    w,
                    Gate {
                        probs,
                        mask,
                        k,
                        sparse: true,
                    },
                );
                LVal::Node(w)
            }
            "stop_grad" => match self.expr(g, need(a0)?)? {
                LVal::Node(n) => LVal::Node(g.stop_grad(n)?),
                other => other,
            },
            // Evaluation graphs compute the deterministic forward; training graphs draw a mask
            // per site from the step's seed (ops/random.rs).
            "dropout" => {
                let x = self.expr(g, need(a0)?)?;
                let p = match find_arg(args, 1, "p") {
                    Some(e) => self.num(g, e)?,
                    None => 0.0,
                };
                match x {
                    LVal::Node(n) if self.training && p > 0.0 => {
                        let seed = match g.find_input(DROPOUT_SEED) {
                            Some(s) => s,
                            None => g.add(
                                Op::Input {
                                    name: DROPOUT_SEED.into(),
                                    kind: InputKind::Data,
                                    shape: vec![1],
                                    dtype: DType::I64,
                                },
                                &[],
                            )?,
                        };
                        self.sites += 1;
                        let op = Op::Dropout {
                            p: p as f32,
                            salt: self.salt.wrapping_add(self.sites),
                        };
                        LVal::Node(g.add(op, &[n, seed])?)
                    }
                    other => other,
                }
            }
            "row_norm" => {
                let w = self.node(g, need(a0)?)?;
                let sq = g.times(w, w)?;
                let s = g.sum(sq, 1)?;
                let r = g.un(UnaryOp::Sqrt, s)?;
                let m = g.shape(w)[0];
                LVal::Node(g.reshape(r, &[m])?)
            }
            "mean" => {
                let x = self.node(g, need(a0)?)?;
                let n: usize = g.shape(x).iter().product();
                let s = g.sum_all(x)?;
                LVal::Node(g.scale(s, 1.0 / n as f32)?)
            }
            "sum" => self.sum(g, args, span)?,
            "gated_mix" => {
                let gt = self.node(g, need(find_arg(args, 0, "g"))?)?;
                let y = self.node(g, need(find_arg(args, 1, "y"))?)?;
                let p = match find_arg(args, 2, "p") {
                    Some(e) => self.num(g, e)?,
                    None => 0.5,
                };
                // Forward g·y; backward dy·g^p into y and ⟨y, dy⟩ into g:
                // out = sg(g^p)·y + (g − sg(g^p))·sg(y).
                let gp = if p == 0.0 {
                    // g^0 with 0^0 = 0: an unselected expert (g = 0) gets no gradient.
                    let zero = g.scalar(0.0)?;
                    let off = g.bin(BinaryOp::Eq, gt, zero)?;
                    let one = g.scalar(1.0)?;
                    g.minus(one, off)?
                } else {
                    let e = g.scalar(p as f32)?;
                    g.bin(BinaryOp::Pow, gt, e)?
                };
                let c = g.stop_grad(gp)?;
                let a = g.times(c, y)?;
                let d = g.minus(gt, c)?;
                let sy = g.stop_grad(y)?;
                let b = g.times(d, sy)?;
                LVal::Node(g.plus(a, b)?)
            }
            "balance" => {
                let gt = self.node(g, need(find_arg(args, 0, "g"))?)?;
                let norm = match find_arg(args, 1, "norm")
                    .map(|e| self.expr(g, e))
                    .transpose()?
                {
                    Some(LVal::Str(s)) => s,
                    _ => "goat".into(),
                };
                let Some(gate) = self.gates.get(&gt).copied() else {
                    return err(span, "`balance` needs a router gate (topk or softmax)");
                };
                LVal::Node(balance(g, gate, &norm)?)
            }
            other => return err(span, format!("`{other}` cannot be lowered here")),
        })
    }
}

/// The load-balancing loss of one router (methods.md §5): `counts_i` are the top-k slots of
/// expert i over the T tokens, `P_i` the mean router probability.
fn balance(g: &mut Graph, gate: Gate, norm: &str) -> R<NodeId> {
    let s = g.shape(gate.probs).to_vec();
    let (t, e) = (s[0], s[1]);
    let counts = g.sum(gate.mask, 0)?;
    let p = g.mean(gate.probs, 0)?;
    let cp = g.times(counts, p)?;
    let total = g.sum_all(cp)?;
    // goat: E Σ (c_i / T) P_i (minimum k); switch and paper: E Σ c_i P_i / (k T) (minimum 1).
    let c = match norm {
        "goat" => e as f32 / t as f32,
        _ => e as f32 / (gate.k * t) as f32,
    };
    g.scale(total, c)
}
