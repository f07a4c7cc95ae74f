//! Resolves `alpha_hill(…)` allocations: AlphaLoRA's per-layer PL_Alpha_Hill from the base
//! weights (methods.md §3.1), then the checker re-evaluates the attaches with it.

use crate::weights;
use lorac_compiler::analysis::alpha::{layer_alphas, LinearWeight};
use lorac_compiler::check::spec::{resolve_alpha, uses_alpha_hill};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::{codes, Diagnostic};

/// The spec with every `alpha_hill` allocation made concrete (a clone when there are none).
pub fn resolved(spec: &Spec) -> Result<Spec, Box<Diagnostic>> {
    let mut spec = spec.clone();
    if !uses_alpha_hill(&spec) {
        return Ok(spec);
    }
    let fail = |m: String, help: &str| Box::new(Diagnostic::error(codes::WEIGHTS, m).help(help));
    let model = spec
        .model
        .as_ref()
        .ok_or_else(|| fail("the spec declares no model".into(), "add `model …`"))?;
    let path = model.weights.as_ref().ok_or_else(|| {
        fail(
            "`alpha_hill` allocations need the model's weights (model.safetensors)".into(),
            "point `model` at a directory with the weights; a config alone can be checked but not allocated",
        )
    })?;
    let lins: Vec<_> = model
        .linears()
        .into_iter()
        .filter(|l| l.layer.is_some())
        .collect();
    let names: Vec<String> = lins
        .iter()
        .map(|l| format!("{}.weight", l.module))
        .collect();
    let w = weights::load(path, Some(&names)).map_err(|e| fail(e, "re-download the weights"))?;
    let views: Vec<LinearWeight<'_>> = lins
        .iter()
        .filter_map(|l| {
            w.get(&format!("{}.weight", l.module))
                .map(|t| LinearWeight {
                    module: &l.module,
                    data: t.f(),
                    m: l.m,
                    n: l.n,
                })
        })
        .collect();
    let a = layer_alphas(&views, model.layers(), false)
        .map_err(|e| fail(e, "the weights cannot be analysed; check the model"))?;
    let per_layer: Vec<f64> = a.layers.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
    resolve_alpha(&mut spec, per_layer).map_err(|d| {
        let first = d.sorted().into_iter().next();
        Box::new(
            first.unwrap_or_else(|| Diagnostic::error(codes::BUILD_FAILED, "allocation failed")),
        )
    })?;
    Ok(spec)
}
