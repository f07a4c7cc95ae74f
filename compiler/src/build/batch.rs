//! Expert batching, recognised in the spec's own expression: a sum over experts of
//! `[g[e] *] (X @ A[e]^T @ B[e]^T)` (X independent of `e`) is computed as two products over the
//! stacked factors, `((X A_allᵀ) ⊙ G) B_all`, instead of E pairs of thin products and E − 1
//! additions. Exact in real arithmetic; the summation order moves into the GEMM.

use crate::syntax::ast::{BinOp, Expr, ExprKind};

/// A matched expert-sum body: the gate (when there is one), the shared input and the factors.
pub struct LowRankSum<'e> {
    /// Name of the `[T, E]` gate indexed by the expert variable, if the terms are gated.
    pub gate: Option<&'e str>,
    /// The input every expert reads.
    pub x: &'e Expr,
    /// Name of the stacked `A[E, d, n]`.
    pub a: &'e str,
    /// Name of the stacked `B[E, m, d]`.
    pub b: &'e str,
}

/// `name[var]`.
fn indexed<'e>(e: &'e Expr, var: &str) -> Option<&'e str> {
    match &e.kind {
        ExprKind::Index { base, index } => match (&base.kind, &index.kind) {
            (ExprKind::Name(b), ExprKind::Name(i)) if i == var => Some(b),
            _ => None,
        },
        _ => None,
    }
}

/// `name[var]^T`.
fn indexed_t<'e>(e: &'e Expr, var: &str) -> Option<&'e str> {
    match &e.kind {
        ExprKind::Transpose(x) => indexed(x, var),
        _ => None,
    }
}

fn matmul(e: &Expr) -> Option<(&Expr, &Expr)> {
    match &e.kind {
        ExprKind::Binary {
            op: BinOp::MatMul,
            lhs,
            rhs,
            ..
        } => Some((lhs, rhs)),
        _ => None,
    }
}

/// True when `var` occurs anywhere in `e`.
pub fn mentions(e: &Expr, var: &str) -> bool {
    let any = |xs: &[&Expr]| xs.iter().any(|x| mentions(x, var));
    match &e.kind {
        ExprKind::Name(n) => n == var,
        ExprKind::Call { args, .. } => args.iter().any(|a| mentions(&a.value, var)),
        ExprKind::Binary { lhs, rhs, .. } => any(&[lhs, rhs]),
        ExprKind::Neg(x) | ExprKind::Transpose(x) => mentions(x, var),
        ExprKind::Index { base, index } => any(&[base, index]),
        ExprKind::List(xs) | ExprKind::Tuple(xs) => xs.iter().any(|x| mentions(x, var)),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => any(&[cond, then, otherwise]),
        ExprKind::LetIn { value, body, .. } => any(&[value, body]),
        ExprKind::Lambda { body, .. } => mentions(body, var),
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Str(_) | ExprKind::Bool(_) => false,
    }
}

/// `X @ A[var]^T @ B[var]^T`.
fn chain<'e>(e: &'e Expr, var: &str) -> Option<(&'e Expr, &'e str, &'e str)> {
    let (xa, bt) = matmul(e)?;
    let b = indexed_t(bt, var)?;
    let (x, at) = matmul(xa)?;
    let a = indexed_t(at, var)?;
    (!mentions(x, var)).then_some((x, a, b))
}

/// Matches a batchable expert-sum body.
pub fn low_rank_sum<'e>(body: &'e Expr, var: &str) -> Option<LowRankSum<'e>> {
    if let Some((x, a, b)) = chain(body, var) {
        return Some(LowRankSum {
            gate: None,
            x,
            a,
            b,
        });
    }
    let ExprKind::Binary {
        op: BinOp::Mul,
        lhs,
        rhs,
        ..
    } = &body.kind
    else {
        return None;
    };
    let (gate, term) = match (indexed(lhs, var), indexed(rhs, var)) {
        (Some(g), _) => (g, rhs),
        (_, Some(g)) => (g, lhs),
        _ => return None,
    };
    let (x, a, b) = chain(term, var)?;
    Some(LowRankSum {
        gate: Some(gate),
        x,
        a,
        b,
    })
}
