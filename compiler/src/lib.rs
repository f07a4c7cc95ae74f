//! lorac-compiler: `.lora` text → checked spec (→ IR, in later stages).

pub mod check;
pub mod diag;
pub mod model;
pub mod syntax;
