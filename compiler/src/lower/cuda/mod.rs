//! The CUDA backend's code generation: fused kernels rendered as CUDA C (compiled at run time
//! with NVRTC), matrix products mapped onto cuBLAS calls, and a launch plan that lists every
//! step in order over the memory plan's arena.

pub mod launch;
pub mod source;

use crate::lower::kernel::Kernel;

/// Threads per block for every kernel (8 warps).
pub const BLOCK: usize = 256;
/// Most blocks a launch asks for; grid-stride loops cover the rest.
pub const MAX_GRID: usize = 8192;
/// NVRTC options the kernels are meant to be compiled with: no contraction of `a*b+c` into
/// fused multiply-adds, so elementwise results round like the reference interpreter's.
pub const NVRTC_OPTIONS: &[&str] = &["--fmad=false", "--std=c++17"];

/// Grid and block sizes of a one-dimensional launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks.
    pub grid: usize,
    /// Threads per block.
    pub block: usize,
}

/// A CUDA C module: the prelude once, then one function per distinct kernel.
pub struct Module {
    /// The source.
    pub source: String,
    /// Per kernel (in plan order), the function that runs it.
    pub function: Vec<String>,
    /// Distinct functions in the module.
    pub distinct: usize,
}

/// Renders every kernel into one module. Kernels identical but for their name (the same
/// layer's ops repeated per layer) share the first one's function, which cuts NVRTC and
/// ptxas time and module size several-fold on a deep model.
pub fn module(kernels: &[Kernel]) -> Module {
    let mut s = source::prelude();
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut function = Vec::with_capacity(kernels.len());
    for k in kernels {
        let key = source::render(&Kernel {
            name: String::new(),
            ..k.clone()
        });
        let f = seen.entry(key).or_insert_with(|| {
            s.push('\n');
            s += &source::render(k);
            k.name.clone()
        });
        function.push(f.clone());
    }
    Module {
        source: s,
        distinct: seen.len(),
        function,
    }
}

/// A program lowered for the CUDA backend.
pub struct Emitted {
    /// The lowered plan.
    pub plan: crate::lower::plan::Plan,
    /// Where the temporaries live in the device arena.
    pub mem: crate::lower::memplan::MemPlan,
    /// CUDA C of every kernel (see [`module`]).
    pub source: String,
    /// Per kernel, the function that runs it.
    pub function: Vec<String>,
    /// The launch plan (see [`launch::plan_json`]).
    pub launch: serde_json::Value,
}

/// Lowers an optimised graph, plans its memory and renders kernels and launch plan;
/// `module` is the file name the launch plan gives the source.
pub fn emit(g: &crate::ir::Graph, module_name: &str) -> crate::ir::R<Emitted> {
    // Attention's score ops have no device kernel: their primitive graph has (same values).
    let mut g = g.clone();
    crate::passes::expand_attention::run(&mut g)?;
    // cuBLAS batches take one batch stride, so head permutes stay materialised.
    let opt = crate::lower::plan::LowerOptions {
        strided_views: false,
    };
    let plan = crate::lower::plan::lower_with(&g, opt)?;
    // No hand-overs: rendered kernels declare operands and outputs `__restrict__`.
    let mem = crate::lower::memplan::plan(&plan, false);
    crate::lower::memplan::verify(&plan, &mem).map_err(crate::ir::IrError)?;
    let m = module(&plan.kernels);
    let launch = launch::plan_json(&plan, &mem, &m.function, module_name);
    Ok(Emitted {
        plan,
        mem,
        source: m.source,
        function: m.function,
        launch,
    })
}
