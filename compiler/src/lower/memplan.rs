//! Memory planning: every temporary gets an offset in one arena, reusing the bytes of buffers
//! whose last use has passed, and (where the backend allows it) letting a map write its
//! output over an input that it reads for the last time. A verifier checks that no two live
//! buffers overlap, apart from such hand-overs.

use super::kernel::{Access, Form};
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
    /// Whether maps may write over a dying input ([`in_place`]); the verifier accepts exactly
    /// those overlaps when set.
    pub in_place: bool,
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

/// Whether step `i` may write output `o` over input `b`: `i` is a map whose last read of
/// `b` is this one, that reads `b` only at the point it writes (`Access::Vec { div: 1 }`),
/// and both are temporaries of the same type and length. Backends that set
/// [`MemPlan::in_place`] read every operand at a point before storing any output there.
fn hands_over(p: &Plan, live: &[(usize, usize)], i: usize, b: usize, o: usize) -> bool {
    let Step::Kernel { kernel, ins, outs } = &p.steps[i] else {
        return false;
    };
    let k = &p.kernels[*kernel];
    let (bb, ob) = (&p.bufs[b], &p.bufs[o]);
    k.form == Form::Map
        && b != o
        && outs.contains(&o)
        && ins.contains(&b)
        && ins
            .iter()
            .zip(&k.operands)
            .all(|(&q, a)| q != b || *a == Access::Vec { div: 1 })
        && bb.storage == Storage::Temp
        && ob.storage == Storage::Temp
        && bb.dtype == ob.dtype
        && bb.len == ob.len
        && bb.len == k.rows * k.inner
        && live[b].1 == i
        && live[o].0 == i
}

/// For each buffer, the input whose bytes it takes over (see [`hands_over`]); each input is
/// taken by at most one output.
pub fn in_place(p: &Plan, live: &[(usize, usize)]) -> Vec<Option<usize>> {
    let mut from = vec![None; p.bufs.len()];
    let mut taken = vec![false; p.bufs.len()];
    for (i, s) in p.steps.iter().enumerate() {
        let Step::Kernel { ins, outs, .. } = s else {
            continue;
        };
        for &o in outs {
            if let Some(&b) = ins
                .iter()
                .find(|&&b| !taken[b] && hands_over(p, live, i, b, o))
            {
                from[o] = Some(b);
                taken[b] = true;
            }
        }
    }
    from
}

/// Places every temporary (largest first, lowest free offset among time-overlapping ones).
/// With `in_place`, a map's output and the input it takes over ([`in_place`]) form one
/// chain placed as a unit: one offset, live from the first member's start to the last's end.
pub fn plan(p: &Plan, in_place: bool) -> MemPlan {
    let live = lifetimes(p);
    let from = if in_place {
        self::in_place(p, &live)
    } else {
        vec![None; p.bufs.len()]
    };
    let root = |b: usize| root(&from, b);
    let is_temp = |b: usize| p.bufs[b].storage == Storage::Temp && live[b].0 != usize::MAX;
    // Each chain's span, keyed by its first buffer.
    let mut span: Vec<(usize, usize)> = live.clone();
    for b in (0..p.bufs.len()).filter(|&b| is_temp(b) && from[b].is_some()) {
        let r = root(b);
        span[r] = (span[r].0.min(live[b].0), span[r].1.max(live[b].1));
    }
    let mut temps: Vec<usize> = (0..p.bufs.len())
        .filter(|&b| is_temp(b) && from[b].is_none())
        .collect();
    let size = |b: usize| bytes(p.bufs[b].dtype, p.bufs[b].len);
    temps.sort_by_key(|&b| (std::cmp::Reverse(size(b)), span[b].0));
    let mut offset = vec![None; p.bufs.len()];
    let mut placed: Vec<(usize, usize, usize)> = vec![]; // (offset, end, chain)
    let mut peak = 0;
    for b in temps {
        let (s0, s1) = span[b];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(_, _, o)| span[o].0 <= s1 && s0 <= span[o].1)
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
    for b in (0..p.bufs.len()).filter(|&b| is_temp(b) && from[b].is_some()) {
        offset[b] = offset[root(b)];
    }
    MemPlan {
        offset,
        live,
        peak,
        in_place,
    }
}

/// The first buffer of `b`'s hand-over chain.
fn root(from: &[Option<usize>], mut b: usize) -> usize {
    while let Some(a) = from[b] {
        b = a;
    }
    b
}

/// Checks that no two temporaries live at the same time share bytes, and that every
/// temporary a step touches has a place inside the arena. Lifetimes and hand-overs are
/// recomputed here, not taken from the planner. With [`MemPlan::in_place`], the one
/// exception is a map's output at exactly the offset of the input it takes over.
pub fn verify(p: &Plan, m: &MemPlan) -> Result<(), String> {
    let live = lifetimes(p);
    let from = if m.in_place {
        in_place(p, &live)
    } else {
        vec![None; p.bufs.len()]
    };
    let mut spans: Vec<(usize, usize, usize)> = vec![];
    for (b, buf) in p.bufs.iter().enumerate() {
        if buf.storage != Storage::Temp || live[b].0 == usize::MAX {
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
            let time = live[b0].0 <= live[b1].1 && live[b1].0 <= live[b0].1;
            let handed = a0 == a1 && (from[b1] == Some(b0) || from[b0] == Some(b1));
            if time && a0 < e1 && a1 < e0 && !handed {
                return Err(format!(
                    "temporaries {b0} and {b1} are live together and share bytes"
                ));
            }
        }
    }
    Ok(())
}
