//! Maps with `exp`, `erf` or a fused product (`Dot`) on a host with AVX-512: each row's
//! vector part runs in chunks, and each chunk in phases. A phase is an f32x4 loop over the
//! chunk for the instructions of one level; before each phase's loop, one call per
//! transcendental or product of that level computes it over the whole chunk 16 lanes at a
//! time ([`super::wide`], [`super::wide_dot`]). Values that cross a phase boundary go through
//! scratch rows on the stack (L1-resident). Every element sees the same operations as in the
//! one-loop form, so results are unchanged bit for bit; only the lane width differs.

use super::codegen::{mem, RowOp};
use super::math::Math;
use super::wide;
use crate::lower::kernel::{dot_k, Form, Inst, Kernel};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, Block, BlockArg, FuncRef, InstBuilder, StackSlotData, StackSlotKind, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// Elements per chunk: a scratch row is 2 KiB, so a handful stay in L1 while one call's
/// overhead is spread over 32 sixteen-lane vectors.
const CHUNK: i64 = 512;

/// Most scratch rows a phased kernel may use (32 KiB of stack); larger bodies keep the
/// one-loop form, so a huge fused kernel cannot grow a pool thread's stack frame unbounded.
const MAX_SLOTS: usize = 16;

/// How a map's body splits into phases.
pub struct Phases {
    /// Level of each instruction: loads and constants 0 (they are re-read where needed);
    /// a wide transcendental one more than its argument, a product (`Dot`, a wide call on
    /// factor operands only) 0; anything else its operands' maximum.
    level: Vec<usize>,
    /// Scratch row of each value that crosses a phase boundary.
    slot: Vec<Option<usize>>,
    /// Scratch rows in all.
    slots: usize,
    /// Number of phases (the highest level + 1).
    phases: usize,
}

impl Phases {
    /// Number of phases (one more than the deepest chain of wide instructions).
    pub fn count(&self) -> usize {
        self.phases
    }
}

/// A wide instruction's function (index into [`wide::NAMES`]) and argument.
fn wide_call(i: &Inst) -> Option<(usize, usize)> {
    match *i {
        Inst::Unary(u, a) => wide::index(u).map(|f| (f, a)),
        _ => None,
    }
}

/// Whether `i` is computed by a wide call: a transcendental, or a product ([`Inst::Dot`],
/// level 0: it reads only the kernel's factor operands).
fn is_wide(i: &Inst) -> bool {
    wide_call(i).is_some() || matches!(i, Inst::Dot(..))
}

/// Address of scratch row `s` (rows are `CHUNK` elements apart).
fn slot_addr(b: &mut FunctionBuilder, scratch: Value, s: usize) -> Value {
    b.ins().iadd_imm_s(scratch, s as i64 * CHUNK * 4)
}

/// A counted loop `i = 0, step, 2·step, … < end`, opened by [`open_loop`] (the builder then
/// sits in its body) and closed by [`close_loop`] (the builder then sits after it).
struct Loop {
    hdr: Block,
    after: Block,
    i: Value,
    step: i64,
}

fn open_loop(b: &mut FunctionBuilder, end: Value, step: i64) -> Loop {
    let hdr = b.create_block();
    b.append_block_param(hdr, types::I64);
    let body = b.create_block();
    let after = b.create_block();
    let zero = b.ins().iconst(types::I64, 0);
    b.ins().jump(hdr, &[BlockArg::Value(zero)]);
    b.switch_to_block(hdr);
    let i = b.block_params(hdr)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(more, body, &[], after, &[]);
    b.switch_to_block(body);
    Loop {
        hdr,
        after,
        i,
        step,
    }
}

fn close_loop(b: &mut FunctionBuilder, l: Loop) {
    let next = b.ins().iadd_imm_s(l.i, l.step);
    b.ins().jump(l.hdr, &[BlockArg::Value(next)]);
    b.switch_to_block(l.after);
}

fn operands(i: &Inst) -> Vec<usize> {
    match *i {
        Inst::Unary(_, a) => vec![a],
        Inst::Binary(_, x, y) => vec![x, y],
        Inst::Load(_) | Inst::Const(_) | Inst::Dot(..) => vec![],
    }
}

/// Most bytes of product factors (`k × inner` values each, summed over a map's products)
/// for which a map runs in phases for its products alone: the wide call reads its factor
/// once per row, so the factors must stay in L1. Measured on MiniLM's maps: `[8 x 384]`
/// (12 KiB) 0.46 → 0.35 ms a call; `[8 x 1536]` (48 KiB) 1.23 → 1.39 ms, so larger factors
/// keep the one-loop form unless a transcendental pays for it.
const DOT_ALONE_BYTES: usize = 32 << 10;

/// The phases of `k`, when it is a map with a transcendental (or products whose factors
/// fit [`DOT_ALONE_BYTES`]), at least 16 vector elements per row, and at most
/// [`MAX_SLOTS`] values crossing phases.
pub fn plan(k: &Kernel) -> Option<Phases> {
    let transcendental = k.body.iter().any(|i| wide_call(i).is_some());
    let factor_bytes: usize = k
        .body
        .iter()
        .map(|i| match *i {
            Inst::Dot(a, _) => dot_k(k.operands[a]) * k.inner * 4,
            _ => 0,
        })
        .sum();
    // `Kernel::check` gives every product k > 0, so any product makes this positive.
    let small_dots = factor_bytes > 0 && factor_bytes <= DOT_ALONE_BYTES;
    let eligible = k.form == Form::Map && k.inner / 4 * 4 >= 16 && (transcendental || small_dots);
    if !eligible {
        return None;
    }
    let n = k.body.len();
    let mut level = vec![0usize; n];
    for (i, inst) in k.body.iter().enumerate() {
        level[i] = match wide_call(inst) {
            Some((_, a)) => level[a] + 1,
            None => operands(inst).iter().map(|&a| level[a]).max().unwrap_or(0),
        };
    }
    let reread = |v: usize| matches!(k.body[v], Inst::Load(_) | Inst::Const(_));
    let mut crosses = vec![false; n];
    for (u, inst) in k.body.iter().enumerate() {
        if let Some((_, a)) = wide_call(inst) {
            // The call reads its argument, and writes its result, in scratch.
            crosses[a] = true;
            crosses[u] = true;
        } else if matches!(inst, Inst::Dot(..)) {
            crosses[u] = true;
        } else {
            for a in operands(inst) {
                if level[a] < level[u] && !reread(a) {
                    crosses[a] = true;
                }
            }
        }
    }
    // Outputs are all stored in the last phase, after every operand read there: a map may
    // write over an operand it reads (`memplan::in_place`), and earlier phases re-read loads.
    let last = level.iter().copied().max().unwrap_or(0);
    for &v in &k.outputs {
        if level[v] < last && !reread(v) {
            crosses[v] = true;
        }
    }
    let mut slot = vec![None; n];
    let mut slots = 0;
    for (v, s) in slot.iter_mut().enumerate() {
        if crosses[v] {
            *s = Some(slots);
            slots += 1;
        }
    }
    if slots > MAX_SLOTS {
        return None;
    }
    Some(Phases {
        phases: level.iter().max().map_or(1, |m| m + 1),
        level,
        slot,
        slots,
    })
}

/// Emits the chunked phases for `j` in `0..nvec` of the current row (`rows`, `outs` as the
/// one-loop form addresses them); `wide_fns` are the imported [`wide::NAMES`], then
/// [`super::wide_dot::NAME`].
#[allow(clippy::too_many_arguments)]
pub(super) fn emit(
    b: &mut FunctionBuilder,
    k: &Kernel,
    p: &Phases,
    m: &Math,
    rows: &[RowOp],
    outs: &[Value],
    nvec: i64,
    wide_fns: &[FuncRef],
) {
    let ss = b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        (p.slots as i64 * CHUNK * 4) as u32,
        6,
    ));
    let scratch = b.ins().stack_addr(types::I64, ss, 0);
    let end = b.ins().iconst(types::I64, nvec);
    let chunks = open_loop(b, end, CHUNK);
    let c0 = chunks.i;
    let rem = b.ins().isub(end, c0);
    let full = b.ins().iconst(types::I64, CHUNK);
    let len = b.ins().umin(rem, full);
    for q in 0..p.phases {
        // The wide instructions of level q (only products at level 0), over the chunk, in
        // body order.
        for (w, inst) in k.body.iter().enumerate() {
            if p.level[w] != q || !is_wide(inst) {
                continue;
            }
            let dst = slot_addr(b, scratch, p.slot[w].expect("a wide result has a slot"));
            if let Inst::Dot(qa, qb) = *inst {
                let (RowOp::DotRows(row, _), RowOp::DotCols(base)) = (rows[qa], rows[qb]) else {
                    unreachable!("Dot reads a DotRows and a DotCols operand (Kernel::check)")
                };
                let c0b = b.ins().ishl_imm_u(c0, 2);
                let col = b.ins().iadd(base, c0b);
                let stride = b.ins().iconst(types::I64, k.inner as i64);
                let kk = b.ins().iconst(types::I64, dot_k(k.operands[qa]) as i64);
                let dot = wide_fns[wide::NAMES.len()];
                b.ins().call(dot, &[row, col, stride, kk, dst, len]);
            } else if let Some((f, a)) = wide_call(inst) {
                let src = slot_addr(b, scratch, p.slot[a].expect("a wide argument has a slot"));
                b.ins().call(wide_fns[f], &[src, dst, len]);
            }
        }
        phase_loop(b, k, p, q, m, rows, outs, c0, len, scratch);
    }
    close_loop(b, chunks);
}

/// The f32x4 loop of phase `q` over the chunk at `c0` of `len` elements.
#[allow(clippy::too_many_arguments)]
fn phase_loop(
    b: &mut FunctionBuilder,
    k: &Kernel,
    p: &Phases,
    q: usize,
    m: &Math,
    rows: &[RowOp],
    outs: &[Value],
    c0: Value,
    len: Value,
    scratch: Value,
) {
    let lp = open_loop(b, len, 4);
    let j = lp.i;
    let sbyte = b.ins().ishl_imm_u(j, 2);
    let at = b.ins().iadd(c0, j);
    let byte = b.ins().ishl_imm_u(at, 2);
    let row_of = |b: &mut FunctionBuilder, s: usize| {
        let base = slot_addr(b, scratch, s);
        b.ins().iadd(base, sbyte)
    };
    let mut vals: HashMap<usize, Value> = HashMap::new();
    // A value as this phase sees it: re-read (loads, constants), computed here, or from
    // its scratch row.
    let get = |b: &mut FunctionBuilder, vals: &mut HashMap<usize, Value>, v: usize| {
        if let Some(&x) = vals.get(&v) {
            return x;
        }
        let x = match k.body[v] {
            Inst::Load(o) => match rows[o] {
                RowOp::Ptr(ptr) => {
                    let a = b.ins().iadd(ptr, byte);
                    b.ins().load(m.ty, mem(), a, 0)
                }
                RowOp::Scalar(s) => b.ins().splat(types::F32X4, s),
                RowOp::DotRows(..) | RowOp::DotCols(_) => {
                    unreachable!("only Dot reads a product's factors (Kernel::check)")
                }
            },
            Inst::Const(c) => m.k(b, c),
            _ => {
                let a = row_of(
                    b,
                    p.slot[v].expect("a value from an earlier phase has a slot"),
                );
                b.ins().load(types::F32X4, mem(), a, 0)
            }
        };
        vals.insert(v, x);
        x
    };
    for (u, inst) in k.body.iter().enumerate() {
        if p.level[u] != q || is_wide(inst) {
            continue;
        }
        let x = match *inst {
            Inst::Unary(op, a) => {
                let a = get(b, &mut vals, a);
                m.unary(b, op, a)
            }
            Inst::Binary(op, x, y) => {
                let (x, y) = (get(b, &mut vals, x), get(b, &mut vals, y));
                m.binary(b, op, x, y)
            }
            Inst::Load(_) | Inst::Const(_) | Inst::Dot(..) => continue,
        };
        vals.insert(u, x);
    }
    // Values of this level that later phases or calls read; after the last phase, the outputs.
    for v in 0..k.body.len() {
        if let (Some(s), true) = (p.slot[v], p.level[v] == q && !is_wide(&k.body[v])) {
            let x = get(b, &mut vals, v);
            let a = row_of(b, s);
            b.ins().store(mem(), x, a, 0);
        }
    }
    if q + 1 == p.phases {
        let xs: Vec<Value> = k.outputs.iter().map(|&v| get(b, &mut vals, v)).collect();
        for (o, x) in xs.into_iter().enumerate() {
            let a = b.ins().iadd(outs[o], byte);
            b.ins().store(mem(), x, a, 0);
        }
    }
    close_loop(b, lp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, UnaryOp};
    use crate::lower::cpu::compile_with;
    use crate::lower::kernel::Access;

    /// A map over 3 rows of `inner`: operand 0 read per element, operand 1 once per row.
    fn map3(inner: usize, body: &[Inst], outputs: &[usize]) -> Kernel {
        Kernel {
            name: "phased".into(),
            form: Form::Map,
            rows: 3,
            inner,
            operands: vec![Access::Vec { div: 1 }, Access::Splat { div: 1 }],
            body: body.to_vec(),
            outputs: outputs.to_vec(),
        }
    }

    /// Runs `k` compiled with forced phases on `x` and the row scalars `s`, output `over`
    /// (if any) written over `x`'s own buffer, and checks every output against the kernel
    /// interpreter bit for bit.
    fn check_forced(k: &Kernel, x: &[f32], s: &[f32], over: Option<usize>) {
        check_forced_with(k, x, s, &[], over);
    }

    /// [`check_forced`] with further operands after `x` and `s` (a product's factors).
    fn check_forced_with(k: &Kernel, x: &[f32], s: &[f32], more: &[&[f32]], over: Option<usize>) {
        let len = k.rows * k.inner;
        let mut want = vec![vec![0f32; len]; k.outputs.len()];
        let ins: Vec<&[f32]> = [x, s].into_iter().chain(more.iter().copied()).collect();
        k.eval_host(&ins, &mut want);
        let compiled = compile_with(std::slice::from_ref(k), true).unwrap();
        let mut got = vec![vec![-7f32; len]; k.outputs.len()];
        let mut operand = x.to_vec();
        if let Some(o) = over {
            got[o] = x.to_vec();
        }
        let mut ptrs: Vec<*mut f32> = got.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let x_ptr = over.map_or(operand.as_mut_ptr(), |o| ptrs[o]);
        let factors = more.iter().map(|m| m.as_ptr() as *mut f32);
        ptrs.splice(
            0..0,
            [x_ptr, s.as_ptr() as *mut f32].into_iter().chain(factors),
        );
        // SAFETY: operands and outputs hold the lengths the kernel reads and writes; a shared
        // buffer is read at each point before it is written there.
        unsafe { (compiled.fns[0])(ptrs.as_ptr(), 0, k.rows as i64) };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (o, (g, w)) in got.iter().zip(&want).enumerate() {
            let at = format!("output {o}, written over x: {over:?}, inner {}", k.inner);
            assert_eq!(bits(g), bits(w), "{at}");
        }
    }

    /// The phase split computed by compiled code (forced, so on any host: without AVX-512
    /// the calls take their scalar path) equals the kernel interpreter bit for bit: nested
    /// calls, a load as a call's argument, a per-row scalar, values crossing two levels and
    /// outputs from levels 0, 1 and 2, for rows of one, several and partial chunks plus tails.
    #[test]
    fn forced_phases_equal_the_interpreter() {
        use BinaryOp::*;
        let body = [
            Inst::Load(0),                // v0 = x
            Inst::Load(1),                // v1 = per-row scalar
            Inst::Binary(Mul, 0, 1),      // v2 = x·s        (level 0, output)
            Inst::Unary(UnaryOp::Exp, 0), // v3 = exp(x)     (level 1, a load's call)
            Inst::Const(0.1),             // v4
            Inst::Binary(Mul, 3, 4),      // v5 = 0.1·exp(x) (level 1)
            Inst::Unary(UnaryOp::Erf, 5), // v6 = erf(v5)    (level 2)
            Inst::Binary(Add, 6, 2),      // v7 = v6 + v2    (v2 crosses 0 → 2)
            Inst::Binary(Sub, 5, 2),      // v8 (level 1, output)
        ];
        for inner in [16, 50, 513, 783, 1030, 1536] {
            let k = map3(inner, &body, &[2, 7, 8]);
            let p = plan(&k).expect("eligible");
            assert_eq!(p.count(), 3);
            let x: Vec<f32> = (0..3 * inner)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 90.0)
                .collect();
            check_forced(&k, &x, &[0.5, -1.25, 3.0], None);
        }
    }

    /// Fused products run as wide calls at level 0 (before a transcendental, and after one's
    /// result is needed; alone while the factors fit in L1, else the one-loop form): equal
    /// to the interpreter bit for bit at ranks 1, 3 and 8, for rows of one, several and
    /// partial chunks plus tails, written over `x` or not. (The calls' AVX-512 paths are
    /// checked here on AVX-512 hosts, as CI's; elsewhere the scalar ones.)
    #[test]
    fn phased_products_equal_the_interpreter() {
        use BinaryOp::*;
        let body = [
            Inst::Load(0),                // v0 = x
            Inst::Load(1),                // v1 = per-row scalar
            Inst::Dot(2, 3),              // v2 = z·B (level 0, a call)
            Inst::Binary(Add, 2, 0),      // v3 = v2 + x
            Inst::Binary(Mul, 3, 1),      // v4 = v3·s (output)
            Inst::Unary(UnaryOp::Exp, 4), // v5 (level 1)
            Inst::Binary(Mul, 5, 2),      // v6 = v5·v2 (output: v2 crosses 0 → 1)
        ];
        for rank in [1, 3, 8] {
            for inner in [16, 50, 513, 783, 1536] {
                let mut k = map3(inner, &body, &[4, 6]);
                k.operands
                    .extend([Access::DotRows { k: rank }, Access::DotCols { k: rank }]);
                let p = plan(&k).expect("eligible");
                assert_eq!(p.count(), 2);
                let x: Vec<f32> = (0..3 * inner)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 900.0)
                    .collect();
                let z: Vec<f32> = (0..3 * rank).map(|i| (i as f32 - 4.0) * 0.31).collect();
                let bm: Vec<f32> = (0..rank * inner)
                    .map(|i| ((i * 104_729 % 1000) as f32 - 500.0) / 700.0)
                    .collect();
                for over in [None, Some(0)] {
                    check_forced_with(&k, &x, &[0.5, -1.25, 3.0], &[&z, &bm], over);
                }
                // A product alone is a one-phase map while its factor fits in L1.
                let alone = [Inst::Load(0), Inst::Dot(1, 2), Inst::Binary(Add, 1, 0)];
                let mut k = map3(inner, &alone, &[2]);
                k.operands[1] = Access::DotRows { k: rank };
                k.operands.push(Access::DotCols { k: rank });
                let fits = rank * inner * 4 <= DOT_ALONE_BYTES;
                assert_eq!(
                    plan(&k).map(|p| p.count()),
                    fits.then_some(1),
                    "{rank} {inner}"
                );
                let len = 3 * inner;
                let mut want = vec![vec![0f32; len]];
                k.eval_host(&[&x, &z, &bm], &mut want);
                let compiled = compile_with(std::slice::from_ref(&k), true).unwrap();
                let mut got = vec![-7f32; len];
                let ptrs = [x.as_ptr(), z.as_ptr(), bm.as_ptr(), got.as_mut_ptr()];
                // SAFETY: operands and the output hold the lengths the kernel touches.
                unsafe { (compiled.fns[0])(ptrs.as_ptr() as *const *mut f32, 0, 3) };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want[0]), "rank {rank} inner {inner}");
            }
        }
    }

    /// Any output may be written over the operand it is computed from (`memplan::in_place`):
    /// every phase re-reads `x`, and the level-0 output is stored only after the last phase
    /// has read it, so each output, written in place, still equals the interpreter bit for bit.
    #[test]
    fn phased_outputs_may_overwrite_their_operand() {
        use BinaryOp::*;
        let body = [
            Inst::Load(0),
            Inst::Load(1),
            Inst::Binary(Mul, 0, 1),      // v2: level 0
            Inst::Unary(UnaryOp::Exp, 0), // v3: level 1, re-reads x
            Inst::Unary(UnaryOp::Erf, 3), // v4: level 2
            Inst::Binary(Add, 4, 0),      // v5: level 2, re-reads x
        ];
        for inner in [16, 50, 783] {
            let k = map3(inner, &body, &[2, 5]);
            let x: Vec<f32> = (0..3 * inner)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
                .collect();
            for over in 0..2 {
                check_forced(&k, &x, &[0.5, -1.25, 3.0], Some(over));
            }
        }
    }

    /// Bodies crossing more values than [`MAX_SLOTS`] keep the one-loop form.
    #[test]
    fn too_many_crossing_values_are_not_phased() {
        let mut body = vec![Inst::Load(0)];
        for i in 0..=MAX_SLOTS {
            body.push(Inst::Binary(BinaryOp::Add, 0, i));
        }
        let last = body.len() - 1;
        body.push(Inst::Unary(UnaryOp::Exp, last));
        let e = body.len() - 1;
        for i in 1..=MAX_SLOTS + 1 {
            body.push(Inst::Binary(BinaryOp::Mul, e, i));
        }
        let k = Kernel {
            name: "wide".into(),
            form: Form::Map,
            rows: 1,
            inner: 64,
            operands: vec![Access::Vec { div: 1 }],
            outputs: vec![body.len() - 1],
            body,
        };
        assert!(plan(&k).is_none());
    }
}
