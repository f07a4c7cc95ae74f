//! `loraC compile SPEC [--emit ir|dot|report|cuda] [--dump-ir after:PASS] [-o FILE]`.

use super::check::{checked_spec, use_color};
use super::{Color, Format};
use lorac_compiler::build::{self, loss, Geometry};
use lorac_compiler::diag::render::{render, Style};
use lorac_compiler::diag::{codes, Diagnostic, SourceMap};
use lorac_compiler::ir::print::{to_dot, to_text};
use lorac_compiler::passes;
use std::path::Path;

/// What `compile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EmitKind {
    /// The graph as text, one node per line.
    Ir,
    /// Graphviz dot.
    Dot,
    /// Parameters, FLOPs per token and memory, per module and in total (no graph output).
    Report,
    /// The lowered plan: fused kernels with their bodies, matrix products, host steps, arena.
    Plan,
    /// CUDA C kernels and launch plans, one directory per program (needs `-o DIR`).
    Cuda,
}

/// Options of the compile command.
pub struct Options<'a> {
    /// What to write.
    pub emit: EmitKind,
    /// Format of a report.
    pub format: Format,
    /// `after:PASS` or `after:all`.
    pub dump: Option<&'a str>,
    /// Output file (stdout when absent).
    pub out: Option<&'a Path>,
    /// Sequences per batch, when given.
    pub batch: Option<usize>,
    /// Tokens per sequence, when given.
    pub seq: Option<usize>,
    /// Build the forward graph only (no loss and gradients).
    pub forward_only: bool,
}

fn fail(msg: String, color: bool) -> i32 {
    let d = Diagnostic::error(codes::BUILD_FAILED, msg)
        .help("run `loraC check` on the spec; report it if it checks clean");
    eprint!(
        "{}",
        render(&SourceMap::new(), &d, Style { color, width: 100 })
    );
    1
}

/// Runs the compile command.
pub fn run(spec: &Path, o: Options<'_>, color: Color) -> i32 {
    let color = use_color(color);
    let spec = match checked_spec(spec, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(d) = o.dump {
        let pass = d.strip_prefix("after:").unwrap_or(d);
        if pass != "all" && pass != "build" && !passes::STAGES.contains(&pass) {
            eprintln!(
                "error: unknown pass `{pass}` for --dump-ir; passes: build, {}, all",
                passes::STAGES.join(", ")
            );
            return 2;
        }
    }
    // `alpha_hill` allocations come from the weights' spectra.
    let spec = match lorac_runtime::alloc::resolved(&spec) {
        Ok(s) => s,
        Err(d) => {
            eprint!(
                "{}",
                render(&SourceMap::new(), &d, Style { color, width: 100 })
            );
            return 1;
        }
    };
    if o.emit == EmitKind::Report {
        let def = lorac_compiler::analysis::cost::default_geometry(&spec);
        let geo = Geometry {
            batch: o.batch.unwrap_or(def.batch),
            seq: o.seq.unwrap_or(def.seq),
        };
        return super::report::run(&spec, geo, o.format, o.out, color);
    }
    let geo = Geometry {
        batch: o.batch.unwrap_or(2),
        seq: o.seq.unwrap_or(16),
    };
    if o.emit == EmitKind::Cuda {
        return super::emit_cuda::run(&spec, geo, o.out, o.forward_only, color);
    }
    let mut fwd = match build::forward(&spec, geo) {
        Ok(f) => f,
        Err(e) => return fail(e.0, color),
    };
    if !o.forward_only {
        if let Some(t) = spec.train.as_ref() {
            if let Err(e) = loss::gradient_graph(&mut fwd, &t.task) {
                return fail(e.0, color);
            }
        }
    }
    let mut g = fwd.graph;
    let wanted = |p: &str| {
        o.dump
            .map(|d| d.strip_prefix("after:").unwrap_or(d))
            .is_some_and(|d| d == p || d == "all")
    };
    if wanted("build") {
        super::out(&(format!("// after build: {} nodes\n{}", g.len(), to_text(&g)) + "\n"));
    }
    let mut dumps = Vec::new();
    if let Err(e) = passes::optimize(&mut g, |p, g| {
        if wanted(p) {
            dumps.push(format!("// after {p}: {} nodes\n{}", g.len(), to_text(g)));
        }
    }) {
        return fail(e.0, color);
    }
    for d in dumps {
        super::out(&(d + "\n"));
    }
    if o.dump.is_some() && o.out.is_none() {
        return 0;
    }
    let text = match o.emit {
        EmitKind::Ir => to_text(&g),
        EmitKind::Plan => match lorac_compiler::lower::plan::lower(&g) {
            Ok(p) => {
                // The CPU backend's placement (maps write over dying inputs).
                let mem = lorac_compiler::lower::memplan::plan(&p, true);
                lorac_compiler::lower::print::plan(&p, Some(&mem))
            }
            Err(e) => return fail(e.0, color),
        },
        EmitKind::Dot | EmitKind::Report | EmitKind::Cuda => to_dot(&g),
    };
    match o.out {
        Some(p) => match std::fs::write(p, text) {
            Ok(()) => {
                eprintln!("wrote {} ({} nodes)", p.display(), g.len());
                0
            }
            Err(e) => {
                eprintln!("error[E0801]: cannot write {}: {e}", p.display());
                2
            }
        },
        None => {
            super::out(&text);
            0
        }
    }
}
