//! Top-k sparse dispatch of routed experts under per-expert dropout: the down-projection of
//! each row on its selected experts' factors (`RoutedProject`) and its two gradients
//! (`RoutedExpand` for the input, `RoutedOuter` for the factors). Slot `i` of a row is its
//! `i`-th selected expert in index order, on every backend. The dropout draws are made once
//! (`RoutedKeep`: one bit per element of each selected expert's row, `[T, k, ⌈n/64⌉]`
//! words) and read by all three, so no `[T, k, n]` dropped copy is ever stored and no draw
//! is hashed twice.

use super::random::{keep_at, kept_factor, stream};
use super::Ins;
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{DType, Op};
use crate::ir::tensor::Tensor;

/// Lanes of [`dot16`]: one AVX-512 register of f32.
pub const LANES: usize = 16;

/// Rows per block of `RoutedOuter`'s sums (blocks run in parallel on the CPU).
pub const OUTER_ROWS: usize = 256;

/// The experts row `row` of a top-k mask selects, in index order, at most `k`.
#[inline]
pub fn selected(row: &[f32], k: usize) -> impl Iterator<Item = usize> + '_ {
    row.iter()
        .enumerate()
        .filter(|(_, &m)| m != 0.0)
        .map(|(e, _)| e)
        .take(k)
}

/// Combines the 16 lane sums of [`dot16`]: lane `l` adds lane `l + w` for `w` = 8, 4, 2, 1.
#[inline(always)]
pub fn combine16(mut s: [f32; LANES]) -> f32 {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            s[l] += s[l + w];
        }
    }
    s[0]
}

/// `Σ_j u[j]·a[j]` as routed projections define it (`u` the dropped row, each `x[j]·f[j]`
/// rounded): lane `l` is one fused multiply-add chain over `j ≡ l (mod 16)` in order,
/// starting from +0, then [`combine16`]. Vectorised code keeps the lanes in one register.
#[inline(always)]
pub fn dot16(u: &[f32], a: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    for (j, (&u, &a)) in u.iter().zip(a).enumerate() {
        s[j % LANES] = u.mul_add(a, s[j % LANES]);
    }
    combine16(s)
}

/// `out[j] = Σ_q g[q] · a[q, j]`, one fused multiply-add chain per `j` over `q` in order,
/// skipping `q` where `g[q]` is zero (the definition [`Op::RoutedExpand`] uses; the CPU host
/// op vectorises over `j` with the same chains). Always inlined, so a caller compiled with
/// FMA instructions gets them here too.
#[inline(always)]
pub fn expand_row(g: &[f32], a: &[f32], n: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for (q, &gq) in g.iter().enumerate() {
        if gq == 0.0 {
            continue;
        }
        for (o, &aq) in out.iter_mut().zip(&a[q * n..(q + 1) * n]) {
            *o = gq.mul_add(aq, *o);
        }
    }
}

/// Words of keep bits per slot for rows of `n` elements.
pub fn words(n: usize) -> usize {
    n.div_ceil(64)
}

/// Whether element `j` is kept, in a slot's words.
#[inline]
pub fn kept(w: &[i64], j: usize) -> bool {
    (w[j / 64] as u64 >> (j % 64)) & 1 == 1
}

/// Fills `out` (`words(n)` words) with the keep bits of elements `first..first + n` of
/// `stream` (`random::keep_at`); bits past `n` are 0.
pub fn keep_words(stream: u64, first: u64, p: f32, n: usize, out: &mut [i64]) {
    out.fill(0);
    for j in 0..n {
        if keep_at(stream, first + j as u64, p) {
            out[j / 64] |= 1 << (j % 64);
        }
    }
}

/// Per-expert dropout streams of a seed (`random::stream` of each salt).
pub fn streams(seed: u64, salts: &[u64]) -> Vec<u64> {
    salts.iter().map(|&s| stream(seed, s)).collect()
}

/// Checks the top-k mask `[T, E]`; returns `(T, E)`.
fn mask_shape(m: (&[usize], DType)) -> Result<(usize, usize), String> {
    match (m.0, m.1) {
        ([t, e], DType::F32) if *e > 0 => Ok((*t, *e)),
        _ => Err(format!(
            "routed ops need an f32 top-k mask [T, E], got {:?}",
            m.0
        )),
    }
}

/// A routed op's keep bits (operand 3) must come from a `RoutedKeep` of the same dropout
/// rate, slot count and row width: shapes alone cannot tell (another width or `k` can give
/// the same word count). Other ops pass.
pub fn check_keep(op: &Op, keep: &Op, ins: &Ins<'_>) -> Result<(), String> {
    let (Op::RoutedProject { p, k } | Op::RoutedExpand { p, k } | Op::RoutedOuter { p, k }) = op
    else {
        return Ok(());
    };
    // The row width the bits cover: x's for the projection and the factors' gradient, the
    // factors' for the input gradient (`infer` checked the shapes agree).
    let n = match op {
        Op::RoutedProject { .. } => ins[0].0[1],
        _ => ins[1].0[1],
    };
    let Op::RoutedKeep {
        p: kp,
        k: kk,
        n: kn,
        ..
    } = keep
    else {
        return Err(format!(
            "keep bits must come from routed_keep, not {}",
            keep.name()
        ));
    };
    if kp.to_bits() == p.to_bits() && kk == k && *kn == n {
        Ok(())
    } else {
        Err(format!(
            "keep bits drawn for p = {kp}, k = {kk}, rows of {kn}; this op has p = {p}, \
             k = {k}, rows of {n}"
        ))
    }
}

/// Shape rules.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    if let Op::RoutedKeep { salts, k, n, .. } = op {
        let (t, e) = mask_shape(ins[0])?;
        let seed = ins[1];
        if seed.1 != DType::I64 || seed.0.iter().product::<usize>() != 1 {
            return Err("routed_keep needs one i64 seed".into());
        }
        if e != salts.len() || *k == 0 {
            return Err(format!(
                "routed_keep: a mask of {e} experts, {} salts, k = {k}",
                salts.len()
            ));
        }
        return Ok((vec![t, k * words(*n)], DType::I64));
    }
    let (Op::RoutedProject { k, .. } | Op::RoutedExpand { k, .. } | Op::RoutedOuter { k, .. }) = op
    else {
        return Err(format!("not a routing op: {}", op.name()));
    };
    if ins[0].1 != DType::F32 || ins[1].1 != DType::F32 {
        return Err(format!("{} needs f32 values and factors", op.name()));
    }
    let (t, e) = mask_shape(ins[2])?;
    let (u, v) = (ins[0].0, ins[1].0);
    let bad = || {
        format!(
            "{}: operands {u:?} and {v:?} do not fit {t} rows of {e} experts",
            op.name()
        )
    };
    let (rows, out, n) = match (op, u, v) {
        // x[T, n], a[Q, n] → [T, Q]
        (Op::RoutedProject { .. }, [r, n], [q, na]) if n == na => (*r, vec![*r, *q], *n),
        // g[T, Q], a[Q, n] → [T, n]
        (Op::RoutedExpand { .. }, [r, q], [qa, n]) if q == qa => (*r, vec![*r, *n], *n),
        // g[T, Q], x[T, n] → [Q, n]
        (Op::RoutedOuter { .. }, [r, q], [rx, n]) if r == rx => (*r, vec![*q, *n], *n),
        _ => return Err(bad()),
    };
    let q = match op {
        Op::RoutedExpand { .. } | Op::RoutedOuter { .. } => u[1],
        _ => v[0],
    };
    if rows != t || q % e != 0 {
        return Err(bad());
    }
    if ins[3].1 != DType::I64 || ins[3].0 != [t, k * words(n)] {
        return Err(format!(
            "{}: keep bits {:?} for {t} rows of {k} slots of {n} elements",
            op.name(),
            ins[3].0
        ));
    }
    Ok((out, DType::F32))
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    if let Op::RoutedKeep { p, salts, k, n } = op {
        let (m, seed) = (ins[0], ins[1]);
        let st = streams(seed.i()[0] as u64, salts);
        let (t, e, w) = (m.shape[0], m.shape[1], words(*n));
        let mut out = vec![0i64; t * k * w];
        for r in 0..t {
            for (i, ex) in selected(&m.f()[r * e..(r + 1) * e], *k).enumerate() {
                let at = (r * k + i) * w;
                keep_words(st[ex], (r * n) as u64, *p, *n, &mut out[at..at + w]);
            }
        }
        return Ok(Tensor::i64(vec![t, k * w], out));
    }
    let (Op::RoutedProject { p, k } | Op::RoutedExpand { p, k } | Op::RoutedOuter { p, k }) = op
    else {
        return Err(format!("not a routing op: {}", op.name()));
    };
    let (u, v, m, keep) = (ins[0], ins[1], ins[2], ins[3].i());
    let (t, e) = (m.shape[0], m.shape[1]);
    let sel = |r: usize| selected(&m.f()[r * e..(r + 1) * e], *k);
    let scale = kept_factor(*p);
    // The factors of row `r`'s slot `i` (`random::factor_at`'s values, from the bits).
    let masks = |r: usize, i: usize, n: usize| -> Vec<f32> {
        let w = &keep[(r * k + i) * words(n)..];
        (0..n)
            .map(|j| if kept(w, j) { scale } else { 0.0 })
            .collect()
    };
    match op {
        Op::RoutedProject { .. } => {
            let (x, a) = (u.f(), v.f());
            let (q, n) = (v.shape[0], v.shape[1]);
            let d = q / e;
            let mut out = vec![0f32; t * q];
            for r in 0..t {
                let xr = &x[r * n..(r + 1) * n];
                for (i, ex) in sel(r).enumerate() {
                    let f = masks(r, i, n);
                    let u: Vec<f32> = xr.iter().zip(&f).map(|(x, f)| x * f).collect();
                    for c in ex * d..(ex + 1) * d {
                        out[r * q + c] = dot16(&u, &a[c * n..(c + 1) * n]);
                    }
                }
            }
            Ok(Tensor::f32(vec![t, q], out))
        }
        Op::RoutedExpand { .. } => {
            let (g, a) = (u.f(), v.f());
            let (q, n) = (v.shape[0], v.shape[1]);
            let d = q / e;
            let mut out = vec![0f32; t * n];
            let mut row = vec![0f32; n];
            for r in 0..t {
                for (i, ex) in sel(r).enumerate() {
                    let gb = &g[r * q + ex * d..r * q + (ex + 1) * d];
                    expand_row(gb, &a[ex * d * n..(ex + 1) * d * n], n, &mut row);
                    let f = masks(r, i, n);
                    for ((o, &v), &f) in out[r * n..(r + 1) * n].iter_mut().zip(&row).zip(&f) {
                        *o += v * f;
                    }
                }
            }
            Ok(Tensor::f32(vec![t, n], out))
        }
        _ => {
            let (g, x) = (u.f(), v.f());
            let (q, n) = (u.shape[1], v.shape[1]);
            let d = q / e;
            let mut out = vec![0f32; q * n];
            for (b, r0) in (0..t).step_by(OUTER_ROWS).enumerate() {
                let mut acc = vec![0f32; q * n];
                for r in r0..t.min(r0 + OUTER_ROWS) {
                    for (i, ex) in sel(r).enumerate() {
                        let f = masks(r, i, n);
                        for c in ex * d..(ex + 1) * d {
                            let gc = g[r * q + c];
                            for j in 0..n {
                                let xd = x[r * n + j] * f[j];
                                acc[c * n + j] = gc.mul_add(xd, acc[c * n + j]);
                            }
                        }
                    }
                }
                if b == 0 {
                    out = acc;
                } else {
                    out.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
                }
            }
            Ok(Tensor::f32(vec![q, n], out))
        }
    }
}

/// VJP: a routed projection is linear in `x` and in `a` for fixed masks, so its gradients are
/// `RoutedExpand` (for `x`) and `RoutedOuter` (for `a`); masks and seeds get none.
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    match op {
        // Draws: no gradient to the mask or the seed.
        Op::RoutedKeep { .. } => Ok(vec![None, None]),
        &Op::RoutedProject { p, k } => {
            let rest = [ins[2], ins[3]];
            let dx = if needs[0] {
                let op = Op::RoutedExpand { p, k };
                Some(g.add(op, &[dy, ins[1], rest[0], rest[1]])?)
            } else {
                None
            };
            let da = if needs[1] {
                let op = Op::RoutedOuter { p, k };
                Some(g.add(op, &[dy, ins[0], rest[0], rest[1]])?)
            } else {
                None
            };
            Ok(vec![dx, da, None, None])
        }
        // Made by differentiation; never differentiated themselves.
        _ if needs.iter().any(|&n| n) => Err(crate::ir::IrError(format!(
            "{} (a gradient op) has no gradient",
            op.name()
        ))),
        _ => Ok(vec![None; ins.len()]),
    }
}
