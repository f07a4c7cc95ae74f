//! Graph passes, run as a named pipeline with verification after each.

pub mod autodiff;
pub mod cse;
pub mod dce;
pub mod expand_attention;
pub mod hoist_scale;
pub mod reassoc;
pub mod simplify;

use crate::ir::verify::verify;
use crate::ir::{Graph, IrError, R};

/// The passes that preserve every result bit for bit, in order.
pub const PIPELINE: &[&str] = &["simplify", "cse", "dce"];

/// Every stage [`optimize`] runs: reassociation and scale hoisting (exact in real arithmetic,
/// but they change rounding) and then the bit-exact pipeline.
pub const STAGES: &[&str] = &["reassoc", "hoist_scale", "simplify", "cse", "dce"];

/// Runs one named pass; returns how many nodes it changed.
pub fn run_pass(name: &str, g: &mut Graph) -> R<usize> {
    let n = match name {
        "simplify" => simplify::run(g)?,
        "reassoc" => reassoc::run(g)?,
        "hoist_scale" => hoist_scale::run(g)?,
        "cse" => cse::run(g)?,
        "dce" => dce::run(g)?,
        other => {
            return Err(IrError(format!(
                "unknown pass `{other}` (passes: {})",
                STAGES.join(", ")
            )))
        }
    };
    if cfg!(debug_assertions) {
        verify(g).map_err(|e| IrError(format!("after {name}: {e}")))?;
    }
    Ok(n)
}

/// Runs the pipeline, calling `after(pass, graph)` after each pass (for `--dump-ir`).
pub fn run_pipeline(g: &mut Graph, mut after: impl FnMut(&str, &Graph)) -> R<()> {
    for p in PIPELINE {
        run_pass(p, g)?;
        after(p, g);
    }
    Ok(())
}

/// Runs every stage of [`STAGES`], calling `after(pass, graph)` after each (for `--dump-ir`).
pub fn optimize(g: &mut Graph, mut after: impl FnMut(&str, &Graph)) -> R<()> {
    for p in STAGES {
        run_pass(p, g)?;
        after(p, g);
    }
    Ok(())
}
