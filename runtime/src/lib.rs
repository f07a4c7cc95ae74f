//! lorac-runtime: executes what the compiler lowered (weights, data, execution).

pub mod infer;
pub mod init;
pub mod tokenize;
pub mod weights;
