//! The CPU backend: fused kernels JIT-compiled with Cranelift for the host ISA (f32x4 SIMD,
//! FMA where the host has it).

pub mod codegen;
pub mod math;
pub mod phases;
pub mod wide;
pub mod wide_dot;

use crate::lower::kernel::Kernel;
use cranelift_codegen::ir::{types, AbiParam, Type, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

/// A compiled kernel: runs rows `r0..r1` given operand then output base pointers.
pub type KernelFn = unsafe extern "C" fn(ptrs: *const *mut f32, r0: i64, r1: i64);

/// The compiled kernels of one program; owns the JIT memory they live in.
pub struct CpuKernels {
    _module: JITModule,
    /// One function per kernel, in kernel order.
    pub fns: Vec<KernelFn>,
}

// SAFETY: the functions are immutable machine code with no captured state; the module is only
// kept alive (never mutated) after `finalize_definitions`.
unsafe impl Send for CpuKernels {}
// SAFETY: as above.
unsafe impl Sync for CpuKernels {}

fn err(e: impl std::fmt::Display) -> String {
    format!("Cranelift: {e}")
}

/// Declares an imported host function `name(params) -> ret`.
fn import(
    module: &mut JITModule,
    name: &str,
    params: &[Type],
    ret: Option<Type>,
) -> Result<FuncId, String> {
    let mut sig = module.make_signature();
    sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    sig.returns.extend(ret.map(AbiParam::new));
    module
        .declare_function(name, Linkage::Import, &sig)
        .map_err(err)
}

/// Compiles every kernel for the host; maps with exp/erf run in phases where the host has
/// AVX-512 ([`wide::available`]) unless `LORAC_NO_WIDE` is set (to anything: a developer
/// switch for A/B measurements).
pub fn compile(kernels: &[Kernel]) -> Result<CpuKernels, String> {
    compile_with(
        kernels,
        wide::available() && std::env::var("LORAC_NO_WIDE").is_err(),
    )
}

/// [`compile`], choosing whether eligible maps run in phases ([`phases`]). Forced on a host
/// without AVX-512, the wide calls take their scalar path: slower, the same bits (tests use
/// this to check the phase split on any host).
pub fn compile_with(kernels: &[Kernel], use_wide: bool) -> Result<CpuKernels, String> {
    for k in kernels {
        k.check()?;
    }
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags.set("is_pic", "false").map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    // The native builder enables the host's SSE4.1/AVX/FMA so `fma` and `nearest` are
    // single instructions rather than libcalls.
    let isa = cranelift_native::builder()
        .map_err(err)?
        .finish(settings::Flags::new(flags))
        .map_err(err)?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    let fptrs: [*const u8; 5] = [
        math::lorac_logf as *const u8,
        math::lorac_tanhf as *const u8,
        math::lorac_sinf as *const u8,
        math::lorac_cosf as *const u8,
        math::lorac_powf as *const u8,
    ];
    for (name, p) in math::LIBM.iter().zip(fptrs) {
        jb.symbol(*name, p);
    }
    // Without wide calls, kernels never import them.
    if use_wide {
        for (name, p) in wide::NAMES.iter().zip(wide::pointers()) {
            jb.symbol(*name, p);
        }
        jb.symbol(wide_dot::NAME, wide_dot::pointer());
    }
    let mut module = JITModule::new(jb);
    let mut lib_ids = vec![];
    for name in math::LIBM {
        let arity = if name == "lorac_powf" { 2 } else { 1 };
        let params = vec![types::F32; arity];
        lib_ids.push(import(&mut module, name, &params, Some(types::F32))?);
    }
    let mut wide_ids = vec![];
    if use_wide {
        for name in wide::NAMES {
            wide_ids.push(import(&mut module, name, &[types::I64; 3], None)?);
        }
        let params = [types::I64; wide_dot::ARITY];
        wide_ids.push(import(&mut module, wide_dot::NAME, &params, None)?);
    }
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut ids = vec![];
    let target = module.target_config();
    for (i, k) in kernels.iter().enumerate() {
        let mut sig = module.make_signature();
        for _ in 0..3 {
            sig.params.push(AbiParam::new(types::I64));
        }
        let id = module
            .declare_function(&format!("{}_{i}", k.name), Linkage::Local, &sig)
            .map_err(err)?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let libm: Vec<_> = lib_ids
                .iter()
                .map(|&l| module.declare_func_in_func(l, b.func))
                .collect();
            let wide_fns: Vec<_> = wide_ids
                .iter()
                .map(|&l| module.declare_func_in_func(l, b.func))
                .collect();
            codegen::define(&mut b, k, &libm, &wide_fns);
            b.finalize(target);
        }
        module.define_function(id, &mut ctx).map_err(err)?;
        module.clear_context(&mut ctx);
        ids.push(id);
    }
    module.finalize_definitions().map_err(err)?;
    let fns = ids
        .iter()
        .map(|&id| {
            let p = module.get_finalized_function(id);
            // SAFETY: `p` points at a function defined above with exactly this signature.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
        })
        .collect();
    Ok(CpuKernels {
        _module: module,
        fns,
    })
}
