//! Compile-time analyses: of base weights (SVD, AlphaLoRA) and of built graphs (cost report).

pub mod alpha;
pub mod cost;
pub mod cost_graph;
pub mod svd;
