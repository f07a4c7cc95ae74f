//! Seeded dropout: `x · keep / (1 − p)` where `keep` is drawn per element from a counter-based
//! hash of (run seed, site salt, element index). No state: the same seed gives the same mask on
//! every backend, and resuming a run at step t redraws exactly the masks of step t.

use super::Ins;
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::Tensor;

/// splitmix64's finaliser: a bijective 64-bit mix.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream of one (seed, site): element `i`'s draw comes from `mix(stream + i / 2)`
/// ([`draw_at`]).
#[inline]
pub fn stream(seed: u64, salt: u64) -> u64 {
    mix(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Element `i`'s 24-bit draw: each mix feeds two elements, one per 32-bit half (element
/// `2m` the low half of `mix(stream + m)`, `2m + 1` the high), each half's top 24 bits. Half
/// the multiplies of one mix per element, and in 32-bit lanes element `i` sits in lane `i`,
/// so a 16-lane test needs no shuffle (`exec::mask`).
#[inline]
pub fn draw_at(stream: u64, i: u64) -> u32 {
    let h = mix(stream.wrapping_add(i >> 1));
    ((h >> (32 * (i & 1))) as u32) >> 8
}

/// True when element `i` of a stream is kept: its uniform draw in [0, 1) (24 bits,
/// [`draw_at`]) is at least `p`.
#[inline]
pub fn keep_at(stream: u64, i: u64, p: f32) -> bool {
    (draw_at(stream, i) as f32) * (1.0 / 16_777_216.0) >= p
}

/// True when element `i` is kept: its uniform draw in [0, 1) (24 bits) is at least `p`.
pub fn keep(seed: u64, salt: u64, i: u64, p: f32) -> bool {
    keep_at(stream(seed, salt), i, p)
}

/// A kept element's factor, `1 / (1 − p)`: what every backend and form of dropout multiplies by.
#[inline]
pub fn kept_factor(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// The per-element factor of a stream: [`kept_factor`] when kept, else 0.
#[inline]
pub fn factor_at(stream: u64, i: u64, p: f32) -> f32 {
    if keep_at(stream, i, p) {
        kept_factor(p)
    } else {
        0.0
    }
}

/// The per-element factor: `1 / (1 − p)` when kept, else 0.
pub fn factor(seed: u64, salt: u64, i: u64, p: f32) -> f32 {
    factor_at(stream(seed, salt), i, p)
}

/// Shape rule: `x` f32 of any shape, the seed one i64.
pub fn infer(_op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    let (x, seed) = (ins[0], ins[1]);
    if x.1 != DType::F32 || seed.1 != DType::I64 || seed.0.iter().product::<usize>() != 1 {
        return Err(format!(
            "dropout needs f32 values and one i64 seed, got {:?} and {:?}{:?}",
            x.1, seed.1, seed.0
        ));
    }
    Ok((x.0.to_vec(), DType::F32))
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    let Op::Dropout { p, salt } = op else {
        return Err("not dropout".into());
    };
    let (x, seed) = (ins[0], ins[1].i()[0] as u64);
    let v = x
        .f()
        .iter()
        .enumerate()
        .map(|(i, &v)| v * factor(seed, *salt, i as u64, *p))
        .collect();
    Ok(Tensor::f32(x.shape.clone(), v))
}

/// VJP: the same mask on the gradient (dropout is linear in x for a fixed seed).
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    let dx = if needs[0] {
        Some(g.add(op.clone(), &[dy, ins[1]])?)
    } else {
        None
    };
    Ok(vec![dx, None])
}
