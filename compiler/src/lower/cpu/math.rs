//! Elementwise math in Cranelift IR, for scalars (`F32`) and 4-lane vectors (`F32X4`) alike.
//! The results equal the reference interpreter's bit for bit: `exp` and `erf` repeat the
//! definitions in `ir/ops/elementwise.rs` operation for operation (fused multiply-adds where the
//! definition fuses, nothing contracted elsewhere); log, tanh, sin, cos and pow call the
//! reference's scalar functions per lane.

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

    /// `x < lo ? lo : x` (and the mirror for `hi`), lane-wise: NaN passes through.
    fn clamp(&self, b: &mut FunctionBuilder, x: Value, lo: f32, hi: f32) -> Value {
        let (lo, hi) = (self.k(b, lo), self.k(b, hi));
        let below = b.ins().fcmp(FloatCC::LessThan, x, lo);
        let x = self.pick(b, below, lo, x);
        // `hi < x`, not `x > hi`: this operand order is the form x64 lowers to one `minps`.
        let above = b.ins().fcmp(FloatCC::LessThan, hi, x);
        self.pick(b, above, hi, x)
    }

    /// `acc < x ? x : acc` lane-wise (x64: one `maxps`): `ops::elementwise::max(acc, x)` for a
    /// non-NaN `acc` (a NaN `x` left out, as the reference's fold leaves it out).
    pub fn max_into(&self, b: &mut FunctionBuilder, acc: Value, x: Value) -> Value {
        let less = b.ins().fcmp(FloatCC::LessThan, acc, x);
        self.pick(b, less, x, acc)
    }

    /// `ops::elementwise::{max, min}` lane-wise: `y` where `y cc x` or `x` is NaN, else `x`
    /// (CLIF's `fmax`/`fmin` would propagate NaN and order -0 below +0).
    fn pick_max(&self, b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Value {
        let wins = b.ins().fcmp(cc, y, x);
        let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
        let c = b.ins().bor(wins, nan);
        self.pick(b, c, y, x)
    }

    fn pick(&self, b: &mut FunctionBuilder, c: Value, yes: Value, no: Value) -> Value {
        if self.ty == types::F32X4 {
            let m = b.ins().bitcast(types::F32X4, Self::flags(), c);
            b.ins().bitselect(m, yes, no)
        } else {
            b.ins().select(c, yes, no)
        }
    }

    /// e^x exactly as `ops::elementwise::expf` defines it.
    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        use crate::ir::ops::elementwise::{
            EXP_HI, EXP_LN2_HI, EXP_LN2_LO, EXP_LO, EXP_POLY, EXP_SHIFT,
        };
        let x = self.clamp(b, x, EXP_LO, EXP_HI);
        let l2e = self.k(b, std::f32::consts::LOG2_E);
        let shift = self.k(b, EXP_SHIFT);
        let kd = b.ins().fma(x, l2e, shift);
        let n = b.ins().fsub(kd, shift);
        let kdi = self.to_int(b, kd);
        let si = self.ik(b, EXP_SHIFT.to_bits() as i32);
        let ni = b.ins().isub(kdi, si);
        let c1 = self.k(b, -EXP_LN2_HI);
        let c2 = self.k(b, -EXP_LN2_LO);
        let r = b.ins().fma(n, c1, x);
        let r = b.ins().fma(n, c2, r);
        let mut p = self.k(b, EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            let kc = self.k(b, c);
            p = b.ins().fma(p, r, kc);
        }
        let rr = b.ins().fmul(r, r);
        let y = b.ins().fma(p, rr, r);
        let one = self.k(b, 1.0);
        let y = b.ins().fadd(y, one);
        let h = b.ins().sshr_imm_u(ni, 1);
        let bias = self.ik(b, 127);
        let e1 = b.ins().iadd(h, bias);
        let e1 = b.ins().ishl_imm_u(e1, 23);
        let e2 = b.ins().isub(ni, h);
        let e2 = b.ins().iadd(e2, bias);
        let e2 = b.ins().ishl_imm_u(e2, 23);
        let s1 = self.to_float(b, e1);
        let s2 = self.to_float(b, e2);
        let y = b.ins().fmul(y, s1);
        b.ins().fmul(y, s2)
    }

    /// erf x: the reference's f32 operations in its order (`ops::elementwise::erf`).
    pub fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        use crate::ir::ops::elementwise::{ERF_C0, ERF_COEFFS};
        let z = b.ins().fabs(x);
        let (half, one) = (self.k(b, 0.5), self.k(b, 1.0));
        let hz = b.ins().fmul(half, z);
        let d = b.ins().fadd(one, hz);
        let t = b.ins().fdiv(one, d);
        let mut acc = self.k(b, ERF_COEFFS[0]);
        for &c in &ERF_COEFFS[1..] {
            let kc = self.k(b, c);
            acc = b.ins().fma(t, acc, kc);
        }
        let zz = b.ins().fmul(z, z);
        let nzz = b.ins().fneg(zz);
        let c0 = self.k(b, ERF_C0);
        let a = b.ins().fsub(nzz, c0);
        let poly = b.ins().fma(t, acc, a);
        let e = self.exp(b, poly);
        let r = b.ins().fmul(t, e);
        let pos = b.ins().fsub(one, r);
        let neg = b.ins().fsub(r, one);
        let zero = self.k(b, 0.0);
        let c = b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        self.pick(b, c, pos, neg)
    }

    /// A unary op.
    pub fn unary(&self, b: &mut FunctionBuilder, u: UnaryOp, x: Value) -> Value {
        match u {
            UnaryOp::Neg => b.ins().fneg(x),
            UnaryOp::Exp => self.exp(b, x),
            UnaryOp::Log => self.call(b, 0, &[x]),
            UnaryOp::Sqrt => b.ins().sqrt(x),
            UnaryOp::Recip => {
                let one = self.k(b, 1.0);
                b.ins().fdiv(one, x)
            }
            UnaryOp::Tanh => self.call(b, 1, &[x]),
            UnaryOp::Erf => self.erf(b, x),
            UnaryOp::Abs => b.ins().fabs(x),
            UnaryOp::Sigmoid => {
                let nx = b.ins().fneg(x);
                let e = self.exp(b, nx);
                let one = self.k(b, 1.0);
                let d = b.ins().fadd(one, e);
                b.ins().fdiv(one, d)
            }
            UnaryOp::Relu => {
                let zero = self.k(b, 0.0);
                self.pick_max(b, FloatCC::GreaterThan, x, zero)
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
            BinaryOp::Max => self.pick_max(b, FloatCC::GreaterThan, x, y),
            BinaryOp::Min => self.pick_max(b, FloatCC::LessThan, x, y),
            BinaryOp::Gt => self.mask(b, FloatCC::GreaterThan, x, y),
            BinaryOp::Eq => self.mask(b, FloatCC::Equal, x, y),
        }
    }
}
