//! Unary and binary elementwise ops, stop-grad and casts.

use super::{want_f32, Ins};
use crate::ir::graph::{Graph, NodeId, R};
use crate::ir::op::{BinaryOp, DType, Op, UnaryOp};
use crate::ir::tensor::{Data, Tensor};

/// Shape rule: unary ops keep the shape; binary ops need equal shapes.
pub fn infer(op: &Op, ins: &Ins<'_>) -> Result<(Vec<usize>, DType), String> {
    match op {
        Op::Binary(_) => {
            want_f32(ins)?;
            if ins[0].0 != ins[1].0 {
                return Err(format!(
                    "shapes {:?} and {:?} differ (broadcast explicitly)",
                    ins[0].0, ins[1].0
                ));
            }
            Ok((ins[0].0.to_vec(), DType::F32))
        }
        Op::Cast { to } => Ok((ins[0].0.to_vec(), *to)),
        Op::StopGrad => Ok((ins[0].0.to_vec(), ins[0].1)),
        _ => {
            want_f32(ins)?;
            Ok((ins[0].0.to_vec(), DType::F32))
        }
    }
}

/// e^x in f32 as loraC defines it: Cody–Waite reduction x = n·ln2 + r (|r| ≤ ln2/2) with
/// n rounded by the 1.5·2²³ shift, the Cephes degree-6 polynomial for e^r, and 2ⁿ applied as
/// two power-of-two factors so denormal results round once. Every multiply-add below is a
/// fused `mul_add`; everything else is plain f32 with no contraction. The CPU (4 lanes at a
/// time) and CUDA backends repeat these operations one for one, so all three agree bit for bit;
/// the error is within 1 ulp of e^x (`compiler/tests/exp_erf_accuracy.rs`). Inputs are clamped to
/// [-104, 89], outside which e^x rounds to 0 or overflows to +inf anyway; NaN stays NaN.
pub fn expf(x: f32) -> f32 {
    // `clamp` (unlike `max`/`min`) lets NaN through.
    let x = x.clamp(EXP_LO, EXP_HI);
    let kd = x.mul_add(std::f32::consts::LOG2_E, EXP_SHIFT);
    let n = kd - EXP_SHIFT;
    let ni = (kd.to_bits() as i32).wrapping_sub(EXP_SHIFT.to_bits() as i32);
    let r = n.mul_add(-EXP_LN2_HI, x);
    let r = n.mul_add(-EXP_LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    let h = ni >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((ni.wrapping_sub(h).wrapping_add(127) << 23) as u32);
    y * s1 * s2
}

/// Lower clamp of [`expf`]'s input.
pub const EXP_LO: f32 = -104.0;
/// Upper clamp of [`expf`]'s input.
pub const EXP_HI: f32 = 89.0;
/// 1.5·2²³: adding it rounds an f32 of magnitude < 2²² to an integer (kept in the low bits).
pub const EXP_SHIFT: f32 = 12_582_912.0;
/// ln 2 in two parts; the high part has 9 significant bits so n·hi is exact.
pub const EXP_LN2_HI: f32 = 0.693_359_4;
/// ln 2 − [`EXP_LN2_HI`].
pub const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` polynomial, highest degree first: e^r ≈ 1 + r + r²·P(r).
#[allow(clippy::excessive_precision)]
pub const EXP_POLY: [f32; 6] = [
    1.987_569_15e-4,
    1.398_199_95e-3,
    8.333_451_9e-3,
    4.166_579_59e-2,
    1.666_666_55e-1,
    5.000_000_12e-1,
];

/// erf in f32: Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7) evaluated in
/// f32: the Horner steps and the exponent's last term as fused multiply-adds, [`expf`], the rest
/// plain f32 without contraction. The CPU and CUDA backends repeat these operations one for
/// one, so results are bit-identical.
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut acc = ERF_COEFFS[0];
    for &c in &ERF_COEFFS[1..] {
        acc = t.mul_add(acc, c);
    }
    let r = t * expf(t.mul_add(acc, -(z * z) - ERF_C0));
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// The erfc fit's Horner coefficients, highest degree first (as published; f32 rounds them).
#[allow(clippy::excessive_precision)]
pub const ERF_COEFFS: [f32; 9] = [
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
];

/// The fit's constant term (subtracted).
#[allow(clippy::excessive_precision)]
pub const ERF_C0: f32 = 1.26551223;

/// The scalar function of a unary op.
pub fn unary_fn(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => expf(x),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => erf(x),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + expf(-x)),
        UnaryOp::Relu => max(x, 0.0),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
    }
}

/// The larger of `x` and `y`: `y` when `y > x` or `x` is NaN, else `x`. A NaN operand is
/// left out (NaN only when both are), and of equal values (±0) the first is kept: what
/// `f32::max` gives on x86-64, written out so that every backend can repeat it exactly.
pub fn max(x: f32, y: f32) -> f32 {
    if y > x || x.is_nan() {
        y
    } else {
        x
    }
}

/// The smaller of `x` and `y`, the mirror of [`max`]: `y` when `y < x` or `x` is NaN, else `x`.
pub fn min(x: f32, y: f32) -> f32 {
    if y < x || x.is_nan() {
        y
    } else {
        x
    }
}

/// The scalar function of a binary op.
pub fn binary_fn(b: BinaryOp, x: f32, y: f32) -> f32 {
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Max => max(x, y),
        BinaryOp::Min => min(x, y),
        BinaryOp::Gt => f32::from(x > y),
        BinaryOp::Eq => f32::from(x == y),
    }
}

/// Reference semantics.
pub fn eval(op: &Op, ins: &[&Tensor]) -> Result<Tensor, String> {
    let x = ins[0];
    Ok(match op {
        Op::Unary(u) => Tensor::f32(
            x.shape.clone(),
            x.f().iter().map(|&v| unary_fn(*u, v)).collect(),
        ),
        Op::Binary(b) => Tensor::f32(
            x.shape.clone(),
            x.f()
                .iter()
                .zip(ins[1].f())
                .map(|(&a, &c)| binary_fn(*b, a, c))
                .collect(),
        ),
        Op::StopGrad => x.clone(),
        Op::Cast { to } => match (&x.data, to) {
            (Data::I64(v), DType::F32) => {
                Tensor::f32(x.shape.clone(), v.iter().map(|&i| i as f32).collect())
            }
            (Data::F32(v), DType::I64) => {
                Tensor::i64(x.shape.clone(), v.iter().map(|&f| f as i64).collect())
            }
            _ => x.clone(),
        },
        _ => return Err(format!("not elementwise: {}", op.name())),
    })
}

/// VJP rules.
pub fn vjp(
    g: &mut Graph,
    op: &Op,
    node: NodeId,
    ins: &[NodeId],
    dy: NodeId,
    needs: &[bool],
) -> R<Vec<Option<NodeId>>> {
    let x = ins[0];
    Ok(match op {
        Op::StopGrad | Op::Cast { .. } => vec![None],
        Op::Unary(u) => {
            let dx = match u {
                UnaryOp::Neg => g.neg(dy)?,
                UnaryOp::Exp => g.times(dy, node)?,
                UnaryOp::Log => g.over(dy, x)?,
                UnaryOp::Sqrt => {
                    let h = g.scale(dy, 0.5)?;
                    g.over(h, node)?
                }
                UnaryOp::Recip => {
                    let s = g.times(node, node)?;
                    let p = g.times(dy, s)?;
                    g.neg(p)?
                }
                UnaryOp::Tanh => {
                    let s = g.times(node, node)?;
                    let one = g.scalar(1.0)?;
                    let d = g.minus(one, s)?;
                    g.times(dy, d)?
                }
                UnaryOp::Erf => {
                    let sq = g.times(x, x)?;
                    let n = g.neg(sq)?;
                    let e = g.un(UnaryOp::Exp, n)?;
                    let d = g.scale(e, 2.0 / std::f32::consts::PI.sqrt())?;
                    g.times(dy, d)?
                }
                UnaryOp::Abs => {
                    let z = g.scalar(0.0)?;
                    let pos = g.bin(BinaryOp::Gt, x, z)?;
                    let neg = g.bin(BinaryOp::Gt, z, x)?;
                    let sign = g.minus(pos, neg)?;
                    g.times(dy, sign)?
                }
                UnaryOp::Sigmoid => {
                    let one = g.scalar(1.0)?;
                    let c = g.minus(one, node)?;
                    let d = g.times(node, c)?;
                    g.times(dy, d)?
                }
                UnaryOp::Relu => {
                    let z = g.scalar(0.0)?;
                    let pos = g.bin(BinaryOp::Gt, x, z)?;
                    g.times(dy, pos)?
                }
                UnaryOp::Sin => {
                    let c = g.un(UnaryOp::Cos, x)?;
                    g.times(dy, c)?
                }
                UnaryOp::Cos => {
                    let s = g.un(UnaryOp::Sin, x)?;
                    let p = g.times(dy, s)?;
                    g.neg(p)?
                }
            };
            vec![Some(dx)]
        }
        Op::Binary(b) => {
            let y = ins[1];
            let (da, db) = match b {
                BinaryOp::Add => (Some(dy), Some(dy)),
                BinaryOp::Sub => (Some(dy), if needs[1] { Some(g.neg(dy)?) } else { None }),
                BinaryOp::Mul => (
                    if needs[0] {
                        Some(g.times(dy, y)?)
                    } else {
                        None
                    },
                    if needs[1] {
                        Some(g.times(dy, x)?)
                    } else {
                        None
                    },
                ),
                BinaryOp::Div => {
                    let da = if needs[0] { Some(g.over(dy, y)?) } else { None };
                    let db = if needs[1] {
                        // -dy · x / y² = -dy · out / y
                        let q = g.over(node, y)?;
                        let p = g.times(dy, q)?;
                        Some(g.neg(p)?)
                    } else {
                        None
                    };
                    (da, db)
                }
                BinaryOp::Pow => {
                    let da = if needs[0] {
                        // dy · y · x^(y-1)
                        let one = g.scalar(1.0)?;
                        let ym1 = g.minus(y, one)?;
                        let p = g.bin(BinaryOp::Pow, x, ym1)?;
                        let q = g.times(p, y)?;
                        Some(g.times(dy, q)?)
                    } else {
                        None
                    };
                    let db = if needs[1] {
                        let l = g.un(UnaryOp::Log, x)?;
                        let q = g.times(node, l)?;
                        Some(g.times(dy, q)?)
                    } else {
                        None
                    };
                    (da, db)
                }
                BinaryOp::Max | BinaryOp::Min => {
                    // The winner takes the gradient; ties go to the first operand.
                    let first = if *b == BinaryOp::Max {
                        g.bin(BinaryOp::Gt, y, x)?
                    } else {
                        g.bin(BinaryOp::Gt, x, y)?
                    };
                    let one = g.scalar(1.0)?;
                    let take_a = g.minus(one, first)?;
                    (
                        if needs[0] {
                            Some(g.times(dy, take_a)?)
                        } else {
                            None
                        },
                        if needs[1] {
                            Some(g.times(dy, first)?)
                        } else {
                            None
                        },
                    )
                }
                BinaryOp::Gt | BinaryOp::Eq => (None, None),
            };
            vec![da, db]
        }
        _ => vec![None; ins.len()],
    })
}
