//! lorac-compiler: `.lora` text → checked spec (→ IR, in later stages).

pub mod analysis;
pub mod build;
pub mod check;
pub mod diag;
pub mod ir;
pub mod lower;
pub mod model;
pub mod passes;
pub mod syntax;
