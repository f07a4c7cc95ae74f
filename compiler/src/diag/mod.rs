//! Diagnostics: spans, stable codes, the diagnostic value, and its renderings.

pub mod codes;
pub mod diagnostic;
pub mod render;
pub mod source;

pub use codes::Code;
pub use diagnostic::{did_you_mean, suggest, Diagnostic, Diagnostics, Label, Severity};
pub use source::{FileId, SourceFile, SourceMap, Span};
