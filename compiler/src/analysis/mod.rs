//! Compile-time analyses of base weights.

pub mod svd;
