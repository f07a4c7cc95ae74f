//! Binary operators at compile time: tensor shape rules (numpy broadcasting, matrix
//! products) and scalar arithmetic with its diagnostics.

use super::eval::Eval;
use super::value::{shape_str, Dim, Tensor, Value};
use crate::diag::{codes, Diagnostic, Span};
use crate::syntax::ast::BinOp;

impl Eval<'_> {
    /// Evaluates a binary operator on evaluated operands.
    pub fn binary(
        &mut self,
        op: BinOp,
        op_span: Span,
        l: (&Value, Span),
        r: (&Value, Span),
    ) -> Value {
        let ((lv, ls), (rv, rs)) = (l, r);
        if *lv == Value::Poison || *rv == Value::Poison {
            return Value::Poison;
        }
        for (v, s) in [(lv, ls), (rv, rs)] {
            if let Value::Experts { .. } = v {
                return self.err(
                    codes::TYPE_MISMATCH,
                    "a per-expert tensor must be indexed before use",
                    s,
                    "holds one tensor per expert",
                    "index it with the expert variable: `A[e]`, inside `sum(e, …)`",
                );
            }
        }
        let tensor_l = matches!(lv, Value::Tensor(_));
        let tensor_r = matches!(rv, Value::Tensor(_));
        if op == BinOp::MatMul {
            return self.matmul(op_span, (lv, ls), (rv, rs));
        }
        if tensor_l || tensor_r {
            if matches!(
                op,
                BinOp::Eq
                    | BinOp::Ne
                    | BinOp::Lt
                    | BinOp::Le
                    | BinOp::Gt
                    | BinOp::Ge
                    | BinOp::FloorDiv
            ) {
                return self.err(
                    codes::TYPE_MISMATCH,
                    format!("`{}` is not defined on tensors", op.symbol()),
                    op_span,
                    "scalar-only operator",
                    "use `+ - * / **` or builtins on tensors",
                );
            }
            let ld = self.tensor_dims(lv, ls);
            let rd = self.tensor_dims(rv, rs);
            let (Some(ld), Some(rd)) = (ld, rd) else {
                return Value::Poison;
            };
            return match broadcast(&ld, &rd) {
                Some(d) => Value::Tensor(Tensor::of(d)),
                None => {
                    self.diags.push(
                        Diagnostic::error(
                            codes::BROADCAST_MISMATCH,
                            format!("cannot apply `{}` to shapes {} and {}", op.symbol(), shape_str(&ld), shape_str(&rd)),
                        )
                        .at(op_span, "shapes do not broadcast")
                        .also(ls, format!("this is {}", shape_str(&ld)))
                        .also(rs, format!("this is {}", shape_str(&rd)))
                        .help("elementwise operands must have equal dimensions, or 1, aligned from the right"),
                    );
                    Value::Poison
                }
            };
        }
        self.scalar(op, op_span, (lv, ls), (rv, rs))
    }

    fn tensor_dims(&mut self, v: &Value, span: Span) -> Option<Vec<Dim>> {
        match v {
            Value::Tensor(t) => Some(t.dims.clone()),
            v if v.is_num() => Some(Vec::new()),
            other => {
                self.type_err("a number or tensor", other, span);
                None
            }
        }
    }

    fn matmul(
        &mut self,
        op_span: Span,
        (lv, ls): (&Value, Span),
        (rv, rs): (&Value, Span),
    ) -> Value {
        let (Value::Tensor(a), Value::Tensor(b)) = (lv, rv) else {
            let (bad, s) = if matches!(lv, Value::Tensor(_)) {
                (rv, rs)
            } else {
                (lv, ls)
            };
            return self.err(
                codes::TYPE_MISMATCH,
                format!("`@` needs two tensors, found {}", bad.describe()),
                s,
                format!("this is {}", bad.describe()),
                "use `*` to scale a tensor by a scalar",
            );
        };
        if a.dims.len() < 2 || b.dims.len() != 2 {
            return self.err(
                codes::MATMUL_MISMATCH,
                format!("`@` needs matrices, found {} @ {}", a.shape(), b.shape()),
                op_span,
                "matrix product",
                "both operands of `@` must be 2-D; reshape vectors or use `*`",
            );
        }
        let inner_a = &a.dims[a.dims.len() - 1];
        let inner_b = &b.dims[0];
        if !inner_a.compatible(inner_b) {
            let help = if inner_a.compatible(&b.dims[1]) {
                "transpose the right operand: write it with `^T`".to_string()
            } else {
                format!("the left operand's last dimension ({inner_a}) must equal the right operand's first ({inner_b})")
            };
            self.diags.push(
                Diagnostic::error(
                    codes::MATMUL_MISMATCH,
                    format!(
                        "cannot multiply {} by {}: inner dimensions {inner_a} and {inner_b} differ",
                        a.shape(),
                        b.shape()
                    ),
                )
                .at(op_span, "inner dimensions differ")
                .also(ls, format!("this is {}", a.shape()))
                .also(rs, format!("this is {}", b.shape()))
                .help(help),
            );
            return Value::Poison;
        }
        let mut dims = a.dims[..a.dims.len() - 1].to_vec();
        dims.push(b.dims[1].clone());
        Value::Tensor(Tensor::of(dims))
    }

    fn scalar(
        &mut self,
        op: BinOp,
        op_span: Span,
        (lv, ls): (&Value, Span),
        (rv, rs): (&Value, Span),
    ) -> Value {
        use Value::*;
        if let (Str(a), Str(b)) = (lv, rv) {
            return match op {
                BinOp::Eq => Bool(a == b),
                BinOp::Ne => Bool(a != b),
                _ => self.err(
                    codes::TYPE_MISMATCH,
                    format!("`{}` is not defined on strings", op.symbol()),
                    op_span,
                    "on strings",
                    "strings can only be compared with `==` and `!=`",
                ),
            };
        }
        if let (Bool(a), Bool(b)) = (lv, rv) {
            return match op {
                BinOp::Eq => Bool(a == b),
                BinOp::Ne => Bool(a != b),
                _ => self.err(
                    codes::TYPE_MISMATCH,
                    format!("`{}` is not defined on bools", op.symbol()),
                    op_span,
                    "on bools",
                    "bools can only be compared with `==` and `!=`",
                ),
            };
        }
        for (v, s) in [(lv, ls), (rv, rs)] {
            if !v.is_num() {
                return self.type_err("a number", v, s);
            }
        }
        let both_int = lv.is_int() && rv.is_int();
        let cmp = matches!(
            op,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        );
        let (Some(a), Some(b)) = (lv.as_f64(), rv.as_f64()) else {
            return if cmp {
                Poison
            } else if both_int {
                SomeInt
            } else {
                SomeFloat
            };
        };
        if cmp {
            return Bool(match op {
                BinOp::Eq => a == b,
                BinOp::Ne => a != b,
                BinOp::Lt => a < b,
                BinOp::Le => a <= b,
                BinOp::Gt => a > b,
                _ => a >= b,
            });
        }
        if matches!(op, BinOp::Div | BinOp::FloorDiv) && b == 0.0 {
            return self.err(
                codes::DIVISION_BY_ZERO,
                "division by zero",
                rs,
                "this is zero",
                "divide by a non-zero value",
            );
        }
        if both_int {
            let (x, y) = (lv.as_i64().unwrap_or(0), rv.as_i64().unwrap_or(0));
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::FloorDiv => x.checked_div(y).map(|q| {
                    if q * y != x && ((x < 0) != (y < 0)) {
                        q - 1
                    } else {
                        q
                    }
                }),
                BinOp::Div => {
                    if x.checked_rem(y).is_some_and(|r| r != 0) {
                        self.diags.push(
                            Diagnostic::error(codes::INEXACT_DIVISION, format!("{x} / {y} is not an integer"))
                                .at(op_span, format!("{x} / {y} = {}", x as f64 / y as f64))
                                .also(ls, format!("{x}"))
                                .also(rs, format!("{y}"))
                                .help(format!("pick values that divide exactly, write `{x} // {y}` for floor division, or `float({x}) / {y}`")),
                        );
                        return Poison;
                    }
                    x.checked_div(y)
                }
                BinOp::Pow if y >= 0 => u32::try_from(y).ok().and_then(|y| x.checked_pow(y)),
                BinOp::Pow => return Float((x as f64).powf(y as f64)),
                _ => None,
            };
            return match r {
                Some(v) => Int(v),
                None => self.err(
                    codes::BAD_NUMBER,
                    "integer overflow",
                    op_span,
                    "overflows 64 bits",
                    "use smaller values or floats",
                ),
            };
        }
        if op == BinOp::FloorDiv {
            return self.err(
                codes::TYPE_MISMATCH,
                "`//` needs two ints",
                op_span,
                "floor division",
                "use `/` for floats, or `floor(a / b)`",
            );
        }
        let v = match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            _ => a.powf(b),
        };
        if !v.is_finite() {
            return self.err(
                codes::BAD_NUMBER,
                format!("`{}` gives a non-finite result", op.symbol()),
                op_span,
                "result is NaN or infinite",
                "check the operands' values",
            );
        }
        Float(v)
    }
}

/// numpy broadcasting of two shapes.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n {
            Some(&a[i + a.len() - n])
        } else {
            None
        };
        let y = if i + b.len() >= n {
            Some(&b[i + b.len() - n])
        } else {
            None
        };
        out.push(match (x, y) {
            (Some(x), None) => x.clone(),
            (None, Some(y)) => y.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            (Some(x), Some(y)) if x.compatible(y) => {
                if matches!(x, Dim::Sym(s) if s == "?")
                    || (matches!(x, Dim::Sym(_)) && !matches!(y, Dim::Sym(s) if s == "?"))
                {
                    y.clone()
                } else {
                    x.clone()
                }
            }
            _ => return None,
        });
    }
    Some(out)
}
