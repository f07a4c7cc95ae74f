//! The checker: names, types and shapes, against the base model's header.

pub mod adapter;
pub mod attach;
pub mod builtins;
pub mod eval;
pub mod eval_ops;
mod fold;
pub mod init;
pub mod load;
pub mod model_decl;
pub mod pattern;
pub mod spec;
pub mod train;
pub mod train_args;
pub mod train_config;
mod train_task;
pub mod value;

pub use spec::{check_file, check_source, Checked, Spec};
