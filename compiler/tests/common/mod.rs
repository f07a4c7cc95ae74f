//! Test-only helpers shared by the compiler's integration tests.
#![allow(dead_code)]

pub mod gradcheck;
pub mod graphgen;
pub mod optim;
pub mod shapes;

use lorac_compiler::ir::{BinaryOp, UnaryOp};

/// Every unary op.
pub const UNARY: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Tanh,
    UnaryOp::Erf,
    UnaryOp::Abs,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Sin,
    UnaryOp::Cos,
];
/// Every binary op.
pub const BINARY: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Eq,
];
