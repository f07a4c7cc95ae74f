//! The transcendental functions whose bits must equal the reference interpreter's: glibc's
//! `expf` (its f64 table algorithm on widened lanes, two f64x2 halves per f32x4) and `erf`
//! (the reference's f32 operations in its order, on top of that `expf`).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// f64 work on `F64` scalars or `F64X2` vectors.
struct W {
    ty: Type,
}

impl W {
    fn int(&self) -> Type {
        if self.ty == types::F64X2 {
            types::I64X2
        } else {
            types::I64
        }
    }
    fn k(&self, b: &mut FunctionBuilder, c: f64) -> Value {
        let s = b.ins().f64const(c);
        if self.ty == types::F64X2 {
            b.ins().splat(types::F64X2, s)
        } else {
            s
        }
    }
    fn ik(&self, b: &mut FunctionBuilder, c: i64) -> Value {
        let s = b.ins().iconst(types::I64, c);
        if self.ty == types::F64X2 {
            b.ins().splat(types::I64X2, s)
        } else {
            s
        }
    }
}

/// glibc's `expf` table: `bits(2^(i/32)) − (i << 47)` (e_exp2f_data.c).
pub static EXPF_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

impl W {
    /// glibc's `expf` core in f64 (valid for x in [-103.97, 88.72]; the caller handles the
    /// rest): k = round(x·32/ln2), 2^(k/32) from the table, a cubic in the remainder. The
    /// same operations in the same order, without contraction, give glibc's bits.
    fn expf_core(&self, b: &mut FunctionBuilder, xd: Value) -> Value {
        let n = 32.0;
        let inv = self.k(b, f64::from_bits(0x3ff7_1547_652b_82fe) * n);
        let shift = self.k(b, f64::from_bits(0x4338_0000_0000_0000));
        let z = b.ins().fmul(inv, xd);
        let kd = b.ins().fadd(z, shift);
        let ki = b.ins().bitcast(self.int(), le(), kd);
        let kd = b.ins().fsub(kd, shift);
        let r = b.ins().fsub(z, kd);
        let mask = self.ik(b, 31);
        let idx = b.ins().band(ki, mask);
        let base = b.ins().iconst(types::I64, EXPF_TABLE.as_ptr() as i64);
        let flags = MemFlagsData::trusted().with_readonly();
        let t = if self.ty == types::F64X2 {
            let mut v = self.ik(b, 0);
            for lane in 0..2u8 {
                let i = b.ins().extractlane(idx, lane);
                let off = b.ins().ishl_imm_u(i, 3);
                let a = b.ins().iadd(base, off);
                let e = b.ins().load(types::I64, flags, a, 0);
                v = b.ins().insertlane(v, e, lane);
            }
            v
        } else {
            let off = b.ins().ishl_imm_u(idx, 3);
            let a = b.ins().iadd(base, off);
            b.ins().load(types::I64, flags, a, 0)
        };
        let kshift = b.ins().ishl_imm_u(ki, 47);
        let t = b.ins().iadd(t, kshift);
        let s = b.ins().bitcast(self.ty, le(), t);
        let c0 = self.k(b, f64::from_bits(0x3fac_6af8_4b91_2394) / n / n / n);
        let c1 = self.k(b, f64::from_bits(0x3fce_bfce_50fa_c4f3) / n / n);
        let c2 = self.k(b, f64::from_bits(0x3fe6_2e42_ff0c_52d6) / n);
        let one = self.k(b, 1.0);
        let zz = b.ins().fmul(c0, r);
        let zz = b.ins().fadd(zz, c1);
        let r2 = b.ins().fmul(r, r);
        let lin = b.ins().fmul(c2, r);
        let lin = b.ins().fadd(lin, one);
        let y = b.ins().fmul(zz, r2);
        let y = b.ins().fadd(y, lin);
        b.ins().fmul(y, s)
    }
}

/// `f` applied to an `F32` scalar or an `F32X4` vector in f64 (two f64x2 halves).
fn through_f64(
    b: &mut FunctionBuilder,
    x: Value,
    ty: Type,
    f: impl Fn(&W, &mut FunctionBuilder, Value) -> Value,
) -> Value {
    if ty == types::F32 {
        let w = W { ty: types::F64 };
        let xd = b.ins().fpromote(types::F64, x);
        let y = f(&w, b, xd);
        return b.ins().fdemote(types::F32, y);
    }
    let w = W { ty: types::F64X2 };
    let lo = b.ins().fvpromote_low(x);
    let bytes = b.ins().bitcast(types::I8X16, le(), x);
    let swap: Vec<u8> = (8..16).chain(0..8).collect();
    let imm = b.func.dfg.immediates.push(ConstantData::from(swap));
    let sw = b.ins().shuffle(bytes, bytes, imm);
    let hv = b.ins().bitcast(types::F32X4, le(), sw);
    let hi = b.ins().fvpromote_low(hv);
    let ylo = f(&w, b, lo);
    let yhi = f(&w, b, hi);
    let dlo = b.ins().fvdemote(ylo);
    let dhi = b.ins().fvdemote(yhi);
    let blo = b.ins().bitcast(types::I8X16, le(), dlo);
    let bhi = b.ins().bitcast(types::I8X16, le(), dhi);
    let join: Vec<u8> = (0..8).chain(16..24).collect();
    let imm = b.func.dfg.immediates.push(ConstantData::from(join));
    let j = b.ins().shuffle(blo, bhi, imm);
    b.ins().bitcast(types::F32X4, le(), j)
}

/// erf of an `F32` scalar or an `F32X4` vector: the reference's f32 operations in its order
/// (`ops::elementwise::erf`), with glibc's `expf` below.
pub fn erf(b: &mut FunctionBuilder, x: Value, ty: Type) -> Value {
    use crate::ir::ops::elementwise::{ERF_C0, ERF_COEFFS};
    let k = |b: &mut FunctionBuilder, c: f32| {
        let s = b.ins().f32const(c);
        if ty == types::F32X4 {
            b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    };
    let z = b.ins().fabs(x);
    let (half, one) = (k(b, 0.5), k(b, 1.0));
    let hz = b.ins().fmul(half, z);
    let d = b.ins().fadd(one, hz);
    let t = b.ins().fdiv(one, d);
    let mut acc = k(b, ERF_COEFFS[0]);
    for &c in &ERF_COEFFS[1..] {
        let m = b.ins().fmul(t, acc);
        let kc = k(b, c);
        acc = b.ins().fadd(kc, m);
    }
    let zz = b.ins().fmul(z, z);
    let nzz = b.ins().fneg(zz);
    let c0 = k(b, ERF_C0);
    let a = b.ins().fsub(nzz, c0);
    let m = b.ins().fmul(t, acc);
    let poly = b.ins().fadd(a, m);
    let e = expf(b, poly, ty);
    let r = b.ins().fmul(t, e);
    let pos = b.ins().fsub(one, r);
    let neg = b.ins().fsub(r, one);
    let zero = k(b, 0.0);
    let c = b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
    pick(b, ty, c, pos, neg)
}

fn pick(b: &mut FunctionBuilder, ty: Type, c: Value, yes: Value, no: Value) -> Value {
    if ty == types::F32X4 {
        let m = b.ins().bitcast(types::F32X4, le(), c);
        b.ins().bitselect(m, yes, no)
    } else {
        b.ins().select(c, yes, no)
    }
}

/// `expf` exactly as glibc computes it, for an `F32` scalar or an `F32X4` vector.
pub fn expf(b: &mut FunctionBuilder, x: Value, ty: Type) -> Value {
    let k = |b: &mut FunctionBuilder, c: f32| {
        let s = b.ins().f32const(c);
        if ty == types::F32X4 {
            b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    };
    let (lo, hi) = (k(b, -103.972_08), k(b, 88.722_84));
    let xc = b.ins().fmax(x, lo);
    let xc = b.ins().fmin(xc, hi);
    let y = through_f64(b, xc, ty, |w, b, v| w.expf_core(b, v));
    // glibc's special cases: overflow to +inf, underflow to 0, NaN propagates.
    let inf = k(b, f32::INFINITY);
    let zero = k(b, 0.0);
    let over = b.ins().fcmp(FloatCC::GreaterThan, x, hi);
    let y = pick(b, ty, over, inf, y);
    let under = b.ins().fcmp(FloatCC::LessThan, x, lo);
    let y = pick(b, ty, under, zero, y);
    let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    let xx = b.ins().fadd(x, x);
    pick(b, ty, nan, xx, y)
}
