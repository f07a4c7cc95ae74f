//! The IR: a petgraph of primitive ops, its reference interpreter, verifier and printers.

pub mod compose;
pub mod graph;
pub mod interp;
pub mod op;
pub mod ops;
pub mod print;
pub mod tensor;
pub mod verify;

pub use graph::{Graph, IrError, Node, NodeId, R};
pub use op::{BinaryOp, DType, InputKind, Op, ReduceOp, UnaryOp};
pub use tensor::{Data, Tensor};
