//! Compile-time analyses of base weights.

pub mod alpha;
pub mod svd;
