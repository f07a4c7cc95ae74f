//! `erf` (and the f64 `exp` it needs) evaluated in f64 inside f32 kernels: f32 lanes are
//! widened to f64, the reference interpreter's f64 fit is computed with the same constants and
//! operation order (exp to ~1e-14 relative) and rounded back, so results agree with the
//! reference while staying vectorised (two f64x2 halves per f32x4).

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

    /// e^x to ~1e-14 relative on the clamped range (degree-11 Taylor on |r| ≤ ln2/2).
    fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let (lo, hi) = (self.k(b, -745.0), self.k(b, 709.0));
        let x = b.ins().fmax(x, lo);
        let x = b.ins().fmin(x, hi);
        let l2e = self.k(b, std::f64::consts::LOG2_E);
        let fx = b.ins().fmul(x, l2e);
        let n = b.ins().nearest(fx);
        // ln 2 split so that n·hi is exact (fdlibm's constants).
        let c1 = self.k(b, -f64::from_bits(0x3fe6_2e42_fee0_0000));
        let c2 = self.k(b, -f64::from_bits(0x3dea_39ef_3579_3c76));
        let r = b.ins().fma(n, c1, x);
        let r = b.ins().fma(n, c2, r);
        let mut p = self.k(b, 1.0 / 39_916_800.0);
        for d in (0..=10).rev() {
            let f: f64 = (1..=d).map(|i| i as f64).product();
            let c = self.k(b, 1.0 / f);
            p = b.ins().fma(p, r, c);
        }
        // 2^n in two factors so that n down to -1074 stays representable.
        let half = self.k(b, 0.5);
        let n1 = b.ins().fmul(n, half);
        let n1 = b.ins().floor(n1);
        let n2 = b.ins().fsub(n, n1);
        let s1 = self.pow2(b, n1);
        let s2 = self.pow2(b, n2);
        let p = b.ins().fmul(p, s1);
        b.ins().fmul(p, s2)
    }

    /// 2^n for integral n in [-1022, 1023].
    fn pow2(&self, b: &mut FunctionBuilder, n: Value) -> Value {
        let magic = self.k(b, 6_755_399_441_055_744.0);
        let t = b.ins().fadd(n, magic);
        let ti = b.ins().bitcast(self.int(), le(), t);
        let mi = b.ins().bitcast(self.int(), le(), magic);
        let i = b.ins().isub(ti, mi);
        let bias = self.ik(b, 1023);
        let e = b.ins().iadd(i, bias);
        let e = b.ins().ishl_imm_u(e, 52);
        b.ins().bitcast(self.ty, le(), e)
    }

    /// The reference's erf: Numerical Recipes' erfc fit, in f64.
    fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let z = b.ins().fabs(x);
        let half = self.k(b, 0.5);
        let one = self.k(b, 1.0);
        let hz = b.ins().fmul(half, z);
        let d = b.ins().fadd(one, hz);
        let t = b.ins().fdiv(one, d);
        let mut acc = self.k(b, 0.17087277);
        for c in [
            -0.82215223,
            1.48851587,
            -1.13520398,
            0.27886807,
            -0.18628806,
            0.09678418,
            0.37409196,
            1.00002368,
        ] {
            let m = b.ins().fmul(t, acc);
            let kc = self.k(b, c);
            acc = b.ins().fadd(kc, m);
        }
        let zz = b.ins().fmul(z, z);
        let nzz = b.ins().fneg(zz);
        let c0 = self.k(b, 1.26551223);
        let a = b.ins().fsub(nzz, c0);
        let m = b.ins().fmul(t, acc);
        let poly = b.ins().fadd(a, m);
        let e = self.exp(b, poly);
        let r = b.ins().fmul(t, e);
        let pos = b.ins().fsub(one, r);
        let neg = b.ins().fsub(r, one);
        let zero = self.k(b, 0.0);
        let c = b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        if self.ty == types::F64X2 {
            let m = b.ins().bitcast(types::F64X2, le(), c);
            b.ins().bitselect(m, pos, neg)
        } else {
            b.ins().select(c, pos, neg)
        }
    }
}

/// erf of an `F32` scalar or an `F32X4` vector, through f64.
pub fn erf(b: &mut FunctionBuilder, x: Value, ty: Type) -> Value {
    if ty == types::F32 {
        let w = W { ty: types::F64 };
        let xd = b.ins().fpromote(types::F64, x);
        let y = w.erf(b, xd);
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
    let ylo = w.erf(b, lo);
    let yhi = w.erf(b, hi);
    let dlo = b.ins().fvdemote(ylo);
    let dhi = b.ins().fvdemote(yhi);
    let blo = b.ins().bitcast(types::I8X16, le(), dlo);
    let bhi = b.ins().bitcast(types::I8X16, le(), dhi);
    let join: Vec<u8> = (0..8).chain(16..24).collect();
    let imm = b.func.dfg.immediates.push(ConstantData::from(join));
    let j = b.ins().shuffle(blo, bhi, imm);
    b.ins().bitcast(types::F32X4, le(), j)
}
