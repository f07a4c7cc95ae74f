//! `loraC compile SPEC --emit cuda -o DIR`: the CUDA C kernels and launch plans of the
//! programs a run executes (`grad`, `eval`, `update` for a spec with a train block, else
//! `forward`), one directory each holding `kernels.cu` and `launch_plan.json`.

use lorac_compiler::build::{self, programs, Geometry};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::render::{render, Style};
use lorac_compiler::diag::{codes, Diagnostic, SourceMap};
use lorac_compiler::ir::{Graph, IrError};
use lorac_compiler::lower::cuda;
use std::path::Path;

fn report(d: Diagnostic, color: bool) {
    eprint!(
        "{}",
        render(&SourceMap::new(), &d, Style { color, width: 100 })
    );
}

/// The graphs to emit, by directory name.
fn graphs(
    spec: &Spec,
    geo: Geometry,
    forward_only: bool,
) -> Result<Vec<(&'static str, Graph)>, IrError> {
    match spec.train.as_ref() {
        Some(cfg) if !forward_only => {
            let t = programs::train_graphs(spec, cfg, geo)?;
            Ok(vec![
                ("grad", t.grad),
                ("eval", t.eval),
                ("update", t.update),
            ])
        }
        _ => {
            let mut g = build::forward(spec, geo)?.graph;
            lorac_compiler::passes::optimize(&mut g, |_, _| {})?;
            Ok(vec![("forward", g)])
        }
    }
}

/// Writes every program's kernels and launch plan under `out`; returns the exit code.
pub fn run(spec: &Spec, geo: Geometry, out: Option<&Path>, forward_only: bool, color: bool) -> i32 {
    let Some(dir) = out else {
        report(
            Diagnostic::error(codes::IO, "`--emit cuda` writes a directory; none given")
                .help("add `-o DIR`"),
            color,
        );
        return 2;
    };
    let gs = match graphs(spec, geo, forward_only) {
        Ok(g) => g,
        Err(e) => {
            report(
                Diagnostic::error(codes::BUILD_FAILED, e.0)
                    .help("run `loraC check` on the spec; report it if it checks clean"),
                color,
            );
            return 1;
        }
    };
    for (name, g) in gs {
        let em = match cuda::emit(&g, "kernels.cu") {
            Ok(e) => e,
            Err(e) => {
                report(
                    Diagnostic::error(codes::BUILD_FAILED, format!("lowering `{name}`: {}", e.0))
                        .help("report the spec"),
                    color,
                );
                return 1;
            }
        };
        let sub = dir.join(name);
        let plan = serde_json::to_string_pretty(&em.launch).unwrap_or_default();
        let written = std::fs::create_dir_all(&sub)
            .and_then(|()| std::fs::write(sub.join("kernels.cu"), &em.source))
            .and_then(|()| std::fs::write(sub.join("launch_plan.json"), plan + "\n"));
        if let Err(e) = written {
            report(
                Diagnostic::error(codes::IO, format!("cannot write {}: {e}", sub.display()))
                    .help("choose a writable output directory"),
                color,
            );
            return 2;
        }
        let mut distinct = em.function.clone();
        distinct.sort_unstable();
        distinct.dedup();
        eprintln!(
            "wrote {} ({} kernels, {} distinct functions, {} steps, arena {} bytes)",
            sub.display(),
            em.plan.kernels.len(),
            distinct.len(),
            em.plan.steps.len(),
            em.mem.peak
        );
    }
    0
}
