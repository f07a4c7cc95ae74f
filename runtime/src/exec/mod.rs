//! Program execution on a chosen backend: the reference interpreter, the CPU backend
//! (lowered plan + memory plan + Cranelift kernels + gemm) or the CUDA backend (NVRTC
//! kernels + cuBLAS).

pub mod arena;
pub mod attention;
pub mod awake;
pub mod bound;
pub mod cpu;
pub mod cuda;
pub mod host;
pub mod mask;
pub mod routed;

use lorac_compiler::ir::{Graph, Tensor};
use std::collections::HashMap;

/// Which backend runs programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// The reference interpreter (slow, the oracle).
    Reference,
    /// Fused Cranelift kernels and gemm over a planned arena.
    #[default]
    Cpu,
    /// NVRTC-compiled kernels and cuBLAS on an NVIDIA GPU.
    Cuda,
}

impl Backend {
    /// Parses `reference`, `cpu` or `cuda`.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "reference" => Some(Backend::Reference),
            "cpu" => Some(Backend::Cpu),
            "cuda" => Some(Backend::Cuda),
            _ => None,
        }
    }
    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Checks that the backend can run here (the CUDA backend needs a GPU and CUDA 12);
    /// an unavailable backend is a coded diagnostic.
    pub fn available(self) -> Result<(), Box<lorac_compiler::diag::Diagnostic>> {
        match self {
            Backend::Cuda => cuda::probe().map_err(|e| {
                Box::new(
                    lorac_compiler::diag::Diagnostic::error(
                        lorac_compiler::diag::codes::NO_CUDA,
                        format!("CUDA backend unavailable: {e}"),
                    )
                    .help("run on the CPU backend (`--backend cpu`), or install the NVIDIA driver and CUDA 12; `loraC explain E0911`"),
                )
            }),
            _ => Ok(()),
        }
    }
}

/// A program ready to run.
pub enum Program {
    /// Interpreted graph.
    Reference(Graph),
    /// Lowered and compiled.
    Cpu(Box<cpu::CpuProgram>),
    /// Lowered and compiled for the GPU.
    Cuda(Box<cuda::CudaProgram>),
}

impl Program {
    /// Prepares a graph for a backend.
    pub fn new(g: &Graph, backend: Backend) -> Result<Program, String> {
        Ok(match backend {
            Backend::Reference => Program::Reference(g.clone()),
            Backend::Cpu => Program::Cpu(Box::new(cpu::CpuProgram::new(g)?)),
            Backend::Cuda => Program::Cuda(Box::new(cuda::CudaProgram::new(g)?)),
        })
    }

    /// Lets the CPU backend read frozen weights' transposes from row-major copies made once
    /// ([`bound`]); the weights must not change afterwards. Other backends ignore it.
    pub fn bind_frozen(&mut self, frozen: &HashMap<String, Tensor>, shared: &mut bound::Shared) {
        if let Program::Cpu(p) = self {
            p.bind_frozen(frozen, shared);
        }
    }

    /// Runs with inputs looked up by name in the maps (in order); returns the named outputs.
    pub fn run(
        &self,
        inputs: &[&HashMap<String, Tensor>],
    ) -> Result<HashMap<String, Tensor>, String> {
        match self {
            Program::Reference(g) => lorac_compiler::ir::interp::run_lean(g, inputs),
            Program::Cpu(p) => p.run(inputs),
            Program::Cuda(p) => p.run(inputs),
        }
    }
}
