//! One Cranelift function per fused kernel: `fn(ptrs, r0, r1)` runs rows `r0..r1`, each row as
//! an f32x4 loop over `inner` plus a scalar tail. `ptrs` holds the operand base pointers, then
//! the output base pointers.

use super::math::Math;
use super::phases;
use crate::ir::ReduceOp;
use crate::lower::kernel::{identity, Access, Form, Inst, Kernel};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, Block, BlockArg, ConstantData, Endianness, FuncRef, InstBuilder, MemFlagsData, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Per-row addressing of one operand.
#[derive(Clone, Copy)]
pub(super) enum RowOp {
    /// Pointer to the row's first element.
    Ptr(Value),
    /// The row's single value.
    Scalar(Value),
    /// A fused product's left factor: a pointer to the row's `k` values, and the index of
    /// their splats (made once per row, outside the `j` loops) in the kernel's list.
    DotRows(Value, usize),
    /// A fused product's right factor: the matrix's base pointer.
    DotCols(Value),
}

/// The per-row splats of every [`RowOp::DotRows`] operand, indexed by its id.
type DotRowVals = Vec<Vec<Value>>;

pub(super) fn mem() -> MemFlagsData {
    // Operands are valid for every index the kernel touches; rows need not be 16-byte aligned.
    MemFlagsData::new().with_notrap()
}

fn group(b: &mut FunctionBuilder, r: Value, div: usize) -> Value {
    if div == 1 {
        r
    } else {
        b.ins().udiv_imm_u(r, div as i64)
    }
}

/// Folds `y` into the running `acc`. Max is `acc < y ? y : acc` (one `maxps`; CLIF's `fmax`
/// is a NaN-propagating sequence of ~9): the reference's `elementwise::max` fold, which leaves NaN out.
fn combine(b: &mut FunctionBuilder, m: &Math, op: ReduceOp, acc: Value, y: Value) -> Value {
    match op {
        ReduceOp::Sum => b.ins().fadd(acc, y),
        ReduceOp::Max => m.max_into(b, acc, y),
    }
}

/// Evaluates the kernel body at byte offset `byte` within the row, in lanes of `m.ty`.
fn body(
    b: &mut FunctionBuilder,
    k: &Kernel,
    m: &Math,
    rows: &[RowOp],
    dots: &DotRowVals,
    byte: Value,
) -> Vec<Value> {
    let mut v: Vec<Value> = Vec::with_capacity(k.body.len());
    for inst in &k.body {
        let x = match *inst {
            Inst::Load(q) => match rows[q] {
                RowOp::Ptr(p) => {
                    let a = b.ins().iadd(p, byte);
                    b.ins().load(m.ty, mem(), a, 0)
                }
                RowOp::Scalar(s) if m.ty == types::F32X4 => b.ins().splat(types::F32X4, s),
                RowOp::Scalar(s) => s,
                RowOp::DotRows(..) | RowOp::DotCols(_) => {
                    unreachable!("only Dot reads a product's factors (Kernel::check)")
                }
            },
            Inst::Dot(qa, qb) => {
                let (RowOp::DotRows(row, d), RowOp::DotCols(base)) = (rows[qa], rows[qb]) else {
                    unreachable!("Dot reads a DotRows and a DotCols operand (Kernel::check)")
                };
                let col = b.ins().iadd(base, byte);
                // The thin-product chain: fma from +0 in increasing p.
                let mut acc = m.k(b, 0.0);
                for (p, &splat) in dots[d].iter().enumerate() {
                    // The scalar tail reloads the factor (cheap, and keeps registers free
                    // for the vector loop's splats).
                    let x = if m.ty == types::F32X4 {
                        splat
                    } else {
                        b.ins().load(types::F32, mem(), row, (4 * p) as i32)
                    };
                    let y = b.ins().load(m.ty, mem(), col, (p * k.inner * 4) as i32);
                    acc = b.ins().fma(x, y, acc);
                }
                acc
            }
            Inst::Const(c) => m.k(b, c),
            Inst::Unary(u, a) => m.unary(b, u, v[a]),
            Inst::Binary(op, x, y) => m.binary(b, op, v[x], v[y]),
        };
        v.push(x);
    }
    v
}

/// Emits the kernel's function body into `b` (whose signature is `(i64, i64, i64)`). A
/// column sum also reads four f64 scratch rows (zeroed by the caller; row r adds into scratch
/// row r mod 4) after its output pointer. `wide_fns` (the imported [`super::wide::NAMES`] then
/// [`super::wide_dot::NAME`], or none) let maps with `exp`, `erf` or a fused product run in
/// phases ([`phases`]).
pub fn define(b: &mut FunctionBuilder, k: &Kernel, libm: &[FuncRef], wide_fns: &[FuncRef]) {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let p = b.block_params(entry).to_vec();
    let (ptrs, r0, r1) = (p[0], p[1], p[2]);
    let nops = k.operands.len();
    let scratch = usize::from(matches!(k.form, Form::ColReduce(ReduceOp::Sum)));
    let base: Vec<Value> = (0..nops + k.outputs.len() + scratch)
        .map(|i| b.ins().load(types::I64, mem(), ptrs, (8 * i) as i32))
        .collect();
    let vec4 = Math {
        ty: types::F32X4,
        libm,
    };
    let one = Math {
        ty: types::F32,
        libm,
    };
    let red = match k.form {
        Form::RowReduce(op) | Form::ColReduce(op) => Some(op),
        Form::Map => None,
    };
    let ident = red.map(identity).unwrap_or(0.0);
    let inner = k.inner as i64;
    let nvec = inner / 4 * 4;

    let row_hdr = b.create_block();
    b.append_block_param(row_hdr, types::I64);
    let row_body = b.create_block();
    b.append_block_param(row_body, types::I64);
    let exit = b.create_block();
    b.ins().jump(row_hdr, &[BlockArg::Value(r0)]);

    b.switch_to_block(row_hdr);
    let r = b.block_params(row_hdr)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, r, r1);
    b.ins()
        .brif(more, row_body, &[BlockArg::Value(r)], exit, &[]);

    b.switch_to_block(row_body);
    let r = b.block_params(row_body)[0];
    let mut rows = Vec::with_capacity(nops);
    let mut dots: DotRowVals = vec![];
    for (q, acc) in k.operands.iter().enumerate() {
        rows.push(match *acc {
            Access::Vec { div } => {
                let g = group(b, r, div);
                let off = b.ins().imul_imm_s(g, inner * 4);
                RowOp::Ptr(b.ins().iadd(base[q], off))
            }
            Access::Splat { div } => {
                let g = group(b, r, div);
                let off = b.ins().ishl_imm_u(g, 2);
                let a = b.ins().iadd(base[q], off);
                RowOp::Scalar(b.ins().load(types::F32, mem(), a, 0))
            }
            Access::DotRows { k: kk } => {
                let off = b.ins().imul_imm_s(r, (kk * 4) as i64);
                let a = b.ins().iadd(base[q], off);
                let vs = (0..kk)
                    .map(|p| {
                        let x = b.ins().load(types::F32, mem(), a, (4 * p) as i32);
                        b.ins().splat(types::F32X4, x)
                    })
                    .collect();
                dots.push(vs);
                RowOp::DotRows(a, dots.len() - 1)
            }
            Access::DotCols { .. } => RowOp::DotCols(base[q]),
        });
    }
    // A column sum adds row r into f64 scratch row r mod 4 (the reference's partial sums);
    // other forms never read `scratch_row`.
    let scratch_row = if scratch == 1 {
        let slot = b.ins().band_imm_u(r, 3);
        let off = b.ins().imul_imm_s(slot, inner * 8);
        b.ins().iadd(base[nops + 1], off)
    } else {
        base[0]
    };
    let outs: Vec<Value> = (0..k.outputs.len())
        .map(|o| match k.form {
            Form::Map => {
                let off = b.ins().imul_imm_s(r, inner * 4);
                b.ins().iadd(base[nops + o], off)
            }
            Form::RowReduce(_) => {
                let off = b.ins().ishl_imm_u(r, 2);
                b.ins().iadd(base[nops + o], off)
            }
            Form::ColReduce(_) => base[nops + o],
        })
        .collect();

    // Vector loop over j in 0..nvec. Row sums accumulate in four f64 partial sums (element j
    // into partial j mod 4: lanes 0–1 and 2–3 as two f64x2), combined as (s0 + s1) + (s2 + s3)
    // before the tail adds its elements one by one: exactly the reference's definition
    // (`ops::reduce::sum_f64`), so bit-identical. Max accumulates in f32 by lane
    // (`Math::max_into`): the reference fold's value for every row except a maximum of zero
    // met as both -0 and +0, whose sign may differ (the lanes combine in another order).
    let vec_hdr = b.create_block();
    b.append_block_param(vec_hdr, types::I64);
    b.append_block_param(vec_hdr, types::F32X4);
    b.append_block_param(vec_hdr, types::F64X2);
    b.append_block_param(vec_hdr, types::F64X2);
    let vec_body = b.create_block();
    let vec_done = b.create_block();
    let tail_hdr = b.create_block();
    b.append_block_param(tail_hdr, types::I64);
    b.append_block_param(tail_hdr, types::F32);
    b.append_block_param(tail_hdr, types::F64);
    let tail_body = b.create_block();
    let row_end = b.create_block();
    b.append_block_param(row_end, types::F32);
    b.append_block_param(row_end, types::F64);

    let zero = b.ins().iconst(types::I64, 0);
    let acc0 = vec4.k(b, ident);
    let z64 = b.ins().f64const(-0.0);
    let z64x2 = b.ins().splat(types::F64X2, z64);
    // Not with a fused product: measured 20–40 % slower paired (the factor rows of two
    // vectors crowd Cranelift's 16 vector registers).
    let dot = k.body.iter().any(|i| matches!(i, Inst::Dot(..)));
    let phased = (!wide_fns.is_empty()).then(|| phases::plan(k)).flatten();
    let first = if let Some(p) = &phased {
        phases::emit(b, k, p, &vec4, &rows, &outs, nvec, wide_fns);
        b.ins().iconst(types::I64, nvec)
    } else if matches!(k.form, Form::Map) && nvec >= 8 && !dot {
        map_pairs(b, k, &vec4, &rows, &dots, &outs, nvec / 8 * 8)
    } else {
        zero
    };
    // The factors' splats ride the vector loop as block parameters ([`carried`]).
    let mut args = vec![
        BlockArg::Value(first),
        BlockArg::Value(acc0),
        BlockArg::Value(z64x2),
        BlockArg::Value(z64x2),
    ];
    args.extend(splat_args(b, vec_hdr, &dots));
    b.ins().jump(vec_hdr, &args);

    b.switch_to_block(vec_hdr);
    let hp = b.block_params(vec_hdr).to_vec();
    let loop_dots = carried(&dots, &hp[4..]);
    let c = b.ins().icmp_imm_s(IntCC::SignedLessThan, hp[0], nvec);
    b.ins().brif(c, vec_body, &[], vec_done, &[]);

    b.switch_to_block(vec_body);
    let byte = b.ins().ishl_imm_u(hp[0], 2);
    let vals = body(b, k, &vec4, &rows, &loop_dots, byte);
    let v = vals[k.outputs[0]];
    let (mut acc32, mut acc_lo, mut acc_hi) = (hp[1], hp[2], hp[3]);
    match (k.form, red) {
        (Form::RowReduce(ReduceOp::Sum), _) => {
            let (lo, hi) = widen(b, v);
            acc_lo = b.ins().fadd(acc_lo, lo);
            acc_hi = b.ins().fadd(acc_hi, hi);
        }
        (Form::RowReduce(op), _) => acc32 = combine(b, &vec4, op, acc32, v),
        (Form::ColReduce(ReduceOp::Sum), _) => {
            let (lo, hi) = widen(b, v);
            let off = b.ins().ishl_imm_u(hp[0], 3);
            let a = b.ins().iadd(scratch_row, off);
            for (h, part) in [(0, lo), (16, hi)] {
                let o = b.ins().load(types::F64X2, mem(), a, h);
                let n = b.ins().fadd(o, part);
                b.ins().store(mem(), n, a, h);
            }
        }
        (Form::ColReduce(op), _) => {
            let a = b.ins().iadd(outs[0], byte);
            let o = b.ins().load(types::F32X4, mem(), a, 0);
            let n = combine(b, &vec4, op, o, v);
            b.ins().store(mem(), n, a, 0);
        }
        (Form::Map, _) => {
            for (o, &s) in k.outputs.iter().enumerate() {
                let a = b.ins().iadd(outs[o], byte);
                b.ins().store(mem(), vals[s], a, 0);
            }
        }
    }
    let j4 = b.ins().iadd_imm_s(hp[0], 4);
    let mut args = vec![
        BlockArg::Value(j4),
        BlockArg::Value(acc32),
        BlockArg::Value(acc_lo),
        BlockArg::Value(acc_hi),
    ];
    args.extend(splat_back(b, &hp[4..]));
    b.ins().jump(vec_hdr, &args);

    b.switch_to_block(vec_done);
    let hs = match red {
        Some(op) if matches!(k.form, Form::RowReduce(_)) && op != ReduceOp::Sum => {
            let l: Vec<Value> = (0..4u8).map(|i| b.ins().extractlane(hp[1], i)).collect();
            let a = combine(b, &one, op, l[0], l[1]);
            let c = combine(b, &one, op, l[2], l[3]);
            combine(b, &one, op, a, c)
        }
        _ => one.k(b, ident),
    };
    let hs64 = {
        let half = |b: &mut FunctionBuilder, v: Value| {
            let x = b.ins().extractlane(v, 0);
            let y = b.ins().extractlane(v, 1);
            b.ins().fadd(x, y)
        };
        let lo = half(b, hp[2]);
        let hi = half(b, hp[3]);
        b.ins().fadd(lo, hi)
    };
    let nv = b.ins().iconst(types::I64, nvec);
    b.ins().jump(
        tail_hdr,
        &[
            BlockArg::Value(nv),
            BlockArg::Value(hs),
            BlockArg::Value(hs64),
        ],
    );

    b.switch_to_block(tail_hdr);
    let tp = b.block_params(tail_hdr).to_vec();
    let c = b.ins().icmp_imm_s(IntCC::SignedLessThan, tp[0], inner);
    b.ins().brif(
        c,
        tail_body,
        &[],
        row_end,
        &[BlockArg::Value(tp[1]), BlockArg::Value(tp[2])],
    );

    b.switch_to_block(tail_body);
    let byte = b.ins().ishl_imm_u(tp[0], 2);
    let vals = body(b, k, &one, &rows, &dots, byte);
    let v = vals[k.outputs[0]];
    let (mut a32, mut a64) = (tp[1], tp[2]);
    match k.form {
        Form::RowReduce(ReduceOp::Sum) => {
            let w = b.ins().fpromote(types::F64, v);
            a64 = b.ins().fadd(a64, w);
        }
        Form::RowReduce(op) => a32 = combine(b, &one, op, a32, v),
        Form::ColReduce(ReduceOp::Sum) => {
            let w = b.ins().fpromote(types::F64, v);
            let off = b.ins().ishl_imm_u(tp[0], 3);
            let a = b.ins().iadd(scratch_row, off);
            let o = b.ins().load(types::F64, mem(), a, 0);
            let n = b.ins().fadd(o, w);
            b.ins().store(mem(), n, a, 0);
        }
        Form::ColReduce(op) => {
            let a = b.ins().iadd(outs[0], byte);
            let o = b.ins().load(types::F32, mem(), a, 0);
            let n = combine(b, &one, op, o, v);
            b.ins().store(mem(), n, a, 0);
        }
        Form::Map => {
            for (o, &s) in k.outputs.iter().enumerate() {
                let a = b.ins().iadd(outs[o], byte);
                b.ins().store(mem(), vals[s], a, 0);
            }
        }
    }
    let j1 = b.ins().iadd_imm_s(tp[0], 1);
    b.ins().jump(
        tail_hdr,
        &[
            BlockArg::Value(j1),
            BlockArg::Value(a32),
            BlockArg::Value(a64),
        ],
    );

    b.switch_to_block(row_end);
    let ep = b.block_params(row_end).to_vec();
    match k.form {
        Form::RowReduce(ReduceOp::Sum) => {
            let v = b.ins().fdemote(types::F32, ep[1]);
            b.ins().store(mem(), v, outs[0], 0);
        }
        Form::RowReduce(_) => {
            b.ins().store(mem(), ep[0], outs[0], 0);
        }
        _ => {}
    }
    let rn = b.ins().iadd_imm_s(r, 1);
    b.ins().jump(row_hdr, &[BlockArg::Value(rn)]);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
    b.seal_all_blocks();
}

/// A map's j loop two vectors at a time over `0..end` (a multiple of 8): two independent
/// bodies per iteration give the core more to overlap in long dependency chains (erf, exp).
/// Returns the j where the one-vector loop takes over.
fn map_pairs(
    b: &mut FunctionBuilder,
    k: &Kernel,
    m: &Math,
    rows: &[RowOp],
    dots: &DotRowVals,
    outs: &[Value],
    end: i64,
) -> Value {
    let hdr = b.create_block();
    b.append_block_param(hdr, types::I64);
    let body_blk = b.create_block();
    let done = b.create_block();
    b.append_block_param(done, types::I64);
    let zero = b.ins().iconst(types::I64, 0);
    let mut args = vec![BlockArg::Value(zero)];
    args.extend(splat_args(b, hdr, dots));
    b.ins().jump(hdr, &args);
    b.switch_to_block(hdr);
    let hp = b.block_params(hdr).to_vec();
    let j = hp[0];
    let loop_dots = carried(dots, &hp[1..]);
    let c = b.ins().icmp_imm_s(IntCC::SignedLessThan, j, end);
    b.ins().brif(c, body_blk, &[], done, &[BlockArg::Value(j)]);
    b.switch_to_block(body_blk);
    let byte = b.ins().ishl_imm_u(j, 2);
    let byte2 = b.ins().iadd_imm_s(byte, 16);
    let store = |b: &mut FunctionBuilder, vals: &[Value], at: Value| {
        for (o, &s) in k.outputs.iter().enumerate() {
            let a = b.ins().iadd(outs[o], at);
            b.ins().store(mem(), vals[s], a, 0);
        }
    };
    let v0 = body(b, k, m, rows, &loop_dots, byte);
    let v1 = body(b, k, m, rows, &loop_dots, byte2);
    store(b, &v0, byte);
    store(b, &v1, byte2);
    let j8 = b.ins().iadd_imm_s(j, 8);
    let mut args = vec![BlockArg::Value(j8)];
    args.extend(splat_back(b, &hp[1..]));
    b.ins().jump(hdr, &args);
    b.switch_to_block(done);
    b.block_params(done)[0]
}

/// Adds a loop header parameter per factor splat (see [`carried`]) and returns the splats as
/// the entry jump's arguments.
fn splat_args(b: &mut FunctionBuilder, hdr: Block, dots: &DotRowVals) -> Vec<BlockArg> {
    let mut args = vec![];
    for &v in dots.iter().flatten() {
        b.append_block_param(hdr, types::F32X4);
        args.push(BlockArg::Value(v));
    }
    args
}

/// The factors' splats as a loop sees them: its header's parameters `ps`, in order.
/// Defined outside the loop, Cranelift's e-graph would re-create them (and the row
/// addresses) in every iteration.
fn carried(dots: &DotRowVals, ps: &[Value]) -> DotRowVals {
    let mut it = ps.iter().copied();
    dots.iter()
        .map(|d| d.iter().filter_map(|_| it.next()).collect())
        .collect()
}

/// The back edge's arguments for the carried splats `ps`: `x | x` (the same bits), since a
/// parameter that only passes itself back is removed as constant before the e-graph runs.
fn splat_back(b: &mut FunctionBuilder, ps: &[Value]) -> Vec<BlockArg> {
    ps.iter()
        .map(|&v| BlockArg::Value(b.ins().bor(v, v)))
        .collect()
}

/// Lanes 0–1 and 2–3 of an f32x4 as two f64x2.
fn widen(b: &mut FunctionBuilder, v: Value) -> (Value, Value) {
    let lo = b.ins().fvpromote_low(v);
    let le = MemFlagsData::new().with_endianness(Endianness::Little);
    let bytes = b.ins().bitcast(types::I8X16, le, v);
    let mask: Vec<u8> = (8..16).chain(0..8).collect();
    let imm = b.func.dfg.immediates.push(ConstantData::from(mask));
    let sw = b.ins().shuffle(bytes, bytes, imm);
    let hv = b.ins().bitcast(types::F32X4, le, sw);
    (lo, b.ins().fvpromote_low(hv))
}
