//! Syntax: the grammar-driven parser and the AST it produces.

pub mod ast;
pub mod parser;
pub mod recover;

pub use parser::{parse_file, parse_strict};
