//! Program execution on a chosen backend: the reference interpreter, or the CPU backend
//! (lowered plan + memory plan + Cranelift kernels + gemm).

pub mod cpu;
pub mod host;

use lorac_compiler::ir::{Graph, Tensor};
pub use lorac_compiler::lower::cpu::CpuOptions;
use std::collections::HashMap;

/// Which backend runs programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The reference interpreter (slow, the oracle).
    Reference,
    /// Fused Cranelift kernels and gemm over a planned arena.
    #[default]
    Cpu,
}

impl Backend {
    /// Parses `reference` or `cpu`.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "reference" => Some(Backend::Reference),
            "cpu" => Some(Backend::Cpu),
            _ => None,
        }
    }
    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
        }
    }
}

/// A program ready to run.
pub enum Program {
    /// Interpreted graph.
    Reference(Graph),
    /// Lowered and compiled.
    Cpu(Box<cpu::CpuProgram>),
}

impl Program {
    /// Prepares a graph for a backend (default code generation options).
    pub fn new(g: &Graph, backend: Backend) -> Result<Program, String> {
        Program::with_options(g, backend, CpuOptions::default())
    }

    /// [`Program::new`] with CPU code generation options.
    pub fn with_options(g: &Graph, backend: Backend, opt: CpuOptions) -> Result<Program, String> {
        Ok(match backend {
            Backend::Reference => Program::Reference(g.clone()),
            Backend::Cpu => Program::Cpu(Box::new(cpu::CpuProgram::new(g, opt)?)),
        })
    }

    /// Runs with inputs looked up by name in the maps (in order); returns the named outputs.
    pub fn run(
        &self,
        inputs: &[&HashMap<String, Tensor>],
    ) -> Result<HashMap<String, Tensor>, String> {
        match self {
            Program::Reference(g) => lorac_compiler::ir::interp::run_lean(g, inputs),
            Program::Cpu(p) => p.run(inputs),
        }
    }

    /// True when the program has a result of this name.
    pub fn has_output(&self, name: &str) -> bool {
        match self {
            Program::Reference(g) => g.output(name).is_some(),
            Program::Cpu(p) => p.plan.outputs.iter().any(|o| o.0 == name),
        }
    }

    /// Arena bytes the program allocates for temporaries (0 for the interpreter, which
    /// allocates per op).
    pub fn arena_bytes(&self) -> usize {
        match self {
            Program::Reference(_) => 0,
            Program::Cpu(p) => p.mem.peak,
        }
    }
}
