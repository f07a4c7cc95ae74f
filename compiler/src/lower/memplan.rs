//! Memory planning: every temporary gets an offset in one arena, reusing the bytes of buffers
//! whose last use has passed. A verifier checks that no two live buffers overlap.

use super::plan::{Plan, Step, Storage};
use crate::ir::DType;

/// Arena alignment in bytes (a cache line; keeps SIMD loads aligned).
pub const ALIGN: usize = 64;

/// Placement of the temporaries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemPlan {
    /// Byte offset per buffer (`None` for inputs and constants).
    pub offset: Vec<Option<usize>>,
    /// `(first step, last step)` each temporary is live; outputs live to the end.
    pub live: Vec<(usize, usize)>,
    /// Arena size in bytes: the peak of simultaneously live temporaries, after packing.
    pub peak: usize,
}

/// Bytes a buffer occupies in the arena.
pub fn bytes(dtype: DType, len: usize) -> usize {
    let b = len
        * match dtype {
            DType::F32 => 4,
            DType::I64 => 8,
        };
    b.div_ceil(ALIGN).max(1) * ALIGN
}

/// Buffers a step reads and writes.
pub fn step_bufs(s: &Step) -> (Vec<usize>, Vec<usize>) {
    match s {
        Step::Kernel { ins, outs, .. } => (ins.clone(), outs.clone()),
        Step::MatMul { a, b, out, .. } => (vec![a.buf, b.buf], vec![*out]),
        Step::Host { ins, out, .. } => (ins.iter().map(|(b, _)| *b).collect(), vec![*out]),
    }
}

/// Lifetimes of the temporaries: `(defining step, last reading step)`.
pub fn lifetimes(p: &Plan) -> Vec<(usize, usize)> {
    let mut live = vec![(usize::MAX, 0); p.bufs.len()];
    for (i, s) in p.steps.iter().enumerate() {
        let (r, w) = step_bufs(s);
        for b in w {
            live[b].0 = live[b].0.min(i);
            live[b].1 = live[b].1.max(i);
        }
        for b in r {
            live[b].1 = live[b].1.max(i);
        }
    }
    for (_, b, _, _) in &p.outputs {
        live[*b].1 = p.steps.len();
    }
    live
}

/// Places every temporary (largest first, lowest free offset among time-overlapping ones).
pub fn plan(p: &Plan) -> MemPlan {
    let live = lifetimes(p);
    let mut temps: Vec<usize> = (0..p.bufs.len())
        .filter(|&b| p.bufs[b].storage == Storage::Temp && live[b].0 != usize::MAX)
        .collect();
    let size = |b: usize| bytes(p.bufs[b].dtype, p.bufs[b].len);
    temps.sort_by_key(|&b| (std::cmp::Reverse(size(b)), live[b].0));
    let mut offset = vec![None; p.bufs.len()];
    let mut placed: Vec<(usize, usize, usize)> = vec![]; // (offset, end, buf)
    let mut peak = 0;
    for b in temps {
        let (s0, s1) = live[b];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(_, _, o)| live[o].0 <= s1 && s0 <= live[o].1)
            .map(|&(a, e, _)| (a, e))
            .collect();
        busy.sort();
        let need = size(b);
        let mut at = 0;
        for (a, e) in busy {
            if a >= at + need {
                break;
            }
            at = at.max(e);
        }
        offset[b] = Some(at);
        placed.push((at, at + need, b));
        peak = peak.max(at + need);
    }
    MemPlan { offset, live, peak }
}

/// Checks that no two temporaries live at the same time share bytes, and that every
/// temporary a step touches has a place inside the arena.
pub fn verify(p: &Plan, m: &MemPlan) -> Result<(), String> {
    let mut spans: Vec<(usize, usize, usize)> = vec![];
    for (b, buf) in p.bufs.iter().enumerate() {
        if buf.storage != Storage::Temp || m.live[b].0 == usize::MAX {
            continue;
        }
        let at = m.offset[b].ok_or(format!("temporary {b} has no place"))?;
        let end = at + bytes(buf.dtype, buf.len);
        if end > m.peak {
            return Err(format!(
                "temporary {b} ends at {end}, past the arena ({})",
                m.peak
            ));
        }
        spans.push((at, end, b));
    }
    for (i, &(a0, e0, b0)) in spans.iter().enumerate() {
        for &(a1, e1, b1) in &spans[i + 1..] {
            let time = m.live[b0].0 <= m.live[b1].1 && m.live[b1].0 <= m.live[b0].1;
            if time && a0 < e1 && a1 < e0 {
                return Err(format!(
                    "temporaries {b0} and {b1} are live together and share bytes"
                ));
            }
        }
    }
    Ok(())
}
