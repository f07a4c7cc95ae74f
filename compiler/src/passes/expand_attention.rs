//! Rewrites attention's score ops (`ir/ops/attention.rs`) into the primitive graph they are
//! defined by, for a backend without kernels for them (CUDA lowers softmax and products but
//! would run `AttnProbs`/`AttnGrad` as host steps, downloading score-sized tensors).
//! `AttnProbs` becomes `Graph::attn_probs_decomposed`; `AttnGrad { scale }(p, g)` becomes
//! `((g − Σ_row g ⊙ p) ⊙ p) · scale`. Both repeat the ops' definitions step for step (the row
//! sum is a `Reduce` sum, `sum_f64` over the same f32 products), so the reference
//! interpreter gives the same bits before and after.

use crate::ir::{Graph, Op, R};

/// Expands every attention op and removes what they leave unused; returns how many it
/// expanded.
pub fn run(g: &mut Graph) -> R<usize> {
    let mut n = 0;
    for id in g.topo()? {
        let ins = g.inputs(id);
        let new = match g.node(id).op {
            Op::AttnProbs { scale } => g.attn_probs_decomposed(ins[0], ins[1], ins[2], scale)?,
            Op::AttnGrad { scale } => {
                let (p, dy) = (ins[0], ins[1]);
                let axis = g.shape(p).len() - 1;
                let gp = g.times(dy, p)?;
                let t = g.sum(gp, axis)?;
                let shape = g.shape(p).to_vec();
                let t = g.bc(t, &shape)?;
                let c = g.minus(dy, t)?;
                let u = g.times(c, p)?;
                g.scale(u, scale)?
            }
            _ => continue,
        };
        g.replace_uses(id, new);
        n += 1;
    }
    if n > 0 {
        super::dce::run(g)?;
    }
    Ok(n)
}
