//! Sums over experts: stacked products when every expert reads the same input, top-k routed
//! copies when each draws its own dropout mask behind a top-k router, unrolled otherwise.

use super::{err, Gate, LVal, Lowerer};
use crate::build::batch;
use crate::diag::Span;
use crate::ir::{Graph, IrError, NodeId, Op, R};
use crate::syntax::ast::{find_arg, Arg, BinOp, ExprKind, Stmt};

/// The stacked factors of an expert sum: `A[E, d, n]`, `B[E, m, d]`.
struct RoutedFactors {
    a: NodeId,
    b: NodeId,
    d: usize,
    n: usize,
    m: usize,
}

impl Lowerer<'_> {
    /// `sum(x)` over all elements, or `sum(e, body)` over the experts of variable `e`.
    pub(super) fn sum(&mut self, g: &mut Graph, args: &[Arg], span: Span) -> R<LVal> {
        let over =
            find_arg(args, 0, "over").ok_or_else(|| IrError("`sum` needs an argument".into()))?;
        let Some(body) = find_arg(args, 1, "body") else {
            let x = self.node(g, over)?;
            return Ok(LVal::Node(g.sum_all(x)?));
        };
        let ExprKind::Name(var) = &over.kind else {
            return err(span, "`sum` over experts needs a variable");
        };
        let count = self
            .expert_count(g, var)?
            .ok_or_else(|| IrError(format!("`{var}` is not an experts variable")))?;
        if self.batch_experts {
            if let Some(m) = batch::low_rank_sum(body, var) {
                let sites = self.sites;
                if let Some(v) = self.stacked_sum(g, &m, count)? {
                    return Ok(LVal::Node(v));
                }
                // A declined attempt leaves dead nodes only: the unrolled sum numbers its
                // dropout sites as if batching were off, so both builds draw the same masks.
                self.sites = sites;
            }
        }
        let mut acc: Option<LVal> = None;
        for i in 0..count {
            self.env.push((var.clone(), LVal::Expert(i)));
            let v = self.expr(g, body);
            self.env.pop();
            let v = v?;
            acc = Some(match acc {
                None => v,
                Some(a) => self.binary(g, BinOp::Add, a, v, span)?,
            });
        }
        acc.ok_or_else(|| IrError("sum over zero experts".into()))
    }

    /// `Σ_e [g[:, e] ·] (X A[e]ᵀ) B[e]ᵀ` as `((X A_allᵀ) ⊙ G) B_all`; `None` when the names
    /// are not stacked factors of `count` experts (the unrolled sum then applies).
    fn stacked_sum(
        &mut self,
        g: &mut Graph,
        m: &batch::LowRankSum<'_>,
        count: usize,
    ) -> R<Option<NodeId>> {
        let (
            Some(LVal::Experts { node: a, count: ca }),
            Some(LVal::Experts { node: b, count: cb }),
        ) = (self.lookup(m.a), self.lookup(m.b))
        else {
            return Ok(None);
        };
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        if ca != count || cb != count || sa.len() != 3 || sb.len() != 3 || sa[1] != sb[2] {
            return Ok(None);
        }
        let (d, n, mm) = (sa[1], sa[2], sb[1]);
        let gate = match m.gate {
            Some(name) => match self.lookup(name) {
                Some(LVal::Node(gn)) if g.shape(gn).last() == Some(&count) => Some(gn),
                _ => return Ok(None),
            },
            None => None,
        };
        let s0 = self.sites;
        let x = self.node(g, m.x)?;
        let xs = g.shape(x).to_vec();
        if xs.last() != Some(&n) {
            return Ok(None);
        }
        // In training, a dropout inside the body draws a mask per expert, which one shared
        // stacked product cannot express. Behind a top-k router only the selected experts'
        // masks matter: top-k sparse dispatch draws exactly those (salts as the unrolled sum
        // would number its sites). Otherwise the sum stays unrolled (the node built here is
        // dead and removed by DCE).
        if let Op::Dropout { p, .. } = g.node(x).op {
            let routed = gate.and_then(|gn| {
                let r = self.gates.get(&gn).copied().filter(|r| r.sparse)?;
                Some((gn, r))
            });
            let (Some((gn, router)), 1) = (routed, self.sites - s0) else {
                return Ok(None);
            };
            let ins = g.inputs(x);
            let salts = (0..count as u64)
                .map(|e| self.salt.wrapping_add(s0 + 1 + e))
                .collect();
            self.sites = s0 + count as u64;
            let f = RoutedFactors { a, b, d, n, m: mm };
            return self
                .routed_sum(g, ins[0], ins[1], p, salts, gn, router, &f)
                .map(Some);
        }
        let a_all = g.reshape(a, &[count * d, n])?;
        let at = g.t(a_all)?;
        let mut h = g.matmul(x, at)?;
        if let Some(gn) = gate {
            let gf = gate_columns(g, gn, d)?;
            h = g.times(h, gf)?;
        }
        let bp = g.permute(b, &[0, 2, 1])?;
        let b_all = g.reshape(bp, &[count * d, mm])?;
        Ok(Some(g.matmul(h, b_all)?))
    }

    /// Top-k sparse dispatch of `Σ_e w[:, e] · (dropout_e(x) A[e]ᵀ) B[e]ᵀ`: one
    /// `RoutedProject` projects each row on its selected experts' factors under their masks
    /// (the other experts' blocks stay 0), the gate weighs each block, and one product applies
    /// the stacked `B`. The masks are drawn once as bits (`RoutedKeep`) and read again by its
    /// gradients (`RoutedExpand`, `RoutedOuter`), so no dropped copy of `x` is stored.
    #[allow(clippy::too_many_arguments)]
    fn routed_sum(
        &mut self,
        g: &mut Graph,
        x: NodeId,
        seed: NodeId,
        p: f32,
        salts: Vec<u64>,
        w: NodeId,
        router: Gate,
        f: &RoutedFactors,
    ) -> R<NodeId> {
        let xs = g.shape(x).to_vec();
        let e = salts.len();
        let t: usize = xs[..xs.len() - 1].iter().product();
        let xf = g.reshape(x, &[t, f.n])?;
        let mask = g.reshape(router.mask, &[t, e])?;
        let wf = g.reshape(w, &[t, e])?;
        let a_all = g.reshape(f.a, &[e * f.d, f.n])?;
        let keep = Op::RoutedKeep {
            p,
            salts,
            k: router.k,
            n: f.n,
        };
        let keep = g.add(keep, &[mask, seed])?;
        let op = Op::RoutedProject { p, k: router.k };
        let u = g.add(op, &[xf, a_all, mask, keep])?;
        let wc = gate_columns(g, wf, f.d)?;
        let z = g.times(u, wc)?;
        let bp = g.permute(f.b, &[0, 2, 1])?;
        let b_all = g.reshape(bp, &[e * f.d, f.m])?;
        let out = g.matmul(z, b_all)?;
        let mut os = xs[..xs.len() - 1].to_vec();
        os.push(f.m);
        g.reshape(out, &os)
    }

    fn expert_count(&mut self, g: &mut Graph, var: &str) -> R<Option<usize>> {
        let hi = self.def.body.iter().find_map(|s| match s {
            Stmt::Experts { var: v, hi, .. } if v.name == var => Some(hi.clone()),
            _ => None,
        });
        match hi {
            Some(h) => Ok(Some(self.num(g, &h)? as usize)),
            None => Ok(None),
        }
    }
}

/// A gate `[..., E]` with each expert's column repeated over its `d` rank columns:
/// `[..., E·d]`, to weigh a stacked projection block by block.
fn gate_columns(g: &mut Graph, gate: NodeId, d: usize) -> R<NodeId> {
    let gs = g.shape(gate).to_vec();
    let mut col = gs.clone();
    col.push(1);
    let g3 = g.reshape(gate, &col)?;
    let mut wide = gs.clone();
    wide.push(d);
    let gb = g.bc(g3, &wide)?;
    let mut flat = gs[..gs.len() - 1].to_vec();
    flat.push(gs[gs.len() - 1] * d);
    g.reshape(gb, &flat)
}
