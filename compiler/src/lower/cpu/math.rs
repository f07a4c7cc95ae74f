//! Elementwise math in Cranelift IR, for scalars (`F32`) and 4-lane vectors (`F32X4`) alike.
//! By default the results equal the reference interpreter's bit for bit: `erf` (GELU) is its
//! f64 fit and `exp` is glibc's `expf` algorithm, both evaluated in f64 vectors (`wide.rs`);
//! log, tanh, sin, cos and pow call the reference's scalar functions per lane. (A merely
//! accurate exp differs from glibc's by 1 ulp on ~0.06 % of inputs, enough to move Adam steps
//! past the 1e-5 whole-step test.) With `fast_math`, `exp` and `erf` are inline f32
//! polynomials instead: vectorised, within ~2 ulp.

use crate::ir::{BinaryOp, UnaryOp};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Imported scalar functions, in [`LIBM`] order.
pub const LIBM: [&str; 5] = [
    "lorac_logf",
    "lorac_tanhf",
    "lorac_sinf",
    "lorac_cosf",
    "lorac_powf",
];

/// ln x (host libm).
pub extern "C" fn lorac_logf(x: f32) -> f32 {
    x.ln()
}
/// tanh x.
pub extern "C" fn lorac_tanhf(x: f32) -> f32 {
    x.tanh()
}
/// sin x.
pub extern "C" fn lorac_sinf(x: f32) -> f32 {
    x.sin()
}
/// cos x.
pub extern "C" fn lorac_cosf(x: f32) -> f32 {
    x.cos()
}
/// x^y.
pub extern "C" fn lorac_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// Emission context: the value type and the imported functions.
pub struct Math<'a> {
    /// `F32` or `F32X4`.
    pub ty: Type,
    /// Function references for [`LIBM`].
    pub libm: &'a [FuncRef],
    /// Inline polynomial `exp`/`erf` instead of the reference's functions.
    pub fast_math: bool,
}

impl Math<'_> {
    fn int_ty(&self) -> Type {
        if self.ty == types::F32X4 {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// A float constant of the context type.
    pub fn k(&self, b: &mut FunctionBuilder, c: f32) -> Value {
        let s = b.ins().f32const(c);
        if self.ty == types::F32X4 {
            b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    }

    fn ik(&self, b: &mut FunctionBuilder, c: i32) -> Value {
        let s = b.ins().iconst(types::I32, c as i64);
        if self.ty == types::F32X4 {
            b.ins().splat(types::I32X4, s)
        } else {
            s
        }
    }

    fn flags() -> MemFlagsData {
        MemFlagsData::new().with_endianness(Endianness::Little)
    }

    fn to_int(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.int_ty(), Self::flags(), x)
    }

    fn to_float(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        b.ins().bitcast(self.ty, Self::flags(), x)
    }

    fn call(&self, b: &mut FunctionBuilder, f: usize, args: &[Value]) -> Value {
        let fr = self.libm[f];
        if self.ty == types::F32 {
            let c = b.ins().call(fr, args);
            return b.inst_results(c)[0];
        }
        let mut out = self.k(b, 0.0);
        for lane in 0..4u8 {
            let a: Vec<Value> = args.iter().map(|&x| b.ins().extractlane(x, lane)).collect();
            let c = b.ins().call(fr, &a);
            let r = b.inst_results(c)[0];
            out = b.ins().insertlane(out, r, lane);
        }
        out
    }

    /// e^x: Cephes-style range reduction and degree-6 polynomial (≈1 ulp on the clamped range).
    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let (lo, hi) = (self.k(b, -87.336_55), self.k(b, 88.376_26));
        let x = b.ins().fmax(x, lo);
        let x = b.ins().fmin(x, hi);
        let l2e = self.k(b, std::f32::consts::LOG2_E);
        let fx = b.ins().fmul(x, l2e);
        let n = b.ins().nearest(fx);
        let c1 = self.k(b, -0.693_359_4);
        let c2 = self.k(b, 2.121_944_4e-4);
        let r = b.ins().fma(n, c1, x);
        let r = b.ins().fma(n, c2, r);
        let mut p = self.k(b, 1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            let kc = self.k(b, c);
            p = b.ins().fma(p, r, kc);
        }
        let rr = b.ins().fmul(r, r);
        let y = b.ins().fma(p, rr, r);
        let one = self.k(b, 1.0);
        let y = b.ins().fadd(y, one);
        let ni = b.ins().fcvt_to_sint_sat(self.int_ty(), n);
        let bias = self.ik(b, 127);
        let ni = b.ins().iadd(ni, bias);
        let ni = b.ins().ishl_imm_u(ni, 23);
        let scale = self.to_float(b, ni);
        b.ins().fmul(y, scale)
    }

    /// erf x by the Numerical Recipes erfc fit the reference interpreter uses.
    pub fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let z = b.ins().fabs(x);
        let half = self.k(b, 0.5);
        let one = self.k(b, 1.0);
        let d = b.ins().fma(z, half, one);
        let t = b.ins().fdiv(one, d);
        let mut acc = self.k(b, 0.170_872_77);
        for c in [
            -0.822_152_23,
            1.488_515_9,
            -1.135_204,
            0.278_868_07,
            -0.186_288_06,
            0.096_784_18,
            0.374_091_96,
            1.000_023_7,
        ] {
            let kc = self.k(b, c);
            acc = b.ins().fma(acc, t, kc);
        }
        let c0 = self.k(b, -1.265_512_2);
        let poly = b.ins().fma(t, acc, c0);
        let zz = b.ins().fmul(z, z);
        let poly = b.ins().fsub(poly, zz);
        let e = self.exp(b, poly);
        let r = b.ins().fmul(t, e);
        let y = b.ins().fsub(one, r);
        // erf is odd: give 1 - r the sign of x.
        let yi = self.to_int(b, y);
        let xi = self.to_int(b, x);
        let sign = self.ik(b, i32::MIN);
        let mag = self.ik(b, i32::MAX);
        let xs = b.ins().band(xi, sign);
        let ym = b.ins().band(yi, mag);
        let o = b.ins().bor(ym, xs);
        self.to_float(b, o)
    }

    /// A unary op.
    pub fn unary(&self, b: &mut FunctionBuilder, u: UnaryOp, x: Value) -> Value {
        match u {
            UnaryOp::Neg => b.ins().fneg(x),
            UnaryOp::Exp if self.fast_math => self.exp(b, x),
            UnaryOp::Exp => super::wide::expf(b, x, self.ty),
            UnaryOp::Log => self.call(b, 0, &[x]),
            UnaryOp::Sqrt => b.ins().sqrt(x),
            UnaryOp::Recip => {
                let one = self.k(b, 1.0);
                b.ins().fdiv(one, x)
            }
            UnaryOp::Tanh => self.call(b, 1, &[x]),
            UnaryOp::Erf if self.fast_math => self.erf(b, x),
            UnaryOp::Erf => super::wide::erf(b, x, self.ty),
            UnaryOp::Abs => b.ins().fabs(x),
            UnaryOp::Sigmoid => {
                let nx = b.ins().fneg(x);
                let e = if self.fast_math {
                    self.exp(b, nx)
                } else {
                    super::wide::expf(b, nx, self.ty)
                };
                let one = self.k(b, 1.0);
                let d = b.ins().fadd(one, e);
                b.ins().fdiv(one, d)
            }
            UnaryOp::Relu => {
                let zero = self.k(b, 0.0);
                b.ins().fmax(x, zero)
            }
            UnaryOp::Sin => self.call(b, 2, &[x]),
            UnaryOp::Cos => self.call(b, 3, &[x]),
        }
    }

    fn mask(&self, b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Value {
        let c = b.ins().fcmp(cc, x, y);
        let one = self.k(b, 1.0);
        if self.ty == types::F32X4 {
            let bits = self.to_int(b, one);
            let m = b.ins().band(c, bits);
            self.to_float(b, m)
        } else {
            let zero = self.k(b, 0.0);
            b.ins().select(c, one, zero)
        }
    }

    /// A binary op.
    pub fn binary(&self, b: &mut FunctionBuilder, op: BinaryOp, x: Value, y: Value) -> Value {
        match op {
            BinaryOp::Add => b.ins().fadd(x, y),
            BinaryOp::Sub => b.ins().fsub(x, y),
            BinaryOp::Mul => b.ins().fmul(x, y),
            BinaryOp::Div => b.ins().fdiv(x, y),
            BinaryOp::Pow => self.call(b, 4, &[x, y]),
            BinaryOp::Max => b.ins().fmax(x, y),
            BinaryOp::Min => b.ins().fmin(x, y),
            BinaryOp::Gt => self.mask(b, FloatCC::GreaterThan, x, y),
            BinaryOp::Eq => self.mask(b, FloatCC::Equal, x, y),
        }
    }
}
