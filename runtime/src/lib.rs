//! lorac-runtime: executes what the compiler lowered (weights, data, execution).

pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod data_numeric;
pub mod exec;
pub mod export;
pub mod infer;
pub mod init;
pub mod lm;
pub mod plot;
pub mod schedule;
pub mod session;
pub mod tokenize;
pub mod train;
pub mod weights;
